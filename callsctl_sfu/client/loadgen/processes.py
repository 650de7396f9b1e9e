"""A load test split over worker processes, so the generator is not the bottleneck.

One event loop drives every participant of a `LoadTest`; at around a thousand
participants joining at 25/s that loop lags (hundreds of ms at p99) and the
measurement shows the generator rather than the server. With
`LoadConfig.processes` = N > 1 the parent starts N workers with the "spawn"
start method (a fresh interpreter each: no fork of a process whose event loop
or aiortc threads are running), each running its share of the participants
with the ordinary `LoadTest`, and merges their figures into the one report.

Who runs whom (`LoadConfig.in_share`): whole calls per worker when there are at
least N calls; otherwise each call's participants dealt out by index. Then a
receiver in one worker expects streams sent by another, so the parent keeps the
workers in step over a pipe each:

1. every worker encodes its media samples and says "ready"; the parent sends
   one wall-clock start, so join slots (`LoadTest.roles` order) keep the
   configured rate over all workers;
2. after joining, every worker sends its streams (call, session id, label) and
   gets the others' streams: its settle phase waits for those too;
3. after settling, every worker asks for the window; the parent sends one
   (open, close) in wall-clock time, so sent and received packets are counted
   over the same seconds in every process;
4. every worker sends its figures (`raw_figures`); `merge_report` holds each
   receiver against every sender of its call: loss per receiver, delay and join
   percentiles, the generator's CPU as the sum of the workers', loop lag as the
   worst worker's.

Send times in the RTP padding stamp are `time.monotonic_ns()`, one clock for
every process of the machine, so delays read across processes stay right.

Failure: a worker's exception becomes one line to the parent, which stops the
others and raises `LoadWorkerError`; every wait is bounded and the workers are
terminated (then killed) when the parent leaves, whatever the reason. Workers
ignore SIGINT: Ctrl-C reaches the parent, which asks each worker to stop early
and still merges what they measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import ssl as ssl_module
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from callsctl_sfu.client.loadgen.config import (
    CLOSE_TIMEOUT_S,
    LoadConfig,
    LoadConfigError,
    WindowHook,
)
from callsctl_sfu.client.loadgen.monitor import ServerMonitor
from callsctl_sfu.client.loadgen.orchestrate import (
    LoadTest,
    ParticipantFactory,
    join_order,
    runs_here,
)
from callsctl_sfu.client.loadgen.participant import LightParticipant
from callsctl_sfu.client.loadgen.report import LoadReport, Progress, merge_report
from callsctl_sfu.errors import CallsctlError

PREPARE_TIMEOUT_S = 180.0  # a worker's interpreter start and media encoding
START_MARGIN_S = 0.3  # the common start/window is announced this far ahead
PHASES = ("preparing", "joining", "settling", "measuring", "draining", "leaving", "done")


class LoadWorkerError(CallsctlError, RuntimeError):
    """A load-generator worker process failed; the message says which and why."""

    code = "loadgen_worker_failed"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(config: LoadConfig) -> int:
    """The processes a run uses: `processes` (0: usable CPUs), never more than have work."""
    wanted = config.processes or usable_cpus()
    most = config.calls if config.calls >= wanted else config.users_per_call
    return max(1, min(wanted, most, config.participants))


def make_load_test(config: LoadConfig, on_window: WindowHook | None = None,
                   monitor: ServerMonitor | None = None,
                   participant_factory: ParticipantFactory = LightParticipant
                   ) -> LoadTest | ProcessLoadTest:
    """A `LoadTest` in this process, or a `ProcessLoadTest` when the config asks for workers."""
    config.validate()
    if worker_count(config) == 1:
        return LoadTest(config, on_window=on_window, monitor=monitor,
                        participant_factory=participant_factory)
    if participant_factory is not LightParticipant:
        raise LoadConfigError("several load-generator processes speak callsctl's own "
                              "signaling only; use 1 process for another SFU")
    return ProcessLoadTest(config, on_window=on_window, monitor=monitor)


# -- the worker side ----------------------------------------------------------------------------


@dataclasses.dataclass
class WorkerSpec:
    """Everything a worker needs, picklable: the config without callables, tokens issued."""

    config: LoadConfig  # no callables or TLS context: those are rebuilt in the worker
    tokens: dict[tuple[str, str], str]
    tls: str | None  # None, "verify" or "insecure"


def _issued_by_parent(call: str, user: str) -> str:
    """A worker's config placeholder (picklable): `WorkerSpec.tokens` holds the tokens."""
    raise LookupError(f"no token was issued for {user} of {call}")


def _tls_kind(context: Any) -> str | None:
    if context is None or context is False:
        return None
    if isinstance(context, ssl_module.SSLContext) and context.verify_mode == ssl_module.CERT_NONE:
        return "insecure"
    return "verify"


def _tls_context(kind: str | None) -> Any:
    if kind is None:
        return None
    context = ssl_module.create_default_context()
    if kind == "insecure":
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
    return context


