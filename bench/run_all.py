"""The SFU benchmark scenarios, each beside two references, written into bench/RESULTS.md.

For every scenario, in one run on this machine, three measurements:

1. `callsctl serve` on loopback (a subprocess), loaded by the load generator
   (callsctl_sfu.client.loadgen, in this process): real signaling, ICE, DTLS,
   SRTP, pre-encoded Opus (and VP8 for the screen share). It runs twice: with
   its C fan-out (rtc/_fanout.c, the default) and with the Python engine
   (CALLSCTL_FAST_PATH=0), so what the extension buys is measured side by side.
2. The reference naive Python SFU, aiortc's MediaRelay (bench/mediarelay_server.py),
   under the same load or, where that is beyond this machine, the largest
   shape of it the section states.
3. The raw floor (bench/srtp_floor.py): SRTP unprotect once, protect + sendto
   per receiver, no SFU logic.

Figures: server CPU per forwarded packet = (CPU time of the server process,
all threads, from its CPU-time clock, clock_getcpuclockid(3), in nanoseconds;
utime+stime from /proc/<pid>/stat where that clock is missing) / (packets
forwarded, the server's /stats `rtp_forwarded` counter; for the reference,
which has no such counter, the packets its receivers got), taken over slices
of a steady window; the median slice is the figure (min-max beside it)
because the machine is shared and noisy. Memory per
session = (RSS at the end of the window - RSS of the idle server before any
join) / participants. Join p99, forwarding delay p99 and loss come from the
load generator. Ratios to the floor and to the reference are within one run.

Cores: `--server-cpus 0` starts every server under test inside `taskset -c 0`
(all its threads, so the server also sizes its fan-out pool to what it may
use), `--loadgen-cpus` pins this process (the load generator); both go into
the result and the tables. Without them nothing is pinned.

`--loadgen-processes N` splits the load generator's participants over N worker
processes (`callsctl loadtest --processes`; 0: one per usable CPU, within
`--loadgen-cpus`). The default, 1, is the one process every recorded figure
used, so results stay comparable; more keeps the largest shapes from measuring
the generator's own event loop.

    python bench/run_all.py --write bench/RESULTS.md          # every scenario
    python bench/run_all.py --only 1x50 --window 10           # one, printed only
    python bench/run_all.py --only 1x200 --server-cpus 0 --loadgen-cpus 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from forwarding import write_section  # noqa: E402
from sink_meter import (  # noqa: E402
    PROBE_ADDRESS,
    PROBES,
    Counts,
    MeterError,
    SinkMeter,
    probes_for,
    self_check,
    window_checks,
)
from sink_meter import figures as meter_figures  # noqa: E402

from callsctl_sfu.calls.queuedelay import QueueDelay  # noqa: E402
from callsctl_sfu.client.loadgen import (  # noqa: E402
    MAX_PROCESSES,
    SRTP_PROFILE_NAMES,
    LightParticipant,
    LoadConfig,
    LoadTest,
    ParticipantFactory,
    ProcessLoadTest,
    make_load_test,
    proc_cpu_seconds,
    proc_rss_bytes,
)
from callsctl_sfu.datadir import load_or_create_secret  # noqa: E402
from callsctl_sfu.tokens import issue_token  # noqa: E402

RESULTS_JSON = BENCH / "results.json"
# Runs with --server-cpus: kept apart, so the unpinned figures and their summary stay as they are.
PINNED_JSON = BENCH / "results-pinned.json"
PYTHON_ENGINE = "callsctl-python"  # callsctl serve with CALLSCTL_FAST_PATH=0
START_TIMEOUT_S = 30.0
TARGET_US_AT_200 = 10.0
TARGET_FLOOR_RATIO = 3.0
TARGET_RELAY_RATIO = 10.0
TARGET_SESSION_KB = 1024.0
JOIN_RATE = 25.0  # joins per second: the pacing of every scenario (the guide's)
# Load-generator worker processes (--loadgen-processes); 1: the recorded figures' one process.
LOADGEN_PROCESSES = 1
# The one SRTP profile the load generator's participants accept (--loadgen-srtp-profile);
# None: aiortc's choice (AES-256-GCM), as every figure recorded before it.
LOADGEN_SRTP_PROFILE: str | None = None


@dataclass(frozen=True)
class Shape:
    """What the load generator simulates."""

    calls: int
    users: int
    unmuted: int
    screen: bool = False
    video: bool = False  # the unmuted participants also send a VP8 camera
    # The screen share as simulcast layers l and h (the server runs with simulcast enabled).
    simulcast: bool = False

    @property
    def participants(self) -> int:
        return self.calls * self.users

    def describe(self) -> str:
        text = f"{self.calls} call{'s' if self.calls > 1 else ''} x {self.users}, " \
               f"{self.unmuted} unmuted"
        text += " with cameras" if self.video else ""
        if not self.screen:
            return text
        return text + (", 1 simulcast screen share" if self.simulcast else ", 1 screen share")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    shape: Shape


SCENARIOS = (
    Scenario("1x10", "1 call, 10 participants, 2 unmuted", Shape(1, 10, 2)),
    Scenario("1x50", "1 call, 50 participants, 2 unmuted", Shape(1, 50, 2)),
    Scenario("1x200", "1 call, 200 participants, 2 unmuted", Shape(1, 200, 2)),
    Scenario("1x500", "1 call, 500 participants, 2 unmuted", Shape(1, 500, 2)),
    Scenario("1x1000", "1 call, 1000 participants, 2 unmuted", Shape(1, 1000, 2)),
    Scenario("10x10", "10 calls of 10 participants, 2 unmuted each", Shape(10, 10, 2)),
    Scenario("1x50-screen", "1 call, 50 participants, 1 screen share (the presenter, "
                            "also unmuted)", Shape(1, 50, 1, screen=True)),
    Scenario("1x10-av", "1 call, 10 participants, 2 cameras and 1 simulcast screen share",
             Shape(1, 10, 2, screen=True, video=True, simulcast=True)),
)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- cores ---------------------------------------------------------------------------------------


Cpus = tuple[int, ...] | None  # None: not pinned (every CPU this process may use)
# What this process was allowed at start, before it pinned itself (the load generator):
# the server's CPUs are checked against this, not against the load generator's own.
USABLE_CPUS = frozenset(os.sched_getaffinity(0))


def parse_cpus(text: str) -> tuple[int, ...]:
    """`0`, `0,1` or `0-1` -> sorted CPU numbers this process may use; ValueError says why."""
    cpus: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"{text!r} is not a CPU list: use numbers, ',' and '-' (e.g. 0,1)")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low or high - low > 1024:
            raise ValueError(f"{part.strip()!r} is not a CPU range (low-high)")
        cpus.update(range(low, high + 1))
    allowed = USABLE_CPUS
    outside = sorted(cpus - allowed)
    if outside:
        raise ValueError(f"CPU {','.join(map(str, outside))} is not usable here (this process "
                         f"may use {cpu_list(tuple(sorted(allowed)))}; see `taskset -p $$`)")
    return tuple(sorted(cpus))


def cpu_list(cpus: Cpus) -> str:
    """The CPUs as taskset writes them ("0,1"); "all" when not pinned."""
    return "all" if cpus is None else ",".join(str(c) for c in cpus)


def pinned(argv: list[str], cpus: Cpus) -> list[str]:
    """argv run inside `taskset -c` (util-linux): every thread the program starts inherits it.

    Pinning at exec, not after start, matters: the server sizes its fan-out
    thread pool from the CPUs it may use (rtc/fastpath.usable_cpus).
    """
    if cpus is None:
        return argv
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("taskset is not installed (apt-get install -y util-linux)")
    return [taskset, "-c", cpu_list(cpus), *argv]


def pin_process(pid: int, cpus: Cpus) -> None:
    """os.sched_setaffinity on every thread of pid (a thread's mask is its own on Linux)."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), cpus)


def affinity_of(pid: int) -> str:
    """The CPUs every thread of pid may run on, as the kernel reports them (Cpus_allowed_list).

    Several lists joined by " | " when the threads differ (a pinning that missed one).
    """
    lists: set[str] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        lists.add(line.split(":", 1)[1].strip())
    return " | ".join(sorted(lists)) or "unknown"


def describe_cpus(cpus: Cpus) -> str:
    """"1 core (CPU 0)", "2 cores (CPU 0,1)" or "not pinned": how the tables name it."""
    if cpus is None:
        return "not pinned"
    return f"{len(cpus)} core{'s' if len(cpus) > 1 else ''} (CPU {cpu_list(cpus)})"


# -- servers under test --------------------------------------------------------------------------


@dataclass
class Running:
    process: asyncio.subprocess.Process
    base_url: str
    ws_url: str
    secret: bytes | None
    has_stats: bool
    log: Path
    udp_port: int | None = None  # the media port, for the sink meter (callsctl serve only)

    async def stop(self) -> None:
        await stop_process(self.process)


async def stop_process(process: asyncio.subprocess.Process, grace_s: float = 15) -> None:
    """SIGTERM a server under test, and SIGKILL it if it has not exited after `grace_s`."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _wait_ready(base: str, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.get(f"{base}/readyz",
                                    timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server not ready in {START_TIMEOUT_S:g} s:\n{log.read_text()[-2000:]}")


async def start_callsctl(workdir: Path, simulcast: bool = False,
                         python_engine: bool = False, cpus: Cpus = None) -> Running:
    """`callsctl serve` on loopback; with simulcast it accepts the screen share's layers.

    Simulcast is off by default in the server, so a simulcast scenario has to
    turn it on (CALLSCTL_ENABLE_SIMULCAST), or the server would take one stream.
    python_engine turns the C fan-out off (CALLSCTL_FAST_PATH=0); cpus pins it (`pinned`).
    """
    api, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    data_dir = workdir / f"data-{api}"
    log = workdir / f"serve-{api}.log"
    env = dict(os.environ)
    if simulcast:
        env["CALLSCTL_ENABLE_SIMULCAST"] = "true"
    env.pop("CALLSCTL_FAST_PATH", None)
    if python_engine:
        env["CALLSCTL_FAST_PATH"] = "0"
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(
            *pinned([sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1",
                     "--api-port", str(api), "--udp-port", str(udp), "--data-dir",
                     str(data_dir), "--log-level", "warning"], cpus),
            cwd=REPO, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{api}"
    await _wait_ready(base, process, log)
    return Running(process, base, f"ws://127.0.0.1:{api}/ws",
                   load_or_create_secret(data_dir), True, log, udp)


async def start_relay(workdir: Path, cpus: Cpus = None) -> Running:
    log = workdir / f"relay-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        process = await asyncio.create_subprocess_exec(
            *pinned([sys.executable, str(BENCH / "mediarelay_server.py"), "--port", "0"], cpus),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
    port = int(line.split()[1])
    base = f"http://127.0.0.1:{port}"
    await _wait_ready(base, process, log)
    return Running(process, base, f"ws://127.0.0.1:{port}/ws", None, False, log)


async def start_callsctl_retrying(workdir: Path, attempts: int = 3) -> Running:
    """`callsctl serve` on free ports; again if another process took one meanwhile."""
    for attempt in range(attempts):
        try:
            return await start_callsctl(workdir)
        except RuntimeError as exc:
            if "already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def one_call_config(running: Running, size: int, unmuted: int, window: float, prefix: str,
                    settle_s: float) -> LoadConfig:
    """One call of `size` joining at JOIN_RATE, then `settle_s` and the window (join_storm.py,
    consent.py): loopback, tokens signed with the server's own secret."""
    secret = running.secret
    assert secret is not None
    join_s = size / JOIN_RATE
    return LoadConfig(ws_url=running.ws_url,
                      token_for=lambda call, user: issue_token(secret, call, user, 3600),
                      calls=1, users_per_call=size, unmuted=unmuted,
                      duration=join_s + settle_s + window + 5, join_duration=join_s,
                      window=window, call_prefix=prefix, local_address="127.0.0.1",
                      settle_timeout=15, join_timeout=60)


async def start_py_spy(pid: int, output: Path | None, rate: int,
                       seconds: float) -> asyncio.subprocess.Process | None:
    """py-spy recording `pid` into `output` (raw format) when asked for and installed."""
    spy_exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if output is None or not Path(spy_exe).exists():
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        spy_exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
        "--duration", str(int(seconds)), "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def wait_py_spy(spy: asyncio.subprocess.Process | None) -> None:
    """Let a py-spy recording finish writing (bounded) before its server is stopped."""
    if spy is not None and spy.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(spy.wait(), 30)


def sessions_removed(test: LoadTest) -> int:
    """Participants the server removed during the run (their `session_removed` errors)."""
    return sum(p.error_codes.get("session_removed", 0) for p in test.participants)


def machine_steal() -> tuple[float, float]:
    """(steal, total) jiffies of all CPUs from /proc/stat: time the hypervisor took away."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0.0), sum(fields[:8])


def gc_in_window(first: Any, last: Any) -> dict[str, dict[str, float]] | None:
    """Per generation, the server's collections between two GET /stats `gc.pauses`
    readings: how many and their total ms (None when the server does not report them)."""
    if not isinstance(first, dict) or not isinstance(last, dict):
        return None
    out = {}
    for generation, now in last.items():
        then = first.get(generation) or {}
        out[generation] = {"count": now.get("count", 0) - then.get("count", 0),
                           "total_ms": round(now.get("total_ms", 0.0)
                                             - then.get("total_ms", 0.0), 1)}
    return out


def ksoftirqd_pids() -> list[int]:
    """The kernel's per-CPU softirq threads (ksoftirqd/N).

    Loopback delivery runs as a softirq: in the sender's own system call while
    the load is light, but deferred to ksoftirqd when softirqs keep coming, and
    then charged to that thread, not to the server. Their CPU over the window
    is shown beside the server's so such a shift is visible.
    """
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().startswith("ksoftirqd/"):
                pids.append(int(comm.parent.name))
    return pids


def cpu_of(pids: list[int]) -> float:
    """CPU time of these processes, seconds (gone ones count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += proc_cpu_seconds(pid)
    return total


def thread_times(pid: int) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds and run-queue wait seconds of every thread of pid, by thread id.

    From each thread's /proc/<pid>/task/<tid>/schedstat, read once: its run time and
    its time runnable but waiting for a CPU, in nanoseconds. Where that is missing (a
    kernel without schedstats) the CPU is utime + stime from its stat file, in 10 ms
    ticks, and there is no wait.
    """
    cpu: dict[int, float] = {}
    waits: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                tid = int(task.name)
                try:
                    fields = (task / "schedstat").read_text().split()
                except FileNotFoundError:
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    cpu[tid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                    continue
                cpu[tid] = int(fields[0]) / 1e9
                waits[tid] = int(fields[1]) / 1e9
    return cpu, waits


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def run_queue_wait(pid: int) -> float:
    """Seconds pid's main thread spent runnable but waiting for a CPU (/proc/<pid>/schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


# -- one measurement -----------------------------------------------------------------------------


class WindowSampler:
    """Samples the server's CPU, RSS and packet counters through the steady window."""

    def __init__(self, pid: int, running: Running, slices: int) -> None:
        self.pid = pid
        self.running = running
        self.slices = slices
        self.test: LoadTest | ProcessLoadTest | None = None
        self.samples: list[dict[str, float | None]] = []
        self.softirq_threads = ksoftirqd_pids()
        self.threads: list[dict[int, float]] = []  # per-thread CPU at the window's edges
        self.waits: list[dict[int, float]] = []  # per-thread run-queue waits, the same
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.slice_s = 1.0
        # GET /stats "simulcast" entries seen while media flowed: the layer bitrates
        # the server measured and the layer each receiver got.
        self.simulcast: list[list[dict[str, Any]]] = []

    async def _forwarded(self) -> tuple[float | None, float | None, QueueDelay | None,
                                        dict[str, Any] | None]:
        """GET /stats: packets forwarded, audio not forwarded for waiting too long in the
        socket (forwarding.dropped_late, media_late_drop_ms), the queue-wait histogram
        (media_queue_delay, calls/queuedelay.py) and its collector's pauses per
        generation (gc.pauses, gcpolicy.py); None where unknown."""
        if not self.running.has_stats or self._http is None:
            return None, None, None, None
        try:
            async with self._http.get(f"{self.running.base_url}/stats",
                                      timeout=aiohttp.ClientTimeout(total=3)) as response:
                stats = await response.json()
                if stats.get("simulcast"):
                    self.simulcast.append(stats["simulcast"])
                late = stats["forwarding"].get("dropped_late")
                return (float(stats["forwarding"]["rtp_forwarded"]),
                        float(late) if late is not None else None,
                        QueueDelay.from_stats(stats.get("media_queue_delay")),
                        (stats.get("gc") or {}).get("pauses"))
        except (aiohttp.ClientError, OSError, TimeoutError, KeyError, ValueError):
            return None, None, None, None

    def layers(self) -> dict[str, Any] | None:
        """The screen's layers over the window: median bitrate per rid, receivers per rid.

        The server's per-layer rates cover its last second, so the samples taken
        after sending stopped (the window's last one) are left out.
        """
        screens = [[e for e in sample if e.get("label") == "screen"]
                   for sample in self.simulcast[:-1]]
        screens = [s[0] for s in screens if s]
        if not screens:
            return None
        rids = list(screens[-1]["layers_bps"])
        return {"kbps": {rid: round(statistics.median(s["layers_bps"].get(rid, 0)
                                                      for s in screens) / 1000, 0)
                         for rid in rids},
                "receivers_on": {rid: sum(1 for layer in screens[-1]["receivers"].values()
                                          if layer == rid) for rid in rids}}

    async def sample(self) -> None:
        assert self.test is not None
        forwarded, late, queue, pauses = await self._forwarded()
        steal, total = machine_steal()
        self.samples.append({
            "t": time.monotonic(), "cpu": proc_cpu_seconds(self.pid),
            "rss": float(proc_rss_bytes(self.pid)), "forwarded": forwarded, "late": late,
            "queue": queue, "gc": pauses,
            "delivered": float(self.test.progress().packets_received),
            "wait": run_queue_wait(self.pid), "steal": steal, "total": total,
            "ksoftirqd": cpu_of(self.softirq_threads)})

    async def hook(self, edge: str) -> None:
        cpu, waits = thread_times(self.pid)
        self.threads.append(cpu)
        self.waits.append(waits)
        if edge == "start":
            self._http = aiohttp.ClientSession()
            await self.sample()
            self._task = asyncio.create_task(self._every())
        else:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await self.sample()
            if self._http is not None:
                await self._http.close()

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.slice_s)
            await self.sample()

    def figures(self) -> dict[str, Any]:
        """Per-slice CPU µs per packet (forwarded counter, else delivered) and totals."""
        first, last = self.samples[0], self.samples[-1]
        seconds = last["t"] - first["t"]  # type: ignore[operator]
        key = "forwarded" if first["forwarded"] is not None and last["forwarded"] is not None \
            else "delivered"
        per_slice = []
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            if a[key] is None or b[key] is None:
                continue
            packets = b[key] - a[key]  # type: ignore[operator]
            if packets > 0:
                per_slice.append(1e6 * (b["cpu"] - a["cpu"]) / packets)  # type: ignore[operator]
        packets = last[key] - first[key]  # type: ignore[operator]
        cpu = last["cpu"] - first["cpu"]  # type: ignore[operator]
        return {
            "counter": key, "window_s": round(seconds, 2), "slices": len(per_slice),
            "us_per_packet": round(statistics.median(per_slice), 2) if per_slice else None,
            "us_min": round(min(per_slice), 2) if per_slice else None,
            "us_max": round(max(per_slice), 2) if per_slice else None,
            "us_whole_window": round(1e6 * cpu / packets, 2) if packets > 0 else None,
            "packets_per_s": round(packets / seconds, 1) if seconds > 0 else None,
            "cpu_percent": round(100 * cpu / seconds, 1) if seconds > 0 else None,
            "rss_end": last["rss"],
            # Audio not forwarded for waiting too long in the socket (the server behind):
            # before the window (the joins) and in it. None: a server without the count.
            "dropped_late_before_window": first["late"],
            "dropped_late_in_window": (last["late"] - first["late"]  # type: ignore[operator]
                                       if first["late"] is not None and last["late"] is not None
                                       else None),
            # Contention: the server's main thread waiting for a CPU, and the VM's steal.
            "server_wait_percent": round(100 * (last["wait"] - first["wait"])  # type: ignore
                                         / seconds, 1) if seconds > 0 else None,
            "steal_percent": round(100 * (last["steal"] - first["steal"])  # type: ignore
                                   / max(1.0, last["total"] - first["total"]), 1),  # type: ignore
            # Every ksoftirqd/N thread's CPU in % of one core: softirq work (loopback
            # delivery among it) the kernel deferred there instead of the sender's call.
            "ksoftirqd_percent": round(100 * (last["ksoftirqd"] - first["ksoftirqd"])  # type: ignore
                                       / seconds, 1) if seconds > 0 else None,
            "threads_percent": self.thread_figures(),
            # How long the forwarded RTP waited in the server's socket over the window
            # (its C ingress's histogram): the server's own share of the delay.
            **self.queue_figures(first["queue"], last["queue"]),
            # The server's garbage collections in the window, per generation: each holds
            # the GIL its media reader thread decides with.
            "server_gc_in_window": gc_in_window(first["gc"], last["gc"]),
        }

    @staticmethod
    def queue_figures(first: Any, last: Any) -> dict[str, float | None]:
        """server_queue_p50_ms / _p99_ms of the packets counted between two samples."""
        window = last.since(first) if isinstance(last, QueueDelay) else None
        return {"server_queue_p50_ms": window.quantile(0.5) if window else None,
                "server_queue_p99_ms": window.quantile(0.99) if window else None}

    def thread_figures(self) -> dict[str, Any] | None:
        """The server's main thread (event loop, media socket reader) and the busiest others.

        In % of one core over the window: a main thread near 100 % is the limit
        whatever the other cores do (the reading side is one thread).
        """
        if len(self.threads) < 2 or not self.samples:
            return None
        before, after = self.threads[0], self.threads[-1]
        seconds = max(1e-9, self.samples[-1]["t"] - self.samples[0]["t"])  # type: ignore
        used = {tid: 100 * (after[tid] - before.get(tid, 0.0)) / seconds for tid in after}
        busiest = sorted((tid for tid in used if tid != self.pid), key=lambda t: -used[t])
        busiest = [tid for tid in busiest[:4] if used[tid] >= 0.5]
        # Each of those threads' time runnable but not running (a CPU given to another).
        waits_before, waits_after = (self.waits[0], self.waits[-1]) if len(self.waits) > 1 \
            else ({}, {})
        waited = [round(100 * (waits_after[tid] - waits_before.get(tid, 0.0)) / seconds, 1)
                  for tid in busiest if tid in waits_after]
        return {"main": round(used.get(self.pid, 0.0), 1),
                "others": [round(used[tid], 1) for tid in busiest],
                "others_waited": waited if len(waited) == len(busiest) else None}


async def measure(kind: str, shape: Shape, window: float, slices: int,
                  workdir: Path, cpus: Cpus = None,
                  delay_sample_every: int = 5, sink: bool = False) -> dict[str, Any]:
    """One system under one shape: start it (on `cpus`), load it, sample it, stop it.

    `sink`: measured with the sink meter (bench/sink_meter.py): callsctl only.
    """
    if sink and kind == "mediarelay":
        raise ValueError("the sink meter needs the server's media port: callsctl serve only")
    running = await (start_relay(workdir, cpus) if kind == "mediarelay" else
                     start_callsctl(workdir, shape.simulcast, kind == PYTHON_ENGINE, cpus))
    return await measure_running(running, kind, shape, window, slices, cpus=cpus,
                                 delay_sample_every=delay_sample_every, sink=sink)


def sample_every(participants: int) -> int:
    """How often a receiver decrypts a packet for its delay sample: rarer for big calls.

    Every receiver decrypting every 5th packet costs the load generator a
    Python SRTP unprotect per 5 packets; at 1000 receivers that alone is 20k
    per second. Every 20th past 200 participants still gives thousands of
    delay samples a second, and the generator keeps up longer.
    """
    return 5 if participants <= 200 else 20


async def measure_running(running: Running, kind: str, shape: Shape, window: float,
                          slices: int, local_address: str = "127.0.0.1",
                          participant_factory: ParticipantFactory = LightParticipant,
                          cpus: Cpus = None, delay_sample_every: int = 5,
                          sink: bool = False) -> dict[str, Any]:
    """Load a started server, sample it through the window, stop it (bench/janus.py too).

    `participant_factory` is the load generator's signaling dialect (callsctl's
    /ws by default); `local_address` is where the participants gather. `cpus`:
    the server was started pinned to them (`pinned`); every thread of it is
    pinned again here (a no-op then; it catches a server started otherwise)
    and the kernel's view of its affinity and of the load generator's goes in
    the result.

    `sink`: the sink meter on the server's media port (bench/sink_meter.py):
    SRTP to all but `probes_for(users)` receivers per call (2 to PROBES, a tenth
    of the call) is counted and dropped at the
    loopback device; those probes (on PROBE_ADDRESS) are the ones the load
    generator measures. `loss` is then the meter's, over every receiver
    (forwarded / (incoming x receivers)); `probe_loss` the probes' own.
    """
    meter: SinkMeter | None = None
    reads: list[Counts] = []
    if sink:
        # Only the probes receive: each can read the stamp of every packet, which gives
        # the delay percentiles thousands of samples for the cost of a few hundred unprotects.
        delay_sample_every = 1
    try:
        if sink:
            if running.udp_port is None:
                raise ValueError("the sink meter needs the server's media port")
            meter = SinkMeter(running.udp_port, sink=True).open()
        pid = running.process.pid
        pin_process(pid, cpus)
        await asyncio.sleep(1.0)
        idle_rss = proc_rss_bytes(pid)
        secret = running.secret

        def token_for(call: str, user: str) -> str:
            return issue_token(secret, call, user, 3600) if secret else "reference"

        join = max(1.0, shape.participants / JOIN_RATE)
        config = LoadConfig(ws_url=running.ws_url, token_for=token_for, calls=shape.calls,
                            users_per_call=shape.users, unmuted=shape.unmuted,
                            screen_sharing=shape.screen, video=shape.video,
                            simulcast=shape.simulcast,
                            duration=join + 15 + window + 5,
                            join_duration=join, window=window, call_prefix=f"bench-{kind}",
                            local_address=local_address, settle_timeout=15,
                            delay_sample_every=delay_sample_every,
                            processes=LOADGEN_PROCESSES,
                            srtp_profile=LOADGEN_SRTP_PROFILE,
                            probes_per_call=probes_for(shape.users) if sink else 0,
                            probe_address=PROBE_ADDRESS if sink else None)
        sampler = WindowSampler(pid, running, slices)
        sampler.slice_s = window / slices

        async def on_window(edge: str) -> None:
            # The meter first at the start (closest to the generator's own sent counts),
            # last at the end (sending stopped 0.3 s before: in-flight copies are in).
            if meter is not None and edge == "start":
                reads.append(await asyncio.to_thread(meter.read))
            await sampler.hook(edge)
            if meter is not None and edge == "end":
                reads.append(await asyncio.to_thread(meter.read))

        test = make_load_test(config, on_window=on_window,
                              participant_factory=participant_factory)
        sampler.test = test
        report = (await test.run()).to_dict()
        server_affinity = affinity_of(pid)
    finally:
        if meter is not None:
            meter.close()
        await running.stop()
    media = report["media"] or {}
    figures = sampler.figures() if len(sampler.samples) >= 2 else {}
    joined = report["participants"]["joined"]
    rss_end = figures.get("rss_end")
    metered = None
    if sink:
        metered = {"probes_per_call": probes_for(shape.users), "probe_address": PROBE_ADDRESS,
                   "problems": ["the window never opened"]}
        if len(reads) == 2:
            counts = reads[1] - reads[0]
            metered.update(meter_figures(counts, shape.users - 1))
            metered["problems"] = window_checks(counts, sink=True)
    loss = media.get("loss")
    return {
        "system": kind, "shape": asdict(shape), "participants": shape.participants,
        "cpus": {"server": cpu_list(cpus), "server_affinity": server_affinity,
                 "loadgen_affinity": affinity_of(os.getpid())},
        "delay_sample_every": delay_sample_every,
        "joined": joined, "failed": report["participants"]["failed"],
        "failures": report["participants"]["failure_examples"],
        "cpu": {k: v for k, v in figures.items() if k != "rss_end"},
        "rss_idle_mb": round(idle_rss / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1) if rss_end else None,
        "rss_per_session_kb": round((rss_end - idle_rss) / joined / 1024, 0)
        if rss_end and joined else None,
        "join_s": report["join_s"], "delay_ms": report["delay_ms"],
        "loss": loss if metered is None else metered.get("loss"),
        "probe_loss": loss if metered is not None else None, "meter": metered,
        "loss_by_label": media.get("by_label"),
        "loadgen": {k: report["loadgen"].get(k) for k in (
            "cpu_percent", "window_cpu_percent", "loop_lag_ms", "loop_lag_joining_ms",
            "gc_full_collections", "processes")},
        "notes": report["notes"],
        "simulcast": sampler.layers(),
    }


async def floor(shape: Shape, cpus: Cpus = None, sink: bool = False,
                engine: str = "python", at_call_rate: bool = False) -> dict[str, Any]:
    """bench/srtp_floor.py for the shape, on the server's CPUs when it is pinned.

    `sink`/`engine`: its --sink (the server's meter) and --engine (python or c).
    `at_call_rate` (C engine): the floor of the server's own conditions, not a
    warm loop: incoming packets as far apart as the server receives them
    (--calls) and one outgoing stream per speaker per receiver (--streams),
    about 1000 incoming packets three times.
    """
    receivers = shape.users - 1
    sent, repeats = ("50000", "5") if not at_call_rate else \
        (str(min(5_000_000, max(1_000, 1000 * receivers))), "3")
    args = [sys.executable, str(BENCH / "srtp_floor.py"), "--receivers", str(receivers),
            "--publishers", str(shape.unmuted),
            "--min-sent", sent, "--repeats", repeats, "--json", "--engine", engine]
    if at_call_rate:
        args += ["--calls", str(shape.calls),
                 "--streams", str(max(1, shape.unmuted) + (1 if shape.screen else 0))]
    if sink:
        args.append("--sink")
    if shape.screen or shape.video:
        args.append("--screen")  # video-sized packets
    process = await asyncio.create_subprocess_exec(*pinned(args, cpus), cwd=REPO,
                                                   stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 300)
    finally:
        # Interrupted or timed out: SIGTERM lets its sink meter remove its tables.
        await stop_process(process, grace_s=10)
    if process.returncode != 0:
        raise RuntimeError("srtp_floor.py failed")
    return json.loads(out)


def relay_shape(shape: Shape, relay_max: int, relay_max_screen: int) -> Shape:
    """The largest same-kind load the reference gets: it re-encodes per subscriber.

    MediaRelay cannot take simulcast (aiortc negotiates no rids): its screen
    share is always the single `h`-sized layer.
    """
    shape = replace(shape, simulcast=False)
    cap = relay_max_screen if shape.screen or shape.video else relay_max
    if shape.participants <= cap:
        return shape
    users = min(shape.users, cap)
    return Shape(1, users, min(shape.unmuted, users), shape.screen, shape.video)


async def run_scenario(scenario: Scenario, window: float, slices: int, relay_max: int,
                       relay_max_screen: int, skip_relay: bool,
                       skip_python_engine: bool, cpus: Cpus = None,
                       sink: bool = False) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="callsctl-bench-") as tmp:
        workdir = Path(tmp)
        print(f"[{scenario.key}] callsctl serve: {scenario.shape.describe()}", file=sys.stderr)
        every = sample_every(scenario.shape.participants)
        sfu = await measure("callsctl", scenario.shape, window, slices, workdir, cpus, every,
                            sink=sink)
        python_engine = None
        if not skip_python_engine:
            print(f"[{scenario.key}] callsctl serve, Python engine", file=sys.stderr)
            python_engine = await measure(PYTHON_ENGINE, scenario.shape, window, slices,
                                          workdir, cpus, every, sink=sink)
        relay = None
        rshape = relay_shape(scenario.shape, relay_max, relay_max_screen)
        if not skip_relay and not sink:
            print(f"[{scenario.key}] MediaRelay reference: {rshape.describe()}", file=sys.stderr)
            relay = await measure("mediarelay", rshape, window, slices, workdir, cpus)
        print(f"[{scenario.key}] raw floor", file=sys.stderr)
        # Sink mode: the C floor (libsrtp + sendmmsg per copy) is the ratio's base, the
        # Python floor beside it; both metered like the server.
        floor_result = await floor(scenario.shape, cpus, sink, "c" if sink else "python")
        floor_python = await floor(scenario.shape, cpus, sink) if sink else None
        floor_paced = await floor(scenario.shape, cpus, sink, "c", at_call_rate=True) \
            if sink else None
    return {"key": scenario.key, "title": scenario.title, "shape": asdict(scenario.shape),
            "server_cpus": cpu_list(cpus), "loadgen_cpus": affinity_of(os.getpid()),
            "measured_at": started.strftime("%Y-%m-%d %H:%M UTC"),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "callsctl": sfu, "callsctl_python": python_engine, "mediarelay": relay,
            "relay_shape": asdict(rshape), "sink": sink,
            "floor": floor_result, "floor_python": floor_python, "floor_paced": floor_paced}


