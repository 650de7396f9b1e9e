"""Protocol-faithful stand-ins of rtcd's API and of Mattermost with the Calls plugin, for tests.

Media is real: both hand the SDP to the pion SFU of tests/pionsfu (its local
control API), so ICE, DTLS, SRTP and the silent drop of bare STUN are pion's
own. Only the signaling is re-created here, from the open-source code:

rtcd (mattermost/rtcd):
  GET /version (service/version.go), GET /system (service/system.go),
  POST /login (service/auth.go loginClient: 400 on bad credentials),
  GET /ws with basic auth clientID:authKey (service/auth.go authHandler;
  on failure ws/server.go returns without upgrading, which net/http sends as
  an empty 200), `hello` on open, MessagePack ClientMessages (type then data;
  service/client_msg.go), `join` / `rtc` / `leave` handled as in
  service/service.go handleClientMsg, answers and candidates as rtc.Message
  maps (rtc/msg.go), `close` after leave.

Mattermost + Calls plugin (mattermost-plugin-calls server/):
  GET /api/v4/system/ping, GET /api/v4/users/me (401 on a bad token),
  GET /plugins/com.mattermost.calls/version (public; 404 when the plugin is
  disabled), /config, /{channel_id} (api_router.go, api.go),
  GET /api/v4/websocket with a Bearer token: `hello` with connection_id,
  then the client's actions `custom_com.mattermost.calls_join` (JSON),
  `_sdp` (MessagePack, data = zlib(JSON(sdp))), `_ice` (JSON, data = JSON
  string), `_unmute`, `_leave` (websocket.go WebSocketMessageHasBeenPosted,
  handleJoin); the plugin's events `custom_com.mattermost.calls_join`
  ({connID}), `_signal` ({data: JSON string, connID}) and `_error`.

Run: python -m tests.support.standins rtcd|mattermost --sfu http://127.0.0.1:PORT [options];
prints one JSON line {"port": N} when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import zlib
from typing import Any

import aiohttp
import msgpack
from aiohttp import web

PREFIX = "custom_com.mattermost.calls_"


def pack(msg_type: str, data: Any) -> bytes:
    return msgpack.packb(msg_type) + msgpack.packb(data, use_bin_type=True)


class Sfu:
    """Client of tests/pionsfu's control API."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.http: aiohttp.ClientSession | None = None

    async def offer(self, session: str, call: str, sdp: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.post(f"{self.base}/sessions/{session}/offer",
                                  json={"call": call, "sdp": sdp}) as response:
            response.raise_for_status()
            return await response.json()

    async def candidate(self, session: str, candidate: dict[str, Any]) -> None:
        assert self.http is not None
        async with self.http.post(f"{self.base}/sessions/{session}/candidate",
                                  json=candidate) as response:
            await response.read()

    async def close(self, session: str) -> None:
        assert self.http is not None
        async with self.http.delete(f"{self.base}/sessions/{session}") as response:
            await response.read()


# --- rtcd -----------------------------------------------------------------------------------


def rtcd_app(sfu: Sfu, client_id: str, auth_key: str) -> web.Application:
    app = web.Application()

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"buildDate": "", "buildVersion": "v1.1.0-standin",
                                  "buildHash": "standin", "goVersion": "go1.19",
                                  "goOS": "linux", "goArch": "amd64"})

    async def system(_: web.Request) -> web.Response:
        return web.json_response({"cpu_load": 0.07})

    async def login(request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("clientID") != client_id or data.get("authKey") != auth_key:
            return web.json_response({"error": "authentication failed"}, status=400)
        return web.json_response({"bearerToken": secrets.token_hex(16)})

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        try:
            user, _, key = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            user, key = "", ""
        if not header.startswith("Basic ") or user != client_id or key != auth_key:
            return web.Response(status=200)  # ws/server.go: auth failed, nothing written
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn_id = secrets.token_hex(13)
        await ws.send_bytes(pack("hello", {"clientID": client_id, "connID": conn_id}))
        sessions: dict[str, dict[str, Any]] = {}
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.BINARY:
                continue
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(frame.data)
            values = list(unpacker)
            kind, data = values[0], values[1] if len(values) > 1 else None
            if kind == "join":
                sessions[data["sessionID"]] = {**data, "groupID": client_id}
            elif kind == "leave":
                sid = data.get("sessionID", "")
                if sessions.pop(sid, None) is not None:
                    await sfu.close(sid)
                    await ws.send_bytes(pack("close", {"sessionID": sid}))
            elif kind == "rtc":
                cfg = sessions.get(data.get("session_id", ""))
                if cfg is None or data.get("group_id") != client_id:
                    continue  # rtcd: "session not found", logged and dropped
                payload = json.loads(data["data"])
                base = {"group_id": client_id, "user_id": cfg["userID"],
                        "session_id": cfg["sessionID"], "call_id": cfg["callID"]}
                if data["type"] == 2 and payload.get("type") == "offer":
                    out = await sfu.offer(cfg["sessionID"], cfg["callID"], payload)
                    await ws.send_bytes(pack("rtc", {**base, "type": 2,
                                                     "data": json.dumps(out["answer"]).encode()}))
                    for cand in out["candidates"]:
                        await ws.send_bytes(pack("rtc", {**base, "type": 1, "data": json.dumps(
                            {"type": "candidate", "candidate": cand}).encode()}))
                elif data["type"] == 1:
                    await sfu.candidate(cfg["sessionID"], payload)
        for sid in sessions:
            await sfu.close(sid)
        return ws

    app.router.add_get("/version", version)
    app.router.add_get("/system", system)
    app.router.add_post("/login", login)
    app.router.add_get("/ws", ws_handler)
    return app


# --- Mattermost with the Calls plugin -----------------------------------------------------------


def mattermost_app(sfu: Sfu, token: str, channel: str, plugin_enabled: bool,
                   live_call: bool, ice_servers: list[dict[str, Any]]) -> web.Application:
    app = web.Application()
    user_id = "u" * 26
    state: dict[str, Any] = {"sessions": {}}

    def authed(request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {token}"

    def unauthorized() -> web.Response:
        return web.json_response({"id": "api.context.session_expired.app_error",
                                  "message": "Invalid or expired session, please login again.",
                                  "status_code": 401}, status=401)

    async def ping(_: web.Request) -> web.Response:
        return web.json_response({"status": "OK", "ActiveSearchBackend": "database"},
                                 headers={"X-Version-Id": "10.5.0.standin"})

    async def me(request: web.Request) -> web.Response:
        if not authed(request):
            return unauthorized()
        return web.json_response({"id": user_id, "username": "calls-check"})

    async def channel_get(request: web.Request) -> web.Response:
        if not authed(request):
            return unauthorized()
        if request.match_info["id"] != channel:
            return web.json_response({"message": "Unable to find the channel."}, status=404)
        return web.json_response({"id": channel, "name": "calls-test", "type": "O"})

    async def plugin(request: web.Request) -> web.Response:
        if not plugin_enabled:
            return web.Response(status=404, text="404 page not found")
        path = request.match_info["path"]
        if path == "version":
            return web.json_response({"version": "1.5.0", "build": "standin"})
        if not authed(request):
            return web.Response(status=401, text="Unauthorized")
        if path == "config":
            return web.json_response({"ICEServersConfigs": ice_servers, "DefaultEnabled": True,
                                      "AllowEnableCalls": True, "NeedsTURNCredentials": False})
        if path == channel:
            body: dict[str, Any] = {"channel_id": channel, "enabled": True}
            sessions = [{"session_id": s, "user_id": "o" * 26, "unmuted": False}
                        for s in (["x" * 26] if live_call else [])]
            sessions += [{"session_id": s, "user_id": user_id, "unmuted": False}
                         for s in state["sessions"]]
            if sessions:
                body["call"] = {"id": "c" * 26, "sessions": sessions}
            return web.json_response(body)
        return web.Response(status=404, text="404 page not found")

    async def websocket(request: web.Request) -> web.StreamResponse:
        if not authed(request):
            return unauthorized()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn_id = secrets.token_hex(13)
        seq = 0

        async def event(name: str, data: dict[str, Any]) -> None:
            nonlocal seq
            await ws.send_str(json.dumps({"event": name, "data": data, "seq": seq,
                                          "broadcast": {"connection_id": conn_id}}))
            seq += 1

        await event("hello", {"connection_id": conn_id, "server_version": "10.5.0"})
        joined = False
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                req = json.loads(frame.data)
            elif frame.type == aiohttp.WSMsgType.BINARY:
                req = msgpack.unpackb(frame.data, raw=False)
            else:
                continue
            action = str(req.get("action", ""))
            data = req.get("data") or {}
            if not action.startswith(PREFIX):
                continue
            kind = action[len(PREFIX):]
            if kind == "join":
                if data.get("channelID") != channel:
                    await event(PREFIX + "error", {"data": "forbidden", "connID": conn_id})
                    continue
                joined = True
                state["sessions"][conn_id] = True
                await event(PREFIX + "join", {"connID": conn_id})
            elif kind == "sdp" and joined:
                sdp = json.loads(zlib.decompress(data["data"]))
                if sdp.get("type") != "offer":
                    continue
                out = await sfu.offer(conn_id, channel, sdp)
                await event(PREFIX + "signal", {"data": json.dumps(out["answer"]),
                                                "connID": conn_id})
                for cand in out["candidates"]:
                    await event(PREFIX + "signal", {"data": json.dumps(
                        {"type": "candidate", "candidate": cand}), "connID": conn_id})
            elif kind == "ice" and joined:
                await sfu.candidate(conn_id, json.loads(data["data"]))
            elif kind == "leave" and joined:
                joined = False
                state["sessions"].pop(conn_id, None)
                await sfu.close(conn_id)
                await event(PREFIX + "user_left", {"session_id": conn_id, "user_id": user_id})
        if joined:
            state["sessions"].pop(conn_id, None)
            await sfu.close(conn_id)
        return ws

    app.router.add_get("/api/v4/system/ping", ping)
    app.router.add_get("/api/v4/users/me", me)
    app.router.add_get("/api/v4/channels/{id}", channel_get)
    app.router.add_get("/api/v4/websocket", websocket)
    app.router.add_get("/plugins/com.mattermost.calls/{path}", plugin)
    return app


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["rtcd", "mattermost"])
    parser.add_argument("--sfu", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client-id", default="mattermost")
    parser.add_argument("--auth-key", default="secret-key")
    parser.add_argument("--token", default="pat")
    parser.add_argument("--channel", default="c" * 26)
    parser.add_argument("--plugin-disabled", action="store_true")
    parser.add_argument("--live-call", action="store_true")
    parser.add_argument("--turn", help="TURN URL for the plugin's ICEServersConfigs")
    parser.add_argument("--turn-user", default="")
    parser.add_argument("--turn-pass", default="")
    args = parser.parse_args(argv)
    sfu = Sfu(args.sfu)
    sfu.http = aiohttp.ClientSession()
    app = (rtcd_app(sfu, args.client_id, args.auth_key) if args.kind == "rtcd" else
           mattermost_app(sfu, args.token, args.channel, not args.plugin_disabled,
                          args.live_call, [{"urls": [args.turn], "username": args.turn_user,
                                            "credential": args.turn_pass}] if args.turn else []))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
