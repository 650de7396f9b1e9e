"""One participant's WebRTC connection to the SFU, on the shared media socket.

aiortc negotiates ICE, DTLS and SRTP keys. Everything after that bypasses its
track machinery: decrypted RTP is handed to the forwarder (`on_rtp`), and forwarded
copies are protected with this peer's outbound SRTP context and sent on the
shared socket (`send_rtp`). aiortc's per-track sender/receiver loops are
silenced so they neither burn CPU nor emit RTCP about streams they never saw.

Signaling follows what standard clients expect (docs/interop.md): the client makes the
first offer; the server re-offers when the set of forwarded tracks changes;
signals are handled strictly in order, and on glare the server does not yield
(a client offer that collides with the server's pending offer is ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.sdp import candidate_from_sdp

from callsctl_sfu import events
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.rtc import aiortc_bridge, fastpath, sealing
from callsctl_sfu.rtc.fastpath import Rewrite, Target
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.muxproto import MuxedStunProtocol
from callsctl_sfu.rtc.rtcp import ReportBlock
from callsctl_sfu.rtc.rtp import AUDIO_LEVEL_URI, MID_URI, is_rtcp
from callsctl_sfu.rtc.sdp_munge import (
    harmonise,
    libwebrtc_numbering,
    merge_numbering,
    numbering_of,
)
from callsctl_sfu.rtc.sdpcheck import check_sdp
from callsctl_sfu.rtc.simulcast import (
    RID_URI,
    accept_layers,
    offered_layers,
    receive_layers,
    with_rid_extensions,
)
from callsctl_sfu.rtc.tracks import (
    LABEL_KINDS,
    PublishedTrack,
    discover_published,
    sending_sections,
    stream_id_for,
)
from callsctl_sfu.tasks import spawn

log = logging.getLogger("callsctl_sfu.rtc.peer")

OPUS_KEY = ("audio", "opus", 48000, 2)
VP8_KEY = ("video", "vp8", 90000, 1)
SignalSender = Callable[[dict[str, Any]], Awaitable[None]]

# Our transceivers always offer to receive as well: a client's addTrack may
# attach its track to one of them (JSEP's reuse rule, or Chromium associating a
# track added during our offer with our m-section), and once the client has
# answered a send-only offer "recvonly" it sees no need to renegotiate (W3C
# WebRTC §4.7.3, "check if negotiation is needed", compares against the offered
# direction): the participant would never be heard. A client with no track there
# simply sends nothing.
_FORWARDING, _RETIRED = "sendrecv", "recvonly"


class SignalError(CallsctlError, ValueError):
    """A signal the peer cannot apply; reported to the client as an error event."""
    code = "bad_signal"


async def _not_started(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for aiortc's RTCRtpSender.send / RTCRtpReceiver.receive.

    Those start an encoder loop, an RTCP loop and a decoder thread per track; a
    forwarding SFU needs none of them (it owns RTP and RTCP itself), and left
    running they cost CPU, a thread per track and send bogus RTCP. Never started,
    aiortc's stop() has nothing to wait for.
    """


