"""rtc/dtlsrecord.py: the DTLS 1.2 record layer that takes over a finished connection.

The first tests connect two real aiortc peers on loopback, one of them a server
connection whose OpenSSL DTLS connection is handed over when it connects (as
rtc/peer.py does), and check what a participant would notice: the data channel
still carries messages both ways, in order, and each side sees the other close.
The peer at the other end keeps OpenSSL, so every record is checked by a real
DTLS stack. The rest check the record layer's own rules against a second
RecordLayer holding the peer's keys: replays, forgeries, old epochs and records
out of order.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from OpenSSL import SSL

from callsctl_sfu.client.loadgen import gather_on
from callsctl_sfu.rtc import aiortc_bridge as bridge
from callsctl_sfu.rtc import dtlsrecord
from callsctl_sfu.rtc.dtlsrecord import (
    SUITES,
    Direction,
    OutgoingRecords,
    RecordLayer,
    derive_keys,
    prf,
)
from tests.support.peers import max_bundle_pc, until

pytestmark = pytest.mark.timeout(60)




def _client() -> RTCPeerConnection:
    """A client with an audio transceiver first: its data channel bundles on that transport."""
    client = max_bundle_pc()
    client.addTransceiver("audio")
    return client




class Served:
    """A server-side connection with rtc/peer.py's DTLS hooks and an echoing channel."""

    def __init__(self) -> None:
        self.pc = max_bundle_pc()
        bridge.use_certificate(self.pc, bridge.shared_certificate())
        self.released: list[bool] = []
        self.channels: list[Any] = []
        self.pc.on("datachannel", self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self.channels.append(channel)
        channel.on("message", lambda m: channel.send(m.replace("ping", "pong")
                                                     if isinstance(m, str) else m))

    def watch(self) -> None:
        for dtls in bridge.dtls_transports(self.pc):
            dtls.on("statechange", lambda d=dtls: self._on_state(d))

    def _on_state(self, dtls: Any) -> None:
        if dtls.state == "connecting":
            bridge.note_dtls_records(dtls)
        elif dtls.state == "connected":
            self.released.append(bridge.release_dtls(dtls))

    @property
    def dtls(self) -> Any:
        return bridge.dtls_transports(self.pc)[0]


async def _client_offers(client: RTCPeerConnection, served: Served) -> None:
    """The client offers (actpass), the server answers: the server is the DTLS client."""
    await gather_on(client, "127.0.0.1")
    await client.setLocalDescription(await client.createOffer())
    await served.pc.setRemoteDescription(client.localDescription)
    await gather_on(served.pc, "127.0.0.1")
    answer = await served.pc.createAnswer()
    served.watch()
    await served.pc.setLocalDescription(answer)
    await client.setRemoteDescription(RTCSessionDescription(served.pc.localDescription.sdp,
                                                            "answer"))


async def _server_offers(client: RTCPeerConnection, served: Served) -> Any:
    """The server offers audio and a channel; the client answers active, so the server is
    the DTLS server. Returns the server's channel (the client echoes on it)."""
    served.pc.addTransceiver("audio")
    channel = served.pc.createDataChannel("calls-dc")
    client.on("datachannel", served._on_channel)
    await gather_on(served.pc, "127.0.0.1")
    await served.pc.setLocalDescription(await served.pc.createOffer())
    served.watch()
    await client.setRemoteDescription(served.pc.localDescription)
    await gather_on(client, "127.0.0.1")
    await client.setLocalDescription(await client.createAnswer())
    await served.pc.setRemoteDescription(RTCSessionDescription(client.localDescription.sdp,
                                                               "answer"))
    return channel


async def _ping_pong(channel: Any, count: int) -> list[Any]:
    answers: list[Any] = []
    channel.on("message", answers.append)
    await until(lambda: channel.readyState == "open", "the data channel to open")
    for n in range(count):
        channel.send(f"ping {n}")
    channel.send(b"\x00" * 5000)  # larger than a record: SCTP splits it into several
    await until(lambda: len(answers) == count + 1, f"{count + 1} answers")
    return answers


async def test_released_connection_carries_the_data_channel_and_sends_close_notify() -> None:
    client, served = _client(), Served()
    channel = client.createDataChannel("calls-dc")
    try:
        await _client_offers(client, served)
        await until(lambda: served.released, "the server's DTLS to connect")
        assert served.released == [True]
        assert isinstance(bridge.dtls_connection(served.dtls), RecordLayer)
        answers = await _ping_pong(channel, 200)  # more than SCTP's first window holds
        assert answers[:200] == [f"pong {n}" for n in range(200)]
        assert answers[200] == b"\x00" * 5000
        assert bridge.dtls_connection(served.dtls).dropped == 0
        # The server closes: the client's OpenSSL reads our close_notify as the end.
        client_dtls = bridge.dtls_transports(client)[0]
        await asyncio.wait_for(served.pc.close(), 10)
        await until(lambda: client_dtls.state == "closed", "the client to see close_notify")
    finally:
        await asyncio.wait_for(client.close(), 10)
        await asyncio.wait_for(served.pc.close(), 10)


async def test_released_connection_reads_the_peers_close_notify() -> None:
    client, served = _client(), Served()
    channel = client.createDataChannel("calls-dc")
    try:
        await _client_offers(client, served)
        await _ping_pong(channel, 3)
        assert isinstance(bridge.dtls_connection(served.dtls), RecordLayer)
        await asyncio.wait_for(client.close(), 10)
        await until(lambda: served.dtls.state == "closed",
                     "the server's DTLS to close on the client's close_notify")
    finally:
        await asyncio.wait_for(client.close(), 10)
        await asyncio.wait_for(served.pc.close(), 10)


async def test_the_dtls_server_keeps_openssl_and_still_works() -> None:
    """As the DTLS server its last flight may have to be sent again: nothing is released."""
    client, served = max_bundle_pc(), Served()
    try:
        channel = await _server_offers(client, served)
        await until(lambda: served.released, "the server's DTLS to connect")
        assert served.released == [False]
        assert isinstance(bridge.dtls_connection(served.dtls), SSL.Connection)
        assert "bio_read" not in vars(bridge.dtls_connection(served.dtls))  # the wrapper is gone
        await _ping_pong(channel, 3)
    finally:
        await asyncio.wait_for(client.close(), 10)
        await asyncio.wait_for(served.pc.close(), 10)


async def test_the_setting_keeps_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bridge.RECORDS_ENV, "0")
    client, served = _client(), Served()
    channel = client.createDataChannel("calls-dc")
    try:
        await _client_offers(client, served)
        await until(lambda: served.released, "the server's DTLS to connect")
        assert served.released == [False]
        assert isinstance(bridge.dtls_connection(served.dtls), SSL.Connection)
        await _ping_pong(channel, 3)
    finally:
        await asyncio.wait_for(client.close(), 10)
        await asyncio.wait_for(served.pc.close(), 10)


