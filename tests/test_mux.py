"""The single-port demultiplexer (RFC 7983 + RFC 8445 §7.3), exercised with real ICE agents."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aioice import Connection, stun

from callsctl_sfu.rtc import fastpath
from callsctl_sfu.rtc.mux import UdpMux
from tests.support.ice import connect_pairs


async def open_mux() -> tuple[UdpMux, int]:
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    mux.advertised = ("127.0.0.1", port)
    return mux, port


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    return sock


async def recv(sock: socket.socket) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, sock.recv, 2048)


async def test_bare_binding_is_answered_with_the_mapped_address():
    mux, port = await open_mux()
    try:
        client = udp_client()
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        client.sendto(bytes(request), ("127.0.0.1", port))
        response = stun.parse_message(await recv(client))
        assert response.message_class == stun.Class.RESPONSE
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == client.getsockname()
        assert mux.stats.bare_binding_answered == 1
        client.close()
    finally:
        mux.transport.close()


async def test_a_busy_loop_reads_a_whole_batch_per_wake_up():
    """While the loop was busy 40 requests queued: they are read in one pass, all answered.

    asyncio alone reads one datagram per loop pass; a server whose loop is busy
    (a join storm) then falls behind its socket and answers ICE consent too late.
    """
    mux, port = await open_mux()
    wake_ups = 0
    read = mux.datagram_received

    def counting(data: bytes, addr: tuple[str, int]) -> None:
        nonlocal wake_ups
        wake_ups += 1
        read(data, addr)

    mux.datagram_received = counting  # type: ignore[method-assign]
    client = udp_client()
    try:
        requests = [stun.Message(stun.Method.BINDING, stun.Class.REQUEST) for _ in range(40)]
        for request in requests:  # the loop runs nothing while these are sent
            client.sendto(bytes(request), ("127.0.0.1", port))
        answered = set()
        for _ in requests:
            answered.add(stun.parse_message(await recv(client)).transaction_id)
        assert answered == {r.transaction_id for r in requests}
        assert mux.stats.bare_binding_answered == 40
        assert wake_ups <= 2, wake_ups
    finally:
        client.close()
        mux.transport.close()


async def test_two_ice_sessions_share_one_port_and_data_reaches_the_right_one():
    mux, port = await open_mux()
    servers: list[Connection] = []
    clients: list[Connection] = []
    try:
        await connect_pairs(mux, 2, servers, clients, timeout=10)
        assert all(s.local_candidates[0].port == port for s in servers)
        # Two clients, two learned addresses, one socket.
        assert len(mux.by_addr) >= 2 and len(mux.by_ufrag) == 2
        await clients[0].send(b"\x17to-zero")  # DTLS-range first byte
        await clients[1].send(b"\x17to-one")
        got0 = await asyncio.wait_for(servers[0].recv(), 5)
        got1 = await asyncio.wait_for(servers[1].recv(), 5)
        assert (got0, got1) == (b"\x17to-zero", b"\x17to-one")
    finally:
        for conn in servers + clients:
            await conn.close()
        assert mux.by_ufrag == {} and mux.by_addr == {}
        mux.transport.close()


async def test_wrong_password_is_refused_and_address_not_learned():
    mux, port = await open_mux()
    server = Connection(ice_controlling=False, use_ipv6=False)
    try:
        mux.attach(server)
        await server.gather_candidates()
        client = udp_client()
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{server.local_username}:attacker"
        request.attributes["PRIORITY"] = 1
        request.attributes["ICE-CONTROLLING"] = 1
        request.add_message_integrity(b"not-the-password")
        client.sendto(bytes(request), ("127.0.0.1", port))
        response = stun.parse_message(await recv(client))
        assert response.message_class == stun.Class.ERROR
        assert response.attributes["ERROR-CODE"][0] == 401
        assert mux.by_addr == {} and mux.stats.auth_failed == 1
        # Non-STUN bytes from a stranger are dropped, not delivered to anyone.
        client.sendto(b"\x80\x6f" + b"\x00" * 30, ("127.0.0.1", port))
        client.sendto(b"\x16\xfe\xfd" + b"\x00" * 30, ("127.0.0.1", port))
        await asyncio.sleep(0.2)
        assert mux.stats.unknown_dropped == 2
        assert server._queue.empty()
        client.close()
    finally:
        await server.close()
        mux.transport.close()


class BrokenIngress:
    """A C ingress that fails on every read (a bug, or memory exhausted)."""

    running = False  # read by the event loop (no reader thread)

    def drain(self, *_args: object) -> tuple[object, ...]:
        raise RuntimeError("boom")

    def add(self, *_args: object) -> None:
        pass

    def remove(self, *_args: object) -> None:
        pass


class FailedThread:
    """The real C ingress whose reader thread reports that a drain raised."""

    def __init__(self, real: object) -> None:
        self.real = real

    @property
    def failure(self) -> BaseException:
        return RuntimeError("boom")

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.mark.parametrize("reader", ["asyncio", "thread"])
async def test_a_failing_c_ingress_costs_speed_never_media(caplog, monkeypatch, reader):
    """The socket is then read in Python: every request is still answered, one error line.

    asyncio: the drain called from the event loop raises. thread: the reader thread
    (rtc/_ingress.c) hands a failure up; it must be stopped and the loop read instead.
    """
    if reader == "asyncio":
        monkeypatch.setattr(fastpath, "INGRESS_THREAD", False)
    elif not fastpath.INGRESS_THREAD:
        pytest.skip("no reader thread (CALLSCTL_INGRESS_THREAD=0 or the Python engine)")
    mux, port = await open_mux()
    try:
        await asyncio.sleep(0)  # the C reader takes the socket over after connection_made
        if mux.ingress is None:
            pytest.skip("the Python engine runs: there is no C ingress to fail")
        real = mux.ingress
        assert real.running == (reader == "thread")
        mux.ingress = BrokenIngress() if reader == "asyncio" else FailedThread(real)
        client = udp_client()
        for _ in range(3):
            request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            client.sendto(bytes(request), ("127.0.0.1", port))
            response = stun.parse_message(await recv(client))
            assert response.transaction_id == request.transaction_id
        assert mux.ingress is None and mux.stats.bare_binding_answered == 3
        assert not real.running
        failures = [r for r in caplog.records if "the C ingress failed" in r.getMessage()]
        assert len(failures) == 1 and "RuntimeError: boom" in failures[0].getMessage()
        client.close()
    finally:
        mux.transport.close()
