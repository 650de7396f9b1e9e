"""The server's CPU and memory during a run, from /proc when local, else its HTTP endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_clock_getter() -> Any:
    """glibc's clock_getcpuclockid(3), or None where the C library has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).clock_getcpuclockid
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    function.restype = ctypes.c_int
    return function


_clock_getcpuclockid = _cpu_clock_getter()


def proc_cpu_seconds(pid: int) -> float:
    """CPU time pid has used, every thread of it, running or ended, in seconds.

    Read from the kernel's CPU-time clock of the process (clock_getcpuclockid(3),
    clock_gettime(2)), which counts nanoseconds. /proc/<pid>/stat's utime + stime,
    the figure `top` shows and the fallback here, counts 10 ms ticks: a server at
    1 % of a core over a 10 s slice reads 10 ticks, so one tick more or less moved
    a small call's CPU per packet by a tenth.
    """
    if _clock_getcpuclockid is not None:
        clock = ctypes.c_int()
        if _clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
            with contextlib.suppress(OSError):
                return time.clock_gettime(clock.value)
    return proc_ticks_seconds(pid)


def proc_ticks_seconds(pid: int) -> float:
    """utime + stime of pid from /proc/<pid>/stat, in seconds (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


_PROM_CPU = re.compile(r"^(?:rtcd_)?process_cpu_seconds_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)",
                       re.M)
_PROM_RSS = re.compile(
    r"^(?:rtcd_)?process_resident_memory_bytes(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)


class ServerMonitor:
    """Samples the server's CPU time and memory once a second, and its forwarding counters.

    Sources, best first: the server's own process through /proc when it runs on
    this host (the pid from GET /stats, checked to be a callsctl process) —
    exact and costs the server nothing; else GET /metrics
    (`rtcd_process_cpu_seconds_total`, `rtcd_process_resident_memory_bytes`)
    and GET /system (`process_rss_bytes`). Forwarding counters come from
    GET /stats when the server has it.
    """

    def __init__(self, base_url: str, local: bool, ssl: Any = None, interval: float = 1.0,
                 pid: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.local = local
        self.ssl = ssl
        self.interval = interval
        self.pid = pid
        self.source: str | None = None
        self.samples: list[tuple[float, float | None, int | None]] = []
        self.marks: dict[str, dict[str, Any]] = {}
        self.latest_cpu_percent: float | None = None
        self._http: aiohttp.ClientSession | None = None

    async def _get(self, path: str) -> aiohttp.ClientResponse | None:
        assert self._http is not None
        try:
            response = await self._http.get(self.base_url + path, ssl=self.ssl,
                                            timeout=aiohttp.ClientTimeout(total=3))
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        if response.status != 200:
            response.release()
            return None
        return response

    async def _json(self, path: str) -> dict[str, Any] | None:
        response = await self._get(path)
        if response is None:
            return None
        try:
            value = await response.json(content_type=None)
        except (aiohttp.ClientError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    async def detect(self) -> None:
        """Pick the source once, before the run."""
        self._http = self._http or aiohttp.ClientSession()
        if self.pid is None and self.local:
            stats = await self._json("/stats")
            pid = stats.get("pid") if stats else None
            if isinstance(pid, int) and _looks_like_callsctl(pid):
                self.pid = pid
        if self.pid is not None:
            self.source = "proc"
            return
        if await self._metrics() != (None, None):
            self.source = "metrics"
        elif await self._json("/system") is not None:
            self.source = "system"

    async def _metrics(self) -> tuple[float | None, int | None]:
        response = await self._get("/metrics")
        if response is None:
            return None, None
        text = await response.text()
        cpu, rss = _PROM_CPU.search(text), _PROM_RSS.search(text)
        return (float(cpu.group(1)) if cpu else None, int(float(rss.group(1))) if rss else None)

    async def sample(self) -> tuple[float, float | None, int | None]:
        now = time.monotonic()
        cpu: float | None = None
        rss: int | None = None
        if self.source == "proc" and self.pid is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                cpu, rss = proc_cpu_seconds(self.pid), proc_rss_bytes(self.pid)
        elif self.source in ("metrics", "system"):
            if self.source == "metrics":
                cpu, rss = await self._metrics()
            if rss is None:
                system = await self._json("/system")
                value = system.get("process_rss_bytes") if system else None
                rss = value if isinstance(value, int) else None
        if self.samples and cpu is not None and self.samples[-1][1] is not None:
            then, cpu_then, _ = self.samples[-1]
            if now > then:
                self.latest_cpu_percent = 100 * (cpu - cpu_then) / (now - then)
        self.samples.append((now, cpu, rss))
        return now, cpu, rss

    async def run(self, end_loop_time: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < end_loop_time:
            await self.sample()
            await asyncio.sleep(self.interval)

    async def mark(self, name: str) -> None:
        """Window edges: CPU, memory and forwarding counters at this instant."""
        now, cpu, rss = await self.sample()
        stats = await self._json("/stats")
        forwarding = stats.get("forwarding") if stats else None
        self.marks[name] = {"time": now, "cpu": cpu, "rss": rss,
                            "forwarding": forwarding if isinstance(forwarding, dict) else None}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "pid": self.pid}
        rates = []
        for (t0, c0, _), (t1, c1, _) in zip(self.samples, self.samples[1:], strict=False):
            if c0 is not None and c1 is not None and t1 > t0:
                rates.append(100 * (c1 - c0) / (t1 - t0))
        memory = [r for _, _, r in self.samples if r is not None]
        out["cpu_percent"] = ({"avg": round(sum(rates) / len(rates), 1),
                               "max": round(max(rates), 1)} if rates else None)
        out["rss_mb"] = ({"first": round(memory[0] / 2**20, 1),
                          "max": round(max(memory) / 2**20, 1)} if memory else None)
        start, end = self.marks.get("start"), self.marks.get("end")
        window: dict[str, Any] | None = None
        if start and end and end["time"] > start["time"]:
            seconds = end["time"] - start["time"]
            window = {"seconds": round(seconds, 2)}
            if start["cpu"] is not None and end["cpu"] is not None:
                window["cpu_percent"] = round(100 * (end["cpu"] - start["cpu"]) / seconds, 1)
            fwd0, fwd1 = start["forwarding"], end["forwarding"]
            if fwd0 and fwd1 and "rtp_forwarded" in fwd0:
                forwarded = fwd1["rtp_forwarded"] - fwd0["rtp_forwarded"]
                window["forwarded_packets"] = forwarded
                window["forwarded_pps"] = round(forwarded / seconds, 1)
                window["rtp_in_pps"] = round((fwd1.get("rtp_in", 0) - fwd0.get("rtp_in", 0))
                                             / seconds, 1)
                if forwarded and start["cpu"] is not None and end["cpu"] is not None:
                    window["cpu_us_per_forwarded_packet"] = round(
                        1e6 * (end["cpu"] - start["cpu"]) / forwarded, 2)
            if end["rss"] is not None:
                window["rss_mb"] = round(end["rss"] / 2**20, 1)
        out["window"] = window
        return out


def _looks_like_callsctl(pid: int) -> bool:
    """Whether pid on this host is a callsctl server (not a namesake in another namespace)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"callsctl" in cmdline
