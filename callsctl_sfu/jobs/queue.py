"""Jobs through a Redis queue (arq): the server enqueues, `callsctl worker`s run them.

For a fleet, recordings should not cost a media server any CPU at all: with
`job_queue_url = redis://…` the server puts each job on an arq queue instead of
starting a local process, and any machine running `callsctl worker` with the
same URL picks it up. The worker runs the job exactly as the local pool does
(runner.LocalRunner, one child process per job), so crash, kill and
max-duration handling are the same, and its files land in the worker's own
data dir (the job's output says which host and directory).

Beyond arq's queue, three Redis keys per job (all expire after a day):

- `callsctl:job:<id>`        JSON of the job as the worker last saw it;
- `callsctl:job:<id>:alive`  refreshed every 2 s while a worker runs it (10 s TTL):
                             if it vanishes while the job runs, the worker died;
- `callsctl:job:<id>:stop`   set by the server to stop the job (its reason).

The server polls them twice a second per active job; that is the whole
protocol, and a lost Redis only means jobs cannot be started or followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.jobs.model import ACTIVE, FAILED, FINISHED, MAX_DURATION_S, Job

log = logging.getLogger("callsctl_sfu.jobs.queue")

QUEUE_NAME = "callsctl:jobs"
FUNCTION = "run_job"
KEY_TTL_S = 86400
ALIVE_TTL_S = 10
ALIVE_EVERY_S = 2.0
POLL_S = 0.5

Changed = Callable[[Job], Awaitable[None]]


class QueueError(CallsctlError, RuntimeError):
    """Redis or arq is unusable; one line naming the URL and the fix."""
    code = "queue_unavailable"


def _key(job_id: str, suffix: str = "") -> str:
    return f"callsctl:job:{job_id}{suffix}"


def redis_settings(url: str) -> Any:
    try:
        from arq.connections import RedisSettings
    except ImportError:  # pragma: no cover - arq is a dependency
        raise QueueError("the Redis job queue needs the arq package (pip install arq)") from None
    try:
        return RedisSettings.from_dsn(url)
    except Exception as exc:
        raise QueueError(f"job queue URL {url!r} is not a redis:// URL: {exc}") from None


async def connect(url: str) -> Any:
    from arq import create_pool

    settings = redis_settings(url)
    settings.conn_retries = 0
    try:
        return await create_pool(settings)
    except Exception as exc:
        raise QueueError(f"cannot reach Redis at {url}: {exc}; start it or fix "
                         "job_queue_url") from None


# -- the server's side ------------------------------------------------------------------


class QueueRunner:
    """Runner interface of LocalRunner, backed by the arq queue."""

    name = "redis"

    def __init__(self, url: str, on_change: Changed) -> None:
        self.url = url
        self.on_change = on_change
        self.pool: Any = None
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, Job] = {}

    async def open(self) -> None:
        self.pool = await connect(self.url)

    def submit(self, job: Job, spec: dict[str, Any]) -> None:
        self._jobs[job.id] = job
        self._watchers[job.id] = asyncio.create_task(self._follow(job, spec),
                                                     name=f"job-{job.id}")

    def stop(self, job_id: str, reason: str) -> bool:
        if job_id not in self._jobs or self.pool is None:
            return False
        asyncio.ensure_future(self.pool.set(_key(job_id, ":stop"), reason, ex=KEY_TTL_S))
        return True

    def running(self) -> list[Job]:
        return list(self._jobs.values())

    async def close(self, wait: float) -> None:
        """The server stops; queued and running jobs go on on their workers."""
        for task in self._watchers.values():
            task.cancel()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.aclose()

    async def _follow(self, job: Job, spec: dict[str, Any]) -> None:
        try:
            await self.pool.enqueue_job(FUNCTION, spec, _job_id=job.id, _queue_name=QUEUE_NAME)
            seen = ""
            while job.state in ACTIVE:
                await asyncio.sleep(POLL_S)
                raw = await self.pool.get(_key(job.id))
                if raw and raw != seen:
                    seen = raw
                    self._apply(job, json.loads(raw))
                    await self.on_change(job)
                elif job.state not in ("queued",) and not await self.pool.exists(
                        _key(job.id, ":alive")):
                    job.state, job.stopped_at = FAILED, time.time()
                    job.error = ("the worker running it stopped answering (killed, or its "
                                 "machine or Redis connection is gone); files it wrote stay on "
                                 f"{job.output.get('host', 'the worker')}")
                    await self.on_change(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("job %s: lost track of it in Redis: %s", job.id, exc)
            job.state, job.stopped_at = FAILED, time.time()
            job.error = f"the job queue at {self.url} failed: {exc}"
            await self.on_change(job)
        finally:
            self._jobs.pop(job.id, None)
            self._watchers.pop(job.id, None)

    @staticmethod
    def _apply(job: Job, data: dict[str, Any]) -> None:
        job.state = data.get("state", job.state)
        job.started_at = data.get("start_at", job.started_at)
        job.stopped_at = data.get("stop_at", job.stopped_at)
        job.error = data.get("error")
        job.output = data.get("output_data") or {}


# -- the worker's side (callsctl worker) ---------------------------------------------------


async def run_job(ctx: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """arq task: run one job in a child process, mirroring its state into Redis."""
    from callsctl_sfu.jobs.runner import LocalRunner

    redis = ctx["redis"]
    job = Job(spec["id"], spec["type"], spec["call"], float(spec["max_duration"]),
              runner="redis")
    host = socket.gethostname()

    async def publish(changed: Job) -> None:
        changed.output.setdefault("host", host)
        await redis.set(_key(changed.id), json.dumps(changed.public()), ex=KEY_TTL_S)

    async def alive() -> None:
        while True:
            await redis.set(_key(job.id, ":alive"), host, ex=ALIVE_TTL_S)
            await asyncio.sleep(ALIVE_EVERY_S)

    stop_reason = await redis.get(_key(job.id, ":stop"))
    if stop_reason:
        job.state, job.stopped_at = FAILED, time.time()
        job.error = f"stopped before it started ({stop_reason})"
        await publish(job)
        return job.public()
    runner = LocalRunner(Path(ctx["jobs_dir"]), 1, publish)
    heartbeat = asyncio.create_task(alive())
    try:
        runner.submit(job, spec)
        while job.state not in FINISHED:
            await asyncio.sleep(POLL_S)
            reason = await redis.get(_key(job.id, ":stop"))
            if reason:
                runner.stop(job.id, reason if isinstance(reason, str) else reason.decode())
        return job.public()
    except asyncio.CancelledError:  # the worker shuts down: finish the job's files first
        runner.terminate_all()
        with contextlib.suppress(asyncio.CancelledError):
            await runner.close(30)
        raise
    finally:
        heartbeat.cancel()


def worker_settings(url: str, data_dir: Path, max_jobs: int) -> dict[str, Any]:
    """Keyword arguments of arq.Worker for `callsctl worker`."""
    from arq.worker import func

    jobs_dir = data_dir / "recordings"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    return {"functions": [func(run_job, name=FUNCTION, timeout=MAX_DURATION_S + 3600,
                               max_tries=1)],
            "queue_name": QUEUE_NAME, "redis_settings": redis_settings(url),
            "max_jobs": max_jobs, "ctx": {"jobs_dir": str(jobs_dir)},
            "keep_result": KEY_TTL_S, "handle_signals": True}
