"""A join costs the server O(1) offers and fan-out work, whatever the call's size.

The deployment guide's 1 call x 1000 participants fell behind while joining:
every join rebuilt every forwarding plan (all N receivers' fan-out targets
worked out again), rewired all N peers and sent its user_joined event through
N asyncio tasks. These tests count that work (the server's /stats `control`
counters, never timings): a join may cost the N user_joined deliveries the
protocol needs, but only a constant number of offers and fan-out targets.
bench/join_storm.py measures the same counters and the CPU at N = 100..1000.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from unittest import mock

import aiohttp
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callsctl_sfu.calls import forwarding
from callsctl_sfu.calls.forwarding import TrackRoutes
from callsctl_sfu.client.loadgen import LoadConfig, LoadTest
from callsctl_sfu.client.participant import Participant
from tests.support.clients import close_all, join_all
from tests.support.helpers import wait_until

# -- the per-track receiver table, one receiver at a time ----------------------------------------


@dataclass
class Down:
    negotiated: bool = True


class Receiver:
    """Stands in for a MediaPeer: counts how often its fan-out target is worked out."""

    def __init__(self, session_id: str, connected: bool = True, tcp: bool = False) -> None:
        self.session_id = session_id
        self.connected = connected
        self.tcp = tcp  # on ICE-TCP: connected, but only the Python path sends to it
        self.computed = 0

    def fanout_target(self, down: Down) -> tuple | None:
        self.computed += 1
        return (self.session_id,) if self.connected and not self.tcp else None


def test_one_receiver_changing_recomputes_only_its_own_target() -> None:
    receivers = [Receiver(f"s{i}") for i in range(1000)]
    routes = TrackRoutes({r.session_id: (r, Down()) for r in receivers})
    plan = routes.plan()
    assert len(plan.targets) == 1000 and routes.targets_computed == 1000

    newcomer = Receiver("new", connected=False)
    down = Down(negotiated=False)
    routes.set("new", (newcomer, down))  # added before its negotiation finished
    assert len(routes.plan().targets) == 1000 and routes.targets_computed == 1000

    down.negotiated = True  # negotiated, not yet connected: no path can send to it yet,
    routes.set("new", (newcomer, down))  # so it keeps the track off neither
    plan = routes.plan()
    assert not plan.slow and len(plan.targets) == 1000 and routes.targets_computed == 1000

    newcomer.connected = True  # connected: now a C fan-out target
    routes.refresh("new")
    plan = routes.plan()
    assert len(plan.targets) == 1001 and not plan.slow
    assert routes.targets_computed == 1001
    assert sum(r.computed for r in receivers) == 1000  # nobody else was worked out again

    routes.set("s7", None)  # a receiver leaves
    plan = routes.plan()
    assert len(plan.targets) == 1000 and ("s7",) not in plan.targets
    assert routes.targets_computed == 1001 and routes.plan() is plan

    routes.set("tcp", (Receiver("tcp", tcp=True), Down()))  # connected over ICE-TCP
    plan = routes.plan()
    assert [r[0].session_id for r in plan.slow] == ["tcp"] and len(plan.targets) == 1000


def test_a_change_is_reported_once_until_the_plan_is_assembled_again() -> None:
    """The forwarder replans a changed track in the same turn of the event loop; one
    report per change-set, and the C ingress's route is emptied at the change."""

    class Route:
        targets: list | None = None

    changes: list[TrackRoutes] = []
    routes = TrackRoutes({f"s{i}": (Receiver(f"s{i}"), Down()) for i in range(3)},
                         on_change=changes.append)
    routes.fast_route = Route()
    routes.fast_route.targets = routes.plan().targets
    routes.set("a", (Receiver("a"), Down()))
    routes.refresh("s1")
    routes.set("s2", None)
    assert changes == [routes] and routes.fast_route.targets is None
    routes.fast_route.targets = routes.plan().targets
    assert sorted(t[0] for t in routes.fast_route.targets) == ["a", "s0", "s1"]
    routes.refresh("a")
    assert changes == [routes, routes]


def _contents(plan) -> tuple[list, list]:
    """A plan as what a user of it sees: (receiver, target) pairs and slow receivers."""
    for route, target in zip(plan.fast, plan.targets, strict=True):
        assert target == (route[0].session_id, route[0].generation)  # still paired
    return (sorted((r[0].session_id, t) for r, t in zip(plan.fast, plan.targets, strict=True)),
            sorted(r[0].session_id for r in plan.slow))


