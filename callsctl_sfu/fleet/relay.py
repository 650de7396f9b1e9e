"""Signaling relay: a /ws client whose call lives on another node talks to it through us.

The client keeps its one WebSocket to whichever node the load balancer chose.
When its join (or reconnect) names a call hosted elsewhere, this node opens a
WebSocket to the host's own /ws with the client's token plus the fleet secret
(which tells the host "host it here, do not relay again"), sends the join and
from then on copies frames both ways unchanged. The host answers with its own
ICE candidates, so media goes straight from the client to the host; only the
small signaling messages take the extra hop. Frames the client sends are still
rate-limited here (SignalingConnection.admit) before they are forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

import aiohttp

from callsctl_sfu import events
from callsctl_sfu.errors import CallsctlError

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("callsctl_sfu.fleet.relay")

FLEET_HEADER = "X-Callsctl-Fleet"
FROM_HEADER = "X-Callsctl-Relay-From"
CONNECT_TIMEOUT_S = 5.0
# Close code for the client when the hosting node's connection ends (RFC 6455 §7.4.1
# 1012 "service restart": the client should reconnect).
CLOSE_HOST_GONE = 1012


class RelayError(CallsctlError):
    """The hosting node could not be reached; the message says which and why."""
    code = "host_unreachable"


def ws_url(api_url: str, token: str) -> str:
    base = api_url.rstrip("/")
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?token={token}"


class Relay:
    """One client's signaling, proxied to the node that hosts its call."""

    def __init__(self, client: web.WebSocketResponse, host_id: str) -> None:
        self.client = client
        self.host_id = host_id
        self._session: aiohttp.ClientSession | None = None
        self._upstream: aiohttp.ClientWebSocketResponse | None = None
        self._pump: asyncio.Task[None] | None = None
        self.frames_up = 0
        self.frames_down = 0

    async def open(self, api_url: str, token: str, secret: str, from_node: str) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S))
        try:
            self._upstream = await self._session.ws_connect(
                ws_url(api_url, token), heartbeat=15, max_msg_size=1024 * 1024,
                headers={FLEET_HEADER: secret, FROM_HEADER: from_node})
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._session.close()
            raise RelayError(f"node {self.host_id} that hosts this call cannot be reached "
                             f"at {api_url} ({exc.__class__.__name__}: {exc})") from None
        self._pump = asyncio.create_task(self._down(), name=f"relay-from-{self.host_id}")

    async def forward(self, raw: str) -> None:
        """A client frame, to the host unchanged."""
        if self._upstream is None or self._upstream.closed:
            return
        self.frames_up += 1
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._upstream.send_str(raw)

    async def _down(self) -> None:
        """Host frames to the client; when the host goes, the client is told and closed."""
        assert self._upstream is not None
        try:
            async for frame in self._upstream:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                self.frames_down += 1
                if self.client.closed:
                    break
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.client.send_str(frame.data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the host vanished mid-frame: same as a close
            log.info("relay to %s ended: %s", self.host_id, exc)
        if not self.client.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.client.send_str(json.dumps(events.Error(
                    code="host_lost",
                    message=f"the connection to node {self.host_id}, which hosts this "
                            "call, ended; reconnect to rejoin").wire()))
                await self.client.close(code=CLOSE_HOST_GONE, message=b"host node gone")

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._upstream is not None:
            with contextlib.suppress(Exception):
                await self._upstream.close()
        if self._session is not None:
            await self._session.close()
