"""Persistence: SQLite in the data dir survives restarts and refuses to start over damage.

Unit tests exercise the store directly (migrations, settings, history, the
refusals); the integration tests run `callsctl serve`: a kill -9 in the middle
of a call loses neither settings nor history, and a damaged database stops
startup with one line while the file stays exactly as it was.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from callsctl_sfu.client.participant import ParticipantError
from callsctl_sfu.store import (
    APPLICATION_ID,
    DB_FILE,
    SCHEMA_VERSION,
    CallSettings,
    Store,
    StoreError,
)
from tests.support.admin import admin_key, join
from tests.support.helpers import run_cli, wait_until
from tests.support.serve import start_serve


async def test_new_database_is_migrated_and_round_trips(tmp_path: Path):
    store = await Store.open(tmp_path)
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        await store.put_settings("a", CallSettings(enabled=False, max_participants=4))
        await store.put_settings("b", CallSettings(enabled=True))
        await store.put_settings("b", CallSettings())  # back to defaults: row removed
        assert await store.all_settings() == {"a": CallSettings(False, 4)}
        await store.call_started("i1", "a", 100.0)
        await store.participant_joined("i1", "s1", "alice", "Alice", 101.0)
        await store.participant_joined("i1", "s2", "bob", "Bob", 102.0)
        await store.participant_left("i1", "s1", 150.0, "left")
        await store.call_started("i2", "b", 200.0)
        history = await store.history(10)
        assert [c["instance"] for c in history] == ["i2", "i1"]
        people = history[1]["participants"]
        assert [(p["user"], p["left_at"]) for p in people] == [("alice", 150.0), ("bob", None)]
        assert await store.history(10, call_id="a") == history[1:]
        secret = await store.get_or_create_secret("turn")
        assert secret == await store.get_or_create_secret("turn") and len(secret) >= 32
    finally:
        await store.close()
    assert (tmp_path / DB_FILE).stat().st_mode & 0o777 == 0o600
    connection = sqlite3.connect(tmp_path / DB_FILE)
    assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    connection.close()

    store = await Store.open(tmp_path)  # reopen: nothing lost, dangling calls closed
    try:
        assert await store.all_settings() == {"a": CallSettings(False, 4)}
        assert await store.close_dangling(300.0, "crash") == 2
        history = await store.history(10)
        assert all(c["ended_at"] == 300.0 and c["end_reason"] == "crash" for c in history)
        bob = history[1]["participants"][1]
        assert bob["left_at"] == 300.0 and bob["leave_reason"] == "crash"
    finally:
        await store.close()


async def test_damaged_or_foreign_databases_are_refused_not_replaced(tmp_path: Path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DB_FILE).write_bytes(b"this is not sqlite " * 500)
    with pytest.raises(StoreError, match="unreadable or corrupt.*move it aside"):
        await Store.open(garbage)
    assert (garbage / DB_FILE).read_bytes() == b"this is not sqlite " * 500

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    connection = sqlite3.connect(foreign / DB_FILE)
    connection.execute("CREATE TABLE notes (text)")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="did not create"):
        await Store.open(foreign)

    newer = tmp_path / "newer"
    newer.mkdir()
    await (await Store.open(newer)).close()  # create it
    connection = sqlite3.connect(newer / DB_FILE)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="newer than this callsctl"):
        await Store.open(newer)

    directory = tmp_path / "dir"
    (directory / DB_FILE).mkdir(parents=True)
    with pytest.raises(StoreError, match="not a file"):
        await Store.open(directory)


async def test_corrupt_pages_are_detected(tmp_path: Path):
    store = await Store.open(tmp_path)
    for index in range(300):
        await store.call_started(f"i{index}", f"call-{index}", float(index))
    await store.close()
    path = tmp_path / DB_FILE
    connection = sqlite3.connect(path)  # fold the WAL back so the pages are in the file
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[2 * page:3 * page] = b"\xff" * page  # a b-tree page overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        await Store.open(tmp_path)


def test_serve_refuses_a_corrupt_database_with_one_line(tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    broken = b"SQLite format 3\x00" + b"\x00\xff" * 3000
    (data_dir / DB_FILE).write_bytes(broken)
    result = run_cli("serve", "--bind", "127.0.0.1", "--api-port", "0", "--udp-port", "0",
                     "--data-dir", str(data_dir), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(data_dir / DB_FILE) in lines[0] and "corrupt" in lines[0]
    assert (data_dir / DB_FILE).read_bytes() == broken  # never emptied or replaced


async def test_settings_and_history_survive_kill_9(tmp_path: Path):
    first = start_serve(tmp_path)
    second = None
    try:
        key = admin_key(first)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=first.api_url, headers=headers,
                                     timeout=10) as admin:
            assert (await admin.put("/api/v1/settings/calls/closed-room",
                                    json={"enabled": False})).status_code == 200
            assert (await admin.put("/api/v1/settings/calls/live",
                                    json={"max_participants": 5})).status_code == 200
            alice = await join(first, "live", "alice", wait=False)
            bob = await join(first, "live", "bob", wait=False)
            await bob.leave()
            history: list = []

            async def recorded() -> bool:
                nonlocal history
                history = (await admin.get("/api/v1/history")).json()["calls"]
                return bool(history) and len(history[0]["participants"]) == 2 and \
                    history[0]["participants"][1]["left_at"] is not None

            for _ in range(50):
                if await recorded():
                    break
            assert await recorded(), history
        first.stop(signal.SIGKILL)  # no shutdown path at all
        await alice.close()

        second = start_serve(tmp_path, "--data-dir", str(first.data_dir))
        second.data_dir = first.data_dir  # the later --data-dir flag wins
        assert admin_key(second) == key  # the same key file, not a new one
        async with httpx.AsyncClient(base_url=second.api_url, headers=headers,
                                     timeout=10) as admin:
            settings = (await admin.get("/api/v1/settings/calls")).json()["calls"]
            assert settings == {"closed-room": {"enabled": False, "max_participants": None},
                                "live": {"enabled": None, "max_participants": 5}}
            history = (await admin.get("/api/v1/history")).json()["calls"]
            assert [c["id"] for c in history] == ["live"]
            call = history[0]
            # Still open when killed: closed at the restart, with a reason that says so.
            assert call["ended_at"] and "stopped" in call["end_reason"]
            people = {p["user"]: p for p in call["participants"]}
            assert people["bob"]["leave_reason"] == "left"
            assert people["alice"]["left_at"] and "stopped" in people["alice"]["leave_reason"]
        with pytest.raises(ParticipantError, match="call_disabled"):
            await join(second, "closed-room", "carol", wait=False)
        assert await wait_until(lambda: second.process.poll() is None, 1)
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()
