"""One token cannot hold unlimited sessions.

The audit opened 50 websockets with one token and got 50 sessions that never
connected media and were never removed. Now a user holds at most
max_sessions_per_user sessions per call (a join beyond that replaces the
user's oldest; a session whose signaling connection already dropped is
replaced first, as a reconnect would), and a session whose media does not
connect within media_connect_timeout seconds is removed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx

from callsctl_sfu.client.participant import Participant

MEDIA_TIMEOUT = "3"


def sessions(server: Any) -> int:
    return httpx.get(f"{server.api_url}/stats", timeout=5).json()["sessions"]


async def wait_sessions(server: Any, wanted: int, timeout: float = 10) -> int:
    count = -1
    for _ in range(int(timeout / 0.1)):
        count = sessions(server)
        if count == wanted:
            break
        await asyncio.sleep(0.1)
    return count


async def open_and_join(http: aiohttp.ClientSession, server: Any, user: str
                        ) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{server.ws_url}?token={server.token('room', user)}")
    await ws.send_str(json.dumps({"type": "join", "call": "room", "name": user}))
    while True:
        event = json.loads((await ws.receive(timeout=10)).data)
        if event["type"] == "joined":
            return ws
        assert event["type"] != "error", event


async def received(ws: aiohttp.ClientWebSocketResponse) -> list[dict]:
    events = []
    while True:
        try:
            frame = await ws.receive(timeout=0.5)
        except TimeoutError:
            return events
        if frame.type != aiohttp.WSMsgType.TEXT:
            return events
        events.append(json.loads(frame.data))


async def test_one_token_many_sockets_holds_a_bounded_number(serve_factory) -> None:
    server = serve_factory(env={"CALLSCTL_MEDIA_CONNECT_TIMEOUT": "60",
                                "CALLSCTL_WS_RATE_LIMIT": "1000"})
    async with aiohttp.ClientSession() as http:
        sockets = [await open_and_join(http, server, "mallory") for _ in range(12)]
        assert await wait_sessions(server, 2) == 2  # the default max_sessions_per_user
        first = await received(sockets[0])
        assert any(e.get("code") == "session_removed" and "again" in e["message"]
                   for e in first), first
        # Another user is not affected by mallory's joins.
        other = await open_and_join(http, server, "olga")
        assert await wait_sessions(server, 3) == 3
        # Joins sent all at once, without waiting for answers, are bounded the same way.
        token = server.token("room", "trent")
        burst = [await http.ws_connect(f"{server.ws_url}?token={token}") for _ in range(12)]
        await asyncio.gather(*(ws.send_str(json.dumps({"type": "join", "call": "room"}))
                               for ws in burst))
        await asyncio.sleep(1)
        assert await wait_sessions(server, 5) == 5
        for ws in [*sockets, other, *burst]:
            await ws.close()


async def test_a_rejoin_replaces_the_dropped_session_at_once(serve_factory) -> None:
    server = serve_factory(env={"CALLSCTL_MEDIA_CONNECT_TIMEOUT": "60",
                                "CALLSCTL_RECONNECT_GRACE": "30"})
    async with aiohttp.ClientSession() as http:
        first = await open_and_join(http, server, "rita")
        await first.close()  # a page reload: the old socket is gone, its session lingers
        second = await open_and_join(http, server, "rita")
        assert await wait_sessions(server, 1) == 1
        await second.close()


async def test_sessions_without_media_are_removed_after_the_timeout(serve_factory) -> None:
    server = serve_factory(env={"CALLSCTL_MEDIA_CONNECT_TIMEOUT": MEDIA_TIMEOUT})
    speaker = Participant(server.ws_url, server.token("room", "sam"), "room", "Sam")
    async with aiohttp.ClientSession() as http:
        idle = [await open_and_join(http, server, f"idle{i}") for i in range(5)]
        await speaker.join()
        await speaker.wait_connected(15)
        assert sessions(server) == 6
        # The idle ones go; the one with media stays.
        assert await wait_sessions(server, 1, timeout=float(MEDIA_TIMEOUT) + 8) == 1
        events = await received(idle[0])
        assert any("media did not connect" in e.get("message", "") for e in events), events
        for ws in idle:
            await ws.close()
    await speaker.close()
    assert "media did not connect" in server.log()