class Versioned(Receiver):
    """A receiver whose target names the state it was worked out in."""

    generation = 0

    def fanout_target(self, down: Down) -> tuple | None:
        self.computed += 1
        return (self.session_id, self.generation) if self.connected and not self.tcp else None


@pytest.mark.parametrize("share", [0, forwarding.REBUILD_SHARE])  # 0: never from scratch
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "leave", "refresh", "reconnect", "tcp",
                                           "unnegotiate", "plan"]),
                          st.integers(0, 11)), max_size=80))
def test_a_plan_assembled_from_the_last_one_is_the_plan_assembled_from_scratch(
        share, ops) -> None:
    """Whatever the changes, the incremental plan holds what a full assembly holds."""
    with mock.patch.object(forwarding, "REBUILD_SHARE", share):
        _compare_with_scratch(ops)


def _compare_with_scratch(ops) -> None:
    receivers = {i: Versioned(f"s{i}") for i in range(12)}
    downs = {i: Down() for i in range(12)}
    start = {f"s{i}": (receivers[i], downs[i]) for i in range(6)}
    incremental, scratch = TrackRoutes(dict(start)), TrackRoutes(dict(start))
    both = (incremental, scratch)
    assert _contents(incremental.plan()) == _contents(scratch.plan())
    for op, i in ops:
        sid, receiver, down = f"s{i}", receivers[i], downs[i]
        if op == "add":
            down.negotiated = True
            for routes in both:
                routes.set(sid, (receiver, down))
        elif op == "leave":
            for routes in both:
                routes.set(sid, None)
        elif op in ("refresh", "reconnect", "tcp"):
            if op == "reconnect":
                receiver.connected = not receiver.connected
                receiver.generation += 1
            elif op == "tcp":
                receiver.tcp = not receiver.tcp
                receiver.generation += 1
            for routes in both:
                routes.refresh(sid)
        elif op == "unnegotiate":  # the peer tells the forwarder: set() with its route
            down.negotiated = False
            for routes in both:
                routes.set(sid, (receiver, down))
        else:
            scratch._base = None  # assemble this one from every entry
            assert _contents(incremental.plan()) == _contents(scratch.plan())
    scratch._base = None
    assert _contents(incremental.plan()) == _contents(scratch.plan())


# -- on a real server ------------------------------------------------------------------------------


def _storm(server, size: int, duration: float, settle: float, edge: str,
           part: str) -> tuple[dict, dict[str, int]]:
    """`size` join one call over 2 s, 2 of them speaking; GET /stats `part` at the
    steady window's `edge` ("start": right after the joins; "end": everyone still in)."""
    config = LoadConfig(ws_url=server.ws_url, token_for=lambda c, u: server.token(c, u),
                        calls=1, users_per_call=size, unmuted=2, duration=duration,
                        join_duration=2, window=1, local_address="127.0.0.1",
                        settle_timeout=settle)
    seen: dict[str, int] = {}

    async def at_window(at: str) -> None:
        if at == edge:
            async with httpx.AsyncClient() as http:
                seen.update((await http.get(f"{server.api_url}/stats", timeout=5)).json()[part])

    report = asyncio.run(LoadTest(config, on_window=at_window).run()).to_dict()
    assert report["participants"]["joined"] == size, report["participants"]
    return report, seen


def test_joins_cost_constant_offers_and_fanout_work(server) -> None:
    """40 joins at 20/s with 2 speakers: per join O(1) offers, rewires and targets."""
    size = 40
    # At the window's end: everyone still in the call (leaving is not part of joining).
    _report, counts = _storm(server, size, duration=20, settle=8, edge="end", part="control")
    assert counts["joins"] == size
    # The N user_joined deliveries are the protocol: one to each participant present.
    assert counts["events_sent"] >= size * (size - 1) // 2
    # Everything else is O(1) per join. Rebuilding every plan on every change worked
    # out ~1.7 N fan-out targets per join (68 here) and rewired all N peers.
    assert counts["offers_sent"] <= size + 2, counts
    # A join rewires its newcomer; a speaker whose media starts late (a busy machine)
    # also rewires each listener already present once: at most N + 2 N here, where
    # rewiring everyone on every join is N^2 / 2 (800).
    assert counts["sources_changed"] <= 3 * size, counts
    assert counts["targets_computed"] <= 6 * size, counts
    assert counts["route_builds"] <= 4, counts  # each speaker's track, built once


