"""The collector policy (callsctl_sfu/gcpolicy.py): freeze while a call fills, thaw and collect.

What a user would notice if it were wrong: full collections walking every
session during a join storm (long gaps in everyone's audio), or a departed
session's reference cycles never freed (memory that only grows). Both are
checked on the real collector: a cycle made before a freeze survives
`gc.collect()` while frozen and is gone after the thaw. The server's GET
/stats shows the freezes and the collections' pauses.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import httpx
import pytest

from callsctl_sfu import gcpolicy
from callsctl_sfu.gcpolicy import CollectorPolicy
from tests.support.clients import close_all, join_all
from tests.support.helpers import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cycle:
    """A departed session's leftovers: garbage only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def policy() -> Iterator[tuple[CollectorPolicy, Clock]]:
    clock = Clock()
    made = CollectorPolicy(max_frozen_s=600, min_sessions=10, clock=clock)
    made.install()
    yield made, clock
    made.close()
    gc.unfreeze()


def _cycle_garbage() -> weakref.ref:
    leftover = Cycle()
    ref = weakref.ref(leftover)
    del leftover
    return ref


def test_joins_freeze_and_the_end_of_the_big_call_thaws_and_frees_departed_cycles(policy) -> None:
    collector, clock = policy
    gone = _cycle_garbage()  # made before the freeze, garbage from the start
    collector.joined()
    collector.tick(sessions=50)
    assert collector.frozen and gc.get_freeze_count() > 0
    gc.collect()
    assert gone() is not None, "a frozen cycle was collected: the freeze did nothing"
    clock.now += 60
    collector.tick(sessions=50)  # no join since, still big: stays frozen
    assert collector.frozen
    collector.tick(sessions=9)  # the big call ended: thaw and one full collection
    assert not collector.frozen and gc.get_freeze_count() == 0
    assert gone() is None, "the departed session's cycle outlived the thaw"
    assert collector.pauses[2].count >= 1 and collector.thaws == 1
    assert collector.thaw_collected >= 1  # the cycle, at least
    assert collector.stats()["thaw_collected"] == collector.thaw_collected


def test_a_server_that_never_stops_taking_joins_still_collects_every_max_frozen_s(policy) -> None:
    collector, clock = policy
    gone = None
    for second in range(700):
        if second == 1:
            gone = _cycle_garbage()
        collector.joined()
        collector.tick(sessions=500 + second)  # one more each second, nobody leaving
        clock.now += 1
        if not collector.frozen:
            break
    assert gone is not None and gone() is None
    assert collector.thaws == 1 and 600 <= second <= 601
    collector.joined()
    collector.tick(sessions=1200)
    assert collector.frozen  # and it freezes again for the joins that keep coming


def test_as_many_departures_as_sessions_thaws_the_big_call(policy) -> None:
    """Whatever cycles departed sessions leave, the freeze keeps until a thaw: as many
    departures as sessions in, and the thaw frees them; fewer, and the call stays frozen
    (no stall)."""
    collector, clock = policy
    collector.joined()
    collector.tick(sessions=400)  # frozen with 400 in
    for _ in range(20):  # 20 more join
        collector.joined()
    gone = _cycle_garbage()  # made after the freeze: a gen2 collection would free it
    gc.freeze()  # as the next tick's freeze would: now only a thaw frees it
    clock.now += 5
    collector.tick(sessions=420 - 209)  # 209 left: 209 < 211 in
    assert collector.frozen and gone() is not None
    assert collector.departed_while_frozen(211) == 209
    clock.now += 5
    collector.tick(sessions=420 - 210)  # 210 left: 210 >= 210 in
    assert not collector.frozen and collector.thaws == 1
    assert gone() is None and collector.thaw_collected >= 1


def test_small_servers_and_quiet_servers_are_never_frozen(policy) -> None:
    collector, _clock = policy
    collector.joined()
    collector.tick(sessions=9)  # under min_sessions
    collector.tick(sessions=50)  # big, but nobody joined since the last tick
    assert not collector.frozen and collector.freezes == 0


