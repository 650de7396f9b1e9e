"""How one publisher track's packets reach its receivers: a plan, rebuilt on change.

Receivers on the shared IPv4 UDP socket are sent to by the C fan-out
(rtc/_fanout.c: header rewrite, SRTP protect and sendmmsg for all of them in one
call); everyone else (ICE-TCP, IPv6, not yet connected) goes through the
per-receiver Python path, MediaPeer.send_rtp. A plan is built from the call's
routes the first time a track forwards after any change of membership,
negotiation or connection state (CallManager drops its plans then), so the hot
path makes no per-receiver decisions in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callsctl_sfu.rtc.peer import DownTrack, MediaPeer

Route = tuple[MediaPeer, DownTrack]


@dataclass(slots=True)
class Plan:
    """One track's receivers split by how they are sent to."""

    targets: list[tuple[Any, ...]] = field(default_factory=list)  # C fan-out arguments
    fast: list[Route] = field(default_factory=list)  # the same receivers, in the same order
    slow: list[Route] = field(default_factory=list)  # the Python path


def build_plan(routes: list[Route]) -> Plan:
    """Split routes into fan-out targets and the rest (only called with the C engine)."""
    plan = Plan()
    for route in routes:
        receiver, down = route
        if not down.negotiated:
            continue
        target = receiver.fanout_target(down)
        if target is None:
            plan.slow.append(route)
        else:
            plan.targets.append(target)
            plan.fast.append(route)
    return plan
