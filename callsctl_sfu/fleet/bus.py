"""Admin requests across the fleet: any node answers for every call.

GET /api/v1/calls on any node lists the calls of every node (read from the
registrations, at most REFRESH_S old), each with the node that hosts it. A
request about one call that this node does not host (show, end, mute,
make host, remove...) is forwarded over HTTP to the hosting node's API with
the caller's own Authorization header, so the admin key is checked here and
again on the host, plus the fleet secret, which stops the host from
forwarding it again. GET /api/v1/fleet/nodes and /api/v1/fleet/lost show
the registry and the calls the fleet ended because their host was lost.

The middleware sits inside admin_auth (api/admin.py): nothing here runs for
a request without the admin key.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from callsctl_sfu.api import paths
from callsctl_sfu.api.appkeys import FLEET
from callsctl_sfu.fleet import placement
from callsctl_sfu.fleet.relay import FLEET_HEADER, FROM_HEADER

if TYPE_CHECKING:
    from callsctl_sfu.fleet.node import FleetNode

CALL_PATH = re.compile(rf"^{re.escape(paths.CALLS)}/(?P<call>[^/]+)(/.*)?$")
FORWARD_TIMEOUT_S = 10.0


def _from_fleet(request: web.Request, node: FleetNode) -> bool:
    supplied = request.headers.get(FLEET_HEADER)
    return supplied is not None and hmac.compare_digest(supplied.encode(), node.secret.encode())


def fleet_middleware(node: FleetNode) -> Any:
    @web.middleware
    async def route(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(f"{paths.API}/") or _from_fleet(request, node):
            return await handler(request)
        if request.path == paths.CALLS and request.method == "GET":
            return await _list_calls(request, handler, node)
        match = CALL_PATH.match(request.path)
        if match is not None:
            call_id = match.group("call")
            manager = node.server.manager
            if manager is None or call_id not in manager.calls:
                target = await _host_node(node, call_id)
                if target is not None:
                    return await _forward(request, node, target)
        return await handler(request)

    return route


async def _host_node(node: FleetNode, call_id: str) -> Any:
    """The registered node hosting call_id when it is not this one, else None."""
    try:
        host = await placement.host_of(node.redis, call_id)
    except Exception:  # Redis away: answer from what this node knows
        return None
    if host is None or host == node.node_id:
        return None
    return node.nodes.get(host)


async def _list_calls(request: web.Request, handler: Any, node: FleetNode
                      ) -> web.StreamResponse:
    response = await handler(request)
    if not isinstance(response, web.Response) or response.status != 200 or response.text is None:
        return response
    local = json.loads(response.text)
    calls = [{**c, "node": node.node_id} for c in local.get("calls", [])]
    for other in node.nodes.values():
        if other.node_id != node.node_id:
            calls.extend({**c, "node": other.node_id} for c in other.calls)
    calls.sort(key=lambda c: c.get("started_at") or 0)
    return web.json_response({"calls": calls, "nodes": len(node.nodes) or 1,
                              "redis_up": node.redis_up})


async def _forward(request: web.Request, node: FleetNode, target: Any) -> web.StreamResponse:
    body = await request.read()
    headers = {FLEET_HEADER: node.secret, FROM_HEADER: node.node_id}
    for name in ("Authorization", "Content-Type"):
        if name in request.headers:
            headers[name] = request.headers[name]
    try:
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as session, \
                session.request(request.method, target.api_url + request.path_qs,
                                data=body or None, headers=headers) as upstream:
            payload = await upstream.read()
            return web.Response(body=payload, status=upstream.status,
                                content_type=upstream.content_type)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return web.json_response({
            "error": f"node {target.node_id}, which hosts this call, did not answer at "
                     f"{target.api_url} ({exc.__class__.__name__}); try again shortly",
            "status": 502}, status=502)


async def fleet_nodes(request: web.Request) -> web.Response:
    node: FleetNode = request.app[FLEET]
    return web.json_response({"node": node.node_id, "redis_up": node.redis_up,
                              "nodes": [n.public() for n in node.nodes.values()]})


async def fleet_lost(request: web.Request) -> web.Response:
    node: FleetNode = request.app[FLEET]
    try:
        lost = await placement.lost_calls(node.redis)
    except Exception as exc:
        return web.json_response({"error": node.redis_down_message(exc), "status": 503}, status=503)
    return web.json_response({"calls": lost})


async def fleet_media(request: web.Request) -> web.Response:
    """Unauthenticated, like /system: node ids, states and advertised media addresses.

    What `check all` probes. Clients see these addresses in ICE candidates anyway;
    API URLs, calls and counts stay behind the admin key.
    """
    node: FleetNode = request.app[FLEET]
    return web.json_response({"node": node.node_id, "nodes": [
        {"node_id": n.node_id, "state": n.state, "media_host": n.media_host,
         "media_port": n.media_port, "media_tcp_port": n.media_tcp_port}
        for n in node.nodes.values()]})


def add_fleet_routes(app: web.Application, node: FleetNode) -> None:
    """Before the app starts: the routing middleware (inside admin_auth) and routes."""
    app.middlewares.append(fleet_middleware(node))
    app.router.add_get("/fleet", fleet_media)
    app.router.add_get(paths.FLEET_NODES, fleet_nodes)
    app.router.add_get(paths.FLEET_LOST, fleet_lost)
