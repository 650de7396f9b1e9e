"""Node registration in Redis: who is in the fleet, where it listens, how loaded it is.

Each node writes one key, `<prefix>node:<id>`, a JSON document with a short TTL
(NODE_TTL_S) and rewrites it every REFRESH_S. A node that dies stops
refreshing; its key expires and every other node stops counting on it
(placement skips it, the reaper ends its calls). This is how the Calls plugin
treats an rtcd host that stops answering, and how LiveKit keeps node stats
fresh in Redis.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

PREFIX = "callsctl:"
NODE_TTL_S = 5
REFRESH_S = 1.0
# A node whose stats are older than this is not chosen for a new call.
FRESH_S = 5.0
# What a Redis that is down, slow or refusing looks like to redis-py's asyncio client.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
ACTIVE = "active"
DRAINING = "draining"


def node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def drain_key(node_id: str) -> str:
    """Set by `callsctl fleet drain`; the node reads it on its next refresh."""
    return f"{PREFIX}drain:{node_id}"


@dataclass
class NodeInfo:
    """What one node tells the fleet about itself (the JSON in its registry key)."""

    node_id: str
    api_url: str
    media_host: str
    media_port: int
    media_tcp_port: int | None
    version: str
    state: str = ACTIVE
    cpu_load: float = 0.0  # this node's process CPU, percent of one core
    system_cpu: float = 0.0  # the machine's CPU, percent (rtcd's /system cpu_load)
    sessions: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0
    updated_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> NodeInfo | None:
        try:
            data = json.loads(raw)
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, TypeError):
            return None

    def fresh(self, now: float | None = None) -> bool:
        return (now or time.time()) - self.updated_at <= FRESH_S

    def public(self) -> dict[str, Any]:
        """The row `callsctl fleet list --json` prints."""
        out = asdict(self)
        out["calls"] = len(self.calls)
        out["call_ids"] = [c.get("call") for c in self.calls]
        return out


async def register(redis: Redis, info: NodeInfo) -> None:
    info.updated_at = time.time()
    await redis.set(node_key(info.node_id), info.to_json(), ex=NODE_TTL_S)


async def unregister(redis: Redis, node_id: str) -> None:
    await redis.delete(node_key(node_id), drain_key(node_id))


async def list_nodes(redis: Redis) -> list[NodeInfo]:
    """Every registered node, sorted by id (SCAN: a fleet has few nodes)."""
    keys = [key async for key in redis.scan_iter(match=node_key("*"), count=100)]
    if not keys:
        return []
    values = await redis.mget(keys)
    nodes = [NodeInfo.from_json(v) for v in values if v is not None]
    return sorted((n for n in nodes if n is not None), key=lambda n: n.node_id)


async def request_drain(redis: Redis, node_id: str) -> bool:
    """Ask a node to drain; False when no such node is registered."""
    if not await redis.exists(node_key(node_id)):
        return False
    await redis.set(drain_key(node_id), str(time.time()), ex=24 * 3600)
    return True


async def drain_requested(redis: Redis, node_id: str) -> bool:
    return bool(await redis.exists(drain_key(node_id)))
