"""Which forwarding engine this server runs: the C fan-out (rtc/_fanout.c) or Python.

The C extension is built at install time when a C compiler is there (setup.py
marks it optional). It needs libsrtp's srtp_protect, which it borrows from the
pylibsrtp wheel aiortc already uses (its cffi module exposes the function's
address), so both paths protect with the very same srtp_t and its sequence
state. Before trusting that address, its C signature is checked against the
libsrtp 2 one the extension was written for; anything else falls back to
Python with the reason kept for `/version` and the log. That happens when the
media stack is loaded (`wire()`, called as rtc/aiortc_bridge.py is imported),
not when this module is: an idle server imports this module but not pylibsrtp.

Each receiver reaches the C side as a `Target` (rtc/_fanout.c), a typed object
checked once when built; `PyTarget` is its twin with the same fields and
checks, used when the extension is not built or not in use.

Big fan-outs can use several cores (`start_pool`, the `media_threads`
setting): the C side then makes the copies of one packet on a small pool of
native threads with the GIL released, and `fanout()` still returns only when
every copy is sent, with the same result as on one thread. Why that is safe is
explained where it happens, in rtc/_fanout.c.

The IPv4 media socket is read by the C ingress on a thread of its own
(`Ingress.start`, rtc/_ingress.c) unless CALLSCTL_INGRESS_THREAD=0: the event
loop then wakes only for what needs Python. That thread sends its copies with
the GIL released, so the event loop's Python runs on another core meanwhile;
every other user of the same srtp_t contexts and Rewrites holds the ingress's
media lock instead: the C `fanout()` and `Rewrite.build()` take it themselves,
and pylibsrtp's calls, which release the GIL inside libsrtp, are wrapped
(`_serialise_pylibsrtp`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from callsctl_sfu.rtc import srtparena
from callsctl_sfu.rtc.rtp import PyRewrite
from callsctl_sfu.switches import switched_off

# libsrtp 2.x, as pylibsrtp 1.0's cffi declares srtp_protect and srtp_unprotect.
EXPECTED_PROTECT = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
# The environment switch for side-by-side measurements and tests of the Python path.
DISABLE_ENV = "CALLSCTL_FAST_PATH"
# CALLSCTL_INGRESS_THREAD=0: the C ingress reads the media socket from asyncio's reader
# callback (one event-loop wake-up per incoming packet) instead of its own thread.
THREAD_ENV = "CALLSCTL_INGRESS_THREAD"

try:  # the compiled extension, when the install built it
    from callsctl_sfu.rtc import _fanout
except ImportError as error:  # pragma: no cover - depends on the build machine
    _fanout = None
    _import_error = f"C extension not built ({error})"
else:
    _import_error = ""


def _wire_protect() -> str:
    """Give the extension libsrtp's srtp_protect and srtp_unprotect; '' when done, else why not."""
    if _fanout is None:
        return _import_error
    from callsctl_sfu.rtc import aiortc_bridge  # the media stack (rtc/medialoader.py)

    try:
        protect, protect_signature = aiortc_bridge.srtp_function("srtp_protect")
        unprotect, unprotect_signature = aiortc_bridge.srtp_function("srtp_unprotect")
    except ImportError as error:
        return f"pylibsrtp has no cffi binding ({error})"
    for name, signature in (("srtp_protect", protect_signature),
                            ("srtp_unprotect", unprotect_signature)):
        if signature != EXPECTED_PROTECT:
            return f"pylibsrtp's {name} is {signature!r}, not the libsrtp 2 signature"
    _fanout.set_protect(protect)
    _fanout.set_unprotect(unprotect)
    # SRTCP too, so the ingress reads receiver reports without waking the event loop;
    # optional: where it is missing or differs, RTCP goes up to Python as before.
    with contextlib.suppress(AttributeError, ImportError):
        unprotect_rtcp, rtcp_signature = aiortc_bridge.srtp_function("srtp_unprotect_rtcp")
        if rtcp_signature == EXPECTED_PROTECT:
            _fanout.set_unprotect_rtcp(unprotect_rtcp)
    return ""


# Until wire() runs (the media stack's load, rtc/medialoader.py), the C engine is
# expected when the extension is built and not switched off; libsrtp's functions are
# only handed over then, because pylibsrtp is part of the stack an idle server does
# not import. Nothing forwards before that: no session exists yet.
_unavailable = _import_error
if not _unavailable and switched_off(DISABLE_ENV):
    _unavailable = f"disabled by {DISABLE_ENV}"
