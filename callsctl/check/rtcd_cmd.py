"""`callsctl check rtcd`: prove an rtcd node works the way the Calls plugin uses it.

rtcd (mattermost/rtcd) is the standalone pion-based SFU the Calls plugin can
offload media to. A bare STUN probe of its media port proves nothing (it
drops STUN naming no session), so this check opens a real session, as the
plugin would, and reports each stage:

1. GET /version (service/version.go) and GET /system's `cpu_load`
   (service/system.go; the plugin's server/rtcd.go picks the node with the
   lowest): is it rtcd, which build, how loaded;
2. POST /login with `{"clientID", "authKey"}` (service/auth.go loginClient):
   are the credentials the plugin is configured with valid;
3. the WebSocket /ws with HTTP basic auth `clientID:authKey`, exactly as the
   plugin's rtcd client connects (service/client.go Connect, ws/client.go);
   rtcd greets with `hello` (service/service.go Start);
4. messages are MessagePack, the type and the data encoded one after the
   other (service/client_msg.go EncodeMulti): `join` with callID, userID,
   sessionID, channelID (rtc/config.go SessionConfig.FromMap), then `rtc`
   messages, each an rtc.Message map (group_id = the client ID, user_id,
   session_id, call_id, type 1 ICE / 2 SDP, data = JSON; rtc/msg.go) carrying
   our offer; rtcd answers and trickles its candidates the same way;
5. ICE and DTLS over UDP with that session, audio sent, the server's RTCP
   receiver report and calls-dc ping/pong, and this session's connectivity
   check over ICE-TCP;
6. `leave` with the sessionID; rtcd confirms with `close`.

The test session uses ids of its own (`callsctl-check-…`): no Mattermost
channel or user sees it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import msgpack
import typer

from callsctl.check import app
from callsctl.check.callspeer import CallsPeer
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.check.session_checks import (
    RTCD_NAMES,
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

RTC_ICE, RTC_SDP = 1, 2
MEDIA_SECONDS = 2.0


@dataclass(frozen=True)
class RtcdTarget:
    base: str          # http(s)://host:port, no credentials
    host: str
    client_id: str
    auth_key: str
    timeout: float
    relay_only: bool = False

    @property
    def ws_url(self) -> str:
        return "ws" + self.base[4:] + "/ws"


def parse_url(url: str, timeout: float) -> RtcdTarget:
    """http://ID:KEY@HOST:PORT -> target; anything else is a usage error."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"invalid --url {url!r}: give http://CLIENT_ID:AUTH_KEY@HOST:8045", EXIT_USAGE)
    if not parts.username or parts.password is None:
        fail("--url has no credentials: give http://CLIENT_ID:AUTH_KEY@HOST:8045 (the client ID "
             "and key the Calls plugin uses for this rtcd)", EXIT_USAGE)
    try:
        port = parts.port
    except ValueError:
        fail(f"invalid port in --url {url!r}", EXIT_USAGE)
    host = parts.hostname
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return RtcdTarget(f"{parts.scheme}://{netloc}", host, unquote(parts.username),
                      unquote(parts.password), timeout)


def pack(msg_type: str, data: Any) -> bytes:
    """rtcd's ClientMessage: the type, then the data, as two MessagePack values."""
    return msgpack.packb(msg_type) + msgpack.packb(data, use_bin_type=True)


def unpack(raw: bytes) -> tuple[str, Any]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    values = list(unpacker)
    if not values or not isinstance(values[0], str):
        raise ValueError("not an rtcd client message")
    return values[0], values[1] if len(values) > 1 else None


