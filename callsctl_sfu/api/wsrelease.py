"""Let a closed WebSocket be freed by reference counting, not by the cyclic collector.

Why: when a client goes away without a clean close handshake (a tab closed, a
network dropped, a load generator hanging up), aiohttp keeps the exception
that ended the connection: the WebSocketResponse keeps the error its closing
frame met on the dying transport (`exception()`), and its frame reader keeps
the end-of-stream it raised. Each exception's traceback holds the frames that
raised it, and those frames hold the response, its reader, the request, the
transport and the socket as locals: reference cycles of about 45 objects per
connection (bench/RESULTS.md, "Departed sessions' reference cycles"). Reference
counting cannot free a cycle; only a collection that walks the generation
they sit in can, and while a big call fills the server keeps established
objects out of the collector's view (gcpolicy.py): a departed session's
cycles then wait for the thaw, the longest stall the server has (582 ms at
1000 sessions), and they are the reason it must thaw at all.

A third cycle needs no error: with a heartbeat, the connection's protocol
keeps the response's data-received callback (a bound method, so the
response) after the connection is lost, and the response keeps its request,
which keeps the protocol.

What: once the handler is done with the socket, the kept exceptions lose
their tracebacks (`__traceback__ = None`). The exception objects themselves
stay (what `exception()` reports is unchanged); the frames, no longer
reachable, are freed at once with everything they held. The protocol's
callback is dropped: the socket is closed, there is no heartbeat left to
reset. The reader and the callback are reached through aiohttp's private
attributes (`_reader`, `_data_received_cb`) with fallbacks: if a later aiohttp
renames them, only their share of the cycles comes back, which
tests/test_ws_release.py would report.
"""

from __future__ import annotations

from typing import Any


def drop_traceback(exc: BaseException | None) -> None:
    """Cut an exception (and the ones it chains to) from the frames that raised it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def release_websocket(ws: Any, request: Any) -> None:
    """Break the cycles a finished WebSocket keeps, so reference counting frees it."""
    drop_traceback(ws.exception())
    reader = getattr(ws, "_reader", None)
    exception = getattr(reader, "exception", None)
    if callable(exception):
        drop_traceback(exception())
    protocol = request.protocol
    if getattr(protocol, "_data_received_cb", None) is not None:
        protocol._data_received_cb = None
