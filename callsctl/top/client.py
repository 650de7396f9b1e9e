"""The admin REST API of `callsctl serve`, as `callsctl top` uses it.

Every failure becomes one of three exceptions whose message an operator can
act on, because the TUI shows them in a banner and `--once` prints them as the
one error line: the server cannot be reached (AdminUnreachable), it refuses
the key (AdminAuthError), or it answered with an error (AdminApiError).

A snapshot (Overview) is fetched with concurrent requests so one refresh costs
one round trip, and the optional parts (/system, /metrics, /stats, /version)
degrade to None when a server does not have them: an older server still shows
its calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from callsctl.top.model import Action, Overview
from callsctl_sfu.errors import CallsctlError

DEFAULT_TIMEOUT_S = 5.0
RCVBUF_METRIC = "callsctl_udp_rcvbuf_errors"
PROCESS_CPU_METRIC = "rtcd_process_cpu_seconds"

# How each host control maps onto the admin API (method, path template, body).
_ACTION_ROUTES: dict[str, tuple[str, str, bool]] = {
    "mute": ("POST", "/api/v1/calls/{call}/sessions/{session}/mute", False),
    "mute_others": ("POST", "/api/v1/calls/{call}/mute-others", True),
    "lower_hand": ("POST", "/api/v1/calls/{call}/sessions/{session}/lower-hand", False),
    "stop_screen": ("POST", "/api/v1/calls/{call}/sessions/{session}/stop-screen", False),
    "remove": ("DELETE", "/api/v1/calls/{call}/sessions/{session}", False),
    "make_host": ("POST", "/api/v1/calls/{call}/host", True),
    "end_call": ("DELETE", "/api/v1/calls/{call}", False),
}


class AdminError(CallsctlError):
    """Base of everything the admin client raises; `message` is one line for a human."""
    code = "admin_error"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class AdminUnreachable(AdminError):
    """No HTTP answer at all: refused, timed out, reset, TLS failure."""
    code = "unreachable"


class AdminAuthError(AdminError):
    """401/403: the key is missing or wrong. Retrying will not help until it changes."""
    code = "admin_unauthorized"


class AdminApiError(AdminError):
    """The server answered with an error status other than 401/403."""
    code = "admin_api_error"


@dataclass
class AdminClient:
    """One httpx client bound to a server URL and its admin key."""

    base_url: str
    admin_key: str
    timeout: float = DEFAULT_TIMEOUT_S
    verify: bool | str = True  # False: no TLS check; a path: trust that CA file
    _http: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.base_url, timeout=self.timeout, verify=self.verify,
                headers={"Authorization": f"Bearer {self.admin_key}",
                         "Accept": "application/json"})
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- plumbing ---------------------------------------------------------------------

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None
                      ) -> httpx.Response:
        """Send one request; map transport failures and error statuses to AdminError."""
        try:
            response = await self.http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise AdminUnreachable(
                f"no answer from {self.base_url} within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise AdminUnreachable(f"cannot reach {self.base_url}: {_reason(exc)}") from None
        if response.status_code in (401, 403):
            raise AdminAuthError(
                f"{self.base_url} refused the admin key ({response.status_code}"
                f"{': ' + _error_text(response) if _error_text(response) else ''}); pass the "
                "key of that server with --admin-key or CALLSCTL_ADMIN_KEY, or --data-dir of "
                "that server to read its admin_key file", response.status_code)
        if response.status_code >= 400:
            detail = _error_text(response) or response.reason_phrase
            raise AdminApiError(f"{method} {path}: {response.status_code} {detail}",
                                response.status_code)
        return response

    async def get_json(self, path: str) -> dict[str, Any]:
        response = await self.request("GET", path)
        try:
            data = response.json()
        except ValueError:
            raise AdminApiError(f"GET {path}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise AdminApiError(f"GET {path}: expected a JSON object")
        return data

    async def _optional(self, coro: Any) -> Any:
        """A part of the snapshot that may be missing on this server (404 -> None)."""
        try:
            return await coro
        except AdminApiError:
            return None

    # -- reads ------------------------------------------------------------------------------

    async def calls(self) -> list[dict[str, Any]]:
        data = await self.get_json("/api/v1/calls")
        calls = data.get("calls")
        if not isinstance(calls, list):
            raise AdminApiError("GET /api/v1/calls: no \"calls\" list in the answer")
        return [c for c in calls if isinstance(c, dict)]

    async def call(self, call_id: str) -> dict[str, Any]:
        return await self.get_json(f"/api/v1/calls/{quote(call_id, safe='')}")

    async def metrics_text(self) -> str:
        response = await self.request("GET", "/metrics")
        return response.text

    async def overview(self) -> Overview:
        """Calls plus server health in one round of concurrent requests."""
        results = await asyncio.gather(
            self.calls(),
            self._optional(self.get_json("/system")),
            self._optional(self.get_json("/version")),
            self._optional(self.get_json("/stats")),
            self._optional(self.metrics_text()),
            self._optional(self.get_json("/api/v1/fleet/nodes")),
            return_exceptions=True)
        # The most telling failure wins: a refused key explains everything else.
        errors = [r for r in results if isinstance(r, BaseException)]
        for kind in (AdminAuthError, AdminUnreachable, AdminError):
            for error in errors:
                if isinstance(error, kind):
                    raise error
        for error in errors:
            raise error
        calls, system, version, stats, metrics, fleet = results
        nodes = fleet.get("nodes") if isinstance(fleet, dict) else None
        return Overview(calls=calls, system=system, version=version, stats=stats,
                        nodes=[n for n in nodes if isinstance(n, dict)]
                        if isinstance(nodes, list) else None,
                        rcvbuf_errors=parse_rcvbuf_errors(metrics) if metrics else None,
                        process_cpu_seconds=(parse_counter(metrics, PROCESS_CPU_METRIC)
                                             if metrics else None))

    async def call_detail(self, call_id: str) -> dict[str, Any] | None:
        """GET /api/v1/calls/{id}, or None when the call has ended (404)."""
        try:
            return await self.call(call_id)
        except AdminApiError as exc:
            if exc.status == 404:
                return None
            raise

    # -- writes -----------------------------------------------------------------------------

    async def act(self, action: Action) -> dict[str, Any]:
        """Apply one host control; returns the server's JSON answer (may be empty)."""
        method, template, with_body = _ACTION_ROUTES[action.kind]
        path = template.format(call=quote(action.call_id, safe=""),
                               session=quote(action.session_id or "", safe=""))
        body = {"session_id": action.session_id} if with_body else None
        response = await self.request(method, path, body)
        with contextlib.suppress(ValueError):
            data = response.json()
            if isinstance(data, dict):
                return data
        return {}

    # -- events -----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """GET /api/v1/events as parsed SSE messages; ends when the stream ends."""
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with self.http.stream("GET", "/api/v1/events", timeout=timeout,
                                        headers={"Accept": "text/event-stream"}) as response:
                if response.status_code in (401, 403):
                    raise AdminAuthError(f"{self.base_url} refused the admin key",
                                         response.status_code)
                if response.status_code >= 400:
                    raise AdminApiError(f"GET /api/v1/events: {response.status_code}",
                                        response.status_code)
                parser = SseParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise AdminUnreachable(f"event stream from {self.base_url}: {_reason(exc)}"
                                   ) from None


