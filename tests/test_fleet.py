"""A fleet on loopback: real redis-server, real `callsctl serve --cluster` nodes.

What a user of a fleet notices: one call never has two hosts however the
first joins race; a client joining through any node ends up in the one call;
new calls spread; the fleet lists every call from any node; bad cluster
settings are one-line errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from callsctl_sfu.rtc.medialoader import mapped_media_libraries
from tests.support.fleet import (
    RedisServer,
    admin_headers,
    need_redis,
    no_tracebacks,
    start_node,
    token,
)
from tests.support.helpers import run_cli
from tests.support.serve import ServeProcess


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for node in started:
        node.stop()
    no_tracebacks(*started)


async def _join(session: aiohttp.ClientSession, node: ServeProcess, call: str, user: str
                ) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    ws = await session.ws_connect(f"{node.ws_url}?token={token(node, call, user)}")
    await ws.send_json({"type": "join", "call": call})
    while True:
        message = json.loads((await asyncio.wait_for(ws.receive(), 15)).data)
        if message["type"] in ("joined", "error"):
            return ws, message


def fleet_calls(node: ServeProcess, tmp_path: Path) -> list[dict]:
    response = httpx.get(f"{node.api_url}/api/v1/calls", headers=admin_headers(tmp_path),
                         timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["calls"]


def wait_until(predicate, timeout: float = 15.0, every: float = 0.2):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


def test_racing_first_joins_give_every_call_one_host(tmp_path, redis, nodes):
    """Two nodes, 24 calls, both nodes get each call's first join at the same moment."""
    a = start_node(tmp_path, redis.url, node_id="node-a")
    b = start_node(tmp_path, redis.url, node_id="node-b")
    nodes += [a, b]
    calls = [f"race-{i}" for i in range(24)]

    async def race() -> list[dict]:
        async with aiohttp.ClientSession() as session:
            pairs = await asyncio.gather(*[
                _join(session, node, call, f"{node.api_port}-{call}")
                for call in calls for node in (a, b)])
            answers = [message for _ws, message in pairs]
            await asyncio.sleep(2.5)  # registrations refresh every second
            listed = fleet_calls(b, tmp_path)
            for ws, _message in pairs:
                await ws.close()
            return [answers, listed]

    answers, listed = asyncio.run(race())
    assert all(m["type"] == "joined" for m in answers), answers
    by_call: dict[str, list[dict]] = {}
    for entry in listed:
        by_call.setdefault(entry["id"], []).append(entry)
    assert sorted(by_call) == sorted(calls)
    for call, entries in by_call.items():
        assert len(entries) == 1, f"{call} has {len(entries)} hosts: {entries}"
        assert entries[0]["participants"] == 2, entries
    placements = dict(zip(*[iter(redis.cli("HGETALL", "callsctl:calls").split("\n"))] * 2,
                          strict=True))
    assert sorted(placements) == sorted(calls)
    assert {e[0]["node"] for e in by_call.values()} <= {"node-a", "node-b"}
    # After everyone left, the claims are released: nothing stale left in Redis.
    assert wait_until(lambda: redis.cli("HLEN", "callsctl:calls") == "0"), \
        redis.cli("HGETALL", "callsctl:calls")


def test_least_loaded_spreads_new_calls(tmp_path, redis, nodes):
    """Three nodes, six new calls all entering through node-a: every node gets some."""
    a = start_node(tmp_path, redis.url, node_id="node-a")
    b = start_node(tmp_path, redis.url, node_id="node-b")
    c = start_node(tmp_path, redis.url, node_id="node-c")
    nodes += [a, b, c]
    # A fleet node loads the media stack at start: a node's first call (about a second
    # of CPU to load it) would otherwise read as load and steer the next calls away.
    for node in (a, b, c):
        assert mapped_media_libraries(node.process.pid), f"{node} has not loaded media"
    time.sleep(1.5)  # all have sampled their CPU once

    async def joins() -> list[dict]:
        async with aiohttp.ClientSession() as session:
            held = []
            for i in range(6):
                held.append(await _join(session, a, f"spread-{i}", "alice"))
            await asyncio.sleep(2.5)
            listed = fleet_calls(a, tmp_path)
            for ws, _m in held:
                await ws.close()
            return listed

    listed = asyncio.run(joins())
    per_node = {n: sum(1 for c in listed if c["node"] == n)
                for n in ("node-a", "node-b", "node-c")}
    # Idle nodes tie on CPU; the calls already placed break the tie, so they take turns.
    assert sum(per_node.values()) == 6 and min(per_node.values()) >= 1, per_node
    assert max(per_node.values()) <= 3, per_node


