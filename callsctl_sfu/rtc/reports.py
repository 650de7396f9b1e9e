"""Reception statistics and the reports the SFU sends to publishers.

The SFU terminates RTCP, so publishers hear about their uplink from the SFU
itself: receiver reports built from what the SFU received (RFC 3550 §6.4.2 and
Appendix A.3 for loss, A.8 for interarrival jitter) and a bandwidth estimate
(REMB, draft-alvestrand-rmcat-remb) that is the lowest any receiver of that
stream reported, so a publisher never sends more than its weakest viewer takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiortc.rtp import RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket, pack_remb_fci

from callsctl_sfu.rtc import fastpath
from callsctl_sfu.rtc.rtcp import SFU_SSRC

REMB_FMT = 15
DEFAULT_REMB_BPS = 1_500_000  # until a receiver reports, a safe ceiling for one camera
MIN_REMB_BPS = 100_000


class PyReception:
    """RFC 3550 Appendix A bookkeeping for one incoming SSRC (the Python twin of
    _fanout.Reception, which the C ingress updates in place; same fields, same update)."""

    __slots__ = ("clock_rate", "base_seq", "max_seq", "cycles", "received", "expected_prior",
                 "received_prior", "jitter", "transit", "last_sr", "last_sr_at",
                 "lost_fraction")

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.base_seq = -1
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self.transit: float | None = None
        self.last_sr = 0  # middle 32 bits of the last SR's NTP timestamp
        self.last_sr_at = 0.0
        self.lost_fraction = 0.0

    def update(self, sequence: int, rtp_timestamp: int, arrival: float) -> None:
        if self.base_seq < 0:
            self.base_seq = self.max_seq = sequence
        elif (sequence - self.max_seq) & 0xFFFF < 0x8000:
            if sequence < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = sequence
        self.received += 1
        transit = arrival * self.clock_rate - rtp_timestamp
        if self.transit is not None:
            delta = abs(transit - self.transit)
            if delta < self.clock_rate * 10:  # ignore timestamp jumps (new source)
                self.jitter += (delta - self.jitter) / 16
        self.transit = transit


# The C type when the C media path runs: its ingress updates these objects in place.
_ReceptionBase: Any = fastpath.Reception if fastpath.Reception is not None else PyReception


class ReceptionStats(_ReceptionBase):
    """One incoming SSRC's reception state, and the report block built from it."""

    # Declared for the type checker; the values live in the base (C members or slots).
    clock_rate: int
    base_seq: int
    max_seq: int
    cycles: int
    received: int
    expected_prior: int
    received_prior: int
    jitter: float
    transit: float | None
    last_sr: int
    last_sr_at: float
    lost_fraction: float

    def block(self, ssrc: int, now: float) -> RtcpReceiverInfo:
        extended = self.cycles + self.max_seq
        expected = extended - self.base_seq + 1
        lost = max(0, min(expected - self.received, 0x7FFFFF))
        interval_expected = expected - self.expected_prior
        interval_received = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        interval_lost = interval_expected - interval_received
        fraction = (interval_lost << 8) // interval_expected if interval_expected > 0 \
            and interval_lost > 0 else 0
        self.lost_fraction = fraction / 256
        dlsr = int((now - self.last_sr_at) * 65536) if self.last_sr else 0
        return RtcpReceiverInfo(ssrc=ssrc, fraction_lost=min(fraction, 255), packets_lost=lost,
                                highest_sequence=extended & 0xFFFFFFFF,
                                jitter=int(self.jitter), lsr=self.last_sr,
                                dlsr=dlsr & 0xFFFFFFFF)

    @property
    def jitter_ms(self) -> float:
        return 1000 * self.jitter / self.clock_rate


@dataclass
class UplinkReport:
    """What goes to one publisher once a second."""

    blocks: list[RtcpReceiverInfo] = field(default_factory=list)
    remb_bps: int | None = None
    remb_ssrcs: list[int] = field(default_factory=list)

    def packet(self) -> bytes:
        data = bytes(RtcpRrPacket(ssrc=SFU_SSRC, reports=self.blocks[:31]))
        if self.remb_bps is not None and self.remb_ssrcs:
            data += bytes(RtcpPsfbPacket(fmt=REMB_FMT, ssrc=SFU_SSRC, media_ssrc=0,
                                         fci=pack_remb_fci(self.remb_bps, self.remb_ssrcs)))
        return data


def clamp_remb(values: list[int]) -> int:
    """The weakest receiver's estimate, never below a floor that keeps video alive."""
    return max(MIN_REMB_BPS, min(values)) if values else DEFAULT_REMB_BPS
