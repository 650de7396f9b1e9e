"""Media across the fleet: a client joining through a node that does not host the call.

Signaling takes the extra hop (relayed by the node the client reached); media
must go straight to the hosting node's media port, and everyone hears
everyone: an aiortc participant through node B and one (or a real Chromium
with the web client) on node A.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.rtc import aiortc_bridge
from tests.support.fleet import (
    RedisServer,
    admin_headers,
    need_redis,
    no_tracebacks,
    start_node,
    token,
)
from tests.support.serve import ServeProcess


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[RedisServer, list[ServeProcess]]]:
    need_redis()
    redis = RedisServer(tmp_path).start()
    nodes = [start_node(tmp_path, redis.url, "--cluster-policy", "local", node_id=name)
             for name in ("node-a", "node-b")]
    yield redis, nodes
    for node in nodes:
        node.stop()
    redis.stop()
    no_tracebacks(*nodes)


async def _until(predicate: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


def _media_port(participant: Participant) -> int:
    connection = aiortc_bridge.ice_connection(participant.pc.sctp.transport.transport)
    return aiortc_bridge.nominated_pair(connection).remote_addr[1]


async def test_relayed_participant_hears_and_is_heard_media_goes_to_the_host(fleet, tmp_path):
    _redis, (a, b) = fleet
    on_a = Participant(a.ws_url, token(a, "room", "alice"), "room", "Alice", tone=440)
    via_b = Participant(b.ws_url, token(b, "room", "bob"), "room", "Bob", tone=660)
    try:
        await on_a.join()
        await via_b.join()
        # Bob reached node B, but joined Alice's call on node A.
        assert [p["user"] for p in via_b.joined["participants"]] == ["alice"]
        await on_a.wait_connected()
        await via_b.wait_connected()
        assert await _until(lambda: on_a.frames_from[via_b.session_id] > 25
                            and via_b.frames_from[on_a.session_id] > 25, 20), \
            (dict(on_a.frames_from), dict(via_b.frames_from))
        # Bob's media goes to node A's media port, not node B's.
        assert _media_port(via_b) == a.udp_port
        # Events flow through the relay: Alice mutes, Bob sees it.
        await on_a.send({"type": "mute"})
        event = await via_b.wait_for(lambda e: e["type"] == "user_muted", 5)
        assert event["session_id"] == on_a.session_id
        stats_b = httpx.get(f"{b.api_url}/stats", timeout=5).json()
        assert stats_b["sessions"] == 0 and stats_b["calls"] == 0  # node B hosts nothing
        shown = httpx.get(f"{b.api_url}/api/v1/calls/room", headers=admin_headers(tmp_path),
                          timeout=5)
        assert shown.status_code == 200, shown.text  # answered by node A, through node B
        assert sorted(s["user"] for s in shown.json()["sessions"]) == ["alice", "bob"]
    finally:
        await on_a.close()
        await via_b.close()


async def test_reconnect_through_another_node_keeps_the_session(fleet):
    _redis, (a, b) = fleet
    alice = Participant(a.ws_url, token(a, "room", "alice"), "room", "Alice")
    try:
        await alice.join()
        await alice.wait_connected()
        session_id = alice.session_id
        # Signaling drops; the client comes back through node B (another LB pick).
        await alice._ws.close()
        alice._ws = await alice._http.ws_connect(f"{b.ws_url}?token={alice.token}")
        alice._tasks.append(asyncio.create_task(alice._read_loop()))
        await alice.send({"type": "reconnect", "session_id": session_id})
        event = await alice.wait_for(lambda e: e["type"] in ("joined", "error")
                                     and e.get("reconnected", True), 10)
        assert event["type"] == "joined" and event["session_id"] == session_id, event
    finally:
        await alice.close()


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
def test_chromium_on_one_node_and_aiortc_through_another_hear_each_other(fleet):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from playwright.sync_api import sync_playwright

    from tests.support.browser import BrowserParticipant as Browser
    from tests.support.browser import wait_for_audio
    from tests.support.chromium import CHROMIUM_FLAGS

    _redis, (a, b) = fleet
    bot = Participant(b.ws_url, token(b, "room", "bot"), "room", "Bot", tone=550)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_FLAGS)
        page = Browser(browser, "chromium-on-a")
        try:
            page.join(f"{a.api_url}/?token={token(a, 'room', 'carol')}", "Carol")
            page.unmute()  # the web client joins muted, as Mattermost's does
            run(bot.join())
            run(bot.wait_connected())
            page.wait_media_connected()
            wait_for_audio(page, [bot.session_id])
            heard = run(_until(lambda: bot.frames_from[page.session_id] > 25, 20))
            assert heard, dict(bot.frames_from)
            assert _media_port(bot) == a.udp_port
        finally:
            run(bot.close())
            page.close()
            browser.close()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
