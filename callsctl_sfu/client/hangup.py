"""Ending a scripted client's call: the same steps for every client callsctl runs.

The participant (`check webrtc`, tests), the load generator's participants, the
recorder and the captions worker each hold a signaling websocket, an aiortc peer
connection, background tasks and sometimes an HTTP session. Closing them is one
sequence, in this order so that nothing keeps sending into a closed socket, and
it never raises: a client that is going away has nobody to report to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

PEER_CLOSE_TIMEOUT_S = 5.0  # aiortc's close waits for DTLS/SCTP; a dead peer must not hang us


async def hang_up(tasks: Iterable[asyncio.Task[Any]], pc: Any, ws: Any, http: Any = None,
                  say_leave: Callable[[dict[str, Any]], Awaitable[Any]] | None = None) -> None:
    """Say `leave` (when given a sender), stop the tasks, close the peer, the socket, HTTP."""
    if say_leave is not None:
        with contextlib.suppress(Exception):
            await say_leave({"type": "leave"})
    for task in tasks:
        task.cancel()
    if pc is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), PEER_CLOSE_TIMEOUT_S)
        # Freed by reference counting, not left in cycles for the collector (as the server's
        # peers are: aiortc_bridge.release_listeners).
        from callsctl_sfu.rtc import aiortc_bridge  # loaded with aiortc, which made `pc`

        with contextlib.suppress(Exception):
            aiortc_bridge.release_listeners(pc)
    if ws is not None:
        with contextlib.suppress(Exception):
            await ws.close()
    if http is not None:
        with contextlib.suppress(Exception):
            await http.close()
