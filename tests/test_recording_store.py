"""Recordings across restarts: interrupted jobs, retention, and the call history."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

from tests.support.admin import admin_client, admin_key, job_state, join
from tests.support.helpers import run_cli


def insert_job(db, job_id: str, state: str, created_at: float, call: str = "old") -> None:
    connection = sqlite3.connect(db)
    with connection:
        connection.execute(
            "INSERT INTO jobs (id, type, call_id, state, created_at, started_at, stopped_at, "
            "max_duration, runner, error, output) VALUES (?, 'recording', ?, ?, ?, ?, ?, 60, "
            "'local', NULL, ?)", (job_id, call, state, created_at, created_at,
                                  None if state == "running" else created_at + 10,
                                  json.dumps({"files": ["recording.mp4"]})))
    connection.close()


async def test_interrupted_jobs_fail_and_old_recordings_expire(serve_factory):
    first = serve_factory()
    data_dir = first.data_dir
    assert first.stop() == 0
    now = time.time()
    insert_job(data_dir / "callsctl.db", "ancient", "done", now - 3 * 86400)
    insert_job(data_dir / "callsctl.db", "recent", "done", now - 3600)
    insert_job(data_dir / "callsctl.db", "cut", "running", now - 60)
    for job_id in ("ancient", "recent", "cut"):
        (data_dir / "recordings" / job_id).mkdir(parents=True)
        (data_dir / "recordings" / job_id / "recording.mp4").write_bytes(b"x")
    server = serve_factory("--data-dir", str(data_dir),
                           env={"CALLSCTL_RECORDING_RETENTION_DAYS": "2"})
    server.data_dir = data_dir  # the last --data-dir wins: the first server's
    async with admin_client(server) as http:
        for _ in range(50):
            if (await http.get("/api/v1/jobs/ancient")).status_code == 404:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/api/v1/jobs/ancient")).status_code == 404
        assert not (data_dir / "recordings" / "ancient").exists()
        recent = (await http.get("/api/v1/jobs/recent")).json()
        assert recent["state"] == "done" and (data_dir / "recordings" / "recent").is_dir()
        cut = (await http.get("/api/v1/jobs/cut")).json()
        assert cut["state"] == "failed" and "server stopped" in cut["error"], cut
        assert (data_dir / "recordings" / "cut" / "recording.mp4").exists()


async def test_the_call_history_lists_its_recordings(server):
    alice = await join(server, "hist", "alice")
    try:
        async with admin_client(server) as http:
            job = (await http.post("/api/v1/jobs", json={"call": "hist"})).json()
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
            await http.post(f"/api/v1/jobs/{job['id']}/stop")
            await job_state(http, job["id"], ("done", "failed"))
            history = (await http.get("/api/v1/history?call=hist")).json()["calls"]
        assert [r["id"] for r in history[0]["recordings"]] == [job["id"]]
        env = {"CALLSCTL_SERVER": server.api_url, "CALLSCTL_ADMIN_KEY": admin_key(server)}
        listed = await asyncio.to_thread(run_cli, "record", "list", "--json", env=env)
        assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [job["id"]]
        table = await asyncio.to_thread(run_cli, "record", "list", env=env)
        assert job["id"] in table.stdout and "done" in table.stdout
        shown = await asyncio.to_thread(run_cli, "record", "get", job["id"], env=env)
        assert "recording.mp4" in shown.stdout and "Alice" in shown.stdout, shown.stdout
        logs = await asyncio.to_thread(run_cli, "record", "get", job["id"], "--logs", env=env)
        assert "joined call hist as recorder" in logs.stdout
        assert history[0]["recordings"][0]["participants"] == ["Alice"]
        assert "recording.mp4" in history[0]["recordings"][0]["files"]
    finally:
        await alice.close()


async def test_stopping_the_server_finishes_the_recording(serve_factory):
    server = serve_factory()
    alice = await join(server, "closing", "alice", tone=440.0)
    try:
        async with admin_client(server) as http:
            job = (await http.post("/api/v1/jobs", json={"call": "closing"})).json()
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
            await asyncio.sleep(2)
        assert await asyncio.to_thread(server.stop, 15, 30) == 0
    finally:
        await alice.close()
    again = serve_factory("--data-dir", str(server.data_dir))
    again.data_dir = server.data_dir
    async with admin_client(again) as http:
        finished = (await http.get(f"/api/v1/jobs/{job['id']}")).json()
    assert finished["state"] == "done", finished
    assert "call ended" in finished["output_data"]["stop_reason"]
    assert (server.data_dir / "recordings" / job["id"] / "recording.mp4").stat().st_size > 0
