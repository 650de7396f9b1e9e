"""SQLite persistence in the data dir: call history, per-call settings, secrets.

Operators expect what they configured (which calls are enabled, their size
limits) and what happened (who was in which call, when) to survive a restart,
including a crash. Every write is its own committed transaction, so a kill -9
loses at most the write in flight.

Safety rules, because an empty history is worse than no start at all:
- the schema is versioned (`PRAGMA user_version`) and upgraded by ordered
  migrations, each in one transaction; a database from a newer callsctl is
  refused rather than guessed at;
- a file that is not a SQLite database, is not ours (`PRAGMA application_id`),
  fails `PRAGMA quick_check`, or cannot be written raises StoreError with the
  path and what to do. The file is never replaced or emptied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets as pysecrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from callsctl_sfu.errors import CallsctlError

log = logging.getLogger("callsctl_sfu.store")

DB_FILE = "callsctl.db"
# "CALS" as a 32-bit integer: marks the file as a callsctl database.
APPLICATION_ID = 0x43414C53

# MIGRATIONS[n] upgrades schema version n to n+1. Append only; never edit a
# released entry (databases in the field already ran it).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE calls (
        instance   TEXT PRIMARY KEY,
        call_id    TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at   REAL,
        end_reason TEXT
    );
    CREATE INDEX calls_started ON calls (started_at DESC);
    CREATE TABLE participants (
        instance     TEXT NOT NULL REFERENCES calls (instance) ON DELETE CASCADE,
        session_id   TEXT NOT NULL,
        user_id      TEXT NOT NULL,
        name         TEXT NOT NULL,
        joined_at    REAL NOT NULL,
        left_at      REAL,
        leave_reason TEXT,
        PRIMARY KEY (instance, session_id)
    );
    CREATE TABLE call_settings (
        call_id          TEXT PRIMARY KEY,
        enabled          INTEGER,
        max_participants INTEGER,
        updated_at       REAL NOT NULL
    );
    CREATE TABLE secrets (
        name       TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 1 -> 2: jobs beside the SFU (recording); queries in callsctl_sfu/jobs/store.py.
    """
    CREATE TABLE jobs (
        id           TEXT PRIMARY KEY,
        type         TEXT NOT NULL,
        call_id      TEXT NOT NULL,
        state        TEXT NOT NULL,
        created_at   REAL NOT NULL,
        started_at   REAL,
        stopped_at   REAL,
        max_duration REAL NOT NULL,
        runner       TEXT NOT NULL,
        error        TEXT,
        output       TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX jobs_created ON jobs (created_at DESC);
    CREATE INDEX jobs_call ON jobs (call_id, state);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(CallsctlError, RuntimeError):
    """The database cannot be used; the message names the file and the fix."""
    code = "store_unusable"


@dataclass(frozen=True)
class CallSettings:
    """Per-call overrides; None means "use the server default"."""

    enabled: bool | None = None
    max_participants: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "max_participants": self.max_participants}

    @property
    def is_default(self) -> bool:
        return self.enabled is None and self.max_participants is None


def _advice(path: Path) -> str:
    return (f"restore {path} from a backup, or move it aside to start with an empty "
            "history (callsctl never overwrites it)")


