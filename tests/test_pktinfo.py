"""What a server bound to every address sends comes from the address it was asked on.

Every send path of the shared IPv4 socket names its source when IP_PKTINFO is
on (rtc/pktinfo.py, rtc/_pktinfo.h): the C fan-out's copies (a Target's
source), the C ingress's consent answers (the check's own destination) and
hand-ups (which carry it up), and the mux's Python sends. All of 127.0.0.0/8
is this host's, so loopback has as many local addresses as a test needs: a
socket bound to 0.0.0.0 that is written to on 127.0.0.3 is a multi-homed
host in miniature. The end-to-end case (two namespaces, a secondary address,
aiortc's strict ICE) is tests/test_check_multihomed.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from callsctl_sfu.rtc import fastpath, pktinfo
from callsctl_sfu.rtc.mux import UdpMux
from tests.support.helpers import REPO, have, is_root
from tests.support.icecheck import check, inbound_session, set_ice
from tests.support.srtp import Receiver

needs_c = pytest.mark.skipif(fastpath.Ingress is None,
                             reason=fastpath.REASON or "C extension not built")


def wildcard_socket(with_pktinfo: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(0.5)
    assert pktinfo.enable(sock) is True if with_pktinfo else True
    return sock


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    return sock


def test_only_a_wildcard_bound_ipv4_socket_gets_it(monkeypatch) -> None:
    bound = client_socket()
    wildcard = wildcard_socket(with_pktinfo=False)
    try:
        assert pktinfo.enable(bound) is False  # the kernel sends from its one address
        monkeypatch.setenv(pktinfo.ENV, "0")
        assert pktinfo.enable(wildcard) is False
        monkeypatch.delenv(pktinfo.ENV)
        assert pktinfo.enable(wildcard) is True
    finally:
        bound.close()
        wildcard.close()


@needs_c
def test_the_fanout_sends_each_copy_from_its_targets_source() -> None:
    sender = wildcard_socket()
    receivers = [Receiver(ssrc=1 + i) for i in range(3)]
    try:
        targets = [receivers[0].target, *(fastpath.Target(
            r.rewrite, r.outbound, r.target.context, r.addr, r.nominated, r.pair,
            source=f"127.0.0.{2 + i}") for i, r in enumerate(receivers[1:]))]
        assert [t.source for t in targets] == [None, "127.0.0.2", "127.0.0.3"]
        result = fastpath.fanout(sender.fileno(), 0x90, True, 1, 960, 0xABC, b"opus", 20,
                                 targets)
        assert result.sent == 3
        sources = [r.sock.recvfrom(2048)[1][0] for r in receivers]
        # No source: the kernel's choice (on loopback, the destination's own address).
        assert sources == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        with pytest.raises(ValueError, match="source must be an IPv4 address"):
            fastpath.Target(receivers[0].rewrite, receivers[0].outbound,
                            receivers[0].target.context, receivers[0].addr,
                            receivers[0].nominated, receivers[0].pair, source="::1")
    finally:
        sender.close()
        for receiver in receivers:
            receiver.sock.close()


@needs_c
def test_the_ingress_answers_a_check_from_where_it_was_sent_and_hands_up_the_destination():
    server, client = wildcard_socket(), client_socket()
    _srtp, session = inbound_session()
    ingress = fastpath.Ingress()
    ingress.add(client.getsockname(), session)
    set_ice(session, {1: SimpleNamespace(remote_addr=client.getsockname())})
    port = server.getsockname()[1]

    def drain() -> object:
        for _ in range(100):
            result = ingress.drain(server.fileno(), server.fileno(), 2.0)
            if result.datagrams_in:
                return result
            asyncio.run(asyncio.sleep(0.01))
        raise AssertionError("nothing arrived on the server socket")

    try:
        client.sendto(bytes(check()), ("127.0.0.4", port))
        result = drain()
        assert (result.stun_in, result.stun_out) == (1, 1)
        _answer, answered_from = client.recvfrom(2048)
        assert answered_from == ("127.0.0.4", port)

        client.sendto(b"\x16dtls-ish", ("127.0.0.5", port))  # not the ingress's: up it goes
        assert drain().slow == [(b"\x16dtls-ish", client.getsockname(), "127.0.0.5")]
    finally:
        server.close()
        client.close()


async def test_the_mux_answers_from_the_address_it_was_asked_on() -> None:
    """A bare STUN Binding (what `check rtc` and STUN clients send) on the Python path."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    transport, mux = await loop.create_datagram_endpoint(UdpMux, sock=sock)
    client = client_socket()
    client.setblocking(False)
    try:
        await asyncio.sleep(0.05)  # the reader swap after connection_made
        assert mux.pktinfo and "127.0.0.1" in mux.local_ipv4
        port = sock.getsockname()[1]
        binding = bytes.fromhex("000100002112a442") + bytes(range(12))
        for address in ("127.0.0.6", "127.0.0.7"):
            client.sendto(binding, (address, port))
            _answer, answered_from = await asyncio.wait_for(loop.sock_recvfrom(client, 2048), 5)
            assert answered_from == (address, port)
        # A fanned-out copy names its source only where the kernel would pick another.
        peer = SimpleNamespace(source="127.0.0.6", kernel_source=None)
        pair = SimpleNamespace(local_candidate=SimpleNamespace(host="203.0.113.9"),
                               remote_addr=("127.0.0.1", 5000))  # advertised: not the host's
        assert mux.source_for(peer, pair) == "127.0.0.6"
        assert peer.kernel_source == ("127.0.0.1", "127.0.0.1")
        pair.local_candidate.host = "127.0.0.1"  # one of the host's: what the peer checked
        assert mux.source_for(peer, pair) is None  # the kernel's choice already
    finally:
        transport.close()
        client.close()


@pytest.mark.root
@pytest.mark.skipif(not is_root(), reason="needs root for a network namespace")
@pytest.mark.skipif(not have("ip"), reason="needs iproute2")
def test_the_ipv6_socket_answers_from_the_address_it_was_asked_on() -> None:
    """--enable-ipv6's socket on ::, in a namespace whose loopback has three addresses."""
    ns = f"cs-pk6-{os.getpid()}"
    addresses = ["fd00:79::1", "fd00:79::2", "fd00:79::3"]
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        for address in addresses:
            subprocess.run(["ip", "-n", ns, "-6", "addr", "add", f"{address}/128", "dev", "lo",
                            "nodad"], check=True, timeout=30)

        def probe(switch: str) -> dict:
            done = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.support.pktinfo6_probe",
                 addresses[0], *addresses[1:]], capture_output=True, text=True, timeout=60,
                cwd=REPO, env={**os.environ, pktinfo.ENV: switch})
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout.strip().splitlines()[-1])

        on = probe("1")
        assert on == {"pktinfo6": True, "answered_from": {a: a for a in addresses[1:]}}, on
        # The kernel's own choice, for comparison: the client's address, not the one asked.
        off = probe("0")
        assert not off["pktinfo6"] and off["answered_from"] != on["answered_from"], off
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