# -- the record layer's rules, against a second layer with the peer's keys ----------------------

def _pair(cipher: str, client_sequence: int = 0) -> tuple[RecordLayer, RecordLayer]:
    suite = SUITES[cipher]
    client_keys, server_keys = derive_keys(suite, os.urandom(48), os.urandom(32),
                                           os.urandom(32))
    client = RecordLayer(Direction(suite, client_keys, 1), Direction(suite, server_keys, 1),
                         client_sequence, cipher)
    server = RecordLayer(Direction(suite, server_keys, 1), Direction(suite, client_keys, 1),
                         0, cipher)
    return client, server


def _records(layer: RecordLayer, *messages: bytes) -> list[bytes]:
    out = []
    for message in messages:
        layer.send(message)
        out.append(layer.bio_read(1500))
    return out


def _recv_all(layer: RecordLayer) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(layer.recv(1500))
        except SSL.WantReadError:
            return got


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256",
                                    "ECDHE-ECDSA-AES256-GCM-SHA384",
                                    "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_records_arrive_once_in_any_order_and_forgeries_do_not(cipher: str) -> None:
    client, server = _pair(cipher, client_sequence=7)
    first, second, third = _records(client, b"one", b"two", b"three")
    assert struct.unpack("!BHH", first[:5]) == (23, 0xFEFD, 1)
    assert int.from_bytes(first[5:11], "big") == 7  # continues where it was told to
    server.bio_write(third)
    server.bio_write(first)  # older, still inside the window
    server.bio_write(first)  # a replay
    forged = bytearray(second)
    forged[-1] ^= 1
    server.bio_write(bytes(forged))  # a damaged tag
    assert _recv_all(server) == [b"three", b"one"]
    assert server.dropped == 2
    server.bio_write(second)  # the genuine one still counts after its forgery failed
    assert _recv_all(server) == [b"two"]


