"""ICE consent freshness (RFC 7675) from the mux's one scheduler, with real ICE agents.

Server-side aioice connections are attached to a real UdpMux on loopback, as
the server attaches its sessions; clients are ordinary aioice/aiortc agents.
The scheduler's interval and timeout are injected (tenths of seconds instead
of 5 s and 30 s) so a consent can be watched lapsing in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from aioice import Connection, stun
from aiortc import RTCSessionDescription

from callsctl_sfu.client.loadgen import gather_on
from callsctl_sfu.config import ServeConfig
from callsctl_sfu.rtc import aiortc_bridge
from callsctl_sfu.rtc.connectivity import Connectivity
from callsctl_sfu.rtc.consent import ConsentScheduler
from callsctl_sfu.rtc.icetcp import Deframer, frame, tcp_candidate_priority
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.muxproto import TcpStunProtocol
from tests.support.helpers import ipv6_loopback
from tests.support.ice import connect_agents, connect_pairs
from tests.support.peers import max_bundle_pc

pytestmark = pytest.mark.timeout(90)


async def open_mux(scheduler: ConsentScheduler) -> UdpMux:
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    mux.advertised = ("127.0.0.1", transport.get_extra_info("sockname")[1])
    mux.consent = scheduler
    return mux


async def until(condition: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


def deaf(client: Connection) -> None:
    """The client no longer answers any STUN request (its own checks go on)."""
    client.request_received = lambda *args, **kwargs: None  # type: ignore[method-assign]


async def close_all(mux: UdpMux, connections: list[Connection]) -> None:
    for connection in connections:
        with contextlib.suppress(Exception):
            await connection.close()
    mux.transport.close()


async def test_answered_checks_keep_consent_and_replace_aioices_own_task() -> None:
    mux = await open_mux(ConsentScheduler(interval=0.2, timeout=1.0, tick=0.02))
    servers, clients = await connect_pairs(mux, 1)
    server = servers[0]
    try:
        assert await until(lambda: mux.consent.stats.checks_answered >= 8, 10), \
            mux.consent.stats
        # Several timeouts later the session still has consent and carries data.
        assert aiortc_bridge.nominated_pair(server) is not None
        await clients[0].send(b"\x17still-here")
        assert await asyncio.wait_for(server.recv(), 5) == b"\x17still-here"
        assert mux.consent.stats.expired == 0 and mux.consent.stats.sessions == 1
        # aioice's per-connection consent task handed over and ended at once.
        task = aiortc_bridge.consent_task(server)
        assert task is not None and task.done()
        round_trip = mux.consent.round_trip(server)
        assert round_trip is not None and round_trip.samples >= 1
        assert round_trip.last_s is not None and round_trip.last_s >= 0
        # Answers matched: nothing lingers in the path's transaction table.
        primary = aiortc_bridge.nominated_pair(server).protocol
        assert len(primary.transactions) <= 2
    finally:
        await close_all(mux, servers + clients)
    assert mux.consent.stats.sessions == 0


async def test_a_peer_that_stops_answering_loses_consent_though_it_still_sends() -> None:
    mux = await open_mux(ConsentScheduler(interval=0.2, timeout=1.5, tick=0.02))
    servers, clients = await connect_pairs(mux, 2)
    silent, fine = clients
    received: list[bytes] = []
    try:
        assert await until(lambda: mux.consent.stats.checks_answered >= 4, 10)
        deaf(silent)

        async def keep_sending() -> None:  # media from the peer grants no consent
            for _ in range(200):
                await silent.send(b"\x17media")
                await asyncio.sleep(0.05)

        async def keep_reading() -> None:
            while True:
                data = await servers[0].recv()
                received.append(data)

        sender = asyncio.create_task(keep_sending())
        reader = asyncio.create_task(keep_reading())
        try:
            lost = await until(lambda: aiortc_bridge.nominated_pair(servers[0]) is None, 15)
        finally:
            sender.cancel()
            reader.cancel()
            await asyncio.gather(sender, reader, return_exceptions=True)
        assert lost, mux.consent.stats
        assert received, "the deaf peer's media reached the server until consent ended"
        assert mux.consent.stats.expired == 1
        assert servers[0].local_username not in mux.by_ufrag
        # The other session, whose peer answers, keeps consent and its route.
        assert aiortc_bridge.nominated_pair(servers[1]) is not None
        assert servers[1].local_username in mux.by_ufrag
        await fine.send(b"\x17other")
        assert await asyncio.wait_for(servers[1].recv(), 5) == b"\x17other"
    finally:
        await close_all(mux, servers + clients)


async def test_checks_are_spread_over_the_interval_not_sent_in_bursts() -> None:
    steps = itertools.cycle([i / 8 for i in range(8)])
    interval = 1.0
    mux = await open_mux(ConsentScheduler(interval=interval, timeout=30, tick=0.02,
                                          rng=lambda: next(steps)))
    sent: dict[str, list[float]] = {}
    loop = asyncio.get_running_loop()
    servers, clients = await connect_pairs(mux, 8)
    try:
        for server in servers:
            protocol = aiortc_bridge.nominated_pair(server).protocol
            original = protocol.send_stun

            def recording(message: stun.Message, addr: Any, original: Any = original,
                          name: str = server.local_username) -> None:
                if message.message_class == stun.Class.REQUEST:
                    sent.setdefault(name, []).append(loop.time())
                original(message, addr)

            protocol.send_stun = recording
        assert await until(lambda: len(sent) == 8 and all(len(t) >= 3 for t in sent.values()),
                           15), sent
        # First checks fall in several distinct ticks, not one burst ...
        slots = {round(times[0] / 0.02) for times in sent.values()}
        assert len(slots) >= 3, sorted(times[0] for times in sent.values())
        # ... and no session is checked more often than RFC 7675's 0.8 x interval.
        for times in sent.values():
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= 0.75 * interval, gaps
    finally:
        await close_all(mux, servers + clients)


async def test_lost_consent_fails_the_server_side_peer_connection() -> None:
    """What ends the session: aiortc reports the server's peer connection failed/closed."""
    mux = await open_mux(ConsentScheduler(interval=0.2, timeout=1.5, tick=0.02))
    client, server = max_bundle_pc(), max_bundle_pc()
    try:
        client.addTransceiver("audio")
        client.createDataChannel("calls-dc")
        await gather_on(client, "127.0.0.1")
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        for transport in aiortc_bridge.ice_transports(server):
            mux.attach(aiortc_bridge.ice_connection(transport))
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(RTCSessionDescription(server.localDescription.sdp,
                                                                "answer"))
        assert await until(lambda: server.connectionState == "connected", 15)
        assert await until(lambda: mux.consent.stats.checks_answered >= 2, 10)
        for transport in aiortc_bridge.ice_transports(client):
            deaf(aiortc_bridge.ice_connection(transport))
        assert await until(lambda: server.connectionState in ("failed", "closed"), 15), \
            server.connectionState
        assert mux.consent.stats.expired == 1
    finally:
        await client.close()
        await server.close()
        mux.transport.close()


