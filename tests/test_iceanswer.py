"""ICE consent STUN handled by the C ingress (rtc/_iceanswer.c), checked against aioice.

The peer's consent checks on the nominated pair are answered where the media
socket is read, and the answers to the server's own checks are taken there,
so neither wakes the event loop. aioice is the reference: its codec builds the
requests and answers sent here and parses what comes back, and what the C
answer holds must be byte for byte what aioice would have sent. Everything the
ICE agent has to decide must still come up to Python untouched.

Two levels: the ingress's drain() on real loopback sockets (every rule, one
datagram at a time), and a real UdpMux with its reader thread and real aioice
agents on both sides (what a connected client sees).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest
from aioice import stun

from callsctl_sfu.rtc import aiortc_bridge, fastpath
from callsctl_sfu.rtc.consent import ConsentScheduler
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.muxproto import MuxedStunProtocol
from tests.support.ice import connect_pairs
from tests.support.icecheck import (
    CLIENT_PASSWORD,
    CLIENT_UFRAG,
    SERVER_PASSWORD,
    SERVER_UFRAG,
    TIE_BREAKER,
    check,
    inbound_session,
    set_ice,
)

pytestmark = pytest.mark.skipif(fastpath.Ingress is None,
                                reason=fastpath.REASON or "C extension not built")

class Peers:
    """The server's socket and ingress, a client socket on the nominated pair, a stranger."""

    def __init__(self) -> None:
        self.sock = self._socket()
        self.client = self._socket()
        self.stranger = self._socket()
        self.srtp, self.session = inbound_session()
        self.ingress = fastpath.Ingress()
        for peer in (self.client, self.stranger):  # both are the session's learned addresses
            self.ingress.add(peer.getsockname(), self.session)
        self.nominated = {1: SimpleNamespace(remote_addr=self.client.getsockname())}
        set_ice(self.session, self.nominated)

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.5)
        return sock

    def drain(self, data: bytes, sender: socket.socket | None = None, now: float = 2.0):
        (sender or self.client).sendto(data, self.sock.getsockname())
        for _ in range(100):
            result = self.ingress.drain(self.sock.fileno(), self.sock.fileno(), now)
            if result.datagrams_in:
                return result
            asyncio.run(asyncio.sleep(0.01))
        raise AssertionError("nothing arrived on the server socket")

    def answer(self, sock: socket.socket | None = None) -> bytes | None:
        try:
            return (sock or self.client).recv(2048)
        except TimeoutError:
            return None

    def close(self) -> None:
        for sock in (self.sock, self.client, self.stranger):
            sock.close()


@pytest.fixture
def peers():
    p = Peers()
    yield p
    p.close()


def test_a_check_on_the_nominated_pair_is_answered_as_aioice_would(peers):
    request = check()
    result = peers.drain(bytes(request), now=7.5)
    assert result.slow is None  # nothing for Python: the loop is not woken for it
    assert (result.stun_in, result.stun_out, result.stun_octets_out) == (1, 1, 64)
    answer = peers.answer()
    assert answer is not None
    parsed = stun.parse_message(answer)
    assert parsed.check_message_integrity(SERVER_PASSWORD.encode())
    assert parsed.message_class == stun.Class.RESPONSE
    assert parsed.transaction_id == request.transaction_id
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == peers.client.getsockname()
    # Exactly the answer aioice's Connection.request_received builds.
    expected = stun.Message(message_method=stun.Method.BINDING,
                            message_class=stun.Class.RESPONSE,
                            transaction_id=request.transaction_id)
    expected.attributes["XOR-MAPPED-ADDRESS"] = peers.client.getsockname()
    expected.add_message_integrity(SERVER_PASSWORD.encode())
    assert answer == bytes(expected)
    assert peers.session.checks_answered == 1 and peers.session.last_rx == 7.5


STRANGER = object()  # sent from the session's other learned address


@pytest.mark.parametrize("case, request_bytes", [
    ("wrong password: aioice answers 401", lambda: bytes(check(password="not-the-password"))),
    ("another session's username", lambda: bytes(check(username=f"other:{CLIENT_UFRAG}"))),
    ("role conflict: the client also says controlled",
     lambda: bytes(check(role="ICE-CONTROLLED", use_candidate=False))),
    ("an unknown comprehension-required attribute",
     lambda: bytes(check(extra={"CHANNEL-NUMBER": 0x4000}))),
    ("no FINGERPRINT", lambda: bytes(check(fingerprint=False))),
    ("truncated", lambda: bytes(check())[:-8]),
    ("not the nominated pair's address", lambda: (STRANGER, bytes(check()))),
    ("an error response", lambda: bytes(stun.Message(stun.Method.BINDING, stun.Class.ERROR))),
    ("an answer to no check of ours", lambda: bytes(stun.Message(
        stun.Method.BINDING, stun.Class.RESPONSE))),
])
def test_what_the_ice_agent_must_decide_comes_up_untouched(peers, case, request_bytes):
    made = request_bytes()
    sender = None
    if isinstance(made, tuple):
        sender, made = peers.stranger, made[1]
    result = peers.drain(made, sender=sender)
    assert result.slow == [(made, (sender or peers.client).getsockname(), None)], case
    assert (result.stun_in, result.stun_out) == (0, 0)
    assert peers.answer(sender) is None, "the C path answered what aioice must decide"
    assert peers.session.checks_answered == 0


