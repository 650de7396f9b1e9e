"""The /ws handler keeps nothing of a handled frame while it waits for the next one.

A client that has joined usually goes quiet for the rest of the call; whatever
the handler still has bound from its last frame (an SDP answer: kilobytes) is
kept per session all call long (docs/performance-memory.md, "Second pass").
The real handler runs in-process on loopback (aiohttp's TestServer); the test
reads the handler's own local variables while it waits.
"""

from __future__ import annotations

import asyncio
import json
from types import CoroutineType, SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from callsctl_sfu.api.appkeys import CONFIG, JWT_SECRET, MANAGER
from callsctl_sfu.api.signaling import websocket_handler
from callsctl_sfu.tokens import issue_token

pytestmark = [pytest.mark.timeout(60),
              # The server's own app uses string keys as well (server.py).
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]

SECRET = b"s" * 32


def _waiting_handlers() -> list[dict[str, Any]]:
    """The local variables of every websocket_handler coroutine now suspended."""
    found = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        while isinstance(coro, CoroutineType):
            if coro.cr_code.co_name == "websocket_handler" and coro.cr_frame is not None:
                found.append(dict(coro.cr_frame.f_locals))
            coro = coro.cr_await
    return found


async def test_the_handler_keeps_no_handled_frame_while_waiting() -> None:
    app = web.Application()
    app[JWT_SECRET] = SECRET
    app[MANAGER] = None  # a ping before join needs no call manager
    app[CONFIG] = SimpleNamespace(max_message_size=65536, ws_rate_limit=0.0,
                                    ws_rate_burst=0.0)
    app.router.add_get("/ws", websocket_handler)
    marker = "m" * 4000  # as big as an SDP; pings may carry any extra field
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        token = issue_token(SECRET, "call", "alice", 60)
        ws = await http.ws_connect(server.make_url("/ws").with_query(token=token))
        try:
            await ws.send_str(json.dumps({"type": "ping", "pad": marker}))
            reply = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            assert reply["type"] == "pong"
            handlers = _waiting_handlers()
            assert len(handlers) == 1, "the handler is not waiting for the next frame"
            kept = [name for name, value in handlers[0].items() if marker in repr(value)]
            assert kept == [], f"the handled frame is still held by {kept}"
        finally:
            await ws.close()
