"""Unit tests of the connectivity settings and of ICE-TCP, in process and on loopback only.

TURN REST credentials are compared with a value computed outside Python
(`printf '%s' 1700086400:alice | openssl dgst -sha1 -hmac north-secret -binary | base64`).
ICE-TCP is driven by a hand-written RFC 6544 active client over a real TCP
connection against an aioice agent attached to the server's muxes, since
neither aiortc nor aioice can be an ICE-TCP client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import socket
import time

import httpx
import pytest
from aioice import Connection, stun

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.config import ConfigError, ServeConfig, load_config
from callsctl_sfu.iceconfig import (
    IceSettingError,
    PortOverride,
    client_ice_servers,
    parse_ice_servers,
    parse_port_override,
    turn_rest_credentials,
)
from callsctl_sfu.rtc import aiortc_bridge, icetcp
from callsctl_sfu.rtc.connectivity import Connectivity, ConnectivityError
from callsctl_sfu.rtc.icetcp import Deframer, frame, tcp_candidate_priority
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.muxproto import MuxedStunProtocol, TcpStunProtocol
from callsctl_sfu.rtc.publicaddr import discover_public_address
from tests.support.helpers import free_port, free_udp_tcp_port, ipv6_loopback, run_cli
from tests.support.ice import connect_agents

# -- TURN REST credentials ------------------------------------------------------------


def test_turn_credentials_match_an_independently_computed_hmac_sha1() -> None:
    username, password, expiry = turn_rest_credentials("north-secret", "alice", 86400,
                                                       now=1_700_000_000)
    assert (username, expiry) == ("1700086400:alice", 1_700_086_400)
    assert password == "Nni2GlD6PVaoCP0Cx2DhLKDWjyY="


def test_client_ice_servers_group_urls_and_attach_credentials_to_turn_only() -> None:
    config = ServeConfig(ice_servers="stun:stun.example.org:3478, turn:turn.example.org:3478"
                                     "?transport=udp,turns:turn.example.org:5349",
                         turn_static_auth_secret="north-secret",
                         turn_credentials_expiration_minutes=1440)
    servers = client_ice_servers(config, "alice", now=1_700_000_000)
    assert servers == [
        {"urls": ["stun:stun.example.org:3478"]},
        {"urls": ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"],
         "username": "1700086400:alice", "credential": "Nni2GlD6PVaoCP0Cx2DhLKDWjyY="},
    ]
    # No secret: TURN URLs are handed out without credentials; nothing configured: [].
    assert client_ice_servers(ServeConfig(ice_servers="turn:t.example:3478"), "bob") == \
        [{"urls": ["turn:t.example:3478"]}]
    assert client_ice_servers(ServeConfig(), "bob") == []


def test_json_ice_servers_keep_static_credentials() -> None:
    config = ServeConfig(ice_servers='[{"urls": "turn:a.example:3478", "username": "u", '
                                     '"credential": "p"}, {"urls": ["turn:b.example"]}]',
                         turn_static_auth_secret="s")
    first, second = client_ice_servers(config, "carol", now=100)
    assert first == {"urls": ["turn:a.example:3478"], "username": "u", "credential": "p"}
    assert second["username"] == f"{100 + 1440 * 60}:carol"


@pytest.mark.parametrize(("text", "message"), [
    ("http://turn.example", "must start with stun:, stuns:, turn: or turns:"),
    ("turn://turn.example", "without //"),
    ("stun:stun.example?transport=udp", "STUN URIs take no ?parameters"),
    ("turn:turn.example?transport=sctp", "?transport=udp or tcp"),
    ("turn:turn.example:70000", "port must be a number from 1 to 65535"),
    ('[{"url": "turn:x"}]', "entry 0 must be an object with \"urls\""),
    ("[", "not valid JSON"),
])
def test_bad_ice_servers_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(IceSettingError, match=None) as info:
        parse_ice_servers(text)
    assert message in str(info.value)


def test_turn_expiration_is_bounded_to_one_week() -> None:
    assert load_config(env={}, overrides={"turn_credentials_expiration_minutes": "10080"}) \
        .turn_credentials_expiration_minutes == 10080
    for bad in ("0", "10081"):
        with pytest.raises(ConfigError, match="from 1 to 10080"):
            load_config(env={}, overrides={"turn_credentials_expiration_minutes": bad})


# -- ice_host_port_override ---------------------------------------------------------------


def test_port_override_single_port_and_map() -> None:
    assert parse_port_override("") == PortOverride()
    assert not parse_port_override("  ")
    assert parse_port_override("9443").port_for(["10.1.1.1"]) == 9443
    table = parse_port_override("10.0.0.1/8443, 10.0.0.2/8444,fd00::5/8445")
    assert table.port_for(["192.0.2.9", "10.0.0.2"]) == 8444
    assert table.port_for(["fd00:0::5"]) == 8445  # compared as addresses, not strings
    assert table.port_for(["192.0.2.9"]) is None


@pytest.mark.parametrize(("text", "names"), [
    ("10.0.0.1/8443,10.0.0.2", "entry '10.0.0.2' has no local IP"),
    ("10.0.0.1/8443,host-b/8444", "entry 'host-b/8444': 'host-b' is not an IP address"),
    ("10.0.0.1/0", "entry '10.0.0.1/0': '0' is not a port"),
    ("10.0.0.1/8443,10.0.0.1/8444", "entry '10.0.0.1/8444': 10.0.0.1 appears more than once"),
    ("10.0.0.1/8443,", "empty entry"),
    ("84x3", "entry '84x3': '84x3' is not a port"),
])
def test_bad_port_override_maps_name_the_bad_entry(text: str, names: str) -> None:
    with pytest.raises(IceSettingError) as info:
        parse_port_override(text)
    assert names in str(info.value)
    with pytest.raises(ConfigError) as config_info:
        load_config(env={"CALLSCTL_ICE_HOST_PORT_OVERRIDE": text})
    message = str(config_info.value)
    assert message.startswith("invalid ice_host_port_override=") and names in message
    assert "CALLSCTL_ICE_HOST_PORT_OVERRIDE" in message and "\n" not in message


def test_serve_rejects_a_bad_map_in_one_line_without_starting() -> None:
    proc = run_cli("serve", "--ice-host-port-override", "10.0.0.1/8443,10.0.0.2/x",
                   "--api-port", "0", "--udp-port", "0", timeout=30)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "entry '10.0.0.2/x'" in proc.stderr and "Traceback" not in proc.stderr


# -- RFC 4571 framing and RFC 6544 priorities -------------------------------------------


def test_rfc4571_frames_survive_any_split() -> None:
    packets = [b"\x00\x01stun", b"", b"\x80" + bytes(1200), b"\x17dtls"]
    stream = b"".join(frame(p) for p in packets)
    assert stream[:2] == b"\x00\x06"
    for size in (1, 2, 3, 7, 500, len(stream)):
        deframer = Deframer()
        got: list[bytes] = []
        for start in range(0, len(stream), size):
            got += deframer.feed(stream[start:start + size])
        assert got == packets and deframer.pending == 0
    with pytest.raises(ValueError):
        frame(bytes(65536))


def test_passive_tcp_candidates_rank_below_udp_host() -> None:
    # RFC 6544 §4.2: host passive = type 126, local preference 2^13 * 4 + 8191.
    assert tcp_candidate_priority("host") == (126 << 24) + ((4 << 13) + 8191 << 8) + 255
    assert tcp_candidate_priority("srflx") == (100 << 24) + ((2 << 13) + 8191 << 8) + 255
    udp_host = (126 << 24) + (65535 << 8) + 255
    assert tcp_candidate_priority("host") < udp_host


# -- ICE-TCP against a real aioice agent ------------------------------------------------------


async def open_muxes() -> tuple[UdpMux, int]:
    """UDP mux + ICE-TCP listener on 127.0.0.1, like `serve` with --stun-server ''."""
    loop = asyncio.get_running_loop()
    # A port free for TCP too: Connectivity opens the ICE-TCP listener on the same number.
    transport, mux = await loop.create_datagram_endpoint(
        UdpMux, local_addr=("127.0.0.1", free_udp_tcp_port()))
    port = transport.get_extra_info("sockname")[1]
    config = ServeConfig(bind="127.0.0.1", udp_port=port, stun_server="")
    await Connectivity.open(config, mux, port)
    return mux, port


def close_muxes(mux: UdpMux) -> None:
    if mux.tcp is not None:
        mux.tcp.close()
    mux.transport.close()


class TcpClient:
    """A minimal RFC 6544 active agent: framed checks out, framed answers back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.deframer = Deframer()
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int) -> TcpClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def _read(self) -> None:
        while data := await self.reader.read(4096):
            for packet in self.deframer.feed(data):
                self.frames.put_nowait(packet)
        self.frames.put_nowait(b"")  # EOF

    def send(self, packet: bytes) -> None:
        self.writer.write(frame(packet))

    async def next(self, timeout: float = 3) -> bytes:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self.task


