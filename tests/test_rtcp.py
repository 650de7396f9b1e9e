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


async def test_a_held_back_receiver_report_measures_the_round_trip_from_its_arrival():
    """The C ingress may hand a receiver report up to 0.25 s after it arrived: the round
    trip (RFC 3550 §6.4.1: arrival - LSR's send time - DLSR) must use the arrival."""
    import asyncio
    from types import SimpleNamespace

    from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

    from callsctl_sfu.rtc.rtcp_routing import RtcpRouter

    now = asyncio.get_running_loop().time()
    down = SimpleNamespace(kind="audio", sr_sent={0x1234: now - 0.5}, rtt_ms=None,
                           fraction_lost=0.0, jitter=0, jitter_ms=0.0)
    receiver = SimpleNamespace(downtracks_by_ssrc={0xA0: down})
    report = bytes(RtcpRrPacket(ssrc=7, reports=[RtcpReceiverInfo(
        ssrc=0xA0, fraction_lost=64, packets_lost=1, highest_sequence=5, jitter=480,
        lsr=0x1234, dlsr=6554)]))  # DLSR 0.1 s
    router = RtcpRouter(SimpleNamespace())
    router.on_rtcp(receiver, report, arrived=now - 0.25)  # read 0.25 s ago
    assert abs(down.rtt_ms - 150) < 1, down.rtt_ms  # 0.5 - 0.25 - 0.1 s, not 400 ms
    assert down.fraction_lost == 0.25 and down.jitter_ms == 10
    router.on_rtcp(receiver, report)  # without: now, as on the Python path
    assert abs(down.rtt_ms - 400) < 5, down.rtt_ms
