"""Malformed packets on the media port cost a counter, never a traceback.

aioice's STUN parser raises struct.error, IndexError, ValueError, ... for
attributes of the wrong length; the UDP mux and the ICE-TCP path must survive
every one of them. Hypothesis drives the two parsers in front of aioice (the
UDP datagram path, known and unknown sources, and RFC 4571 framing on
ICE-TCP) with structured STUN whose attributes have random lengths; a real
server then gets the audit's packets and must still answer a bare Binding.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from typing import Any

import httpx
import pytest
from aioice import Connection, stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsctl_sfu.ratelog import RateLimitedLog
from callsctl_sfu.rtc import aiortc_bridge
from callsctl_sfu.rtc.icetcp import IceTcpStream, TcpMux
from callsctl_sfu.rtc.mux import UdpMux

COOKIE = 0x2112A442
KNOWN_TYPES = sorted(stun.ATTRIBUTES_BY_TYPE)


def stun_packet(attributes: list[tuple[int, bytes]], method_class: int = 0x0001,
                length_delta: int = 0) -> bytes:
    """A STUN header (Binding Request by default) and TLV attributes as given."""
    body = b""
    for kind, value in attributes:
        body += struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)
    return struct.pack("!HHI12s", method_class, max(0, len(body) + length_delta), COOKIE,
                       b"0123456789ab") + body


def audit_packets() -> dict[str, bytes]:
    """What the audit sent: attributes one to four octets too short."""
    return {
        "2-octet FINGERPRINT": stun_packet([(0x8028, b"\x01\x02")]),
        "2-octet PRIORITY": stun_packet([(0x0024, b"\x01\x02")]),
        "2-octet ICE-CONTROLLING": stun_packet([(0x802A, b"\x01\x02")]),
        "0-octet LIFETIME": stun_packet([(0x000D, b"")]),
        "1-octet XOR-MAPPED-ADDRESS": stun_packet([(0x0020, b"\x01")], 0x0101),
    }


attribute = st.tuples(st.one_of(st.sampled_from(KNOWN_TYPES), st.integers(0, 0xFFFF)),
                      st.binary(max_size=40))
structured_stun = st.builds(
    stun_packet, st.lists(attribute, max_size=5),
    st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, 0x0003, 0x0004]),
    st.sampled_from([0, 0, 0, -4, 4, 1]))
any_datagram = st.one_of(structured_stun, st.binary(max_size=120),
                         st.builds(lambda b: bytes([b[0] & 3]) + b[1:], st.binary(min_size=1)))


class FakeTransport:
    """The parts of an asyncio transport the media path uses."""

    def __init__(self, peer: tuple[str, int] = ("192.0.2.7", 40000)) -> None:
        self.peer = peer
        self.closed = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.written.append(data)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.fixture(scope="module")
def loop_and_mux():
    """One event loop, a mux with a fake socket, and one session whose address is known."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mux = UdpMux()
    mux.connection_made(FakeTransport())  # type: ignore[arg-type]
    mux.tcp = TcpMux(mux)
    connection = Connection(ice_controlling=False)
    mux.attach(connection)
    loop.run_until_complete(connection.gather_candidates())
    proto = aiortc_bridge.protocols(connection)[0]
    mux.learn(("192.0.2.1", 5000), proto)
    yield loop, mux
    loop.run_until_complete(connection.close())
    loop.close()
    asyncio.set_event_loop(None)


@settings(max_examples=600, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(any_datagram, st.booleans())
def test_udp_mux_survives_any_datagram(loop_and_mux, data: bytes, known: bool) -> None:
    loop, mux = loop_and_mux
    source = ("192.0.2.1", 5000) if known else ("192.0.2.2", 6000)
    loop.run_until_complete(_feed_udp(mux, data, source))


async def _feed_udp(mux: UdpMux, data: bytes, source: tuple[str, int]) -> None:
    mux.datagram_received(data, source)  # must not raise, whatever the bytes


@settings(max_examples=400, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(structured_stun, st.binary(max_size=60)), min_size=1, max_size=4),
       st.integers(1, 7))
def test_ice_tcp_framing_survives_any_stream(loop_and_mux, packets: list[bytes],
                                             chunk: int) -> None:
    loop, mux = loop_and_mux
    framed = b"".join(len(p).to_bytes(2, "big") + p for p in packets)
    loop.run_until_complete(_feed_tcp(mux.tcp, framed, chunk))


async def _feed_tcp(tcp: TcpMux, stream_bytes: bytes, chunk: int) -> None:
    stream = IceTcpStream(tcp)
    transport = FakeTransport()
    stream.connection_made(transport)  # type: ignore[arg-type]
    for start in range(0, len(stream_bytes), chunk):  # split the way TCP may split it
        stream.data_received(stream_bytes[start:start + chunk])
    stream.connection_lost(None)


async def test_audit_packets_are_counted_by_kind_and_logged_once(caplog) -> None:
    mux = UdpMux()
    mux.connection_made(FakeTransport())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="callsctl_sfu.rtc"):
        for _ in range(50):
            for packet in audit_packets().values():
                mux.datagram_received(packet, ("192.0.2.9", 7000))
    assert mux.malformed[("udp", "stun")] == 250
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "192.0.2.9" in lines[0].getMessage()


def test_rate_limited_log_counts_what_it_held_back(caplog) -> None:
    now = [100.0]
    limiter = RateLimitedLog(logging.getLogger("test.ratelog"), interval=10,
                             clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        for _ in range(5):
            limiter.warning("10.0.0.1", "bad packet from %s", "10.0.0.1")
        limiter.warning("10.0.0.2", "bad packet from %s", "10.0.0.2")
        now[0] += 11
        limiter.warning("10.0.0.1", "bad packet from %s", "10.0.0.1")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "4 more" in messages[2], messages


def scrape_malformed(api_url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{api_url}/metrics", timeout=5).text
    found = {}
    for labels, value in re.findall(r'^callsctl_rtc_malformed_packets_total\{(.*)\} (\S+)',
                                     text, re.M):
        pairs = dict(re.findall(r'(\w+)="(\w+)"', labels))
        found[(pairs["transport"], pairs["kind"])] = float(value)
    return found


def test_a_real_server_counts_malformed_stun_and_still_answers(server) -> None:
    """The audit's packets over UDP and ICE-TCP; then a bare Binding still gets its answer."""
    repeats = 40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        for _ in range(repeats):
            for packet in audit_packets().values():
                udp.sendto(packet, ("127.0.0.1", server.udp_port))
        for packet in audit_packets().values():
            with socket.create_connection(("127.0.0.1", server.udp_port), timeout=5) as tcp:
                tcp.sendall(len(packet).to_bytes(2, "big") + packet)
                tcp.settimeout(5)
                assert tcp.recv(100) == b""  # closed: a malformed first frame binds nothing
        udp.settimeout(5)
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        udp.sendto(bytes(request), ("127.0.0.1", server.udp_port))
        answer = stun.parse_message(udp.recv(2048))
        assert answer.transaction_id == request.transaction_id
        assert answer.attributes["XOR-MAPPED-ADDRESS"] == udp.getsockname()
    counts = scrape_malformed(server.api_url)
    assert counts.get(("udp", "stun"), 0) >= repeats * len(audit_packets()), counts
    assert counts.get(("tcp", "stun"), 0) >= len(audit_packets()), counts
    log = server.log()
    assert "Traceback" not in log and "struct.error" not in log
    # One line per source per interval, not one per packet.
    assert log.count("malformed") <= 4, log[-3000:]