class SseParser:
    """Server-Sent Events, line by line: `event:` and `data:` fields, blank line ends one."""

    def __init__(self) -> None:
        self.kind = ""
        self.data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        line = line.rstrip("\r")
        if not line:
            if not self.data:
                self.kind = ""
                return None
            text = "\n".join(self.data)
            kind, self.kind, self.data = self.kind, "", []
            try:
                payload = json.loads(text)
            except ValueError:
                payload = {"data": text}
            if not isinstance(payload, dict):
                payload = {"data": payload}
            payload.setdefault("type", kind or "message")
            return payload
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        return None


def parse_counter(text: str, name: str) -> float | None:
    """A counter's value (summed over labels) from a Prometheus exposition, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(text):
            if family.name == name:
                return sum(sample.value for sample in family.samples
                           if sample.name in (name, name + "_total"))
    except ValueError:  # a broken exposition must not break the view
        return None
    return None


def parse_rcvbuf_errors(text: str) -> int | None:
    """The host's UDP receive-buffer drop counter from a Prometheus exposition."""
    value = parse_counter(text, RCVBUF_METRIC)
    return None if value is None else int(value)


def _reason(exc: httpx.HTTPError) -> str:
    """The innermost cause, which is what says 'connection refused' or 'no such host'."""
    cause: BaseException = exc
    for _ in range(10):  # exception chains are short; never loop on a cycle
        if isinstance(cause, ConnectionRefusedError) or \
                getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return "connection refused (is `callsctl serve` running there?)"
        nxt = cause.__cause__ or cause.__context__
        if nxt is None:
            break
        cause = nxt
    return str(cause) or str(exc) or type(exc).__name__


def _error_text(response: httpx.Response) -> str:
    """The `error` of the API's JSON error body, else a short slice of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return ""
