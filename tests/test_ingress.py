"""The C ingress (rtc/_ingress.c): the media socket read and audio forwarded in C.

A real UDP "server" socket on loopback, publisher sockets that protect RTP with
real libsrtp contexts, receivers that decrypt what arrives (tests/support/srtp.py).
Every case asserts what a participant would notice: the packet reached the other
side rewritten, or did not, or came up to Python untouched. A real server
forwarding through the ingress is in test_fanout.py (the engines test).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pylibsrtp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsctl_sfu.rtc import aiortc_bridge, fastpath
from callsctl_sfu.rtc.reports import ReceptionStats
from tests.support.helpers import REPO
from tests.support.srtp import Receiver, srtp_pair

pytestmark = pytest.mark.skipif(fastpath.Ingress is None,
                                reason=fastpath.REASON or "C extension not built")

OPUS_PT = 111
LEVEL_ID = 1
PUBLISHER_SSRC = 0x1234


def rtp(sequence: int, level: int | None = 30, payload: bytes = b"opus-frame",
        ssrc: int = PUBLISHER_SSRC, payload_type: int = OPUS_PT) -> bytes:
    """An RTP packet with an RFC 6464 one-byte extension (id LEVEL_ID) when level is given."""
    if level is None:
        return struct.pack("!BBHII", 0x80, payload_type, sequence, sequence * 960, ssrc) + payload
    extension = struct.pack("!HHBBH", 0xBEDE, 1, LEVEL_ID << 4, 0x80 | level, 0)
    return struct.pack("!BBHII", 0x90, payload_type, sequence, sequence * 960, ssrc) \
        + extension + payload


class Server:
    """The server side: its socket, one publisher's inbound context and the ingress."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.publisher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.publisher.bind(("127.0.0.1", 0))
        key = os.urandom(30)
        self.protect, _ = srtp_pair(key)  # the publisher's outbound context
        inbound = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.unprotect = pylibsrtp.Session(inbound)
        self.ingress = fastpath.Ingress()
        self.session = fastpath.InSession(aiortc_bridge.srtp_context_address(self.unprotect),
                                          self.unprotect)
        self.ingress.add(self.publisher.getsockname(), self.session)
        self.reception = ReceptionStats(48000)

    def route(self, receivers: list[Receiver], muted: bool = False):
        route = fastpath.InRoute("alice", OPUS_PT, LEVEL_ID, self.reception, muted)
        route.targets = [] if muted else [r.target for r in receivers]
        self.session.set_route(PUBLISHER_SSRC, route)
        return route

    def send(self, packet: bytes, protect: bool = True) -> None:
        data = self.protect.protect(packet) if protect else packet
        self.publisher.sendto(data, self.sock.getsockname())

    def drain(self, send: bool = True, now: float = 1.0):
        """One drain once the datagrams sent so far are readable."""
        deadline = 50
        while deadline:
            result = self.ingress.drain(self.sock.fileno(), self.sock.fileno() if send else -1,
                                        now)
            if result.datagrams_in:
                return result
            deadline -= 1
            asyncio.run(asyncio.sleep(0.01))
        raise AssertionError("nothing arrived on the server socket")

    def close(self) -> None:
        self.sock.close()
        self.publisher.close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_a_routed_audio_packet_reaches_every_receiver_rewritten(server):
    receivers = [Receiver(0xA0 + i, level_id=3) for i in range(3)]
    route = server.route(receivers)
    server.send(rtp(1, level=30))
    result = server.drain()
    assert (result.slow, result.unsent, result.error, result.datagrams_in, result.rtp_in,
            result.forwarded) == (None, None, 0, 1, 1, 3)
    assert result.loud == ["alice"]  # -30 dBov is speech: voice activity goes up to Python
    for i, receiver in enumerate(receivers):
        packet = receiver.receive()
        assert packet.ssrc == 0xA0 + i and packet.payload_type == OPUS_PT
        assert bytes(packet.payload) == b"opus-frame"
        assert packet.extensions[3][0] == 30  # the level, under the receiver's own id
    assert route.packets == 1 and route.octets == len(b"opus-frame")
    assert server.session.packets == 1 and server.session.last_rx == 1.0
    assert server.reception.received == 1 and server.reception.max_seq == 1


def test_quiet_packets_are_forwarded_without_voice_activity(server):
    receiver = Receiver(0xB0)
    server.route([receiver])
    server.send(rtp(1, level=90))
    result = server.drain()
    assert result.loud is None and result.forwarded == 1
    assert receiver.receive().extensions[1][0] == 90


