"""`check all`'s "media queue" step: is a callsctl server keeping up with its media?

Choppy or late audio for everyone in a call, with every connectivity check
green, is most often a server short of CPU: its media reader falls behind, the
packets wait in its socket, and past `media_late_drop_ms` audio is skipped
(docs/reliability.md, "Overload"). The server measures that wait itself
(GET /stats `media_queue_delay`, calls/queuedelay.py: each forwarded packet's
time from the kernel's receive stamp to the read). This step reads GET /stats
twice, `SAMPLE_S` apart, and reports the p99 of the packets forwarded in
between, the audio skipped as late, and the p99 since the server started.
Only callsctl servers answer GET /stats this way; rtcd and the Calls plugin
have no such figure, so the step runs only against callsctl.
"""

from __future__ import annotations

import time
from typing import Any

from callsctl.check.result import CheckResult
from callsctl.check.rtc import RtcProbe
from callsctl_sfu.calls.queuedelay import QueueDelay

NAME = "media queue"
SAMPLE_S = 2.0  # between the two GET /stats readings
WARN_P99_MS = 20.0  # a 20 ms audio frame's worth of waiting: the reader is behind
FIX = ("the server is short of CPU for its media: see `callsctl top` (server CPU, queue "
       "p99), run `callsctl tune --apply`, give it more cores (--media-threads) or move "
       "calls to another server")


def applies(probe: RtcProbe) -> bool:
    """Whether the server is callsctl (the only one whose /stats has the histogram)."""
    return probe.kind().kind == "callsctl"


def media_load_results(probe: RtcProbe, sample_s: float = SAMPLE_S) -> list[CheckResult]:
    """Two GET /stats readings `sample_s` apart, judged by `judge`."""
    first = probe.api("/stats", fresh=True)
    if first.status != 200 or not isinstance(first.body, dict):
        why = first.error or f"HTTP {first.status}"
        return [CheckResult(NAME, "warn", f"could not read {first.url}: {why}",
                            figure="unknown")]
    time.sleep(sample_s)
    second = probe.api("/stats", fresh=True)
    if second.status != 200 or not isinstance(second.body, dict):
        why = second.error or f"HTTP {second.status}"
        return [CheckResult(NAME, "warn", f"could not read {second.url} again: {why}",
                            figure="unknown")]
    return [judge(first.body, second.body, sample_s)]


def _late(stats: dict[str, Any]) -> int | None:
    forwarding = stats.get("forwarding")
    value = forwarding.get("dropped_late") if isinstance(forwarding, dict) else None
    return value if isinstance(value, int) else None


def judge(first: dict[str, Any], second: dict[str, Any], seconds: float) -> CheckResult:
    """The verdict from two GET /stats bodies taken `seconds` apart."""
    before = QueueDelay.from_stats(first.get("media_queue_delay"))
    after = QueueDelay.from_stats(second.get("media_queue_delay"))
    if after is None:
        return CheckResult(NAME, "warn", "the server's GET /stats has no media_queue_delay (a "
                           "callsctl older than this check, or no C extension)",
                           figure="unknown")
    lifetime = after.quantile(0.99)
    since_start = ("no media forwarded since it started" if lifetime is None else
                   f"p99 {lifetime:.1f} ms over {after.count:,} packets since it started")
    window = after.since(before) or QueueDelay(after.bounds_us)  # restarted: no window
    late_then, late_now = _late(first), _late(second)
    late = (late_now - late_then if late_then is not None and late_now is not None
            and late_now >= late_then else 0)
    p99 = window.quantile(0.99)
    details = {"window_s": seconds, "window_packets": window.count, "window_p99_ms": p99,
               "window_late_packets": late, "since_start_p99_ms": lifetime,
               "since_start_packets": after.count}
    if window.count == 0:
        return CheckResult(NAME, "pass", f"no media forwarded in the last {seconds:g} s; "
                           f"{since_start}", figure="idle", details=details)
    text = (f"forwarded media waited p99 {p99:.1f} ms in the server's socket over the last "
            f"{seconds:g} s ({window.count:,} packets); {since_start}")
    if late or (p99 is not None and p99 >= WARN_P99_MS):
        skipped = f"; {late:,} late audio packets skipped" if late else ""
        return CheckResult(NAME, "warn", text + skipped, figure=f"p99 {p99:.0f} ms",
                           fix=FIX, details=details)
    return CheckResult(NAME, "pass", text, figure=f"p99 {p99:.1f} ms", details=details)
