"""One participant's WebRTC connection to the SFU, on the shared media socket.

aiortc negotiates ICE, DTLS and SRTP keys. Everything after that bypasses its
track machinery: decrypted RTP is handed to the call (`on_rtp`), and forwarded
copies are protected with this peer's outbound SRTP context and sent on the
shared socket (`send_rtp`). aiortc's per-track sender/receiver loops are
silenced so they neither burn CPU nor emit RTCP about streams they never saw.

Signaling follows notes/mattermost-client-interop.md: the client makes the
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
from dataclasses import dataclass
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

from callsctl_sfu.rtc.mux import MuxedStunProtocol, UdpMux
from callsctl_sfu.rtc.rtp import AUDIO_LEVEL_URI, MID_URI, Rewrite, is_rtcp
from callsctl_sfu.rtc.sdp_munge import Numbering, harmonise, numbering_of
from callsctl_sfu.rtc.tracks import (
    LABEL_KINDS,
    PublishedTrack,
    discover_published,
    stream_id_for,
)

log = logging.getLogger("callsctl_sfu.rtc.peer")

OPUS_KEY = ("audio", "opus", 48000, 2)
VP8_KEY = ("video", "vp8", 90000, 1)
SignalSender = Callable[[dict[str, Any]], Awaitable[None]]


class SignalError(ValueError):
    """A signal the peer cannot apply; reported to the client as an error event."""


def _idle_loop(part: Any, prefix: str, *events: str) -> Callable[..., Awaitable[None]]:
    """Stands in for one of aiortc's per-track RTP/RTCP loops, which an SFU must not run.

    aiortc's stop() waits for the loop's started/exited events, so the stand-in
    sets them; otherwise closing a peer would hang.
    """

    async def idle(*_args: Any, **_kwargs: Any) -> None:
        for name in events:
            event = getattr(part, f"_{prefix}__{name}", None)
            if event is not None:
                event.set()

    return idle


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
    plis_received: int = 0
    nacks_received: int = 0
    retransmitted: int = 0
    # Receiver-reported quality (RFC 3550 §6.4.2 report block), latest values.
    fraction_lost: float | None = None
    jitter: int | None = None

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
        on_tracks: Callable[[MediaPeer], None] | None = None,
        on_downtracks_ready: Callable[[MediaPeer, list[DownTrack]], None] | None = None,
        ring_size: int = 256,
    ) -> None:
        self.session_id = session_id
        self.mux = mux
        self._send_signal = send_signal
        self._on_rtp = on_rtp
        self._on_state = on_state
        self._on_rtcp = on_rtcp
        self._on_tracks = on_tracks
        self._on_downtracks_ready = on_downtracks_ready
        self.ring_size = ring_size
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name=f"peer-{session_id}")
        self._pending_candidates: list[RTCIceCandidate] = []
        self.numbering = Numbering()
        self.downtracks: dict[str, DownTrack] = {}
        self.downtracks_by_ssrc: dict[int, DownTrack] = {}
        self.wanted: dict[str, tuple[str, str]] = {}
        self.server_mids: set[str] = set()
        self.published: dict[str, PublishedTrack] = {}
        self.ssrc_to_mid: dict[int, str] = {}
        self.screen_stream: str | None = None
        self.mid_ext_id: int | None = None
        self.vp8_pt: int | None = None
        self._negotiation_needed = False
        self.proto: MuxedStunProtocol | None = None
        self._rx_srtp: pylibsrtp.Session | None = None
        self._tx_srtp: pylibsrtp.Session | None = None
        self.connected = False
        self.closed = False
        self.opus_pt: int | None = None
        self.audio_level_id: int | None = None
        self.glare_ignored = 0
        self.srtp_errors = 0
        self.rtcp_in = 0

    # -- signaling ----------------------------------------------------------------

    def handle_signal(self, data: dict[str, Any]) -> None:
        """Queue a client signal; it is processed after everything queued before it."""
        self._queue.put_nowait(("signal", data))

    def set_sources(self, sources: dict[str, tuple[str, str]]) -> None:
        """The publisher tracks this peer should receive (key -> (publisher, label)).

        Renegotiates when the set changes.
        """
        if sources != self.wanted:
            self.wanted = dict(sources)
            self._queue.put_nowait(("negotiate", None))

    def set_screen_stream(self, stream_id: str | None) -> None:
        """The client said which of its streams is a screen share: relabel its tracks."""
        self.screen_stream = stream_id
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
                await self._send_signal({"type": "error", "code": "bad_signal",
                                         "message": str(exc)})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiortc rejects an SDP: tell the client, keep serving
                log.warning("session %s: signal failed: %s", self.session_id, exc)
                await self._send_signal({"type": "error", "code": "bad_signal",
                                         "message": f"could not apply signal: {exc}"})

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
            log.info("session %s: ignored client offer colliding with ours", self.session_id)
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._silence_aiortc_loops()
        answer = await self.pc.createAnswer()
        self._attach_mux()
        await self.pc.setLocalDescription(answer)
        await self._send_signal({"type": "signal", "data": {
            "type": "answer", "sdp": self.pc.localDescription.sdp}})
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
        await self._send_signal({"type": "signal", "data": {"type": "offer", "sdp": sdp}})

    def _sync_downtracks(self) -> bool:
        """Add/retire send-only transceivers to match wanted_publishers; True if changed."""
        changed = False
        for key in list(self.downtracks):
            if key not in self.wanted:
                # Retired, not reused: a receiver keeps a transceiver's first track
                # identity (msid), so a reused one would show the old participant.
                track = self.downtracks.pop(key)
                track.transceiver.direction = "inactive"
                self.downtracks_by_ssrc.pop(track.rewrite.ssrc, None)
                changed = True
        for key in sorted(set(self.wanted) - set(self.downtracks)):
            publisher_id, label = self.wanted[key]
            transceiver = self.pc.addTransceiver(LABEL_KINDS[label], direction="sendonly")
            sender = transceiver.sender
            sender._ssrc = random.getrandbits(32) or 1
            sender._stream_id = stream_id_for(publisher_id, label)
            sender._track_id = f"{publisher_id}-{label}"
            track = DownTrack(key, publisher_id, label, transceiver,
                              Rewrite(ssrc=sender._ssrc, payload_type=0))
            self.downtracks[key] = track
            self.downtracks_by_ssrc[sender._ssrc] = track
            changed = True
        return changed

    async def _after_negotiation(self) -> None:
        """Read the numbering both sides now agree on and arm the forwarded tracks."""
        remote = self.pc.remoteDescription
        if remote is None:
            return
        current = numbering_of(remote.sdp)
        current.payload_types = {**self.numbering.payload_types, **current.payload_types}
        current.extension_ids = {**self.numbering.extension_ids, **current.extension_ids}
        self.numbering = current
        self.opus_pt = current.payload_types.get(OPUS_KEY)
        self.vp8_pt = current.payload_types.get(VP8_KEY)
        self.audio_level_id = current.extension_ids.get(AUDIO_LEVEL_URI)
        self.mid_ext_id = current.extension_ids.get(MID_URI)
        if self.pc.signalingState == "stable":
            ready = []
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
                track.negotiated = pt is not None
            if ready and self._on_downtracks_ready is not None:
                self._on_downtracks_ready(self, ready)
            self._discover_published()

    def _discover_published(self) -> None:
        """Re-read what the client sends; tell the call when that changed."""
        remote = self.pc.remoteDescription
        if remote is None:
            return
        before = {mid: t.label for mid, t in self.published.items()}
        self.published = discover_published(remote.sdp, self.server_mids, self.screen_stream,
                                            self.ring_size, self.published)
        for mid, track in self.published.items():
            for ssrc in track.ssrcs:
                self.ssrc_to_mid[ssrc] = mid
        if {mid: t.label for mid, t in self.published.items()} != before and self._on_tracks:
            self._on_tracks(self)

    def track_for(self, ssrc: int, mid: bytes | None) -> PublishedTrack | None:
        """Route an incoming packet: MID extension first, then SSRC (RFC 8843 §9.2)."""
        if mid is not None:
            track = self.published.get(mid.decode("ascii", "replace"))
            if track is not None:
                if ssrc not in track.ssrcs:
                    track.ssrcs.add(ssrc)
                    self.ssrc_to_mid[ssrc] = track.mid
                return track
        known = self.ssrc_to_mid.get(ssrc)
        return self.published.get(known) if known is not None else None

    def _attach_mux(self) -> None:
        """Put every ICE agent of this connection on the shared socket before it gathers."""
        for ice_transport in list(self.pc._RTCPeerConnection__iceTransports):  # type: ignore[attr-defined]
            self.mux.attach(ice_transport._connection)
        for dtls in list(self.pc._RTCPeerConnection__dtlsTransports):  # type: ignore[attr-defined]
            if not getattr(dtls, "_callsctl_watched", False):
                dtls._callsctl_watched = True
                dtls.on("statechange", lambda d=dtls: self._on_dtls_state(d))

    def _silence_aiortc_loops(self) -> None:
        for transceiver in self.pc.getTransceivers():
            sender, receiver = transceiver.sender, transceiver.receiver
            if not getattr(sender, "_callsctl_silenced", False):
                sender._callsctl_silenced = True
                sender._run_rtp = _idle_loop(sender, "RTCRtpSender", "rtp_started", "rtp_exited")
                sender._run_rtcp = _idle_loop(sender, "RTCRtpSender", "rtcp_started",
                                              "rtcp_exited")
            if not getattr(receiver, "_callsctl_silenced", False):
                receiver._callsctl_silenced = True
                receiver._run_rtcp = _idle_loop(receiver, "RTCRtpReceiver", "rtcp_started",
                                                "rtcp_exited")

    # -- media --------------------------------------------------------------------

    def _on_dtls_state(self, dtls: Any) -> None:
        if dtls.state != "connected" or self.connected:
            return
        connection = dtls.transport._connection
        proto = next((p for p in connection._protocols if isinstance(p, MuxedStunProtocol)),
                     None)
        if proto is None or dtls._rx_srtp is None:
            return
        self.proto = proto
        self._rx_srtp = dtls._rx_srtp
        self._tx_srtp = dtls._tx_srtp
        self._ice = connection
        self.connected = True
        proto.fast_rx = self._fast_rx
        self._on_state(self, "connected")

    def _fast_rx(self, data: bytes) -> None:
        """SRTP/SRTCP straight from the shared socket: decrypt and hand RTP to the call."""
        try:
            if is_rtcp(data):
                plain_rtcp = self._rx_srtp.unprotect_rtcp(data)  # type: ignore[union-attr]
                self.rtcp_in += 1
                if self._on_rtcp is not None:
                    self._on_rtcp(self, plain_rtcp)
                return
            plain = self._rx_srtp.unprotect(data)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return
        self._on_rtp(self, plain)

    def send_rtp(self, packet: bytes) -> bool:
        """Protect with this receiver's SRTP context and send on its selected pair's path.

        The pair's protocol sends on the path the client chose: the shared UDP
        socket (IPv4 or IPv6) or its ICE-TCP connection (rtc/mux.py, rtc/icetcp.py).
        """
        pair = self._ice._nominated.get(1) if self.connected else None
        if pair is None:
            return False
        try:
            pair.protocol.send_datagram(self._tx_srtp.protect(packet), pair.remote_addr)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return False
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect an RTCP compound with this peer's context and send it."""
        pair = self._ice._nominated.get(1) if self.connected else None
        if pair is None:
            return False
        try:
            pair.protocol.send_datagram(self._tx_srtp.protect_rtcp(packet), pair.remote_addr)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return False
        return True

    @property
    def remote_address(self) -> tuple[str, int] | None:
        pair = self._ice._nominated.get(1) if self.connected else None
        return pair.remote_addr if pair else None

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
        self._worker.cancel()
        try:
            await asyncio.wait_for(self.pc.close(), timeout=5)
        except (TimeoutError, Exception) as exc:  # never let one peer block shutdown
            log.debug("session %s: close: %s", self.session_id, exc)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._worker


def _sdp_of(data: dict[str, Any]) -> str:
    sdp = data.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise SignalError("signal.data.sdp must be an SDP string starting with v=0")
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
