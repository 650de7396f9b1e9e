"""`callsctl worker`: run recording jobs from a Redis queue, on any machine.

In a fleet, `callsctl serve` with `job_queue_url = redis://…` enqueues each
job instead of running it; every `callsctl worker` on the same queue takes
jobs (at most --max-jobs at once), runs each in its own process exactly as a
server's local pool would, and keeps the files in its own data dir. The
recorder joins the call over the server's signaling URL (its public_url, or
its own address for a worker on the same host).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

import typer

from callsctl.errors import bad_option, fail


def worker(
    queue: str = typer.Option(
        ..., "--queue", "-q", envvar="CALLSCTL_JOB_QUEUE_URL",
        help="redis://host:port/db of the job queue (the servers' job_queue_url)."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", envvar="CALLSCTL_DATA_DIR",
        help="Where recordings are written (<data dir>/recordings). [default: "
             "$XDG_DATA_HOME/callsctl]"),
    max_jobs: int = typer.Option(2, "--max-jobs", min=1, max=64,
                                 help="Jobs this worker runs at once."),
) -> None:
    """Run recording jobs from a Redis job queue (a fleet's job worker)."""
    from callsctl import localserver
    from callsctl_sfu.config import redis_url_problem
    from callsctl_sfu.jobs.queue import connect, worker_settings

    problem = redis_url_problem(queue)
    if problem or not queue:
        bad_option("--queue", problem or "must not be empty")
    directory = localserver.data_dir(data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create the data dir {directory}: {exc.strerror or exc}")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        from arq.worker import Worker

        pool = await connect(queue)  # a QueueError is one line and exit 1, from app.main
        await pool.aclose()
        settings = worker_settings(queue, directory, max_jobs)
        runner = Worker(**settings)
        typer.echo(f"callsctl worker: jobs from {queue}, files in {directory / 'recordings'}, "
                   f"up to {max_jobs} at once", err=True)
        try:
            await runner.async_run()
        except asyncio.CancelledError:
            pass
        finally:
            # On SIGTERM arq cancels the jobs still running ("ongoing to cancel") and
            # close() gathers them: their CancelledError is that shutdown, not a crash.
            with contextlib.suppress(asyncio.CancelledError):
                await runner.close()

    asyncio.run(serve())
