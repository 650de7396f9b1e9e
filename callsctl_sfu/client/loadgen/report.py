"""What a run measured: live progress, percentiles, per-receiver loss, the `--json` report.

Loss is counted over the steady window only: per sender the packets sent in
it, per receiver the packets received in it from each sender of its call.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callsctl_sfu.client.loadgen.config import MAX_OK_LOSS

if TYPE_CHECKING:
    from callsctl_sfu.client.loadgen.orchestrate import LoadTest
    from callsctl_sfu.client.loadgen.participant import LightParticipant

@dataclass
class Progress:
    """A snapshot for a live display."""

    phase: str
    elapsed: float
    duration: float
    requested: int
    joined: int
    connected: int
    failed: int
    packets_sent: int
    packets_received: int
    delay_samples: int
    server_cpu_percent: float | None


def percentiles(values: Iterable[float], points: Iterable[int] = (50, 95, 99)
                ) -> dict[str, float] | None:
    """Nearest-rank percentiles plus max, or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    out = {}
    for p in points:
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


def rounded(values: dict[str, float] | None, digits: int) -> dict[str, float] | None:
    return None if values is None else {k: round(v, digits) for k, v in values.items()}


@dataclass
class LoadReport:
    """Everything a run measured; `to_dict()` is the `--json` output."""

    ok: bool
    target: str
    settings: dict[str, Any]
    participants: dict[str, Any]
    join_s: dict[str, float] | None
    first_media_s: dict[str, float] | None
    window: dict[str, float] | None
    media: dict[str, Any] | None
    delay_ms: dict[str, float] | None
    server: dict[str, Any] | None
    loadgen: dict[str, Any]
    samples: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def build_report(test: LoadTest, cpu_seconds: float, wall: float) -> LoadReport:
    """The report of a finished run (`LoadTest.run` returns it)."""
    config = test.config
    joined = [p for p in test.participants if p.connected_at is not None]
    failures = Counter(p.failure.split(":", 1)[0] for p in test.participants if p.failure)
    examples = {}
    for p in test.participants:
        if p.failure:
            examples.setdefault(p.failure.split(":", 1)[0], p.failure)
    join_times = [p.connected_at - p.started_at for p in joined
                  if p.connected_at is not None]
    first_media = [p.first_media_at - p.started_at for p in joined
                   if p.first_media_at is not None]
    media = media_figures(test.participants, test.window_counts)
    delays_ms = [d / 1e6 for d in test.delays[:test.window_counts.get("delays", 0)]]
    lag = percentiles([x * 1000 for x in test.loop_lag], (50, 99))
    samples = {name: {"bitrate_kbps": round(s.bitrate / 1000, 1),
                      "packets_per_second": round(s.packets_per_second, 1)}
               for name, s in test.samples.items()}
    errors: Counter[str] = Counter()
    for p in test.participants:
        errors.update(p.error_codes)
    requested = config.participants
    silent = not any(p.senders for p in test.participants)  # --unmuted 0: joins only
    ok = len(joined) == requested and (silent or (
        media is not None and media["loss"] is not None and media["loss"] <= MAX_OK_LOSS))
    return LoadReport(
        ok=ok,
        target=config.ws_url,
        settings={"calls": config.calls, "users_per_call": config.users_per_call,
                  "unmuted": config.unmuted, "screen_sharing": config.screen_sharing,
                  "simulcast": config.simulcast,
                  "video": config.video, "duration_s": config.duration,
                  "join_duration_s": config.join_duration,
                  "delay_sample_every": config.delay_sample_every},
        participants={"requested": requested, "started": len(test.participants),
                      "joined": len(joined), "failed": sum(failures.values()),
                      "failures": dict(failures), "failure_examples": examples},
        join_s=rounded(percentiles(join_times), 3),
        first_media_s=rounded(percentiles(first_media), 3),
        window=None if test.window is None else {
            "starts_at_s": round(test.window[0], 2), "seconds": round(test.window[1], 2)},
        media=media,
        delay_ms=None if not delays_ms else {"samples": len(delays_ms),
                                             **rounded(percentiles(delays_ms), 3)},
        server=test.monitor.report() if test.monitor is not None else None,
        loadgen={"cpu_percent": round(100 * cpu_seconds / max(wall, 1e-9), 1),
                 "window_cpu_percent": round(100 * test.window_counts.get(
                     "loadgen_cpu", 0.0), 1) if test.window else None,
                 "loop_lag_ms": rounded(lag, 2), "local_address": test.local_address,
                 "signaling_errors": dict(errors)},
        samples=samples,
        notes=list(test.notes),
    )


def media_figures(participants: list[LightParticipant], counts: dict[str, Any]
                  ) -> dict[str, Any] | None:
    """Loss over the steady window, in total, per media label and per receiver and source."""
    if "recv1" not in counts:
        return None
    sent0, sent1 = counts["sent0"], counts["sent1"]
    per_receiver = []
    total_expected = total_received = 0
    pairs = lossy_pairs = 0
    worst = 0.0
    extra = 0
    by_label: dict[str, list[int]] = {}
    for receiver in participants:
        if receiver.connected_at is None:
            continue
        before = counts["recv0"].get(id(receiver), {})
        after = counts["recv1"].get(id(receiver), {})
        got: Counter[tuple[str | None, str]] = Counter()
        for ssrc, n in after.items():
            source = receiver.streams.get(ssrc, (None, f"ssrc-{ssrc}"))
            got[source] += n - before.get(ssrc, 0)
        expected = received = 0
        sources: dict[str, list[int]] = {}
        for p in participants:
            if p is receiver or p.call != receiver.call or p.connected_at is None:
                continue
            for sender in p.senders:
                want = sent1.get(id(sender), 0) - sent0.get(id(sender), 0)
                have = got.get((p.session_id, sender.label), 0)
                if want <= 0:
                    continue
                pairs += 1
                pair_loss = max(0.0, 1 - have / want)
                worst = max(worst, pair_loss)
                lossy_pairs += pair_loss > 0.01
                expected += want
                received += min(have, want)
                extra += max(0, have - want)
                sources[f"{p.user}/{sender.label}"] = [want, have]
                totals = by_label.setdefault(sender.label, [0, 0])
                totals[0] += want
                totals[1] += min(have, want)
        total_expected += expected
        total_received += received
        per_receiver.append({"user": receiver.user, "call": receiver.call,
                             "expected": expected, "received": received,
                             "loss": round(1 - received / expected, 5) if expected else None,
                             "sources": sources})
    senders = [s for p in participants for s in p.senders]
    sent = sum(sent1.get(id(s), 0) - sent0.get(id(s), 0) for s in senders)
    return {
        "senders": len(senders), "packets_sent": sent,
        "expected": total_expected, "received": total_received,
        "loss": round(1 - total_received / total_expected, 5) if total_expected else None,
        "pairs": pairs, "pairs_over_1pct_loss": lossy_pairs, "worst_pair_loss": round(worst, 5),
        # More than was sent in the window: in flight when it opened, or duplicates.
        "received_beyond_expected": extra,
        "frames_skipped_by_generator": counts["skipped1"] - counts["skipped0"],
        "keyframe_requests": sum(s.keyframe_requests for p in participants
                                 for s in p.all_senders()),
        "by_label": {label: {"expected": e, "received": r,
                             "loss": round(1 - r / e, 5) if e else None}
                     for label, (e, r) in sorted(by_label.items())},
        "per_receiver": per_receiver,
    }
