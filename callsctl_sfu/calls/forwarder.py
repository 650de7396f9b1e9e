"""The forwarder: every decrypted RTP packet, out to the receivers it should reach.

CallManager (calls/manager.py) owns membership and signaling: who is in which
call, host, mute, events. This module owns the media plane's state and the
per-packet path: the per-track routes and fan-out plans (calls/forwarding.py),
audio forwarding rules, simulcast layer choice, NACK/PLI/sender-report routing
(rtc/rtcp_routing.py works through this object) and the once-a-second reports
to publishers. The two meet through a narrow interface:

membership -> forwarder
    add_session(session_id, call_id, peer)   a participant joined (no routes yet)
    remove_session(session_id)               it left: its tracks stop, it receives none
    set_muted(session_id, muted)             muted audio is dropped here, not trusted to
                                             the client
    peer_connected(peer)                     media connected: its receivers can be fanned to
    published_changed(peer)                  what it publishes changed: receivers need
                                             keyframes
    housekeep(now)                           layer choice, keyframe upkeep, reports

peer -> forwarder (callbacks MediaPeer is built with)
    on_rtp(peer, data), on_rtcp(peer, data), on_downtracks_ready(peer, tracks)

forwarder -> membership
    on_loud(session_id)                      a loud audio packet (voice activity, RFC 6464)

forwarder -> metrics (calls/forward_metrics.py)
    metrics.on_send_cost(kind, seconds)      a sample of datagrams' write cost

Readers: `stats` (ForwardingStats), `routing_stats`, `simulcast_snapshot()`.
Everything here runs on the event loop's thread; docs/architecture.md ("The
forwarder seam") says how a media plane on other threads would attach here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callsctl_sfu.calls.forward_metrics import ForwardMetrics, NoMetrics
from callsctl_sfu.calls.forwarding import Plan, Route, TrackRoutes
from callsctl_sfu.calls.queuedelay import QueueDelay
from callsctl_sfu.rtc import fastpath
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.rtcp import ReportBlock, missing_between, nack, pli
from callsctl_sfu.rtc.rtp import ParsedRtp, audio_level, parse_rtp, vp8_keyframe
from callsctl_sfu.rtc.simulcast import choose_layer

if TYPE_CHECKING:  # built on aiortc: loaded with the first call (rtc/medialoader.py)
    from callsctl_sfu.rtc.peer import DownTrack, MediaPeer
    from callsctl_sfu.rtc.rtcp_routing import RtcpRouter
    from callsctl_sfu.rtc.tracks import PublishedTrack

# RFC 6464 levels are -dBov: 0 is loudest, 127 silence. Speech sits well above -50 dBov.
VOICE_LEVEL_DBOV = 50
# A gap the publisher has not filled after this long will not be: ask for a keyframe.
UNREPAIRED_AFTER = 0.3
REPORT_INTERVAL = 1.0
SIMULCAST_REMB_BPS = 3_000_000
# One fan-out (C) or one per-receiver send (Python) in this many is timed for
# rtcd_rtc_rtp_tracks_writes_time.
WRITE_SAMPLE_EVERY = 64


@dataclass
class ForwardingStats:
    """Counters for operators and for bench/: what the hot path did."""

    rtp_in: int = 0
    rtp_in_c: int = 0  # of rtp_in, the packets the C ingress handled (rtc/_ingress.c)
    rtp_forwarded: int = 0
    bytes_forwarded: int = 0
    dropped_muted: int = 0
    # Audio not forwarded: it waited over media_late_drop_ms in the socket (C ingress).
    dropped_late: int = 0
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
class RoutingStats:
    """The forwarder's share of the control plane's work (GET /stats "control").

    A join must cost O(1) plan rebuilds and fan-out targets (bench/join_storm.py).
    """

    invalidations: int = 0  # routes and plans dropped (membership, negotiation, connection)
    route_builds: int = 0  # one publisher track's receiver list rebuilt
    plan_builds: int = 0  # one publisher track's fan-out plan (re)assembled
    targets_computed: int = 0  # receivers' fan-out targets worked out for those plans


class _Member:
    """One session as the forwarder sees it: its peer, its call, whether it is muted."""

    __slots__ = ("session_id", "call_id", "peer", "muted", "track_keys")

    def __init__(self, session_id: str, call_id: str, peer: MediaPeer) -> None:
        self.session_id = session_id
        self.call_id = call_id
        self.peer = peer
        self.muted = False
        # Track label -> its key in the routing tables ("session:label"), built once per
        # label instead of an f-string per packet.
        self.track_keys: dict[str, str] = {}

    def track_key(self, label: str) -> str:
        """This member's routing key for one of its tracks (cached)."""
        key = self.track_keys.get(label)
        if key is None:
            key = self.track_keys[label] = f"{self.session_id}:{label}"
        return key


