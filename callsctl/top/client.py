"""What `callsctl top` asks the admin API, on top of the shared client.

The HTTP, the paths and the errors are callsctl.adminclient's (the same
client `calls` and `record` use); the names below stay importable from here.
What is top's own: a snapshot (Overview) fetched with concurrent requests so
one refresh costs one round trip, where the optional parts (/system, /metrics,
/stats, /version, the fleet's nodes) degrade to None when a server does not
have them, so an older server still shows its calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from callsctl.adminclient import (
    AdminApiError,
    AdminAuthError,
    AdminError,
    AdminUnreachable,
    AsyncAdminClient,
    Connection,
    SseParser,
)
from callsctl.top.model import Action, Overview
from callsctl_sfu.api import paths

__all__ = ["AdminApiError", "AdminAuthError", "AdminClient", "AdminError", "AdminUnreachable",
           "Connection", "SseParser", "parse_counter", "parse_rcvbuf_errors"]

DEFAULT_TIMEOUT_S = 5.0  # a refresh must not hang on a stuck server (command.py scales it)
RCVBUF_METRIC = "callsctl_udp_rcvbuf_errors"
PROCESS_CPU_METRIC = "rtcd_process_cpu_seconds"


async def _optional(coro: Any) -> Any:
    """A part of the snapshot that may be missing on this server (an API error -> None)."""
    try:
        return await coro
    except AdminApiError:
        return None


class AdminClient(AsyncAdminClient):
    """The shared asyncio admin client plus top's snapshot and host controls."""

    def __init__(self, base_url: str | Connection, admin_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, verify: Any = True) -> None:
        super().__init__(base_url, admin_key, timeout=timeout, verify=verify)

    async def calls(self) -> list[dict[str, Any]]:
        data = await self.list_calls()
        calls = data.get("calls")
        if not isinstance(calls, list):
            raise AdminApiError(f"{self.base_url} answered GET {paths.CALLS} without a "
                                "\"calls\" list: is this a callsctl server?")
        return [c for c in calls if isinstance(c, dict)]

    async def call(self, call_id: str) -> dict[str, Any]:
        return await self.show_call(call_id)

    async def overview(self) -> Overview:
        """Calls plus server health in one round of concurrent requests."""
        results = await asyncio.gather(
            self.calls(),
            _optional(self.system()),
            _optional(self.version()),
            _optional(self.stats()),
            _optional(self.metrics_text()),
            _optional(self.fleet_nodes()),
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

    async def act(self, action: Action) -> dict[str, Any]:
        """Apply one host control; returns the server's JSON answer."""
        return await self.control(action.kind, action.call_id, action.session_id)


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