_wired = False
# Whether the C ingress reads on its own thread (decided by wire(), which also makes
# pylibsrtp's calls take the media lock that thread drains under).
INGRESS_THREAD = False

AVAILABLE = not _unavailable
ENGINE = "c" if AVAILABLE else "python"
REASON = _unavailable  # why the Python path runs, for operators ('' when C runs)
# Rewrite objects the fan-out can use directly when it runs; the Python twin otherwise.
Rewrite: Any = _fanout.Rewrite if AVAILABLE and _fanout is not None else PyRewrite


class PyTarget:
    """One receiver of the fan-out: the Python twin of _fanout.Target, same fields and checks.

    rewrite: the receiver's Rewrite; srtp_session: the pylibsrtp Session whose
    srtp_t copies are protected with (kept alive by the target); context: that
    srtp_t's address; addr: the IPv4 (host, port) sent to; nominated: aioice's
    live nominated-pair dict; pair: the pair addr was taken from (a different
    pair in `nominated` means the client renominated: the target is stale); source:
    the local IPv4 address copies are sent from (rtc/pktinfo.py), None: the kernel's.
    """

    __slots__ = ("rewrite", "srtp_session", "context", "addr", "nominated", "pair", "source")

    def __init__(self, rewrite: Any, srtp_session: Any, context: int, addr: tuple[str, int],
                 nominated: dict[int, Any], pair: Any, *, source: str | None = None) -> None:
        if not callable(getattr(rewrite, "build", None)):
            raise TypeError(f"Target: rewrite must be a Rewrite, not {type(rewrite).__name__}")
        if not isinstance(context, int) or isinstance(context, bool):
            raise TypeError("Target: context must be the srtp_t address as an int, not "
                            f"{type(context).__name__}")
        if not context:
            raise ValueError("Target: null SRTP context")
        if not isinstance(nominated, dict):
            raise TypeError("Target: nominated must be aioice's nominated-pair dict, not "
                            f"{type(nominated).__name__}")
        if not (isinstance(addr, tuple) and len(addr) == 2 and isinstance(addr[0], str)
                and isinstance(addr[1], int)):
            raise TypeError("Target: addr must be a (host, port) tuple")
        try:
            ipaddress.IPv4Address(addr[0])
            valid = 0 <= addr[1] <= 65535
        except ValueError:
            valid = False
        if not valid:
            raise ValueError("Target: addr must be an IPv4 address and a port 0..65535, not "
                             f"({addr[0]}, {addr[1]})")
        self.rewrite = rewrite
        self.srtp_session = srtp_session
        self.context = context
        self.addr = addr
        self.nominated = nominated
        self.pair = pair
        if source is not None:
            try:
                ipaddress.IPv4Address(source)
            except ValueError:
                raise ValueError(f"Target: source must be an IPv4 address, not {source}") \
                    from None
        self.source = source

    def __repr__(self) -> str:
        return f"Target(addr={self.addr!r}, rewrite={self.rewrite!r})"


# The fan-out's receivers: checked C objects when the C engine runs.
Target: Any = _fanout.Target if AVAILABLE and _fanout is not None else PyTarget

# The C ingress (rtc/_ingress.c): the media socket read, and established publishers'
# audio decrypted and forwarded, without Python per packet. None with the Python engine.
# Ingress(): the reader; InSession(context, srtp_session): one peer's inbound srtp_t and
# its routes by SSRC; InRoute(tag, payload_type, ...): one forwarded audio stream.
Ingress: Any = _fanout.Ingress if AVAILABLE and _fanout is not None else None
InSession: Any = _fanout.InSession if AVAILABLE and _fanout is not None else None
InRoute: Any = _fanout.InRoute if AVAILABLE and _fanout is not None else None
# A receiver's outgoing RTP protected by the extension, not libsrtp (rtc/_srtpseal.c,
# chosen per session by rtc/sealing.py). None with the Python engine or on a CPU
# without AES-NI and PCLMULQDQ.
SrtpSealer: Any = (_fanout.SrtpSealer if AVAILABLE and _fanout is not None
                   and _fanout.sealer_supported() else None)
# The SHA-1 its AES-CM HMAC runs on: "sha-ni", or "portable" (slower than libsrtp's
# OpenSSL there, so rtc/sealing.py leaves AES-CM sessions to libsrtp). None: no sealer.
SEALER_SHA1: str | None = _fanout.sealer_sha1() if SrtpSealer is not None else None
# RFC 3550 reception state both paths update: the C one when the ingress runs.
Reception: Any = _fanout.Reception if AVAILABLE and _fanout is not None else None


