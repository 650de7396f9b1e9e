"""RTP parsing and per-receiver rewriting (RFC 3550, RFC 8285, RFC 6464)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsctl_sfu.rtc import fastpath
from callsctl_sfu.rtc.rtp import PyRewrite, audio_level, is_rtcp, parse_rtp, vp8_keyframe

_fanout = pytest.importorskip("callsctl_sfu.rtc._fanout", reason="C extension not built")
IMPLEMENTATIONS = [PyRewrite, _fanout.Rewrite]


@pytest.fixture(params=IMPLEMENTATIONS, ids=["python", "c"])
def Rewrite(request):  # noqa: N802 - stands in for the class under test
    return request.param


def make_packet(seq: int, ts: int, ssrc: int, pt: int = 111, level: int | None = 30,
                level_id: int = 1, extra_ext: bool = True, payload: bytes = b"opus") -> bytes:
    exts = b""
    if level is not None:
        exts += bytes([(level_id << 4) | 0, 0x80 | level])
    if extra_ext:
        exts += bytes([(4 << 4) | 0, ord("0")])  # mid "0"
    ext_block = b""
    first = 0x80
    if exts:
        exts += b"\x00" * (-len(exts) % 4)
        ext_block = struct.pack("!HH", 0xBEDE, len(exts) // 4) + exts
        first |= 0x10
    return struct.pack("!BBHII", first, 0x80 | pt, seq, ts, ssrc) + ext_block + payload


def test_parse_reads_header_extensions_and_payload():
    packet = parse_rtp(make_packet(10, 960, 0xABC))
    assert packet is not None
    assert (packet.sequence, packet.timestamp, packet.ssrc, packet.payload_type) == (
        10, 960, 0xABC, 111)
    assert packet.marker and bytes(packet.payload) == b"opus"
    assert audio_level(packet, 1) == (30, True)
    assert audio_level(packet, None) == (127, False)


def test_malformed_packets_are_rejected_not_raised():
    assert parse_rtp(b"\x80\x6f") is None
    assert parse_rtp(b"\x00" * 20) is None  # version 0
    truncated = make_packet(1, 1, 1)[:14]
    assert parse_rtp(truncated) is None


def test_rewrite_sets_receiver_ssrc_pt_and_only_known_extension(Rewrite):  # noqa: N803
    rewrite = Rewrite(ssrc=0x1234, payload_type=96, audio_level_id=3)
    out = rewrite.build(parse_rtp(make_packet(100, 4800, 0xABC)), level_byte=30)
    parsed = parse_rtp(out)
    assert parsed.ssrc == 0x1234 and parsed.payload_type == 96
    assert parsed.extensions == {3: bytes([30])}  # mid (foreign id 4) is gone
    assert bytes(parsed.payload) == b"opus"


def test_rewrite_without_audio_level_has_no_extension(Rewrite):  # noqa: N803
    rewrite = Rewrite(ssrc=1, payload_type=111, audio_level_id=None)
    out = rewrite.build(parse_rtp(make_packet(5, 5, 9)), level_byte=None)
    assert out[0] & 0x10 == 0 and out[12:] == b"opus"


def test_source_ssrc_change_keeps_sequence_and_timestamp_continuous(Rewrite):  # noqa: N803
    rewrite = Rewrite(ssrc=7, payload_type=111)
    for seq in (1000, 1001, 1002):
        last = parse_rtp(rewrite.build(parse_rtp(make_packet(seq, seq * 960, 0xA)), None))
    switched = parse_rtp(rewrite.build(parse_rtp(make_packet(50, 123, 0xB)), None))
    assert switched.sequence == (last.sequence + 1) & 0xFFFF
    assert switched.timestamp == (last.timestamp + 960) & 0xFFFFFFFF
    following = parse_rtp(rewrite.build(parse_rtp(make_packet(51, 123 + 960, 0xB)), None))
    assert following.sequence == switched.sequence + 1


def test_rtcp_is_told_apart_from_rtp():
    assert is_rtcp(bytes([0x80, 200]) + b"\x00" * 6)
    assert not is_rtcp(make_packet(1, 1, 1))


def test_vp8_keyframe_detection_rfc7741():
    # Descriptor with X, I (15-bit picture id) and partition start; payload header P=0.
    key = bytes([0x90, 0x80, 0x80 | 0x12, 0x34, 0x10])
    delta = bytes([0x90, 0x80, 0x80 | 0x12, 0x34, 0x11])
    not_start = bytes([0x80, 0x80, 0x05, 0x10])
    simple_key = bytes([0x10, 0x00])
    assert vp8_keyframe(key) and vp8_keyframe(simple_key)
    assert not vp8_keyframe(delta) and not vp8_keyframe(not_start) and not vp8_keyframe(b"")


def test_retransmission_reuses_offsets_without_touching_state(Rewrite):  # noqa: N803
    rewrite = Rewrite(ssrc=7, payload_type=96)
    rewrite.build(parse_rtp(make_packet(10, 100, 0xA, pt=100, level=None, extra_ext=False)), None)
    again = parse_rtp(rewrite.build(parse_rtp(make_packet(
        9, 90, 0xA, pt=100, level=None, extra_ext=False)), None, retransmission=True))
    assert again.sequence == 9 and rewrite.last_seq == 10 and rewrite.packets == 1


STATE = ("ssrc", "payload_type", "audio_level_id", "source_ssrc", "seq_offset", "ts_offset",
         "last_seq", "last_ts", "packets", "octets")

packets = st.lists(st.tuples(
    st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.sampled_from([0xA, 0xB, 0xFFFFFFFF]),
    st.one_of(st.none(), st.integers(0, 127)), st.booleans(), st.booleans(),
    st.binary(max_size=40)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(packets, st.one_of(st.none(), st.integers(1, 14)))
def test_c_and_python_rewrites_agree_on_every_packet_and_state(sequence, level_id):
    """The C twin must produce the same bytes and state as the Python one, packet by packet."""
    python, c = (impl(ssrc=0x1234, payload_type=111, audio_level_id=level_id)
                 for impl in IMPLEMENTATIONS)
    for seq, ts, ssrc, level, retransmission, padding, payload in sequence:
        raw = bytearray(make_packet(seq, ts, ssrc, level=level, payload=payload or b"x"))
        if padding:
            raw[0] |= 0x20
        packet = parse_rtp(bytes(raw))
        assert python.build(packet, level, retransmission) == c.build(packet, level,
                                                                      retransmission)
        assert [getattr(python, k) for k in STATE] == [getattr(c, k) for k in STATE]


def test_c_rewrite_state_is_settable_like_the_dataclass():
    rewrite = _fanout.Rewrite(ssrc=5, payload_type=0)
    rewrite.payload_type, rewrite.audio_level_id = 111, 3
    rewrite.audio_level_id = None
    assert (rewrite.payload_type, rewrite.audio_level_id, rewrite.source_ssrc) == (111, None, None)
    with pytest.raises(ValueError):
        rewrite.audio_level_id = 300


def test_engine_in_use_is_the_c_one_when_built():
    """Where the extension is built, the server must be using it (or saying why not)."""
    assert fastpath.AVAILABLE, fastpath.REASON
    assert fastpath.Rewrite is _fanout.Rewrite
