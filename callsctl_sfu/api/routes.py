"""Routes on the API port: web client, /ws, /version, /healthz, /readyz."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from callsctl_sfu import __version__
from callsctl_sfu.api.appkeys import READINESS, SERVER_INFO, STATS
from callsctl_sfu.api.signaling import websocket_handler
from callsctl_sfu.api.turn import add_turn_routes

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# nginx's "client closed request": the status an access log shows for an answer
# that had no one left to go to.
CLIENT_CLOSED_REQUEST = 499

log = logging.getLogger("callsctl_sfu.api")


async def index(_request: web.Request) -> web.StreamResponse:
    page = WEB_DIR / "index.html"
    if not page.exists():
        return web.Response(text="callsctl web client is not installed", status=500)
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def version(request: web.Request) -> web.Response:
    info: dict[str, Any] = request.app[SERVER_INFO]()
    return web.json_response({"version": __version__, **info})


async def stats(request: web.Request) -> web.Response:
    """Raw counters of the media path (what bench/ and `callsctl tune` read)."""
    return web.json_response(request.app[STATS]())


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, reason = request.app[READINESS]()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn aiohttp's HTML error pages into JSON bodies scripts can read.

    A client that resets its connection before the answer is written (a load
    test's teardown, a browser tab closed mid-join: the /ws upgrade's 101 then
    meets a closing transport) is not an error of the server's: aiohttp would log
    it with a traceback; here it is a debug line and a 499 nobody receives.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason, "status": exc.status,
                                  "path": request.path}, status=exc.status)
    except ConnectionResetError as exc:
        log.debug("%s %s: the client went away before the answer (%s)",
                  request.method, request.path, exc)
        return web.Response(status=CLIENT_CLOSED_REQUEST)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/web/", WEB_DIR, show_index=False)
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/version", version)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_turn_routes(app)