def _nominations_changed() -> None:
    """Tell the C fan-out that some nominated pair changed (its plans are checked again)."""
    if _fanout is not None:
        _fanout.nominations_changed()


class NominatedPairs(dict[int, Any]):
    """aioice's {component: CandidatePair} of nominated pairs, reporting every change.

    The C ingress's routes keep their receivers' copies laid out once per plan
    (rtc/_fanout.c, "A plan's copies laid out once") and must not send to a receiver
    at the address of a pair it no longer uses. Looking each receiver's pair up per
    packet cost 7.8 % of the server at 1 x 500; with this dict in place of aioice's
    (aiortc_bridge.nominated_pairs swaps it in), a plan is checked again only after a
    change, which these methods announce once they have made it. aioice changes the
    dict only by item assignment and clear(); the rest are covered so no change
    can go unannounced.
    """

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        _nominations_changed()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        _nominations_changed()

    def clear(self) -> None:
        super().clear()
        _nominations_changed()

    def pop(self, *args: Any) -> Any:
        try:
            return super().pop(*args)
        finally:
            _nominations_changed()

    def popitem(self) -> tuple[Any, Any]:
        try:
            return super().popitem()
        finally:
            _nominations_changed()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        try:
            return super().setdefault(key, default)
        finally:
            _nominations_changed()

    def update(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().update(*args, **kwargs)
        finally:
            _nominations_changed()


def _announced_ior(self: NominatedPairs, other: Any) -> NominatedPairs:
    """`pairs |= other`, announced like the rest (dict's own would not call update)."""
    self.update(other)
    return self


# Set apart from the class body: typeshed types dict's |= against its |, which a
# subclass returning itself cannot match in mypy's eyes, though Python accepts it.
setattr(NominatedPairs, "__ior__", _announced_ior)  # noqa: B010

if AVAILABLE and _fanout is not None:
    _fanout.watch_nominations(NominatedPairs)


def plan_checks() -> int:
    """How often the C ingress looked a route's receivers' pairs up (GET /stats ingress)."""
    return _fanout.plan_checks() if _fanout is not None else 0


def nomination_epoch() -> int:
    """How many changes NominatedPairs dicts announced (plus one); 0 without the C engine."""
    return _fanout.nomination_epoch() if _fanout is not None else 0


class FanoutResult(NamedTuple):
    """What one fanout() call did (the C side returns a struct sequence with these fields)."""

    sent: int
    plain_octets: int
    wire_octets: int
    send_errors: int
    srtp_errors: int
    stale: list[int] | None
    unsent: list[tuple[bytes, tuple[str, int]]] | None


def _no_fanout(*_args: Any) -> FanoutResult:
    raise RuntimeError(f"the C fan-out is not available: {REASON}")


# fanout(fd, first_byte, marker, sequence, timestamp, ssrc, payload, level_byte, targets):
# see _fanout.fanout's docstring. Bound directly (no wrapper frame on the hot path).
fanout: Callable[..., FanoutResult] = (
    _fanout.fanout if AVAILABLE and _fanout is not None else _no_fanout)


# At least this many sendable receivers before a fan-out is split across the pool
# (below it, handing work to other threads costs more than it saves).
PARALLEL_MIN_TARGETS: int = _fanout.PARALLEL_MIN_TARGETS if _fanout is not None else 64
MAX_THREADS: int = _fanout.MAX_THREADS if _fanout is not None else 64


def wire() -> str:
    """Hand libsrtp to the C side, once, when the media stack loads; '' or why Python runs.

    Called as rtc/aiortc_bridge.py is imported (pylibsrtp is then), before the modules
    that bind this module's engine-dependent names (Rewrite, Target, Reception...)
    are. If libsrtp's functions are not the ones the extension was written for,
    every name falls back to its Python twin here, with the reason kept for
    /version and the log, as the old import-time wiring did.
    """
    global _wired, _unavailable, AVAILABLE, ENGINE, REASON, Rewrite, Target, Ingress
    global InSession, InRoute, Reception, fanout, INGRESS_THREAD
    if _wired or not AVAILABLE:
        _wired = True
        return REASON
    _wired = True
    reason = _wire_protect()
    if not reason:
        srtparena.install()  # receivers' contexts together in memory (rtc/srtparena.py)
    if not reason and _fanout is not None and thread_wanted():
        _serialise_pylibsrtp()
        INGRESS_THREAD = True
    if reason:
        logging.getLogger("callsctl_sfu.rtc.fastpath").warning(
            "forwarding engine: Python, up to 2.4x the CPU per packet: %s", reason)
        _unavailable = REASON = reason
        AVAILABLE, ENGINE = False, "python"
        Rewrite, Target, fanout = PyRewrite, PyTarget, _no_fanout
        Ingress = InSession = InRoute = Reception = None
    return reason


def thread_wanted() -> bool:
    """Whether CALLSCTL_INGRESS_THREAD leaves the ingress's reader thread on (the default)."""
    return not switched_off(THREAD_ENV)


def _serialise_pylibsrtp() -> None:
    """Make every pylibsrtp Session call hold the C ingress's media lock.

    cffi releases the GIL for the duration of a C call, so without this the
    ingress's reader thread could take the GIL and use an srtp_t (its
    unprotect, a receiver's protect) while the event loop is inside libsrtp
    with the same context; libsrtp contexts are not thread-safe. The lock is
    taken with a try first (free: the thread holds it only while draining).
    """
    import pylibsrtp  # the media stack is loading (wire() is called from aiortc_bridge)

    assert _fanout is not None
    acquire, release = _fanout.media_acquire, _fanout.media_release
    session = pylibsrtp.Session
    if getattr(session, "_callsctl_serialised", False):
        return

    def locked(method: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        @functools.wraps(method)
        def call(self: Any, arg: Any) -> Any:
            acquire()
            try:
                return method(self, arg)
            finally:
                release()
        return call

    for name in ("protect", "protect_rtcp", "unprotect", "unprotect_rtcp", "add_stream",
                 "remove_stream"):
        setattr(session, name, locked(getattr(session, name)))
    patched: Any = session
    patched._callsctl_serialised = True


# Ingress objects whose reader thread runs: stopped at exit, before the interpreter
# tears down what they use.
_readers: set[Any] = set()


def reader_started(ingress: Any) -> None:
    """Remember a running reader thread so that exit stops it (see stop_readers)."""
    _readers.add(ingress)


def reader_stopped(ingress: Any) -> None:
    _readers.discard(ingress)


def stop_readers() -> None:
    """Stop and join every ingress reader thread still running (at exit)."""
    for ingress in list(_readers):
        ingress.stop()
    _readers.clear()


def receive_pump_type() -> Any | None:
    """The load generator's C receive thread type (rtc/_recvpump.c), None when not built.

    Independent of CALLSCTL_FAST_PATH, which chooses the server's engine: the load
    generator reads its participants' sockets with it whenever the extension is built
    (client/loadgen/pump.py has its own switch).
    """
    return getattr(_fanout, "ReceivePump", None) if _fanout is not None else None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so `taskset` is honoured)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def start_pool(threads: int) -> int:
    """Make big fan-outs run on `threads` threads (1 = the calling thread only).

    Returns the threads fan-outs now use: 1 with the Python engine, which has no
    pool. Replaces a running pool. Stopped by shutdown_pool() (and at exit).
    """
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"fan-out threads must be 1..{MAX_THREADS}, not {threads}")
    if not AVAILABLE or _fanout is None:
        return 1
    return int(_fanout.start_pool(threads))


def shutdown_pool() -> None:
    """Stop and join the fan-out workers; safe to call twice or without a pool."""
    if _fanout is not None:
        _fanout.shutdown_pool()


def queue_wait_bounds_us() -> tuple[int, ...]:
    """The C ingress's queue-wait histogram buckets, µs (calls/queuedelay.py); () without it."""
    return tuple(_fanout.QUEUE_WAIT_BOUNDS_US) if _fanout is not None else ()


def pool_threads() -> int:
    """Threads a big fan-out runs on now (1 without a pool or with the Python engine)."""
    return int(_fanout.pool_threads()) if AVAILABLE and _fanout is not None else 1


def parallel_fanouts() -> int:
    """Fan-outs split across the pool so far (0 with the Python engine): shows it is used."""
    return int(_fanout.parallel_fanouts()) if AVAILABLE and _fanout is not None else 0


def parallel_batches() -> int:
    """Socket reads whose packets of different calls were sent on several threads at once."""
    return int(_fanout.parallel_batches()) if AVAILABLE and _fanout is not None else 0


# Workers must not outlive the interpreter's teardown of the objects they read.
atexit.register(shutdown_pool)
atexit.register(stop_readers)