def check(server: Connection, password: str, *, nominate: bool = False) -> stun.Message:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{server.local_username}:cli"
    request.attributes["PRIORITY"] = tcp_candidate_priority("prflx", "active")
    request.attributes["ICE-CONTROLLING"] = 7
    if nominate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(password.encode())
    request.add_fingerprint()
    return request


async def test_bare_binding_over_tcp_is_answered_in_a_frame_and_junk_is_refused() -> None:
    mux, port = await open_muxes()
    try:
        client = await TcpClient.connect(port)
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        client.send(bytes(request))
        response = stun.parse_message(await client.next())
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == \
            client.writer.get_extra_info("sockname")[:2]
        assert mux.tcp.stats.bare_binding_answered == 1
        await client.close()
        # A first frame that is not STUN (here: DTLS) closes the connection.
        junk = await TcpClient.connect(port)
        junk.send(b"\x16\xfe\xfd" + bytes(20))
        assert await junk.next() == b""
        assert mux.tcp.stats.rejected == 1
        await junk.close()
    finally:
        close_muxes(mux)


async def test_wrong_password_over_tcp_gets_401_and_is_not_bound() -> None:
    mux, port = await open_muxes()
    server = Connection(ice_controlling=False, use_ipv6=False)
    try:
        mux.attach(server)
        await server.gather_candidates()
        client = await TcpClient.connect(port)
        client.send(bytes(check(server, "not-the-password")))
        response = stun.parse_message(await client.next())
        assert response.message_class == stun.Class.ERROR
        assert response.attributes["ERROR-CODE"][0] == 401
        assert await client.next() == b""  # and the server hung up
        tcp_proto = mux.by_ufrag[server.local_username].siblings["tcp4"]
        assert isinstance(tcp_proto, TcpStunProtocol) and tcp_proto.streams == {}
        assert mux.tcp.stats.auth_failed == 1
        await client.close()
    finally:
        await server.close()
        close_muxes(mux)