# -- rendering -------------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " " + line.split(":", 1)[1].strip()
                break
    import aiortc

    return (f"{os.cpu_count()} vCPU{model}, {platform.machine()}, Linux "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"aiortc {aiortc.__version__}")


def _ms(values: dict[str, float] | None, key: str, unit: str = "ms", digits: int = 1) -> str:
    return "n/a" if not values or key not in values else f"{values[key]:.{digits}f} {unit}"


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _row(name: str, result: dict[str, Any], floor_us: float) -> str:
    cpu = result["cpu"]
    us = cpu.get("us_per_packet")
    shape = Shape(**result["shape"])
    server = (result.get("cpus") or {}).get("server", "all")
    if server != "all":
        name += f" on CPU {server}"
    cells = [name, f"{shape.describe()} ({result['joined']}/{result['participants']} joined)"]
    if us is None:
        cells += ["n/a", "n/a", "n/a", "n/a"]
    else:
        cells += [f"{cpu['packets_per_s']:.0f}", f"{cpu['cpu_percent']:.1f} %",
                  f"**{us:.1f}** ({cpu['us_min']:.1f}-{cpu['us_max']:.1f})",
                  f"{us / floor_us:.1f}x"]
    kb = result["rss_per_session_kb"]
    cells.append("n/a" if kb is None else f"{kb:.0f} KB")
    cells.append(_ms(result["join_s"], "p99", "s", digits=2))
    cells.append("n/a (re-encoded)" if result["system"] == "mediarelay"
                 else _ms(result["delay_ms"], "p99"))
    cells.append(_loss(result["loss"]))
    cells.append(loadgen_cpu(result))
    return "| " + " | ".join(cells) + " |"


