"""A server behind NAT, in network namespaces this module creates and deletes.

Topology (unique names and a random 10.x subnet per run):

    client ns  10.X.1.2 ──veth── 10.X.1.1  router ns  10.X.2.1 ──veth── 10.X.2.2  server ns
                                   "public" address              (every `callsctl serve`)

The router forwards nothing to the server except its port forwards (DNAT
from 10.X.1.1, the public address), and masquerades the server's own
outgoing traffic — a typical cloud/home NAT. Three servers run in the server
namespace:

- `forwarded`: public 10.X.1.1:9443 -> 10.X.2.2:8443 (a different port, as a
  load balancer or Docker `-p 9443:8443` would map it), started with
  --ice-host-override 10.X.1.1 --ice-host-port-override 10.X.2.2/9443: clients connect;
- `plain`: the same kind of forward (8444 -> 8444) but no override and no STUN:
  it advertises 10.X.2.2, which the client cannot reach, and fails — the
  reason the override exists;
- `stun`: forward 8445 -> 8445, no override, --stun-server pointing at a coturn
  in the client namespace (the "internet"): it learns 10.X.1.1, advertises it as
  a server-reflexive candidate next to its host one, and clients connect.

The clients are real aiortc participants (callsctl_sfu.client) run with
`ip netns exec` in the client namespace; every pair must hear the other.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import issue_token
from tests.support.coturn import start_coturn
from tests.support.helpers import REPO, have, is_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
    pytest.mark.skipif(not (have("ip") and have("nft")), reason="needs iproute2 and nftables"),
]

CLIENT_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys, urllib.request
    from callsctl_sfu.client.participant import Participant, ParticipantError
    from callsctl_sfu.rtc import aiortc_bridge

    async def main(api, tokens, call, wait):
        out = {"connected": [], "errors": [], "remote_candidates": [], "nominated": [],
               "heard": [], "version": None}
        people = []
        try:
            out["version"] = json.load(urllib.request.urlopen(f"{api}/version", timeout=5))
            ws = api.replace("http://", "ws://") + "/ws"
            for index, token in enumerate(tokens):
                person = Participant(ws, token, call, f"p{index}", tone=300 + 100 * index)
                await person.join()
                people.append(person)
            results = await asyncio.gather(*(p.wait_connected(wait) for p in people),
                                           return_exceptions=True)
            for result in results:
                out["connected"].append(not isinstance(result, Exception))
                if isinstance(result, Exception):
                    out["errors"].append(str(result))
            for person in people:
                sdp = person.pc.remoteDescription.sdp if person.pc.remoteDescription else ""
                out["remote_candidates"].append(
                    [line[12:] for line in sdp.splitlines() if line.startswith("a=candidate:")])
            if all(out["connected"]):
                ids = [p.session_id for p in people]
                def heard():
                    return [min(p.frames_from[s] for s in ids if s != p.session_id)
                            for p in people]
                for _ in range(100):
                    if min(heard()) > 20:
                        break
                    await asyncio.sleep(0.1)
                out["heard"] = heard()
                for person in people:
                    connection = aiortc_bridge.ice_connection(
                        person.pc.sctp.transport.transport)
                    out["nominated"].append(
                        list(aiortc_bridge.nominated_pair(connection).remote_addr))
        finally:
            for person in people:
                await person.close()
        print(json.dumps(out))

    api, call, wait, *tokens = sys.argv[1:]
    asyncio.run(main(api, tokens, call, float(wait)))
""")


def sh(*args: str, ns: str | None = None, check: bool = True,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@dataclass
class NatServer:
    name: str
    media_port: int  # inside the server namespace
    public_port: int  # on the router's public address
    api_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[str] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self, call: str, user: str) -> str:
        return issue_token(load_or_create_secret(self.data_dir), call, user, 600)


@dataclass
class Topology:
    suffix: str
    client_ns: str
    router_ns: str
    server_ns: str
    public_ip: str  # router, client side
    client_ip: str
    server_ip: str
    servers: dict[str, NatServer]
    script: Path

    def api(self, server: NatServer) -> str:
        return f"http://{self.public_ip}:{server.api_port}"

    def run_clients(self, server: NatServer, call: str, wait: float = 15) -> subprocess.Popen:
        tokens = [server.token(call, f"user{i}") for i in range(2)]
        return subprocess.Popen(["ip", "netns", "exec", self.client_ns, sys.executable,
                                 str(self.script), self.api(server), call, str(wait), *tokens],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO)