async def test_unbound_tcp_connections_time_out(monkeypatch) -> None:
    monkeypatch.setattr(icetcp, "UNBOUND_TIMEOUT", 0.2)
    mux, port = await open_muxes()
    try:
        client = await TcpClient.connect(port)
        assert await client.next(timeout=3) == b""
        assert mux.tcp.stats.timed_out == 1
        await client.close()
    finally:
        close_muxes(mux)


async def test_ice_over_tcp_connects_carries_data_both_ways_and_takes_the_fast_path() -> None:
    mux, port = await open_muxes()
    server = Connection(ice_controlling=False, use_ipv6=False)
    client: TcpClient | None = None
    try:
        mux.attach(server)
        await server.gather_candidates()
        kinds = [(c.transport, c.type, c.tcptype, c.port) for c in server.local_candidates]
        assert kinds == [("udp", "host", None, port), ("tcp", "host", "passive", port)]
        server.remote_username, server.remote_password = "cli", "client-password-123456"
        connecting = asyncio.create_task(server.connect())

        client = await TcpClient.connect(port)
        client.send(bytes(check(server, server.local_password, nominate=True)))
        answered = triggered = False
        while not (answered and triggered):
            message = stun.parse_message(await client.next())
            if message.message_class == stun.Class.RESPONSE:
                answered = True
                assert message.attributes["XOR-MAPPED-ADDRESS"] == \
                    client.writer.get_extra_info("sockname")[:2]
            elif message.message_class == stun.Class.REQUEST:  # the server's triggered check
                assert message.attributes["USERNAME"] == f"cli:{server.local_username}"
                assert message.check_message_integrity(b"client-password-123456")
                reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                     transaction_id=message.transaction_id)
                reply.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", port)
                reply.add_message_integrity(b"client-password-123456")
                reply.add_fingerprint()
                client.send(bytes(reply))
                triggered = True
        await asyncio.wait_for(connecting, 5)

        pair = aiortc_bridge.nominated_pair(server)
        assert (pair.local_candidate.transport, pair.local_candidate.tcptype) == ("tcp", "passive")
        remote = pair.remote_candidate
        assert (remote.transport, remote.type, remote.tcptype) == ("tcp", "prflx", "active")
        assert isinstance(pair.protocol, TcpStunProtocol)
        assert mux.by_addr == {}  # nothing learned for UDP

        # DTLS-range data reaches the agent; SRTP-range data the session's fast path.
        client.send(b"\x17dtls-over-tcp")
        assert await asyncio.wait_for(server.recv(), 3) == b"\x17dtls-over-tcp"
        primary = mux.by_ufrag[server.local_username]
        assert isinstance(primary, MuxedStunProtocol)
        fast: list[bytes] = []
        primary.fast_rx = fast.append
        before = primary.last_rx
        client.send(b"\x80\x6f" + bytes(30))
        for _ in range(50):
            if fast:
                break
            await asyncio.sleep(0.02)
        assert fast == [b"\x80\x6f" + bytes(30)] and primary.last_rx > before
        # The media path sends through the pair's protocol: one frame on the stream.
        pair.protocol.send_datagram(b"\x80\x00srtp", pair.remote_addr)
        await server.send(b"\x17from-server")
        assert [await client.next(), await client.next()] == [b"\x80\x00srtp",
                                                              b"\x17from-server"]

        # The client hangs up: the selected path is gone and the agent says so.
        await client.close()
        client = None
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(server.recv(), 3)
    finally:
        if client is not None:
            await client.close()
        await server.close()
        assert mux.by_ufrag == {}
        close_muxes(mux)


