"""The `/ws` endpoint: authenticate, then turn JSON frames into CallManager actions.

A token is checked before anything else; a missing, forged or expired token
gets an `error` event and the socket is closed, never a join. After that every
frame is validated (api/protocol.py) and a bad one costs the sender an `error`
event, not the connection.

Events leave in order through one path per connection (`post`): while nothing
is queued for it, an event's frame is written straight to the connection's
transport, the same bytes for every receiver of a broadcast (api/wsframe.py,
calls/shared.py); otherwise, or when the client is not reading (the
transport's buffer is full), it queues behind the others and one writer task
per connection sends the queue with aiohttp's flow control. A broadcast to N
participants thus costs one encoding and N buffer writes, not N tasks. Signaling
frames are not compressed (permessage-deflate is not offered): deflating each
event per receiver would cost more CPU than the few kilobytes it saves, and a
compressed frame cannot be shared between receivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from callsctl_sfu import events
from callsctl_sfu.api.appkeys import CONFIG, FLEET, JWT_SECRET, MANAGER, WS_STATS
from callsctl_sfu.api.invite import mint_invite
from callsctl_sfu.api.protocol import BEFORE_JOIN, ProtocolError, parse_message
from callsctl_sfu.api.ratelimit import TokenBucket
from callsctl_sfu.api.wsframe import text_frame
from callsctl_sfu.api.wsrelease import release_websocket
from callsctl_sfu.calls.host import HostControlError, HostControls
from callsctl_sfu.calls.manager import CallManager, JoinRefused
from callsctl_sfu.calls.shared import SharedEvent
from callsctl_sfu.iceconfig import client_ice_servers
from callsctl_sfu.tasks import spawn
from callsctl_sfu.tokens import JoinGrant, TokenError, verify_token

log = logging.getLogger("callsctl_sfu.api.ws")

# Frames above this are refused by aiohttp itself (close 1009); below it, frames
# over config.max_message_size get an error event and the connection stays.
HARD_FRAME_LIMIT = 1024 * 1024
CLOSE_UNAUTHORIZED = 4001
# Above this many bytes unsent on a connection (a client not reading), events queue
# behind aiohttp's flow control instead of being written straight to the transport.
DIRECT_WRITE_LIMIT = 256 * 1024


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
                 stats: dict[str, Any] | None = None,
                 transport: asyncio.Transport | None = None,
                 secret: bytes | None = None) -> None:
        self.ws = ws
        # The server's token secret: only for links the host mints (on_invite).
        self.secret = secret
        # Direct frame writes need the connection's transport and an uncompressed stream.
        self._transport = transport if transport is not None and not ws.compress else None
        self._outbox: deque[str] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.grant = grant
        self.manager = manager
        self.max_size = max_size
        self.session_id: str | None = None
        # rate <= 0 disables the limit (embedding, tests of the handler alone).
        self.bucket = TokenBucket(rate, burst) if rate > 0 else None
        self.stats = stats
        # A fleet (callsctl_sfu/fleet/) routes a join to the call's host: `router` decides
        # at join/reconnect, and once it set `relay` every frame goes there unchanged.
        self.router: Any = None
        self.relay: Any = None
        self.token = ""  # the client's join token, which a relay presents to the host

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
        """The CallManager's EventSender: never waits for the network (see `post`)."""
        self.post(event)

    def post(self, event: dict[str, Any]) -> None:
        """Send an event after every event posted before it, without waiting."""
        if self.ws.closed:
            return
        self._count("messages_out", str(event.get("type")))
        shared = isinstance(event, SharedEvent)
        transport = self._transport
        if transport is not None and not self._outbox and self._writer is None and \
                not transport.is_closing() and \
                transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT:
            if shared:
                frame = event.frame  # type: ignore[attr-defined]
                if frame is None:
                    frame = event.frame = text_frame(event.text)  # type: ignore[attr-defined]
            else:
                frame = text_frame(json.dumps(event))
            transport.write(frame)
            return
        self._outbox.append(event.text if shared else json.dumps(event))  # type: ignore[attr-defined]
        if self._writer is None:
            self._writer = spawn(self._write_queued(), "ws-writer")

    async def _write_queued(self) -> None:
        """Send the queue in order with aiohttp's flow control (waits while the client lags)."""
        try:
            while self._outbox and not self.ws.closed:
                text = self._outbox.popleft()
                # A client that went away mid-send is detached when the read loop ends;
                # nobody is left to tell, so the error is not worth a traceback.
                with contextlib.suppress(ConnectionError):
                    await self.ws.send_str(text)
        finally:
            if self.ws.closed:
                self._outbox.clear()
            self._writer = None

    async def error(self, code: str, message: str) -> None:
        await self.send(events.Error(code=code, message=message).wire())

    async def handle(self, raw: str) -> None:
        if not await self.admit():
            return
        if self.relay is not None:
            await self.relay.forward(raw)
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
            if self.router is not None and kind in ("join", "reconnect") and \
                    self.session_id is None and await self.router(self, message, raw):
                return
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
        await self.send(events.Joined(
            session_id=session.session_id, call=session.call_id, host=call.host,
            reconnected=True,
            participants=[s.public() for s in call.others(session.session_id)],
            recording=call.recording, captions=call.captions,
            ice_servers=client_ice_servers(self.manager.config, self.grant.user)).wire())

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
        await self.send(events.Pong().wire())

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

    def _is_host(self) -> bool:
        participant = self.manager.participants.get(self.session_id or "")
        call = self.manager.calls.get(participant.session.call_id) if participant else None
        return call is not None and call.is_host(self.session_id)

    async def on_host_control(self, message: dict[str, Any]) -> None:
        """Mute, remove, end…: the same controls as the admin API, for the host only."""
        action = message["action"]
        try:
            outcome = await HostControls(self.manager).by_session(
                self.session_id, action, message.get("session_id"))  # type: ignore[arg-type]
        except HostControlError as exc:
            await self.error(exc.code, exc.message)
            return
        log.info("host %s: %s %s", self.session_id, action, message.get("session_id") or "")
        await self.send(events.HostControlDone(**outcome).wire())

    async def on_invite(self, message: dict[str, Any]) -> None:
        """A join link for someone else, to the host's own call (never another one)."""
        if not self._is_host():
            await self.error("not_host", "invite: only the host of the call may invite")
            return
        if self.secret is None:
            await self.error("invite_unavailable", "invite: this server cannot mint links")
            return
        await self.send(mint_invite(self.secret, self.grant.call, message["name"]))


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    manager: CallManager = request.app[MANAGER]
    config = request.app[CONFIG]
    ws = web.WebSocketResponse(heartbeat=15, max_msg_size=HARD_FRAME_LIMIT, compress=False)
    await ws.prepare(request)
    metrics = request.app.get(WS_STATS)
    try:
        grant = verify_token(request.app[JWT_SECRET], _token_from(request))
    except TokenError as exc:
        await ws.send_str(json.dumps(events.Error(code=exc.code, message=str(exc)).wire()))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return ws
    # The first sign of a call: load the media stack now, in a worker thread, so that it
    # is (nearly) there when this client's join arrives a round trip later. Once only;
    # the join awaits it (calls/manager.py, rtc/medialoader.py). (Embedded without a
    # call manager, as tests of the handler alone do, there is nothing to load.)
    if manager is not None:
        manager.media.start()
    connection = SignalingConnection(ws, grant, manager, config.max_message_size,
                                     config.ws_rate_limit, config.ws_rate_burst, metrics,
                                     request.transport, secret=request.app[JWT_SECRET])
    connection.token = _token_from(request) or ""
    fleet = request.app.get(FLEET)
    if fleet is not None and not await fleet.accept_ws(request, connection):
        return ws
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
            # Waiting for the next frame with this one still bound would keep its text
            # (an SDP: about 4 KB) for as long as the client is quiet: all call long.
            del frame
    except asyncio.CancelledError:
        raise
    except Exception:  # never let one connection's bug take the server down
        log.exception("signaling connection failed")
    finally:
        if metrics is not None:
            metrics["active"] = metrics.get("active", 1) - 1
        if connection.relay is not None:
            await connection.relay.close()
        if connection.session_id is not None:
            manager.detach(connection.session_id)
        release_websocket(ws, request)
    return ws
