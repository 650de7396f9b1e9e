"""Which node hosts a call: one atomic claim per call, two policies, and a reaper.

The call -> node map is one Redis hash, `<prefix>calls`. The first join of a
call claims it with a Lua script that reads and sets in one step (Redis runs a
script atomically), so two nodes racing for the same new call always read the
same winner: a call never has two hosts. LiveKit once assigned a room to two
nodes through a non-atomic read-then-write; the claim here is the fix it
adopted (SET NX semantics, see the Redis docs for EVAL and HSETNX).

A claim is released only by its owner (compare-and-delete, also a script) when
the call ends there, or by the reaper when the owner's registration expired.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

from redis.asyncio import Redis

from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.fleet.registry import ACTIVE, PREFIX, NodeInfo

CALLS_KEY = f"{PREFIX}calls"
ENDED_KEY = f"{PREFIX}ended"  # calls the fleet ended for a lost node (newest first)
ENDED_KEEP = 1000

# KEYS[1] = calls hash; ARGV = call id, candidate node. Returns the host.
CLAIM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then return current end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"""
# KEYS[1] = calls hash; ARGV = call id, owner. 1 when the owner's claim was removed.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class NoNodeAvailable(CallsctlError):
    """No active node with fresh stats can take a new call."""
    code = "no_node"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def claim(redis: Redis, call_id: str, candidate: str) -> str:
    """Make `candidate` the host unless the call has one; return the host."""
    host = await redis.eval(CLAIM, 1, CALLS_KEY, call_id, candidate)
    return _text(host) or candidate


async def host_of(redis: Redis, call_id: str) -> str | None:
    return _text(await redis.hget(CALLS_KEY, call_id))


async def release(redis: Redis, call_id: str, owner: str) -> bool:
    """Drop the claim if `owner` still holds it (a call ended on its host)."""
    return bool(await redis.eval(RELEASE, 1, CALLS_KEY, call_id, owner))


async def placements(redis: Redis) -> dict[str, str]:
    raw = await redis.hgetall(CALLS_KEY)
    return {_text(k) or "": _text(v) or "" for k, v in raw.items()}


def eligible(nodes: list[NodeInfo], now: float | None = None) -> list[NodeInfo]:
    now = time.time() if now is None else now
    return [n for n in nodes if n.state == ACTIVE and n.fresh(now)]


def choose(policy: str, nodes: list[NodeInfo], local: NodeInfo | None,
           placed: dict[str, str]) -> NodeInfo:
    """The node a new call should go to.

    least-loaded: lowest CPU (in 10 % steps, so noise does not decide), then
    fewest calls placed on it (read from the claims, so it counts calls claimed
    a moment ago that the node's own stats do not show yet), then fewest
    sessions, then chance. local: this node, unless it cannot take calls.
    """
    candidates = eligible(nodes)
    if policy == "local" and local is not None and local.state == ACTIVE:
        return local
    if not candidates:
        raise NoNodeAvailable("no active node in the fleet can take a new call")
    per_node = Counter(placed.values())
    return min(candidates, key=lambda n: (int(n.cpu_load // 10), per_node[n.node_id],
                                          n.sessions, random.random()))


async def record_lost(redis: Redis, call_id: str, node_id: str, reason: str) -> None:
    entry = json.dumps({"call": call_id, "node": node_id, "ended_at": time.time(),
                        "reason": reason})
    await redis.lpush(ENDED_KEY, entry)
    await redis.ltrim(ENDED_KEY, 0, ENDED_KEEP - 1)


async def lost_calls(redis: Redis, limit: int = 50) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in await redis.lrange(ENDED_KEY, 0, limit - 1)]


async def reap(redis: Redis, live: set[str]) -> list[tuple[str, str]]:
    """Release the claims of nodes that are no longer registered; end those calls.

    Every node runs this; the compare-and-delete makes exactly one of them
    record each lost call.
    """
    reaped = []
    for call_id, node_id in (await placements(redis)).items():
        if node_id in live:
            continue
        if await release(redis, call_id, node_id):
            await record_lost(redis, call_id, node_id,
                              f"host node {node_id} was lost (its registration expired)")
            reaped.append((call_id, node_id))
    return reaped
