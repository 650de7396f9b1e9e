"""RTCP the SFU builds and its throttles (RFC 4585, RFC 3550)."""

from __future__ import annotations

from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRtpfbPacket

from callsctl_sfu.rtc.rtcp import KeyframeThrottle, RingBuffer, missing_between, nack, pli


def test_pli_and_nack_parse_back_with_aiortc():
    (parsed_pli,) = RtcpPacket.parse(pli(0xDEADBEEF))
    assert isinstance(parsed_pli, RtcpPsfbPacket) and parsed_pli.fmt == 1
    assert parsed_pli.media_ssrc == 0xDEADBEEF
    lost = [100, 101, 116, 117, 200, 65535, 0]
    (parsed_nack,) = RtcpPacket.parse(nack(42, lost))
    assert isinstance(parsed_nack, RtcpRtpfbPacket) and parsed_nack.media_ssrc == 42
    assert sorted(parsed_nack.lost) == sorted(lost)


def test_keyframe_requests_are_throttled_to_one_per_second_and_folded():
    throttle = KeyframeThrottle(interval=1.0)
    assert throttle.request(now=10.0) == 0.0
    delay = throttle.request(now=10.2)
    assert delay is not None and abs(delay - 0.8) < 1e-9  # one follow-up scheduled
    assert throttle.request(now=10.5) is None  # folded into it
    assert throttle.request(now=11.0) == 0.0
    assert throttle.sent == 2 and throttle.suppressed == 2


def test_ring_buffer_keeps_the_last_n_by_sequence():
    ring = RingBuffer(4)
    for seq in range(10):
        ring.put(seq, bytes([seq]))
    assert ring.get(9) == b"\x09" and ring.get(6) == b"\x06"
    assert ring.get(5) is None  # overwritten
    assert missing_between(65534, 2) == [65535, 0, 1]
    assert missing_between(5, 4) == [] and missing_between(5, 6) == []
