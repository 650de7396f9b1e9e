"""Where incoming RTCP goes: the SFU terminates it and answers or translates.

- PLI/FIR from a receiver (about one of our forwarding SSRCs) becomes one PLI
  to the publisher, at most one per second per publisher stream (RFC 4585
  §6.3.1, RFC 5104 §4.3.1); requests in between are folded into one.
- Generic NACK from a receiver is answered from the publisher stream's ring
  buffer, rewritten for that receiver (RFC 4585 §6.2.1); it never reaches the
  publisher.
- Sender reports from a publisher are translated for each receiver: its SSRC,
  timestamp offset and its own packet/octet counts (RFC 3550 §6.4.1), with an
  SDES CNAME so the compound is valid (RFC 3550 §6.1), keeping lip sync.
- Report blocks from receivers record loss and jitter per forwarded stream.

The router works through `ForwardingPlane`, the few things it needs of the
forwarder (calls/forwarder.py implements it): it never imports the call layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from callsctl_sfu.rtc.rtcp import ReportBlock
from callsctl_sfu.rtc.rtp import parse_rtp

if TYPE_CHECKING:
    from callsctl_sfu.rtc.peer import DownTrack, MediaPeer
    from callsctl_sfu.rtc.tracks import PublishedTrack

log = logging.getLogger("callsctl_sfu.rtc.rtcp")


class RtcpCounters(Protocol):
    """The forwarder's counters this router adds to (ForwardingStats)."""

    plis_received: int
    nacks_received: int
    nacks_answered: int
    sender_reports_forwarded: int


class ForwardingPlane(Protocol):
    """What RTCP routing needs of the forwarder: sources, receivers, keyframe requests."""

    @property
    def stats(self) -> RtcpCounters: ...

    def downtrack_source(self, down: DownTrack) -> tuple[MediaPeer, PublishedTrack] | None:
        """The publisher peer and track a receiver's downtrack forwards, if still there."""

    def receivers_of(self, publisher_id: str, key: str) -> Iterable[tuple[MediaPeer,
                                                                         DownTrack]]:
        """Every receiver with a downtrack for the publisher track `key`."""

    def send_keyframe_request(self, publisher: MediaPeer, track: PublishedTrack,
                              ssrc: int | None = None) -> None:
        """A PLI to the publisher (every simulcast layer when ssrc is None)."""


