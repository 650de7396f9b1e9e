"""The media stack, loaded when the first call needs it, off the event loop.

An idle `callsctl serve` needs aiohttp, its database and the media socket, not
the WebRTC stack: aiortc, PyAV (which aiortc imports, with FFmpeg's
libraries), pyOpenSSL, pylibsrtp and callsctl's modules built on them
(rtc/aiortc_bridge.py, peer.py, tracks.py, reports.py, rtcp_routing.py) are
about 33 MB of RSS (docs/performance-memory.md). They are loaded here, once
per process, at the first sign of a call: the first /ws connection whose token
verifies (api/signaling.py), which comes a round trip before its join, so the
load has a head start on the join that needs it.

Loading must not stop the server while it happens: a join storm's first
seconds are exactly when /ws, the API, /metrics and the health checks are
busiest. So the import and the full internals check (`aiortc_bridge.check`,
a real RTCPeerConnection on an event loop of its own) run in a worker thread
(`loop.run_in_executor`), and the loop only waits on one shared future that
every join awaits. The GIL is shared, so the loop runs a little slower while
the thread imports (bench/RESULTS.md measures the first joins), but it never
waits for the whole load.

A failure (an ImportError of a broken install, internals that are not the
verified ones) is logged once as one line and remembered: that join and every
later one get `MediaUnavailable` with the same line, and readiness reports it,
until the server is restarted with a working install. Nothing is retried: a
broken install does not mend itself, and a half-imported stack is not
something to import again.

`--preload-media` (ServeConfig.preload_media) loads it at start instead, as
before, so a mismatched install stops the server before it takes a port.
Without it, the start only makes the cheap static check, `check_versions`:
the installed versions against the ranges this project was verified with,
read from the packages' metadata without importing them. The version comes
from the name of the distribution's `.dist-info` directory, which the
packaging specification "Recording installed projects" fixes as
`{name}-{version}.dist-info` (name normalised, `-` written `_`); only an
install without one (a legacy egg-info) is asked through importlib.metadata,
which with its zipfile, csv and email parsing is about 1.5 MB an idle server
otherwise never needs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from callsctl_sfu.errors import CallsctlError

log = logging.getLogger("callsctl_sfu.rtc.media")

# (lowest verified, first unverified) per distribution: pyproject.toml pins the same.
# rtc/aiortc_bridge.py, the one module that reaches into their internals, was verified
# against these; it is kept here so the start-up check needs none of them imported.
VERIFIED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "aiortc": ((1, 16), (1, 17)),
    "aioice": ((0, 13), (0, 14)),
    "pylibsrtp": ((1, 0), (1, 1)),
}

# What a session needs, imported in this order: the bridge brings aiortc, PyAV,
# pyOpenSSL and pylibsrtp and hands libsrtp to the C side (fastpath.wire), before the
# modules that bind fastpath's engine-dependent names at import (peer, reports).
_BRIDGE = "callsctl_sfu.rtc.aiortc_bridge"
_SESSION_MODULES = ("callsctl_sfu.rtc.peer", "callsctl_sfu.rtc.rtcp_routing")

# The longest a join waits for the load (about 0.1-0.2 s on the project's VM), so that
# a load that never ends is an error to the client rather than a hang.
LOAD_TIMEOUT_S = 60.0

# The shared libraries that are mapped once the stack is loaded (tests and the bench
# read /proc/<pid>/maps for them): PyAV's FFmpeg, libsrtp's cffi module.
MAPPED_MARKERS = ("av.libs/", "pylibsrtp/_binding")


class BridgeError(CallsctlError, RuntimeError):
    """The installed aiortc/aioice/pylibsrtp do not have the internals callsctl uses."""
    code = "aiortc_incompatible"


class MediaUnavailable(CallsctlError, RuntimeError):
    """The media stack could not be loaded; joins are refused with this one line."""
    code = "media_unavailable"


def _version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0"])[:2]
    return int("".join(c for c in parts[0] if c.isdigit()) or 0), \
        int("".join(c for c in parts[1] if c.isdigit()) or 0)


def _normalised(name: str) -> str:
    """A distribution name as .dist-info directories spell it (PEP 503, `-` as `_`), lowered."""
    return re.sub(r"[-_.]+", "_", name).lower()


def installed_version(name: str, paths: list[str] | None = None) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed.

    Searches the import path in order, as the import system would find the package,
    for `{name}-{version}.dist-info`; falls back to importlib.metadata only when no
    directory names it (an egg-info install).
    """
    wanted = _normalised(name)
    for entry in sys.path if paths is None else paths:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for item in names:
            stem, dot, suffix = item.rpartition(".")
            if suffix != "dist-info" or not dot or "-" not in stem:
                continue
            project, _, version = stem.partition("-")
            if _normalised(project) == wanted and version:
                return version
    from importlib import metadata  # an install without .dist-info: the slow, general way

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_versions() -> None:
    """Raise BridgeError unless each library is within the range in VERIFIED.

    Reads installed metadata only (no import): cheap enough for every start.
    """
    for name, (lowest, beyond) in VERIFIED.items():
        installed = installed_version(name)
        if installed is None:
            raise BridgeError(f"{name} is not installed: reinstall callsctl "
                              f"(pip install callsctl)")
        if not lowest <= _version(installed) < beyond:
            raise BridgeError(
                f"{name} {installed} is installed but callsctl's use of its internals is "
                f"verified with {name} >={'.'.join(map(str, lowest))},"
                f"<{'.'.join(map(str, beyond))}: install that range (pip install "
                f"'{name}>={'.'.join(map(str, lowest))},<{'.'.join(map(str, beyond))}')")