def _floor_row(fl: dict[str, Any], base_us: float) -> str:
    """A floor's row: the Python one (protect + sendto) or the C one (fastpath.fanout)."""
    profile = fl.get("srtp_profile", "SRTP_AES128_CM_SHA1_80")
    sockets = "one socket each" if fl.get("sockets") else "one shared sink socket"
    what = ("C floor: SRTP unprotect once, libsrtp protect + sendmmsg per receiver "
            "(fastpath.fanout, one thread)" if fl.get("engine") == "c" else
            "raw floor (Python): SRTP unprotect once, protect + sendto per receiver")
    if fl.get("calls"):
        what += (f", at the call's packet rate ({fl['pace_ms']:.1f} ms apart, "
                 f"{fl['streams']} streams per receiver; the fan-out alone "
                 f"{fl['fanout_us_per_copy']:.2f} µs per copy)")
    if fl.get("sink"):
        what += ", sink meter"
    us = fl["us_per_packet"]
    return (f"| {what} | {fl['receivers']} receivers ({sockets}), {profile}, "
            f"{fl['mean_packet_octets']:.0f}-octet packets "
            f"| - | - | **{us:.1f}** ({fl['min']:.1f}-{fl['max']:.1f}) | {us / base_us:.1f}x "
            "| - | - | - | - | - |")


