"""Python's cyclic garbage collector, kept from stalling media while a big call fills.

Why: the C ingress's reader thread decides where each packet goes while
holding the GIL (docs/multicore.md), so any long GIL hold on the event loop
delays every call's media. The longest is a full (generation 2) collection:
CPython 3.11 runs one whenever the objects that survived into the old
generation since the last one exceed a quarter of those already there, and
each one walks every tracked object. A join storm grows the heap by a join's
worth of long-lived objects (peer connection, transports, descriptions) 25
times a second, so full collections come every few seconds and each is
longer than the last: at 1 call x 1000 joining at 25/s they grew from 30 to
over 300 ms (bench/RESULTS.md, "Garbage-collector pauses during a join
storm"), each one a gap in everyone's audio.

What: while sessions keep joining, once a second (the control tick) the
objects alive are moved out of the collector's view with `gc.freeze()`
(the permanent generation, which collections do not walk), so each
collection walks only what was made since the last freeze. Frozen objects
are still freed by reference counting as usual; only cyclic garbage among
them (a departed session's reference cycles) waits. So the freeze is undone
(`gc.unfreeze()` and one full collection) when the server falls under
MIN_SESSIONS sessions (the big call ended: the pause hurts few); when the
sessions that left since the freeze began reach as many as are still in
(DEPARTED_SHARE); and at least every MAX_FROZEN_S while it stays big.
Departed sessions' cycles were once what the freeze kept, about 300 objects
each (aiohttp's closed WebSockets: api/wsrelease.py now breaks those), and
the thaw came once a quarter of a call had turned over; with next to nothing
left per departure (bench/RESULTS.md, "Departed sessions' reference
cycles"), the departure rule is a backstop for cycles not yet found, and a
call that turns over pays the stall four times less often.
That thaw is itself the longest stall there is, 582 ms at 1000 sessions
(bench/RESULTS.md, "The collector's thaw at 1000 sessions"), so it comes as
rarely as the garbage allows: a big call that few leave thaws once an hour,
where a fixed ten minutes thawed it six times. The transient garbage frozen
at each freeze was measured too small to matter (42 freezes left fewer
unreachable objects than 10, for the same 200 departures). Below
MIN_SESSIONS nothing is frozen: a full collection of a small server is
short.

Each collection's pause is timed (`gc.callbacks`) per generation, for
GET /stats `gc` and bench/join_storm.py. CALLSCTL_GC_FREEZE=0 turns the
freezing off (the timing stays), for side-by-side measurements; a number N
freezes from N sessions on instead of MIN_SESSIONS (tests use 1).

The load generator runs the same policy over its own participants
(CALLSCTL_LOADGEN_GC_FREEZE, the same values): its reads and its delay
stamps wait behind its own full collections just as the server's media
does, and those grew to over 400 ms while it joined 1000, which its delay
figures then reported as the server's (bench/RESULTS.md).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from callsctl_sfu.switches import switched_off

ENV = "CALLSCTL_GC_FREEZE"
LOADGEN_ENV = "CALLSCTL_LOADGEN_GC_FREEZE"  # the same policy in `callsctl loadtest`
MAX_FROZEN_S = 3600.0   # never frozen longer than this without one full collection
DEPARTED_SHARE = 1      # thaw once those who left since the freeze reach 1/1 of those in
MIN_SESSIONS = 100      # smaller servers' full collections are short: leave them be


def min_sessions_from_env(name: str = ENV) -> int | None:
    """The variable `name`: None when off ("0", "off"...), else the sessions to freeze from."""
    if switched_off(name):
        return None
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else MIN_SESSIONS


@dataclass
class Pauses:
    """One generation's collections: how many, the longest and the total, in ms."""

    count: int = 0
    max_ms: float = 0.0
    total_ms: float = 0.0

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)


@dataclass
class CollectorPolicy:
    """Freezes the collector's view of established sessions while a call fills."""

    max_frozen_s: float = MAX_FROZEN_S
    # None: never freeze (only time the collections)
    min_sessions: int | None = field(default_factory=min_sessions_from_env)
    clock: Callable[[], float] = time.monotonic
    pauses: dict[int, Pauses] = field(default_factory=lambda: {g: Pauses() for g in range(3)})
    frozen: bool = False
    freezes: int = 0
    thaws: int = 0
    # Unreachable objects the last thaw's full collection found: the reference cycles
    # the freeze had kept (departed sessions'); what a longer freeze would hold on to.
    thaw_collected: int = 0
    _joined_since_tick: bool = False
    _frozen_since: float = 0.0
    # Sessions at the first freeze, and joins since: what is in now tells who left.
    _sessions_at_freeze: int = 0
    _joins_while_frozen: int = 0
    _started: float = 0.0

    def install(self) -> None:
        """Start timing collections (the server's start)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        """Stop timing and give everything frozen back to the collector (the server's stop)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self.frozen:
            self._thaw(collect=False)

    def joined(self) -> None:
        """A session joined: the next tick freezes (when the server is big enough)."""
        self._joined_since_tick = True
        if self.frozen:
            self._joins_while_frozen += 1

    def departed_while_frozen(self, sessions: int) -> int:
        """How many of the sessions in at the freeze, or joined since, have left."""
        return max(0, self._sessions_at_freeze + self._joins_while_frozen - sessions)

    def tick(self, sessions: int) -> None:
        """Once a second: freeze after joins; thaw when small again, when as many as are in
        have left since the freeze, or when frozen too long."""
        now = self.clock()
        joined, self._joined_since_tick = self._joined_since_tick, False
        big = self.min_sessions is not None and sessions >= self.min_sessions
        if self.frozen and (
                not big or self.departed_while_frozen(sessions) * DEPARTED_SHARE >= sessions
                or now - self._frozen_since >= self.max_frozen_s):
            self._thaw(collect=True)
            return
        if joined and big:
            if not self.frozen:
                self._frozen_since = now
                self._sessions_at_freeze, self._joins_while_frozen = sessions, 0
            gc.freeze()
            self.frozen = True
            self.freezes += 1

    def stats(self) -> dict[str, Any]:
        """GET /stats `gc`: the freeze state and each generation's pauses.

        Not the number of frozen objects: `gc.get_freeze_count()` walks the whole
        frozen list with the GIL held, 20-40 ms at 1000 sessions, and GET /stats is
        polled every second by benches and dashboards. Every such poll stalled the
        media reader thread and read as a delay p99 of 30-55 ms at 1 x 1000
        (bench/RESULTS.md, "GET /stats stalled the media").
        """
        return {"freeze_from_sessions": self.min_sessions, "frozen": self.frozen,
                "freezes": self.freezes, "thaws": self.thaws,
                "thaw_collected": self.thaw_collected,
                "pauses": {f"gen{g}": {k: round(v, 2) if isinstance(v, float) else v
                                       for k, v in asdict(p).items()}
                           for g, p in self.pauses.items()}}

    def full_collections(self) -> dict[str, Any]:
        """The full (generation 2) collections and the freezes: a load test's report."""
        full = self.pauses[2]
        return {"count": full.count, "max_ms": round(full.max_ms, 1),
                "total_ms": round(full.total_ms, 1), "freezes": self.freezes}

    def _thaw(self, collect: bool) -> None:
        gc.unfreeze()
        self.frozen = False
        self.thaws += 1
        if collect:
            self.thaw_collected = gc.collect()  # timed by _on_gc like any other

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            generation = int(info.get("generation", 2))
            self.pauses[min(2, max(0, generation))].add(
                (time.perf_counter() - self._started) * 1000)
            self._started = 0.0
