"""Helpers for tests of the admin API: an authenticated client and an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx

from callsctl_sfu.client.participant import Participant


def admin_key(server: Any) -> str:
    return (server.data_dir / "admin_key").read_text().strip()


def admin_client(server: Any, **kwargs: Any) -> httpx.AsyncClient:
    """httpx client for the admin API of a ServeProcess, with the admin key."""
    return httpx.AsyncClient(base_url=server.api_url, timeout=10,
                             headers={"Authorization": f"Bearer {admin_key(server)}"},
                             **kwargs)


async def join(server: Any, call: str, user: str, tone: float = 440.0,
               wait: bool = True) -> Participant:
    participant = Participant(server.ws_url, server.token(call, user), call, user.title(),
                              tone=tone)
    try:
        await participant.join()
        if wait:
            await participant.wait_connected(15)
    except BaseException:
        await participant.close()  # a refused join still opened a session and a socket
        raise
    return participant


class EventStream:
    """Reads GET /api/v1/events (SSE) in the background into `events`."""

    def __init__(self, server: Any, query: str = "") -> None:
        self.url = f"{server.api_url}/api/v1/events{query}"
        self.key = admin_key(server)
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> EventStream:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        assert self._session is not None
        async with self._session.get(self.url, headers={
                "Authorization": f"Bearer {self.key}"}) as response:
            self.status = response.status
            kind, data = None, []
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":") and not self._ready.is_set():
                    self._ready.set()  # the server's greeting comment: subscribed
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    event = json.loads("\n".join(data))
                    event["_sse_event"] = kind
                    self.events.append(event)
                    kind, data = None, []

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no matching SSE event in {timeout:g} s; got "
                           f"{[e.get('type') for e in self.events]}")


def env_of(server) -> dict[str, str]:
    return {"CALLSCTL_SERVER": server.api_url, "CALLSCTL_ADMIN_KEY": admin_key(server)}


async def job_state(http, job_id: str, states: tuple[str, ...], timeout: float = 90) -> dict:
    job: dict = {}
    for _ in range(int(timeout / 0.25)):
        job = (await http.get(f"/api/v1/jobs/{job_id}")).json()
        if job["state"] in states:
            return job
        await asyncio.sleep(0.25)
    raise AssertionError(f"job never reached {states}: {job}")