@dataclass(frozen=True)
class MediaStack:
    """What the call layer takes from the loaded stack."""

    peer_class: Any  # rtc.peer.MediaPeer
    seconds: float  # how long the load took (import + check), for the log and the bench


def load_stack() -> MediaStack:
    """Import the media stack and check aiortc's internals; blocking, for a worker thread.

    Raises MediaUnavailable with one line (what failed and what to do). The check
    runs on an event loop of this thread's own: it awaits a real RTCPeerConnection's
    close, and none of its objects outlive it except the shared DTLS certificate,
    which is made here and reused by every session.
    """
    started = time.perf_counter()
    try:
        bridge = importlib.import_module(_BRIDGE)  # and wires the C engine (fastpath.wire)
        modules = [importlib.import_module(name) for name in _SESSION_MODULES]
        asyncio.run(bridge.check())
    except BridgeError as exc:
        raise MediaUnavailable(str(exc), code=exc.code) from None
    except ImportError as exc:
        raise MediaUnavailable(f"the media stack cannot be imported ({exc}): reinstall "
                               "callsctl (pip install callsctl)") from None
    return MediaStack(peer_class=modules[0].MediaPeer,
                      seconds=time.perf_counter() - started)


def mapped_media_libraries(pid: int | str = "self") -> list[str]:
    """The media stack's shared libraries mapped into a process (/proc/<pid>/maps)."""
    found: set[str] = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip() if line.count(" ") >= 5 else ""
            if any(marker in path for marker in MAPPED_MARKERS):
                found.add(path)
    return sorted(found)


class MediaLoader:
    """The one load of this process's media stack, shared by every join that waits for it."""

    def __init__(self) -> None:
        self._future: asyncio.Future[MediaStack | None] | None = None
        self.stack: MediaStack | None = None
        self.error = ""  # the one line of a failed load ('' while none failed)
        self._at_start = False  # preload(): the failure is the start's error, not a log line

    @property
    def state(self) -> str:
        """'idle' (never asked), 'loading', 'loaded' or 'failed': for /version and readiness."""
        if self._future is None:
            return "idle"
        if not self._future.done():
            return "loading"
        return "loaded" if self.stack is not None else "failed"

    def start(self) -> asyncio.Future[MediaStack | None]:
        """Begin the load in a worker thread unless it has begun; the shared future.

        Safe to call from any coroutine on the server's loop, any number of times:
        only the first call starts anything.
        """
        if self._future is None:
            loop = asyncio.get_running_loop()
            self._future = loop.create_future()
            log.info("loading the media stack (aiortc, PyAV, pyOpenSSL, pylibsrtp) %s",
                     "before taking a port (preload_media)" if self._at_start
                     else "in the background: a call is starting")
            task = loop.run_in_executor(None, load_stack)
            task.add_done_callback(self._loaded)
        return self._future

    def _loaded(self, task: asyncio.Future[MediaStack]) -> None:
        future = self._future
        assert future is not None
        if task.cancelled():  # the loop's executor shut down under it: the server stops
            self.error = "the media stack's load was cancelled: the server is stopping"
        else:
            exc = task.exception()
            if exc is None:
                self.stack = task.result()
                log.info("media stack loaded in %.2f s", self.stack.seconds)
            elif isinstance(exc, MediaUnavailable):
                self.error = exc.message
            else:  # anything else the import raised: still one line, never a traceback
                self.error = (f"the media stack failed to load ({type(exc).__name__}: {exc}): "
                              "reinstall callsctl (pip install callsctl)")
            if self.error and not self._at_start:
                log.error("calls cannot start: %s", self.error)
        if not future.done():
            future.set_result(self.stack)

    async def preload(self) -> MediaStack:
        """Load at start (preload_media): MediaUnavailable is then the start's one error."""
        self._at_start = self._future is None
        return await self.load()

    async def load(self) -> MediaStack:
        """The loaded stack, starting the load if needed; MediaUnavailable if it failed.

        Cancelling one waiting join does not cancel the load the others wait for.
        """
        if self.stack is not None:  # every join after the first: no timer, no shield
            return self.stack
        try:
            stack = await asyncio.wait_for(asyncio.shield(self.start()), LOAD_TIMEOUT_S)
        except TimeoutError:  # a stuck import must not hold joins forever
            raise MediaUnavailable(f"the media stack did not finish loading in "
                                   f"{LOAD_TIMEOUT_S:g} s; see the server log") from None
        if stack is None:
            raise MediaUnavailable(self.error)
        return stack
