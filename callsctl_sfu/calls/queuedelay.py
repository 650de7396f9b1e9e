"""How long forwarded media waited in the media socket before the server read it.

The C ingress (rtc/_ingress.c) compares each RTP datagram's kernel receive time
(SO_TIMESTAMPNS, socket(7)) with the time it was read and counts that wait in
fixed buckets. It is the server's own share of a packet's delay, the one an
operator can act on: a few milliseconds while the reading thread keeps up,
tens to hundreds when its core is full, and past `media_late_drop_ms` audio is
skipped (docs/reliability.md, "Overload"). A participant's delay on the
network is the client's to report; this is what the server added before it
began the fan-out. Exposed as GET /stats `media_queue_delay` and the
Prometheus histogram `callsctl_media_queue_delay_seconds`.

Only packets forwarded by the C ingress are counted (the Python path reads
no kernel receive time); without the C extension the histogram stays empty.
"""

from __future__ import annotations

from typing import Any


class QueueDelay:
    """Cumulative bucket counts and sum of the ingress's queue waits."""

    def __init__(self, bounds_us: tuple[int, ...]) -> None:
        self.bounds_us = bounds_us
        self.counts = [0] * (len(bounds_us) + 1)  # per bucket; the last is over every bound
        self.sum_us = 0

    def add(self, drained: tuple[int, ...] | None) -> None:
        """Fold one DrainResult's `queue_wait` in: a count per bucket, then the sum in µs."""
        if not drained or len(drained) != len(self.counts) + 1:
            return
        for index, count in enumerate(drained[:-1]):
            self.counts[index] += count
        self.sum_us += drained[-1]

    @classmethod
    def from_stats(cls, delay: Any) -> QueueDelay | None:
        """A histogram from GET /stats `media_queue_delay` (as `as_dict` gives it); None when
        it is missing or malformed (an older server, another kind of server)."""
        if not isinstance(delay, dict):
            return None
        bounds, counts = delay.get("bounds_ms"), delay.get("counts")
        if (not isinstance(bounds, list) or not isinstance(counts, list)
                or len(counts) != len(bounds) + 1
                or not all(isinstance(v, (int, float)) for v in bounds + counts)):
            return None
        histogram = cls(tuple(round(bound * 1000) for bound in bounds))
        histogram.counts = [int(count) for count in counts]
        return histogram

    def since(self, earlier: QueueDelay | None) -> QueueDelay | None:
        """The packets counted after `earlier` was read (a window between two readings);
        None when there is no earlier reading or the server restarted in between."""
        if earlier is None or earlier.bounds_us != self.bounds_us:
            return None
        added = [now - then for then, now in zip(earlier.counts, self.counts, strict=True)]
        if any(count < 0 for count in added):
            return None
        window = QueueDelay(self.bounds_us)
        window.counts = added
        window.sum_us = max(0, self.sum_us - earlier.sum_us)
        return window

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound in seconds, packets that waited at most that long), as Prometheus
        histograms are exposed; the last bound is +Inf."""
        out: list[tuple[float, int]] = []
        running = 0
        for index, count in enumerate(self.counts):
            running += count
            bound = self.bounds_us[index] / 1e6 if index < len(self.bounds_us) else float("inf")
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """The wait under which a share `q` of the packets fell, in milliseconds, read as
        Prometheus's histogram_quantile reads buckets (linear within the bucket it falls
        in); the largest bound when it falls past every bound. None before any packet."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        running, lower = 0, 0.0
        for index, count in enumerate(self.counts):
            if index == len(self.bounds_us):
                return self.bounds_us[-1] / 1e3 if self.bounds_us else None
            upper = self.bounds_us[index] / 1e3
            if count and running + count >= rank:
                return round(lower + (upper - lower) * (rank - running) / count, 3)
            running += count
            lower = upper
        return None

    def as_dict(self) -> dict[str, Any]:
        """GET /stats `media_queue_delay`: buckets, count, sum and the median and p99."""
        return {"bounds_ms": [bound / 1e3 for bound in self.bounds_us],
                "counts": list(self.counts), "count": self.count,
                "sum_ms": round(self.sum_us / 1e3, 3),
                "p50_ms": self.quantile(0.5), "p99_ms": self.quantile(0.99)}