def test_a_muted_route_drops_after_counting_reception(server):
    receiver = Receiver(0xC0)
    route = server.route([receiver], muted=True)
    server.send(rtp(1))
    result = server.drain()
    assert result.slow is None and result.forwarded == 0 and result.dropped_muted == 1
    assert receiver.nothing_waiting()
    assert route.packets == 1 and server.reception.received == 1  # receiver reports stay true


def test_audio_that_waited_past_late_drop_in_the_socket_is_counted_not_forwarded(server):
    """A server that fell behind (a full core) skips stale audio and catches up.

    The packet that sat in the receive queue longer than `late_drop` is still
    decrypted and counted (reception statistics stay true) but reaches no
    receiver; the next one, read at once, is forwarded. With no limit the same
    wait forwards it.
    """
    receiver = Receiver(0xC8)
    route = server.route([receiver])
    server.ingress.late_drop = 0.05
    server.send(rtp(1))
    first = server.drain()  # the socket's receive times are turned on by this first read
    assert (first.dropped_late, first.forwarded) == (0, 1), first
    assert receiver.receive().sequence == 1
    # The kernel turns receive times on from a work queue when no socket had them
    # (net_enable_timestamp); until then a datagram is stamped when it is read, so
    # it is never late. On a busy machine that can take a moment: a few tries.
    sequence = 2
    for _ in range(20):
        server.send(rtp(sequence))
        time.sleep(0.2)  # four times the limit in the receive queue
        stale = server.drain()
        if stale.dropped_late:
            break
        assert receiver.receive().sequence == sequence  # forwarded, not stamped yet
        sequence += 1
    assert (stale.rtp_in, stale.dropped_late, stale.forwarded) == (1, 1, 0), stale
    # Its wait is counted in the queue-wait histogram: 0.2 s falls in (100, 250] ms.
    bounds = list(fastpath.queue_wait_bounds_us())
    assert stale.queue_wait[bounds.index(250_000)] == 1, stale.queue_wait
    assert sum(stale.queue_wait[:-1]) == 1 and 200_000 <= stale.queue_wait[-1] < 250_000
    assert receiver.nothing_waiting()
    assert route.packets == sequence and server.reception.received == sequence
    server.send(rtp(sequence + 1))
    fresh = server.drain()
    assert (fresh.dropped_late, fresh.forwarded) == (0, 1), fresh
    assert sum(fresh.queue_wait[:bounds.index(20_000) + 1]) == 1, fresh.queue_wait  # read at once
    assert receiver.receive().sequence == sequence + 1
    server.ingress.late_drop = 0.0
    server.send(rtp(sequence + 2))
    time.sleep(0.2)
    unlimited = server.drain()
    assert (unlimited.dropped_late, unlimited.forwarded) == (0, 1), unlimited
    assert receiver.receive().sequence == sequence + 2


@pytest.mark.parametrize("case", ["unknown ssrc", "rtcp", "other payload type", "no route",
                                  "not srtp", "unknown source", "send blocked"])
def test_what_the_ingress_does_not_cover_comes_up_untouched(server, case):
    receiver = Receiver(0xD0)
    server.route([receiver])
    packet = rtp(1)
    send = True
    if case == "unknown ssrc":
        packet = rtp(1, ssrc=0x9999)
    elif case == "other payload type":
        packet = rtp(1, payload_type=97)  # RTX or DTMF: Python decides
    elif case == "no route":
        server.session.clear_routes()
    elif case == "unknown source":
        server.ingress.remove(server.publisher.getsockname())
    elif case == "send blocked":
        send = False  # asyncio holds queued datagrams: nothing may overtake them
    if case == "rtcp":
        data = server.protect.protect_rtcp(struct.pack("!BBHI", 0x80, 201, 1, 0x1234))
    elif case == "not srtp":
        data = b"\x16\xfe\xfd" + b"\x00" * 20  # a DTLS record
    else:
        data = server.protect.protect(packet)
    server.publisher.sendto(data, server.sock.getsockname())
    result = server.drain(send=send)
    assert result.slow == [(data, server.publisher.getsockname(), None)]
    assert result.forwarded == 0
    assert receiver.nothing_waiting()


