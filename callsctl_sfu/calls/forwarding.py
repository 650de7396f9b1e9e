"""How one publisher track's packets reach its receivers: routes and a plan, kept per track.

Receivers on the shared IPv4 UDP socket are sent to by the C fan-out
(rtc/_fanout.c: header rewrite, SRTP protect and sendmmsg for all of them in one
call); everyone else (ICE-TCP, IPv6, not yet connected) goes through the
per-receiver Python path, MediaPeer.send_rtp.

A track's receivers change one at a time (one joins, negotiates, connects,
renominates or leaves), so they are kept one entry per receiver
(`TrackRoutes`): a change touches that receiver's entry only, and its fan-out
target is worked out again for it alone. The plan the hot path uses is then
re-assembled from the entries, a copy with no per-receiver decisions, the next
time the track forwards. A join in a call of N thus costs O(1) target
computations per track, where rebuilding every plan from scratch cost O(N) per
change and made a join storm quadratic (bench/join_storm.py).

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


class TrackRoutes:
    """One publisher track's receivers (session id -> route), updated one receiver at a time."""

    __slots__ = ("_entries", "_routes", "_plan", "targets_computed", "fast_route", "on_change")

    def __init__(self, routes: dict[str, Route],
                 on_change: Callable[[TrackRoutes], None] | None = None) -> None:
        # session id -> [route, fan-out target or None (Python path) or _UNKNOWN]
        self._entries: dict[str, list[Any]] = {sid: [route, _UNKNOWN]
                                                for sid, route in routes.items()}
        self._routes: list[Route] | None = None
        self._plan: Plan | None = None
        self.targets_computed = 0  # fanout_target calls (bench/join_storm.py counts them)
        # The track's route in the C ingress (fastpath.InRoute) while it forwards the
        # current plan; emptied with the plan, then given the new one (on_change).
        self.fast_route: Any = None
        # Told of each change (the forwarder re-assembles the plan for the C ingress).
        self.on_change = on_change

    def _invalidate(self) -> None:
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
        self._invalidate()

    def refresh(self, receiver_id: str) -> None:
        """The receiver's negotiation or path changed: work out its target again."""
        entry = self._entries.get(receiver_id)
        if entry is not None:
            entry[1] = _UNKNOWN
            self._invalidate()

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
        """The C fan-out's plan, from the entries (targets worked out only where unknown)."""
        plan = self._plan
        if plan is not None:
            return plan
        plan = Plan()
        for entry in self._entries.values():
            route, target = entry
            down = route[1]
            if not down.negotiated:
                continue
            if target is _UNKNOWN:
                if not route[0].connected:
                    # Nothing can be sent to it yet, by either path: left out until
                    # Forwarder.peer_connected refreshes it. Counting it as the Python
                    # path's kept the track off the C ingress for every join's handshake.
                    continue
                target = entry[1] = route[0].fanout_target(down)
                self.targets_computed += 1
            if target is None:
                plan.slow.append(route)
            else:
                plan.targets.append(target)
                plan.fast.append(route)
        self._plan = plan
        return plan
