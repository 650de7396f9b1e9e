"""SRTP contexts made on one thread of their own, so their memory lies together.

Why: the C fan-out protects one copy per receiver with that receiver's libsrtp
context, and at a call's own packet rate (100 incoming packets a second for a
call with 2 speakers) each copy starts from cold memory: the srtp_t, its
stream list, its streams, the cipher and OpenSSL's GCM state, a chain of
small allocations per receiver. libsrtp allocates them with plain calloc
when a session is keyed (`srtp_create`), which happens on the event loop in
the middle of a join, between every other allocation the join makes, so one
receiver's chain is spread over many more cache lines and pages than its
size. glibc's malloc gives each thread an arena of its own (its first
allocation picks one; see mallopt(3), M_ARENA_MAX), so contexts created on a
thread that allocates nothing else are laid out one after another, as in a
loop that makes them back to back. bench/RESULTS.md ("The C floor at the
call's own packet rate") measured it on the floor: contexts made among a
join's worth of other allocations cost 0.5-0.9 µs more per copy than contexts
made together, and making them on a thread of their own took back about 0.5 µs
of it. In the whole server the same change read lower in 7 of 10 alternating
pairs (4-17 % by median), within the machine's spread ("SRTP contexts made on
a thread of their own, in the server").

How: `install()` wraps pylibsrtp's `Session.__init__` so that the original
runs on this module's one daemon thread while the caller waits (about 100 µs
more than inline on the project's VM, once per session key, two per join).
Nothing else changes: the Session is the same object of the same class, used
from the same threads afterwards, and an error in `srtp_create` is raised in
the caller as before. libsrtp's `srtp_create` touches no other context, so no
lock is needed.

CALLSCTL_SRTP_THREAD=0 leaves sessions made where they are asked for (for
side-by-side measurements). glibc with M_ARENA_MAX=1 (MALLOC_ARENA_MAX=1) has
one arena for all threads; the thread then changes nothing, and costs
nothing but the hand-over.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import Any

from callsctl_sfu.switches import switched_off

ENV = "CALLSCTL_SRTP_THREAD"
THREAD_NAME = "callsctl-srtp-contexts"
# A session's srtp_create takes microseconds; this only bounds a wait that
# should never happen (the thread gone at interpreter exit).
HAND_OVER_TIMEOUT_S = 10.0


def wanted() -> bool:
    """Whether CALLSCTL_SRTP_THREAD leaves the context thread on (the default)."""
    return not switched_off(ENV)


class ContextThread:
    """One daemon thread that runs the calls handed to it, one at a time, in order."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], list[Any],
                                            threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, call: Callable[[], Any]) -> Any:
        """Run `call` on the thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return call()
        self._ensure_started()
        outcome: list[Any] = []
        done = threading.Event()
        self._jobs.put((call, outcome, done))
        if not done.wait(HAND_OVER_TIMEOUT_S):
            raise RuntimeError(f"{THREAD_NAME} did not answer in {HAND_OVER_TIMEOUT_S:g} s")
        ok, value = outcome
        if not ok:
            raise value
        return value

    def _ensure_started(self) -> None:
        # A thread that is gone is replaced: after a fork the child has none of the
        # parent's threads (a ThreadPoolExecutor would keep its dead worker and never
        # run the job), so this is a queue and thread of its own, not an executor.
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=THREAD_NAME,
                                                daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            call, outcome, done = self._jobs.get()
            try:
                outcome += [True, call()]
            except BaseException as error:  # noqa: BLE001 - handed back to the caller
                outcome += [False, error]
            finally:
                done.set()

    @property
    def ident(self) -> int | None:
        """The thread's identity once started (tests check where contexts were made)."""
        return self._thread.ident if self._thread is not None else None


CONTEXTS = ContextThread()


def install() -> bool:
    """Make every pylibsrtp Session's context on the context thread; True when on.

    Idempotent. Call when the media stack loads (rtc/fastpath.wire()).
    """
    if not wanted():
        return False
    import pylibsrtp

    session: Any = pylibsrtp.Session
    if getattr(session, "_callsctl_context_thread", False):
        return True
    original = session.__init__

    @functools.wraps(original)
    def init(self: Any, policy: Any = None) -> None:
        CONTEXTS.run(lambda: original(self, policy))

    session.__init__ = init
    session._callsctl_context_thread = True
    return True