@pytest.mark.parametrize("pairs", ["aioice's dict", "the server's watched dict", "mixed"])
def test_a_renominated_receiver_sends_the_packet_up_for_python_to_replan(server, pairs):
    """No copy goes to a receiver's old address once its client switched candidate pairs.

    With the watched dict the route's plan is checked only after a change it
    announces, so the plan is first found fresh (a packet forwarded), then the
    pair changes: the next packet must still go up, and once the pair is back
    the route forwards again. "mixed": one receiver's dict is aioice's own
    (looked up per packet) and it is the one that renominates.
    """
    receivers = [Receiver(0xE0, watched=pairs != "aioice's dict"),
                 Receiver(0xE1, watched=pairs == "the server's watched dict")]
    server.route(receivers)
    server.send(rtp(1))
    assert server.drain().forwarded == 2
    assert all(r.receive().sequence == 1 for r in receivers)
    epoch = fastpath.nomination_epoch()
    pair = receivers[1].pair
    receivers[1].nominated[1] = object()  # the client switched candidate pairs
    assert (fastpath.nomination_epoch() > epoch) == (pairs == "the server's watched dict")
    server.send(rtp(2))
    result = server.drain()
    assert result.slow is not None and len(result.slow) == 1 and result.forwarded == 0
    assert all(r.nothing_waiting() for r in receivers)
    receivers[1].nominated[1] = pair  # back on the pair the plan was made with
    server.send(rtp(3))
    assert server.drain().forwarded == 2
    assert all(r.receive().sequence == 3 for r in receivers)


def test_every_change_to_the_watched_dict_is_announced():
    """Whatever aioice (or anyone) does to a session's nominated pairs moves the epoch."""
    pairs = fastpath.NominatedPairs({1: "a"})
    changes = [lambda: pairs.__setitem__(1, "b"), lambda: pairs.update({2: "c"}),
               lambda: pairs.setdefault(3, "d"), lambda: pairs.pop(3),
               lambda: pairs.__delitem__(2), lambda: pairs.__ior__({4: "e"}),
               lambda: pairs.popitem(), pairs.clear]
    for change in changes:
        epoch = fastpath.nomination_epoch()
        change()
        assert fastpath.nomination_epoch() == epoch + 1, change
    assert pairs == {}
    assert pairs.get(1) is None and isinstance(pairs, dict)


def test_a_plan_taken_away_sends_packets_up_until_routed_again(server):
    receiver = Receiver(0xF0)
    route = server.route([receiver])
    route.targets = None  # what TrackRoutes does when the plan changes
    server.send(rtp(1))
    assert server.drain()[0] is not None
    route.targets = [receiver.target]
    server.send(rtp(2))
    assert server.drain()[9] == 1
    assert receiver.receive().sequence is not None


def test_a_packet_that_fails_srtp_is_counted_not_forwarded(server):
    receiver = Receiver(0xF1)
    server.route([receiver])
    server.send(rtp(1) + b"\x00" * 10, protect=False)  # no valid auth tag
    result = server.drain()
    assert result.slow is None and result.forwarded == 0
    assert server.session.srtp_errors == 1
    assert receiver.nothing_waiting()


def report_block(ssrc: int, fraction_lost: int, jitter: int, lsr: int = 0,
                 dlsr: int = 0) -> bytes:
    """One RFC 3550 §6.4.1 report block (cumulative lost 5, highest sequence 1000)."""
    return struct.pack("!IB3sIIII", ssrc, fraction_lost, b"\x00\x00\x05", 1000, jitter, lsr,
                       dlsr)


def receiver_report(*blocks: bytes, sender: int = 0x4321) -> bytes:
    return struct.pack("!BBHI", 0x80 | len(blocks), 201, 1 + 6 * len(blocks), sender) \
        + b"".join(blocks)


