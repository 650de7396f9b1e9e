"""GET /turn-credentials: fresh ICE servers (with TURN REST credentials) for a joined user.

Clients get the same list in `joined.ice_servers`; this endpoint lets a client
that stays in a call longer than the credentials live (turn_credentials_expiration_minutes)
fetch new ones, and lets scripts and `callsctl check` see exactly what clients
receive. It is authenticated like /ws, with a join token (`?token=` or
`Authorization: Bearer`): TURN credentials let their holder relay traffic, so
they go only to people admitted to a call, and the token's user is the
`<user>` part of the TURN username, so coturn's logs name who relayed.

The body is a JSON list of RTCIceServer objects (W3C webrtc-pc §4.2.2), as
Mattermost Calls' endpoint of the same name returns, usable as-is as a
RTCPeerConnection's `iceServers`.
"""

from __future__ import annotations

from aiohttp import web

from callsctl_sfu.api.appkeys import CONFIG, JWT_SECRET
from callsctl_sfu.api.signaling import _token_from
from callsctl_sfu.iceconfig import client_ice_servers
from callsctl_sfu.tokens import TokenError, verify_token


async def turn_credentials(request: web.Request) -> web.Response:
    try:
        grant = verify_token(request.app[JWT_SECRET], _token_from(request))
    except TokenError as exc:
        return web.json_response({"error": f"unauthorized: {exc}", "status": 401,
                                  "path": request.path}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
    servers = client_ice_servers(request.app[CONFIG], grant.user)
    return web.json_response(servers, headers={"Cache-Control": "no-store"})


def add_turn_routes(app: web.Application) -> None:
    app.router.add_get("/turn-credentials", turn_credentials)
