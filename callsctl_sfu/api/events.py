"""GET /api/v1/events: every call event as Server-Sent Events, for live tools.

Each event is one SSE message: `event: <type>` and `data: <json>` where the
JSON always has "call" (null for server-wide ones such as `stats`), so a TUI
can follow every call over one connection, or one call with `?call=ID`.

Fan-out never blocks the call: publish() is synchronous and puts into each
subscriber's bounded queue; a subscriber that does not keep up loses its oldest
events (counted in callsctl_events_dropped_total) rather than growing memory or
slowing participants down. A comment line every 15 s keeps proxies from
closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from aiohttp import web

log = logging.getLogger("callsctl_sfu.api.events")

QUEUE_SIZE = 1000
KEEPALIVE_S = 15.0
_CLOSE = object()


class Subscriber:
    def __init__(self, call: str | None, types: set[str] | None) -> None:
        self.call = call
        self.types = types
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)

    def wants(self, event: dict[str, Any]) -> bool:
        if self.call is not None and event.get("call") not in (self.call, None):
            return False
        return self.types is None or event.get("type") in self.types


class EventHub:
    """Subscribers of the event stream and the synchronous publish() that feeds them."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.published = 0
        self.dropped = 0
        self.closed = False

    def publish(self, event: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        self.published += 1
        event.setdefault("ts", time.time())
        for subscriber in list(self.subscribers):
            if not subscriber.wants(event):
                continue
            queue = subscriber.queue
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    def close(self) -> None:
        """End every stream (server shutdown) so HTTP cleanup does not wait for them."""
        self.closed = True
        for subscriber in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueEmpty):
                while subscriber.queue.full():
                    subscriber.queue.get_nowait()
            subscriber.queue.put_nowait(_CLOSE)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The SSE endpoint. Optional filters: ?call=ID, ?types=a,b."""
        call = request.query.get("call") or None
        types_arg = request.query.get("types")
        types = {t for t in types_arg.split(",") if t} if types_arg else None
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        subscriber = Subscriber(call, types)
        self.subscribers.add(subscriber)
        try:
            await response.write(b"retry: 2000\n: callsctl event stream\n\n")
            while not self.closed:
                try:
                    event = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if event is _CLOSE:
                    break
                await response.write(format_sse(event))
        except ConnectionResetError:
            pass  # the client went away: nothing to report
        finally:
            self.subscribers.discard(subscriber)
        return response


def format_sse(event: dict[str, Any]) -> bytes:
    """One SSE message; the type is sanitised so it cannot inject lines."""
    kind = str(event.get("type", "message")).replace("\n", " ").replace("\r", " ")
    data = json.dumps(event, separators=(",", ":"), default=str)
    return f"event: {kind}\ndata: {data}\n\n".encode()