# -- STUN discovery ---------------------------------------------------------------------------


class FakeStun(asyncio.DatagramProtocol):
    """Answers every Binding Request as a STUN server behind which we look like `mapped`."""

    def __init__(self, mapped: tuple[str, int] | None) -> None:
        self.mapped = mapped
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        if self.mapped is None:
            return  # a silent (blocked) server
        request = stun.parse_message(data)
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = self.mapped
        self.transport.sendto(bytes(response), addr)


async def fake_stun(mapped: tuple[str, int] | None) -> tuple[FakeStun, int]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: FakeStun(mapped), local_addr=("127.0.0.1", 0))
    return proto, transport.get_extra_info("sockname")[1]


async def test_stun_discovery_behind_nat_advertises_host_and_srflx() -> None:
    stun_server, stun_port = await fake_stun(("203.0.113.7", 40000))
    loop = asyncio.get_running_loop()
    # A port free for TCP too: Connectivity opens the ICE-TCP listener on the same number.
    transport, mux = await loop.create_datagram_endpoint(
        UdpMux, local_addr=("127.0.0.1", free_udp_tcp_port()))
    port = transport.get_extra_info("sockname")[1]
    config = ServeConfig(bind="127.0.0.1", udp_port=port,
                         stun_server=f"127.0.0.1:{stun_port}", ice_host_port_override="9000")
    connectivity = await Connectivity.open(config, mux, port)
    try:
        info = connectivity.info()
        # The public address is advertised (with the override port, not the mapped one),
        # the local one stays as a host candidate for clients on the same network.
        assert (info["host"], info["udp_port"], info["tcp_port"], info["source"]) == \
            ("203.0.113.7", 9000, 9000, "stun")
        assert info["candidates"] == [
            f"udp host 127.0.0.1:{port}", "udp srflx 203.0.113.7:9000",
            f"tcp host 127.0.0.1:{port}", "tcp srflx 203.0.113.7:9000"]
        assert info["stun"]["address"] == "203.0.113.7:40000"
        server = Connection(ice_controlling=False, use_ipv6=False)
        mux.attach(server)
        await server.gather_candidates()
        srflx = [c for c in server.local_candidates if c.type == "srflx"]
        assert [(c.related_address, c.related_port) for c in srflx] == \
            [("127.0.0.1", port), ("127.0.0.1", port)]
        assert len(aiortc_bridge.protocols(server)) == 2  # one per socket, none for the srflx ones
        await server.close()
    finally:
        connectivity.close()
        transport.close()