def test_off_by_the_switch_it_only_times_the_collections(monkeypatch) -> None:
    monkeypatch.setenv(gcpolicy.ENV, "0")
    collector = CollectorPolicy()
    assert collector.min_sessions is None
    collector.install()
    try:
        collector.joined()
        collector.tick(sessions=5000)
        gc.collect()
    finally:
        collector.close()
    assert not collector.frozen and gc.get_freeze_count() == 0
    assert collector.pauses[2].count >= 1 and collector.pauses[2].max_ms > 0
    monkeypatch.setenv(gcpolicy.ENV, "3")
    assert CollectorPolicy().min_sessions == 3
    monkeypatch.delenv(gcpolicy.ENV)
    assert CollectorPolicy().min_sessions == gcpolicy.MIN_SESSIONS
    # the load generator has a switch of its own, so a bench can turn the server's off alone
    monkeypatch.setenv(gcpolicy.ENV, "0")
    assert gcpolicy.min_sessions_from_env(gcpolicy.LOADGEN_ENV) == gcpolicy.MIN_SESSIONS
    monkeypatch.setenv(gcpolicy.LOADGEN_ENV, "off")
    assert gcpolicy.min_sessions_from_env(gcpolicy.LOADGEN_ENV) is None


def test_close_gives_the_frozen_objects_back(policy) -> None:
    collector, _clock = policy
    collector.joined()
    collector.tick(sessions=50)
    assert gc.get_freeze_count() > 0
    collector.close()
    assert gc.get_freeze_count() == 0


async def test_the_server_freezes_as_a_call_fills_and_stats_show_the_pauses(serve_factory):
    server = serve_factory(env={gcpolicy.ENV: "2"})  # freeze from 2 sessions on
    people = await join_all(server, 3)
    try:
        def frozen() -> dict:
            return httpx.get(f"{server.api_url}/stats", timeout=5).json()["gc"]

        assert await wait_until(lambda: frozen()["freezes"] >= 1, 10), frozen()
        stats = frozen()
        assert stats["frozen"] and "frozen_objects" not in stats  # an O(n) walk: not polled
        assert stats["freeze_from_sessions"] == 2
        assert set(stats["pauses"]) == {"gen0", "gen1", "gen2"}
        assert stats["pauses"]["gen0"]["count"] > 0  # the server's own collections, timed
        # and media still flows to everyone with the session objects frozen
        assert await wait_until(lambda: all(sum(p.frames_from.values()) > 25
                                            for p in people), 10)
    finally:
        await close_all(people)


async def test_departed_sessions_leave_no_cycles_for_the_thaw(serve_factory):
    """A frozen server keeps departed sessions' reference cycles until it thaws; sessions
    leaving (cleanly, and by a dropped connection) must leave next to none
    (api/wsrelease.py), where aiohttp's closed WebSockets left about 60 objects each."""
    server = serve_factory(env={gcpolicy.ENV: "1"})  # freeze from 1 session on
    kept = await join_all(server, 1, call="kept")
    leavers = await join_all(server, 6)
    # One kept-alive connection for the polls: each new one would leave asyncio's own
    # 5-object cycle in the server (what the assertion allows for, per departure).
    api = httpx.Client(base_url=server.api_url, timeout=5)

    def stats() -> dict:
        return api.get("/stats").json()["gc"]

    try:
        assert await wait_until(lambda: stats()["frozen"], 10), stats()
        # Let the leavers' joins be frozen too: the tick after the last join freezes.
        await asyncio.sleep(1.5)
        for participant in leavers[:3]:  # cleanly: `leave`, then close
            await participant.leave()
        await close_all(leavers[3:])  # dropped, as a closed tab: no goodbye
        assert await wait_until(lambda: stats()["thaws"] >= 1, 15), stats()
        # Before api/wsrelease.py and MediaPeer.close's releases: over 3,000 (some 500
        # a session). What is left is asyncio's own 5-object cycle per closed TCP
        # connection (these 6 WebSockets) and what else is in flight when the thaw comes:
        # 36 on a quiet machine, about 100 with both CPUs busy.
        collected = stats()["thaw_collected"]
        assert collected < 6 * 40, f"the thaw found {collected} unreachable objects"
    finally:
        api.close()
        await close_all(kept + leavers)
