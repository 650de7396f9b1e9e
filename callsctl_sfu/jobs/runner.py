"""The local worker pool: each job in its own process, at most N at a time.

Why processes: a recorder's packet handling, file writing and the ffmpeg
compose must never run in the SFU's event loop, and a job that crashes (or is
killed by the OOM killer) must not take a call down. The server only starts a
process, watches it and reads what it left behind:

- `<job dir>/job.json`    the job's input (call, signaling URL, token, limits);
- `<job dir>/job.log`     the worker's stdout and stderr (GET /jobs/{id}/logs);
- `<job dir>/result.json` written by the worker when it finishes (files, duration,
  participants, or the error that stopped it).

Stopping is SIGTERM (the recorder leaves the call, closes its files and composes
the MP4), then SIGKILL after a grace period. A job past its max duration is
stopped the same way and says so. A worker that dies any other way is reported
with its exit code or signal, and the files it already wrote are listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callsctl_sfu.jobs.model import DONE, FAILED, RUNNING, STOPPING, Job

log = logging.getLogger("callsctl_sfu.jobs.runner")

SPEC_FILE = "job.json"
LOG_FILE = "job.log"
RESULT_FILE = "result.json"
MEDIA_SUFFIXES = (".ogg", ".webm", ".mp4")
LOW_SPACE_BYTES = 256 * 1024
# SIGTERM -> SIGKILL: the recorder composes the MP4 after SIGTERM, which takes time in
# proportion to the recording (ffmpeg's H.264 runs several times faster than real time).
BASE_GRACE_S = 30.0
GRACE_PER_RECORDED_S = 0.5

Changed = Callable[[Job], Awaitable[None]]


def worker_command(spec_path: Path) -> list[str]:
    """The process a job runs as: this Python, the worker entry point, the spec file."""
    return [sys.executable, "-m", "callsctl_sfu.jobs.worker", str(spec_path)]


def media_files(directory: Path) -> list[str]:
    """The media files a job left in its directory (also after a crash)."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.suffix in MEDIA_SUFFIXES
                  and p.is_file() and p.stat().st_size > 0)