class PipeCoordinator:
    """A worker's `Coordinator`: the parent's messages arrive on a reader thread."""

    def __init__(self, conn: Connection, test: LoadTest) -> None:
        self.conn = conn
        self.test = test
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._progress: asyncio.Task[None] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = ("eof",)  # the parent is gone: stop early, finish, exit
            if message[0] in ("stop", "eof"):
                self.loop.call_soon_threadsafe(self.test.request_stop)
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, message)
            if message[0] == "eof":
                return

    def send(self, *message: Any) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(message)

    async def _expect(self, kind: str, timeout: float) -> Any:
        deadline = self.loop.time() + timeout
        while True:
            try:
                message = await asyncio.wait_for(self.inbox.get(),
                                                 max(0.01, deadline - self.loop.time()))
            except TimeoutError:
                raise RuntimeError(f"no '{kind}' from the parent within {timeout:g} s") from None
            if message[0] == kind:
                return message[1]
            if message[0] == "eof":
                raise RuntimeError("the parent process went away")

    def _loop_time(self, wall: float) -> float:
        return self.loop.time() + (wall - time.time())

    async def start(self) -> float:
        self.send("ready")
        wall = await self._expect("start", PREPARE_TIMEOUT_S * 2)
        self._progress = asyncio.create_task(self._report_progress())
        started = self._loop_time(wall)
        await asyncio.sleep(max(0.0, started - self.loop.time()))
        return started

    async def senders(self, mine: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        self.send("senders", mine)
        return [tuple(s) for s in await self._expect("senders", self._left() + 30)]

    async def window(self, can_measure: bool) -> tuple[float, float] | None:
        self.send("window", can_measure)
        timing = await self._expect("window", self._left() + 30)
        return None if timing is None else (self._loop_time(timing[0]),
                                            self._loop_time(timing[1]))

    def _left(self) -> float:
        return max(0.0, self.test.started + self.test.config.duration - self.loop.time())

    async def _report_progress(self) -> None:
        while True:
            self.send("progress", dataclasses.asdict(self.test.progress()))
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self._progress is not None:
            self._progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._progress


async def _work(conn: Connection, spec: WorkerSpec) -> dict[str, Any]:
    config = dataclasses.replace(spec.config, ssl=_tls_context(spec.tls),
                                 token_for=lambda call, user: spec.tokens[(call, user)])
    test = LoadTest(config)
    coordinator = PipeCoordinator(conn, test)
    test.coordinator = coordinator
    try:
        await test.run()
    finally:
        await coordinator.close()
    return test.raw


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """A worker process's entry: run the share, send the figures or one error line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        raw = asyncio.run(_work(conn, spec))
    except BaseException as exc:  # noqa: BLE001 - anything becomes one line to the parent
        line = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        with contextlib.suppress(OSError):
            conn.send(("error", line))
        raise SystemExit(1) from None
    conn.send(("report", raw))
    conn.close()


# -- the parent side ----------------------------------------------------------------------------


class ProcessLoadTest:
    """`LoadTest`'s interface (run, request_stop, progress) over worker processes."""

    def __init__(self, config: LoadConfig, on_window: WindowHook | None = None,
                 monitor: ServerMonitor | None = None) -> None:
        config.validate()
        self.config = config
        self.on_window = on_window
        self.monitor = monitor
        self.count = worker_count(config)
        self.phase = "preparing"
        self.started = 0.0
        self._progress: dict[int, dict[str, Any]] = {}
        self.raws: list[dict[str, Any]] = []  # each worker's figures (`raw_figures`)
        self._conns: list[Connection] = []
        self._processes: list[Any] = []
        self._stopped = False
        self._finished = False  # every report is in: the workers exit by themselves
        self._stop = asyncio.Event()

    def _spec(self, index: int) -> WorkerSpec:
        config = dataclasses.replace(self.config, token_for=_issued_by_parent, ssl=None,
                                     processes=1,
                                     share=(index, self.count))
        tokens = {(call, user): self.config.token_for(call, user)
                  for call, user, _ in join_order(config) if runs_here(config, call, user)}
        return WorkerSpec(config=config, tokens=tokens, tls=_tls_kind(self.config.ssl))

    def request_stop(self) -> None:
        """Ctrl-C: every worker finishes early and still reports what it measured."""
        self._stopped = True
        self._stop.set()
        self._broadcast(("stop",))

    def _broadcast(self, message: tuple[Any, ...]) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(message)

    def progress(self) -> Progress:
        loop = asyncio.get_running_loop()
        parts = list(self._progress.values())
        phase = self.phase
        if len(parts) == self.count and phase != "done":
            phase = min((p["phase"] for p in parts),
                        key=lambda name: PHASES.index(name) if name in PHASES else 0)
        return Progress(
            phase=phase, elapsed=loop.time() - self.started if self.started else 0.0,
            duration=self.config.duration, requested=self.config.participants,
            **{name: sum(p[name] for p in parts) for name in (
                "joined", "connected", "failed", "packets_sent", "packets_received",
                "delay_samples")},
            server_cpu_percent=self.monitor.latest_cpu_percent if self.monitor else None)

    async def run(self) -> LoadReport:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()
        context = multiprocessing.get_context("spawn")
        background: list[asyncio.Task[Any]] = []
        try:
            for index in range(self.count):
                mine, theirs = context.Pipe()
                process = context.Process(target=worker_main, args=(theirs, self._spec(index)),
                                          name=f"callsctl-loadgen-{index + 1}", daemon=True)
                process.start()
                theirs.close()
                self._conns.append(mine)
                self._processes.append(process)
                threading.Thread(target=_read_worker, args=(loop, inbox, index, mine),
                                 daemon=True).start()
            if self.monitor is not None and self.monitor.source is None:
                await self.monitor.detect()
            raws = self.raws = await self._coordinate(loop, inbox, background)
            self._finished = True
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await asyncio.to_thread(self._reap)
            if self.monitor is not None:
                await self.monitor.close()
        self.phase = "done"
        return merge_report(self.config, raws, server=self.monitor.report()
                            if self.monitor is not None else None)

    async def _coordinate(self, loop: asyncio.AbstractEventLoop,
                          inbox: asyncio.Queue[tuple[int, tuple[Any, ...]]],
                          background: list[asyncio.Task[Any]]) -> list[dict[str, Any]]:
        """Answer the workers' steps (see the module docstring) until every report is in."""
        config = self.config
        deadline = loop.time() + PREPARE_TIMEOUT_S + config.duration + CLOSE_TIMEOUT_S + 60
        waiting: dict[str, dict[int, Any]] = {"ready": {}, "senders": {}, "window": {},
                                              "report": {}}
        start_wall = 0.0
        while len(waiting["report"]) < self.count:
            try:
                index, message = await asyncio.wait_for(inbox.get(),
                                                        max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise LoadWorkerError(
                    f"the load-generator workers did not finish within "
                    f"{deadline - self.started:.0f} s; they were stopped") from None
            kind = message[0]
            name = f"load-generator worker {index + 1} of {self.count}"
            if kind == "progress":
                self._progress[index] = message[1]
                continue
            if kind == "error":
                raise LoadWorkerError(f"{name} failed: {message[1]}")
            if kind == "eof":
                if index in waiting["report"]:
                    continue
                process = self._processes[index]
                await asyncio.to_thread(process.join, 2.0)
                raise LoadWorkerError(f"{name} exited unexpectedly (exit code "
                                      f"{process.exitcode}); the run was stopped")
            waiting[kind][index] = message[1] if len(message) > 1 else None
            if len(waiting[kind]) < self.count:
                continue
            if kind == "ready":
                start_wall = time.time() + START_MARGIN_S
                self.started = loop.time() + START_MARGIN_S
                self.phase = "joining"
                if self.monitor is not None:
                    background.append(asyncio.create_task(
                        self.monitor.run(self.started + config.duration)))
                self._broadcast(("start", start_wall))
            elif kind == "senders":
                for worker, conn in enumerate(self._conns):
                    others = [s for other, streams in waiting["senders"].items()
                              if other != worker for s in streams]
                    with contextlib.suppress(OSError):
                        conn.send(("senders", others))
            elif kind == "window":
                timing = self._window(start_wall, all(waiting["window"].values()))
                self._broadcast(("window", timing))
                if timing is not None:
                    background.append(asyncio.create_task(self._marks(loop, *timing)))
        return [waiting["report"][index] for index in range(self.count)]

    def _window(self, start_wall: float, everyone_can: bool) -> tuple[float, float] | None:
        """One steady window for every worker, in wall-clock time (or None)."""
        end = start_wall + self.config.duration
        opens = time.time() + START_MARGIN_S
        closes = end if self.config.window is None else min(end, opens + self.config.window)
        if not everyone_can or self._stopped or closes - opens < 0.5:
            return None
        return opens, closes

    async def _marks(self, loop: asyncio.AbstractEventLoop, opens: float, closes: float) -> None:
        """The server monitor's and the caller's window edges, at the workers' edges."""
        await asyncio.sleep(max(0.0, opens - time.time()))
        if self.monitor is not None:
            await self.monitor.mark("start")
        if self.on_window is not None:
            await self.on_window("start")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, closes - time.time()))
        if self.on_window is not None:
            await self.on_window("end")
        if self.monitor is not None:
            await self.monitor.mark("end")

    def _reap(self) -> None:
        """Bounded: let finished workers exit, terminate the rest, kill what still lingers."""
        give = time.monotonic() + (5.0 if self._finished else 0.0)
        for process in self._processes:
            process.join(max(0.0, give - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for conn in self._conns:
            conn.close()


def _read_worker(loop: asyncio.AbstractEventLoop,
                 inbox: asyncio.Queue[tuple[int, tuple[Any, ...]]],
                 index: int, conn: Connection) -> None:
    """A worker's messages onto the parent's loop; EOF when it exits or dies."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = ("eof",)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(inbox.put_nowait, (index, message))
        if message[0] == "eof":
            return
