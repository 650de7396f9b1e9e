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

from callsctl_sfu import events
from callsctl_sfu.calls.forwarding import Plan, Route, TrackRoutes
from callsctl_sfu.calls.model import Call, Session, new_session_id
from callsctl_sfu.calls.shared import SharedEvent
from callsctl_sfu.config import ServeConfig
from callsctl_sfu.iceconfig import client_ice_servers
from callsctl_sfu.rtc import fastpath
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.peer import DownTrack, MediaPeer
from callsctl_sfu.rtc.reports import UplinkReport, clamp_remb
from callsctl_sfu.rtc.rtcp import missing_between, nack, pli
from callsctl_sfu.rtc.rtcp_routing import RtcpRouter
from callsctl_sfu.rtc.rtp import ParsedRtp, audio_level, parse_rtp, vp8_keyframe
from callsctl_sfu.rtc.simulcast import choose_layer
from callsctl_sfu.rtc.tracks import PublishedTrack
from callsctl_sfu.tasks import spawn

log = logging.getLogger("callsctl_sfu.calls")

EventSender = Callable[[dict[str, Any]], Awaitable[None]]

# RFC 6464 levels are -dBov: 0 is loudest, 127 silence. Speech sits well above -50 dBov.
VOICE_LEVEL_DBOV = 50
VOICE_OFF_AFTER = 1.0
HOUSEKEEPING_INTERVAL = 0.25
# A gap the publisher has not filled after this long will not be: ask for a keyframe.
UNREPAIRED_AFTER = 0.3
REPORT_INTERVAL = 1.0
SIMULCAST_REMB_BPS = 3_000_000
# One C fan-out in this many is timed for rtcd_rtc_rtp_tracks_writes_time.
WRITE_SAMPLE_EVERY = 64


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
    nacks_received: int = 0
    nacks_answered: int = 0
    nacks_sent_upstream: int = 0
    plis_received: int = 0
    plis_sent: int = 0
    sender_reports_forwarded: int = 0
    simulcast_switches: int = 0
    srtp_protect_errors: int = 0


@dataclass
class ControlStats:
    """Counters of the control plane's work (bench/join_storm.py divides them by joins).

    A join must cost O(1) offers and plan rebuilds and O(N) events (one
    user_joined to each of the N others): these make that checkable.
    """

    joins: int = 0
    leaves: int = 0
    broadcasts: int = 0
    events_sent: int = 0  # event deliveries to participants (one per receiver)
    offers_sent: int = 0  # server offers (renegotiations), every peer, departed ones too
    rewires: int = 0  # recomputations of who receives which publisher tracks
    sources_changed: int = 0  # peers told their forwarded set changed (may renegotiate)
    invalidations: int = 0  # routes and plans dropped (membership, negotiation, connection)
    route_builds: int = 0  # one publisher track's receiver list rebuilt
    plan_builds: int = 0  # one publisher track's fan-out plan (re)assembled
    targets_computed: int = 0  # receivers' fan-out targets worked out for those plans
    removals: dict[str, int] = field(default_factory=dict)  # sessions removed, by reason


@dataclass
class Participant:
    session: Session
    peer: MediaPeer
    send: EventSender | None
    detached_at: float | None = None
    connected_at: float | None = None
    forward_to: list[tuple[MediaPeer, Any]] = field(default_factory=list)
    created_at: float = 0.0  # loop time of the join (media_connect_timeout)