def sink_notes(result: dict[str, Any]) -> list[str]:
    """What the sink meter counted, for the server(s) and the floors of a --sink run."""
    notes = ["Sink mode (bench/sink_meter.py): the server's SRTP copies were counted and "
             "dropped at the loopback device's egress, after the whole send path, except to "
             "a few probe receivers per call (a tenth of it, 2 to "
             f"{PROBES}) on {PROBE_ADDRESS}, which the load generator "
             "measured (delay; `probe loss`). No receiver's socket delivery is charged to the "
             "sender and the generator reads only the probes' packets. Loss = 1 - forwarded / "
             "(SRTP in x receivers per packet), from the meter's counters."]
    for name, key in (("callsctl serve", "callsctl"), ("Python engine", "callsctl_python")):
        run = result.get(key)
        meter = (run or {}).get("meter")
        if not meter:
            continue
        text = (f"{name}: meter over the window: {meter.get('media_in', 0):,} SRTP in, "
                f"{meter.get('forwarded', 0):,} forwarded (expected "
                f"{meter.get('expected', 0):,}; loss {_loss(meter.get('loss'))}), "
                f"{meter.get('to_probes', 0):,} to probes, {meter.get('dropped', 0):,} "
                f"dropped; probe loss {_loss(run.get('probe_loss'))}")
        if meter.get("problems"):
            text += "; METER PROBLEMS: " + "; ".join(meter["problems"])
        notes.append(text + ".")
    for floor_result in (result.get("floor"), result.get("floor_python"),
                         result.get("floor_paced")):
        meter = (floor_result or {}).get("meter")
        if meter:
            notes.append(f"{floor_result['engine']} floor: the meter counted "  # type: ignore
                         f"{meter['forwarded']:,} of {meter['sent']:,} copies sent, "
                         f"{meter['to_probes']:,} to probes, {meter['dropped']:,} dropped"
                         + ("; PROBLEMS: " + "; ".join(meter["problems"])
                            if meter["problems"] else "") + ".")
    return notes


