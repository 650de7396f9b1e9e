"""How one publisher track's packets reach its receivers: routes and a plan, kept per track.

Receivers on the shared IPv4 UDP socket are sent to by the C fan-out
(rtc/_fanout.c: header rewrite, SRTP protect and sendmmsg for all of them in one
call); everyone else (ICE-TCP, IPv6, not yet connected) goes through the
per-receiver Python path, MediaPeer.send_rtp.

A track's receivers change one at a time (one joins, negotiates, connects,
renominates or leaves), so they are kept one entry per receiver
(`TrackRoutes`): a change touches that receiver's entry only, and its fan-out
target is worked out again for it alone. The plan the hot path uses is then
re-assembled, a copy with no per-receiver decisions, the next time the track
forwards. A join in a call of N thus costs O(1) target computations per track,
where rebuilding every plan from scratch cost O(N) per change and made a join
storm quadratic (bench/join_storm.py).

The re-assembly is incremental too: the last plan's lists are copied (a C-level
copy, no Python per receiver) and only the changed receivers are taken out
(the last entry moved into the hole) and put back. Walking all N entries in
Python on every change cost about 110 µs per change at N = 1000, paid for
every speaker's track at every join and leave; only a change of more than a
quarter of the receivers at once re-assembles from the entries. The lists are
copied, never changed in place: the C ingress and the fan-out hold the plan
they were given (`fast_route.targets`) until they are handed the next one.

A change empties the track's route in the C ingress (its packets would come up
to Python, which decides them afresh) and tells the forwarder (`on_change`),
which re-assembles the plan at once and hands it back to the ingress. Waiting
for the track's next packet instead sent that packet's whole fan-out from the
event loop, and so did every packet the reader thread read meanwhile: in a join
storm, where every join changes every speaker's receivers twice (negotiated,
connected), that was a large share of the call's packets, and the joins
themselves waited behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # built on aiortc: loaded with the first call (rtc/medialoader.py)
    from callsctl_sfu.rtc.peer import DownTrack, MediaPeer

Route = tuple["MediaPeer", "DownTrack"]
_UNKNOWN: Any = object()  # an entry whose fan-out target is still to be worked out


@dataclass(slots=True)
class Plan:
    """One track's receivers split by how they are sent to."""

    targets: list[Any] = field(default_factory=list)  # fastpath.Target, one per receiver
    fast: list[Route] = field(default_factory=list)  # the same receivers, in the same order
    slow: list[Route] = field(default_factory=list)  # the Python path


REBUILD_SHARE = 4  # more than 1/4 of the receivers changed at once: assemble from scratch