class CallManager:
    """Owns every call and session of one server."""

    def __init__(self, config: ServeConfig, mux: UdpMux) -> None:
        self.config = config
        self.mux = mux
        self.calls: dict[str, Call] = {}
        self.participants: dict[str, Participant] = {}
        self.stats = ForwardingStats()
        self.control_stats = ControlStats()
        self._loop = asyncio.get_event_loop()
        self._housekeeping = spawn(self._housekeep(), "housekeeping")
        self.rtcp = RtcpRouter(self)
        # Publisher track key -> its receivers and fan-out plan (calls/forwarding.py),
        # built on the track's first packet and then updated one receiver at a time.
        self._tracks: dict[str, TrackRoutes] = {}
        # Call id -> the publisher tracks on offer in it (key -> (publisher, label)),
        # dropped when what is published changes or someone leaves (_rewire).
        self._offered: dict[str, dict[str, tuple[str, str]]] = {}
        self._fanouts = 0
        # Metrics: called with (kind, seconds per datagram) for a sample of fan-outs.
        self.write_timer: Callable[[str, float], None] | None = None
        self._last_reports = 0.0
        self._last_layer_rates = 0.0
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

    # -- joining and leaving -------------------------------------------------------

    async def join(self, call_id: str, user: str, name: str, send: EventSender,
                   recorder: bool = False, role: str = "") -> Session:
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
        peer = MediaPeer(session.session_id, self.mux, self._peer_signal_sender(session),
                         self._on_rtp, self._on_peer_state, on_rtcp=self.rtcp.on_rtcp,
                         on_tracks=self._on_tracks,
                         on_downtracks_ready=self._on_downtracks_ready,
                         ring_size=self.config.nack_buffer_size,
                         simulcast=self.config.enable_simulcast)
        # Registered before any await, so concurrent joins of the same user count it;
        # without `send` until the sessions it replaces are gone (it gets no events
        # about them, and the call it joins does not end in between).
        participant = Participant(session, peer, None, created_at=self._loop.time())
        self.participants[session.session_id] = participant
        call.add(session)  # no route changes: the new peer has no downtracks yet
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
        self._drop_routes_of(session_id)
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
        event: dict[tuple[str, bool], events.UserStateType] = {
            ("muted", True): "user_muted", ("muted", False): "user_unmuted",
            ("hand", True): "user_raise_hand", ("hand", False): "user_lower_hand",
            ("video", True): "user_video_on", ("video", False): "user_video_off"}
        call = self.calls[participant.session.call_id]
        await self.broadcast(call, events.UserState(type=event[(attribute, value)],
                                                    session_id=session_id).wire())
        if attribute == "muted" and value and state.voice:
            state.voice = False
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
            for other in call.others(peer.session_id):
                other_participant = self.participants.get(other.session_id)
                if other_participant is not None:
                    self.request_keyframes_for(other_participant.peer)

    def _on_downtracks_ready(self, receiver: MediaPeer, tracks: list[DownTrack]) -> None:
        """A receiver's forwarded tracks changed; new video ones need a keyframe to start."""
        self._update_routes_of(receiver)
        for track in tracks:
            if track.kind == "video":
                self.rtcp.keyframe_for_downtrack(track)

    def request_keyframes_for(self, receiver: MediaPeer) -> None:
        """Ask every video publisher this receiver gets for a keyframe (throttled)."""
        for track in receiver.downtracks.values():
            if track.kind == "video":
                self.rtcp.keyframe_for_downtrack(track)

    def published_track(self, publisher_id: str, label: str) -> tuple[MediaPeer,
                                                                      PublishedTrack] | None:
        participant = self.participants.get(publisher_id)
        if participant is None:
            return None
        for track in participant.peer.published.values():
            if track.label == label:
                return participant.peer, track
        return None

    def _on_peer_state(self, peer: MediaPeer, state: str) -> None:
        participant = self.participants.get(peer.session_id)
        if participant is None:
            return
        if state == "connected":
            participant.connected_at = self._loop.time()
            # A receiver the plans sent the slow way (or skipped) can now be fanned to.
            for key in peer.downtracks:
                track_routes = self._tracks.get(key)
                if track_routes is not None:
                    track_routes.refresh(peer.session_id)
            log.info("session %s media connected from %s", peer.session_id,
                     peer.remote_address)
        elif state in ("failed", "closed"):
            spawn(self.leave(peer.session_id, f"media connection {state}"),
                  f"leave-{peer.session_id}")

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
        mid_id = peer.mid_ext_id
        track = peer.track_for(packet.ssrc, packet.extensions.get(mid_id) if mid_id else None)
        if track is None:
            track = self._track_by_payload_type(peer, packet.payload_type)
            if track is None:
                stats.dropped_unknown_pt += 1
                return
            track.ssrcs.add(packet.ssrc)
            peer.ssrc_to_mid[packet.ssrc] = track.mid
        if not track.forwarded:
            stats.dropped_unknown_pt += 1
            return
        if packet.payload_type in track.rtx_payload_types:
            packet = _unwrap_rtx(packet, track)
            if packet is None:
                stats.dropped_malformed += 1
                return
            data = packet.plain()  # the repaired original, so receivers' NACKs find it
        elif data:
            track.received(packet.ssrc, packet.sequence, packet.timestamp, self._loop.time())
        session = participant.session
        level_byte = None
        if track.kind == "audio":
            if session.state.muted and track.label == "audio":
                stats.dropped_muted += 1
                return
            if track.label == "audio":
                level, _vad = audio_level(packet, peer.audio_level_id)
                self._voice_activity(session, level)
                if peer.audio_level_id is not None:
                    level_byte = level
        elif track.ring is not None:
            if data:
                track.ring.put(packet.sequence, data)
            self._detect_loss(peer, track, packet)
        keyframe = track.kind == "video" and vp8_keyframe(packet.payload)
        rid = None
        if track.rids:
            rid_id = peer.rid_ext_id
            rid = track.rid_of(packet.ssrc, packet.extensions.get(rid_id) if rid_id else None)
            if rid is None:
                stats.dropped_unknown_pt += 1
                return
            track.layer_bytes[rid] = track.layer_bytes.get(rid, 0) + len(packet.payload)
        track.packets += 1
        track.octets += len(packet.payload)
        call = self.calls.get(session.call_id)
        if call is None:
            return
        key = f"{session.session_id}:{track.label}"
        track_routes = self._tracks.get(key)
        if track_routes is None:
            track_routes = self._tracks[key] = TrackRoutes(
                self._build_routes(call, session.session_id, key))
            self.control_stats.route_builds += 1
        if rid is not None or not fastpath.AVAILABLE:
            # Simulcast picks a layer per receiver: decided here, in Python.
            stats.rtp_forwarded += self._send_each(track_routes.routes, packet, level_byte,
                                                   keyframe, rid, track)
            return
        plan = track_routes.current
        if plan is None:
            computed = track_routes.targets_computed
            plan = track_routes.plan()
            self.control_stats.plan_builds += 1
            self.control_stats.targets_computed += track_routes.targets_computed - computed
        forwarded = self._fan_out(track_routes, plan, packet, level_byte, keyframe,
                                  track.kind)
        if plan.slow:
            forwarded += self._send_each(plan.slow, packet, level_byte, keyframe, None, track)
        stats.rtp_forwarded += forwarded

    def _fan_out(self, track_routes: TrackRoutes, plan: Plan, packet: ParsedRtp,
                 level_byte: int | None,
                 keyframe: bool, kind: str) -> int:
        """Send to the plan's UDP/IPv4 receivers with the C fan-out; returns copies sent."""
        if not plan.targets:
            return 0
        fd = self.mux.fanout_fd()
        if fd < 0:  # asyncio holds queued datagrams: keep their order
            return self._send_each(plan.fast, packet, level_byte, keyframe, None, None)
        if keyframe:
            for _receiver, down in plan.fast:
                down.needs_keyframe = False
        self._fanouts += 1
        timed = self.write_timer is not None and not self._fanouts % WRITE_SAMPLE_EVERY
        start = time.perf_counter() if timed else 0.0
        sent, plain_octets, wire_octets, errors, srtp_errors, stale, unsent = fastpath.fanout(
            fd, packet.first_byte, packet.marker, packet.sequence, packet.timestamp,
            packet.ssrc, packet.payload, -1 if level_byte is None else level_byte,
            plan.targets)
        if timed and sent and self.write_timer is not None:
            self.write_timer(kind, (time.perf_counter() - start) / sent)
        self.mux.fanned_out(sent, wire_octets, errors, unsent)
        self.stats.bytes_forwarded += plain_octets
        self.stats.srtp_protect_errors += srtp_errors
        if stale:
            # A receiver's selected pair changed: send it the Python way, replan it next time.
            for i in stale:
                track_routes.refresh(plan.fast[i][0].session_id)
            sent += self._send_each([plan.fast[i] for i in stale], packet, level_byte,
                                    keyframe, None, None)
        return sent

    def _send_each(self, routes: list[tuple[MediaPeer, DownTrack]], packet: ParsedRtp,
                   level_byte: int | None, keyframe: bool, rid: str | None,
                   track: PublishedTrack | None) -> int:
        """The per-receiver Python path; returns copies sent."""
        stats = self.stats
        forwarded = 0
        for receiver, down in routes:
            if not down.negotiated:
                continue
            if rid is not None and track is not None and rid != down.layer:
                # Simulcast: switch to the wanted layer only at its keyframe.
                if not (keyframe and rid == (down.target_layer or track.rids[0])):
                    continue
                down.layer = rid
                down.switched_at = self._loop.time()
                down.layer_switches += 1
                stats.simulcast_switches += 1
            if keyframe:
                down.needs_keyframe = False
            out = down.rewrite.build(packet, level_byte)
            if receiver.send_rtp(out):
                forwarded += 1
                stats.bytes_forwarded += len(out)
        return forwarded

    def _update_routes_of(self, receiver: MediaPeer) -> None:
        """A receiver's downtracks changed: update its entry in those tracks' routes only."""
        self.control_stats.invalidations += 1
        receiver_id = receiver.session_id
        for key, down in receiver.downtracks.items():
            track_routes = self._tracks.get(key)
            if track_routes is not None:
                track_routes.set(receiver_id, (receiver, down))
        for key in receiver.retired:
            track_routes = self._tracks.get(key)
            if track_routes is not None:
                track_routes.set(receiver_id, None)

    def _drop_routes_of(self, session_id: str) -> None:
        """A participant left: its tracks stop, and it receives no other track."""
        self.control_stats.invalidations += 1
        prefix = f"{session_id}:"
        for key in [k for k in self._tracks if k.startswith(prefix)]:
            del self._tracks[key]
        for track_routes in self._tracks.values():
            track_routes.set(session_id, None)

    def _routes(self, key: str) -> list[Route]:
        """A publisher track's receivers, if it has forwarded since it started (else none)."""
        track_routes = self._tracks.get(key)
        return track_routes.routes if track_routes is not None else []

    def _build_routes(self, call: Call, publisher_id: str, key: str) -> dict[str, Route]:
        routes = {}
        for other_id in call.sessions:
            other = self.participants.get(other_id)
            if other_id == publisher_id or other is None:
                continue
            down = other.peer.downtracks.get(key)
            if down is not None:
                routes[other_id] = (other.peer, down)
        return routes

    @staticmethod
    def _track_by_payload_type(peer: MediaPeer, payload_type: int) -> PublishedTrack | None:
        """Last resort when neither MID nor SSRC is known: the one track of that kind."""
        kind = "audio" if payload_type == peer.opus_pt else (
            "video" if payload_type == peer.vp8_pt else None)
        candidates = [t for t in peer.published.values() if t.kind == kind]
        return candidates[0] if len(candidates) == 1 else None

    def _voice_activity(self, session: Session, level: int) -> None:
        if level <= VOICE_LEVEL_DBOV:
            session.last_loud = self._loop.time()
            if not session.state.voice:
                session.state.voice = True
                call = self.calls.get(session.call_id)
                if call is not None:
                    spawn(self.broadcast(call, events.UserState(
                        type="user_voice_on", session_id=session.session_id).wire()),
                          "voice-on")

    def _detect_loss(self, peer: MediaPeer, track: PublishedTrack, packet: ParsedRtp) -> None:
        """Gaps in a publisher's video: ask it again (NACK upstream, RFC 4585 §6.2.1)."""
        track.missing.pop(packet.sequence, None)
        highest = track.highest_seq.get(packet.ssrc)  # per SSRC: simulcast layers differ
        if highest is None or (packet.sequence - highest) & 0xFFFF < 0x8000:
            if highest is not None:
                missing = missing_between(highest, packet.sequence)
                if missing:
                    now = self._loop.time()
                    for sequence in missing:
                        track.missing[sequence] = now
                    if peer.send_rtcp(nack(packet.ssrc, missing)):
                        track.nacks_sent += 1
                        self.stats.nacks_sent_upstream += 1
            track.highest_seq[packet.ssrc] = packet.sequence

    def send_keyframe_request(self, publisher: MediaPeer, track: PublishedTrack,
                              ssrc: int | None = None) -> None:
        if ssrc is None and track.rids:
            # Simulcast: ask for a keyframe on every layer (each is its own stream).
            for layer_ssrc in list(track.ssrc_rid):
                self.send_keyframe_request(publisher, track, layer_ssrc)
            return
        ssrc = ssrc or track.primary_ssrc or next(iter(track.ssrcs), None)
        if ssrc is not None and publisher.send_rtcp(pli(ssrc)):
            self.stats.plis_sent += 1

    def downtrack_source(self, down: DownTrack) -> tuple[MediaPeer, PublishedTrack] | None:
        return self.published_track(down.publisher_id, down.label)

    # -- housekeeping -----------------------------------------------------------------------

    async def _housekeep(self) -> None:
        """Voice-off detection, vanished participants and expired reconnect windows."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await self._housekeep_once()
            except Exception:  # keep the loop alive whatever one pass hits
                log.exception("housekeeping pass failed")

    def _choose_layers(self, now: float) -> None:
        """Simulcast: each receiver's target layer from its bandwidth estimate (REMB)."""
        interval = now - self._last_layer_rates
        if interval >= 1.0:
            self._last_layer_rates = now
        for participant in self.participants.values():
            for track in participant.peer.published.values():
                if not track.rids:
                    continue
                if interval >= 1.0:
                    track.layer_bps = {rid: 8 * count / interval
                                       for rid, count in track.layer_bytes.items()}
                    track.layer_bytes = {}
                for _receiver, down in self._routes(
                        f"{participant.session.session_id}:{track.label}"):
                    target = choose_layer(track.rids, track.layer_bps, down.remb_bps,
                                          down.layer, now - down.switched_at)
                    if target != down.layer and target != down.target_layer:
                        down.target_layer = target
                        ssrc = track.ssrc_of(target)
                        if ssrc is not None and track.keyframes.request() == 0:
                            self.send_keyframe_request(participant.peer, track, ssrc)
                    elif target == down.layer:
                        down.target_layer = target

    def simulcast_snapshot(self) -> list[dict[str, Any]]:
        """Per simulcast publisher track: layer bitrates, and the layer each receiver gets."""
        out = []
        for participant in self.participants.values():
            for track in participant.peer.published.values():
                if not track.rids:
                    continue
                key = f"{participant.session.session_id}:{track.label}"
                out.append({"publisher": participant.session.session_id, "label": track.label,
                            "layers_bps": {rid: round(track.layer_bps.get(rid, 0.0))
                                           for rid in track.rids},
                            "receivers": {peer.session_id: down.layer
                                          for peer, down in self._routes(key)}})
        return out

    def _keyframe_upkeep(self, now: float) -> None:
        """Keyframes for receivers still waiting for one, and after losses nobody repaired.

        Requests go through each publisher stream's throttle (at most one a second).
        """
        # Only video needs keyframes: look up the video sources' downtracks rather than
        # scanning every receiver's every track (n² in a large audio call, 4 times a second).
        video_keys = [f"{p.session.session_id}:{t.label}" for p in self.participants.values()
                      for t in p.peer.published.values() if t.kind == "video"]
        for participant in self.participants.values():
            downtracks = participant.peer.downtracks
            for key in video_keys:
                down = downtracks.get(key)
                if down is None or not down.negotiated:
                    continue
                switching = down.target_layer is not None and down.target_layer != down.layer
                if down.needs_keyframe or switching:
                    self.rtcp.keyframe_for_downtrack(down)
            for track in participant.peer.published.values():
                if track.missing and now - min(track.missing.values()) > UNREPAIRED_AFTER:
                    track.missing.clear()
                    if track.keyframes.request() == 0:
                        self.send_keyframe_request(participant.peer, track)

    def _report_to_publishers(self, now: float) -> None:
        """Once a second: receiver reports and REMB to every publisher (RFC 3550 §6.2)."""
        if now - self._last_reports < REPORT_INTERVAL:
            return
        self._last_reports = now
        for participant in self.participants.values():
            peer = participant.peer
            if not peer.connected or not peer.published:
                continue
            report = UplinkReport()
            estimates: list[int] = []
            for track in peer.published.values():
                for ssrc, stats in track.reception.items():
                    report.blocks.append(stats.block(ssrc, now))
                if track.kind == "video" and track.reception:
                    report.remb_ssrcs.extend(track.reception)
                    estimates.extend(self._receiver_estimates(peer.session_id, track.label))
            if report.remb_ssrcs:
                simulcast = any(t.rids for t in peer.published.values())
                # A simulcast publisher must keep every layer going (each receiver gets
                # the layer it can take); a single-layer one is held to its weakest viewer.
                report.remb_bps = SIMULCAST_REMB_BPS if simulcast else clamp_remb(estimates)
            if report.blocks:
                peer.send_rtcp(report.packet())

    def _receiver_estimates(self, publisher_id: str, label: str) -> list[int]:
        routes = self._routes(f"{publisher_id}:{label}")
        return [down.remb_bps for _peer, down in routes if down.remb_bps]

    async def _housekeep_once(self) -> None:
        now = self._loop.time()
        self._choose_layers(now)
        self._keyframe_upkeep(now)
        self._report_to_publishers(now)
        for participant in list(self.participants.values()):
            session = participant.session
            if session.state.voice and now - session.last_loud > VOICE_OFF_AFTER:
                session.state.voice = False
                call = self.calls.get(session.call_id)
                if call is not None:
                    await self.broadcast(call, events.UserState(
                        type="user_voice_off", session_id=session.session_id).wire())
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


def _unwrap_rtx(packet: ParsedRtp, track: PublishedTrack) -> ParsedRtp | None:
    """RFC 4588 §4: the original sequence number leads the RTX payload."""
    if len(packet.payload) < 2:
        return None
    original = int.from_bytes(packet.payload[:2], "big")
    return ParsedRtp(packet.first_byte, packet.marker,
                     track.rtx_payload_types[packet.payload_type], original, packet.timestamp,
                     track.primary_ssrc or packet.ssrc, packet.payload[2:], packet.extensions)
