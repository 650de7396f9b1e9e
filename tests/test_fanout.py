"""The C fan-out (rtc/_fanout.c) on real sockets with real SRTP contexts.

Each receiver is a UDP socket on loopback holding the inbound twin of the SRTP
context the fan-out protects with; what it decrypts is what a browser would see.
"""

from __future__ import annotations

import asyncio
import os
import socket

import httpx
import pylibsrtp
import pytest

from callsctl_sfu.rtc import aiortc_bridge, fastpath
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.rtp import parse_rtp
from tests.support.clients import close_all, join_all
from tests.support.helpers import wait_until

_fanout = pytest.importorskip("callsctl_sfu.rtc._fanout", reason="C extension not built")
pytestmark = pytest.mark.skipif(not fastpath.AVAILABLE, reason=fastpath.REASON)

KEY_LEN = 30  # AES_CM_128_HMAC_SHA1_80 master key + salt


def srtp_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """(the SFU's outbound context, the receiver's inbound one) sharing one key."""
    key = os.urandom(KEY_LEN)
    sessions = []
    for ssrc_type in (pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND):
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type)
        policy.allow_repeat_tx = True
        sessions.append(pylibsrtp.Session(policy))
    return sessions[0], sessions[1]


class Receiver:
    """One receiving participant: a socket, its SRTP context and its target tuple."""

    def __init__(self, ssrc: int, level_id: int | None = 1) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.outbound, self.inbound = srtp_pair()
        self.rewrite = fastpath.Rewrite(ssrc=ssrc, payload_type=111, audio_level_id=level_id)
        self.pair = object()
        self.nominated = {1: self.pair}
        addr = self.sock.getsockname()
        self.target = (self.rewrite, self.outbound,
                       aiortc_bridge.srtp_context_address(self.outbound),
                       fastpath.packed_ipv4(addr), addr, self.nominated, self.pair)

    def receive(self):
        return parse_rtp(self.inbound.unprotect(self.sock.recv(2048)))

    def nothing_waiting(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(2048)
        except TimeoutError:
            return True
        return False


@pytest.fixture
def sender():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def fan(sender: socket.socket, receivers: list[Receiver], seq: int, level: int = 20,
        payload: bytes = b"opus-frame", targets: list | None = None):
    return fastpath.fanout(sender.fileno(), 0x90, True, seq, seq * 960, 0xABCDEF, payload,
                           level, targets if targets is not None else
                           [r.target for r in receivers])


def test_every_receiver_decrypts_its_own_rewritten_copy(sender):
    # 150 receivers: more than one sendmmsg batch.
    receivers = [Receiver(ssrc=1000 + i, level_id=None if i % 2 else 3) for i in range(150)]
    try:
        sent, plain, wire, errors, srtp_errors, stale, unsent = fan(sender, receivers, 7)
        assert (sent, errors, srtp_errors, stale, unsent) == (150, 0, 0, None, None)
        assert wire == plain + 150 * 10  # the 80-bit authentication tag on every copy
        for number, receiver in enumerate(receivers):
            packet = receiver.receive()
            assert (packet.ssrc, packet.payload_type, packet.sequence, packet.marker) == (
                1000 + number, 111, 7, True)
            assert bytes(packet.payload) == b"opus-frame"
            # Only receivers that negotiated the audio level get it, under their own id.
            assert packet.extensions == ({} if number % 2 else {3: bytes([20])})
            assert receiver.rewrite.packets == 1 and receiver.rewrite.octets == 10
    finally:
        for receiver in receivers:
            receiver.sock.close()


def test_c_and_python_sends_share_one_srtp_context(sender):
    """NACK answers go out the Python way: the receiver must accept both, in order."""
    receiver = Receiver(ssrc=5)
    try:
        for seq in range(1, 7):
            if seq % 2:
                fan(sender, [receiver], seq)
            else:
                packet = parse_rtp(bytes([0x80, 111]) + seq.to_bytes(2, "big")
                                   + bytes(8) + b"x")
                sender.sendto(receiver.outbound.protect(receiver.rewrite.build(packet, None)),
                              receiver.target[4])
            assert receiver.receive().sequence == seq
    finally:
        receiver.sock.close()


def test_a_renominated_receiver_is_handed_back_untouched(sender):
    moved, staying = Receiver(ssrc=1), Receiver(ssrc=2)
    try:
        moved.nominated[1] = object()  # the client selected another candidate pair
        sent, *_rest, stale, unsent = fan(sender, [moved, staying], 3)
        assert sent == 1 and stale == [0] and unsent is None
        assert staying.receive().sequence == 3
        assert moved.nothing_waiting() and moved.rewrite.packets == 0
    finally:
        moved.sock.close()
        staying.sock.close()


def test_an_address_the_kernel_refuses_costs_only_that_copy(sender):
    good = Receiver(ssrc=9)
    bad = Receiver(ssrc=10)
    try:
        port_zero = ("127.0.0.1", 0)  # EINVAL from sendmmsg, no traffic
        bad_target = bad.target[:3] + (fastpath.packed_ipv4(port_zero), port_zero) + \
            bad.target[5:]
        sent, _p, _w, errors, *_rest = fan(sender, [], 4, targets=[bad_target, good.target])
        assert (sent, errors) == (1, 1)
        assert good.receive().sequence == 4
    finally:
        good.sock.close()
        bad.sock.close()


def test_bad_arguments_raise_instead_of_crashing(sender):
    receiver = Receiver(ssrc=1)
    try:
        with pytest.raises(TypeError):
            fan(sender, [], 1, targets=[("not", "a", "target")])
        with pytest.raises(ValueError):
            fan(sender, [receiver], 1, payload=bytes(_fanout.MAX_PAYLOAD + 1))
    finally:
        receiver.sock.close()


@pytest.mark.parametrize("engine", ["c", "python"])
async def test_both_engines_forward_audio_and_stop_a_muted_speaker(serve_factory, engine):
    """The same call through the C fan-out and through the Python path (CALLSCTL_FAST_PATH=0)."""
    server = serve_factory(env={"CALLSCTL_FAST_PATH": "0"} if engine == "python" else None)
    assert httpx.get(f"{server.api_url}/version").json()["forwarding_engine"]["engine"] == engine
    people = await join_all(server, 3, call=f"engine-{engine}")
    loud, a, b = people
    try:
        for me, person in enumerate(people):
            others = [p.session_id for i, p in enumerate(people) if i != me]
            assert await wait_until(lambda p=person, o=others: all(p.frames_from[s] > 25
                                                                   for s in o), 10), \
                f"{engine}: {person.name} got {dict(person.frames_from)}"
        await loud.send({"type": "mute"})  # its client keeps sending
        await a.wait_for(lambda e: e["type"] == "user_muted"
                         and e["session_id"] == loud.session_id, 5)
        await asyncio.sleep(0.5)
        before, still = a.frames_from[loud.session_id], b.frames_from[a.session_id]
        await asyncio.sleep(1.5)
        assert a.frames_from[loud.session_id] == before
        assert b.frames_from[a.session_id] > still + 30
        forwarding = httpx.get(f"{server.api_url}/stats").json()["forwarding"]
        assert forwarding["rtp_forwarded"] > 150 and forwarding["srtp_protect_errors"] == 0
    finally:
        await close_all(people)


async def test_copies_the_kernel_would_not_take_wait_in_asyncios_queue_in_order():
    """A full socket buffer: the fan-out steps aside until asyncio's queue has drained."""
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    addr = receiver.getsockname()
    try:
        assert mux.fanout_fd() >= 0
        mux.fanned_out(3, 300, 0, [(b"first", addr), (b"second", addr)])
        assert mux.fanout_fd() == -1  # later packets must queue behind these
        assert [receiver.recv(64), receiver.recv(64)] == [b"first", b"second"]
        assert mux.stats.datagrams_out == 3 and mux.stats.bytes_out == 300
        mux.send4(b"third", addr)  # the Python path drains and hands back the fast path
        assert receiver.recv(64) == b"third"
        assert mux.fanout_fd() >= 0
    finally:
        receiver.close()
        transport.close()