def _build(tmp_path: Path, suffix: str, namespaces: list[str]) -> Topology:
    net = f"10.{random.randint(200, 250)}.{random.randint(0, 250)}"
    net2 = f"10.{random.randint(200, 250)}.{random.randint(0, 250)}"
    client_ns, router_ns, server_ns = (f"cs-{role}-{suffix}" for role in ("cli", "rtr", "srv"))
    for ns in (client_ns, router_ns, server_ns):
        sh("ip", "netns", "add", ns)
        namespaces.append(ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    public_ip, client_ip = f"{net}.1", f"{net}.2"
    inner_router, server_ip = f"{net2}.1", f"{net2}.2"
    for a_ns, a_if, a_ip, b_ns, b_if, b_ip in (
            (client_ns, f"csc{suffix}", client_ip, router_ns, f"csr{suffix}", public_ip),
            (server_ns, f"css{suffix}", server_ip, router_ns, f"csi{suffix}", inner_router)):
        sh("ip", "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if,
           "netns", b_ns)
        sh("ip", "addr", "add", f"{a_ip}/24", "dev", a_if, ns=a_ns)
        sh("ip", "addr", "add", f"{b_ip}/24", "dev", b_if, ns=b_ns)
        sh("ip", "link", "set", a_if, "up", ns=a_ns)
        sh("ip", "link", "set", b_if, "up", ns=b_ns)
    sh("ip", "route", "add", "default", "via", public_ip, ns=client_ns)
    sh("ip", "route", "add", "default", "via", inner_router, ns=server_ns)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=router_ns)

    servers = {
        "forwarded": NatServer("forwarded", 8443, 9443, 8045, tmp_path / "forwarded",
                               tmp_path / "forwarded.log"),
        "plain": NatServer("plain", 8444, 8444, 8046, tmp_path / "plain",
                           tmp_path / "plain.log"),
        "stun": NatServer("stun", 8445, 8445, 8047, tmp_path / "stun", tmp_path / "stun.log"),
    }
    forwards = []
    for server in servers.values():
        forwards.append(f"ip daddr {public_ip} tcp dport {server.api_port} "
                        f"dnat to {server_ip}:{server.api_port}")
        for proto in ("udp", "tcp"):
            forwards.append(f"ip daddr {public_ip} {proto} dport {server.public_port} "
                            f"dnat to {server_ip}:{server.media_port}")
    rules = textwrap.dedent(f"""
        table ip nat {{
          chain pre {{ type nat hook prerouting priority dstnat; policy accept;
            {chr(10).join(forwards)}
          }}
          chain post {{ type nat hook postrouting priority srcnat; policy accept;
            oifname "csr{suffix}" masquerade
          }}
        }}
        table ip filter {{
          chain forwarding {{ type filter hook forward priority 0; policy drop;
            ct state established,related accept
            ct status dnat accept
            iifname "csi{suffix}" accept
          }}
        }}
    """)
    sh("nft", "-f", "-", ns=router_ns, input=rules)
    script = tmp_path / "nat_client.py"
    script.write_text(CLIENT_SCRIPT)
    return Topology(suffix, client_ns, router_ns, server_ns, public_ip, client_ip, server_ip,
                    servers, script)