class TrackRoutes:
    """One publisher track's receivers (session id -> route), updated one receiver at a time."""

    __slots__ = ("_entries", "_routes", "_plan", "_base", "_changed", "_where", "_fast_ids",
                 "_slow_ids", "targets_computed", "fast_route", "on_change")

    def __init__(self, routes: dict[str, Route],
                 on_change: Callable[[TrackRoutes], None] | None = None) -> None:
        # session id -> [route, fan-out target or None (Python path) or _UNKNOWN]
        self._entries: dict[str, list[Any]] = {sid: [route, _UNKNOWN]
                                                for sid, route in routes.items()}
        self._routes: list[Route] | None = None
        self._plan: Plan | None = None
        # The last assembled plan, and what changed since: the next one is made from it.
        self._base: Plan | None = None
        self._changed: set[str] = set()
        # The receivers in _base: session id -> its index in Plan.fast (= Plan.targets),
        # or ~index in Plan.slow; and the session id at each index of both.
        self._where: dict[str, int] = {}
        self._fast_ids: list[str] = []
        self._slow_ids: list[str] = []
        self.targets_computed = 0  # fanout_target calls (bench/join_storm.py counts them)
        # The track's route in the C ingress (fastpath.InRoute) while it forwards the
        # current plan; emptied with the plan, then given the new one (on_change).
        self.fast_route: Any = None
        # Told of each change (the forwarder re-assembles the plan for the C ingress).
        self.on_change = on_change

    def _invalidate(self, receiver_id: str) -> None:
        self._changed.add(receiver_id)
        if self._plan is None:
            return  # already waiting to be assembled: the forwarder was told then
        self._plan = None
        if self.fast_route is not None:
            self.fast_route.targets = None
        if self.on_change is not None:
            self.on_change(self)

    def set(self, receiver_id: str, route: Route | None) -> None:
        """A receiver's route (None: it no longer receives this track)."""
        if route is None:
            if self._entries.pop(receiver_id, None) is None:
                return
        else:
            # Even the same route: its negotiation may have changed, which the plan reflects.
            self._entries[receiver_id] = [route, _UNKNOWN]
        self._routes = None
        self._invalidate(receiver_id)

    def refresh(self, receiver_id: str) -> None:
        """The receiver's negotiation or path changed: work out its target again."""
        entry = self._entries.get(receiver_id)
        if entry is not None:
            entry[1] = _UNKNOWN
            self._invalidate(receiver_id)

    @property
    def current(self) -> Plan | None:
        """The assembled plan, or None when a change is waiting to be assembled."""
        return self._plan

    def __contains__(self, receiver_id: str) -> bool:
        return receiver_id in self._entries

    @property
    def routes(self) -> list[Route]:
        if self._routes is None:
            self._routes = [entry[0] for entry in self._entries.values()]
        return self._routes

    def plan(self) -> Plan:
        """The C fan-out's plan: the last one with the changed receivers taken out and put
        back (targets worked out only where unknown), or assembled from every entry."""
        plan = self._plan
        if plan is not None:
            return plan
        base, changed = self._base, self._changed
        if base is None or len(changed) * REBUILD_SHARE > len(self._entries):
            plan = self._assemble_all()
        else:
            plan = Plan(base.targets.copy(), base.fast.copy(), base.slow.copy())
            for receiver_id in changed:
                self._take_out(receiver_id, plan)
                entry = self._entries.get(receiver_id)
                if entry is not None:
                    self._place(receiver_id, entry, plan)
        changed.clear()
        self._plan = self._base = plan
        return plan

    def _assemble_all(self) -> Plan:
        """The plan from every entry (a track's first, or after many changes at once)."""
        self._where, self._fast_ids, self._slow_ids = {}, [], []
        plan = Plan()
        for receiver_id, entry in self._entries.items():
            self._place(receiver_id, entry, plan)
        return plan

    def _place(self, receiver_id: str, entry: list[Any], plan: Plan) -> None:
        """Put one receiver into the plan being assembled, where its target says."""
        route, target = entry
        down = route[1]
        if not down.negotiated:
            return
        if target is _UNKNOWN:
            if not route[0].connected:
                # Nothing can be sent to it yet, by either path: left out until
                # Forwarder.peer_connected refreshes it. Counting it as the Python
                # path's kept the track off the C ingress for every join's handshake.
                return
            target = entry[1] = route[0].fanout_target(down)
            self.targets_computed += 1
        if target is None:
            self._where[receiver_id] = ~len(plan.slow)
            self._slow_ids.append(receiver_id)
            plan.slow.append(route)
        else:
            self._where[receiver_id] = len(plan.fast)
            self._fast_ids.append(receiver_id)
            plan.targets.append(target)
            plan.fast.append(route)

    def _take_out(self, receiver_id: str, plan: Plan) -> None:
        """Remove one receiver from the plan being assembled: the last one fills its place."""
        where = self._where.pop(receiver_id, None)
        if where is None:
            return
        fast = where >= 0
        index = where if fast else ~where
        ids, routes = (self._fast_ids, plan.fast) if fast else (self._slow_ids, plan.slow)
        last = len(ids) - 1
        if index != last:
            moved = ids[index] = ids[last]
            routes[index] = routes[last]
            if fast:
                plan.targets[index] = plan.targets[last]
            self._where[moved] = where
        ids.pop()
        routes.pop()
        if fast:
            plan.targets.pop()