def test_local_policy_hosts_where_the_first_client_connects(tmp_path, redis, nodes):
    a = start_node(tmp_path, redis.url, "--cluster-policy", "local", node_id="node-a")
    b = start_node(tmp_path, redis.url, "--cluster-policy", "local", node_id="node-b")
    nodes += [a, b]

    async def joins() -> list[dict]:
        async with aiohttp.ClientSession() as session:
            first = await _join(session, b, "here", "alice")
            second = await _join(session, a, "here", "bob")  # relayed to b
            await asyncio.sleep(2.5)
            listed = fleet_calls(a, tmp_path)
            assert second[1]["participants"][0]["user"] == "alice"
            for ws, _m in (first, second):
                await ws.close()
            return listed

    listed = asyncio.run(joins())
    assert [(c["id"], c["node"], c["participants"]) for c in listed] == [("here", "node-b", 2)]


def test_bad_cluster_settings_are_one_line_errors(tmp_path):
    result = run_cli("serve", "--cluster", "http://localhost:6379", "--print-config")
    assert result.returncode == 2
    assert "--cluster" in result.stderr and "redis://" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("serve", "--cluster-policy", "random", "--print-config")
    assert result.returncode == 2 and "least-loaded" in result.stderr
    # A password in the URL never shows in --print-config.
    result = run_cli("serve", "--print-config", env={"CALLSCTL_CLUSTER": "redis://:hunter2@r:6379/0"})
    assert result.returncode == 0 and "hunter2" not in result.stdout
    assert 'cluster = "redis://:***@r:6379/0"' in result.stdout


