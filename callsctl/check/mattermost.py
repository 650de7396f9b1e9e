"""`callsctl check webrtc --mattermost`: a real call through Mattermost, as the web app makes it.

Two test participants (two WebSocket connections of the same user, which the
plugin keeps as two sessions: server/session.go addUserSession keys sessions
by connection ID) join a call in a channel the operator names, talk to each
other through the SFU (the plugin's or its rtcd), and leave. Each stage is a
result with the fix for its failure. The protocol, followed from the source:

- REST with the personal access token as `Authorization: Bearer`:
  GET /api/v4/system/ping, GET /api/v4/users/me (is the token valid),
  GET /api/v4/channels/{id}; the plugin's GET /plugins/com.mattermost.calls/
  version (public), /config (ICE servers) and /{channel_id} (calls enabled?
  a call already live?) (mattermost-plugin-calls server/api_router.go,
  server/api.go handleGetCallChannelState, server/configuration.go
  ClientConfig); /turn-credentials when the config says NeedsTURNCredentials
  (webapp/src/index.tsx).
- WebSocket /api/v4/websocket: the server's `hello` carries connection_id;
  the client sends `{"action": "custom_com.mattermost.calls_join", "seq",
  "data": {"channelID"}}` as JSON (webapp/src/client.ts on 'open'); the
  plugin acknowledges with the event `custom_com.mattermost.calls_join`
  (server/websocket.go handleJoin) or `custom_com.mattermost.calls_error`.
- The offer goes out as `custom_com.mattermost.calls_sdp`, MessagePack-encoded,
  with data = zlib(JSON(RTCSessionDescription)) (client.ts sdpHandler,
  websocket.go unpackSDPData); answers, offers and candidates come back as
  `custom_com.mattermost.calls_signal` events whose data is a JSON string
  (websocket.go wsWriter). `custom_com.mattermost.calls_unmute` lets the SFU
  forward the audio (rtcd service/rtc/server.go: voice is forwarded only
  when unmuted); `custom_com.mattermost.calls_leave` ends the session
  (webapp/src/websocket.ts sendLeaveAndClose).

It never disturbs a live call: when the channel already has one, the check
refuses to join. Starting a call in the channel does show in it (a call
post), so point it at a channel kept for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tomllib
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgpack

from callsctl.check.callspeer import CallsPeer
from callsctl.check.result import CheckResult
from callsctl.check.session_checks import (
    PLUGIN_NAMES,
    answer_result,
    candidates_result,
    dtls_result,
    ice_result,
    media_result,
    probes,
    tcp_fallback_result,
    wait_answer,
)
from callsctl.check.stunclient import StunProtocolError, resolve
from callsctl.errors import EXIT_USAGE, fail

PLUGIN = "/plugins/com.mattermost.calls"
PREFIX = "custom_com.mattermost.calls_"
MEDIA_SECONDS = 3.0


@dataclass(frozen=True)
class MattermostTarget:
    url: str
    token: str
    channel: str
    timeout: float
    relay_only: bool = False
    tcp_only: bool = False

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] + "/api/v4/websocket"


def load_target(url: str | None, token: str | None, channel: str | None, config: str | None,
                timeout: float, relay_only: bool, tcp_only: bool = False) -> MattermostTarget:
    """Options win over the config file (TOML: url, token, channel); bad input is a usage error."""
    values: dict[str, Any] = {}
    if config is not None:
        try:
            with open(config, "rb") as handle:
                values = tomllib.load(handle)
        except OSError as exc:
            fail(f"cannot read --config {config}: {exc.strerror or exc}", EXIT_USAGE)
        except tomllib.TOMLDecodeError as exc:
            fail(f"--config {config} is not valid TOML: {exc}", EXIT_USAGE)
        values = values.get("mattermost", values)
    url = url or values.get("url")
    token = token or values.get("token")
    channel = channel or values.get("channel")
    if not url:
        fail("give the Mattermost site URL (--mattermost URL or url in --config)", EXIT_USAGE)
    url = str(url).rstrip("/")
    if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
        fail(f"--mattermost must be the site URL, http(s)://HOST, got {url!r}", EXIT_USAGE)
    if not token:
        fail("give a personal access token (--token PAT or token in --config)", EXIT_USAGE)
    if not channel or not str(channel).isalnum() or len(str(channel)) != 26:
        fail("give the id of a test channel (--channel, 26 letters and digits: the channel's "
             "View Info)", EXIT_USAGE)
    return MattermostTarget(url, str(token), str(channel), timeout, relay_only or tcp_only,
                            tcp_only)


class Api:
    """The REST calls, each bounded by the target's timeout."""

    def __init__(self, http: aiohttp.ClientSession, target: MattermostTarget) -> None:
        self.http = http
        self.target = target

    async def get(self, path: str, auth: bool = True) -> tuple[int | None, Any, str | None,
                                                               dict[str, str]]:
        headers = {"Authorization": f"Bearer {self.target.token}"} if auth else {}
        try:
            async with self.http.get(self.target.url + path, headers=headers,
                                     ssl=False) as response:
                text = await response.text()
                try:
                    body = json.loads(text)
                except ValueError:
                    body = None
                return response.status, body, None, dict(response.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return None, None, str(exc) or type(exc).__name__, {}


@dataclass
class MattermostSession:
    """One WebSocket connection = one call session."""

    ws: aiohttp.ClientWebSocketResponse
    peer: CallsPeer
    conn_id: str = ""
    seq: int = 1
    joined: asyncio.Future[str] | None = None
    reader: asyncio.Task[Any] | None = None

    async def send(self, action: str, data: dict[str, Any] | None = None,
                   binary: bool = False) -> None:
        msg = {"action": PREFIX + action, "seq": self.seq, "data": data or {}}
        self.seq += 1
        if binary:
            await self.ws.send_bytes(msgpack.packb(msg, use_bin_type=True))
        else:
            await self.ws.send_str(json.dumps(msg))


async def run_mattermost(target: MattermostTarget) -> list[CheckResult]:
    results: list[CheckResult] = []
    timeout = aiohttp.ClientTimeout(total=target.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        api = Api(http, target)
        ice_servers = await _rest_stages(api, results)
        if ice_servers is None:
            return results
        await _call_stages(http, target, ice_servers, results)
    return results


async def _rest_stages(api: Api, results: list[CheckResult]) -> list[dict[str, Any]] | None:
    """API, token, plugin, channel. Returns the ICE servers to use, or None to stop."""
    target = api.target
    started = time.monotonic()
    status, body, error, headers = await api.get("/api/v4/system/ping", auth=False)
    if error or status != 200 or not isinstance(body, dict):
        results.append(CheckResult("api", "fail", f"{target.url}/api/v4/system/ping: "
                                   f"{error or f'HTTP {status}'}", figure="no answer",
                                   fix="is this the Mattermost site URL (as in the browser), "
                                   "and is it reachable from here?"))
        return None
    version = headers.get("X-Version-Id", "").split(".")[:3]
    results.append(CheckResult("api", "pass", f"Mattermost answers at {target.url}"
                               + (f" (version {'.'.join(version)})" if version[0] else ""),
                               figure=f"{(time.monotonic() - started) * 1000:.0f} ms"))
    status, body, error, _ = await api.get("/api/v4/users/me")
    if status != 200 or not isinstance(body, dict):
        results.append(CheckResult("auth", "fail", f"the token was refused: "
                                   f"{error or f'HTTP {status}'}"
                                   + (f" ({body.get('message')})" if isinstance(body, dict) and
                                      body.get("message") else ""), figure=f"HTTP {status}",
                                   fix="create a personal access token (Profile > Security > "
                                   "Personal Access Tokens; the admin enables them in System "
                                   "Console > Integrations) and pass it with --token"))
        return None
    results.append(CheckResult("auth", "pass", f"token of user @{body.get('username', '?')}"))
    status, body, error, _ = await api.get(f"{PLUGIN}/version", auth=False)
    if status != 200 or not isinstance(body, dict) or not body.get("version"):
        results.append(CheckResult("plugin", "fail", "the Calls plugin does not answer "
                                   f"({PLUGIN}/version: {error or f'HTTP {status}'})",
                                   figure="disabled",
                                   fix="install and enable the Calls plugin: System Console > "
                                   "Plugins > Calls > Enable Plugin"))
        return None
    sfu = f"rtcd {body['rtcd_version']}" if body.get("rtcd_version") else "its integrated SFU"
    results.append(CheckResult("plugin", "pass", f"Calls plugin {body['version']} on {sfu}",
                               details={"plugin": body}))
    status, config, _, _ = await api.get(f"{PLUGIN}/config")
    ice_servers: list[dict[str, Any]] = []
    if status == 200 and isinstance(config, dict):
        for server in config.get("ICEServersConfigs") or []:
            if isinstance(server, dict) and server.get("urls"):
                urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
                ice_servers.append({"urls": urls, "username": server.get("username"),
                                    "credential": server.get("credential")})
        if config.get("NeedsTURNCredentials"):
            status, creds, _, _ = await api.get(f"{PLUGIN}/turn-credentials")
            if status == 200 and isinstance(creds, list):
                ice_servers.extend(c for c in creds if isinstance(c, dict) and c.get("urls"))
    if target.tcp_only:
        # aiortc has no ICE-TCP: media over TCP goes through a TURN server reached over TCP.
        ice_servers = [{**s, "urls": tcp} for s in ice_servers
                       if (tcp := [u for u in s["urls"] if _turn_over_tcp(str(u))])]
        if not ice_servers:
            results.append(CheckResult("turn", "fail", "--force-tcp, but the Calls plugin "
                                       "configures no TURN server reachable over TCP",
                                       figure="no TURN/TCP",
                                       fix="add turn:HOST:3478?transport=tcp (or turns:HOST:443"
                                       "?transport=tcp) to ICE Servers Configurations in System "
                                       "Console > Plugins > Calls: clients behind UDP-blocking "
                                       "firewalls need it"))
            return None
    if target.relay_only and not any(
            str(u).startswith("turn") for s in ice_servers for u in s["urls"]):
        results.append(CheckResult("turn", "fail", "--force-turn, but the Calls plugin "
                                   "configures no TURN server", figure="no TURN",
                                   fix="set ICE Servers Configurations (and TURN credentials) "
                                   "in System Console > Plugins > Calls"))
        return None
    status, channel, error, _ = await api.get(f"/api/v4/channels/{target.channel}")
    if status != 200:
        results.append(CheckResult("channel", "fail", f"channel {target.channel}: "
                                   f"{error or f'HTTP {status}'}", figure=f"HTTP {status}",
                                   fix="give the id of a channel this user is a member of"))
        return None
    status, state, error, _ = await api.get(f"{PLUGIN}/{target.channel}")
    name = channel.get("name", target.channel) if isinstance(channel, dict) else target.channel
    if status == 200 and isinstance(state, dict):
        if state.get("enabled") is False:
            results.append(CheckResult("channel", "fail", f"calls are disabled in ~{name}",
                                       figure="disabled",
                                       fix="enable calls in the channel (channel menu > Enable "
                                       "calls) or pick a test channel where they are"))
            return None
        call = state.get("call")
        if isinstance(call, dict) and call.get("sessions"):
            results.append(CheckResult("channel", "fail", f"a call is live in ~{name} "
                                       f"({len(call['sessions'])} participants): the check does "
                                       "not join it, so as not to disturb it", figure="busy",
                                       fix="run the check in a channel kept for tests, or when "
                                       "the call has ended"))
            return None
    results.append(CheckResult("channel", "pass", f"~{name}: calls enabled, no call live"))
    return ice_servers


async def _connect(http: aiohttp.ClientSession, target: MattermostTarget,
                   ice_servers: list[dict[str, Any]], tone: float) -> MattermostSession | str:
    """Open the WebSocket, wait for hello; a string is the error."""
    try:
        ws = await asyncio.wait_for(http.ws_connect(
            target.ws_url, headers={"Authorization": f"Bearer {target.token}"}, ssl=False,
            heartbeat=None), target.timeout)
    except aiohttp.WSServerHandshakeError as exc:
        return f"handshake refused (HTTP {exc.status})"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    holder: dict[str, MattermostSession] = {}

    async def signal(sdp: dict[str, Any]) -> None:
        await holder["p"].send("sdp", {"data": zlib.compress(json.dumps(sdp).encode())},
                               binary=True)

    part = MattermostSession(ws, CallsPeer(signal, ice_servers=ice_servers,
                                     relay_only=target.relay_only, tone=tone))
    holder["p"] = part
    try:
        frame = await asyncio.wait_for(ws.receive(), target.timeout)
        hello = json.loads(frame.data) if frame.type == aiohttp.WSMsgType.TEXT else {}
    except (TimeoutError, ValueError):
        hello = {}
    if hello.get("event") != "hello":
        await ws.close()
        return "connected, but no hello event"
    part.conn_id = str((hello.get("data") or {}).get("connection_id", ""))
    part.joined = asyncio.get_running_loop().create_future()
    part.reader = asyncio.create_task(_read(part))
    return part


async def _read(part: MattermostSession) -> None:
    async for frame in part.ws:
        if frame.type != aiohttp.WSMsgType.TEXT:
            continue
        try:
            event = json.loads(frame.data)
        except ValueError:
            continue
        name = str(event.get("event", ""))
        data = event.get("data") or {}
        conn = data.get("connID") or (event.get("broadcast") or {}).get("connection_id")
        if conn and conn != part.conn_id:
            continue
        if name == PREFIX + "join" and part.joined and not part.joined.done():
            part.joined.set_result("")
        elif name == PREFIX + "error" and part.joined and not part.joined.done():
            part.joined.set_result(str(data.get("data") or "error"))
        elif name == PREFIX + "signal":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                await part.peer.on_signal(json.loads(data["data"]))


async def _call_stages(http: aiohttp.ClientSession, target: MattermostTarget,
                       ice_servers: list[dict[str, Any]], results: list[CheckResult]) -> None:
    parts: list[MattermostSession] = []
    try:
        for tone in (440.0, 660.0):
            part = await _connect(http, target, ice_servers, tone)
            if isinstance(part, str):
                results.append(CheckResult("websocket", "fail", f"{target.ws_url}: {part}",
                                           fix="a proxy in front of Mattermost must pass "
                                           "WebSocket upgrades (Upgrade/Connection headers)"))
                return
            parts.append(part)
        results.append(CheckResult("websocket", "pass", f"{target.ws_url}: two connections, "
                                   "hello on each"))
        started = time.monotonic()
        for part in parts:
            await part.send("join", {"channelID": target.channel})
            assert part.joined is not None
            try:
                error = await asyncio.wait_for(asyncio.shield(part.joined), target.timeout)
            except TimeoutError:
                error = f"no join acknowledgement within {target.timeout:g} s"
            if error:
                results.append(CheckResult("join", "fail", f"the plugin refused the join: {error}",
                                           fix="the user needs permission to post in the "
                                           "channel; the call may be full (Max call "
                                           "participants) or, with rtcd, no rtcd node reachable "
                                           "from Mattermost (server log)"))
                return
        results.append(CheckResult("join", "pass", "two test sessions joined the call",
                                   figure=f"{(time.monotonic() - started) * 1000:.0f} ms"))
        for part in parts:
            await part.peer.start()
        first = parts[0].peer
        answered = all([await wait_answer(p.peer, target.timeout) for p in parts])
        results.append(answer_result(first, answered, PLUGIN_NAMES))
        if not answered:
            return
        target_ip = _resolve(target.host)
        results.append(candidates_result(first, target_ip))
        checks_task = asyncio.create_task(probes(first, target_ip, target.timeout))
        states = [await p.peer.wait_connected(max(target.timeout, 5.0)) for p in parts]
        checks = await checks_task
        state = "connected" if all(s == "connected" for s in states) else \
            next(s for s in states if s != "connected")
        results.append(ice_result(first, state, time.monotonic() - started, checks, target_ip,
                                  PLUGIN_NAMES))
        if state == "connected":
            results.append(dtls_result(first))
            for part in parts:
                await part.send("unmute")
            results.extend(await media_result([p.peer for p in parts], MEDIA_SECONDS))
        results.append(tcp_fallback_result(checks, PLUGIN_NAMES))
    finally:
        await _leave(parts, results)


async def _leave(parts: list[MattermostSession], results: list[CheckResult]) -> None:
    left = 0
    for part in parts:
        with contextlib.suppress(Exception):
            await part.send("mute")
            await part.send("leave")
            left += 1
        await part.peer.close()
        if part.reader is not None:
            part.reader.cancel()
        with contextlib.suppress(Exception):
            await part.ws.close()
    if parts and any(r.name == "join" for r in results):
        results.append(CheckResult("leave", "pass" if left == len(parts) else "warn",
                                   f"sent leave for {left} of {len(parts)} sessions and closed "
                                   "their connections"))


def _turn_over_tcp(url: str) -> bool:
    return url.startswith(("turn:", "turns:")) and url.endswith("?transport=tcp")


def _resolve(host: str) -> str | None:
    try:
        return resolve(host, 0)[0]
    except StunProtocolError:
        return None
