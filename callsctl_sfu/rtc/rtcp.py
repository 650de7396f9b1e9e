"""RTCP the SFU owns: keyframe requests, NACK retransmission, report translation.

References: RTCP RFC 3550 §6; feedback messages RFC 4585 (Generic NACK, PLI)
and RFC 5104 (FIR); REMB draft-alvestrand-rmcat-remb. Parsing uses aiortc's
RTCP classes; the few packets the SFU originates are built here.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

RTCP_PSFB = 206
RTCP_RTPFB = 205
PLI_FMT = 1
NACK_FMT = 1
SFU_SSRC = 1  # sender SSRC of feedback the SFU originates (RFC 4585 allows any)

# One report block of a receiver report (RFC 3550 §6.4.1) as the C ingress hands it up:
# (SSRC it is about, fraction lost in 1/256, interarrival jitter, LSR, DLSR).
ReportBlock = tuple[int, int, int, int, int]


def pli(media_ssrc: int, sender_ssrc: int = SFU_SSRC) -> bytes:
    """Picture Loss Indication (RFC 4585 §6.3.1): "send me a keyframe"."""
    return struct.pack("!BBHII", 0x80 | PLI_FMT, RTCP_PSFB, 2, sender_ssrc, media_ssrc)


def nack(media_ssrc: int, sequences: list[int], sender_ssrc: int = SFU_SSRC) -> bytes:
    """Generic NACK (RFC 4585 §6.2.1): PID + bitmask of the following 16 losses."""
    items: list[tuple[int, int]] = []
    for seq in sorted(set(s & 0xFFFF for s in sequences)):
        if items and 0 < (seq - items[-1][0]) & 0xFFFF <= 16:
            pid, mask = items[-1]
            items[-1] = (pid, mask | 1 << (((seq - pid) & 0xFFFF) - 1))
        else:
            items.append((seq, 0))
    fci = b"".join(struct.pack("!HH", pid, mask) for pid, mask in items)
    return struct.pack("!BBHII", 0x80 | NACK_FMT, RTCP_RTPFB, 2 + len(items), sender_ssrc,
                       media_ssrc) + fci


class RingBuffer:
    """The last N packets of a video stream by sequence number, to answer NACKs."""

    __slots__ = ("size", "_slots")

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: list[tuple[int, bytes] | None] = [None] * size

    def put(self, sequence: int, packet: bytes) -> None:
        self._slots[sequence % self.size] = (sequence, packet)

    def get(self, sequence: int) -> bytes | None:
        slot = self._slots[sequence % self.size]
        if slot is not None and slot[0] == sequence:
            return slot[1]
        return None


@dataclass
class KeyframeThrottle:
    """At most one keyframe request per interval per publisher stream.

    Many receivers losing the same frame must not make the publisher send a
    keyframe for each: requests inside the interval are folded into one that is
    sent when the interval ends.
    """

    interval: float = 1.0
    last_sent: float = -1e9
    pending: bool = False
    sent: int = 0
    suppressed: int = 0

    def request(self, now: float | None = None) -> float | None:
        """0 = send now; a delay = one is already scheduled/should be; None = folded."""
        now = time.monotonic() if now is None else now
        wait = self.last_sent + self.interval - now
        if wait <= 0:
            self.last_sent = now
            self.pending = False
            self.sent += 1
            return 0.0
        self.suppressed += 1
        if self.pending:
            return None
        self.pending = True
        return wait


def missing_between(previous: int, current: int, limit: int = 64) -> list[int]:
    """Sequence numbers skipped between two packets (wrap-aware), at most `limit`."""
    gap = (current - previous) & 0xFFFF
    if gap <= 1 or gap > 0x8000:
        return []
    return [(previous + n) & 0xFFFF for n in range(1, min(gap, limit + 1))]
