"""`callsctl loadtest --processes N`: participants split over worker processes, one report.

A real `callsctl serve` on loopback and the real CLI. Splitting one call over
two workers is the case that can go wrong (a receiver in one process expects
the speakers of the other), so both splits are run: by participant within one
call, and by whole calls. No figure is asserted, only what a user reads in the
report: everyone joined, every receiver heard every speaker, counts add up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callsctl_sfu.client.loadgen import LoadConfig, join_order, runs_here, worker_count
from tests.support.helpers import REPO, run_cli


def _run(server, calls: int, users: int, unmuted: int) -> dict:
    result = run_cli("loadtest", "--host", server.api_url, "--data-dir", str(server.data_dir),
                     "--calls", str(calls), "--users-per-call", str(users),
                     "--unmuted", str(unmuted), "--processes", "2",
                     "--duration", "8s", "--join-duration", "1s", "--json", timeout=120)
    assert result.returncode == 0, result.stderr + server.log()[-2000:]
    return json.loads(result.stdout)


def _check(report: dict, calls: int, users: int, unmuted: int) -> None:
    total = calls * users
    assert report["ok"] is True, report["notes"]
    assert report["participants"] == {**report["participants"], "requested": total,
                                      "joined": total, "failed": 0}
    assert report["loadgen"]["processes"] == 2
    assert [p["participants"] for p in report["loadgen"]["per_process"]] == [total // 2] * 2
    media = report["media"]
    assert media["senders"] == calls * unmuted
    receivers = media["per_receiver"]
    assert len(receivers) == total
    assert sorted(r["user"] for r in receivers) == sorted(
        f"loadtest-{c}-u{u}" for c in range(1, calls + 1) for u in range(1, users + 1))
    for receiver in receivers:
        call = receiver["call"]
        speakers = {f"{call}-u{u}/audio" for u in range(1, unmuted + 1)}
        speakers.discard(f"{receiver['user']}/audio")
        assert set(receiver["sources"]) == speakers, receiver
        for source, (expected, received) in receiver["sources"].items():
            assert expected > 0 and received >= 0.95 * expected, (receiver["user"], source)
    assert media["expected"] == sum(r["expected"] for r in receivers)
    assert media["received"] == sum(r["received"] for r in receivers)
    assert report["delay_ms"]["samples"] > 0
    assert report["server"]["window"]["forwarded_packets"] > 0


def test_one_call_split_over_two_processes(server) -> None:
    # Speakers u1 and u2 land in different workers: each worker's receivers hear both.
    _check(_run(server, calls=1, users=6, unmuted=2), calls=1, users=6, unmuted=2)


def test_two_calls_one_per_process(server) -> None:
    _check(_run(server, calls=2, users=3, unmuted=2), calls=2, users=3, unmuted=2)


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "65"])
def test_bad_processes_is_a_usage_error(value: str) -> None:
    result = run_cli("loadtest", "--host", "http://127.0.0.1:9", "--token-secret", "s",
                     "--duration", "5s", "--join-duration", "1s", "--processes", value,
                     timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--processes" in lines[0], result.stderr


def test_shares_cover_everyone_once() -> None:
    """Every participant runs in exactly one worker, whichever way the run is split."""
    for calls, users, processes in [(1, 6, 2), (2, 3, 2), (3, 5, 2), (5, 2, 3), (1, 1, 4)]:
        config = LoadConfig(ws_url="ws://127.0.0.1:9/ws", token_for=lambda c, u: "",
                            calls=calls, users_per_call=users, processes=processes)
        count = worker_count(config)
        assert 1 <= count <= processes
        seen: list[str] = []
        for index in range(count):
            config.share = (index, count)
            seen += [user for call, user, _ in join_order(config)
                     if runs_here(config, call, user)]
        assert sorted(seen) == sorted(user for _, user, _ in join_order(config))


def _workers_of(pid: int) -> list[int]:
    """The spawned worker processes of `pid` (its children running multiprocessing's spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_dead_worker_fails_the_run_in_one_line_and_leaves_no_orphans(server) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "callsctl", "loadtest", "--host", server.api_url,
         "--data-dir", str(server.data_dir), "--calls", "1", "--users-per-call", "4",
         "--processes", "2", "--duration", "30s", "--join-duration", "1s", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = _workers_of(process.pid)
        assert len(workers) == 2, "the two workers never started"
        time.sleep(3)  # mid-run: joined, sending
        # The other worker is frozen, as a hung one would be: only the parent can end it.
        os.kill(workers[1], signal.SIGSTOP)
        os.kill(workers[0], signal.SIGKILL)
        out, err = process.communicate(timeout=30)
        deadline = time.monotonic() + 2
        while _alive(workers[1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        frozen = _alive(workers[1])
    finally:
        for pid in workers:  # whatever happened, nothing of this test lingers
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 1, err
    assert out == "" and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("callsctl: error: ")]
    assert len(errors) == 1 and "worker" in errors[0] and "exited" in errors[0], err
    assert not frozen, "a worker outlived the failed run"