def sdes_cname(ssrc: int, cname: bytes = b"alice") -> bytes:
    """An SDES chunk with one CNAME item, its item list ended and padded (RFC 3550 §6.5)."""
    body = struct.pack("!IBB", ssrc, 1, len(cname)) + cname
    body += b"\x00" * (4 - len(body) % 4)
    return struct.pack("!BBH", 0x81, 202, len(body) // 4) + body


class ReportsSession:
    """The server fixture's publisher, now also reporting: its session reads RTCP in C."""

    def __init__(self, server: Server) -> None:
        self.reports: list[tuple[float, list]] = []
        self.plain: list[bytes] = []
        self.session = fastpath.InSession(aiortc_bridge.srtp_context_address(server.unprotect),
                                          server.unprotect, self.plain.append)
        self.session.on_reports = lambda now, blocks: self.reports.append((now, blocks))
        server.ingress.add(server.publisher.getsockname(), self.session)


def send_rtcp(server: Server, compound: bytes) -> bytes:
    data = server.protect.protect_rtcp(compound)
    server.publisher.sendto(data, server.sock.getsockname())
    return data


def test_receiver_reports_are_read_in_c_and_reach_python_without_the_datagram(server):
    listener = ReportsSession(server)
    send_rtcp(server, receiver_report(report_block(0xA0, 64, 120, 0x11112222, 0x10000),
                                      report_block(0xA1, 0, 7)) + sdes_cname(0x4321))
    result = server.drain(now=7.5)
    assert result.slow is None and result.plain is None  # nothing for the event loop
    assert listener.reports == [(7.5, [(0xA0, 64, 120, 0x11112222, 0x10000),
                                       (0xA1, 0, 7, 0, 0)])]
    assert listener.session.rtcp_packets == 1 and listener.session.last_rx == 7.5


def test_an_empty_receiver_report_is_taken_with_nothing_to_record(server):
    listener = ReportsSession(server)
    send_rtcp(server, receiver_report())
    result = server.drain()
    assert result.slow is None and result.plain is None and listener.reports == []
    assert listener.session.rtcp_packets == 1


@pytest.mark.parametrize("extra", ["pli", "sender report", "bye"])
def test_rtcp_holding_more_than_receiver_reports_goes_up_decrypted_whole(server, extra):
    listener = ReportsSession(server)
    if extra == "pli":  # a keyframe request after the report, as browsers send it
        compound = receiver_report(report_block(0xA0, 0, 3)) + \
            struct.pack("!BBHII", 0x81, 206, 2, 0x4321, 0xA0)
    elif extra == "sender report":  # a publisher's SR is translated for receivers
        compound = struct.pack("!BBHIQIII", 0x80, 200, 6, 0x4321, 1 << 40, 960, 10, 1000)
    else:
        compound = receiver_report() + struct.pack("!BBHI", 0x81, 203, 1, 0x4321)
    send_rtcp(server, compound)
    result = server.drain()
    assert result.slow is None and listener.reports == []
    assert result.plain == [(listener.plain.append, compound)]
    assert listener.session.rtcp_packets == 1


def test_rtcp_that_fails_srtcp_is_counted_and_dropped(server):
    listener = ReportsSession(server)
    data = bytearray(server.protect.protect_rtcp(receiver_report(report_block(0xA0, 1, 1))))
    data[10] ^= 0xFF  # inside the encrypted part: the authentication tag no longer holds
    server.publisher.sendto(bytes(data), server.sock.getsockname())
    result = server.drain()
    assert result.slow is None and result.plain is None and listener.reports == []
    assert listener.session.srtp_errors == 1 and listener.session.rtcp_packets == 0


def test_a_failing_reports_callback_loses_only_that_report(server):
    listener = ReportsSession(server)
    calls = []

    def fails_once(now: float, blocks: list) -> None:
        calls.append(blocks)
        if len(calls) == 1:
            raise RuntimeError("a bug in the callback")

    listener.session.on_reports = fails_once
    send_rtcp(server, receiver_report(report_block(0xA0, 1, 1)))
    assert server.drain().plain is None
    send_rtcp(server, receiver_report(report_block(0xA0, 2, 2)))
    assert server.drain().plain is None
    assert [blocks[0][1] for blocks in calls] == [1, 2]
    with pytest.raises(TypeError):
        listener.session.on_reports = 42


def test_a_callback_that_takes_itself_away_ends_the_c_reading_of_reports(server):
    listener = ReportsSession(server)
    calls = []

    def once(now: float, blocks: list) -> None:
        calls.append(blocks)
        listener.session.on_reports = None  # its last reference but the call's own

    listener.session.on_reports = once
    del once
    send_rtcp(server, receiver_report(report_block(0xA0, 1, 1)))
    assert server.drain().plain is None and len(calls) == 1
    data = send_rtcp(server, receiver_report(report_block(0xA0, 2, 2)))
    assert server.drain().slow == [(data, server.publisher.getsockname(), None)]  # as before C
    assert len(calls) == 1


def test_a_datagram_too_big_for_webrtc_is_counted_and_dropped(server):
    server.publisher.sendto(b"\x80" * (fastpath_recv_slot() + 100), server.sock.getsockname())
    result = server.drain()
    assert result.slow is None and result.truncated == 1


def fastpath_recv_slot() -> int:
    from callsctl_sfu.rtc import _fanout
    return int(_fanout.RECV_SLOT)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.integers(0x80, 0xBF), extension=st.binary(max_size=80),
       profile=st.sampled_from([0xBEDE, 0x1000, 0x1001, 0x0000, 0xFFFF]),
       payload=st.binary(max_size=1400))