@dataclass
class DownTrack:
    """One publisher track as one receiver gets it: a send-only transceiver of ours."""

    key: str
    publisher_id: str
    label: str
    transceiver: Any
    rewrite: Rewrite
    mid: str | None = None
    negotiated: bool = False
    # A video receiver cannot decode until it has a keyframe: set when the track
    # starts (or the source changes), cleared when a keyframe is forwarded.
    needs_keyframe: bool = True
    # Simulcast: the layer this receiver gets now, and the one it should get
    # (switched to at that layer's next keyframe).
    layer: str | None = None
    target_layer: str | None = None
    layer_switches: int = 0
    switched_at: float = 0.0
    plis_received: int = 0
    nacks_received: int = 0
    retransmitted: int = 0
    # Receiver-reported quality (RFC 3550 §6.4.2 report block), latest values.
    fraction_lost: float | None = None
    jitter: int | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    remb_bps: int | None = None
    # Sender reports forwarded to this receiver: NTP middle 32 bits -> when sent,
    # so its receiver reports (LSR/DLSR) give the SFU-to-receiver round trip.
    sr_sent: dict[int, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return LABEL_KINDS[self.label]


class MediaPeer:
    """Server side of one participant's RTCPeerConnection."""

    def __init__(
        self,
        session_id: str,
        mux: UdpMux,
        send_signal: SignalSender,
        on_rtp: Callable[[MediaPeer, bytes], None],
        on_state: Callable[[MediaPeer, str], None],
        on_rtcp: Callable[[MediaPeer, bytes], None] | None = None,
        on_reports: Callable[[MediaPeer, float, list[ReportBlock]], None] | None = None,
        on_tracks: Callable[[MediaPeer], None] | None = None,
        on_downtracks_ready: Callable[[MediaPeer, list[DownTrack]], None] | None = None,
        ring_size: int = 256,
        simulcast: bool = False,
    ) -> None:
        self.session_id = session_id
        self.mux = mux
        self._send_signal = send_signal
        self._on_rtp = on_rtp
        self._on_state = on_state
        self._on_rtcp = on_rtcp
        self._on_reports = on_reports
        self._on_tracks = on_tracks
        self._on_downtracks_ready = on_downtracks_ready
        self.ring_size = ring_size
        self.simulcast = simulcast
        # mid -> rids this client simulcasts there (only with simulcast enabled).
        self.layers: dict[str, list[str]] = {}
        self.rid_ext_id: int | None = None
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        # One DTLS certificate and OpenSSL context for every session (aiortc_bridge).
        aiortc_bridge.use_certificate(self.pc, aiortc_bridge.shared_certificate())
        # The RTCP CNAME aiortc chose; translated sender reports carry it.
        self.cname = aiortc_bridge.cname(self.pc)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker = spawn(self._run(), f"peer-{session_id}")
        self._pending_candidates: list[RTCIceCandidate] = []
        self.numbering = libwebrtc_numbering()
        self.downtracks: dict[str, DownTrack] = {}
        self.downtracks_by_ssrc: dict[int, DownTrack] = {}
        self.retired: dict[str, DownTrack] = {}
        self.wanted: dict[str, tuple[str, str]] = {}
        self.server_mids: set[str] = set()
        # Mids the client marks as sending, as of its latest description, and those
        # of ours on which its RTP has actually arrived.
        self.client_sending: set[str] = set()
        self.active_mids: set[str] = set()
        self.published: dict[str, PublishedTrack] = {}
        # The published video tracks, and the simulcast ones among them, as of the last
        # description: the forwarder's housekeeping (4 times a second) reads these instead
        # of scanning every participant's every track.
        self.video_published: tuple[PublishedTrack, ...] = ()
        self.simulcast_published: tuple[PublishedTrack, ...] = ()
        self.ssrc_to_mid: dict[int, str] = {}
        self.screen_stream: str | None = None
        # Every stream this client ever announced as a screen share: a track stays a
        # screen until it leaves the SDP, even when screen_off arrives first.
        self.screen_streams: set[str] = set()
        self.mid_ext_id: int | None = None
        self.vp8_pt: int | None = None
        self._negotiation_needed = False
        self.proto: MuxedStunProtocol | None = None
        self._rx_srtp: pylibsrtp.Session | None = None
        self._tx_srtp: pylibsrtp.Session | None = None
        # This peer's outgoing RTP protected by the server's own SRTP sender, or None:
        # _tx_srtp protects it (rtc/sealing.py). SRTCP always takes _tx_srtp.
        self._tx_rtp: Any | None = None
        self.connected = False
        self.dtls_released = False  # its DTLS record layer is rtc/dtlsrecord.py's
        self._nominated: dict[int, Any] = {}  # aioice's, bound at connect
        self._pair: Any = None
        self._addr: tuple[str, int] = ("", 0)
        self._send: Callable[[bytes, tuple[str, int]], None] = lambda _d, _a: None
        self.closed = False
        self.opus_pt: int | None = None
        self.audio_level_id: int | None = None
        self.glare_ignored = 0
        self.offers_sent = 0
        self._srtp_errors = 0
        self._rtcp_in = 0
        # This peer in the C ingress (fastpath.InSession) once DTLS is up, else None.
        self.ingress: Any = None

    @property
    def srtp_errors(self) -> int:
        """Packets SRTP refused, on the Python path and in the C ingress."""
        ingress = self.ingress
        return self._srtp_errors + (int(ingress.srtp_errors) if ingress is not None else 0)

    @srtp_errors.setter
    def srtp_errors(self, value: int) -> None:
        ingress = self.ingress
        self._srtp_errors = value - (int(ingress.srtp_errors) if ingress is not None else 0)

    @property
    def rtcp_in(self) -> int:
        """RTCP compounds received, decrypted in Python or in the C ingress."""
        ingress = self.ingress
        return self._rtcp_in + (int(ingress.rtcp_packets) if ingress is not None else 0)

    def _let_go_of_ingress(self) -> None:
        """Drop the C ingress's session, keeping its counts (the peer closes).

        Why: the InSession holds this peer's bound methods (on_plain, on_reports) and
        the peer holds it, a reference cycle that only the cyclic collector frees, and
        a frozen server's collector only at its next thaw (gcpolicy.py): it kept each
        departed session's whole peer, some 500 objects, until then.
        """
        ingress, self.ingress = self.ingress, None
        if ingress is not None:
            self._srtp_errors += int(ingress.srtp_errors)
            self._rtcp_in += int(ingress.rtcp_packets)
            ingress.on_reports = None

    def drop_ingress_routes(self) -> None:
        """Every packet of this peer goes up to Python until the forwarder routes it again."""
        if self.ingress is not None:
            self.ingress.clear_routes()

    # -- signaling ----------------------------------------------------------------

    def handle_signal(self, data: dict[str, Any]) -> None:
        """Queue a client signal; it is processed after everything queued before it."""
        self._queue.put_nowait(("signal", data))

    def set_sources(self, sources: dict[str, tuple[str, str]]) -> bool:
        """The publisher tracks this peer should receive (key -> (publisher, label)).

        Renegotiates when the set changes; returns whether it did.
        """
        if sources == self.wanted:
            return False
        self.wanted = dict(sources)
        self._queue.put_nowait(("negotiate", None))
        return True

    def set_screen_stream(self, stream_id: str | None) -> None:
        """The client said which of its streams is a screen share: relabel its tracks."""
        self.screen_stream = stream_id
        if stream_id is not None:
            self.screen_streams.add(stream_id)
        self._queue.put_nowait(("rediscover", None))

    async def _run(self) -> None:
        while True:
            kind, item = await self._queue.get()
            if self.closed:
                return
            try:
                if kind == "signal":
                    await self._apply_signal(item)
                elif kind == "rediscover":
                    self._discover_published()
                else:
                    self._negotiation_needed = True
                await self._maybe_offer()
            except SignalError as exc:
                await self._send_signal(events.Error(code=exc.code, message=str(exc)).wire())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiortc rejects an SDP: tell the client, keep serving
                log.warning("session %s: signal failed: %s", self.session_id, exc)
                await self._send_signal(events.Error(
                    code="bad_signal", message=f"could not apply signal: {exc}").wire())
            item = None  # the signal's SDP, not kept while waiting for the next one

    async def _apply_signal(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "offer":
            await self._on_offer(_sdp_of(data))
        elif kind == "answer":
            await self._on_answer(_sdp_of(data))
        elif kind == "candidate":
            candidate = data.get("candidate")
            if candidate is None:
                return  # end-of-candidates: nothing to do for a controlled agent
            if not isinstance(candidate, dict):
                raise SignalError("candidate must be an object with a 'candidate' string")
            parsed = _parse_candidate(candidate)  # malformed ones are refused right away
            if parsed is None:
                return
            if self.pc.remoteDescription is None:
                self._pending_candidates.append(parsed)
            else:
                await self.pc.addIceCandidate(parsed)
        else:
            raise SignalError("signal.data.type must be offer, answer or candidate")

    async def _on_offer(self, sdp: str) -> None:
        if self.pc.signalingState == "have-local-offer":
            # Glare: the server's offer stands; the client yields and answers it.
            self.glare_ignored += 1
            # Its numbers are bound on the client's side all the same (until it
            # rolls back): the server's next offers must not contradict them.
            self.numbering = merge_numbering(numbering_of(sdp), self.numbering)
            log.info("session %s: ignored client offer colliding with ours", self.session_id)
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._silence_aiortc_loops()
        self._read_client_sending(sdp)
        self._apply_directions()
        answer = await self.pc.createAnswer()
        self._attach_mux()
        await self.pc.setLocalDescription(answer)
        answer_sdp = self.pc.localDescription.sdp
        if self.simulcast:
            self.layers.update(offered_layers(sdp))
            answer_sdp = accept_layers(answer_sdp, sdp)
        answer_sdp = with_rid_extensions(answer_sdp, {}, offer=sdp)
        await self._send_signal(events.Signal(data={"type": "answer",
                                                    "sdp": answer_sdp}).wire())
        await self._after_negotiation()
        for parsed in self._pending_candidates:
            await self.pc.addIceCandidate(parsed)
        self._pending_candidates.clear()

    async def _on_answer(self, sdp: str) -> None:
        if self.pc.signalingState != "have-local-offer":
            raise SignalError("unexpected answer: the server has no offer pending")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._silence_aiortc_loops()
        await self._after_negotiation()

    async def _maybe_offer(self) -> None:
        """Offer a new description when the forwarded set changed and we may offer."""
        if not self._negotiation_needed or self.pc.remoteDescription is None:
            return
        if self.pc.signalingState != "stable" or self.closed:
            return
        self._negotiation_needed = False
        if not self._sync_downtracks():
            return
        offer = await self.pc.createOffer()
        self._silence_aiortc_loops()
        self._attach_mux()
        await self.pc.setLocalDescription(offer)
        sdp = harmonise(self.pc.localDescription.sdp, self.numbering)
        if self.layers:
            sdp = receive_layers(sdp, self.layers, self.numbering.extension_ids)
        sdp = with_rid_extensions(sdp, self.numbering.extension_ids)
        self.offers_sent += 1
        await self._send_signal(events.Signal(data={"type": "offer", "sdp": sdp}).wire())

    def _sync_downtracks(self) -> bool:
        """Add/retire send-only transceivers to match wanted_publishers; True if changed."""
        changed = False
        for key in list(self.downtracks):
            if key not in self.wanted:
                # Retired, kept for the same publisher and label: a receiver keeps a
                # transceiver's track identity (msid), so it may only ever carry that
                # one source, and a second transceiver with the same msid is invalid.
                track = self.downtracks.pop(key)
                track.negotiated = False
                self.retired[key] = track
                changed = True
        for key in sorted(set(self.wanted) - set(self.downtracks)):
            revived = self.retired.pop(key, None)
            if revived is not None:
                revived.needs_keyframe = True
                self.downtracks[key] = revived
                changed = True
                continue
            publisher_id, label = self.wanted[key]
            transceiver = self.pc.addTransceiver(LABEL_KINDS[label], direction=_FORWARDING)
            ssrc = random.getrandbits(32) or 1
            aiortc_bridge.set_sender_identity(
                transceiver.sender, ssrc=ssrc, stream_id=stream_id_for(publisher_id, label),
                track_id=f"{publisher_id}-{label}")
            track = DownTrack(key, publisher_id, label, transceiver,
                              Rewrite(ssrc=ssrc, payload_type=0))
            self.downtracks[key] = track
            self.downtracks_by_ssrc[ssrc] = track
            changed = True
        self._apply_directions()
        if changed and self._on_downtracks_ready is not None:
            self._on_downtracks_ready(self, [])  # the call's forwarding routes changed
        return changed

    def _read_client_sending(self, remote_sdp: str) -> None:
        """Note the mids on which the client says it sends (see `track_for`)."""
        self.client_sending = {media.rtp.muxId for media in sending_sections(remote_sdp)}
        self.active_mids &= self.client_sending

    def _apply_directions(self) -> None:
        """Forwarding transceivers send and receive; retired ones only receive."""
        for track in self.downtracks.values():
            track.transceiver.direction = _FORWARDING
        for track in self.retired.values():
            track.transceiver.direction = _RETIRED

    async def _after_negotiation(self) -> None:
        """Read the numbering both sides now agree on and arm the forwarded tracks."""
        remote = self.pc.remoteDescription
        if remote is None:
            return
        aiortc_bridge.share_negotiated(self.pc)  # equal codecs: one object (memory)
        aiortc_bridge.share_idle_parts(self.pc)  # calls-dc's SCTP queues, idle asyncio queues
        current = merge_numbering(numbering_of(remote.sdp), self.numbering)
        self.numbering = current
        self.drop_ingress_routes()  # payload types and extension ids may have changed
        self.opus_pt = current.payload_types.get(OPUS_KEY)
        self.vp8_pt = current.payload_types.get(VP8_KEY)
        self.audio_level_id = current.extension_ids.get(AUDIO_LEVEL_URI)
        self.mid_ext_id = current.extension_ids.get(MID_URI)
        self.rid_ext_id = current.extension_ids.get(RID_URI) if self.layers else None
        if self.pc.signalingState == "stable":
            ready = []
            lost = False  # a forwarded track lost its codec: the call's plans must drop it
            for track in self.downtracks.values():
                track.mid = track.transceiver.mid
                if track.mid is not None:
                    self.server_mids.add(track.mid)
                pt = self.opus_pt if track.kind == "audio" else self.vp8_pt
                if pt is not None:
                    track.rewrite.payload_type = pt
                track.rewrite.audio_level_id = (self.audio_level_id if track.kind == "audio"
                                                else None)
                if pt is not None and not track.negotiated:
                    ready.append(track)
                lost = lost or (pt is None and track.negotiated)
                track.negotiated = pt is not None
            if (ready or lost) and self._on_downtracks_ready is not None:
                self._on_downtracks_ready(self, ready)
            self._read_client_sending(remote.sdp)
            self._discover_published()

    def _discover_published(self) -> None:
        """Re-read what the client sends; tell the call when that changed."""
        remote = self.pc.remoteDescription
        if remote is None:
            return
        before = _published_shape(self.published)
        self.drop_ingress_routes()  # what is published, and how, may have changed
        self.published = discover_published(remote.sdp, self.server_mids, self.screen_streams,
                                            self.ring_size, self.published, self.active_mids)
        for mid, track in self.published.items():
            track.rids = self.layers.get(mid, [])
        self.video_published = tuple(t for t in self.published.values() if t.kind == "video")
        self.simulcast_published = tuple(t for t in self.video_published if t.rids)
        for mid, track in self.published.items():
            for ssrc in track.ssrcs:
                self.ssrc_to_mid[ssrc] = mid
        if _published_shape(self.published) != before and self._on_tracks:
            self._on_tracks(self)

    def track_for(self, ssrc: int, mid: bytes | None) -> PublishedTrack | None:
        """Route an incoming packet: MID extension first, then SSRC (RFC 8843 §9.2)."""
        if mid is not None:
            name = mid.decode("ascii", "replace")
            track = self.published.get(name)
            if track is None and name in self.client_sending and name not in self.active_mids:
                # RTP on one of our mids that the SDP left in doubt: a real track.
                self.active_mids.add(name)
                self._discover_published()
                track = self.published.get(name)
            if track is not None:
                if ssrc not in track.ssrcs:
                    track.ssrcs.add(ssrc)
                    self.ssrc_to_mid[ssrc] = track.mid
                return track
        known = self.ssrc_to_mid.get(ssrc)
        return self.published.get(known) if known is not None else None

    def _attach_mux(self) -> None:
        """Put every ICE agent of this connection on the shared socket before it gathers."""
        for ice_transport in aiortc_bridge.ice_transports(self.pc):
            self.mux.attach(aiortc_bridge.ice_connection(ice_transport))
        for dtls in aiortc_bridge.dtls_transports(self.pc):
            if not getattr(dtls, "_callsctl_watched", False):
                dtls._callsctl_watched = True
                dtls.on("statechange", lambda d=dtls: self._on_dtls_state(d))

    def _silence_aiortc_loops(self) -> None:
        for transceiver in self.pc.getTransceivers():
            transceiver.sender.send = _not_started
            transceiver.receiver.receive = _not_started
            # Never started: their loops' queue and events can be shared idle ones.
            aiortc_bridge.share_idle_sender(transceiver.sender)
            aiortc_bridge.share_idle_receiver(transceiver.receiver)

    # -- media --------------------------------------------------------------------

    def _on_dtls_state(self, dtls: Any) -> None:
        if dtls.state == "connecting":
            aiortc_bridge.note_dtls_records(dtls)
            return
        if dtls.state != "connected":
            return
        # The sending key, derived again while OpenSSL's connection is still there, when
        # the server's own sender can use it (rtc/sealing.py).
        send_key = (aiortc_bridge.srtp_send_key(dtls)
                    if not self.connected and sealing.wanted() else None)
        # Before aiortc's data channel starts on it: OpenSSL's connection is done with.
        self.dtls_released = aiortc_bridge.release_dtls(dtls)
        if self.connected:
            return
        connection = aiortc_bridge.ice_connection(dtls.transport)
        proto = next((p for p in aiortc_bridge.protocols(connection)
                      if isinstance(p, MuxedStunProtocol)), None)
        rx_srtp, tx_srtp = aiortc_bridge.srtp_sessions(dtls)
        if proto is None or rx_srtp is None:
            return
        self.proto = proto
        self._rx_srtp = rx_srtp
        self._tx_srtp = tx_srtp
        self._tx_rtp = sealing.outbound_rtp(send_key)
        # aioice's live nominated-pair dict, bound once: the media path reads it per packet.
        self._nominated = aiortc_bridge.nominated_pairs(connection)
        self.connected = True
        proto.fast_rx = self._fast_rx
        if fastpath.InSession is not None and self.mux.ingress is not None:
            # The C ingress decrypts this peer's media with the same inbound srtp_t.
            self.ingress = fastpath.InSession(aiortc_bridge.srtp_context_address(rx_srtp),
                                              rx_srtp, self._plain_rtp)
            if self._on_reports is not None:
                # Receiver reports are read on the ingress's thread; other RTCP comes
                # up decrypted to _plain_rtp.
                self.ingress.on_reports = self._reports_from_ingress
            self.mux.attach_ingress(proto, self.ingress)
        self._on_state(self, "connected")

    def _fast_rx(self, data: bytes) -> None:
        """SRTP/SRTCP straight from the shared socket: decrypt and hand RTP to the call."""
        try:
            if is_rtcp(data):
                plain_rtcp = self._rx_srtp.unprotect_rtcp(data)  # type: ignore[union-attr]
                self._rtcp_in += 1
                if self._on_rtcp is not None:
                    self._on_rtcp(self, plain_rtcp)
                return
            plain = self._rx_srtp.unprotect(data)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return
        self._on_rtp(self, plain)

    def _plain_rtp(self, plain: bytes) -> None:
        """A packet the C ingress decrypted but left to Python: a video gap or keyframe,
        or an RTCP compound that holds more than receiver reports (counted there)."""
        if self.closed:
            return
        if is_rtcp(plain):
            if self._on_rtcp is not None:
                self._on_rtcp(self, plain)
            return
        self._on_rtp(self, plain)

    def _reports_from_ingress(self, now: float, blocks: list[ReportBlock]) -> None:
        """Receiver report blocks the C ingress read, on its reader thread (GIL held)."""
        if not self.closed and self._on_reports is not None:
            self._on_reports(self, now, blocks)

    def send_rtp(self, packet: bytes) -> bool:
        """Protect with this receiver's SRTP context and send on its selected pair's path.

        The pair's protocol sends on the path the client chose: the shared UDP
        socket (IPv4 or IPv6) or its ICE-TCP connection (rtc/mux.py, rtc/icetcp.py).
        """
        if not self.connected:
            return False
        pair = self._nominated.get(1)
        if pair is None:
            return False
        if pair is not self._pair:
            # The client may renominate; rebuild the send path only when it does.
            self._pair, self._addr = pair, pair.remote_addr
            self._send = pair.protocol.send_datagram
        try:
            data = (self._tx_rtp or self._tx_srtp).protect(packet)  # type: ignore[union-attr]
        except (pylibsrtp.Error, ValueError):
            self.srtp_errors += 1
            return False
        self._send(data, self._addr)
        return True

    @property
    def sealer(self) -> Any | None:
        """The SrtpSealer protecting this peer's outgoing RTP, or None: libsrtp does."""
        return self._tx_rtp

    def fanout_target(self, down: DownTrack) -> Any | None:
        """This receiver as a Target of the C fan-out (fastpath.fanout), or None.

        Only a connected receiver whose selected pair is on the shared IPv4 UDP
        socket qualifies; ICE-TCP and IPv6 receivers take send_rtp. The target holds
        the SRTP session (so its srtp_t outlives any use) and the nominated-pair
        dict with the pair the address came from, which the C side compares on
        every packet to notice a renomination.
        """
        if not self.connected or self._tx_srtp is None:
            return None
        nominated = self._nominated
        pair = nominated.get(1)
        if pair is None or not getattr(pair.protocol, "shared_ipv4", False):
            return None
        addr = (pair.remote_addr[0], pair.remote_addr[1])
        if ":" in addr[0]:
            return None
        if self._tx_rtp is not None:
            protector, context = self._tx_rtp, 0
        else:
            protector, context = self._tx_srtp, aiortc_bridge.srtp_context_address(self._tx_srtp)
        return Target(down.rewrite, protector, context, addr, nominated, pair,
                      source=self.mux.source_for(pair.protocol, pair))

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect an RTCP compound with this peer's context and send it."""
        pair = self._nominated.get(1) if self.connected else None
        if pair is None:
            return False
        try:
            pair.protocol.send_datagram(self._tx_srtp.protect_rtcp(packet), pair.remote_addr)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return False
        return True

    def quality(self) -> dict[str, float | None]:
        """Connection quality for operators: RTT, worst loss and jitter, both directions.

        Downlink figures come from this client's receiver reports about what the
        SFU sends it; uplink from the SFU's own reception of what it publishes.
        """
        downs = [d for d in self.downtracks.values() if d.negotiated]
        ups = [stats for track in self.published.values() for stats in track.reception.values()]
        rtts = sorted(d.rtt_ms for d in downs if d.rtt_ms is not None)
        losses = [d.fraction_lost for d in downs if d.fraction_lost is not None] + \
            [stats.lost_fraction for stats in ups]
        jitters = [d.jitter_ms for d in downs if d.jitter_ms is not None] + \
            [stats.jitter_ms for stats in ups]
        return {"rtt_ms": rtts[len(rtts) // 2] if rtts else None,
                "loss": max(losses) if losses else None,
                "jitter_ms": max(jitters) if jitters else None}

    @property
    def negotiating(self) -> bool:
        """Whether an offer/answer exchange is under way or due."""
        return self._negotiation_needed or self.pc.signalingState != "stable"

    @property
    def remote_address(self) -> tuple[str, int] | None:
        pair = self._nominated.get(1) if self.connected else None
        return pair.remote_addr if pair else None

    def heard_at(self) -> float:
        """Loop time the C ingress last heard this peer speak (RFC 6464 level), -1: never.

        The ingress's reader thread hands speech up to Python only when it starts
        after a quiet; the voice-off rule reads this for the rest (calls/manager.py).
        """
        return max((track.fast_route.heard_at for track in self.published.values()
                    if track.fast_route is not None), default=-1.0)

    def selected_pair(self) -> Any | None:
        """aioice's nominated candidate pair for this peer, None before it connects."""
        return self._nominated.get(1) if self.connected else None

    @property
    def last_rx(self) -> float:
        return self.proto.last_rx if self.proto else 0.0

    # -- lifecycle ----------------------------------------------------------------

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "calls-dc":
            return

        @channel.on("message")
        def on_message(message: Any) -> None:
            if message == "ping" and channel.readyState == "open":
                channel.send("pong")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self._on_state(self, state)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(("negotiate", None))
        if self.proto is not None:
            self.proto.fast_rx = None
            self.mux.detach_ingress(self.proto)
        self._let_go_of_ingress()
        self._worker.cancel()
        try:
            await asyncio.wait_for(self.pc.close(), timeout=5)
        except (TimeoutError, Exception) as exc:  # never let one peer block shutdown
            log.debug("session %s: close: %s", self.session_id, exc)
        aiortc_bridge.release_listeners(self.pc)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._worker


def _published_shape(published: dict[str, PublishedTrack]) -> dict[str, Any]:
    """mid -> (label, simulcast rids): what a change of is announced to the call.

    Labels and simulcast layers both: the forwarder keeps its video and simulcast
    publishers by this announcement (calls/forwarder.py published_changed).
    """
    return {mid: (track.label, tuple(track.rids)) for mid, track in published.items()}


def _sdp_of(data: dict[str, Any]) -> str:
    sdp = data.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise SignalError("signal.data.sdp must be an SDP string starting with v=0")
    problem = check_sdp(sdp)
    if problem:
        raise SignalError(f"malformed SDP: {problem}")
    return sdp


def _parse_candidate(candidate: dict[str, Any]) -> RTCIceCandidate | None:
    """A trickled candidate as aiortc wants it, or None when there is nothing to add.

    TCP candidates are skipped (the server's ICE-TCP is passive) and so are mDNS
    names, which would make the server send multicast queries; the client's
    connectivity checks reveal its address anyway (peer-reflexive, RFC 8445 §7.3.1.3).
    """
    text = candidate.get("candidate")
    if not isinstance(text, str):
        raise SignalError("candidate.candidate must be a string")
    if not text:
        return None  # an empty candidate string is end-of-candidates
    if text.startswith("candidate:"):
        text = text[len("candidate:"):]
    try:
        parsed = candidate_from_sdp(text)
    except (AssertionError, ValueError, IndexError):
        raise SignalError(f"malformed ICE candidate: {text[:80]!r}") from None
    if parsed.protocol.lower() != "udp" or parsed.ip.endswith(".local"):
        return None
    mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    parsed.sdpMid = mid if isinstance(mid, str) else None
    valid_index = isinstance(index, int) and not isinstance(index, bool)
    parsed.sdpMLineIndex = index if valid_index else None
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        parsed.sdpMLineIndex = 0
    return parsed