def _start_server(topo: Topology, server: NatServer, *args: str) -> None:
    load_or_create_secret(server.data_dir)  # tokens can be minted before it starts
    log = server.log_path.open("w")
    server.process = subprocess.Popen(
        ["ip", "netns", "exec", topo.server_ns, sys.executable, "-m", "callsctl", "serve",
         "--bind", "0.0.0.0", "--api-port", str(server.api_port), "--udp-port",
         str(server.media_port), "--data-dir", str(server.data_dir), *args],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _wait_ready(server: NatServer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        if "join the default call" in log:
            return
        if "callsctl: error" in log or (server.process is not None
                                        and server.process.poll() is not None):
            raise AssertionError(f"{server.name} exited:\n{server.log()}")
        time.sleep(0.1)
    raise AssertionError(f"{server.name} not ready in {timeout} s:\n{server.log()}")


def _wait_udp_listener(ns: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f":{port} " in sh("ss", "-Hlun", ns=ns, check=False).stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on udp {port} in {ns}")


@pytest.fixture(scope="module")
def nat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp_path = tmp_path_factory.mktemp("nat")
    suffix = uuid.uuid4().hex[:6]
    namespaces: list[str] = []
    coturn = None
    topo: Topology | None = None
    try:
        topo = _build(tmp_path, suffix, namespaces)
        if have("turnserver"):
            coturn = start_coturn(tmp_path, netns=topo.client_ns, listen=(topo.client_ip,),
                                  secret=None)
            _wait_udp_listener(topo.client_ns, coturn.port)
        forwarded = topo.servers["forwarded"]
        _start_server(topo, forwarded, "--stun-server", "", "--ice-host-override",
                      topo.public_ip, "--ice-host-port-override",
                      f"{topo.server_ip}/{forwarded.public_port}")
        _start_server(topo, topo.servers["plain"], "--stun-server", "")
        if coturn is not None:
            _start_server(topo, topo.servers["stun"], "--stun-server",
                          f"{topo.client_ip}:{coturn.port}")
        for server in topo.servers.values():
            if server.process is not None:
                _wait_ready(server)
        yield topo
    finally:
        if topo is not None:
            for server in topo.servers.values():
                if server.process is not None and server.process.poll() is None:
                    server.process.send_signal(signal.SIGKILL)
                    server.process.wait(timeout=10)
        if coturn is not None:
            coturn.stop()
        for ns in namespaces:
            sh("ip", "netns", "del", ns, check=False)


def _result(process: subprocess.Popen, server: NatServer) -> dict:
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, f"client failed:\n{err}\n--- server ---\n{server.log()}"
    return json.loads(out.strip().splitlines()[-1])


def test_port_forward_with_host_and_port_overrides_connects(nat: Topology) -> None:
    server = nat.servers["forwarded"]
    result = _result(nat.run_clients(server, "forwarded-call"), server)
    ice = result["version"]["ice"]
    assert (ice["host"], ice["udp_port"], ice["tcp_port"], ice["source"]) == \
        (nat.public_ip, 9443, 9443, "override")
    assert ice["candidates"] == [f"udp host {nat.public_ip}:9443",
                                 f"tcp host {nat.public_ip}:9443"]
    assert result["connected"] == [True, True], (result, server.log())
    # Both reached the server only through the mapped address, and hear each other.
    assert result["nominated"] == [[nat.public_ip, 9443]] * 2
    assert min(result["heard"]) > 20, result


def test_without_overrides_the_advertised_candidate_is_unreachable(nat: Topology) -> None:
    server = nat.servers["plain"]
    result = _result(nat.run_clients(server, "plain-call", wait=6), server)
    ice = result["version"]["ice"]
    assert (ice["host"], ice["source"]) == (nat.server_ip, "interface")
    # What the client was told: the server's inner address, which the router never forwards.
    for candidates in result["remote_candidates"]:
        udp = [c for c in candidates if " udp " in c]
        assert udp and all(f" {nat.server_ip} 8444 typ host" in c for c in udp), candidates
    assert result["connected"] == [False, False], result
    assert all("not connected" in e or "failed" in e for e in result["errors"]), result


@pytest.mark.skipif(not have("turnserver"), reason="coturn (turnserver) not installed")
def test_stun_discovery_behind_nat_advertises_public_srflx_and_connects(nat: Topology) -> None:
    server = nat.servers["stun"]
    result = _result(nat.run_clients(server, "stun-call"), server)
    ice = result["version"]["ice"]
    assert (ice["host"], ice["udp_port"], ice["source"]) == (nat.public_ip, 8445, "stun")
    assert ice["candidates"][:2] == [f"udp host {nat.server_ip}:8445",
                                     f"udp srflx {nat.public_ip}:8445"]
    assert ice["stun"]["address"].startswith(f"{nat.public_ip}:")
    assert "stun: public address of the media socket" in server.log()
    assert result["connected"] == [True, True], (result, server.log())
    assert result["nominated"] == [[nat.public_ip, 8445]] * 2
    assert min(result["heard"]) > 20, result