def test_any_authenticated_packet_is_forwarded_or_dropped_never_a_crash(server, first,
                                                                        extension, profile,
                                                                        payload):
    """A participant holds its own SRTP keys: whatever header it builds that libsrtp accepts
    (CSRCs, any extension block with any elements in it, padding bit), the C parse stays
    inside the packet, finds the level or none, and the read goes on."""
    receiver = Receiver(0x300)
    server.route([receiver])
    server.sequence = getattr(server, "sequence", 0) + 1  # one server for every example:
    sequence = server.sequence  # a repeated sequence number would be an SRTP replay
    packet = struct.pack("!BBHII", first, OPUS_PT, sequence, sequence * 960, PUBLISHER_SSRC)
    packet += bytes(4 * (first & 0x0F))  # the CSRCs the first byte announces
    if first & 0x10:
        words = len(extension) // 4
        packet += struct.pack("!HH", profile, words) + extension[:4 * words]
    server.send(packet + payload)
    result = server.drain()
    forwarded, malformed = result.forwarded, result.dropped_malformed
    assert result.slow is None and result.datagrams_in == 1
    assert (forwarded, malformed) == (1, 0), result
    copy = receiver.receive()  # decrypts: a well-formed copy
    assert bytes(copy.payload) == payload
    receiver.sock.close()


VP8_PT = 96


