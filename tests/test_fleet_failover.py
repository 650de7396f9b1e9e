"""A fleet losing parts: draining nodes, a node killed with -9, Redis killed and restarted.

Each scenario is what an operator does or suffers; the checks are what users
and operators notice: calls that go on, joins that land somewhere live or get
a clear error, a fleet list and an admin API with nothing stale in them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callsctl_sfu.client.participant import Participant, ParticipantError
from tests.support.fleet import (
    RedisServer,
    admin_headers,
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
        node.stop(signal.SIGKILL)
    no_tracebacks(*started)


def local_fleet(tmp_path: Path, redis: RedisServer, nodes: list, *args: str,
                names: tuple[str, ...] = ("node-a", "node-b")) -> list[ServeProcess]:
    for name in names:
        nodes.append(start_node(tmp_path, redis.url, "--cluster-policy", "local", *args,
                                node_id=name))
    return list(nodes)


def fleet_json(redis: RedisServer) -> dict[str, Any]:
    result = run_cli("fleet", "list", "--json", "--cluster", redis.url)
    assert result.returncode == 0, result.stderr
    return {n["node_id"]: n for n in json.loads(result.stdout)["nodes"]}


async def until(predicate: Any, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(every)
    return bool(predicate())


def calls_on(node: ServeProcess, tmp_path: Path) -> list[tuple[str, str, int]]:
    body = httpx.get(f"{node.api_url}/api/v1/calls", headers=admin_headers(tmp_path),
                     timeout=10).json()
    return sorted((c["id"], c["node"], c["participants"]) for c in body["calls"])


def person(node: ServeProcess, call: str, user: str, tone: float = 440) -> Participant:
    return Participant(node.ws_url, token(node, call, user), call, user.title(), tone=tone)


async def test_fleet_drain_stops_new_calls_keeps_the_old_then_exits(tmp_path, redis, nodes):
    a, b = local_fleet(tmp_path, redis, nodes)
    alice = person(a, "old", "alice")
    carol = person(a, "new", "carol")
    bob = person(a, "old", "bob")
    try:
        await alice.join()
        result = run_cli("fleet", "drain", "node-a", "--json", "--cluster", redis.url)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"node": "node-a", "drain_requested": True,
                                             "left": False}
        assert await until(lambda: fleet_json(redis)["node-a"]["state"] == "draining", 10)
        # A new call that reaches the draining node is placed on the other one.
        await carol.join()
        await bob.join()  # the call node-a hosts still takes joins
        await asyncio.sleep(2.5)
        assert calls_on(b, tmp_path) == [("new", "node-b", 1), ("old", "node-a", 2)]
        assert a.process.poll() is None  # still serving its call
        await alice.leave()
        await bob.leave()
        assert await until(lambda: a.process.poll() is not None, 15), "node-a did not exit"
        assert a.process.returncode == 0
        assert await until(lambda: "node-a" not in fleet_json(redis), 5)
        assert calls_on(b, tmp_path) == [("new", "node-b", 1)]
    finally:
        for p in (alice, bob, carol):
            await p.close()


def test_fleet_drain_of_an_unknown_node_names_the_known_ones(tmp_path, redis, nodes):
    local_fleet(tmp_path, redis, nodes, names=("node-a",))
    result = run_cli("fleet", "drain", "nope", "--cluster", redis.url)
    assert result.returncode == 1
    assert "no node 'nope'" in result.stderr and "node-a" in result.stderr
    listed = run_cli("fleet", "list", "--cluster", redis.url)
    assert listed.returncode == 0 and "node-a" in listed.stdout and "active" in listed.stdout


async def test_sigterm_drains_and_the_deadline_ends_the_calls(tmp_path, redis, nodes):
    a, _b = local_fleet(tmp_path, redis, nodes, "--drain-timeout", "3")
    alice = person(a, "room", "alice")
    try:
        await alice.join()
        a.process.send_signal(signal.SIGTERM)
        # The node says so in its log (the registry's "draining" lasts only the 3 s
        # deadline, too short to poll on a busy machine; the drain test above reads it).
        assert await until(lambda: "node-a draining" in a.log_path.read_text(), 10)
        assert a.process.poll() is None  # the call goes on while draining
        ended = await alice.wait_for(lambda e: e["type"] == "call_end", 15)
        assert ended["reason"] == "server shutting down"
        assert await until(lambda: a.process.poll() is not None, 10)
        assert "node-a" not in fleet_json(redis)
        assert redis.cli("HLEN", "callsctl:calls") == "0"
    finally:
        await alice.close()


async def test_kill_9_of_the_host_clients_recover_on_a_live_node(tmp_path, redis, nodes):
    a, b = local_fleet(tmp_path, redis, nodes)
    alice = person(a, "room", "alice", 440)
    bob = person(b, "room", "bob", 660)  # relayed to node-a
    try:
        await alice.join()
        await bob.join()
        await bob.wait_connected()
        assert await until(lambda: bob.frames_from[alice.session_id] > 10, 15)
        killed_at = time.monotonic()
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(5)
        # Bob's relay through node-b reports the lost host at once.
        lost = await bob.wait_for(lambda e: e.get("code") == "host_lost", 10)
        assert "node-a" in lost["message"]
        await bob.close()
        # Bob reconnects (a new join through node-b, as a client does) until he is in.
        rejoined = None
        for _attempt in range(40):
            again = person(b, "room", "bob", 660)
            try:
                await again.join(timeout=5)
                rejoined = again
                break
            except ParticipantError:
                await again.close()
                await asyncio.sleep(0.5)
        assert rejoined is not None, "bob never got back into a call"
        await rejoined.wait_connected()
        recovered = time.monotonic() - killed_at
        print(f"\nkill -9 of the host -> rejoined and media connected on a live node: "
              f"{recovered:.1f} s")
        try:
            assert rejoined._ws is not None
            assert rejoined.joined["participants"] == []  # a fresh call, not a ghost
            await asyncio.sleep(2.5)
            assert calls_on(b, tmp_path) == [("room", "node-b", 1)]
            assert "node-a" not in fleet_json(redis)
            assert redis.cli("HGET", "callsctl:calls", "room") == "node-b"
            lost_calls = httpx.get(f"{b.api_url}/api/v1/fleet/lost",
                                   headers=admin_headers(tmp_path), timeout=5).json()["calls"]
            assert [(c["call"], c["node"]) for c in lost_calls] == [("room", "node-a")]
        finally:
            await rejoined.close()
    finally:
        await alice.close()
        await bob.close()


async def test_redis_killed_and_restarted_mid_call(tmp_path, redis, nodes):
    a, b = local_fleet(tmp_path, redis, nodes)
    alice = person(a, "room", "alice", 440)
    bob = person(b, "room", "bob", 660)
    late = person(b, "room", "late")
    stranger = person(b, "elsewhere", "stranger")
    onsite = person(a, "room", "onsite")
    try:
        await alice.join()
        await bob.join()
        await bob.wait_connected()
        await alice.wait_connected()
        redis.stop(signal.SIGKILL)
        before = (alice.frames_from[bob.session_id], bob.frames_from[alice.session_id])
        await asyncio.sleep(3)
        # The call goes on: both still hear each other.
        assert alice.frames_from[bob.session_id] > before[0] + 50
        assert bob.frames_from[alice.session_id] > before[1] + 50
        # Joins that need the fleet fail with a clear error...
        with pytest.raises(ParticipantError, match="fleet_unavailable: the fleet's Redis"):
            await stranger.join()
        with pytest.raises(ParticipantError, match="fleet_unavailable"):
            await late.join()
        # ...a join on the node hosting the call does not need Redis.
        await onsite.join()
        assert "unreachable" in a.log()
        # Redis comes back empty (no persistence): nodes register and re-claim.
        redis.start()
        assert await until(lambda: set(fleet_json(redis)) == {"node-a", "node-b"}, 10)
        assert await until(lambda: redis.cli("HGET", "callsctl:calls", "room") == "node-a", 5)
        late2 = person(b, "room", "late")
        await late2.join()
        assert sorted(p["user"] for p in late2.joined["participants"]) == \
            ["alice", "bob", "onsite"]
        await late2.close()
        assert a.process.poll() is None and b.process.poll() is None
    finally:
        for p in (alice, bob, late, stranger, onsite):
            await p.close()


def test_a_node_stops_cleanly_while_redis_is_down(tmp_path, redis, nodes):
    a, b = local_fleet(tmp_path, redis, nodes)
    redis.stop(signal.SIGKILL)
    time.sleep(1.5)  # both noticed
    # Exit code 0, not -9: neither waited on Redis until the fixture had to kill it.
    assert a.stop(signal.SIGTERM, timeout=20) == 0  # no calls: drained at once
    assert b.stop(signal.SIGINT, timeout=20) == 0
    assert "Redis at redis://127.0.0.1" in a.log() and "unreachable" in a.log()