def loadgen_cpu(result: dict[str, Any]) -> str:
    """The load generator's own CPU over the steady window (% of one core), "n/a" if unknown."""
    value = (result.get("loadgen") or {}).get("window_cpu_percent")
    return "n/a" if value is None else f"{value:.0f} %"


def cores_text(result: dict[str, Any]) -> str:
    """The section's line on where the server and the load generator ran."""
    server = result.get("server_cpus", "all")
    if server == "all":
        return ("Cores: nothing pinned (the server and the load generator share this "
                "machine's CPUs).")
    loadgen = result.get("loadgen_cpus", "all")
    text = (f"Cores: the server under test pinned to CPU {server} (`taskset -c {server}` at "
            f"start; every thread), the load generator (this process) on CPU {loadgen}.")
    if set(server.split(",")) & set(loadgen.replace("-", ",").split(",")):
        text += (" They share CPUs: on this 2-core machine \"2 cores for the server\" means "
                 "the load generator runs on the same 2 cores, so a 2-core figure is a lower "
                 "bound of what the server does with 2 cores of its own.")
    return text


def render_scenario(result: dict[str, Any], command: str, host: str) -> str:
    sfu, relay, fl = result["callsctl"], result["mediarelay"], result["floor"]
    floor_us = fl["us_per_packet"]
    lines = [
        f"## {result['title']}",
        "",
        f"Command: `{command}`  ",
        f"Measured: {result['measured_at']} on {host}; load average "
        f"{result['load_average'][0]:g} before, {result['load_average'][1]:g} after (a shared "
        "machine: other jobs ran too).  ",
        cores_text(result),
        "",
        "| system | load | packets/s out | server CPU | CPU µs / packet, median slice (min-max) "
        "| x floor | RSS / session | join p99 | delay p99 | loss | load generator CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        _row("callsctl serve", sfu, floor_us),
    ]
    python_engine = result.get("callsctl_python")
    if python_engine is not None:
        lines.append(_row("callsctl serve, Python engine (CALLSCTL_FAST_PATH=0)",
                          python_engine, floor_us))
    if relay is not None:
        lines.append(_row("aiortc MediaRelay (reference)", relay, floor_us))
    for floor_result in (fl, result.get("floor_python"), result.get("floor_paced")):
        if floor_result is not None:
            lines.append(_floor_row(floor_result, floor_us))
    lines.append("")
    notes = []
    if result.get("sink"):
        notes += sink_notes(result)
    waits = [f"{name} waited for a CPU {r['cpu']['server_wait_percent']:g} % of the window "
             f"(steal {r['cpu']['steal_percent']:g} %)"
             for name, r in (("callsctl serve", sfu), ("MediaRelay", relay))
             if r is not None and r["cpu"].get("server_wait_percent") is not None]
    if waits:
        notes.append("Contention: " + "; ".join(waits) + ". Delay figures suffer from it; "
                     "CPU per packet much less (CPU time only counts while running).")
    softirq = sfu["cpu"].get("ksoftirqd_percent")
    if softirq is not None:
        notes.append(f"ksoftirqd (all CPUs) used {softirq:g} % of a core during the callsctl "
                     "window: softirq work, loopback delivery among it, that the kernel "
                     "deferred to its own threads and so charged to no process under test.")
    sfu_us = sfu["cpu"].get("us_per_packet")
    python_us = python_engine["cpu"].get("us_per_packet") if python_engine else None
    if sfu_us and python_us:
        notes.append(f"The C fan-out (rtc/_fanout.c) costs {python_us / sfu_us:.1f}x less CPU "
                     "per forwarded packet than the same server forwarding in Python.")
    if relay is not None:
        relay_us = relay["cpu"].get("us_per_packet")
        if sfu_us and relay_us:
            notes.append(f"callsctl spends {relay_us / sfu_us:.0f}x less CPU per delivered "
                         "packet than the MediaRelay reference (which decodes each published "
                         "stream once and re-encodes it per subscriber).")
        if Shape(**result["shape"]).simulcast:
            notes.append("The MediaRelay reference cannot take simulcast (aiortc negotiates "
                         "no rids), so its screen share is a single layer, the same picture "
                         "as callsctl's `h` layer.")
        if Shape(**result["relay_shape"]) != replace(Shape(**result["shape"]),
                                                      simulcast=False):
            shape = Shape(**result["shape"])
            streams = shape.unmuted * (2 if shape.video else 1) + (1 if shape.screen else 0)
            encoders = shape.calls * streams * (shape.users - 1)
            notes.append(
                f"The MediaRelay reference ran at {Shape(**result['relay_shape']).describe()}, "
                f"not at {shape.describe()}: it needs one encoder per subscriber and stream "
                f"({encoders} here), beyond this 2-core machine; its per-packet figure is "
                "the comparison.")
        if relay["loss"] is not None and relay["loss"] > 0.05:
            notes.append(f"The reference could not keep up even so: {_loss(relay['loss'])} of "
                         "the packets its receivers should have got never came (it saturates; "
                         "its CPU figure is then CPU per packet it managed to deliver). For "
                         "video its packet counts also differ because it re-encodes at its own "
                         "bitrate.")
    layers = sfu.get("simulcast")
    if layers:
        rates = ", ".join(f"`{rid}` {kbps:.0f} kbit/s" for rid, kbps in layers["kbps"].items())
        viewers = ", ".join(f"{n} on `{rid}`" for rid, n in layers["receivers_on"].items())
        notes.append(f"Simulcast: callsctl received the screen share as two layers ({rates}, "
                     f"median of the window's samples of GET /stats) and forwarded one per "
                     f"viewer ({viewers}). Its CPU per forwarded packet includes "
                     "decrypting the layer nobody received.")
    if sfu["failed"]:
        notes.append(f"{sfu['failed']} participants failed to join callsctl serve: "
                     f"{'; '.join(sfu['failures'].values())}")
    lag = (sfu["loadgen"].get("loop_lag_ms") or {}).get("p99")
    if lag is not None and lag > 20:
        notes.append(f"The load generator's event loop lagged (p99 {lag:.0f} ms) during "
                     "the callsctl run: delay percentiles include that lag.")
    full = sfu["loadgen"].get("gc_full_collections")
    if full:
        notes.append(f"The load generator's own full garbage collections over the run: "
                     f"{full['count']}, the longest {full['max_ms']:g} ms (each one stalls its "
                     f"reads and delay stamps; frozen {full['freezes']} times while joining, "
                     "callsctl_sfu/gcpolicy.py).")
    for note in sfu["notes"]:
        notes.append(f"Load generator: {note}.")
    notes.append("Load generator CPU: this process's own CPU time over the window, in % of "
                 "one core; near 100 % it, not the server, limits the load (it is one Python "
                 "thread). It decrypted "
                 + ("every received packet" if sfu.get("delay_sample_every") == 1 else
                    f"every {sfu.get('delay_sample_every', 5)}th received packet")
                 + " for the delay.")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip()


