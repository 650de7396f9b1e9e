"""The media queue-delay histogram's arithmetic, and how `callsctl top` names a backlog.

A real server's histogram (its C ingress counting kernel receive times, a stall
showing in /metrics) is tested in test_ingress.py and test_fanout.py; these are
the reductions an operator reads from it: the p99 in GET /stats and the
per-refresh p99 `top` shows when the server's reading thread falls behind.
"""

from __future__ import annotations

import pytest

from callsctl.top.model import Overview, TopState
from callsctl.top.widgets import udp_text
from callsctl_sfu.calls.queuedelay import QueueDelay

BOUNDS_US = (500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 250000, 500000, 1000000)


def drained(**by_bound_us: int) -> tuple[int, ...]:
    """A DrainResult.queue_wait: counts per bucket (keyword b<bound> or over), then the sum."""
    counts = [by_bound_us.get(f"b{bound}", 0) for bound in BOUNDS_US] + [by_bound_us.get("over", 0)]
    return (*counts, by_bound_us.get("sum_us", 0))


def test_empty_histogram_has_no_quantiles_and_a_prometheus_shape() -> None:
    delay = QueueDelay(BOUNDS_US)
    assert delay.as_dict()["p99_ms"] is None and delay.count == 0
    cumulative = delay.cumulative()
    assert len(cumulative) == len(BOUNDS_US) + 1 and cumulative[-1] == (float("inf"), 0)


def test_drains_add_up_and_quantiles_interpolate_within_a_bucket() -> None:
    delay = QueueDelay(BOUNDS_US)
    delay.add(drained(b500=90, b1000=9, sum_us=40_000))
    delay.add(drained(b20000=1, sum_us=15_000))
    delay.add(None)  # a drain that handled no RTP
    delay.add((1, 2, 3))  # a shape from another build: ignored, not misread
    assert delay.count == 100 and delay.sum_us == 55_000
    assert delay.quantile(0.5) == pytest.approx(0.5 * 50 / 90, abs=1e-3)
    assert delay.quantile(0.99) == 1.0  # the 99th packet closes the (0.5, 1] ms bucket
    assert 10.0 < delay.quantile(0.999) <= 20.0
    assert delay.cumulative()[1] == (0.001, 99)
    stats = delay.as_dict()
    assert stats["bounds_ms"][0] == 0.5 and stats["sum_ms"] == 55.0 and stats["count"] == 100


def test_a_wait_past_every_bound_reads_as_the_largest_bound() -> None:
    delay = QueueDelay(BOUNDS_US)
    delay.add(drained(b500=1, over=99, sum_us=150_000_000))
    assert delay.quantile(0.99) == 1000.0 and delay.cumulative()[-2] == (1.0, 1)


def overview(**counts: int) -> Overview:
    queue = [counts.get(f"b{bound}", 0) for bound in BOUNDS_US] + [counts.get("over", 0)]
    return Overview(calls=[], rcvbuf_errors=0, stats={
        "forwarding": {"rtp_in": 0, "dropped_late": 0},
        "media_queue_delay": {"bounds_ms": [b / 1000 for b in BOUNDS_US], "counts": queue}})


def test_top_names_a_media_backlog_on_the_udp_line_only_when_it_builds_up() -> None:
    state = TopState()
    state.apply_overview(overview(b500=1000), 10.0)
    state.apply_overview(overview(b500=2000, b1000=5), 11.0)
    assert state.rates.queue_p99_ms is not None and state.rates.queue_p99_ms <= 1.0
    assert "queue" not in udp_text(state).plain
    # The next second most packets waited 50-100 ms: the reader thread is behind.
    state.apply_overview(overview(b500=2100, b1000=5, b100000=900), 12.0)
    assert 50.0 < state.rates.queue_p99_ms <= 100.0
    assert udp_text(state).plain.startswith("queue p99 "), udp_text(state).plain
    # A restarted server (counts went down) gives no figure rather than a wrong one.
    state.apply_overview(overview(b500=10), 13.0)
    assert state.rates.queue_p99_ms is None


def test_a_stats_reading_round_trips_and_windows_between_two_readings() -> None:
    earlier = QueueDelay(BOUNDS_US)
    earlier.add(drained(b500=10, sum_us=2_000))
    later = QueueDelay(BOUNDS_US)
    later.add(drained(b500=15, b50000=5, sum_us=200_000))
    read_earlier = QueueDelay.from_stats(earlier.as_dict())
    read_later = QueueDelay.from_stats(later.as_dict())
    assert read_earlier is not None and read_later is not None
    assert read_later.counts == later.counts and read_later.bounds_us == BOUNDS_US
    window = read_later.since(read_earlier)
    assert window is not None and window.count == 10 and window.counts[0] == 5
    assert read_earlier.since(read_later) is None  # counts went down: a restarted server
    assert read_later.since(None) is None
    assert QueueDelay.from_stats({"bounds_ms": [1.0], "counts": [1]}) is None  # malformed
    assert QueueDelay.from_stats(None) is None
