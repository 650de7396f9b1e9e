"""The jobs table (schema in callsctl_sfu/store.py's migrations) and its queries.

Every write commits on its own, like the call history: a job's state survives
a crash of the server, and a job found active at startup was interrupted.
"""

from __future__ import annotations

import builtins  # `list` in annotations below: the class has a list() method
from typing import TYPE_CHECKING

from callsctl_sfu.jobs.model import ACTIVE, FAILED, Job

if TYPE_CHECKING:
    from callsctl_sfu.store import Store

COLUMNS = ("id, type, call_id, state, created_at, started_at, stopped_at, max_duration, "
           "runner, error, output")


class JobStore:
    """Jobs on the server's one SQLite database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def save(self, job: Job) -> None:
        placeholders = ", ".join("?" * len(job.row()))
        await self.store._write(
            f"INSERT INTO jobs ({COLUMNS}) VALUES ({placeholders}) ON CONFLICT (id) DO UPDATE "
            "SET state = excluded.state, started_at = excluded.started_at, stopped_at = "
            "excluded.stopped_at, error = excluded.error, output = excluded.output",
            job.row())

    async def get(self, job_id: str) -> Job | None:
        async with self.store._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?",
                                          (job_id,)) as cursor:
            row = await cursor.fetchone()
        return Job.from_row(tuple(row)) if row else None

    async def list(self, limit: int = 100, call_id: str | None = None) -> list[Job]:
        where, params = ("WHERE call_id = ?", (call_id,)) if call_id else ("", ())
        async with self.store._db.execute(
                f"SELECT {COLUMNS} FROM jobs {where} ORDER BY created_at DESC LIMIT ?",
                (*params, limit)) as cursor:
            rows = await cursor.fetchall()
        return [Job.from_row(tuple(r)) for r in rows]

    async def delete(self, job_id: str) -> None:
        await self.store._write("DELETE FROM jobs WHERE id = ?", (job_id,))

    async def older_than(self, when: float) -> builtins.list[Job]:
        async with self.store._db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE created_at < ? AND state NOT IN "
                f"({', '.join('?' * len(ACTIVE))})", (when, *ACTIVE)) as cursor:
            rows = await cursor.fetchall()
        return [Job.from_row(tuple(r)) for r in rows]

    async def fail_interrupted(self, now: float, reason: str) -> builtins.list[Job]:
        """Jobs a previous run left active (crash, kill -9): failed, with the reason."""
        async with self.store._db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE state IN "
                f"({', '.join('?' * len(ACTIVE))})", ACTIVE) as cursor:
            rows = await cursor.fetchall()
        jobs = [Job.from_row(tuple(r)) for r in rows]
        for job in jobs:
            job.state, job.stopped_at, job.error = FAILED, now, reason
            await self.save(job)
        return jobs
