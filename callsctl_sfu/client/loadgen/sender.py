"""One published stream: RTP headers over a cached sample, stamped with its send time.

Every packet carries its send time in RTP padding (RFC 3550 §5.1: P bit set,
the last padding octet counts the padding octets): magic "cl", the sender's
`time.monotonic_ns()` (8 octets), one zero octet and the count octet 12. An
SFU forwards padding as payload, so a receiver in the same process reads the
forwarding delay from it; a real receiver's depacketizer strips it.
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from callsctl_sfu.client.loadgen.media import MediaSample
from callsctl_sfu.client.loadgen.negotiation import Negotiated
from callsctl_sfu.rtc import aiortc_bridge

if TYPE_CHECKING:
    from callsctl_sfu.client.loadgen.participant import LightParticipant

RTP_HEADER = struct.Struct("!BBHII")
STAMP = struct.Struct("!2sQBB")
STAMP_MAGIC = b"cl"
STAMP_LEN = STAMP.size  # 12


@functools.lru_cache(maxsize=256)
def _tails(sample: MediaSample, mid: str, mid_id: int | None, level_id: int | None,
           rid_id: int | None = None, rid: str | None = None
           ) -> tuple[tuple[bytes, ...], ...]:
    """Per frame, per packet: the RFC 8285 one-byte header extension block + payload.

    Shared by every sender with the same negotiation (usually all of them), so
    a hundred senders of the same sample cost one copy. A simulcast layer's rid
    (RFC 8852) goes in the same block as the MID: RFC 8285 allows one block per
    packet, so the elements are concatenated, then padded to 32 bits.
    """
    out = []
    for index, frame in enumerate(sample.frames):
        elements = b""
        if mid_id is not None:
            elements += bytes(((mid_id << 4) | (len(mid) - 1),)) + mid.encode("ascii")
        if level_id is not None and sample.levels:
            elements += bytes(((level_id << 4), sample.levels[index]))
        if rid_id is not None and rid:
            elements += bytes(((rid_id << 4) | (len(rid) - 1),)) + rid.encode("ascii")
        if elements:
            elements += b"\x00" * (-len(elements) % 4)
            block = struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
        else:
            block = b""
        out.append(tuple(block + payload for payload in frame))
    return tuple(out)


class StreamSender:
    """One published stream (audio, camera or screen) replaying its sample."""

    def __init__(self, owner: LightParticipant, label: str, sample: MediaSample,
                 transceiver: Any, rid: str | None = None, ssrc: int | None = None) -> None:
        self.owner = owner
        self.label = label
        self.sample = sample
        self.transceiver = transceiver
        self.ssrc: int = ssrc if ssrc is not None else aiortc_bridge.sender_ssrc(
            transceiver.sender)
        # Simulcast: this sender is the layer `rid`; `layers` are the publisher's other
        # layers on the same m-section. Only this (the top) sender is in the owner's
        # `senders`: receivers get one layer, and the loss figures compare against it.
        self.rid = rid
        self.layers: list[StreamSender] = []
        self.sequence = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.index = 0
        self.tails: tuple[tuple[bytes, ...], ...] = ()
        self.first_octet = 0xB0  # V=2, P=1, X=1
        self.payload_type = 0
        self.ready = False
        self.next_due = 0.0
        self.sent = 0
        self.frames_sent = 0
        self.skipped_frames = 0
        self.keyframe_requests = 0

    def arm(self, negotiated: Negotiated) -> None:
        """Fix the numbers the answer agreed on; a simulcast sender arms its layers too.

        An answer without `a=simulcast:recv` (rid_id None) means the server takes
        one stream: the extra layers then stay silent rather than mix into it.
        """
        rid = self.rid if negotiated.rid_id is not None else None
        self.payload_type = negotiated.payload_type
        self.tails = _tails(self.sample, negotiated.mid, negotiated.mid_id, negotiated.level_id,
                            negotiated.rid_id if rid else None, rid)
        self.first_octet = 0xB0 if self.tails and self.tails[0][0][:2] == b"\xbe\xde" else 0xA0
        self.ready = True
        if rid is not None:
            for layer in self.layers:
                layer.arm(negotiated)

    def all_layers(self) -> list[StreamSender]:
        """This sender and its simulcast layers: everything the media clock drives."""
        return [self, *self.layers]

    def send_frame(self, send: Callable[[bytes], None], clock: Callable[[], int]) -> None:
        """Build, stamp and send every packet of the next frame; advance the loop."""
        tails = self.tails[self.index]
        last = len(tails) - 1
        for number, tail in enumerate(tails):
            second = self.payload_type | (0x80 if number == last and self.sample.kind == "video"
                                          else 0)
            header = RTP_HEADER.pack(self.first_octet, second, self.sequence, self.timestamp,
                                     self.ssrc)
            send(header + tail + STAMP.pack(STAMP_MAGIC, clock(), 0, STAMP_LEN))
            self.sequence = (self.sequence + 1) & 0xFFFF
            self.sent += 1
        self.advance(1)
        self.frames_sent += 1

    def advance(self, frames: int) -> None:
        self.timestamp = (self.timestamp + frames * self.sample.frame_ticks) & 0xFFFFFFFF
        self.index = (self.index + frames) % len(self.sample.frames)

    def restart_at_keyframe(self) -> None:
        """A receiver asked for a keyframe (PLI/FIR): the loop's first frame is one."""
        self.keyframe_requests += 1
        if self.sample.kind == "video":
            self.index = 0