def test_records_too_old_for_the_window_or_of_another_epoch_are_dropped() -> None:
    client, server = _pair("ECDHE-ECDSA-AES128-GCM-SHA256")
    old = _records(client, b"old")[0]
    later = _records(client, *[b"x"] * dtlsrecord.REPLAY_WINDOW)
    server.bio_write(later[-1])  # the window's top moves 64 past `old`
    server.bio_write(old)
    other_epoch = bytearray(later[0])
    other_epoch[3:5] = (2).to_bytes(2, "big")
    server.bio_write(bytes(other_epoch))
    assert _recv_all(server) == [b"x"]
    assert server.dropped == 2


def test_one_datagram_of_several_records_and_a_truncated_one() -> None:
    client, server = _pair("ECDHE-ECDSA-AES128-GCM-SHA256")
    client.send(b"a")
    client.send(b"b")
    datagram = client.bio_read(1500)  # both records in one datagram
    server.bio_write(datagram + datagram[:20])  # and a cut-off third
    assert _recv_all(server) == [b"a", b"b"]
    assert server.dropped == 1
    with pytest.raises(SSL.WantReadError):
        client.bio_read(1500)  # nothing left to send


def test_close_notify_and_fatal_alerts_end_the_connection() -> None:
    client, server = _pair("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert client.shutdown() is False  # sent, the peer's not yet seen
    server.bio_write(client.bio_read(1500))
    with pytest.raises(SSL.ZeroReturnError):
        server.recv(1500)
    with pytest.raises(SSL.Error):
        client.send(b"after close")
    client, server = _pair("ECDHE-ECDSA-AES128-GCM-SHA256")
    client._seal(dtlsrecord.ALERT, bytes((2, 40)))  # fatal handshake_failure
    server.bio_write(client.bio_read(1500))
    with pytest.raises(SSL.ZeroReturnError):
        server.recv(1500)


def test_outgoing_records_give_the_next_sequence_of_an_epoch() -> None:
    client, _server = _pair("ECDHE-ECDSA-AES128-GCM-SHA256", client_sequence=41)
    sent = OutgoingRecords()
    assert sent.next_in(1) == 0
    sent.note(b"\x16\xfe\xfd" + bytes(2) + (5).to_bytes(6, "big") + bytes(2))  # epoch 0, seq 5
    assert sent.next_in(0) == 6 and sent.next_in(1) == 0
    sent.note(_records(client, b"data")[0])  # epoch 1, seq 41
    assert sent.next_in(1) == 42
    assert sent.next_in(0) is None  # a later epoch went out


def test_prf_is_rfc_5246s_p_sha256() -> None:
    """P_SHA256 by its definition (RFC 5246 §5): A(i) = HMAC(secret, A(i-1))."""
    import hmac

    secret, label, seed = b"secret", b"test label", b"seed"
    a1 = hmac.new(secret, label + seed, "sha256").digest()
    a2 = hmac.new(secret, a1, "sha256").digest()
    expected = (hmac.new(secret, a1 + label + seed, "sha256").digest()
                + hmac.new(secret, a2 + label + seed, "sha256").digest())[:40]
    assert prf(secret, label, seed, 40, "sha256") == expected


def test_malformed_datagrams_are_dropped_without_an_exception() -> None:
    """Whatever arrives on the session's address (a stray, a truncated or damaged record,
    junk of the right first byte) is counted and dropped; the connection keeps working."""
    import random

    client, server = _pair("ECDHE-ECDSA-AES128-GCM-SHA256")
    genuine = _records(client, b"still here")[0]
    chance = random.Random(7)
    junk = [b"", b"\x17", genuine[:12], genuine[:13], genuine[:-1], b"\x17\xfe" + genuine,
            b"\x17\xfe\xfd" + bytes(8) + b"\xff\xff", b"\x15\xfe\xfd\x00\x01" + bytes(8)]
    junk += [bytes([chance.randrange(20, 64)]) + chance.randbytes(chance.randrange(0, 200))
             for _ in range(500)]
    for datagram in junk:
        server.bio_write(datagram)
    assert _recv_all(server) == []
    server.bio_write(genuine)
    assert _recv_all(server) == [b"still here"]
