"""The admin REST API under /api/v1, plus /system and /metrics, on the API port.

Every /api/ route needs `Authorization: Bearer <admin key>`; without it the
answer is 401 with a JSON body, before anything else is looked at (so an
unauthenticated caller learns nothing, not even which calls exist). /system
and /metrics are unauthenticated like rtcd's, for load balancers and
Prometheus; they reveal counts, never ids or names. For an API port exposed
to the internet, metrics_auth = admin_key puts /metrics behind the admin key,
and metrics_port moves it to a separate listener (metrics_app).

Errors are always `{"error": "<sentence>", "status": N}`: 400 for a bad body
or id, 401 without the key, 404 for an unknown call or session, 405 for a
wrong method (json_errors in routes.py), 409 when the state forbids it.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from callsctl_sfu.api import paths
from callsctl_sfu.api.appkeys import CONFIG, CONTROL, JOBS
from callsctl_sfu.calls.host import HostControlError
from callsctl_sfu.calls.sessionstats import describe_call, summarize_call
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.metrics import read_udp_snmp
from callsctl_sfu.store import CallSettings

if TYPE_CHECKING:
    from callsctl_sfu.control import ControlPlane

API = paths.API  # jobs/api.py builds its routes on it
MAX_ID = 64
MAX_BODY = 16 * 1024
HISTORY_DEFAULT = 50
HISTORY_MAX = 1000


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "status": status, **extra}, status=status)


class ApiError(CallsctlError):
    code = "bad_request"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _control(request: web.Request) -> ControlPlane:
    return request.app[CONTROL]


# -- auth -----------------------------------------------------------------------------


@web.middleware
async def admin_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer admin key on /api/*; ApiError/HostControlError become JSON errors."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    refused = _check_admin_key(request)
    if refused is not None:
        return refused
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.message)
    except HostControlError as exc:
        return error(exc.status, exc.message)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error(405, f"{request.method} is not allowed on {request.path}; "
                          f"allowed: {allowed}")
    except web.HTTPNotFound:
        return error(404, f"no API route {request.method} {request.path}")


def _check_admin_key(request: web.Request) -> web.Response | None:
    """None when the request carries the admin key, else the response that refuses it."""
    control = request.app.get(CONTROL)
    if control is None:
        return error(503, "the admin API is not available on this server")
    header = request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer" or not supplied.strip():
        return _unauthorized("admin key required: send 'Authorization: Bearer <key>' (the key "
                             "is in the admin_key file of the server's data dir, or the "
                             "file given to --admin-key-file)")
    if not hmac.compare_digest(supplied.strip().encode(), control.admin_key.encode()):
        return _unauthorized("admin key rejected")
    return None


def _unauthorized(message: str) -> web.Response:
    response = error(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="callsctl admin"'
    return response


# -- request helpers --------------------------------------------------------------------------


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID or any(ord(c) < 32 for c in value):
        raise ApiError(400, f"{name} must be 1 to {MAX_ID} printable characters")
    return value


async def _body(request: web.Request, required: bool = True) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    if not raw.strip():
        if required:
            raise ApiError(400, "this request needs a JSON object body")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def _session_field(body: dict[str, Any]) -> str:
    value = body.get("session_id")
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise ApiError(400, "body needs \"session_id\": the id of a session in the call")
    return value


def _ok(**fields: Any) -> web.Response:
    return web.json_response({"ok": True, **fields})


# -- calls --------------------------------------------------------------------------------------


async def list_calls(request: web.Request) -> web.Response:
    control = _control(request)
    manager = control.manager
    assert manager is not None
    calls = sorted(manager.calls.values(), key=lambda c: c.started_at)
    return web.json_response({"calls": [summarize_call(manager, c, control.sampler)
                                        for c in calls]})


async def show_call(request: web.Request) -> web.Response:
    control = _control(request)
    assert control.manager is not None and control.host is not None
    call = control.host.call(_id(request, "call_id"))
    return web.json_response(describe_call(control.manager, call, control.sampler))


async def end_call(request: web.Request) -> web.Response:
    control = _control(request)
    assert control.host is not None
    call_id = _id(request, "call_id")
    body = await _body(request, required=False)
    reason = body.get("reason", "ended by an admin")
    if not isinstance(reason, str) or len(reason) > 200:
        raise ApiError(400, "\"reason\" must be a string of at most 200 characters")
    removed = await control.host.end(call_id, reason)
    return _ok(call=call_id, removed=removed)


async def make_host(request: web.Request) -> web.Response:
    control = _control(request)
    assert control.host is not None
    call_id = _id(request, "call_id")
    session_id = _session_field(await _body(request))
    changed = await control.host.make_host(call_id, session_id)
    return _ok(call=call_id, host=session_id, changed=changed)


async def mute_others(request: web.Request) -> web.Response:
    control = _control(request)
    assert control.host is not None
    call_id = _id(request, "call_id")
    keep = _session_field(await _body(request))
    muted = await control.host.mute_others(call_id, keep)
    return _ok(call=call_id, kept=keep, muted=muted)


def _session_action(action: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        control = _control(request)
        assert control.host is not None
        call_id, session_id = _id(request, "call_id"), _id(request, "session_id")
        if action == "remove":
            await control.host.remove(call_id, session_id)
            return _ok(call=call_id, session_id=session_id, removed=True)
        operation = {"mute": control.host.mute, "stop-screen": control.host.stop_screen,
                     "lower-hand": control.host.lower_hand}[action]
        changed = await operation(call_id, session_id)
        return _ok(call=call_id, session_id=session_id, changed=changed)

    handler.__name__ = f"session_{action.replace('-', '_')}"
    return handler


# -- settings -------------------------------------------------------------------------------------


def _settings_view(control: ControlPlane, call_id: str) -> dict[str, Any]:
    stored = control.settings.get(call_id, CallSettings())
    return {"call": call_id, **stored.as_dict(), "effective": control.effective(call_id),
            "default_enabled": control.config.default_enabled}


async def get_settings(request: web.Request) -> web.Response:
    control = _control(request)
    return web.json_response(_settings_view(control, _id(request, "call_id")))


async def list_settings(request: web.Request) -> web.Response:
    control = _control(request)
    return web.json_response({
        "default_enabled": control.config.default_enabled,
        "max_call_participants": control.config.max_call_participants or None,
        "calls": {cid: s.as_dict() for cid, s in sorted(control.settings.items())}})


async def put_settings(request: web.Request) -> web.Response:
    """Merge: keys present are set (null = back to the server default), absent ones kept."""
    control = _control(request)
    call_id = _id(request, "call_id")
    body = await _body(request)
    unknown = set(body) - {"enabled", "max_participants"}
    if unknown:
        raise ApiError(400, f"unknown setting(s) {', '.join(sorted(unknown))}; known: "
                            "enabled, max_participants")
    current = control.settings.get(call_id, CallSettings())
    enabled = body.get("enabled", current.enabled)
    if enabled is not None and not isinstance(enabled, bool):
        raise ApiError(400, "\"enabled\" must be true, false or null")
    limit = body.get("max_participants", current.max_participants)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or not 1 <= limit <= 100000):
        raise ApiError(400, "\"max_participants\" must be a whole number from 1 to 100000, "
                            "or null for the server default")
    await control.put_settings(call_id, CallSettings(enabled, limit))
    return web.json_response(_settings_view(control, call_id))


# -- history, events -------------------------------------------------------------------------


async def history(request: web.Request) -> web.Response:
    control = _control(request)
    raw = request.query.get("limit", str(HISTORY_DEFAULT))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"limit must be a whole number, not {raw[:20]!r}") from None
    if not 1 <= limit <= HISTORY_MAX:
        raise ApiError(400, f"limit must be from 1 to {HISTORY_MAX}")
    call_id = request.query.get("call") or None
    if call_id is not None and len(call_id) > MAX_ID:
        raise ApiError(400, f"call must be at most {MAX_ID} characters")
    await control.flush()
    calls = await control.store.history(limit, call_id)
    jobs = request.app.get(JOBS)
    if jobs is not None:  # each call's recordings (jobs/service.py)
        await jobs.annotate_history(calls)
    return web.json_response({"calls": calls})


async def events(request: web.Request) -> web.StreamResponse:
    return await _control(request).hub.handle(request)


# -- unauthenticated: /system, /metrics ---------------------------------------------------------


async def system(request: web.Request) -> web.Response:
    """Load for placement (rtcd's /system has "load"); plus what the TUI shows."""
    import psutil  # loaded by the first /system request, not by an idle server (1.6 MB)

    control = _control(request)
    manager = control.manager
    cpus = os.cpu_count() or 1
    load1, load5, load15 = os.getloadavg()
    memory = psutil.virtual_memory()
    process = psutil.Process()
    cpu = process.cpu_times()
    rcvbuf = read_udp_snmp().get("RcvbufErrors")
    return web.json_response({
        # cpu_load and load are the whole machine's; process_* are this server's own.
        "cpu_load": round(load1 / cpus, 3), "cpus": cpus,
        "load": {"Load1": load1, "Load5": load5, "Load15": load15},
        "memory_bytes": memory.total - memory.available, "memory_total": memory.total,
        "process_rss_bytes": process.memory_info().rss,
        "process_cpu_seconds": round(cpu.user + cpu.system, 3),
        "udp_rcvbuf_errors": rcvbuf,
        "udp_rcvbuf_errors_since_start": (
            None if rcvbuf is None or control.rcvbuf_errors_at_start is None
            else max(0, rcvbuf - control.rcvbuf_errors_at_start)),
        "sessions": len(manager.participants) if manager else 0,
        "calls": len(manager.calls) if manager else 0,
        "uptime_s": round(control.uptime(), 1), "time": time.time(),
    })


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus exposition; with metrics_auth = admin_key only for the admin key."""
    control = _control(request)
    if control.config.metrics_auth == "admin_key":
        refused = _check_admin_key(request)
        if refused is not None:
            return refused
    assert control.metrics is not None
    body = control.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": control.metrics.content_type})


# -- wiring -----------------------------------------------------------------------------------


def add_admin_routes(app: web.Application) -> None:
    app.middlewares.append(admin_auth)
    r = app.router
    r.add_get(paths.CALLS, list_calls)
    r.add_get(paths.CALL, show_call)
    r.add_delete(paths.CALL, end_call)
    r.add_post(paths.CALL_HOST, make_host)
    r.add_post(paths.CALL_MUTE_OTHERS, mute_others)
    for action, template in paths.SESSION_ACTIONS.items():
        r.add_post(template, _session_action(action))
    r.add_delete(paths.SESSION, _session_action("remove"))
    r.add_get(paths.SETTINGS, list_settings)
    r.add_get(paths.CALL_SETTINGS, get_settings)
    r.add_put(paths.CALL_SETTINGS, put_settings)
    r.add_get(paths.HISTORY, history)
    r.add_get(paths.EVENTS, events)
    r.add_get(paths.SYSTEM, system)
    if not app[CONFIG].metrics_port:  # else only the metrics listener serves it
        r.add_get(paths.METRICS, metrics)


def metrics_app(control: ControlPlane) -> web.Application:
    """The separate metrics listener (metrics_port): /metrics and nothing else.

    Operators who expose the API port publicly keep Prometheus scraping on a
    port that only their network reaches, as Mattermost does with port 8067.
    """
    app = web.Application()
    app[CONTROL] = control
    app.router.add_get(paths.METRICS, metrics)
    return app

