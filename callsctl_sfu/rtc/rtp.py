"""RTP header parsing and per-receiver rewriting for the forwarding hot path.

Forwarded packets are rebuilt from the parsed header rather than re-serialised
through aiortc's RtpPacket: the payload is never touched, and only the fields a
receiver negotiated differently are changed (SSRC, payload type, sequence and
timestamp continuity, header extension ids). References: RTP header RFC 3550
§5.1; header extensions RFC 8285 (one-byte form 0xBEDE, two-byte form 0x100X);
client-to-mixer audio level RFC 6464; demultiplexing RFC 7983 / RFC 5761.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_HEADER = struct.Struct("!BBHII")
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
# Audio level is "unknown/silent" when the extension is absent (RFC 6464: 127 = -127 dBov).
SILENT_LEVEL = 127
# One-byte-header extension blocks carrying just an audio level (RFC 8285 §4.2), by
# (id, level byte): at most 14 x 256 of them, built once instead of per packet.
_LEVEL_EXTENSIONS: dict[tuple[int, int], bytes] = {}


def is_rtcp(data: bytes | bytearray) -> bool:
    """RFC 5761 §4: RTCP packet types 192-223 sit where RTP has marker+PT."""
    return len(data) >= 2 and 192 <= data[1] <= 223


@dataclass(slots=True)
class ParsedRtp:
    """The fields of one incoming RTP packet the SFU needs, parsed once."""

    first_byte: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: memoryview
    extensions: dict[int, bytes]

    def plain(self) -> bytes:
        """This packet as plain RTP without CSRCs or extensions (for the NACK ring)."""
        b1 = (0x80 if self.marker else 0) | self.payload_type
        return RTP_HEADER.pack(0x80 | (self.first_byte & 0x20), b1, self.sequence,
                               self.timestamp, self.ssrc) + self.payload


def parse_rtp(data: bytes) -> ParsedRtp | None:
    """Parse an RTP header; None for anything malformed (never raises)."""
    size = len(data)
    if size < 12:
        return None
    b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data, 0)
    if b0 >> 6 != 2:
        return None
    offset = 12 + 4 * (b0 & 0x0F)
    extensions: dict[int, bytes] = {}
    if b0 & 0x10:
        if offset + 4 > size:
            return None
        profile, words = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + 4 * words
        if end > size:
            return None
        if profile == 0xBEDE:
            _parse_one_byte(data, start, end, extensions)
        elif profile & 0xFFF0 == 0x1000:
            _parse_two_byte(data, start, end, extensions)
        offset = end
    if offset > size:
        return None
    view = memoryview(data)[offset:]
    return ParsedRtp(b0, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, view, extensions)


def _parse_one_byte(data: bytes, pos: int, end: int, out: dict[int, bytes]) -> None:
    while pos < end:
        byte = data[pos]
        if byte == 0:  # padding (RFC 8285 §4.2)
            pos += 1
            continue
        ext_id, length = byte >> 4, (byte & 0x0F) + 1
        if ext_id == 15:  # reserved: stop parsing
            return
        pos += 1
        if pos + length > end:
            return
        out[ext_id] = bytes(data[pos : pos + length])
        pos += length


def _parse_two_byte(data: bytes, pos: int, end: int, out: dict[int, bytes]) -> None:
    while pos + 1 < end:
        ext_id = data[pos]
        if ext_id == 0:
            pos += 1
            continue
        length = data[pos + 1]
        pos += 2
        if pos + length > end:
            return
        out[ext_id] = bytes(data[pos : pos + length])
        pos += length


def audio_level(packet: ParsedRtp, level_id: int | None) -> tuple[int, bool]:
    """(level in -dBov 0..127, voice-activity flag) from RFC 6464, or silent."""
    if level_id is None:
        return SILENT_LEVEL, False
    value = packet.extensions.get(level_id)
    if not value:
        return SILENT_LEVEL, False
    return value[0] & 0x7F, bool(value[0] & 0x80)


@dataclass(slots=True)
class PyRewrite:
    """How one receiver expects one forwarded stream: its SSRC, PT and extension ids.

    The Python twin of the C `Rewrite` in rtc/_fanout.c (fastpath.Rewrite is the
    one in use); tests/test_rtp.py holds both to the same outputs.

    Sequence numbers and timestamps are offset so the receiver sees one
    continuous stream even when the publisher's SSRC changes (a libwebrtc
    re-offer after glare can do that; see docs/interop.md).
    """

    ssrc: int
    payload_type: int
    audio_level_id: int | None = None
    source_ssrc: int | None = None
    seq_offset: int = 0
    ts_offset: int = 0
    last_seq: int = 0
    last_ts: int = 0
    packets: int = 0
    octets: int = 0

    def build(self, packet: ParsedRtp, level_byte: int | None,
              retransmission: bool = False) -> bytes:
        """The packet this receiver gets: new header, same payload.

        A retransmission (answering a NACK) reuses the current offsets and leaves
        the stream state and counters alone.
        """
        if retransmission:
            seq = (packet.sequence + self.seq_offset) & 0xFFFF
            ts = (packet.timestamp + self.ts_offset) & 0xFFFFFFFF
            return self._header(packet, seq, ts, level_byte) + packet.payload
        if packet.ssrc != self.source_ssrc:
            if self.source_ssrc is not None:
                # Continue where the old source stopped (one 20 ms Opus frame later).
                self.seq_offset = (self.last_seq + 1 - packet.sequence) & 0xFFFF
                self.ts_offset = (self.last_ts + 960 - packet.timestamp) & 0xFFFFFFFF
            self.source_ssrc = packet.ssrc
        seq = (packet.sequence + self.seq_offset) & 0xFFFF
        ts = (packet.timestamp + self.ts_offset) & 0xFFFFFFFF
        self.last_seq, self.last_ts = seq, ts
        out = self._header(packet, seq, ts, level_byte) + packet.payload
        self.packets += 1
        self.octets += len(packet.payload)
        return out

    def _header(self, packet: ParsedRtp, seq: int, ts: int, level_byte: int | None) -> bytes:
        # Keep version and padding bit; drop CSRCs and every foreign extension.
        b0 = 0x80 | (packet.first_byte & 0x20)
        b1 = (0x80 if packet.marker else 0) | self.payload_type
        if level_byte is not None and self.audio_level_id is not None:
            key = (self.audio_level_id, level_byte)
            extension = _LEVEL_EXTENSIONS.get(key)
            if extension is None:
                extension = _LEVEL_EXTENSIONS[key] = bytes(
                    (0xBE, 0xDE, 0x00, 0x01, self.audio_level_id << 4, level_byte, 0, 0))
            return RTP_HEADER.pack(b0 | 0x10, b1, seq, ts, self.ssrc) + extension
        return RTP_HEADER.pack(b0, b1, seq, ts, self.ssrc)


def vp8_keyframe(payload: memoryview | bytes) -> bool:
    """Whether a VP8 RTP payload starts a keyframe (RFC 7741 §4.2-4.3).

    Skips the payload descriptor (X/I/L/T/K extensions, 7- or 15-bit picture id)
    and reads the P bit of the VP8 payload header of a partition-0 start.
    """
    size = len(payload)
    if size < 1:
        return False
    first = payload[0]
    start_of_partition, partition = first & 0x10, first & 0x07
    offset = 1
    if first & 0x80:  # X: extension octet follows
        if size < 2:
            return False
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 2 bytes when its M bit is set
            if size <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            offset += 1
    if not start_of_partition or partition != 0 or size <= offset:
        return False
    return payload[offset] & 0x01 == 0
