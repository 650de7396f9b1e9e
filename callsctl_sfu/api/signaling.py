"""The `/ws` endpoint: authenticate, then turn JSON frames into CallManager actions.

A token is checked before anything else; a missing, forged or expired token
gets an `error` event and the socket is closed, never a join. After that every
frame is validated (api/protocol.py) and a bad one costs the sender an `error`
event, not the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from callsctl_sfu.api.protocol import BEFORE_JOIN, ProtocolError, parse_message
from callsctl_sfu.api.ratelimit import TokenBucket
from callsctl_sfu.calls.manager import CallManager, JoinRefused
from callsctl_sfu.iceconfig import client_ice_servers
from callsctl_sfu.tokens import JoinGrant, TokenError, verify_token

log = logging.getLogger("callsctl_sfu.api.ws")

# Frames above this are refused by aiohttp itself (close 1009); below it, frames
# over config.max_message_size get an error event and the connection stays.
HARD_FRAME_LIMIT = 1024 * 1024
CLOSE_UNAUTHORIZED = 4001


def _token_from(request: web.Request) -> str | None:
    token = request.query.get("token")
    if token:
        return token
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


class SignalingConnection:
    """One WebSocket: its grant, its session once joined, and an ordered send path."""

    def __init__(self, ws: web.WebSocketResponse, grant: JoinGrant, manager: CallManager,
                 max_size: int, rate: float = 0.0, burst: float = 0.0,
                 stats: dict[str, Any] | None = None) -> None:
        self.ws = ws
        self.grant = grant
        self.manager = manager
        self.max_size = max_size
        self.session_id: str | None = None
        self._send_lock = asyncio.Lock()
        # rate <= 0 disables the limit (embedding, tests of the handler alone).
        self.bucket = TokenBucket(rate, burst) if rate > 0 else None
        self.stats = stats

    def _count(self, key: str, kind: str) -> None:
        """rtcd_ws_messages_total by direction and type (see metrics.py)."""
        counter = self.stats.get(key) if self.stats is not None else None
        if counter is not None:
            counter[kind] += 1

    async def admit(self) -> bool:
        """Token bucket per connection; over the limit, drop with a rare error event."""
        if self.bucket is None or self.bucket.take():
            return True
        if self.stats is not None:
            self.stats["rate_limited"] = self.stats.get("rate_limited", 0) + 1
        if self.bucket.should_notify():
            await self.error("rate_limited", f"more than {self.bucket.rate:g} messages per "
                                             f"second (burst {self.bucket.burst:g}): messages "
                                             "are being dropped; slow down")
        return False

    async def send(self, event: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        self._count("messages_out", str(event.get("type")))
        # A client that went away mid-send is detached when the read loop ends;
        # nobody is left to tell, so the error is not worth a traceback.
        async with self._send_lock:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(json.dumps(event))

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    async def handle(self, raw: str) -> None:
        if not await self.admit():
            return
        try:
            message = parse_message(raw, self.max_size)
        except ProtocolError as exc:
            self._count("messages_in", "invalid")
            await self.send(exc.event())
            return
        kind = message["type"]
        self._count("messages_in", kind)
        if self.session_id is None and kind not in BEFORE_JOIN:
            await self.error("not_joined", f"{kind}: send join first")
            return
        handler = getattr(self, f"on_{kind}")
        try:
            await handler(message)
        except JoinRefused as exc:
            await self.error(exc.code, exc.message)
        except KeyError:
            # The session vanished between validation and action (timeout, removal).
            self.session_id = None
            await self.error("not_joined", f"{kind}: you are no longer in the call")

    async def on_join(self, message: dict[str, Any]) -> None:
        if self.session_id is not None:
            await self.error("already_joined", "join: this connection has already joined")
            return
        if message["call"] != self.grant.call:
            await self.error("forbidden", f"join: the token admits to call "
                                          f"{self.grant.call!r}, not {message['call']!r}")
            return
        session = await self.manager.join(self.grant.call, self.grant.user,
                                          message.get("name") or self.grant.user, self.send,
                                          recorder=self.grant.role in ("recorder", "captions"),
                                          role=self.grant.role or "")
        self.session_id = session.session_id

    async def on_reconnect(self, message: dict[str, Any]) -> None:
        session = self.manager.reattach(message["session_id"], self.grant.user,
                                        self.grant.call, self.send)
        self.session_id = session.session_id
        call = self.manager.calls[session.call_id]
        await self.send({"type": "joined", "session_id": session.session_id,
                         "call": session.call_id, "host": call.host, "reconnected": True,
                         "participants": [s.public() for s in call.others(session.session_id)],
                         "recording": call.recording, "captions": call.captions,
                         "ice_servers": client_ice_servers(self.manager.config,
                                                           self.grant.user)})

    async def on_leave(self, _message: dict[str, Any]) -> None:
        session_id, self.session_id = self.session_id, None
        await self.manager.leave(session_id, "left")  # type: ignore[arg-type]

    async def on_signal(self, message: dict[str, Any]) -> None:
        self.manager.signal(self.session_id, message["data"])  # type: ignore[arg-type]

    async def on_mute(self, _m: dict[str, Any]) -> None:
        await self.manager.set_state(self.session_id, "muted", True)  # type: ignore[arg-type]

    async def on_unmute(self, _m: dict[str, Any]) -> None:
        await self.manager.set_state(self.session_id, "muted", False)  # type: ignore[arg-type]

    async def on_raise_hand(self, _m: dict[str, Any]) -> None:
        await self.manager.set_state(self.session_id, "hand", True)  # type: ignore[arg-type]

    async def on_lower_hand(self, _m: dict[str, Any]) -> None:
        await self.manager.set_state(self.session_id, "hand", False)  # type: ignore[arg-type]

    async def on_react(self, message: dict[str, Any]) -> None:
        await self.manager.react(self.session_id, message["emoji"])  # type: ignore[arg-type]

    async def on_ping(self, _m: dict[str, Any]) -> None:
        await self.send({"type": "pong"})

    async def on_screen_on(self, message: dict[str, Any]) -> None:
        await self.manager.set_screen(self.session_id, True,  # type: ignore[arg-type]
                                      message.get("stream_id"))

    async def on_screen_off(self, _m: dict[str, Any]) -> None:
        await self.manager.set_screen(self.session_id, False)  # type: ignore[arg-type]

    async def on_record_start(self, _m: dict[str, Any]) -> None:
        await self.manager.record(self.session_id, True)  # type: ignore[arg-type]

    async def on_record_stop(self, _m: dict[str, Any]) -> None:
        await self.manager.record(self.session_id, False)  # type: ignore[arg-type]

    async def on_captions_start(self, _m: dict[str, Any]) -> None:
        await self.manager.captions(self.session_id, True)  # type: ignore[arg-type]

    async def on_captions_stop(self, _m: dict[str, Any]) -> None:
        await self.manager.captions(self.session_id, False)  # type: ignore[arg-type]

    async def on_caption(self, message: dict[str, Any]) -> None:
        await self.manager.captions_message(self.session_id, message)  # type: ignore[arg-type]

    async def on_captions_stats(self, message: dict[str, Any]) -> None:
        await self.manager.captions_message(self.session_id, message)  # type: ignore[arg-type]

    async def on_video_on(self, _m: dict[str, Any]) -> None:
        await self.manager.set_state(self.session_id, "video", True)  # type: ignore[arg-type]

    async def on_video_off(self, _m: dict[str, Any]) -> None:
        await self.manager.set_state(self.session_id, "video", False)  # type: ignore[arg-type]


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    manager: CallManager = request.app["manager"]
    config = request.app["config"]
    ws = web.WebSocketResponse(heartbeat=15, max_msg_size=HARD_FRAME_LIMIT)
    await ws.prepare(request)
    metrics = request.app.get("ws_stats")
    try:
        grant = verify_token(request.app["jwt_secret"], _token_from(request))
    except TokenError as exc:
        await ws.send_str(json.dumps({"type": "error", "code": "unauthorized",
                                      "message": str(exc)}))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return ws
    connection = SignalingConnection(ws, grant, manager, config.max_message_size,
                                     config.ws_rate_limit, config.ws_rate_burst, metrics)
    if metrics is not None:
        metrics["connections"] += 1
        metrics["active"] = metrics.get("active", 0) + 1
    try:
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                await connection.handle(frame.data)
            elif frame.type == WSMsgType.BINARY and await connection.admit():
                await connection.error("bad_message", "binary frames are not part of the "
                                                      "protocol; send JSON text")
            elif frame.type == WSMsgType.ERROR:
                break
    except asyncio.CancelledError:
        raise
    except Exception:  # never let one connection's bug take the server down
        log.exception("signaling connection failed")
    finally:
        if metrics is not None:
            metrics["active"] = metrics.get("active", 1) - 1
        if connection.session_id is not None:
            manager.detach(connection.session_id)
    return ws