def read_result(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


def _disk_full(directory: Path) -> str | None:
    """A sentence when the file system of `directory` has (almost) no space left."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return None
    if usage.free >= LOW_SPACE_BYTES:
        return None
    return f"{usage.free // 1024} KiB free on the file system of {directory}; free space there"


@dataclass
class _Running:
    job: Job
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None


class LocalRunner:
    """Runs jobs as child processes of the server, at most `max_concurrent` at once."""

    name = "local"

    def __init__(self, jobs_dir: Path, max_concurrent: int, on_change: Changed,
                 command: Callable[[Path], list[str]] = worker_command,
                 base_grace: float = BASE_GRACE_S) -> None:
        self.jobs_dir = jobs_dir
        self.base_grace = base_grace
        self.max_concurrent = max_concurrent
        self.on_change = on_change
        self.command = command
        self._slots = asyncio.Semaphore(max_concurrent)
        self._jobs: dict[str, _Running] = {}

    def directory(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def submit(self, job: Job, spec: dict[str, Any]) -> None:
        """Queue a job; it starts when a slot is free."""
        running = _Running(job)
        self._jobs[job.id] = running
        running.task = asyncio.create_task(self._run(running, spec), name=f"job-{job.id}")

    def stop(self, job_id: str, reason: str) -> bool:
        """Ask a queued or running job to stop; False when this runner does not have it."""
        running = self._jobs.get(job_id)
        if running is None:
            return False
        if not running.stop.is_set():
            running.reason = reason
            running.stop.set()
        return True

    def terminate_all(self) -> None:
        """SIGTERM every child now (their files get finished even if nobody waits)."""
        for running in self._jobs.values():
            if not running.stop.is_set():
                running.reason = running.reason or "the worker is shutting down"
                running.stop.set()
            if running.process is not None and running.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    running.process.send_signal(signal.SIGTERM)

    def running(self) -> list[Job]:
        return [r.job for r in self._jobs.values()]

    async def close(self, wait: float) -> None:
        """Server shutdown: stop every job, wait up to `wait` s, then kill what is left."""
        for job_id in list(self._jobs):
            self.stop(job_id, "server shutting down")
        tasks = [r.task for r in self._jobs.values() if r.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=wait)
        for running in list(self._jobs.values()):
            if running.process is not None and running.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    running.process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5)

    # -- one job --------------------------------------------------------------------------

    async def _run(self, running: _Running, spec: dict[str, Any]) -> None:
        job = running.job
        try:
            async with self._slots:
                if running.stop.is_set():  # stopped while queued: it never ran
                    job.state, job.stopped_at = FAILED, time.time()
                    job.error = f"stopped before it started ({running.reason})"
                    await self.on_change(job)
                    return
                await self._execute(running, spec)
        except Exception as exc:  # the job fails; the server and its calls go on
            log.exception("job %s could not be run", job.id)
            job.state, job.stopped_at = FAILED, time.time()
            job.error = f"could not run the worker: {exc}"
            await self.on_change(job)
        finally:
            self._jobs.pop(job.id, None)

    async def _execute(self, running: _Running, spec: dict[str, Any]) -> None:
        job = running.job
        directory = self.directory(job.id)
        directory.mkdir(parents=True, exist_ok=True)
        spec_path = directory / SPEC_FILE
        spec_path.write_text(json.dumps(spec))
        os.chmod(spec_path, 0o600)  # it carries a join token
        with (directory / LOG_FILE).open("ab") as logfile:
            process = await asyncio.create_subprocess_exec(
                *self.command(spec_path), stdin=asyncio.subprocess.DEVNULL, stdout=logfile,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        running.process = process
        job.state, job.started_at = RUNNING, time.time()
        job.output = {"pid": process.pid}
        await self.on_change(job)
        log.info("job %s (%s of call %s) started as pid %d", job.id, job.type, job.call_id,
                 process.pid)
        exited = asyncio.create_task(process.wait())
        stopped = asyncio.create_task(running.stop.wait())
        done, _ = await asyncio.wait({exited, stopped}, timeout=job.max_duration,
                                     return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        killed = False
        stop_reason = None
        if exited not in done:
            stop_reason = running.reason if running.stop.is_set() else "max_duration"
            job.state = STOPPING
            await self.on_change(job)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            grace = self.base_grace + GRACE_PER_RECORDED_S * (time.time() - job.started_at)
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace)
            except TimeoutError:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await exited
        code = exited.result()
        self._finish(job, directory, code, stop_reason, killed)
        await self.on_change(job)
        log.info("job %s finished: %s%s", job.id, job.state,
                 f" ({job.error})" if job.error else "")

    @staticmethod
    def _finish(job: Job, directory: Path, code: int, stop_reason: str | None,
                killed: bool) -> None:
        result = read_result(directory) or {}
        job.stopped_at = time.time()
        output = {k: v for k, v in result.items() if k != "error"}
        output.setdefault("files", media_files(directory))
        output["directory"] = str(directory)
        output["exit"] = describe_exit(code)
        if stop_reason and output.get("stop_reason") in (None, "", "stopped"):
            output["stop_reason"] = stop_reason  # why we sent SIGTERM says more than "stopped"
        job.output = output
        # A worker stopped before it installed its SIGTERM handler (stopped while
        # starting) dies of the signal itself: that is the stop it was asked for.
        stopped_by_us = stop_reason is not None and not killed and code == -signal.SIGTERM
        if (code == 0 or stopped_by_us) and not result.get("error"):
            job.state, job.error = DONE, None
            return
        job.state = FAILED
        files = ", ".join(output["files"]) or "none"
        full = _disk_full(directory)
        if full and not str(result.get("error", "")).startswith("disk full"):
            job.error = (f"disk full: {full}; the worker {describe_exit(code)}; files kept: "
                         f"{files}")
            return
        if killed:
            job.error = (f"the worker did not finish within its grace period after being "
                         f"stopped ({stop_reason}) and was killed; files kept: {files}")
        elif result.get("error"):
            job.error = str(result["error"])
        else:
            job.error = (f"the worker {describe_exit(code)} (crash or kill); files it "
                         f"wrote are kept: {files}")
