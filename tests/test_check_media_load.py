"""`check all`'s "media queue" verdict from two GET /stats readings of a callsctl server.

A live server's readings are tested in test_check_rtc.py (idle, and a call with
audio); these are the verdicts a live loopback server does not produce on
demand: a server whose reader fell behind, one skipping late audio, one that
restarted between the readings, and one without the histogram.
"""

from __future__ import annotations

from typing import Any

from callsctl.check.media_load import FIX, judge

BOUNDS_MS = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0]


def stats(late: int = 0, **counts: int) -> dict[str, Any]:
    """GET /stats with media_queue_delay counts given as b<index>=n."""
    queue = [counts.get(f"b{index}", 0) for index in range(len(BOUNDS_MS) + 1)]
    return {"forwarding": {"dropped_late": late},
            "media_queue_delay": {"bounds_ms": BOUNDS_MS, "counts": queue}}


def test_a_server_keeping_up_passes_with_its_p99() -> None:
    result = judge(stats(b0=1000), stats(b0=1900, b1=90, b3=10), 2.0)
    assert result.status == "pass" and result.details["window_packets"] == 1000
    assert result.details["window_p99_ms"] <= 5.0
    assert "since it started" in result.summary and result.fix is None


def test_a_reader_that_fell_behind_warns_with_the_fix() -> None:
    # Most packets of the interval waited 20-50 ms: the reader is behind.
    result = judge(stats(b0=1000), stats(b0=1500, b6=500), 2.0)
    assert result.status == "warn" and result.fix == FIX
    assert 20 < result.details["window_p99_ms"] <= 50 and result.figure == "p99 49 ms"


def test_late_audio_skipped_in_the_interval_warns_even_with_a_short_p99() -> None:
    result = judge(stats(late=10, b0=1000), stats(late=70, b0=3000), 2.0)
    assert result.status == "warn" and "60 late audio packets skipped" in result.summary


def test_idle_restarted_and_unknown_servers() -> None:
    idle = judge(stats(b0=50), stats(b0=50), 2.0)
    assert idle.status == "pass" and idle.figure == "idle"
    restarted = judge(stats(b0=5000), stats(b0=40), 2.0)  # counts went down: no interval
    assert restarted.status == "pass" and restarted.figure == "idle"
    assert "p99" in restarted.summary  # what it has forwarded since it started
    unknown = judge({"forwarding": {}}, {"forwarding": {}}, 2.0)
    assert unknown.status == "warn" and unknown.figure == "unknown"
