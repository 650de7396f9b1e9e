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

from callsctl_sfu.client.loadgen.config import MAX_OK_LOSS, LoadConfig

if TYPE_CHECKING:
    from callsctl_sfu.client.loadgen.orchestrate import LoadTest

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


def raw_figures(test: LoadTest, cpu_seconds: float, wall: float) -> dict[str, Any]:
    """What one process measured, as plain picklable data.

    A run split across worker processes merges these (`merge_report`): a
    receiver's expected packets come from every sender of its call, whichever
    process sent them, so senders and receivers are named by (session id,
    label) rather than by object.
    """
    counts = test.window_counts
    windowed = "recv1" in counts
    participants = []
    for p in test.participants:
        participants.append({
            "user": p.user, "call": p.call, "session_id": p.session_id,
            "joined": p.connected_at is not None, "failure": p.failure,
            "join_s": None if p.connected_at is None else p.connected_at - p.started_at,
            "first_media_s": None if p.connected_at is None or p.first_media_at is None
            else p.first_media_at - p.started_at,
            "errors": dict(p.error_codes), "senders": len(p.senders),
            "dc_open": p.dc_open_at is not None, "dc_pongs": p.dc_pongs})
    senders = []
    receivers = []
    if windowed:
        sent0, sent1 = counts["sent0"], counts["sent1"]
        for p in test.participants:
            if p.connected_at is None:
                continue
            for s in p.senders:
                senders.append({"call": p.call, "session_id": p.session_id, "user": p.user,
                                "label": s.label,
                                "sent": sent1.get(id(s), 0) - sent0.get(id(s), 0)})
            before = counts["recv0"].get(id(p), {})
            got: Counter[tuple[str | None, str]] = Counter()
            for ssrc, n in counts["recv1"].get(id(p), {}).items():
                got[p.streams.get(ssrc, (None, f"ssrc-{ssrc}"))] += n - before.get(ssrc, 0)
            receivers.append({"user": p.user, "call": p.call, "session_id": p.session_id,
                              "got": dict(got), "probe": p.probe})
    return {
        "participants": participants, "senders": senders, "receivers": receivers,
        "windowed": windowed,
        "all_senders": sum(len(p.senders) for p in test.participants),
        "unsent_senders_sent": sum(
            counts["sent1"].get(id(s), 0) - counts["sent0"].get(id(s), 0)
            for p in test.participants if p.connected_at is None for s in p.senders)
        if windowed else 0,
        "skipped": counts["skipped1"] - counts["skipped0"] if windowed else 0,
        "keyframe_requests": sum(s.keyframe_requests for p in test.participants
                                 for s in p.all_senders()),
        "delays_ms": [d / 1e6 for d in test.delays[:counts.get("delays", 0)]],
        "loop_lag_ms": rounded(percentiles([x * 1000 for x in test.loop_lag], (50, 99)), 2),
        "loop_lag_joining_ms": rounded(percentiles(
            [x * 1000 for x in test.lag_before_window], (50, 99)), 2),
        "cpu_percent": 100 * cpu_seconds / max(wall, 1e-9),
        "gc": test.collector.full_collections(),
        # The C receive thread's counters (pump.py), None when sockets were read by asyncio.
        "receive_thread": test.pump_stats,
        "window_cpu_percent": 100 * counts.get("loadgen_cpu", 0.0) if test.window else None,
        "window": None if test.window is None else {
            "starts_at_s": round(test.window[0], 2), "seconds": round(test.window[1], 2)},
        "samples": {name: {"bitrate_kbps": round(s.bitrate / 1000, 1),
                           "packets_per_second": round(s.packets_per_second, 1)}
                    for name, s in test.samples.items()},
        "local_address": test.local_address,
        "notes": list(test.notes),
    }