async def test_silent_stun_server_costs_at_most_the_timeout() -> None:
    silent, stun_port = await fake_stun(None)
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    try:
        started = loop.time()
        result = await discover_public_address(mux, "127.0.0.1", stun_port, timeout=0.8)
        assert result.address is None and "no answer within 0.8 s" in result.error
        assert loop.time() - started < 1.5
        assert silent.requests >= 2  # retransmitted (RFC 8489 §6.2.1)
        assert mux.stun_waiters == {}
    finally:
        transport.close()


# -- IPv6 ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_ipv6_candidates_and_a_session_over_ipv6(monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    # A port free for TCP too: Connectivity opens the ICE-TCP listener on the same number.
    transport, mux = await loop.create_datagram_endpoint(
        UdpMux, local_addr=("127.0.0.1", free_udp_tcp_port()))
    port = transport.get_extra_info("sockname")[1]
    config = ServeConfig(bind="127.0.0.1", udp_port=port, stun_server="", enable_ipv6=True)
    connectivity = await Connectivity.open(config, mux, port)
    server = Connection(ice_controlling=False, use_ipv6=False)
    client = Connection(ice_controlling=True, use_ipv4=False, use_ipv6=True)
    try:
        assert connectivity.info()["candidates"] == [
            f"udp host 127.0.0.1:{port}", f"tcp host 127.0.0.1:{port}",
            f"udp host [::1]:{port}", f"tcp host [::1]:{port}"]
        # The same port number answers a bare Binding over IPv6, UDP and TCP.
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.settimeout(2)
            probe.sendto(bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)),
                         ("::1", port))
            answer = stun.parse_message(await loop.run_in_executor(None, probe.recv, 2048))
            assert answer.attributes["XOR-MAPPED-ADDRESS"][0] == "::1"
        mux.attach(server)
        await server.gather_candidates()
        # A client whose only address is ::1 (aioice skips loopback when gathering).
        monkeypatch.setattr("aioice.ice.get_host_addresses", lambda **_kw: ["::1"])
        await client.gather_candidates()
        await connect_agents(server, client, timeout=10, accept=lambda c: c.transport == "udp")
        pair = aiortc_bridge.nominated_pair(server)
        assert pair.local_candidate.host == "::1" and pair.remote_addr[0] == "::1"
        primary = mux.by_ufrag[server.local_username]
        fast: list[bytes] = []
        primary.fast_rx = fast.append
        await client.send(b"\x80\x6f" + bytes(20))
        await client.send(b"\x17over-ipv6")
        assert await asyncio.wait_for(server.recv(), 3) == b"\x17over-ipv6"
        assert fast == [b"\x80\x6f" + bytes(20)]
        pair.protocol.send_datagram(b"\x17back", pair.remote_addr)
        assert await asyncio.wait_for(client.recv(), 3) == b"\x17back"
    finally:
        await client.close()
        await server.close()
        connectivity.close()
        transport.close()


# -- delivery to clients ------------------------------------------------------------------------