class Forwarder:
    """Routes, plans and the per-packet path of one server (see the module docstring)."""

    def __init__(self, mux: UdpMux, metrics: ForwardMetrics | None = None,
                 on_loud: Callable[[str], None] | None = None) -> None:
        self.mux = mux
        self.metrics: ForwardMetrics = metrics if metrics is not None else NoMetrics()
        self.on_loud: Callable[[str], None] = on_loud or (lambda _session_id: None)
        self.stats = ForwardingStats()
        # How long the packets the C ingress forwarded waited in the media socket.
        self.queue_delay = QueueDelay(fastpath.queue_wait_bounds_us())
        self.routing_stats = RoutingStats()
        self._rtcp: RtcpRouter | None = None
        self._loop = asyncio.get_event_loop()
        self._members: dict[str, _Member] = {}
        # The members that publish video, and those of them that simulcast: housekeeping
        # (4 times a second) walks these, not every member (published_changed keeps them).
        self._video_members: dict[str, _Member] = {}
        self._simulcast_members: dict[str, _Member] = {}
        # Call id -> its members in join order (the receivers of each other's tracks).
        self._calls: dict[str, dict[str, _Member]] = {}
        # Publisher track key -> its receivers and fan-out plan (calls/forwarding.py),
        # built on the track's first packet and then updated one receiver at a time.
        self._tracks: dict[str, TrackRoutes] = {}
        self._fanouts = 0
        self._python_sends = 0
        self._last_reports = 0.0
        self._last_layer_rates = 0.0
        # Call id -> a number for the C ingress: packets of different calls reach disjoint
        # receivers, so their fan-outs may be sent on different threads at once.
        self._call_groups: dict[str, int] = {}
        self._group_numbers = itertools.count()
        if mux is not None:  # the forwarder's own tests run it without a socket
            mux.ingress_sink = self.ingress_done

    @property
    def rtcp(self) -> RtcpRouter:
        """RTCP routing (rtc/rtcp_routing.py), made when a session first needs it.

        It is built on aiortc's RTCP packets, part of the media stack an idle server
        does not load (rtc/medialoader.py); only sessions reach here, and a session
        exists only once that stack is loaded.
        """
        router = self._rtcp
        if router is None:
            from callsctl_sfu.rtc.rtcp_routing import RtcpRouter

            router = self._rtcp = RtcpRouter(self)
        return router

    # -- membership ---------------------------------------------------------------------

    def add_session(self, session_id: str, call_id: str, peer: MediaPeer) -> None:
        """A participant joined: it may publish and receive (routes come with its tracks)."""
        member = _Member(session_id, call_id, peer)
        self._members[session_id] = member
        self._calls.setdefault(call_id, {})[session_id] = member
        self._note_video(member)

    def _note_video(self, member: _Member) -> None:
        """Whether this member publishes video, and simulcast video, as its peer now says."""
        for table, tracks in ((self._video_members, member.peer.video_published),
                              (self._simulcast_members, member.peer.simulcast_published)):
            if tracks:
                table[member.session_id] = member
            else:
                table.pop(member.session_id, None)

    def remove_session(self, session_id: str) -> None:
        """A participant left: its tracks stop, and it receives no other track."""
        member = self._members.pop(session_id, None)
        self._video_members.pop(session_id, None)
        self._simulcast_members.pop(session_id, None)
        if member is not None:
            in_call = self._calls.get(member.call_id)
            if in_call is not None:
                in_call.pop(session_id, None)
                if not in_call:
                    del self._calls[member.call_id]
                    self._call_groups.pop(member.call_id, None)
        self.routing_stats.invalidations += 1
        prefix = f"{session_id}:"
        for key in [k for k in self._tracks if k.startswith(prefix)]:
            del self._tracks[key]
        for track_routes in self._tracks.values():
            track_routes.set(session_id, None)

    def set_muted(self, session_id: str, muted: bool) -> None:
        """A muted participant's microphone track is dropped here (the client may still send)."""
        member = self._members.get(session_id)
        if member is not None:
            member.muted = muted
            member.peer.drop_ingress_routes()  # its audio comes up here to be decided again

    def peer_connected(self, peer: MediaPeer) -> None:
        """A receiver the plans sent the slow way (or skipped) can now be fanned to."""
        for key in peer.downtracks:
            track_routes = self._tracks.get(key)
            if track_routes is not None:
                track_routes.refresh(peer.session_id)

    def published_changed(self, publisher: MediaPeer) -> None:
        """What a participant publishes changed: the others' new video needs a keyframe.

        MediaPeer calls this (through the manager) whenever its tracks' labels or
        simulcast layers change, which is also when its video tuples change.
        """
        member = self._members.get(publisher.session_id)
        if member is None:
            return
        self._note_video(member)
        for other in list(self._calls.get(member.call_id, {}).values()):
            if other.session_id != publisher.session_id:
                self.request_keyframes_for(other.peer)

    def on_downtracks_ready(self, receiver: MediaPeer, tracks: list[DownTrack]) -> None:
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

    def on_rtcp(self, peer: MediaPeer, data: bytes) -> None:
        """Decrypted RTCP from a participant (rtc/rtcp_routing.py)."""
        self.rtcp.on_rtcp(peer, data)

    def on_receiver_reports(self, peer: MediaPeer, now: float, blocks: list[ReportBlock]) -> None:
        """Receiver report blocks the C ingress read (on its reader thread)."""
        self.rtcp.on_receiver_reports(peer, now, blocks)

    # -- lookups for RTCP routing -----------------------------------------------------------

    def published_track(self, publisher_id: str, label: str) -> tuple[MediaPeer,
                                                                      PublishedTrack] | None:
        member = self._members.get(publisher_id)
        if member is None:
            return None
        for track in member.peer.published.values():
            if track.label == label:
                return member.peer, track
        return None

    def downtrack_source(self, down: DownTrack) -> tuple[MediaPeer, PublishedTrack] | None:
        return self.published_track(down.publisher_id, down.label)

    def receivers_of(self, publisher_id: str, key: str) -> Iterator[tuple[MediaPeer,
                                                                         DownTrack]]:
        """Every other member of the publisher's call that has a downtrack for `key`."""
        member = self._members.get(publisher_id)
        if member is None:
            return
        for other in list(self._calls.get(member.call_id, {}).values()):
            down = other.peer.downtracks.get(key)
            if down is not None:
                yield other.peer, down

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

    # -- the per-packet path ----------------------------------------------------------------

    def on_rtp(self, peer: MediaPeer, data: bytes) -> None:
        """The hot path: one decrypted packet from a publisher, out to everyone else."""
        stats = self.stats
        stats.rtp_in += 1
        member = self._members.get(peer.session_id)
        if member is None:
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
        level_byte = None
        if track.kind == "audio":
            if member.muted and track.label == "audio":
                stats.dropped_muted += 1
                self._route_in_c(peer, member, track, packet, None, None)
                return
            if track.label == "audio":
                level, _vad = audio_level(packet, peer.audio_level_id)
                if level <= VOICE_LEVEL_DBOV:
                    self.on_loud(member.session_id)
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
        track.python_packets += 1
        track.python_octets += len(packet.payload)
        key = member.track_keys.get(track.label) or member.track_key(track.label)
        track_routes = self._tracks.get(key)
        if track_routes is None:
            track_routes = self._tracks[key] = TrackRoutes(self._build_routes(member, key),
                                                           on_change=self._track_changed)
            self.routing_stats.route_builds += 1
        if rid is not None or not fastpath.AVAILABLE:
            # Simulcast picks a layer per receiver: decided here, in Python.
            stats.rtp_forwarded += self._send_each(track_routes.routes, packet, level_byte,
                                                   keyframe, rid, track)
            return
        plan = track_routes.current
        if plan is None:
            plan = self._assemble(track_routes)
        forwarded = self._fan_out(track_routes, plan, packet, level_byte, keyframe,
                                  track.kind)
        if plan.slow:
            forwarded += self._send_each(plan.slow, packet, level_byte, keyframe, None, track)
        elif track_routes.current is plan:
            self._route_in_c(peer, member, track, packet, track_routes, plan)
        stats.rtp_forwarded += forwarded

    def _assemble(self, track_routes: TrackRoutes) -> Plan:
        """The track's plan, re-assembled after a change (counted for GET /stats)."""
        computed = track_routes.targets_computed
        plan = track_routes.plan()
        self.routing_stats.plan_builds += 1
        self.routing_stats.targets_computed += track_routes.targets_computed - computed
        return plan

    def _track_changed(self, track_routes: TrackRoutes) -> None:
        """A track's receivers changed: if the C ingress forwards it, hand it the new plan now.

        Until then the ingress hands the track's packets up to on_rtp, which fans each
        out from the event loop. Deferring the re-assembly even to the loop's next turn
        left that window open for the rest of a busy turn (a join's negotiation runs
        for milliseconds): in a join storm most of the speakers' packets then came up.
        Each change re-assembles once (O(receivers) list building, the targets of the
        changed receiver only). A plan with receivers on the Python path (ICE-TCP,
        IPv6) stays with on_rtp, as does a muted publisher's route.
        """
        route = track_routes.fast_route
        if route is None or route.muted:
            return  # not on the ingress: its next packet is decided in on_rtp anyway
        plan = self._assemble(track_routes)
        if not plan.slow:
            route.targets = plan.targets

    def _route_in_c(self, peer: MediaPeer, member: _Member, track: PublishedTrack,
                    packet: ParsedRtp, track_routes: TrackRoutes | None,
                    plan: Plan | None) -> None:
        """Let the C ingress handle this audio stream's next packets (rtc/_ingress.c).

        Called once this path has handled a packet of the stream completely: a plan
        whose receivers are all on the C fan-out (or, muted, none at all). Any later
        change (plan rebuilt, mute, renegotiation) takes the route away again, so
        every decision stays here; the ingress repeats only what was decided.
        """
        ingress = peer.ingress
        if ingress is None or self.mux.ingress is None \
                or packet.payload_type in track.rtx_payload_types:
            return  # no C reader (it failed, or this loop has none): nothing to register
        route = track.fast_route
        if route is None:
            route = track.fast_route = fastpath.InRoute(member.session_id, packet.payload_type)
        route.payload_type = packet.payload_type
        group = self._call_groups.get(member.call_id)
        if group is None:
            group = self._call_groups[member.call_id] = next(self._group_numbers)
        route.group = group
        route.level_id = peer.audio_level_id if peer.audio_level_id is not None else -1
        route.reception = track.reception.get(packet.ssrc)
        # Video: the ingress takes only the next packet of a frame and keeps the NACK ring
        # and the highest sequence current; a gap or a keyframe comes back up here.
        route.video = track.kind == "video"
        route.ring = track.ring if route.video else None
        route.highest_seq = track.highest_seq if route.video else None
        route.highest = track.highest_seq.get(packet.ssrc, -1) if route.video else -1
        if plan is None or track_routes is None:  # muted: dropped there after accounting
            route.muted = True
            route.targets = []
        else:
            route.muted = False
            route.targets = plan.targets
            track_routes.fast_route = route
        ingress.set_route(packet.ssrc, route)

    def collect_ingress(self) -> None:
        """Fold the C ingress's reader-thread counters into `stats` now (call before reading).

        The reader thread (rtc/_ingress.c) counts in C and wakes the event loop only
        when something needs Python; readers of the counters collect first so what they
        show is exact.
        """
        if self.mux is not None:
            self.mux.collect_ingress()

    def ingress_done(self, result: Any) -> None:
        """What the C ingress forwarded (a _fanout.DrainResult): rtc/mux.py calls this per
        read, or, with the reader thread, with its counters since the last collection and
        with each hand-up (speech heard)."""
        loud, samples = result.loud, result.samples
        stats = self.stats
        stats.rtp_in += result.rtp_in
        stats.rtp_in_c += result.rtp_in
        stats.rtp_forwarded += result.forwarded
        stats.bytes_forwarded += result.plain_octets
        stats.srtp_protect_errors += result.srtp_protect_errors
        stats.dropped_muted += result.dropped_muted
        stats.dropped_late += result.dropped_late
        self.queue_delay.add(result.queue_wait)
        stats.dropped_malformed += result.dropped_malformed
        if samples:
            for kind, seconds in samples:
                self.metrics.on_send_cost(kind, seconds)
        if loud:
            for session_id in loud:
                self.on_loud(session_id)

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
        timed = not self._fanouts % WRITE_SAMPLE_EVERY
        start = time.perf_counter() if timed else 0.0
        # Synchronous even when it spreads the copies over the fan-out pool (--media-threads):
        # this thread, the only user of the targets' SRTP contexts, waits in it meanwhile.
        sent, plain_octets, wire_octets, errors, srtp_errors, stale, unsent = fastpath.fanout(
            fd, packet.first_byte, packet.marker, packet.sequence, packet.timestamp,
            packet.ssrc, packet.payload, -1 if level_byte is None else level_byte,
            plan.targets)
        if timed and sent:
            self.metrics.on_send_cost(kind, (time.perf_counter() - start) / sent)
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

    def _send_each(self, routes: list[Route], packet: ParsedRtp,
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
            self._python_sends += 1
            if self._python_sends % WRITE_SAMPLE_EVERY:
                sent = receiver.send_rtp(out)
            else:
                start = time.perf_counter()
                sent = receiver.send_rtp(out)
                if sent:
                    self.metrics.on_send_cost(down.kind, time.perf_counter() - start)
            if sent:
                forwarded += 1
                stats.bytes_forwarded += len(out)
        return forwarded

    def _update_routes_of(self, receiver: MediaPeer) -> None:
        """A receiver's downtracks changed: update its entry in those tracks' routes only."""
        self.routing_stats.invalidations += 1
        receiver_id = receiver.session_id
        for key, down in receiver.downtracks.items():
            track_routes = self._tracks.get(key)
            if track_routes is not None:
                track_routes.set(receiver_id, (receiver, down))
        for key in receiver.retired:
            track_routes = self._tracks.get(key)
            if track_routes is not None:
                track_routes.set(receiver_id, None)

    def _routes(self, key: str) -> list[Route]:
        """A publisher track's receivers, if it has forwarded since it started (else none)."""
        track_routes = self._tracks.get(key)
        return track_routes.routes if track_routes is not None else []

    def _build_routes(self, publisher: _Member, key: str) -> dict[str, Route]:
        routes = {}
        for other_id, other in self._calls.get(publisher.call_id, {}).items():
            if other_id == publisher.session_id:
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

    # -- housekeeping (CallManager calls this 4 times a second) ------------------------------

    def housekeep(self, now: float) -> None:
        """Simulcast layer choice, keyframes still owed, reports and REMB to publishers."""
        self._choose_layers(now)
        self._keyframe_upkeep(now)
        self._report_to_publishers(now)

    def _choose_layers(self, now: float) -> None:
        """Simulcast: each receiver's target layer from its bandwidth estimate (REMB)."""
        interval = now - self._last_layer_rates
        if interval >= 1.0:
            self._last_layer_rates = now
        for member in self._simulcast_members.values():
            for track in member.peer.simulcast_published:
                if interval >= 1.0:
                    track.layer_bps = {rid: 8 * count / interval
                                       for rid, count in track.layer_bytes.items()}
                    track.layer_bytes = {}
                for _receiver, down in self._routes(f"{member.session_id}:{track.label}"):
                    target = choose_layer(track.rids, track.layer_bps, down.remb_bps,
                                          down.layer, now - down.switched_at)
                    if target != down.layer and target != down.target_layer:
                        down.target_layer = target
                        ssrc = track.ssrc_of(target)
                        if ssrc is not None and track.keyframes.request() == 0:
                            self.send_keyframe_request(member.peer, track, ssrc)
                    elif target == down.layer:
                        down.target_layer = target

    def simulcast_snapshot(self) -> list[dict[str, Any]]:
        """Per simulcast publisher track: layer bitrates, and the layer each receiver gets."""
        out = []
        for member in self._members.values():
            for track in member.peer.published.values():
                if not track.rids:
                    continue
                key = f"{member.session_id}:{track.label}"
                out.append({"publisher": member.session_id, "label": track.label,
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
        video_keys = [f"{m.session_id}:{t.label}" for m in self._video_members.values()
                      for t in m.peer.video_published]
        if not video_keys:  # an audio-only server: nothing waits for a keyframe
            return
        for member in self._members.values():
            downtracks = member.peer.downtracks
            for key in video_keys:
                down = downtracks.get(key)
                if down is None or not down.negotiated:
                    continue
                switching = down.target_layer is not None and down.target_layer != down.layer
                if down.needs_keyframe or switching:
                    self.rtcp.keyframe_for_downtrack(down)
        for member in self._video_members.values():
            for track in member.peer.video_published:  # only video keeps a NACK ring
                if track.missing and now - min(track.missing.values()) > UNREPAIRED_AFTER:
                    track.missing.clear()
                    if track.keyframes.request() == 0:
                        self.send_keyframe_request(member.peer, track)

    def _report_to_publishers(self, now: float) -> None:
        """Once a second: receiver reports and REMB to every publisher (RFC 3550 §6.2)."""
        if now - self._last_reports < REPORT_INTERVAL:
            return
        self._last_reports = now
        if not self._members:
            return
        from callsctl_sfu.rtc.reports import UplinkReport, clamp_remb  # media stack: loaded

        for member in self._members.values():
            peer = member.peer
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


def _unwrap_rtx(packet: ParsedRtp, track: PublishedTrack) -> ParsedRtp | None:
    """RFC 4588 §4: the original sequence number leads the RTX payload."""
    if len(packet.payload) < 2:
        return None
    original = int.from_bytes(packet.payload[:2], "big")
    return ParsedRtp(packet.first_byte, packet.marker,
                     track.rtx_payload_types[packet.payload_type], original, packet.timestamp,
                     track.primary_ssrc or packet.ssrc, packet.payload[2:], packet.extensions)