def test_unreachable_redis_stops_startup_with_the_fix(tmp_path):
    need_redis()
    from tests.support.helpers import free_port

    with pytest.raises(RuntimeError) as failed:
        start_node(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    assert "cannot reach the fleet's Redis" in str(failed.value)
    assert "Traceback" not in str(failed.value)


def test_a_single_node_never_loads_redis():
    """Without --cluster nothing of the fleet is imported (no cost, no behaviour change)."""
    import subprocess
    import sys

    code = ("import sys, callsctl_sfu.server, callsctl_sfu.config, callsctl_sfu.api.routes;"
            "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')"
            " or m.startswith('callsctl_sfu.fleet.') and m != 'callsctl_sfu.fleet.settings'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_metrics_version_and_admin_carry_the_node(tmp_path, redis, nodes):
    a = start_node(tmp_path, redis.url, node_id="node-a")
    b = start_node(tmp_path, redis.url, node_id="node-b")
    nodes += [a, b]
    metrics = httpx.get(f"{a.api_url}/metrics", timeout=5).text
    assert 'callsctl_fleet_node_info{api_url="http://127.0.0.1:' in metrics
    assert 'node="node-a",state="active"} 1.0' in metrics
    assert 'callsctl_fleet_redis_up{node="node-a"} 1.0' in metrics
    assert httpx.get(f"{b.api_url}/version", timeout=5).json()["node"] == "node-b"
    # The fleet adds nothing reachable without the admin key.
    for path in ("/api/v1/calls", "/api/v1/fleet/nodes", "/api/v1/calls/x"):
        assert httpx.get(f"{a.api_url}{path}", timeout=5).status_code == 401
    listed = httpx.get(f"{a.api_url}/api/v1/fleet/nodes", headers=admin_headers(tmp_path),
                       timeout=5).json()
    assert wait_until(lambda: len(httpx.get(
        f"{a.api_url}/api/v1/fleet/nodes", headers=admin_headers(tmp_path),
        timeout=5).json()["nodes"]) == 2), listed


def test_host_controls_through_any_node_reach_the_host(tmp_path, redis, nodes):
    a = start_node(tmp_path, redis.url, "--cluster-policy", "local", node_id="node-a")
    b = start_node(tmp_path, redis.url, "--cluster-policy", "local", node_id="node-b")
    nodes += [a, b]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            ws, joined = await _join(session, a, "room", "alice")
            # Ended through node B, which does not host it: node A ends it.
            ended = httpx.delete(f"{b.api_url}/api/v1/calls/room",
                                 headers=admin_headers(tmp_path), timeout=10)
            assert ended.status_code == 200, ended.text
            assert ended.json()["removed"] == 1
            while True:
                event = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
                if event["type"] == "call_end":
                    break
            await ws.close()
            # Unknown everywhere: the usual 404, from node B itself.
            missing = httpx.get(f"{b.api_url}/api/v1/calls/nope",
                                headers=admin_headers(tmp_path), timeout=10)
            assert missing.status_code == 404
            assert joined["type"] == "joined"

    asyncio.run(scenario())


def test_a_relay_without_the_fleet_secret_is_refused(tmp_path, redis, nodes):
    a = start_node(tmp_path, redis.url, node_id="node-a")
    nodes.append(a)

    async def scenario() -> dict:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{a.ws_url}?token={token(a, 'room', 'eve')}",
                                          headers={"X-Callsctl-Fleet": "guessed-secret-123"})
            message = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            closed = await asyncio.wait_for(ws.receive(), 10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await ws.close()
            return message

    message = asyncio.run(scenario())
    assert message["code"] == "unauthorized" and "fleet secret" in message["message"]


def test_calls_list_against_any_node_shows_every_call_and_its_node(tmp_path, redis, nodes):
    a = start_node(tmp_path, redis.url, "--cluster-policy", "local", node_id="node-a")
    b = start_node(tmp_path, redis.url, "--cluster-policy", "local", node_id="node-b")
    nodes += [a, b]
    key_file = str(a.data_dir / "admin_key")

    async def scenario() -> str:
        async with aiohttp.ClientSession() as session:
            held = [await _join(session, a, "on-a", "alice"),
                    await _join(session, b, "on-b", "bob")]
            await asyncio.sleep(2.5)
            result = await asyncio.to_thread(
                run_cli, "calls", "--server", b.api_url, "--admin-key-file", key_file, "list")
            for ws, _m in held:
                await ws.close()
            assert result.returncode == 0, result.stderr
            return result.stdout

    out = asyncio.run(scenario())
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()
            if line.strip().startswith("on-")}
    assert rows == {"on-a": "node-a", "on-b": "node-b"}, out


def test_password_and_tls_redis(tmp_path, nodes):
    """rediss:// with a password (and the CA in the URL) works; a wrong password is one line."""
    need_redis()
    secure = RedisServer(tmp_path, password="s3cret-pass-word", tls=True).start()
    try:
        a = start_node(tmp_path, secure.url, "--cluster-policy", "local", node_id="node-a")
        b = start_node(tmp_path, secure.url, "--cluster-policy", "local", node_id="node-b")
        nodes += [a, b]

        async def joins() -> list[dict]:
            async with aiohttp.ClientSession() as session:
                first = await _join(session, a, "tls", "alice")
                second = await _join(session, b, "tls", "bob")
                for ws, _m in (first, second):
                    await ws.close()
                return [first[1], second[1]]

        first, second = asyncio.run(joins())
        assert [p["user"] for p in second["participants"]] == ["alice"]
        listed = run_cli("fleet", "list", "--json", env={"CALLSCTL_CLUSTER": secure.url})
        assert listed.returncode == 0, listed.stderr
        assert {n["node_id"] for n in json.loads(listed.stdout)["nodes"]} == {"node-a",
                                                                              "node-b"}
        wrong = secure.url.replace("s3cret-pass-word", "wrong-password")
        with pytest.raises(RuntimeError) as failed:
            start_node(tmp_path, wrong, node_id="node-x")
        message = str(failed.value)
        assert "cannot reach the fleet's Redis at rediss://:***@127.0.0.1" in message
        assert "wrong-password" not in message and "Traceback" not in message
        result = run_cli("fleet", "list", "--cluster", wrong)
        assert result.returncode == 1 and "wrong-password" not in result.stderr
    finally:
        secure.stop()


def test_check_all_against_one_node_probes_every_nodes_media_port(tmp_path, redis, nodes):
    """node-b advertises a port nothing listens on (a wrong port override): check all says so."""
    from tests.support.helpers import free_udp_tcp_port

    a = start_node(tmp_path, redis.url, node_id="node-a")
    wrong = free_udp_tcp_port()
    b = start_node(tmp_path, redis.url, "--ice-host-port-override", str(wrong),
                   node_id="node-b")
    nodes += [a, b]
    time.sleep(1.5)  # node-a has seen node-b
    result = run_cli("check", "all", "--host", "127.0.0.1", "--api-port", str(a.api_port),
                     "--udp-port", str(a.udp_port), "--tcp-port", str(a.udp_port), "--json")
    assert result.returncode == 1, result.stdout + result.stderr  # node-b's port fails
    report = {r["name"]: r for r in json.loads(result.stdout)["results"]}
    assert report["rtc udp"]["status"] == "pass"
    assert report["fleet"]["status"] == "pass" and "2 node(s)" in report["fleet"]["summary"]
    failed = report["fleet node-b udp"]
    assert failed["status"] == "fail" and f"127.0.0.1:{wrong}" in failed["summary"]
    assert "ice_host_port_override" in failed["fix"]
    # The public /fleet list carries media addresses only: no API URLs, no calls.
    listing = httpx.get(f"{a.api_url}/fleet", timeout=5).json()
    assert set(listing["nodes"][0]) == {"node_id", "state", "media_host", "media_port",
                                        "media_tcp_port"}


def test_top_against_any_node_shows_every_node(tmp_path, redis, nodes):
    """`top` has a nodes panel in a fleet; --once --json carries the same list."""
    a = start_node(tmp_path, redis.url, node_id="node-a")
    b = start_node(tmp_path, redis.url, node_id="node-b")
    nodes += [a, b]
    key_file = str(a.data_dir / "admin_key")

    def snapshot() -> dict:
        result = run_cli("top", "--server", b.api_url, "--admin-key-file", key_file,
                         "--once", "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    shown = wait_until(lambda: (s := snapshot()) and len(s["nodes"] or []) == 2 and s)
    assert shown, snapshot()
    assert shown["server"]["node"] == "node-b"
    assert {n["node_id"]: n["state"] for n in shown["nodes"]} == {"node-a": "active",
                                                                   "node-b": "active"}
    assert all(n["media_port"] for n in shown["nodes"])