async def test_joined_and_turn_credentials_endpoint_hand_out_the_same_servers(
        serve_factory) -> None:
    server = serve_factory("--stun-server", "", "--ice-servers",
                           "stun:127.0.0.1:3478,turn:127.0.0.1:3478?transport=udp",
                           "--turn-static-auth-secret", "s3cret",
                           "--turn-credentials-expiration-minutes", "90")
    person = Participant(server.ws_url, server.token("ice-call", "dana"), "ice-call", "Dana")
    try:
        before = int(time.time())
        await person.join()
        stun_entry, turn_entry = person.joined["ice_servers"]
        assert stun_entry == {"urls": ["stun:127.0.0.1:3478"]}
        assert turn_entry["urls"] == ["turn:127.0.0.1:3478?transport=udp"]
        expiry, user = turn_entry["username"].split(":", 1)
        assert user == "dana" and before + 90 * 60 <= int(expiry) <= int(time.time()) + 90 * 60
        expected = base64.b64encode(hmac.new(b"s3cret", turn_entry["username"].encode(),
                                             hashlib.sha1).digest()).decode()
        assert turn_entry["credential"] == expected
        async with httpx.AsyncClient(base_url=server.api_url, timeout=5) as http:
            token = server.token("ice-call", "dana")
            by_query = (await http.get(f"/turn-credentials?token={token}")).json()
            by_header = (await http.get("/turn-credentials",
                                        headers={"Authorization": f"Bearer {token}"})).json()
            assert [e["urls"] for e in by_query] == [e["urls"] for e in by_header] == \
                [["stun:127.0.0.1:3478"], ["turn:127.0.0.1:3478?transport=udp"]]
            assert by_query[1]["username"].endswith(":dana")
            for headers, url in (({}, "/turn-credentials"),
                                 ({}, "/turn-credentials?token=forged"),
                                 ({"Authorization": "Bearer nope"}, "/turn-credentials")):
                refused = await http.get(url, headers=headers)
                assert refused.status_code == 401, refused.text
                assert refused.json()["status"] == 401 and "unauthorized" in \
                    refused.json()["error"]
    finally:
        await person.close()


def test_startup_errors_of_the_connectivity_settings_are_one_line(tmp_path) -> None:
    api = free_port()
    udp = free_udp_tcp_port(avoid=(api,))
    common = ("serve", "--bind", "127.0.0.1", "--api-port", str(api), "--udp-port", str(udp),
              "--data-dir", str(tmp_path / "data"), "--stun-server", "")
    # A port map without an entry for any of this host's addresses.
    proc = run_cli(*common, "--ice-host-port-override", "192.0.2.77/9000", timeout=30)
    line = proc.stderr.strip().splitlines()[-1]  # earlier lines are ordinary log lines
    assert proc.returncode == 1 and line.startswith("callsctl: error: "), proc.stderr
    assert "has no entry for this host's addresses" in line and "Traceback" not in proc.stderr
    # The ICE-TCP port is taken: say so, and how to run without it.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        proc = run_cli(*common, "--tcp-port", str(taken), timeout=30)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and line.startswith("callsctl: error: "), proc.stderr
    assert f"TCP port {taken} on 127.0.0.1 is already in use" in line
    assert "--ice-tcp off" in line and "Traceback" not in proc.stderr


async def test_ice_host_override_may_be_a_host_name_but_not_ipv6() -> None:
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        config = ServeConfig(bind="127.0.0.1", udp_port=port, ice_host_override="localhost",
                             ice_tcp=False)
        connectivity = await Connectivity.open(config, mux, port)
        assert (connectivity.advertised.host, connectivity.advertised.source) == \
            ("127.0.0.1", "override")
        assert connectivity.info()["candidates"] == [f"udp host 127.0.0.1:{port}"]
        assert connectivity.tcp_port is None and mux.tcp is None  # ice_tcp off
        with pytest.raises(ConnectivityError, match="is IPv6"):
            await Connectivity.open(ServeConfig(bind="127.0.0.1", udp_port=port,
                                                ice_host_override="2001:db8::1",
                                                ice_tcp=False), mux, port)
    finally:
        transport.close()