def _collections(per_process: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Full collections summed over the processes, with the longest one of any."""
    known = [c for c in per_process if c]
    return {"count": sum(c["count"] for c in known),
            "max_ms": max((c["max_ms"] for c in known), default=0.0),
            "total_ms": round(sum(c["total_ms"] for c in known), 1),
            "freezes": sum(c["freezes"] for c in known)}


def _receive_threads(per_process: list[dict[str, int] | None]) -> dict[str, int] | None:
    """The C receive threads' counters summed; None when every process read with asyncio."""
    known = [c for c in per_process if c]
    if not known:
        return None
    return {name: sum(c[name] for c in known) for name in ("datagrams", "dropped", "wakes")}


def merge_report(config: LoadConfig, raws: list[dict[str, Any]],
                 server: dict[str, Any] | None) -> LoadReport:
    """One report from one process's figures or several workers' (`raw_figures`).

    CPU adds up over the processes; loop lag is the worst process's (one
    lagging loop is enough to distort what its participants measure).
    """
    people = [p for raw in raws for p in raw["participants"]]
    joined = [p for p in people if p["joined"]]
    failures = Counter(p["failure"].split(":", 1)[0] for p in people if p["failure"])
    examples: dict[str, str] = {}
    for p in people:
        if p["failure"]:
            examples.setdefault(p["failure"].split(":", 1)[0], p["failure"])
    errors: Counter[str] = Counter()
    for p in people:
        errors.update(p["errors"])
    media = media_figures(raws)
    delays_ms = [d for raw in raws for d in raw["delays_ms"]]
    lag, joining_lag = (_worst([raw[name] for raw in raws])
                        for name in ("loop_lag_ms", "loop_lag_joining_ms"))
    window_cpu = [raw["window_cpu_percent"] for raw in raws]
    requested = config.participants
    silent = not any(p["senders"] for p in people)  # --unmuted 0: joins only
    dc_open = sum(1 for p in joined if p.get("dc_open"))
    ok = len(joined) == requested and (silent or (
        media is not None and media["loss"] is not None and media["loss"] <= MAX_OK_LOSS)) \
        and (not config.data_channel or dc_open == len(joined))
    loadgen: dict[str, Any] = {
        "cpu_percent": round(sum(raw["cpu_percent"] for raw in raws), 1),
        "window_cpu_percent": None if None in window_cpu else round(sum(window_cpu), 1),
        # Over the window; before it (joins, settling) apart: that is where it lags most.
        "loop_lag_ms": lag, "loop_lag_joining_ms": joining_lag,
        # Its own full collections over the whole run (the longest is the worst process's):
        # each one stalls its reads and delay stamps (gcpolicy.py).
        "gc_full_collections": _collections([raw.get("gc") for raw in raws]),
        # Participants' sockets read by a C thread per process (pump.py), or by asyncio.
        "receive_thread": _receive_threads([raw.get("receive_thread") for raw in raws]),
        "local_address": raws[0]["local_address"],
        "signaling_errors": dict(errors), "processes": len(raws)}
    if len(raws) > 1:
        loadgen["per_process"] = [
            {"participants": len(raw["participants"]),
             "cpu_percent": round(raw["cpu_percent"], 1),
             "window_cpu_percent": None if raw["window_cpu_percent"] is None
             else round(raw["window_cpu_percent"], 1),
             "loop_lag_ms": raw["loop_lag_ms"],
             "loop_lag_joining_ms": raw["loop_lag_joining_ms"]} for raw in raws]
    windows = [raw["window"] for raw in raws]
    notes = []
    for raw in raws:
        notes.extend(n for n in raw["notes"] if n not in notes)
    return LoadReport(
        ok=ok,
        target=config.ws_url,
        settings={"calls": config.calls, "users_per_call": config.users_per_call,
                  "unmuted": config.unmuted, "screen_sharing": config.screen_sharing,
                  "simulcast": config.simulcast,
                  "video": config.video, "duration_s": config.duration,
                  "join_duration_s": config.join_duration,
                  "delay_sample_every": config.delay_sample_every,
                  "data_channel": config.data_channel,
                  "srtp_profile": config.srtp_profile,
                  "processes": len(raws)},
        participants={"requested": requested, "started": len(people),
                      "joined": len(joined), "failed": sum(failures.values()),
                      "failures": dict(failures), "failure_examples": examples,
                      # With LoadConfig.data_channel: joined participants whose `calls-dc`
                      # opened, and those the server answered a ping on.
                      "data_channels_open": dc_open if config.data_channel else None,
                      "data_channel_pongs": sum(1 for p in joined if p.get("dc_pongs"))
                      if config.data_channel else None},
        join_s=rounded(percentiles(p["join_s"] for p in joined), 3),
        first_media_s=rounded(percentiles(p["first_media_s"] for p in joined
                                          if p["first_media_s"] is not None), 3),
        window=None if None in windows else min(windows, key=lambda w: w["seconds"]),
        media=media,
        delay_ms=None if not delays_ms else {"samples": len(delays_ms),
                                             **rounded(percentiles(delays_ms), 3)},
        server=server,
        loadgen=loadgen,
        samples=raws[0]["samples"],
        notes=notes,
    )


def _worst(figures: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Per percentile, the worst process's figure."""
    present = [f for f in figures if f]
    return {key: max(f[key] for f in present) for key in present[0]} if present else None


def media_figures(raws: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Loss over the steady window, in total, per media label and per receiver and source.

    A receiver expects every sender of its call but itself, across every
    process's figures. With probes set (`LoadConfig.probes_per_call`) only the
    probes count: the others' media may have been dropped on purpose.
    """
    if not raws or not all(raw["windowed"] for raw in raws):
        return None
    senders = [s for raw in raws for s in raw["senders"]]
    by_call: dict[str, list[dict[str, Any]]] = {}
    for s in senders:
        by_call.setdefault(s["call"], []).append(s)
    per_receiver = []
    total_expected = total_received = 0
    pairs = lossy_pairs = 0
    worst = 0.0
    extra = 0
    by_label: dict[str, list[int]] = {}
    measured = [r for raw in raws for r in raw["receivers"] if r.get("probe", True)]
    for receiver in measured:
        got = receiver["got"]
        expected = received = 0
        sources: dict[str, list[int]] = {}
        for sender in by_call.get(receiver["call"], []):
            if sender["session_id"] == receiver["session_id"]:
                continue
            want = sender["sent"]
            have = got.get((sender["session_id"], sender["label"]), 0)
            if want <= 0:
                continue
            pairs += 1
            pair_loss = max(0.0, 1 - have / want)
            worst = max(worst, pair_loss)
            lossy_pairs += pair_loss > 0.01
            expected += want
            received += min(have, want)
            extra += max(0, have - want)
            sources[f"{sender['user']}/{sender['label']}"] = [want, have]
            totals = by_label.setdefault(sender["label"], [0, 0])
            totals[0] += want
            totals[1] += min(have, want)
        total_expected += expected
        total_received += received
        per_receiver.append({"user": receiver["user"], "call": receiver["call"],
                             "expected": expected, "received": received,
                             "loss": round(1 - received / expected, 5) if expected else None,
                             "sources": sources})
    sent = (sum(s["sent"] for s in senders)
            + sum(raw["unsent_senders_sent"] for raw in raws))
    return {
        "senders": sum(raw["all_senders"] for raw in raws), "packets_sent": sent,
        "expected": total_expected, "received": total_received,
        "loss": round(1 - total_received / total_expected, 5) if total_expected else None,
        # Receivers measured: every one, or the probes when a bench set probes_per_call.
        "receivers_measured": len(measured),
        "pairs": pairs, "pairs_over_1pct_loss": lossy_pairs, "worst_pair_loss": round(worst, 5),
        # More than was sent in the window: in flight when it opened, or duplicates.
        "received_beyond_expected": extra,
        "frames_skipped_by_generator": sum(raw["skipped"] for raw in raws),
        "keyframe_requests": sum(raw["keyframe_requests"] for raw in raws),
        "by_label": {label: {"expected": e, "received": r,
                             "loss": round(1 - r / e, 5) if e else None}
                     for label, (e, r) in sorted(by_label.items())},
        "per_receiver": per_receiver,
    }
