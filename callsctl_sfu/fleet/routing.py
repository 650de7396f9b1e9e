"""Where a join goes: hosted here, or relayed to the node that hosts its call.

api/signaling.py gives every /ws connection of a fleet node a router: at the
connection's first `join` (or `reconnect`) it decides. A call hosted here
joins here without asking Redis; otherwise the call's host is read from the
placement map (or claimed for the policy's choice, placement.py), and a
remote host gets the connection relayed (relay.py). A connection that
another node relays to us (it carries the fleet secret) is hosted here or
refused, never relayed again, so a relay cannot loop.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

from callsctl_sfu.calls.manager import JoinRefused
from callsctl_sfu.fleet import placement, registry
from callsctl_sfu.fleet.registry import ACTIVE, REDIS_ERRORS
from callsctl_sfu.fleet.relay import FLEET_HEADER, FROM_HEADER, Relay, RelayError

if TYPE_CHECKING:
    from aiohttp import web

    from callsctl_sfu.api.signaling import SignalingConnection
    from callsctl_sfu.fleet.node import FleetNode

log = logging.getLogger("callsctl_sfu.fleet.routing")


class JoinRouter:
    """The join-time decision for one node's /ws connections."""

    def __init__(self, node: FleetNode) -> None:
        self.node = node

    async def accept_ws(self, request: web.Request, connection: SignalingConnection) -> bool:
        """Give the connection its router; refuse a relay that lacks the fleet secret."""
        supplied = request.headers.get(FLEET_HEADER)
        if supplied is None:
            connection.router = self.route
            return True
        if not hmac.compare_digest(supplied.encode(), self.node.secret.encode()):
            await connection.error("unauthorized", "fleet secret rejected: every node needs "
                                                   "the same fleet_secret")
            await connection.ws.close(code=4001, message=b"unauthorized")
            return False
        self.node.relayed_in += 1
        log.debug("relayed connection from node %s", request.headers.get(FROM_HEADER))
        connection.router = self.route_relayed
        return True

    async def route(self, connection: SignalingConnection, message: dict[str, Any],
                    raw: str) -> bool:
        """A client's join/reconnect: host it here (False) or relay it (True, handled)."""
        call_id = connection.grant.call
        if message.get("call", call_id) != call_id:
            return False  # the local handler explains the mismatch
        manager = self.node.server.manager
        if manager is not None and call_id in manager.calls:
            return False  # hosted here: no Redis needed
        try:
            host = await self.host_for(call_id, reconnect=message["type"] == "reconnect")
        except JoinRefused as exc:
            await connection.error(exc.code, exc.message)
            return True
        if host == self.node.node_id:
            return False
        try:
            node = await self.node.node(host)
        except REDIS_ERRORS as exc:
            await connection.error("fleet_unavailable", self.node.redis_down_message(exc))
            return True
        if node is None:
            await connection.error("host_unreachable", f"node {host}, which hosts call "
                                   f"{call_id!r}, is not registered; try again shortly")
            return True
        relay = Relay(connection.ws, host)
        try:
            await relay.open(node.api_url, connection.token, self.node.secret, self.node.node_id)
        except RelayError as exc:
            await connection.error(exc.code, f"{exc}; try again shortly")
            return True
        connection.relay = relay
        self.node.relayed_out += 1
        await relay.forward(raw)
        return True

    async def route_relayed(self, connection: SignalingConnection, message: dict[str, Any],
                            raw: str) -> bool:
        """A join relayed by another node: host it here, never relay it again."""
        call_id = connection.grant.call
        manager = self.node.server.manager
        if message.get("call", call_id) != call_id or (manager and call_id in manager.calls):
            return False
        if self.node.state != ACTIVE and message["type"] == "join":
            await connection.error("node_draining", f"node {self.node.node_id} is draining and "
                                   "takes no new calls; join again")
            return True
        try:
            host = await placement.claim(self.node.redis, call_id, self.node.node_id)
        except REDIS_ERRORS as exc:
            await connection.error("fleet_unavailable", self.node.redis_down_message(exc))
            return True
        if host != self.node.node_id:
            await connection.error("call_moved", f"call {call_id!r} is hosted by node {host}; "
                                   "join again")
            return True
        return False

    async def host_for(self, call_id: str, reconnect: bool = False) -> str:
        """The call's host, claiming it for the policy's choice when it has none."""
        try:
            for _attempt in range(3):
                host = await placement.host_of(self.node.redis, call_id)
                if host is not None and await self.node.node(host) is None:
                    # Its node expired and the reaper has not run yet: release it now.
                    if await placement.release(self.node.redis, call_id, host):
                        await placement.record_lost(self.node.redis, call_id, host,
                                                    f"host node {host} was lost")
                    continue
                if host is not None:
                    return host
                if reconnect:
                    raise JoinRefused("unknown_session", "no such session to reconnect to "
                                                         "(its call ended); join again")
                local = self.node.nodes.get(self.node.node_id)
                if local is not None:
                    local.state = self.node.state
                placed = await placement.placements(self.node.redis)
                # A new call is rare next to its packets: read the registry fresh for it.
                fleet = await registry.list_nodes(self.node.redis)
                for info in fleet:
                    if info.node_id == self.node.node_id:
                        info.state = self.node.state
                        local = info
                try:
                    chosen = placement.choose(self.node.config.cluster_policy, fleet, local, placed)
                except placement.NoNodeAvailable as exc:
                    raise JoinRefused(exc.code, f"{exc}; try again shortly") from None
                return await placement.claim(self.node.redis, call_id, chosen.node_id)
        except REDIS_ERRORS as exc:
            raise JoinRefused("fleet_unavailable", self.node.redis_down_message(exc)) from None
        raise JoinRefused("no_node", "could not place the call; try again shortly")
