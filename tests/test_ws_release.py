"""A closed signaling WebSocket is freed by reference counting (api/wsrelease.py).

aiohttp keeps the exception that ended a connection with its traceback, whose
frames hold the response, and a heartbeat callback on the protocol: reference
cycles that outlived every departed session until the collector ran. Real
aiohttp, a real server socket on loopback, a client that hangs up without a
close handshake.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref

import aiohttp
from aiohttp import web

from callsctl_sfu.api.wsrelease import drop_traceback, release_websocket


async def _serve_one(release: bool) -> weakref.ref:
    """Serve one WebSocket that the client drops; a weak reference to the response."""
    done: asyncio.Future[weakref.ref] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=15)
        await ws.prepare(request)
        async for _frame in ws:
            pass
        if release:
            release_websocket(ws, request)
        done.set_result(weakref.ref(ws))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as http:
            client = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            await client.send_str("hello")
            # Hang up as a closed tab does: the TCP connection ends, no close frame.
            client._response.connection.transport.abort()  # type: ignore[union-attr]
            return await asyncio.wait_for(done, 5)
    finally:
        await runner.cleanup()


async def test_a_dropped_websocket_is_freed_without_the_cyclic_collector() -> None:
    gc.disable()  # only reference counting may free it
    try:
        released = await _serve_one(release=True)
        await asyncio.sleep(0.1)
        assert released() is None, "the released WebSocketResponse is still alive"
        kept = await _serve_one(release=False)
        await asyncio.sleep(0.1)
        # The control: without the release aiohttp's cycles keep it (until a collection).
        assert kept() is not None
    finally:
        gc.enable()
    gc.collect()
    assert kept() is None


def test_drop_traceback_follows_the_chain_and_stops_on_loops() -> None:
    def fail() -> None:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner

    try:
        fail()
    except ValueError as exc:
        error = exc
    assert error.__traceback__ is not None and error.__cause__.__traceback__ is not None
    error.__cause__.__context__ = error  # a loop in the chain must not hang
    drop_traceback(error)
    assert error.__traceback__ is None and error.__cause__.__traceback__ is None
    drop_traceback(None)