async def test_consent_over_ice_tcp_is_checked_on_the_stream_and_can_lapse() -> None:
    """The checks follow the selected pair onto an ICE-TCP connection (RFC 6544 framing)."""
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    mux.consent = ConsentScheduler(interval=0.2, timeout=1.5, tick=0.02)
    await Connectivity.open(ServeConfig(bind="127.0.0.1", udp_port=port, stun_server=""),
                            mux, port)
    server = Connection(ice_controlling=False, use_ipv6=False)
    client_password = b"client-password-123456"
    answering = True
    checks_seen = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def client() -> None:  # a minimal RFC 6544 active agent that answers checks
        nonlocal checks_seen
        deframer = Deframer()
        while data := await reader.read(4096):
            for packet in deframer.feed(data):
                message = stun.parse_message(packet)
                if message.message_class != stun.Class.REQUEST:
                    continue
                checks_seen += 1
                if not answering:
                    continue
                reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                     transaction_id=message.transaction_id)
                reply.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", port)
                reply.add_message_integrity(client_password)
                writer.write(frame(bytes(reply)))

    agent = asyncio.create_task(client())
    try:
        mux.attach(server)
        await server.gather_candidates()
        server.remote_username, server.remote_password = "cli", client_password.decode()
        connecting = asyncio.create_task(server.connect())
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{server.local_username}:cli"
        request.attributes["PRIORITY"] = tcp_candidate_priority("prflx", "active")
        request.attributes["ICE-CONTROLLING"] = 7
        request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(server.local_password.encode())
        writer.write(frame(bytes(request)))
        await asyncio.wait_for(connecting, 10)
        assert isinstance(aiortc_bridge.nominated_pair(server).protocol, TcpStunProtocol)
        assert await until(lambda: mux.consent.stats.checks_answered >= 3, 10), \
            mux.consent.stats
        answering = False
        assert await until(lambda: aiortc_bridge.nominated_pair(server) is None, 15)
        assert mux.consent.stats.expired == 1 and checks_seen >= 6
    finally:
        agent.cancel()
        writer.close()
        await asyncio.gather(agent, return_exceptions=True)
        await server.close()
        if mux.tcp is not None:
            mux.tcp.close()
        mux.transport.close()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_consent_over_ipv6_uses_the_ipv6_socket_and_can_lapse(monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    mux.consent = ConsentScheduler(interval=0.2, timeout=1.5, tick=0.02)
    config = ServeConfig(bind="127.0.0.1", udp_port=port, stun_server="", enable_ipv6=True)
    connectivity = await Connectivity.open(config, mux, port)
    server = Connection(ice_controlling=False, use_ipv6=False)
    client = Connection(ice_controlling=True, use_ipv4=False, use_ipv6=True)
    try:
        mux.attach(server)
        await server.gather_candidates()
        # A client whose only address is ::1 (aioice skips loopback when gathering).
        monkeypatch.setattr("aioice.ice.get_host_addresses", lambda **_kw: ["::1"])
        await client.gather_candidates()
        await connect_agents(server, client, timeout=10,
                             accept=lambda c: c.transport == "udp" and c.host == "::1")
        assert aiortc_bridge.nominated_pair(server).remote_addr[0] == "::1"
        assert await until(lambda: mux.consent.stats.checks_answered >= 3, 10), \
            mux.consent.stats
        deaf(client)
        assert await until(lambda: aiortc_bridge.nominated_pair(server) is None, 15)
        assert mux.consent.stats.expired == 1
    finally:
        await client.close()
        await server.close()
        connectivity.close()
        transport.close()