async def run_rtcd(target: RtcdTarget) -> list[CheckResult]:
    results: list[CheckResult] = []
    timeout = aiohttp.ClientTimeout(total=target.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        if not await _api_stages(http, target, results):
            return results
        await _session_stages(http, target, results)
    return results


async def _get_json(http: aiohttp.ClientSession, url: str) -> tuple[int | None, Any, str | None]:
    try:
        async with http.get(url, ssl=False) as response:
            try:
                body = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                body = None
            return response.status, body, None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return None, None, str(exc) or type(exc).__name__


async def _api_stages(http: aiohttp.ClientSession, target: RtcdTarget,
                      results: list[CheckResult]) -> bool:
    started = time.monotonic()
    status, body, error = await _get_json(http, target.base + "/version")
    if error or status != 200 or not isinstance(body, dict) or "buildVersion" not in body:
        why = error or (f"HTTP {status}" if status != 200 else "no rtcd version info")
        results.append(CheckResult("api", "fail", f"{target.base}/version: {why}",
                                   figure="no rtcd",
                                   fix="is rtcd running, and is its API port (8045, "
                                   "api.http.listen_address) reachable from here? If this is "
                                   "callsctl or Mattermost, use `check rtc` / `check webrtc`"))
        return False
    version = body.get("buildVersion") or "?"
    build = body.get("buildHash") or "?"
    results.append(CheckResult("api", "pass", f"rtcd {version} (build {build}, "
                               f"{body.get('goVersion') or '?'})",
                               figure=f"{(time.monotonic() - started) * 1000:.1f} ms",
                               details={"version_info": body}))
    status, body, error = await _get_json(http, target.base + "/system")
    if status == 200 and isinstance(body, dict) and isinstance(body.get("cpu_load"), int | float):
        # rtcd computes cpu_load as 1 / (idle CPU seconds per second) (service/system.go), and
        # the plugin sends a new call to the node with the lowest (server/rtcd.go): 0.25 is four
        # idle cores, 1.0 one, above 2.0 less than half a core is left.
        load = float(body["cpu_load"])
        idle = f"{1 / load:.1f} idle CPUs" if load > 0 else "idle CPUs unknown"
        results.append(CheckResult("load", "pass" if load <= 2.0 else "warn",
                                   f"rtcd's load figure (GET /system): {idle}",
                                   figure=f"{load:.2f}",
                                   fix=None if load <= 2.0 else "less than half a CPU is idle: "
                                   "add rtcd nodes (the plugin picks the least loaded)",
                                   details={"cpu_load": load}))
    else:
        results.append(CheckResult("load", "warn", "GET /system gave no cpu_load (rtcd on "
                                   "macOS has none)", figure="unknown"))
    try:
        async with http.post(target.base + "/login", ssl=False,
                             json={"clientID": target.client_id,
                                   "authKey": target.auth_key}) as response:
            body = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        results.append(CheckResult("auth", "fail", f"POST /login: {exc}",
                                   fix="the API answered /version but not /login: a proxy in "
                                   "front of rtcd?"))
        return False
    if status == 200 and isinstance(body, dict) and body.get("bearerToken"):
        results.append(CheckResult("auth", "pass", f"client {target.client_id!r} logged in "
                                   "(POST /login)", details={"client_id": target.client_id}))
        return True
    error_text = body.get("error") if isinstance(body, dict) else None
    results.append(CheckResult("auth", "fail", f"rtcd refused client {target.client_id!r}: "
                               f"HTTP {status}" + (f" ({error_text})" if error_text else ""),
                               figure=f"HTTP {status}",
                               fix="use the client ID and auth key the Calls plugin is "
                               "configured with (the RTCD service URL, "
                               "http://CLIENT_ID:AUTH_KEY@HOST:8045); with "
                               "api.security.allow_self_registration the plugin registers them "
                               "itself on first use"))
    return False


async def _session_stages(http: aiohttp.ClientSession, target: RtcdTarget,
                          results: list[CheckResult]) -> None:
    basic = base64.b64encode(f"{target.client_id}:{target.auth_key}".encode()).decode()
    try:
        ws = await asyncio.wait_for(http.ws_connect(
            target.ws_url, headers={"Authorization": f"Basic {basic}"}, ssl=False,
            heartbeat=None), target.timeout)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        results.append(CheckResult("websocket", "fail", f"{target.ws_url}: {exc}",
                                   fix="rtcd refused the WebSocket (basic auth as the plugin "
                                   "sends it) or a proxy does not pass WebSocket upgrades"))
        return
    suffix = secrets.token_hex(6)
    ids = {"callID": f"callsctl-check-{suffix}", "userID": "callsctl-check",
           "sessionID": f"callsctl-check-{suffix}", "channelID": f"callsctl-check-{suffix}"}
    closed = asyncio.Event()

    async def send_rtc(msg_type: int, payload: dict[str, Any]) -> None:
        await ws.send_bytes(pack("rtc", {
            "group_id": target.client_id, "user_id": ids["userID"],
            "session_id": ids["sessionID"], "call_id": ids["callID"], "type": msg_type,
            "data": json.dumps(payload).encode()}))

    peer = CallsPeer(lambda sdp: send_rtc(RTC_SDP, sdp), relay_only=target.relay_only)
    reader: asyncio.Task[Any] | None = None
    try:
        try:
            first = await asyncio.wait_for(ws.receive(), target.timeout)
            binary = first.type == aiohttp.WSMsgType.BINARY
            kind, data = unpack(first.data) if binary else ("", None)
        except (TimeoutError, ValueError):
            kind, data = "", None
        if kind != "hello":
            results.append(CheckResult("websocket", "fail", "connected, but rtcd sent no hello",
                                       fix="this does not look like rtcd's /ws: check the URL"))
            return
        results.append(CheckResult("websocket", "pass", f"{target.ws_url}: hello (connID "
                                   f"{(data or {}).get('connID', '?')})"))

        async def read() -> None:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    msg_kind, payload = unpack(frame.data)
                except ValueError:
                    continue
                if msg_kind == "rtc" and isinstance(payload, dict):
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        await peer.on_signal(json.loads(payload.get("data") or b"{}"))
                elif msg_kind == "close":
                    closed.set()
            closed.set()

        reader = asyncio.create_task(read())
        await ws.send_bytes(pack("join", ids))
        started = time.monotonic()
        await peer.start()
        results.append(CheckResult("join", "pass", f"session {ids['sessionID']} started "
                                   "(join, then our offer)"))
        answered = await wait_answer(peer, target.timeout)
        results.append(answer_result(peer, answered, RTCD_NAMES))
        if not answered:
            return
        results.append(candidates_result(peer, _resolve(target.host)))
        checks_task = asyncio.create_task(probes(peer, _resolve(target.host), target.timeout))
        state = await peer.wait_connected(max(target.timeout, 5.0))
        checks = await checks_task
        results.append(ice_result(peer, state, time.monotonic() - started, checks,
                                  _resolve(target.host), RTCD_NAMES))
        if state == "connected":
            results.append(dtls_result(peer))
            results.extend(await media_result([peer], MEDIA_SECONDS))
        results.append(tcp_fallback_result(checks, RTCD_NAMES))
    finally:
        left = False
        if not ws.closed:
            try:
                await ws.send_bytes(pack("leave", {"sessionID": ids["sessionID"]}))
                await asyncio.wait_for(closed.wait(), 3)
                left = True
            except (TimeoutError, ConnectionError, aiohttp.ClientError):
                left = False
        await peer.close()
        if reader is not None:
            reader.cancel()
        await ws.close()
        if any(r.name == "join" for r in results):
            results.append(CheckResult("leave", "pass" if left else "warn",
                                       "left the session: rtcd confirmed with close" if left else
                                       "rtcd did not confirm the leave within 3 s (the session "
                                       "ends when its connection times out)"))


def _resolve(host: str) -> str | None:
    try:
        return resolve(host, 0)[0]
    except StunProtocolError:
        return None


@app.command("rtcd")
def rtcd_command(
    url: str = typer.Option(..., "--url", help="rtcd's API as the plugin is configured with "
                            "it: http://CLIENT_ID:AUTH_KEY@HOST:8045."),
    timeout: float = typer.Option(10.0, "--timeout", "-t", min=1, max=120,
                                  help="Seconds each stage may take."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Open a real session on an rtcd node, as the Calls plugin does, and report each stage.

    Version and CPU load (/version, /system), the credentials (/login), the
    WebSocket (basic auth), a session with ICE/DTLS over UDP and audio, the
    ICE-TCP fallback, and a clean leave. Exit 0 when nothing failed.
    """
    target = parse_url(url, timeout)
    results = asyncio.run(run_rtcd(target))
    raise typer.Exit(emit(results, as_json, title=f"callsctl check rtcd: {target.base}"))