async def test_publishers_joining_during_one_pending_offer_cost_two_offers(server):
    """k new speakers while the server's offer to A is unanswered: one more offer, not k."""
    first = Participant(server.ws_url, server.token("room", "a"), "room", "A", send_audio=False)
    await first.join()
    await first.wait_connected(15)
    held: asyncio.Queue = asyncio.Queue()  # A's incoming signals, held: it does not answer
    live, first._signals = first._signals, held
    mark = len(first.events)
    speakers = []
    try:
        speakers = await join_all(server, 4)
        assert await wait_until(lambda: held.qsize() >= 1, 10)
        await asyncio.sleep(1.0)  # time for more offers, if the server made them
        offers = [e for e in first.events[mark:] if e.get("type") == "signal"
                  and e["data"]["type"] == "offer"]
        assert len(offers) == 1, [e["type"] for e in first.events[mark:]]
        first._signals = live  # A answers now; the server re-offers once for the rest
        while not held.empty():
            live.put_nowait(held.get_nowait())
        for speaker in speakers:
            assert await wait_until(lambda s=speaker: first.frames_from[s.session_id] > 20,
                                    15), speaker.name
        offers = [e for e in first.events[mark:] if e.get("type") == "signal"
                  and e["data"]["type"] == "offer"]
        assert len(offers) == 2
    finally:
        await close_all([first, *speakers])


# -- the signaling send path: shared frames, and a client that stops reading -----------------


async def test_a_client_that_stops_reading_still_gets_every_event_in_order():
    """Events past the direct-write limit queue behind aiohttp's flow control, in order.

    Broadcasts never wait for a slow client (post() is synchronous); what it has
    not read yet is kept, and arrives complete and in order once it reads again.
    """
    from aiohttp import WSMsgType, web
    from aiohttp.test_utils import TestServer

    from callsctl_sfu.api.signaling import DIRECT_WRITE_LIMIT, SignalingConnection
    from callsctl_sfu.calls.shared import SharedEvent
    from callsctl_sfu.tokens import JoinGrant

    padding = "x" * 1000
    count = 3 * (DIRECT_WRITE_LIMIT // 1000) + 4000  # well past the limit and the kernel's
    queued_at_most = 0
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal queued_at_most
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        connection = SignalingConnection(ws, JoinGrant("c", "u", 0), None, 65536,  # type: ignore[arg-type]
                                         transport=request.transport)
        await ws.receive()  # the client says it has paused reading
        for number in range(count):
            event = {"type": "user_joined", "n": number, "pad": padding}
            connection.post(SharedEvent(event) if number % 2 else event)
            queued_at_most = max(queued_at_most, len(connection._outbox))
        await connection.send({"type": "last"})
        done.set()
        await ws.receive()  # until the client closes
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.make_url("/ws"), compress=0)
        ws._response.connection.transport.pause_reading()  # type: ignore[union-attr]
        await ws.send_str("paused")
        await asyncio.wait_for(done.wait(), 30)  # posting never waited for the client
        assert queued_at_most > 0, "the direct-write limit was never reached"
        ws._response.connection.transport.resume_reading()  # type: ignore[union-attr]
        numbers = []
        while True:
            frame = await asyncio.wait_for(ws.receive(), 30)
            assert frame.type == WSMsgType.TEXT
            event = json.loads(frame.data)
            if event["type"] == "last":
                break
            numbers.append(event["n"])
        assert numbers == list(range(count))
        await ws.close()


def test_speakers_stay_on_the_c_ingress_while_listeners_join(server) -> None:
    """30 listeners joining at 15/s while 2 speak: their packets are forwarded by the reader
    thread, not handed up to the event loop at every join.

    Each join changes every speaker's receivers twice (negotiated, then connected). The
    plan used to wait for the speaker's next packet, which the ingress handed up and the
    event loop fanned out, and a receiver still in its handshake kept the whole track on
    the Python path: in a storm most packets went through Python. /stats counts both.
    """
    # At the window's start: every listener joined, the storm just over.
    _report, seen = _storm(server, 32, duration=12, settle=6, edge="start", part="forwarding")
    # The speakers spoke during the joins (about 200 packets; fewer on a slow machine, where
    # they connect later, but enough that a per-join hand-up would show in what follows).
    assert seen["rtp_in"] > 50, seen
    in_python = seen["rtp_in"] - seen["rtp_in_c"]
    # A track's first packet registers its route, and a speaker's own negotiations take
    # its routes away once each: a few packets per speaker, not a few per join.
    assert in_python <= 12, seen