class Store:
    """One open database; every method commits before returning."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    # -- opening -----------------------------------------------------------------------

    @classmethod
    async def open(cls, data_dir: str | os.PathLike[str]) -> Store:
        """Open (creating if absent) and migrate `<data_dir>/callsctl.db`, or raise StoreError."""
        path = Path(data_dir).expanduser() / DB_FILE
        if path.exists() and not path.is_file():
            raise StoreError(f"database {path} is not a file; remove it or choose another "
                             "--data-dir")
        existed = path.exists() and path.stat().st_size > 0
        try:
            pending = aiosqlite.connect(str(path), isolation_level=None)
            # aiosqlite's worker thread is not a daemon: if startup dies on an
            # unexpected error before close(), the process would hang instead of
            # exiting. Every write is committed, so a daemon thread loses nothing.
            with contextlib.suppress(AttributeError, RuntimeError):
                pending._thread.daemon = True
            db = await pending
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}; check the permissions "
                             "of the data dir") from None
        store = cls(db, path)
        try:
            await store._prepare(existed)
        except StoreError:
            await db.close()
            raise
        except sqlite3.Error as exc:
            await db.close()
            text = str(exc)
            if "readonly" in text or "read-only" in text or "unable to open" in text:
                raise StoreError(f"database {path} is not writable ({text}); fix its "
                                 "permissions or choose another --data-dir") from None
            raise StoreError(f"database {path} is unreadable or corrupt ({text}); "
                             f"{_advice(path)}") from None
        return store

    async def _prepare(self, existed: bool) -> None:
        db = self._db
        # Reading the header is the first thing that fails on a non-database file.
        app_id = await self._scalar("PRAGMA application_id")
        version = await self._scalar("PRAGMA user_version")
        if existed:
            if app_id not in (0, APPLICATION_ID):
                raise StoreError(f"{self.path} is a SQLite database of another program "
                                 f"(application_id {app_id:#x}); choose another --data-dir")
            tables = await self._scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'")
            if app_id == 0 and tables:
                raise StoreError(f"{self.path} is a SQLite database callsctl did not create; "
                                 "choose another --data-dir")
            check = await self._scalar("PRAGMA quick_check")
            if check != "ok":
                raise StoreError(f"database {self.path} is corrupt (quick_check: {check}); "
                                 f"{_advice(self.path)}")
        if version > SCHEMA_VERSION:
            raise StoreError(f"database {self.path} has schema version {version}, newer than "
                             f"this callsctl understands ({SCHEMA_VERSION}); upgrade callsctl "
                             "or choose another --data-dir")
        await db.execute("PRAGMA foreign_keys = ON")
        # WAL: a committed transaction survives a process crash; readers never block.
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        for target in range(version, SCHEMA_VERSION):
            await db.execute("BEGIN IMMEDIATE")
            try:
                await self._run_script(MIGRATIONS[target])
                await db.execute(f"PRAGMA user_version = {target + 1}")
                await db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            log.info("database %s migrated to schema version %d", self.path, target + 1)
        # Prove the file is writable now, not at the first call of the day.
        await self._write("INSERT INTO meta (key, value) VALUES ('last_start', ?) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                          (str(time.time()),))
        for suffix in ("", "-wal", "-shm"):  # a database others can read leaks history
            with contextlib.suppress(OSError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    async def _run_script(self, script: str) -> None:
        """Run a migration's statements inside the caller's transaction.

        executescript() would COMMIT first, breaking the one-transaction rule.
        """
        for statement in script.split(";"):
            if statement.strip():
                await self._db.execute(statement)

    async def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def _write(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute(sql, params)
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        return int(await self._scalar("PRAGMA user_version"))

    # -- per-call settings --------------------------------------------------------------

    async def all_settings(self) -> dict[str, CallSettings]:
        async with self._db.execute(
                "SELECT call_id, enabled, max_participants FROM call_settings") as cursor:
            rows = await cursor.fetchall()
        return {row[0]: CallSettings(None if row[1] is None else bool(row[1]), row[2])
                for row in rows}

    async def put_settings(self, call_id: str, settings: CallSettings) -> None:
        if settings.is_default:
            await self._write("DELETE FROM call_settings WHERE call_id = ?", (call_id,))
            return
        enabled = None if settings.enabled is None else int(settings.enabled)
        await self._write(
            "INSERT INTO call_settings (call_id, enabled, max_participants, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (call_id) DO UPDATE SET enabled = "
            "excluded.enabled, max_participants = excluded.max_participants, "
            "updated_at = excluded.updated_at",
            (call_id, enabled, settings.max_participants, time.time()))

    # -- call history -------------------------------------------------------------------

    async def call_started(self, instance: str, call_id: str, started_at: float) -> None:
        await self._write("INSERT OR IGNORE INTO calls (instance, call_id, started_at) "
                          "VALUES (?, ?, ?)", (instance, call_id, started_at))

    async def call_ended(self, instance: str, ended_at: float, reason: str) -> None:
        await self._write("UPDATE calls SET ended_at = ?, end_reason = ? "
                          "WHERE instance = ? AND ended_at IS NULL",
                          (ended_at, reason, instance))

    async def participant_joined(self, instance: str, session_id: str, user: str, name: str,
                                 joined_at: float) -> None:
        await self._write("INSERT OR IGNORE INTO participants (instance, session_id, user_id, "
                          "name, joined_at) VALUES (?, ?, ?, ?, ?)",
                          (instance, session_id, user, name, joined_at))

    async def participant_left(self, instance: str, session_id: str, left_at: float,
                               reason: str) -> None:
        await self._write("UPDATE participants SET left_at = ?, leave_reason = ? WHERE "
                          "instance = ? AND session_id = ? AND left_at IS NULL",
                          (left_at, reason, instance, session_id))

    async def close_dangling(self, now: float, reason: str) -> int:
        """Calls still open from a previous run (crash, kill -9): mark them ended now."""
        async with self._db.execute(
                "SELECT count(*) FROM calls WHERE ended_at IS NULL") as cursor:
            row = await cursor.fetchone()
        count = int(row[0]) if row else 0
        if count:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.execute(
                    "UPDATE participants SET left_at = ?, leave_reason = ? WHERE left_at IS "
                    "NULL", (now, reason))
                await self._db.execute(
                    "UPDATE calls SET ended_at = ?, end_reason = ? WHERE ended_at IS NULL",
                    (now, reason))
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
        return count

    async def history(self, limit: int = 50, call_id: str | None = None
                      ) -> list[dict[str, Any]]:
        """Most recent calls first, each with its participants in join order."""
        where, params = ("WHERE call_id = ?", (call_id,)) if call_id else ("", ())
        async with self._db.execute(
                f"SELECT instance, call_id, started_at, ended_at, end_reason FROM calls {where} "
                "ORDER BY started_at DESC LIMIT ?", (*params, limit)) as cursor:
            calls = await cursor.fetchall()
        result: list[dict[str, Any]] = []
        for instance, cid, started_at, ended_at, end_reason in calls:
            async with self._db.execute(
                    "SELECT session_id, user_id, name, joined_at, left_at, leave_reason FROM "
                    "participants WHERE instance = ? ORDER BY joined_at", (instance,)) as cursor:
                people = await cursor.fetchall()
            result.append({
                "id": cid, "instance": instance, "started_at": started_at,
                "ended_at": ended_at, "end_reason": end_reason,
                "participants": [{"session_id": p[0], "user": p[1], "name": p[2],
                                  "joined_at": p[3], "left_at": p[4], "leave_reason": p[5]}
                                 for p in people]})
        return result

    # -- secrets --------------------------------------------------------------------------

    async def get_secret(self, name: str) -> str | None:
        return await self._scalar("SELECT value FROM secrets WHERE name = ?", (name,))

    async def get_or_create_secret(self, name: str, nbytes: int = 32) -> str:
        """A named random secret, generated once and then stable across restarts."""
        existing = await self.get_secret(name)
        if existing is not None:
            return existing
        await self._write("INSERT OR IGNORE INTO secrets (name, value, created_at) "
                          "VALUES (?, ?, ?)", (name, pysecrets.token_urlsafe(nbytes), time.time()))
        value = await self.get_secret(name)
        assert value is not None
        return value
