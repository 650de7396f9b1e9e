"""The local worker pool with real child processes: crash, hang, max duration, cap.

Workers here are tiny Python programs standing in for a recorder, so each
failure mode is produced for real (exit code, SIGKILL, ignoring SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from callsctl_sfu.jobs.model import DONE, FAILED, QUEUED, RUNNING, Job, JobError, parse_create
from callsctl_sfu.jobs.runner import LocalRunner


def program(code: str):
    """A runner command: run `code` with the spec path as argv[1]."""
    return lambda spec: [sys.executable, "-c", code, str(spec)]


WRITES_RESULT = (
    "import json, pathlib, sys, time\n"
    "d = pathlib.Path(sys.argv[1]).parent\n"
    "(d / 'audio-x.ogg').write_bytes(b'x')\n"
    "(d / 'result.json').write_text(json.dumps({'files': ['audio-x.ogg'], 'duration_s': 1}))\n")


class Recorder:
    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []

    async def __call__(self, job: Job) -> None:
        self.states.append((job.id, job.state))


async def finished(runner: LocalRunner, job: Job, timeout: float = 20) -> Job:
    for _ in range(int(timeout / 0.05)):
        if job.state in (DONE, FAILED) and job.id not in {j.id for j in runner.running()}:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job still {job.state}")


async def test_a_clean_worker_is_done_with_its_files(tmp_path: Path) -> None:
    seen = Recorder()
    runner = LocalRunner(tmp_path, 2, seen, program(WRITES_RESULT))
    job = Job("j1", "recording", "c", 30)
    runner.submit(job, {"id": "j1"})
    await finished(runner, job)
    assert job.state == DONE and job.error is None
    assert job.output["files"] == ["audio-x.ogg"] and job.output["exit"] == "exited with code 0"
    assert [s for _, s in seen.states] == [RUNNING, DONE]
    assert json.loads((tmp_path / "j1" / "job.json").read_text()) == {"id": "j1"}


async def test_a_crashing_worker_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path, 2, Recorder(), program(
        "import sys; print('boom: something broke', file=sys.stderr); sys.exit(3)"))
    job = Job("j2", "recording", "c", 30)
    runner.submit(job, {})
    await finished(runner, job)
    assert job.state == FAILED
    assert "exited with code 3" in (job.error or "")
    assert "boom: something broke" in (tmp_path / "j2" / "job.log").read_text()


async def test_a_killed_worker_is_reported_and_its_files_are_kept(tmp_path: Path) -> None:
    code = ("import os, pathlib, signal, sys\n"
            "d = pathlib.Path(sys.argv[1]).parent\n"
            "(d / 'video-x.webm').write_bytes(b'partial')\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    runner = LocalRunner(tmp_path, 2, Recorder(), program(code))
    job = Job("j3", "recording", "c", 30)
    runner.submit(job, {})
    await finished(runner, job)
    assert job.state == FAILED
    assert "killed by SIGKILL" in (job.error or "") and "video-x.webm" in (job.error or "")
    assert job.output["files"] == ["video-x.webm"]


async def test_max_duration_stops_the_worker_like_a_manual_stop(tmp_path: Path) -> None:
    code = ("import signal, sys, time\n" + WRITES_RESULT +
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            "time.sleep(60)\n")
    runner = LocalRunner(tmp_path, 2, Recorder(), program(code))
    job = Job("j4", "recording", "c", 1.0)
    runner.submit(job, {})
    await finished(runner, job)
    assert job.state == DONE
    assert job.output["stop_reason"] == "max_duration"


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    runner = LocalRunner(tmp_path, 2, Recorder(), program(code), base_grace=0.5)
    job = Job("j5", "recording", "c", 1.0)
    runner.submit(job, {})
    await finished(runner, job)
    assert job.state == FAILED
    assert "was killed" in (job.error or "") and "max_duration" in (job.error or "")


async def test_a_worker_stopped_before_its_handler_is_stopped_not_failed(tmp_path: Path) -> None:
    """SIGTERM's default action (no handler yet: stopped while starting) is the stop asked for."""
    runner = LocalRunner(tmp_path, 1, Recorder(), program("import time\ntime.sleep(60)\n"))
    job = Job("s1", "recording", "c", 60)
    runner.submit(job, {})
    for _ in range(200):
        if job.state == RUNNING:
            break
        await asyncio.sleep(0.05)
    assert runner.stop("s1", "stopped by an admin")
    await finished(runner, job)
    assert job.state == DONE and job.error is None, job.error
    assert job.output["exit"] == "killed by SIGTERM"
    assert job.output["stop_reason"] == "stopped by an admin"


async def test_the_cap_queues_jobs_and_a_queued_job_can_be_stopped(tmp_path: Path) -> None:
    code = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n" \
           "time.sleep(60)\n"
    runner = LocalRunner(tmp_path, 1, Recorder(), program(code))
    first, second = Job("a", "recording", "c1", 60), Job("b", "recording", "c2", 60)
    runner.submit(first, {})
    runner.submit(second, {})
    for _ in range(200):
        if first.state == RUNNING:
            break
        await asyncio.sleep(0.05)
    assert first.state == RUNNING and second.state == QUEUED
    assert runner.stop("b", "stopped by an admin")
    runner.stop("a", "stopped by an admin")
    await finished(runner, first)
    await finished(runner, second)
    assert first.state == DONE and first.output["stop_reason"] == "stopped by an admin"
    assert second.state == FAILED and "before it started" in (second.error or "")


@pytest.mark.parametrize("body, field", [
    ({"call": "c", "type": "transcoding"}, "type"),
    ({"type": "recording"}, "call"),
    ({"call": "", "type": "recording"}, "call"),
    ({"call": "c", "max_duration_sec": 0}, "max_duration_sec"),
    ({"call": "c", "max_duration_sec": "10"}, "max_duration_sec"),
    ({"call": "c", "max_duration_sec": True}, "max_duration_sec"),
    ({"call": "c", "bogus": 1}, "bogus"),
])
def test_bad_job_requests_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(JobError) as info:
        parse_create(body, 3600)
    assert info.value.status == 400 and field in info.value.message
