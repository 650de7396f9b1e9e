"""Host controls, the Calls plugin's set, on top of CallManager's public operations.

Each control changes server state first (so it holds even if the client
ignores the event: a muted session's audio is dropped by the SFU) and then
tells the affected participant with the plugin's event name, so its client
updates its own UI (mute button, stopped share, "you were removed"):

| control      | to the target        | to everyone (via the manager) |
|--------------|----------------------|-------------------------------|
| make host    | -                    | call_host_changed {host}      |
| mute         | host_mute            | user_muted                    |
| stop screen  | host_screen_off      | user_screen_off               |
| lower hand   | host_lower_hand      | user_lower_hand               |
| remove       | host_removed         | user_left                     |
| end call     | call_end (everyone)  | user_left as each one goes    |

Two callers use them: the admin API (an operator; `by="admin"`, the default)
and the call's own host over signaling (`by="host"`, see
`HostControls.by_session`, which checks that the sender IS the host before
anything changes). Every event to the target says who acted (`by`), so its
page can say "removed by the host" or "by an administrator" truthfully.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from callsctl_sfu import events
from callsctl_sfu.errors import CallsctlError

if TYPE_CHECKING:
    from callsctl_sfu.calls.manager import CallManager
    from callsctl_sfu.calls.model import Call, Session

log = logging.getLogger("callsctl_sfu.calls.host")

Notifier = Callable[["Call", dict[str, Any]], None]


# A refusal's `code` by its HTTP status: what the host's page gets over signaling.
HOST_ERROR_CODES = {400: "bad_message", 403: "not_host", 404: "no_session"}


class HostControlError(CallsctlError):
    """A control cannot be applied; `status` is the HTTP status the admin API answers."""
    code = "host_control_failed"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, code=HOST_ERROR_CODES.get(status))
        self.status = status
        self.message = message


class HostControls:
    """Apply host controls to live calls of one manager."""

    def __init__(self, manager: CallManager) -> None:
        self.manager = manager

    # -- lookups ---------------------------------------------------------------------

    def call(self, call_id: str) -> Call:
        call = self.manager.calls.get(call_id)
        if call is None:
            raise HostControlError(404, f"no live call {call_id!r}")
        return call

    def session(self, call_id: str, session_id: str) -> tuple[Call, Session]:
        call = self.call(call_id)
        session = call.sessions.get(session_id)
        if session is None or session_id not in self.manager.participants:
            raise HostControlError(404, f"no session {session_id!r} in call {call_id!r}")
        return call, session

    async def _tell(self, call: Call, session_id: str, event: dict[str, Any]) -> None:
        """Send one event to one participant (if its signaling is attached) and observers."""
        self.manager.notify(call, {**event, "target": session_id})
        participant = self.manager.participants.get(session_id)
        send = participant.send if participant is not None else None
        if send is None:
            return
        try:
            await send(event)
        except Exception as exc:  # a dead socket: the state change still stands
            log.debug("%s to %s not delivered: %s", event.get("type"), session_id, exc)

    # -- controls ------------------------------------------------------------------------

    async def make_host(self, call_id: str, session_id: str) -> bool:
        call, _session = self.session(call_id, session_id)
        if call.host == session_id:
            return False
        call.host = session_id
        await self.manager.broadcast(call, events.CallHostChanged(host=session_id).wire())
        return True

    async def mute(self, call_id: str, session_id: str, by: str = "admin") -> bool:
        call, _session = self.session(call_id, session_id)
        await self._tell(call, session_id, events.HostAction(
            type="host_mute", session_id=session_id, call=call_id, by=by).wire())
        return await self.manager.set_state(session_id, "muted", True)

    async def mute_others(self, call_id: str, keep: str, by: str = "admin") -> list[str]:
        """Mute everyone in the call except `keep` (who must be in it)."""
        call, _session = self.session(call_id, keep)
        muted = []
        for other in [s.session_id for s in call.people()]:  # not the recorder
            if other != keep and other in self.manager.participants and \
                    await self.mute(call_id, other, by):
                muted.append(other)
        return muted

    async def stop_screen(self, call_id: str, session_id: str, by: str = "admin") -> bool:
        call, session = self.session(call_id, session_id)
        if not session.state.screen:
            return False
        await self._tell(call, session_id, events.HostAction(
            type="host_screen_off", session_id=session_id, call=call_id, by=by).wire())
        await self.manager.set_screen(session_id, False)
        return True

    async def lower_hand(self, call_id: str, session_id: str, by: str = "admin") -> bool:
        call, session = self.session(call_id, session_id)
        if not session.state.hand:
            return False
        await self._tell(call, session_id, events.HostAction(
            type="host_lower_hand", session_id=session_id, call=call_id, by=by).wire())
        return await self.manager.set_state(session_id, "hand", False)

    async def remove(self, call_id: str, session_id: str,
                     reason: str = "removed by an admin", by: str = "admin") -> None:
        call, _session = self.session(call_id, session_id)
        await self._tell(call, session_id, events.HostRemoved(
            session_id=session_id, call=call_id, by=by, reason=reason).wire())
        # host_removed said it all: detach first so the manager's generic
        # "session_removed" error does not overwrite that in the client.
        self.manager.detach(session_id)
        await self.manager.leave(session_id, reason)

    async def end(self, call_id: str, reason: str = "ended by an admin",
                  by: str = "admin") -> int:
        """call_end to everyone, then every session leaves; returns how many were removed."""
        call = self.call(call_id)
        await self.manager.broadcast(call, events.CallEnd(call=call_id, reason=reason,
                                                          by=by).wire())
        removed = 0
        sessions = [sid for sid in call.sessions if sid in self.manager.participants]
        for session_id in sessions:  # call_end said it all (see remove())
            self.manager.detach(session_id)
        for session_id in sessions:
            await self.manager.leave(session_id, "call ended")
            removed += 1
        return removed

    # -- the host's own controls, over signaling -----------------------------------------

    async def by_session(self, actor: str, action: str, target: str | None) -> dict[str, Any]:
        """Apply `action` for the participant `actor` if, and only if, it is its call's host.

        The page never decides who may moderate: the server looks the sender up
        and refuses with HostControlError (403 not the host, 404 no such target,
        400 the action needs a target). Returns the outcome for the sender's
        `host_control_done` event.
        """
        participant = self.manager.participants.get(actor)
        if participant is None:
            raise HostControlError(404, "you are no longer in the call")
        call = self.call(participant.session.call_id)
        if not call.is_host(actor):
            raise HostControlError(403, f"{action}: only the host of the call may do this")
        call_id = call.call_id
        if action == "end":
            removed = await self.end(call_id, "ended by the host", by="host")
            return {"action": action, "removed": removed}
        if action == "mute_others":
            muted = await self.mute_others(call_id, actor, by="host")
            return {"action": action, "muted": muted}
        if target is None:
            raise HostControlError(400, f"{action}: needs the target's session_id")
        self.session(call_id, target)  # 404 before anything changes
        if action == "remove":
            if target == actor:
                raise HostControlError(400, "remove: the host cannot remove itself; "
                                            "leave the call instead")
            await self.remove(call_id, target, "removed by the host", by="host")
            return {"action": action, "session_id": target, "changed": True}
        if action == "make_host":
            changed = await self.make_host(call_id, target)
        else:
            operation = {"mute": self.mute, "stop_screen": self.stop_screen,
                         "lower_hand": self.lower_hand}[action]
            changed = await operation(call_id, target, by="host")
        return {"action": action, "session_id": target, "changed": changed}