def vp8(sequence: int, start: bool, keyframe: bool = False) -> bytes:
    """A VP8 RTP packet (RFC 7741): descriptor S bit, then a payload header with its P bit."""
    descriptor = 0x10 if start else 0x00
    header = 0x00 if keyframe else 0x01  # P = 0: a keyframe
    return struct.pack("!BBHII", 0x80, VP8_PT, sequence, 3000 * (sequence // 4),
                       PUBLISHER_SSRC) + bytes([descriptor, header]) + b"vp8-data" * 20


def test_video_takes_the_c_path_only_for_the_next_packet_of_a_frame(server):
    """In sequence and not a keyframe: forwarded in C, kept in the NACK ring; a gap or a
    keyframe comes up decrypted for Python, and so does the rest of that read."""
    from callsctl_sfu.rtc.rtcp import RingBuffer

    receiver = Receiver(0x400)
    receiver.rewrite.payload_type = VP8_PT
    ring, highest_seq = RingBuffer(64), {}
    route = fastpath.InRoute("alice", VP8_PT)
    route.targets = [receiver.target]
    route.video, route.ring, route.highest_seq, route.highest = True, ring, highest_seq, 1
    up: list[bytes] = []  # on_plain is given at construction: this source gets a session with it
    session = fastpath.InSession(aiortc_bridge.srtp_context_address(server.unprotect),
                                 server.unprotect, up.append)
    session.set_route(PUBLISHER_SSRC, route)
    server.ingress.add(server.publisher.getsockname(), session)

    server.send(vp8(2, start=False))  # the next packet, inside a frame
    result = server.drain()
    assert result.forwarded == 1 and result.plain is None
    assert bytes(receiver.receive().payload)[:2] == b"\x00\x01"
    assert ring.get(2) == vp8(2, start=False) and highest_seq == {PUBLISHER_SSRC: 2}

    server.send(vp8(4, start=True))  # 3 is missing: Python asks for it
    server.send(vp8(5, start=False))  # after a hand-up, the rest of the read goes up too
    asyncio.run(asyncio.sleep(0.05))
    result = server.drain()
    assert result.forwarded == 0 and [packet for _call, packet in result.plain] == [
        vp8(4, start=True), vp8(5, start=False)]
    for on_plain, packet in result.plain:
        on_plain(packet)
    assert up == [vp8(4, start=True), vp8(5, start=False)]
    assert receiver.nothing_waiting() and ring.get(4) is None

    route.highest = 5  # what Python's path re-registers after handling them
    server.send(vp8(6, start=True, keyframe=True))  # receivers may be waiting for it
    result = server.drain()
    assert result.forwarded == 0 and len(result.plain) == 1


def test_the_c_and_python_reception_state_agree() -> None:
    """Receiver reports read the same numbers whichever path counted the packets."""
    from callsctl_sfu.rtc.reports import PyReception
    twins = [fastpath.Reception(48000), PyReception(48000)]
    arrivals = [(65530 + i) & 0xFFFF for i in range(12)] + [3, 2, 20, 19]  # wrap, reorder, gap
    for n, sequence in enumerate(arrivals):
        for stats in twins:
            stats.update(sequence, 960 * n + (n % 3) * 7, n * 0.02 + (n % 4) * 0.003)
    fields = ("base_seq", "max_seq", "cycles", "received", "jitter", "transit")
    c_side, python_side = ({f: getattr(s, f) for f in fields} for s in twins)
    assert c_side == pytest.approx(python_side)
    assert c_side["cycles"] == 1 << 16


def test_the_route_objects_refuse_wrong_types() -> None:
    with pytest.raises(TypeError, match="targets must be a list"):
        fastpath.InRoute("a", OPUS_PT).targets = ("not", "a list")
    with pytest.raises(ValueError, match="payload_type"):
        fastpath.InRoute("a", 200)
    with pytest.raises(TypeError, match="reception must be a Reception"):
        fastpath.InRoute("a", OPUS_PT, reception=object())
    with pytest.raises(ValueError, match="IPv4"):
        fastpath.Ingress().add(("::1", 5), fastpath.InSession(1, None))
    route = fastpath.InRoute("a", OPUS_PT)
    route.targets = [object()]  # not a Target: the drain sends such a packet up, never crashes
    assert route.targets is not None


class SecondPublisher:
    """Another publisher sending to the same server socket, with its own SRTP contexts."""

    def __init__(self, server: Server, ssrc: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        key = os.urandom(30)
        self.protect, _ = srtp_pair(key)
        inbound = pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        self.session = fastpath.InSession(aiortc_bridge.srtp_context_address(inbound), inbound)
        server.ingress.add(self.sock.getsockname(), self.session)
        self.server, self.ssrc = server, ssrc

    def send(self, sequence: int) -> None:
        self.sock.sendto(self.protect.protect(rtp(sequence, ssrc=self.ssrc)),
                         self.server.sock.getsockname())


@pytest.fixture
def two_threads():
    fastpath.start_pool(2)
    yield
    fastpath.shutdown_pool()


@pytest.mark.parametrize(("same_call", "receivers", "split"),
                         [(False, 20, True), (True, 20, False), (False, 2, False)])
def test_two_calls_read_together_are_sent_on_two_threads(server, two_threads, same_call,
                                                         receivers, split):
    """Packets of different calls in one read go out in parallel; one call's never do, and
    neither does a read with fewer copies than a hand-off to another thread is worth."""
    first_call = [Receiver(0x100 + i) for i in range(receivers)]
    second_call = [Receiver(0x200 + i) for i in range(receivers)]
    route = server.route(first_call)
    other = SecondPublisher(server, 0x4321)
    other_route = fastpath.InRoute("bob", OPUS_PT, LEVEL_ID)
    other_route.targets = [r.target for r in second_call]
    other_route.group = route.group if same_call else route.group + 1
    other.session.set_route(0x4321, other_route)
    before = fastpath.parallel_batches()
    for sequence in range(1, 4):
        server.send(rtp(sequence))
        other.send(sequence)
    asyncio.run(asyncio.sleep(0.05))  # all six datagrams are queued: one read takes them
    result = server.drain()
    assert result.datagrams_in == 6 and result.slow is None
    assert result.forwarded == 3 * 2 * receivers
    assert fastpath.parallel_batches() - before == (1 if split else 0)
    for receiver in first_call + second_call:  # each stream in order, rewritten once
        assert [receiver.receive().sequence for _ in range(3)] == [
            (receiver.rewrite.last_seq - 2 + i) & 0xFFFF for i in range(3)]


# A real server forwarding through the ingress, with mute enforced there: test_fanout.py
# (test_both_engines_forward_audio_and_stop_a_muted_speaker, the "c" engine).


def readable(fd: int, timeout: float = 5.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_the_reader_thread_forwards_alone_and_wakes_python_only_for_what_it_needs(server):
    """start(): the socket is read on the ingress's own thread. Audio of a routed speaker
    reaches the receivers with no Python call; its speech is handed up once (not per
    packet); a datagram Python must see comes up untouched; counters wait for collect()."""
    receivers = [Receiver(0xF0 + i, level_id=3) for i in range(2)]
    route = server.route(receivers)
    wake = server.ingress.start(server.sock.fileno(), server.sock.fileno())
    try:
        assert server.ingress.running
        for sequence in range(1, 6):
            server.send(rtp(sequence, level=30))
        for receiver in receivers:
            assert [receiver.receive().sequence for _ in range(5)] == [1, 2, 3, 4, 5]
        assert readable(wake)
        handed = server.ingress.take()
        assert [result.loud for result in handed] == [["alice"]]
        assert not readable(wake, 0)  # take() consumed the wake-up
        dtls = b"\x16\xfe\xfd" + b"\x00" * 20
        server.publisher.sendto(dtls, server.sock.getsockname())
        assert readable(wake)
        [result] = server.ingress.take()
        assert result.slow == [(dtls, server.publisher.getsockname(), None)]
        counted = server.ingress.collect()
        assert (counted.datagrams_in, counted.rtp_in, counted.forwarded) == (5, 5, 10)
        assert server.ingress.collect().forwarded == 0  # collected once
        assert route.packets == 5 and server.reception.received == 5
        with pytest.raises(RuntimeError, match="reader thread"):
            server.ingress.drain(server.sock.fileno(), -1, 1.0)
    finally:
        server.ingress.stop()
    assert not server.ingress.running and server.ingress.failure is None
    server.send(rtp(6, level=90))  # the socket is the caller's again
    assert server.drain().forwarded == 2


@pytest.mark.parametrize("pool_threads", [1, 2])
def test_the_threads_copies_and_a_fanout_from_python_to_the_same_receivers_interleave_whole(
        server, pool_threads):
    """The reader thread sends its copies with the GIL released, so Python runs meanwhile;
    a fan-out from Python to the same receivers (the event loop's path, here another
    thread) waits for the media lock: every receiver decrypts all 100 copies, numbered
    without a gap or a repeat, however the two streams interleaved."""
    # 1 thread: both send from the calling thread; 2: 80 receivers split over the pool.
    receivers = [Receiver(0x300 + i) for i in range(40 * pool_threads)]
    server.route(receivers)
    targets = [r.target for r in receivers]
    server.ingress.start(server.sock.fileno(), server.sock.fileno())
    sent_from_python: list[int] = []

    def python_side() -> None:
        for sequence in range(50):
            result = fastpath.fanout(server.sock.fileno(), 0x90, False, sequence,
                                     sequence * 960, 0xABCDEF, b"from-python", 20, targets)
            sent_from_python.append(result.sent)
            time.sleep(0.0005)

    fastpath.start_pool(pool_threads)
    other = threading.Thread(target=python_side)
    try:
        other.start()
        for sequence in range(1, 51):
            server.send(rtp(sequence))
            time.sleep(0.0005)
        other.join(30)
        assert sent_from_python == [len(receivers)] * 50
        for receiver in receivers:
            numbers = [receiver.receive().sequence for _ in range(100)]
            steps = [(b - a) & 0xFFFF for a, b in zip(numbers, numbers[1:], strict=False)]
            assert steps == [1] * 99
        assert server.ingress.collect().forwarded == 50 * len(receivers)
    finally:
        server.ingress.stop()
        fastpath.shutdown_pool()
        for receiver in receivers:
            receiver.sock.close()


EXIT_WITH_A_RUNNING_READER = """
import socket, sys
from callsctl_sfu.rtc import aiortc_bridge, fastpath  # wires libsrtp, as a server does
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
ingress = fastpath.Ingress()
ingress.start(sock.fileno(), sock.fileno())
fastpath.reader_started(ingress)
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(50):
    sender.sendto(b"\\x16\\xfe\\xfd" + bytes(20), sock.getsockname())
print("exiting with the reader running", flush=True)
"""


def test_a_process_exits_cleanly_with_its_reader_thread_running():
    """The server's process may end without closing its socket first (a signal, an error):
    the reader thread is stopped at exit, with no hang and no crash."""
    done = subprocess.run([sys.executable, "-c", EXIT_WITH_A_RUNNING_READER], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "exiting with the reader running" in done.stdout
    assert "Traceback" not in done.stderr and "Fatal" not in done.stderr, done.stderr