def test_after_a_renomination_the_old_address_goes_up_and_the_new_one_is_answered(peers):
    peers.nominated[1] = SimpleNamespace(remote_addr=peers.stranger.getsockname())
    assert peers.drain(bytes(check())).slow is not None
    result = peers.drain(bytes(check()), sender=peers.stranger)
    assert result.slow is None and peers.answer(peers.stranger) is not None


def answer_to(tid: bytes, password: str = CLIENT_PASSWORD) -> bytes:
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=tid)
    response.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 4242)
    response.add_message_integrity(password.encode())
    return bytes(response)


def test_an_authentic_answer_to_our_check_grants_consent_once(peers):
    tid = os.urandom(12)
    peers.session.expect_answer(tid, 0.5, peers.client.getsockname())
    result = peers.drain(answer_to(tid), now=2.0)
    assert result.slow is None and (result.stun_in, result.stun_out) == (1, 0)
    assert peers.session.consent_at == 2.0 and peers.session.consent_round_trip == 1.5
    assert peers.session.consent_answers_taken == 1
    # The same answer again (a duplicate) no longer matches a waiting check.
    assert peers.drain(answer_to(tid), now=3.0).slow is not None
    assert peers.session.consent_at == 2.0


@pytest.mark.parametrize("case", ["from another address", "signed with our own password",
                                  "another transaction"])
def test_an_answer_that_proves_nothing_grants_no_consent(peers, case):
    tid = os.urandom(12)
    peers.session.expect_answer(tid, 0.5, peers.client.getsockname())
    data, sender = answer_to(tid), None
    if case == "from another address":
        sender = peers.stranger
    elif case == "signed with our own password":
        data = answer_to(tid, password=SERVER_PASSWORD)
    else:
        data = answer_to(os.urandom(12))
    result = peers.drain(data, sender=sender)
    assert result.slow is not None, case
    assert peers.session.consent_at == 0.0 and peers.session.consent_answers_taken == 0


def test_the_ice_settings_refuse_wrong_types() -> None:
    _srtp, session = inbound_session()
    with pytest.raises(ValueError, match="set_ice"):
        session.send_check(os.urandom(12), 1.0, ("127.0.0.1", 1), 0)
    with pytest.raises(TypeError):
        set_ice(session, {}, username="text")
    with pytest.raises(TypeError):
        set_ice(session, [])
    with pytest.raises(ValueError):
        set_ice(session, {}, check_username=b"u" * 513)
    with pytest.raises(TypeError):
        session.set_ice(b"u", b"k", b"k", False, {})  # keywords only
    with pytest.raises(ValueError):
        session.expect_answer(b"short", 1.0, ("127.0.0.1", 1))
    session.expect_answer(os.urandom(12), 1.0, ("::1", 1))  # IPv6: never read here, ignored
    set_ice(session, {})
    with pytest.raises(ValueError):
        session.send_check(os.urandom(12), 1.0, ("::1", 1), 0)


@pytest.mark.parametrize("controlling", [False, True])
def test_our_check_is_built_as_aioice_builds_it_and_its_answer_grants_consent(peers,
                                                                              controlling):
    set_ice(peers.session, peers.nominated, controlling=controlling)
    tid = os.urandom(12)
    sent = peers.session.send_check(tid, 0.25, peers.client.getsockname(), peers.sock.fileno())
    request = peers.answer()
    assert request is not None and sent == len(request)
    # aioice's Connection.build_request + add_message_integrity, same transaction id.
    expected = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=tid)
    expected.attributes["USERNAME"] = f"{CLIENT_UFRAG}:{SERVER_UFRAG}"
    expected.attributes["PRIORITY"] = 1853824767
    expected.attributes["ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"] = TIE_BREAKER
    expected.add_message_integrity(CLIENT_PASSWORD.encode())
    assert request == bytes(expected)
    result = peers.drain(answer_to(tid), now=1.0)
    assert result.slow is None and peers.session.consent_at == 1.0
    assert peers.session.consent_round_trip == 0.75


# -- the whole path: a real mux, its reader thread, real aioice agents ---------------------


