"""Live calls: joining, leaving, participant state, events and audio forwarding.

This is where the SFU's decisions are made: who receives whose audio (everyone
else in the call, unless the publisher is muted: enforced here, not trusted to
the client), who is host, when a silent or vanished participant is removed,
and which events every participant sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from callsctl_sfu.calls.model import Call, Session, new_session_id
from callsctl_sfu.config import ServeConfig
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.peer import MediaPeer
from callsctl_sfu.rtc.rtp import audio_level, parse_rtp

log = logging.getLogger("callsctl_sfu.calls")

EventSender = Callable[[dict[str, Any]], Awaitable[None]]

# RFC 6464 levels are -dBov: 0 is loudest, 127 silence. Speech sits well above -50 dBov.
VOICE_LEVEL_DBOV = 50
VOICE_OFF_AFTER = 1.0
HOUSEKEEPING_INTERVAL = 0.25


class JoinRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ForwardingStats:
    """Counters for operators and for bench/: what the hot path did."""

    rtp_in: int = 0
    rtp_forwarded: int = 0
    bytes_forwarded: int = 0
    dropped_muted: int = 0
    dropped_unknown_pt: int = 0
    dropped_malformed: int = 0


@dataclass
class Participant:
    session: Session
    peer: MediaPeer
    send: EventSender | None
    detached_at: float | None = None
    connected_at: float | None = None
    forward_to: list[tuple[MediaPeer, Any]] = field(default_factory=list)


class CallManager:
    """Owns every call and session of one server."""

    def __init__(self, config: ServeConfig, mux: UdpMux) -> None:
        self.config = config
        self.mux = mux
        self.calls: dict[str, Call] = {}
        self.participants: dict[str, Participant] = {}
        self.stats = ForwardingStats()
        self._loop = asyncio.get_event_loop()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        self.closing = False

    # -- joining and leaving -------------------------------------------------------

    async def join(self, call_id: str, user: str, name: str, send: EventSender) -> Session:
        if self.closing:
            raise JoinRefused("shutting_down", "the server is shutting down; try again shortly")
        call = self.calls.get(call_id)
        limit = self.config.max_call_participants
        if limit and call is not None and len(call.sessions) >= limit:
            raise JoinRefused("call_full", f"call {call_id!r} is full: {limit} participants is "
                                           "the server's max_call_participants")
        new_call = call is None
        if call is None:
            call = self.calls[call_id] = Call(call_id)
        session = Session(new_session_id(), user, name or user, call_id)
        peer = MediaPeer(session.session_id, self.mux, self._peer_signal_sender(session),
                         self._on_rtp, self._on_peer_state)
        self.participants[session.session_id] = Participant(session, peer, send)
        call.add(session)
        await send({"type": "joined", "session_id": session.session_id, "call": call_id,
                    "host": call.host, "participants": [s.public() for s in
                                                        call.others(session.session_id)],
                    "ice_servers": []})
        if new_call:
            await send({"type": "call_start", "call": call_id, "started_at": call.started_at})
        await self.broadcast(call, {"type": "user_joined", "session_id": session.session_id,
                                    "user": user, "name": session.name},
                             exclude=session.session_id)
        self._rewire(call)
        log.info("session %s (%s) joined call %s (%d participants)", session.session_id,
                 user, call_id, len(call.sessions))
        return session

    async def leave(self, session_id: str, reason: str = "left") -> None:
        participant = self.participants.pop(session_id, None)
        if participant is None:
            return
        session = participant.session
        call = self.calls.get(session.call_id)
        if call is not None:
            host_changed = call.remove(session_id)
            await self.broadcast(call, {"type": "user_left", "session_id": session_id,
                                        "reason": reason})
            if host_changed:
                await self.broadcast(call, {"type": "call_host_changed", "host": call.host})
            if not call.sessions:
                del self.calls[call.call_id]
                log.info("call %s ended", call.call_id)
            else:
                self._rewire(call)
        if reason not in ("left", "shutdown") and participant.send is not None:
            await self._safe_send(participant.send, {
                "type": "error", "code": "session_removed",
                "message": f"you were removed from the call: {reason}"})
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
        event = {("muted", True): "user_muted", ("muted", False): "user_unmuted",
                 ("hand", True): "user_raise_hand", ("hand", False): "user_lower_hand"}
        call = self.calls[participant.session.call_id]
        await self.broadcast(call, {"type": event[(attribute, value)],
                                    "session_id": session_id})
        if attribute == "muted" and value and state.voice:
            state.voice = False
            await self.broadcast(call, {"type": "user_voice_off", "session_id": session_id})
        return True

    async def react(self, session_id: str, emoji: str) -> None:
        session = self.participants[session_id].session
        await self.broadcast(self.calls[session.call_id], {
            "type": "user_reacted", "session_id": session_id, "emoji": emoji})

    # -- events ------------------------------------------------------------------------

    async def broadcast(self, call: Call, event: dict[str, Any], exclude: str | None = None
                        ) -> None:
        sends = []
        for session_id in list(call.sessions):
            participant = self.participants.get(session_id)
            if session_id != exclude and participant and participant.send is not None:
                sends.append(self._safe_send(participant.send, event))
        if sends:
            await asyncio.gather(*sends)

    @staticmethod
    async def _safe_send(send: EventSender, event: dict[str, Any]) -> None:
        try:
            await send(event)
        except Exception as exc:  # a dead socket must not stop events to the others
            log.debug("event %s not delivered: %s", event.get("type"), exc)

    def _peer_signal_sender(self, session: Session) -> EventSender:
        async def send(event: dict[str, Any]) -> None:
            participant = self.participants.get(session.session_id)
            if participant is not None and participant.send is not None:
                await self._safe_send(participant.send, event)

        return send

    # -- media ---------------------------------------------------------------------------

    def _rewire(self, call: Call) -> None:
        """Tell every peer whose audio it should receive after membership changed."""
        members = list(call.sessions)
        for session_id in members:
            participant = self.participants.get(session_id)
            if participant is not None:
                participant.peer.set_publishers({s for s in members if s != session_id})

    def _on_peer_state(self, peer: MediaPeer, state: str) -> None:
        participant = self.participants.get(peer.session_id)
        if participant is None:
            return
        if state == "connected":
            participant.connected_at = self._loop.time()
            log.info("session %s media connected from %s", peer.session_id,
                     peer.remote_address)
        elif state in ("failed", "closed"):
            asyncio.ensure_future(self.leave(peer.session_id, f"media connection {state}"))

    def _on_rtp(self, peer: MediaPeer, data: bytes) -> None:
        """The hot path: one decrypted packet from a publisher, out to everyone else."""
        stats = self.stats
        stats.rtp_in += 1
        participant = self.participants.get(peer.session_id)
        if participant is None:
            return
        packet = parse_rtp(data)
        if packet is None:
            stats.dropped_malformed += 1
            return
        if packet.payload_type != peer.opus_pt:
            stats.dropped_unknown_pt += 1
            return
        session = participant.session
        if session.state.muted:
            stats.dropped_muted += 1
            return
        level, _vad = audio_level(packet, peer.audio_level_id)
        if level <= VOICE_LEVEL_DBOV:
            session.last_loud = self._loop.time()
            if not session.state.voice:
                session.state.voice = True
                call = self.calls.get(session.call_id)
                if call is not None:
                    asyncio.ensure_future(self.broadcast(call, {
                        "type": "user_voice_on", "session_id": session.session_id}))
        level_byte = level if peer.audio_level_id is not None else None
        publisher_id = session.session_id
        call = self.calls.get(session.call_id)
        if call is None:
            return
        for other_id in call.sessions:
            if other_id == publisher_id:
                continue
            other = self.participants.get(other_id)
            if other is None:
                continue
            track = other.peer.downtracks.get(publisher_id)
            if track is None or not track.negotiated:
                continue
            out = track.rewrite.build(packet, level_byte)
            if other.peer.send_rtp(out):
                stats.rtp_forwarded += 1
                stats.bytes_forwarded += len(out)

    # -- housekeeping -----------------------------------------------------------------------

    async def _housekeep(self) -> None:
        """Voice-off detection, vanished participants and expired reconnect windows."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await self._housekeep_once()
            except Exception:  # keep the loop alive whatever one pass hits
                log.exception("housekeeping pass failed")

    async def _housekeep_once(self) -> None:
        now = self._loop.time()
        for participant in list(self.participants.values()):
            session = participant.session
            if session.state.voice and now - session.last_loud > VOICE_OFF_AFTER:
                session.state.voice = False
                call = self.calls.get(session.call_id)
                if call is not None:
                    await self.broadcast(call, {"type": "user_voice_off",
                                                "session_id": session.session_id})
            if participant.detached_at is not None and \
                    now - participant.detached_at > self.config.reconnect_grace:
                await self.leave(session.session_id, "signaling connection lost")
                continue
            peer = participant.peer
            if peer.connected and now - peer.last_rx > self.config.session_timeout:
                await self.leave(session.session_id,
                                 f"no media for {self.config.session_timeout:g} s")

    async def shutdown(self) -> None:
        """End every call with call_end and close every peer (graceful stop)."""
        self.closing = True
        self._housekeeping.cancel()
        for call in list(self.calls.values()):
            await self.broadcast(call, {"type": "call_end", "call": call.call_id,
                                        "reason": "server shutting down"})
        for session_id in list(self.participants):
            await self.leave(session_id, "shutdown")
        self.calls.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"calls": [c.summary() for c in self.calls.values()],
                "sessions": len(self.participants), "time": time.time()}