class RtcpRouter:
    def __init__(self, forwarder: ForwardingPlane) -> None:
        self.forwarder = forwarder

    def on_rtcp(self, peer: MediaPeer, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            return
        for packet in packets:
            if isinstance(packet, RtcpPsfbPacket):
                if packet.fmt == RTCP_PSFB_APP:
                    self._record_remb(peer, packet.fci)
                elif packet.fmt == RTCP_PSFB_PLI:
                    self._keyframe_request(peer, packet.media_ssrc)
                elif packet.fmt == RTCP_PSFB_FIR and len(packet.fci) >= 4:
                    self._keyframe_request(peer, int.from_bytes(packet.fci[:4], "big"))
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self._answer_nack(peer, packet.media_ssrc, packet.lost)
            elif isinstance(packet, RtcpSrPacket):
                self._note_sender_report(peer, packet)
                self._forward_sender_report(peer, packet)
                self._record_reports(peer, packet.reports)
            elif isinstance(packet, RtcpRrPacket):
                self._record_reports(peer, packet.reports)

    # -- keyframes ----------------------------------------------------------------

    def _keyframe_request(self, receiver: MediaPeer, media_ssrc: int) -> None:
        down = receiver.downtracks_by_ssrc.get(media_ssrc)
        if down is None:
            return
        down.plis_received += 1
        self.forwarder.stats.plis_received += 1
        self.keyframe_for_downtrack(down)

    def keyframe_for_downtrack(self, down: DownTrack) -> None:
        source = self.forwarder.downtrack_source(down)
        if source is None:
            return
        publisher, track = source
        delay = track.keyframes.request()
        if delay == 0:
            self.forwarder.send_keyframe_request(publisher, track)
        elif delay is not None:
            def later() -> None:
                again = self.forwarder.downtrack_source(down)
                if again is not None and again[1].keyframes.request() == 0:
                    self.forwarder.send_keyframe_request(*again)

            asyncio.get_event_loop().call_later(delay, later)

    # -- retransmission ---------------------------------------------------------------

    def _answer_nack(self, receiver: MediaPeer, media_ssrc: int, lost: list[int]) -> None:
        down = receiver.downtracks_by_ssrc.get(media_ssrc)
        if down is None:
            return
        down.nacks_received += 1
        self.forwarder.stats.nacks_received += 1
        source = self.forwarder.downtrack_source(down)
        if source is None or source[1].ring is None:
            return
        ring = source[1].ring
        unrepairable = False
        for sequence in lost:
            original = ring.get((sequence - down.rewrite.seq_offset) & 0xFFFF)
            if original is None:
                unrepairable = True
                continue
            packet = parse_rtp(original)
            if packet is None or packet.ssrc != down.rewrite.source_ssrc:
                unrepairable = True  # another simulcast layer's packet took the slot
                continue
            if receiver.send_rtp(down.rewrite.build(packet, None, retransmission=True)):
                down.retransmitted += 1
                self.forwarder.stats.nacks_answered += 1
        if unrepairable and down.kind == "video":
            # The SFU no longer has (or never had) what was lost: only a keyframe
            # lets this receiver decode again.
            self.keyframe_for_downtrack(down)

    # -- reports -------------------------------------------------------------------------

    def _forward_sender_report(self, publisher: MediaPeer, report: RtcpSrPacket) -> None:
        mid = publisher.ssrc_to_mid.get(report.ssrc)
        track = publisher.published.get(mid) if mid is not None else None
        if track is None:
            return
        key = f"{publisher.session_id}:{track.label}"
        for receiver, down in self.forwarder.receivers_of(publisher.session_id, key):
            if not down.negotiated:
                continue
            rewrite = down.rewrite
            translated = RtcpSrPacket(ssrc=rewrite.ssrc, sender_info=RtcpSenderInfo(
                ntp_timestamp=report.sender_info.ntp_timestamp,
                rtp_timestamp=(report.sender_info.rtp_timestamp + rewrite.ts_offset)
                & 0xFFFFFFFF,
                packet_count=rewrite.packets & 0xFFFFFFFF,
                octet_count=rewrite.octets & 0xFFFFFFFF))
            cname = getattr(receiver, "cname", "callsctl")
            sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=rewrite.ssrc,
                                                         items=[(1, cname.encode())])])
            if receiver.send_rtcp(bytes(translated) + bytes(sdes)):
                self.forwarder.stats.sender_reports_forwarded += 1
                sent = down.sr_sent
                sent[(report.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF] = self._now()
                while len(sent) > 8:
                    del sent[next(iter(sent))]

    def _record_reports(self, receiver: MediaPeer, reports: list) -> None:
        """Loss, jitter and round trip of what the SFU sends this receiver (RFC 3550 §6.4.1)."""
        now = self._now()
        for block in reports:
            self._record_block(receiver, now, block.ssrc, block.fraction_lost, block.jitter,
                               block.lsr, block.dlsr)

    def on_receiver_reports(self, receiver: MediaPeer, now: float,
                            blocks: list[ReportBlock]) -> None:
        """Report blocks the C ingress read from a compound of receiver reports only.

        Runs on the ingress's reader thread with the GIL held, not on the event
        loop, so it only records: `now` is the loop's clock, read by that thread.
        """
        for ssrc, fraction_lost, jitter, lsr, dlsr in blocks:
            self._record_block(receiver, now, ssrc, fraction_lost, jitter, lsr, dlsr)

    @staticmethod
    def _record_block(receiver: MediaPeer, now: float, ssrc: int, fraction_lost: int,
                      jitter: int, lsr: int, dlsr: int) -> None:
        down = receiver.downtracks_by_ssrc.get(ssrc)
        if down is None:
            return
        down.fraction_lost = fraction_lost / 256
        down.jitter = jitter
        down.jitter_ms = 1000 * jitter / (48000 if down.kind == "audio" else 90000)
        sent = down.sr_sent.get(lsr) if lsr else None
        if sent is not None:
            down.rtt_ms = max(0.0, 1000 * (now - sent - dlsr / 65536))

    @staticmethod
    def _record_remb(receiver: MediaPeer, fci: bytes) -> None:
        try:
            bitrate, ssrcs = unpack_remb_fci(fci)
        except ValueError:
            return
        for ssrc in ssrcs:
            down = receiver.downtracks_by_ssrc.get(ssrc)
            if down is not None:
                down.remb_bps = bitrate

    @staticmethod
    def _note_sender_report(publisher: MediaPeer, report: RtcpSrPacket) -> None:
        """Remember the publisher's SR so our receiver reports carry LSR/DLSR for its RTT."""
        mid = publisher.ssrc_to_mid.get(report.ssrc)
        track = publisher.published.get(mid) if mid is not None else None
        stats = track.reception.get(report.ssrc) if track is not None else None
        if stats is not None:
            stats.last_sr = (report.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF
            stats.last_sr_at = asyncio.get_event_loop().time()

    @staticmethod
    def _now() -> float:
        return asyncio.get_event_loop().time()
