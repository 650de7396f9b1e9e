"""Live calls: joining, leaving, participant state and events.

This is where the SFU's membership decisions are made: who is in which call,
who is host, who is muted (the forwarder drops a muted publisher's audio:
enforced there, not trusted to the client), which publisher tracks each peer
is offered, when a silent or vanished participant is removed, and which events
every participant sees. The per-packet path lives in calls/forwarder.py, told
of membership through its narrow interface (add_session, remove_session,
set_muted, ...).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callsctl_sfu import events
from callsctl_sfu.calls.forward_metrics import ForwardMetrics
from callsctl_sfu.calls.forwarder import Forwarder, ForwardingStats
from callsctl_sfu.calls.model import Call, Session, new_session_id
from callsctl_sfu.calls.shared import SharedEvent
from callsctl_sfu.config import ServeConfig
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.iceconfig import client_ice_servers
from callsctl_sfu.rtc.medialoader import MediaLoader, MediaUnavailable
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.tasks import spawn

if TYPE_CHECKING:  # built on aiortc: the media stack, loaded by the first join
    from callsctl_sfu.rtc.peer import MediaPeer

log = logging.getLogger("callsctl_sfu.calls")

EventSender = Callable[[dict[str, Any]], Awaitable[None]]

VOICE_OFF_AFTER = 1.0
HOUSEKEEPING_INTERVAL = 0.25
# The timeouts (reconnect grace, media connect, no media) are seconds to minutes long: every
# participant is checked against them once a second, not on every housekeeping pass.
TIMEOUT_SCAN_EVERY = 4  # passes


class JoinRefused(CallsctlError):
    code = "join_refused"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ControlStats:
    """Counters of the control plane's work (bench/join_storm.py divides them by joins).

    A join must cost O(1) offers and O(N) events (one user_joined to each of the
    N others): these make that checkable. The forwarder counts its own share
    (plan rebuilds, fan-out targets: forwarder.RoutingStats).
    """

    joins: int = 0
    leaves: int = 0
    broadcasts: int = 0
    events_sent: int = 0  # event deliveries to participants (one per receiver)
    offers_sent: int = 0  # server offers (renegotiations), every peer, departed ones too
    rewires: int = 0  # recomputations of who receives which publisher tracks
    sources_changed: int = 0  # peers told their forwarded set changed (may renegotiate)
    removals: dict[str, int] = field(default_factory=dict)  # sessions removed, by reason


@dataclass
class Member:
    """A session in the server: its state, its media peer and its signaling sender."""

    session: Session
    peer: MediaPeer
    send: EventSender | None
    detached_at: float | None = None
    connected_at: float | None = None
    created_at: float = 0.0  # loop time of the join (media_connect_timeout)


class CallManager:
    """Owns every call and session of one server."""

    def __init__(self, config: ServeConfig, mux: UdpMux,
                 metrics: ForwardMetrics | None = None,
                 media: MediaLoader | None = None) -> None:
        self.config = config
        self.mux = mux
        # aiortc and the rest of the media stack, loaded once in a worker thread by the
        # first call (rtc/medialoader.py); every join waits for that one load.
        self.media = media if media is not None else MediaLoader()
        self.calls: dict[str, Call] = {}
        self.participants: dict[str, Member] = {}
        self.control_stats = ControlStats()
        self._loop = asyncio.get_event_loop()
        # Sessions heard speaking (voice on): the only ones the 4-a-second voice-off check
        # looks at, so that a call's silent majority costs that check nothing.
        self._speaking: set[str] = set()
        self._housekeeping_passes = 0
        # Set while anyone is joined: housekeeping sleeps on it instead of waking an empty
        # server 4 times a second (each wake-up of an idle process costs CPU of its own).
        self._occupied = asyncio.Event()
        self._housekeeping = spawn(self._housekeep(), "housekeeping")
        # The media plane: routes, plans, the per-packet path, RTCP (calls/forwarder.py).
        self.forwarder = Forwarder(mux, metrics, on_loud=self._on_loud)
        # Call id -> the publisher tracks on offer in it (key -> (publisher, label)),
        # dropped when what is published changes or someone leaves (_rewire).
        self._offered: dict[str, dict[str, tuple[str, str]]] = {}
        self.closing = False
        # Admin plane hooks: observers see every call event (history, SSE,
        # metrics); join checks may refuse a join with JoinRefused (per-call settings).
        self.observers: list[Callable[[Call, dict[str, Any]], None]] = []
        self.join_checks: list[Callable[[str, Call | None], None]] = []
        # Jobs hook (jobs/service.py): the host starts (True) or stops a recording.
        self.recording_control: Callable[[Call, Session, bool], Awaitable[None]] | None = None
        # Live captions hooks (jobs/captions.py): the host's captions button, and the
        # captions worker's messages (caption, captions_stats).
        self.captions_control: Callable[[Call, Session, bool], Awaitable[None]] | None = None
        self.captions_relay: Callable[[Call, Session, dict[str, Any]], Awaitable[None]] | \
            None = None

    @property
    def stats(self) -> ForwardingStats:
        """The forwarder's counters (what the hot path did), for callers of the manager."""
        return self.forwarder.stats

    # -- joining and leaving -------------------------------------------------------

    async def join(self, call_id: str, user: str, name: str, send: EventSender,
                   recorder: bool = False, role: str = "") -> Session:
        try:  # off the loop, once for every join (the first /ws connection started it)
            stack = await self.media.load()
        except MediaUnavailable as exc:
            raise JoinRefused("media_unavailable", f"calls are unavailable on this server: "
                                                   f"{exc.message}") from None
        if self.closing:
            raise JoinRefused("shutting_down", "the server is shutting down; try again shortly")
        call = self.calls.get(call_id)
        replaced = [] if recorder else self._to_replace(call_id, user)
        if recorder:  # a recorder joins live calls only, and is never counted (jobs/)
            if call is None or not call.people():
                raise JoinRefused("no_call", f"call {call_id!r} is not live; nothing to record")
            if role == "captions" and call.captions:
                raise JoinRefused("already_captioning", f"call {call_id!r} already has live "
                                                        "captions")
            if role != "captions" and call.recording:
                raise JoinRefused("already_recording", f"call {call_id!r} is already being "
                                                       "recorded")
        else:
            try:
                for check in self.join_checks:
                    check(call_id, call)
            except JoinRefused as exc:
                if exc.code != "call_full" or not replaced:
                    raise  # a user taking their own place again does not need a free one
        limit = self.config.max_call_participants
        if limit and call is not None and not recorder and len(call.people()) >= limit \
                and not replaced:
            raise JoinRefused("call_full", f"call {call_id!r} is full: {limit} participants is "
                                           "the server's max_call_participants")
        new_call = call is None
        if call is None:
            call = self.calls[call_id] = Call(call_id)
            self.notify(call, events.CallStart(call=call_id,
                                               started_at=call.started_at).wire())
        session = Session(new_session_id(), user, name or user, call_id, recorder=recorder,
                          role=role if recorder else "")
        forwarder = self.forwarder
        peer: MediaPeer = stack.peer_class(
            session.session_id, self.mux, self._peer_signal_sender(session), forwarder.on_rtp,
            self._on_peer_state, on_rtcp=forwarder.on_rtcp,
            on_reports=forwarder.on_receiver_reports, on_tracks=self._on_tracks,
            on_downtracks_ready=forwarder.on_downtracks_ready,
            ring_size=self.config.nack_buffer_size, simulcast=self.config.enable_simulcast)
        # Registered before any await, so concurrent joins of the same user count it;
        # without `send` until the sessions it replaces are gone (it gets no events
        # about them, and the call it joins does not end in between).
        participant = Member(session, peer, None, created_at=self._loop.time())
        self.participants[session.session_id] = participant
        self._occupied.set()
        call.add(session)  # no route changes: the new peer has no downtracks yet
        forwarder.add_session(session.session_id, call_id, peer)
        for old_id in replaced:
            await self.leave(old_id, "you joined this call again from another connection")
        if session.session_id not in self.participants:  # a join after it replaced it
            raise JoinRefused("session_replaced", "a newer join of the same user replaced "
                                                  "this one")
        participant.send = send
        await send(events.Joined(
            session_id=session.session_id, call=call_id, host=call.host,
            participants=[s.public() for s in call.others(session.session_id)],
            recording=call.recording, captions=call.captions,
            # whether this server offers live captions at all (the host's button)
            captions_available=self.config.live_captions_enabled,
            ice_servers=client_ice_servers(self.config, user)).wire())
        if new_call:
            await send(events.CallStart(call=call_id, started_at=call.started_at).wire())
        if session.role == "captions":
            await self.broadcast(call, events.CallCaptions(
                captions=True, started_at=session.joined_at).wire(),
                                 exclude=session.session_id)
        elif recorder:
            await self.broadcast(call, events.CallRecording(
                recording=True, started_at=session.joined_at).wire(),
                                 exclude=session.session_id)
        else:
            await self.broadcast(call, events.UserJoined(
                session_id=session.session_id, user=user, name=session.name).wire(),
                                 exclude=session.session_id)
        self._rewire(call, only=session.session_id)
        self.control_stats.joins += 1
        log.info("session %s (%s) joined call %s (%d participants)%s", session.session_id,
                 user, call_id, len(call.people()), " as its recorder" if recorder else "")
        return session

    def _to_replace(self, call_id: str, user: str) -> list[str]:
        """The user's sessions in the call a new join replaces (max_sessions_per_user).

        A session whose signaling connection already dropped goes first (the
        page was reloaded: a reconnect in all but name), then the oldest, until
        the new one fits.
        """
        limit = self.config.max_sessions_per_user
        mine = [p for p in self.participants.values()
                if p.session.call_id == call_id and p.session.user == user]
        dropped = [p.session.session_id for p in mine if p.detached_at is not None]
        live = sorted((p for p in mine if p.detached_at is None), key=lambda p: p.created_at)
        excess = len(live) - (limit - 1) if limit else 0
        return dropped + [p.session.session_id for p in live[:max(0, excess)]]

    async def leave(self, session_id: str, reason: str = "left") -> None:
        participant = self.participants.pop(session_id, None)
        if participant is None:
            return
        session = participant.session
        self.control_stats.leaves += 1
        call = self.calls.get(session.call_id)
        self.forwarder.remove_session(session_id)
        # Only a publisher's departure changes what the others receive.
        published = bool(participant.peer.published)
        if published:
            self._offered.pop(session.call_id, None)
        if call is not None:
            host_changed = call.remove(session_id)
            if session.role == "captions":
                await self.broadcast(call, events.CallCaptions(captions=False,
                                                               reason=reason).wire())
            elif session.recorder:
                await self.broadcast(call, events.CallRecording(recording=False,
                                                                reason=reason).wire())
            else:
                await self.broadcast(call, events.UserLeft(session_id=session_id,
                                                           reason=reason).wire())
            if host_changed:
                await self.broadcast(call, events.CallHostChanged(host=call.host).wire())
            if not call.people():  # only a recorder left: the call is over, it goes too
                for other in [s for s in call.sessions.values() if s.recorder]:
                    await self.broadcast(call, events.CallEnd(
                        call=call.call_id, reason="the last participant left").wire())
                    await self.leave(other.session_id, "call ended")
            if not call.sessions:
                # Several leaves can reach this point for the same call (each awaited
                # its broadcasts): only the one that removes the call announces its end.
                if self.calls.get(call.call_id) is call:
                    del self.calls[call.call_id]
                    self.notify(call, events.CallEnd(
                        call=call.call_id, reason="the last participant left").wire())
                    self._offered.pop(call.call_id, None)
                    log.info("call %s ended", call.call_id)
            elif published:
                self._rewire(call)
        if reason not in ("left", "shutdown"):
            removals = self.control_stats.removals
            removals[reason] = removals.get(reason, 0) + 1
        if reason not in ("left", "shutdown") and participant.send is not None:
            await self._safe_send(participant.send, events.Error(
                code="session_removed",
                message=f"you were removed from the call: {reason}").wire())
        await participant.peer.close()
        log.info("session %s left call %s (%s)", session_id, session.call_id, reason)

    def detach(self, session_id: str) -> None:
        """The signaling connection dropped: keep media for reconnect_grace seconds."""
        participant = self.participants.get(session_id)
        if participant is not None:
            participant.send = None
            participant.detached_at = self._loop.time()

    def reattach(self, session_id: str, user: str, call_id: str, send: EventSender) -> Session:
        participant = self.participants.get(session_id)
        if participant is None or participant.session.user != user or \
                participant.session.call_id != call_id:
            raise JoinRefused("unknown_session", "no such session to reconnect to; join again")
        participant.send = send
        participant.detached_at = None
        return participant.session

    # -- participant actions ----------------------------------------------------------

    def signal(self, session_id: str, data: dict[str, Any]) -> None:
        self.participants[session_id].peer.handle_signal(data)

    async def set_state(self, session_id: str, attribute: str, value: bool) -> bool:
        """Change mute/hand/...; broadcasts the matching event when it changed."""
        participant = self.participants[session_id]
        state = participant.session.state
        if getattr(state, attribute) == value:
            return False
        setattr(state, attribute, value)
        if attribute == "muted":
            self.forwarder.set_muted(session_id, value)
        event: dict[tuple[str, bool], events.UserStateType] = {
            ("muted", True): "user_muted", ("muted", False): "user_unmuted",
            ("hand", True): "user_raise_hand", ("hand", False): "user_lower_hand",
            ("video", True): "user_video_on", ("video", False): "user_video_off"}
        call = self.calls[participant.session.call_id]
        await self.broadcast(call, events.UserState(type=event[(attribute, value)],
                                                    session_id=session_id).wire())
        if attribute == "muted" and value and state.voice:
            state.voice = False
            self._speaking.discard(session_id)
            await self.broadcast(call, events.UserState(type="user_voice_off",
                                                        session_id=session_id).wire())
        return True

    async def set_screen(self, session_id: str, on: bool, stream_id: str | None = None) -> None:
        """Start or stop a screen share: at most one per call, and only if allowed."""
        participant = self.participants[session_id]
        session = participant.session
        call = self.calls[session.call_id]
        if on:
            if not self.config.allow_screen_sharing:
                raise JoinRefused("screen_sharing_disabled",
                                  "screen sharing is disabled on this server")
            sharer = next((s for s in call.sessions.values() if s.state.screen), None)
            if sharer is not None and sharer.session_id != session_id:
                raise JoinRefused("screen_share_taken",
                                  f"{sharer.name} is already sharing a screen in this call; "
                                  "only one screen share per call")
        if session.state.screen == on and participant.peer.screen_stream == stream_id:
            return
        session.state.screen = on
        participant.peer.set_screen_stream(stream_id if on else None)
        event = events.UserScreenOn(session_id=session_id, stream_id=stream_id or None) if on \
            else events.UserState(type="user_screen_off", session_id=session_id)
        await self.broadcast(call, event.wire())

    async def record(self, session_id: str, on: bool) -> None:
        """The host's record button: start or stop the call's recording job."""
        session = self.participants[session_id].session
        call = self.calls[session.call_id]
        if call.host != session_id:
            raise JoinRefused("not_host", "only the call's host can start or stop recording")
        if self.recording_control is None:
            raise JoinRefused("recording_unavailable", "recording is not available on this "
                                                       "server")
        await self.recording_control(call, session, on)

    async def captions(self, session_id: str, on: bool) -> None:
        """The host's captions button: start or stop the call's live captions job."""
        session = self.participants[session_id].session
        call = self.calls[session.call_id]
        if call.host != session_id:
            raise JoinRefused("not_host", "only the call's host can start or stop captions")
        if self.captions_control is None:
            raise JoinRefused("captions_unavailable", "live captions are not available on "
                                                      "this server")
        await self.captions_control(call, session, on)

    async def captions_message(self, session_id: str, message: dict[str, Any]) -> None:
        """A message only the call's captions worker may send (caption, captions_stats)."""
        session = self.participants[session_id].session
        if session.role != "captions" or self.captions_relay is None:
            raise JoinRefused("forbidden", f"{message['type']}: only the captions worker "
                                           "sends this")
        await self.captions_relay(self.calls[session.call_id], session, message)

    async def react(self, session_id: str, emoji: str) -> None:
        session = self.participants[session_id].session
        await self.broadcast(self.calls[session.call_id], events.UserReacted(
            session_id=session_id, emoji=emoji).wire())

    # -- events ------------------------------------------------------------------------

    async def broadcast(self, call: Call, event: dict[str, Any], exclude: str | None = None
                        ) -> None:
        """The event to every participant of the call (but `exclude`), encoded once.

        Sends are awaited one after the other, not gathered: the signaling
        connection's sender never waits for the network (api/signaling.py), so a
        task per receiver would only cost (N of them per join in a call of N).
        """
        self.notify(call, event)
        self.control_stats.broadcasts += 1
        shared = SharedEvent(event)
        sends = [participant.send for session_id, participant in
                 ((s, self.participants.get(s)) for s in call.sessions)
                 if session_id != exclude and participant is not None
                 and participant.send is not None]
        self.control_stats.events_sent += len(sends)
        for send in sends:
            try:
                await send(shared)
            except Exception as exc:  # a dead socket must not stop events to the others
                log.debug("event %s not delivered: %s", event.get("type"), exc)

    def notify(self, call: Call, event: dict[str, Any]) -> None:
        """Tell the observers; one failing observer never stops events to participants."""
        for observer in self.observers:
            try:
                observer(call, event)
            except Exception:
                log.exception("call event observer failed on %s", event.get("type"))

    @staticmethod
    async def _safe_send(send: EventSender, event: dict[str, Any]) -> None:
        try:
            await send(event)
        except Exception as exc:  # a dead socket must not stop events to the others
            log.debug("event %s not delivered: %s", event.get("type"), exc)

    def _peer_signal_sender(self, session: Session) -> EventSender:
        async def send(event: dict[str, Any]) -> None:
            participant = self.participants.get(session.session_id)
            if event.get("type") == "signal" and (event.get("data") or {}).get("type") == "offer":
                self.control_stats.offers_sent += 1
            if participant is not None and participant.send is not None:
                await self._safe_send(participant.send, event)

        return send

    # -- media ---------------------------------------------------------------------------

    def _rewire(self, call: Call, only: str | None = None) -> None:
        """Tell peers which publisher tracks they should receive.

        After a change of what is published (or a departure) every peer is told;
        after a join only the newcomer, which publishes nothing yet, so nobody
        else's set changes: O(1) per join instead of O(N).
        """
        self.control_stats.rewires += 1
        offered = self._offered.get(call.call_id)
        if offered is None:
            offered = self._offered[call.call_id] = {}
            for session_id in call.sessions:
                participant = self.participants.get(session_id)
                if participant is None:
                    continue
                for label in {t.label for t in participant.peer.published.values()}:
                    offered[f"{session_id}:{label}"] = (session_id, label)
        for session_id in (call.sessions if only is None else (only,)):
            participant = self.participants.get(session_id)
            if participant is not None and participant.peer.set_sources(
                    {key: source for key, source in offered.items() if source[0] != session_id}):
                self.control_stats.sources_changed += 1

    def _on_tracks(self, peer: MediaPeer) -> None:
        participant = self.participants.get(peer.session_id)
        call = self.calls.get(participant.session.call_id) if participant else None
        if call is not None:
            self._offered.pop(call.call_id, None)
            self._rewire(call)
            # New receivers of video need a keyframe to start decoding.
            self.forwarder.published_changed(peer)

    def _on_peer_state(self, peer: MediaPeer, state: str) -> None:
        participant = self.participants.get(peer.session_id)
        if participant is None:
            return
        if state == "connected":
            participant.connected_at = self._loop.time()
            self.forwarder.peer_connected(peer)
            log.info("session %s media connected from %s", peer.session_id,
                     peer.remote_address)
        elif state in ("failed", "closed"):
            spawn(self.leave(peer.session_id, f"media connection {state}"),
                  f"leave-{peer.session_id}")

    def _on_loud(self, session_id: str) -> None:
        """The forwarder saw a loud audio packet from this session: voice on (RFC 6464)."""
        participant = self.participants.get(session_id)
        if participant is None:
            return
        session = participant.session
        session.last_loud = self._loop.time()
        if not session.state.voice:
            session.state.voice = True
            self._speaking.add(session_id)
            call = self.calls.get(session.call_id)
            if call is not None:
                spawn(self.broadcast(call, events.UserState(
                    type="user_voice_on", session_id=session.session_id).wire()),
                      "voice-on")

    # -- housekeeping -----------------------------------------------------------------------

    async def _housekeep(self) -> None:
        """Voice-off detection, vanished participants and expired reconnect windows."""
        while True:
            if not self.participants:
                self._occupied.clear()
                await self._occupied.wait()
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await self._housekeep_once()
            except Exception:  # keep the loop alive whatever one pass hits
                log.exception("housekeeping pass failed")

    async def _housekeep_once(self) -> None:
        """One pass: voice-off for the speaking, then (once a second) every timeout.

        Why not everything on every pass: this runs 4 times a second, and a scan of
        every participant on each pass was most of what an idle joined session cost
        the server (docs/performance-small-calls.md, "Per-session background").
        """
        now = self._loop.time()
        self.forwarder.housekeep(now)
        for session_id in list(self._speaking):
            participant = self.participants.get(session_id)
            if participant is None or not participant.session.state.voice:
                self._speaking.discard(session_id)
                continue
            session = participant.session
            # The C ingress's reader thread says when speech starts again, not every loud
            # packet: how recently the peer was heard is in its routes (rtc/_ingress.c).
            session.last_loud = max(session.last_loud, participant.peer.heard_at())
            if now - session.last_loud > VOICE_OFF_AFTER:
                session.state.voice = False
                self._speaking.discard(session_id)
                call = self.calls.get(session.call_id)
                if call is not None:
                    await self.broadcast(call, events.UserState(
                        type="user_voice_off", session_id=session.session_id).wire())
        self._housekeeping_passes += 1
        if self._housekeeping_passes % TIMEOUT_SCAN_EVERY == 0:
            await self._expire_sessions(now)

    async def _expire_sessions(self, now: float) -> None:
        """Vanished participants, media that never connected or stopped, expired grace."""
        for participant in list(self.participants.values()):
            session = participant.session
            if participant.detached_at is not None and \
                    now - participant.detached_at > self.config.reconnect_grace:
                await self.leave(session.session_id, "signaling connection lost")
                continue
            peer = participant.peer
            if participant.connected_at is None and not peer.connected and \
                    now - participant.created_at > self.config.media_connect_timeout:
                await self.leave(session.session_id, "media did not connect within "
                                 f"{self.config.media_connect_timeout:g} s")
                continue
            if peer.connected and now - peer.last_rx > self.config.session_timeout:
                await self.leave(session.session_id,
                                 f"no media for {self.config.session_timeout:g} s")

    async def shutdown(self) -> None:
        """End every call with call_end and close every peer (graceful stop)."""
        self.closing = True
        self._housekeeping.cancel()
        for call in list(self.calls.values()):
            await self.broadcast(call, events.CallEnd(
                call=call.call_id, reason="server shutting down").wire())
        for session_id in list(self.participants):
            await self.leave(session_id, "shutdown")
        self.calls.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"calls": [c.summary() for c in self.calls.values()],
                "sessions": len(self.participants), "time": time.time()}