async def until(condition, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_a_connected_clients_checks_are_answered_off_the_event_loop() -> None:
    """The client sees ordinary answers; the server counts them as answered in C."""
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    mux.advertised = ("127.0.0.1", transport.get_extra_info("sockname")[1])
    mux.consent = ConsentScheduler(interval=0.2, timeout=1.0, tick=0.02)
    servers, clients = [], []
    srtp, session = inbound_session()
    try:
        await connect_pairs(mux, 1, servers, clients)
        server, client = servers[0], clients[0]
        proto = next(p for p in aiortc_bridge.protocols(server) if isinstance(p, MuxedStunProtocol))
        mux.attach_ingress(proto, session)  # what the server does once DTLS is up
        assert mux.ingress is not None and mux.ingress.running

        pair = aiortc_bridge.nominated_pair(client)
        for _ in range(5):
            request = client.build_request(pair, nominate=True)
            response, addr = await pair.protocol.request(
                request, pair.remote_addr, integrity_key=server.local_password.encode())
            assert response.message_class == stun.Class.RESPONSE and addr == pair.remote_addr
            assert response.attributes["XOR-MAPPED-ADDRESS"] == \
                pair.protocol.transport.get_extra_info("sockname")[:2]
        assert session.checks_answered == 5
        before = mux.stats.stun_in
        mux.collect_ingress()
        assert mux.stats.stun_in >= before + 5  # counted on /stats like any STUN message

        # The server's own checks: answered by the client's aioice, taken in C, consent kept
        # for several timeouts.
        assert await until(lambda: session.consent_answers_taken >= 8, 10)
        await asyncio.sleep(1.5)
        stats = mux.consent_stats()
        assert stats["expired"] == 0 and stats["checks_answered"] >= 8
        assert aiortc_bridge.nominated_pair(server) is not None
        round_trip = mux.consent.round_trip(server)
        assert round_trip is not None and round_trip.last_s is not None \
            and 0 <= round_trip.last_s < 1.0

        # A wrong password still gets aioice's 401 (through the event loop).
        bad = client.build_request(pair, nominate=False)
        bad.add_message_integrity(b"wrong-password")
        with pytest.raises(stun.TransactionFailed) as refused:
            await pair.protocol.request(bad, pair.remote_addr, retransmissions=0)
        assert refused.value.response.attributes["ERROR-CODE"][0] == 401
        assert session.checks_answered == 5
    finally:
        for agent in servers + clients:
            await agent.close()
        mux.transport.close()


def test_the_answer_layout_is_rfc_8489s() -> None:
    """Header and XOR-MAPPED-ADDRESS by hand (RFC 8489 §5, §14.2), not through aioice."""
    peers = Peers()
    try:
        request = check()
        peers.drain(bytes(request))
        answer = peers.answer()
        assert answer is not None
        kind, length, cookie = struct.unpack("!HHI", answer[:8])
        assert (kind, length, cookie, answer[8:20]) == (0x0101, 44, 0x2112A442,
                                                        request.transaction_id)
        attr, size, _zero, family, xport = struct.unpack("!HHBBH", answer[20:28])
        host, port = peers.client.getsockname()
        assert (attr, size, family, xport ^ 0x2112) == (0x0020, 8, 1, port)
        address = struct.unpack("!I", answer[28:32])[0] ^ 0x2112A442
        assert socket.inet_ntoa(struct.pack("!I", address)) == host
    finally:
        peers.close()


def test_the_reader_thread_answers_while_python_is_busy_and_never_wakes_it(peers):
    """What a muted listener's client sees when the server's event loop is stalled (a join
    storm): its consent checks are still answered, within milliseconds, by the reader
    thread, and the session counts as heard; Python is not woken at all."""
    wake = peers.ingress.start(peers.sock.fileno(), peers.sock.fileno())
    answered: list[float] = []

    def client() -> None:
        for _ in range(5):
            sent = time.monotonic()
            peers.client.sendto(bytes(check()), peers.sock.getsockname())
            if peers.answer() is not None:
                answered.append(time.monotonic() - sent)

    try:
        talker = threading.Thread(target=client)
        talker.start()
        busy_until = time.monotonic() + 1.0
        while talker.is_alive() and time.monotonic() < busy_until:
            sum(range(1000))  # this thread holds the GIL between switch intervals
        talker.join(5)
        assert len(answered) == 5 and max(answered) < 0.4, answered
        assert peers.session.checks_answered == 5 and peers.session.last_rx > 0
        assert peers.ingress.wakes == 0 and not select.select([wake], [], [], 0)[0]
        counted = peers.ingress.collect()
        assert (counted.stun_in, counted.stun_out) == (5, 5)
    finally:
        peers.ingress.stop()
