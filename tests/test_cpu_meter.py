"""The load generator's outside CPU meter (loadgen/monitor.py) on a real process.

The bench's and `callsctl loadtest`'s CPU per forwarded packet divide this
meter's reading by a packet count; at a small call the server uses about 1 %
of a core, so the meter's resolution is the figure's.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from callsctl_sfu.client.loadgen import monitor
from callsctl_sfu.client.loadgen.monitor import proc_cpu_seconds, proc_ticks_seconds

# A child that spends about 0.3 s of CPU in a thread that then ends, says so, and idles.
BURN_IN_A_THREAD_THEN_IDLE = (
    "import threading, time, sys\n"
    "def burn():\n"
    "    end = time.thread_time() + 0.3\n"
    "    while time.thread_time() < end:\n"
    "        pass\n"
    "worker = threading.Thread(target=burn)\n"
    "worker.start(); worker.join()\n"
    "print('done', flush=True)\n"
    "time.sleep(30)\n"
)


@pytest.fixture
def idle_after_burning() -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", BURN_IN_A_THREAD_THEN_IDLE],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def test_counts_an_ended_thread_in_nanoseconds_not_ticks(
        idle_after_burning: subprocess.Popen[str]) -> None:
    pid = idle_after_burning.pid
    seconds = proc_cpu_seconds(pid)
    ticks = proc_ticks_seconds(pid)
    # The burning thread has ended; its time still belongs to the process.
    assert seconds >= 0.29
    # The same quantity as /proc's utime + stime, which rounds down to 10 ms ticks.
    assert ticks - 0.011 <= seconds <= ticks + 0.03
    # Finer than a tick: /proc alone can only read whole hundredths.
    assert abs(seconds * 100 - round(seconds * 100)) > 1e-6
    # Idle now: two readings a moment apart barely move.
    time.sleep(0.2)
    assert proc_cpu_seconds(pid) - seconds < 0.02


def test_a_process_that_is_gone_raises_oserror() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    with pytest.raises(OSError):
        proc_cpu_seconds(child.pid)


def test_without_the_c_librarys_clock_it_reads_proc(
        idle_after_burning: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "_clock_getcpuclockid", None)
    seconds = proc_cpu_seconds(idle_after_burning.pid)
    assert seconds >= 0.29
    assert seconds == proc_ticks_seconds(idle_after_burning.pid)