def _span(values: list[tuple[str, float]], fmt: str) -> str:
    return ", ".join(f"{key} {fmt.format(value)}" for key, value in values)


def render_sink_summary(runs: list[dict[str, Any]]) -> str:
    """One table for the scenarios of one --sink run: server beside both floors, per packet."""
    first = runs[0]
    keys = " ".join(r["key"] for r in runs)
    command = first["command"].replace(f" --only {first['key']}", f" --only {keys}")
    lines = [
        "## Server CPU per forwarded packet against the floors, sink mode (bench/run_all.py "
        "--sink)",
        "",
        f"Command: `{command}`  ",
        f"Measured: {first['measured_at']} to {runs[-1]['measured_at']} on {first['host']}; "
        "load average " + ", ".join(f"{r['load_average'][0]:g}-{r['load_average'][1]:g}"
                                    for r in runs) + " (before-after each scenario).  ",
        cores_text(first),
        "",
        "| scenario | packets/s out | server CPU (+ksoftirqd) | its main thread "
        "| server µs / packet, median "
        "slice (min-max) | C floor µs | x C floor | C floor at the call's rate µs: "
        "whole (fan-out alone) | x C floor at the call's rate | Python floor µs "
        "| delay p50 / p99 (probes) | loss, all receivers (probes) | load generator CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        sfu, fl, py = r["callsctl"], r["floor"], r.get("floor_python")
        paced = r.get("floor_paced")
        cpu = sfu["cpu"]
        us = cpu.get("us_per_packet")
        delay = sfu.get("delay_ms") or {}
        cells = [
            r["title"].split(",")[0] + ", " + r["title"].split(",")[1].strip(),
            _cell_f(cpu.get("packets_per_s"), ",.0f"),
            f"{_cell_f(cpu.get('cpu_percent'), '.1f')} % "
            f"(+{_cell_f(cpu.get('ksoftirqd_percent'), '.1f')} %)",
            _cell_f((cpu.get("threads_percent") or {}).get("main"), ".1f") + " %",
            "n/a" if us is None else f"**{us:.2f}** ({cpu['us_min']:.2f}-{cpu['us_max']:.2f})",
            f"{fl['us_per_packet']:.2f}",
            "n/a" if us is None else f"{us / fl['us_per_packet']:.1f}x",
            "n/a" if paced is None else
            f"{paced['us_per_packet']:.2f} ({paced['fanout_us_per_copy']:.2f})",
            "n/a" if us is None or paced is None else
            f"{us / paced['us_per_packet']:.2f}x",
            "n/a" if py is None else f"{py['us_per_packet']:.2f}",
            f"{_cell_f(delay.get('p50'), '.1f')} / {_cell_f(delay.get('p99'), '.1f')} ms",
            f"{_loss(sfu.get('loss'))} ({_loss(sfu.get('probe_loss'))})",
            loadgen_cpu(sfu),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    problems = [f"{r['key']}: {p}" for r in runs for p in
                ((r["callsctl"].get("meter") or {}).get("problems") or [])]
    lines += ["", "- The server and both floors were metered alike (bench/sink_meter.py): "
              "copies counted and dropped at the loopback device, except to a tenth of each "
              f"call's receivers (2 to {PROBES}), the probes. C floor = SRTP unprotect once, "
              "then libsrtp protect + sendmmsg per copy through the C fan-out on one thread "
              "(`srtp_floor.py --engine c --sink`), incoming packets 1 ms apart; C floor "
              "at the call's rate = the same with the incoming packets as far apart as the "
              "server receives them and one outgoing stream per speaker per receiver "
              "(`--calls C --streams K`), its fan-out calls alone in brackets; Python "
              "floor = protect + sendto per copy in Python (`srtp_floor.py --sink`).",
              "- Meter checks: " + ("; ".join(problems) if problems else
                                    "every window counted SRTP in and out, every copy counted "
                                    "to a probe arrived, none to a dropped receiver did.")]
    return "\n".join(lines)


def _cell_f(value: Any, fmt: str) -> str:
    return "n/a" if value is None else f"{value:{fmt}}"


def render_summary(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "## Summary of the scenarios (bench/run_all.py)",
        "",
        "Each row comes from the scenario's own section in this file (its date, command, "
        "machine load and notes are there). In a cProfile of the MediaRelay reference the "
        "largest share of its event-loop thread went to aiortc's pure-Python audio-level "
        "computation (aiortc/rtp.py), run for every frame of every subscriber beside an Opus "
        "encode: that is what forwarding through aiortc's track machinery costs.",
        "",
        "| scenario | callsctl µs/pkt | Python engine µs/pkt | floor µs/pkt | callsctl / floor "
        "| MediaRelay µs/pkt (at) | MediaRelay / callsctl | RSS / session | join p99 "
        "| delay p99 | loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floor_ratio: list[tuple[str, float]] = []
    relay_ratio: list[tuple[str, float]] = []
    per_session: list[tuple[str, float]] = []  # audio calls: all but the speakers idle
    per_video_session: list[tuple[str, float]] = []  # everyone receives video: not idle
    at_200: float | None = None
    for scenario in SCENARIOS:
        result = results.get(scenario.key)
        if result is None:
            lines.append(f"| {scenario.title} | not measured yet | | | | | | | | | |")
            continue
        sfu, relay, fl = result["callsctl"], result["mediarelay"], result["floor"]
        us = sfu["cpu"].get("us_per_packet")
        relay_us = relay["cpu"].get("us_per_packet") if relay else None
        python_engine = result.get("callsctl_python")
        python_us = python_engine["cpu"].get("us_per_packet") if python_engine else None
        at = Shape(**result["relay_shape"]).describe() if relay else "-"
        kb = sfu["rss_per_session_kb"]
        if us:
            floor_ratio.append((scenario.key, us / fl["us_per_packet"]))
            if relay_us:
                relay_ratio.append((scenario.key, relay_us / us))
            if scenario.key == "1x200":
                at_200 = us
        if kb is not None:
            shape = scenario.shape
            (per_video_session if shape.screen or shape.video else per_session).append(
                (scenario.key, kb))
        cells = [
            scenario.title, f"{us:.1f}" if us else "n/a",
            f"{python_us:.1f}" if python_us else "n/a", f"{fl['us_per_packet']:.1f}",
            f"{us / fl['us_per_packet']:.1f}x" if us else "n/a",
            f"{relay_us:.0f} ({at})" if relay_us else "n/a",
            f"{relay_us / us:.0f}x" if us and relay_us else "n/a",
            f"{kb:.0f} KB" if kb is not None else "n/a",
            _ms(sfu["join_s"], "p99", "s", digits=2), _ms(sfu["delay_ms"], "p99"),
            _loss(sfu["loss"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The first performance targets for the server, as measured in this file:", ""]

    def verdict(name: str, rows: list[tuple[str, float]], ok: Any, fmt: str) -> str:
        if not rows:
            return f"- {name}: not measured"
        good = [(k, v) for k, v in rows if ok(v)]
        bad = [(k, v) for k, v in rows if not ok(v)]
        text = f"- {name}: "
        if good:
            text += f"met in {_span(good, fmt)}"
        if bad:
            text += ("; " if good else "") + f"NOT met in {_span(bad, fmt)}"
        return text

    lines.append(verdict(f"<= {TARGET_US_AT_200:g} µs server CPU per forwarded audio packet at "
                         "200 participants", [("1x200", at_200)] if at_200 else [],
                         lambda v: v <= TARGET_US_AT_200, "({:.1f} µs)"))
    lines.append(verdict(f"within {TARGET_FLOOR_RATIO:g}x of the raw floor", floor_ratio,
                         lambda v: v <= TARGET_FLOOR_RATIO, "({:.1f}x)"))
    lines.append(verdict(f">= {TARGET_RELAY_RATIO:g}x cheaper than MediaRelay", relay_ratio,
                         lambda v: v >= TARGET_RELAY_RATIO, "({:.0f}x)"))
    lines.append(verdict(f"<= {TARGET_SESSION_KB / 1024:g} MB per idle session (the audio "
                         "calls, where every participant but the speakers only listens)",
                         per_session, lambda v: v <= TARGET_SESSION_KB, "({:.0f} KB)"))
    if per_video_session:
        lines.append("- for information, memory per session when every session receives "
                     f"video (not idle): {_span(per_video_session, '({:.0f} KB)')}")
    return "\n".join(lines)


def command_line(key: str, args: argparse.Namespace) -> str:
    """The command that re-measures one scenario with this run's settings."""
    parts = ["python bench/run_all.py --only", key]
    defaults = {"window": 15.0, "slices": 5, "relay_max": 10, "relay_max_screen": 4}
    for name, default in defaults.items():
        value = getattr(args, name)
        if value != default:
            parts.append(f"--{name.replace('_', '-')} {value:g}")
    if args.skip_relay:
        parts.append("--skip-relay")
    if args.skip_python_engine:
        parts.append("--skip-python-engine")
    if args.server_cpus is not None:
        parts.append(f"--server-cpus {cpu_list(args.server_cpus)}")
    if args.loadgen_cpus is not None:
        parts.append(f"--loadgen-cpus {cpu_list(args.loadgen_cpus)}")
    if getattr(args, "loadgen_processes", 1) != 1:
        parts.append(f"--loadgen-processes {args.loadgen_processes}")
    if getattr(args, "loadgen_srtp_profile", None):
        parts.append(f"--loadgen-srtp-profile {args.loadgen_srtp_profile}")
    if getattr(args, "sink", False):
        parts.append("--sink")
    return " ".join(parts)


def section_key(key: str, cpus: Cpus, sink: bool = False) -> str:
    """The results key of a scenario: the unpinned, delivered-mode runs keep the plain key."""
    key = key if cpus is None else f"{key}-cpus{cpu_list(cpus).replace(',', '+')}"
    return f"{key}-sink" if sink else key


def cpus_argument(parser: argparse.ArgumentParser, text: str) -> tuple[int, ...]:
    """parse_cpus for argparse: a bad list is a usage error (exit 2, one line)."""
    try:
        return parse_cpus(text)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # parser.error exits; this keeps the type checker right


def add_cpu_options(parser: argparse.ArgumentParser, loadgen_processes: bool = False) -> None:
    """--server-cpus and --loadgen-cpus, shared by the bench scripts that start servers.

    `loadgen_processes`: also --loadgen-processes (run_all.py, saturation.py; not
    janus.py, whose Janus dialect runs in one process).
    """
    parser.add_argument("--server-cpus", metavar="LIST", default=None,
                        help="pin the server under test to these CPUs (e.g. 0 or 0,1) with "
                             "taskset; default: not pinned")
    parser.add_argument("--loadgen-cpus", metavar="LIST", default=None,
                        help="pin the load generator (this process) to these CPUs; "
                             "default: all")
    if loadgen_processes:
        parser.add_argument("--loadgen-processes", metavar="N", type=int, default=1,
                            help="load-generator worker processes (0: one per usable CPU); "
                                 "default: 1, as every recorded figure")
        parser.add_argument("--loadgen-srtp-profile", default=None,
                            choices=list(SRTP_PROFILE_NAMES),
                            help="the one SRTP profile the participants accept "
                                 "(SRTP_AES128_CM_SHA1_80: what Chromium picks); default: "
                                 "aiortc's, SRTP_AEAD_AES_256_GCM")


def add_sink_option(parser: argparse.ArgumentParser) -> None:
    """--sink, shared by run_all.py and saturation.py."""
    parser.add_argument("--sink", action="store_true",
                        help="sink mode: count and drop the server's forwarded SRTP at the "
                             "loopback device except to a few probe receivers per call (a "
                             f"tenth, 2 to {PROBES}) "
                             "(bench/sink_meter.py; needs root and nft); the floor the same "
                             "way; without it the copies are delivered (the old tables' mode)")


def sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C: servers under test stopped, sink meters removed."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def check_sink(parser: argparse.ArgumentParser, sink: bool) -> None:
    """The meter's self-check before anything relies on it: exit 1 with what failed."""
    if not sink:
        return
    try:
        self_check(sink=True)
    except MeterError as exc:
        parser.exit(1, f"error: {exc}\n")


def apply_cpu_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Parse the two CPU lists in place and pin this process (the load generator) now.

    Before asyncio starts: threads made later (the default executor's) inherit it.
    """
    args.server_cpus = None if args.server_cpus is None else cpus_argument(parser,
                                                                           args.server_cpus)
    args.loadgen_cpus = None if args.loadgen_cpus is None else cpus_argument(parser,
                                                                            args.loadgen_cpus)
    if args.server_cpus is not None and shutil.which("taskset") is None:
        parser.error("--server-cpus needs taskset (apt-get install -y util-linux)")
    processes = getattr(args, "loadgen_processes", 1)
    if not 0 <= processes <= MAX_PROCESSES:
        parser.error(f"--loadgen-processes must be 0..{MAX_PROCESSES} (0: one per usable CPU)")
    global LOADGEN_PROCESSES, LOADGEN_SRTP_PROFILE
    LOADGEN_PROCESSES = processes
    LOADGEN_SRTP_PROFILE = getattr(args, "loadgen_srtp_profile", None)
    pin_process(os.getpid(), args.loadgen_cpus)


async def main_async(args: argparse.Namespace) -> None:
    chosen = [s for s in SCENARIOS if not args.only or s.key in args.only]
    results: dict[str, dict[str, Any]] = {}
    store = RESULTS_JSON if args.server_cpus is None else PINNED_JSON
    if (args.write or args.render_only) and store.exists():
        with contextlib.suppress(ValueError):
            results = json.loads(store.read_text())
    if args.render_only:  # the stored measurements, rendered again (after a wording change)
        for scenario in chosen:
            key = section_key(scenario.key, args.server_cpus, args.sink)
            result = results.get(key)
            if result is not None:
                body = render_scenario(result, result["command"], result["host"])
                print(body + "\n")
                if args.write:
                    write_section(args.write, f"scenario-{key}", body)
        chosen = []
    host = machine()
    for scenario in chosen:
        command = command_line(scenario.key, args)
        result = await run_scenario(scenario, args.window, args.slices, args.relay_max,
                                    args.relay_max_screen, args.skip_relay,
                                    args.skip_python_engine, args.server_cpus, args.sink)
        result["command"] = command
        result["host"] = host
        key = section_key(scenario.key, args.server_cpus, args.sink)
        results[key] = result
        if args.server_cpus is not None:
            result["title"] += f", server on {describe_cpus(args.server_cpus)}"
        if args.sink:
            result["title"] += ", sink mode (copies counted and dropped before delivery)"
        body = render_scenario(result, command, host)
        print(body + "\n")
        if args.write:
            write_section(args.write, f"scenario-{key}", body)
            store.write_text(json.dumps(results, indent=1) + "\n")
    if args.sink and len(chosen) > 1:
        keys = [section_key(sc.key, args.server_cpus, True) for sc in chosen]
        table = render_sink_summary([results[k] for k in keys if k in results])
        print(table)
        if args.write:
            write_section(args.write, "sink-summary-" + "-".join(sc.key for sc in chosen)
                          + f"-cpus{cpu_list(args.server_cpus).replace(',', '+')}", table)
    if args.server_cpus is not None or args.sink:
        return  # the summary is of the unpinned runs; pinned ones have their own sections
    summary = render_summary(results)
    print(summary)
    if args.write:
        write_section(args.write, "scenario-summary", summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=[],
                        choices=[s.key for s in SCENARIOS], help="scenario keys to run")
    parser.add_argument("--window", type=float, default=15.0,
                        help="seconds of steady state measured per system (default 15)")
    parser.add_argument("--slices", type=int, default=5, help="slices of the window (median)")
    parser.add_argument("--relay-max", type=int, default=10,
                        help="most participants the MediaRelay reference gets (default 10)")
    parser.add_argument("--relay-max-screen", type=int, default=4,
                        help="most participants it gets with a screen share (default 4)")
    parser.add_argument("--skip-relay", action="store_true", help="no MediaRelay reference")
    parser.add_argument("--skip-python-engine", action="store_true",
                        help="do not also run the server with its Python engine")
    parser.add_argument("--write", type=Path, help="update this results file in place "
                                                   "(and bench/results.json, or "
                                                   "results-pinned.json with --server-cpus)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: render bench/results.json again")
    add_sink_option(parser)
    add_cpu_options(parser, loadgen_processes=True)
    args = parser.parse_args()
    apply_cpu_options(parser, args)
    if args.sink and not args.skip_relay:
        args.skip_relay = True  # the reference's media port is its own: not metered
    check_sink(parser, args.sink)
    sigterm_as_interrupt()
    if not (3 <= args.window <= 600 and 2 <= args.slices <= 60
            and 2 <= args.relay_max <= 100 and 2 <= args.relay_max_screen <= 50):
        parser.error("window 3..600 s, slices 2..60, relay-max 2..100, relay-max-screen 2..50")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
