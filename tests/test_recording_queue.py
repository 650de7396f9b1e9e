"""Recording through the Redis job queue: a real redis-server on a free loopback port,
`callsctl serve` enqueueing, `callsctl worker` running the recorder."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import media_checks as media
from tests.support.admin import admin_client, job_state, join
from tests.support.helpers import REPO, free_port, have, run_cli

pytestmark = pytest.mark.skipif(not (have("redis-server") and have("ffmpeg")),
                                reason="needs redis-server and ffmpeg (Debian packages)")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                              text=True, timeout=5).stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(url: str, name: str = "worker") -> tuple[subprocess.Popen, Path]:
        data_dir = tmp_path / name
        log = (tmp_path / f"{name}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "callsctl", "worker", "--queue", url, "--data-dir",
             str(data_dir), "--max-jobs", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))
        started.append((process, tmp_path / f"{name}.log"))
        return process, data_dir

    yield start
    for process, log in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


async def test_a_worker_records_a_call_from_the_queue(serve_factory, redis_url, start_worker):
    server = serve_factory(env={"CALLSCTL_JOB_QUEUE_URL": redis_url})
    worker, worker_dir = start_worker(redis_url)
    alice = await join(server, "fleet", "alice", tone=440.0)
    try:
        async with admin_client(server) as http:
            response = await http.post("/api/v1/jobs", json={"call": "fleet"})
            assert response.status_code == 201, response.text
            assert response.json()["runner"] == "redis"
            job = await job_state(http, response.json()["id"], ("running",), 60)
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
            await asyncio.sleep(3)
            await http.post(f"/api/v1/jobs/{job['id']}/stop")
            job = await job_state(http, job["id"], ("done", "failed"))
        assert job["state"] == "done", job
        # The files are on the worker's side, in its data dir.
        directory = Path(job["output_data"]["directory"])
        assert directory.parent == worker_dir / "recordings"
        mp4 = directory / "recording.mp4"
        assert media.codecs(mp4) == {"video": "h264", "audio": "aac"}
        assert abs(media.duration(mp4) - job["output_data"]["duration_s"]) < 1.0
        samples = media.pcm(mp4)
        assert media.tone_level(samples, 440.0, 0.5, job["output_data"]["duration_s"] - 0.5) \
            > 1000
    finally:
        await alice.close()


async def test_a_killed_worker_is_noticed_by_the_server(serve_factory, redis_url,
                                                        start_worker):
    server = serve_factory(env={"CALLSCTL_JOB_QUEUE_URL": redis_url})
    worker, _worker_dir = start_worker(redis_url)
    alice = await join(server, "fleet2", "alice")
    try:
        async with admin_client(server) as http:
            response = await http.post("/api/v1/jobs", json={"call": "fleet2"})
            job = await job_state(http, response.json()["id"], ("running",), 60)
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
            worker.send_signal(signal.SIGKILL)
            os.kill(job["output_data"]["pid"], signal.SIGKILL)  # its recorder child too
            job = await job_state(http, job["id"], ("done", "failed"), 60)
            assert job["state"] == "failed" and "stopped answering" in job["error"], job
            calls = (await http.get("/api/v1/calls")).json()["calls"]
            assert calls[0]["participants"] == 1
    finally:
        await alice.close()


def test_worker_refuses_a_bad_queue_url_and_an_absent_redis(tmp_path: Path) -> None:
    bad = run_cli("worker", "--queue", "http://x", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "redis://" in bad.stderr
    absent = run_cli("worker", "--queue", f"redis://127.0.0.1:{free_port()}/0", "--data-dir",
                     str(tmp_path), timeout=60)
    assert absent.returncode == 1 and "cannot reach Redis" in absent.stderr, absent.stderr
    assert len(absent.stderr.strip().splitlines()) == 1
