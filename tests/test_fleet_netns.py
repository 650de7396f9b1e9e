"""A fleet as separate machines: every node, Redis and the clients in their own namespace.

Topology (unique names and a random 10.x.y.0/24 per run), all on one bridge
in a "switch" namespace, as machines on one LAN:

    redis ns  .10        node-a ns .11   node-b ns .12   node-c ns .13   client ns .50
         \\___________________|________________|________________|______________/
                                      bridge (switch ns)

Nodes bind 0.0.0.0 and use their defaults for everything else: the
advertised address is their interface address and other nodes reach their
API there (node_url's default). Two aiortc participants in the client
namespace join one call, one through node-a and one through node-b: at most
one of them reached the host, so at least one is relayed (least-loaded may
even place the call on node-c, and then both are). Both must hear each other, and
both must send their media straight to the host's address.
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
from pathlib import Path

import pytest

from tests.support.fleet import RedisServer, need_redis, no_tracebacks, start_node, token
from tests.support.helpers import have, is_root
from tests.support.serve import ServeProcess

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
    pytest.mark.skipif(not have("ip"), reason="needs iproute2"),
]

CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    from callsctl_sfu.client.participant import Participant
    from callsctl_sfu.rtc import aiortc_bridge

    async def main(call, pairs):
        people = [Participant(ws, tok, call, f"p{i}", tone=300 + 200 * i)
                  for i, (ws, tok) in enumerate(pairs)]
        out = {"sessions": [], "heard": [], "nominated": [], "joined_with": []}
        try:
            for person in people:
                await person.join()
                out["joined_with"].append([p["user"] for p in person.joined["participants"]])
            for person in people:
                await person.wait_connected(20)
            ids = [p.session_id for p in people]
            def heard():
                return [min(p.frames_from[s] for s in ids if s != p.session_id) for p in people]
            for _ in range(150):
                if min(heard()) > 25:
                    break
                await asyncio.sleep(0.1)
            out["sessions"] = ids
            out["heard"] = heard()
            for person in people:
                connection = aiortc_bridge.ice_connection(person.pc.sctp.transport.transport)
                out["nominated"].append(list(aiortc_bridge.nominated_pair(connection).remote_addr))
        finally:
            for person in people:
                await person.close()
        print(json.dumps(out))

    call, *rest = sys.argv[1:]
    asyncio.run(main(call, list(zip(rest[::2], rest[1::2]))))
""")


def sh(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[dict[str, tuple[str, str]]]:
    """name -> (namespace, address) for redis, node-a..c and client, on one bridge."""
    need_redis()
    suffix = uuid.uuid4().hex[:5]
    net = f"10.{random.randint(100, 199)}.{random.randint(0, 250)}"
    hosts = {"redis": 10, "node-a": 11, "node-b": 12, "node-c": 13, "client": 50}
    switch = f"fl-sw-{suffix}"
    made = []
    try:
        sh("ip", "netns", "add", switch)
        made.append(switch)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=switch)
        sh("ip", "link", "set", "br0", "up", ns=switch)
        out = {}
        for index, (name, host) in enumerate(hosts.items()):
            ns = f"fl-{name}-{suffix}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            inner, outer = f"fli{index}{suffix}", f"flo{index}{suffix}"
            sh("ip", "link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer,
               "netns", switch)
            sh("ip", "link", "set", outer, "master", "br0", ns=switch)
            sh("ip", "link", "set", outer, "up", ns=switch)
            sh("ip", "addr", "add", f"{net}.{host}/24", "dev", inner, ns=ns)
            sh("ip", "link", "set", inner, "up", ns=ns)
            out[name] = (ns, f"{net}.{host}")
        yield out
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)


def test_nodes_on_separate_addresses_relay_and_media_goes_to_the_host(tmp_path, lan):
    redis_ns, redis_ip = lan["redis"]
    redis = RedisServer(tmp_path, bind=redis_ip, netns=redis_ns).start()
    nodes: dict[str, ServeProcess] = {}
    try:
        for name in ("node-a", "node-b", "node-c"):
            ns, ip = lan[name]
            nodes[name] = start_node(tmp_path, redis.url, node_id=name, bind="0.0.0.0",
                                     netns=ns, host=ip)
        time.sleep(1.5)  # every node has seen the others
        listing = sh(sys.executable, "-m", "callsctl", "fleet", "list", "--json",
                     "--cluster", redis.url, ns=lan["client"][0])
        registered = {n["node_id"]: n for n in json.loads(listing.stdout)["nodes"]}
        assert sorted(registered) == ["node-a", "node-b", "node-c"]
        for name, node in registered.items():
            ip = lan[name][1]
            assert node["media_host"] == ip, node  # the node's own address, advertised
            assert node["api_url"] == f"http://{ip}:{nodes[name].api_port}", node
        script = tmp_path / "fleet_client.py"
        script.write_text(CLIENT)
        pairs = []
        for name, user in (("node-a", "alice"), ("node-b", "bob")):
            pairs += [f"ws://{lan[name][1]}:{nodes[name].api_port}/ws",
                      token(nodes[name], "lan-call", user)]
        client = sh(sys.executable, str(script), "lan-call", *pairs, ns=lan["client"][0],
                    check=False)
        assert client.returncode == 0, client.stderr[-3000:]
        out = json.loads(client.stdout.strip().splitlines()[-1])
        assert out["joined_with"] == [[], ["alice"]]  # one call, whichever node was reached
        assert min(out["heard"]) > 25, out
        # The one node that hosted the call (its log) is where both sent their media.
        hosts = [name for name, node in nodes.items()
                 if "joined call lan-call (2 participants)" in node.log()]
        assert len(hosts) == 1, [node.log()[-1500:] for node in nodes.values()]
        host = hosts[0]
        expected = [lan[host][1], nodes[host].udp_port]
        assert out["nominated"] == [expected, expected], (host, out)
        for _ in range(100):  # released when the call ended
            if redis.cli("HLEN", "callsctl:calls") == "0":
                break
            time.sleep(0.1)
        assert redis.cli("HLEN", "callsctl:calls") == "0"
    finally:
        for node in nodes.values():
            node.stop(signal.SIGKILL)
        redis.stop()
        no_tracebacks(*nodes.values())
