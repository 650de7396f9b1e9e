"""The join storm: N participants join one call at 25/s; the server's work per join.

The deployment guide's headline row is 1 call x 1000 participants, 2 unmuted,
joining at 25 per second (bench/run_all.py's pacing). What must hold for it is
that a join costs the server work linear in the call's size: one `user_joined`
event to each of the N others (inherent: every client shows the roster), but
O(1) server offers, O(1) forwarding-plan rebuilds and O(1) rewiring per join.
Anything growing faster makes the storm fall behind at some N and never recover.

For each size this script starts `callsctl serve` on loopback, runs the load
generator (callsctl_sfu.client.loadgen) in this process, and reads:

- the server's CPU seconds (its CPU-time clock; not wall time,
  the machine may be shared) from the first join to the moment every
  participant has connected or failed;
- the server's control-plane counters (GET /stats "control": events sent,
  offers sent, rewires, route and plan rebuilds) over the same span;
- from the load generator: join time, failures, `session_removed` errors and
  the forwarding delay in the steady window.

Per-join figures are the span's totals divided by N. CPU per join also pays
for forwarding to the receivers already joined (2 unmuted x 50 packets/s to
each): `--unmuted 0` isolates the control plane.

`--first-join` adds what the first call pays: the server loads its media stack
(aiortc, PyAV...) when the first /ws connection arrives (rtc/medialoader.py),
in a worker thread. It lists the join time (join sent to media connected) of
the first participant and the p50/p99/max over all, and how long the server
took to answer GET /readyz, asked every 20 ms from the first join until every
participant connected: the event loop's responsiveness while the stack
loads. `--server-repo DIR` runs another checkout's server (the commit a change
started from) with this interpreter, for a before/after pair of one command.

    python bench/join_storm.py --sizes 100 200 500 1000            # printed
    python bench/join_storm.py --sizes 100 200 500 1000 --write bench/RESULTS.md
    python bench/join_storm.py --sizes 1000 --profile /tmp/storm  # py-spy of the joins
    python bench/join_storm.py --sizes 200 --first-join --label "first call: after"
    python bench/join_storm.py --sizes 200 --first-join --server-repo /tmp/base \
        --label "first call: before"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402
from forwarding import write_section  # noqa: E402
from run_all import (  # noqa: E402
    JOIN_RATE,
    machine,
    one_call_config,
    run_queue_wait,
    sessions_removed,
    start_callsctl_retrying,
    start_py_spy,
    wait_py_spy,
)

from callsctl_sfu.client.loadgen import LoadTest, proc_cpu_seconds  # noqa: E402

COUNTERS = ("events_sent", "offers_sent", "sources_changed", "rewires", "invalidations",
            "route_builds", "plan_builds", "targets_computed")
POLL_S = 0.25
PROBE_S = 0.02  # --first-join: GET /readyz this often while the storm joins


async def _probe_ready(http: aiohttp.ClientSession, base: str, out: list[float]) -> None:
    """Time GET /readyz until cancelled: how long the server's loop takes to answer."""
    while True:
        started = time.monotonic()
        async with http.get(f"{base}/readyz") as response:
            await response.read()
        out.append(time.monotonic() - started)
        await asyncio.sleep(PROBE_S)


def _ranked(values: list[float]) -> dict[str, float] | None:
    """p50, p99 and max (nearest rank), in ms."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = {p: ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] for p in (50, 99)}
    return {"p50": round(1000 * rank[50], 1), "p99": round(1000 * rank[99], 1),
            "max": round(1000 * ordered[-1], 1)}


async def _control(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """GET /stats `control`, with the collector's full-collection pauses as `gen2` and the
    publishers' packets so far (`rtp_in`), of them handled on the event loop (`rtp_in_python`)."""
    async with http.get(f"{base}/stats") as response:
        body = await response.json()
    gc = body.get("gc") or {}
    forwarding = body.get("forwarding") or {}
    return {**(body.get("control") or {}),
            "gen2": (gc.get("pauses") or {}).get("gen2") or {},
            "gc_freezes": gc.get("freezes"),
            # Publishers' packets the event loop handled (the rest the C ingress did):
            # each one's fan-out then ran on the loop, beside the joins.
            "rtp_in_python": forwarding.get("rtp_in", 0) - forwarding.get("rtp_in_c", 0),
            "rtp_in": forwarding.get("rtp_in", 0)}


async def storm(size: int, unmuted: int, window: float, workdir: Path,
                profile: Path | None, first_join: bool = False) -> dict[str, Any]:
    """One server, one storm of `size` joins; the figures of its join span."""
    running = await start_callsctl_retrying(workdir)
    spy: asyncio.subprocess.Process | None = None
    probes: list[float] = []
    probe: asyncio.Task[None] | None = None
    try:
        pid = running.process.pid
        test = LoadTest(one_call_config(running, size, unmuted, window, prefix="storm",
                                        settle_s=15))
        async with aiohttp.ClientSession() as http:
            before = await _control(http, running.base_url)
            cpu_before = proc_cpu_seconds(pid)
            waited_before = run_queue_wait(pid)
            if profile is not None:
                spy = await start_py_spy(pid, profile / f"storm-{size}.txt", 50,
                                         size / JOIN_RATE + 5)
            started = time.monotonic()
            if first_join:
                probe = asyncio.create_task(_probe_ready(http, running.base_url, probes))

            async def span_so_far() -> dict[str, Any]:
                return {"seconds": time.monotonic() - started,
                        "cpu": proc_cpu_seconds(pid) - cpu_before,
                        "waited": run_queue_wait(pid) - waited_before,
                        "control": await _control(http, running.base_url)}

            run = asyncio.create_task(test.run())
            span: dict[str, Any] | None = None
            while not run.done():
                await asyncio.sleep(POLL_S)
                progress = test.progress()
                if span is None and progress.connected + progress.failed >= size:
                    span = await span_so_far()
                    if probe is not None:
                        probe.cancel()
            report = (await run).to_dict()
            if span is None:  # some participant never finished: the span is the whole run
                span = await span_so_far()
    finally:
        if probe is not None:
            probe.cancel()
        await wait_py_spy(spy)
        await running.stop()
    removed = sessions_removed(test)
    counts = {name: span["control"].get(name, 0) - before.get(name, 0) for name in COUNTERS}
    return {
        "size": size, "unmuted": unmuted,
        "joined": report["participants"]["joined"], "failed": report["participants"]["failed"],
        "session_removed": removed,
        "join_span_s": round(span["seconds"], 1),
        "server_cpu_s": round(span["cpu"], 2),
        "cpu_ms_per_join": round(1000 * span["cpu"] / size, 2),
        # Runnable but not running (/proc/<pid>/schedstat): how much the machine's
        # other work delayed the server during the span.
        "server_waited_s": round(span["waited"], 1),
        "per_join": {name: round(value / size, 2) for name, value in counts.items()},
        "removals": span["control"].get("removals", {}),
        # The server's full collections from its start to the span's end (gcpolicy.py):
        # each one holds the GIL the reader thread decides with, a gap in every call's media.
        "gen2_pauses": span["control"].get("gen2"),
        "gc_freezes": span["control"].get("gc_freezes"),
        "rtp_in_python": span["control"].get("rtp_in_python"),
        "rtp_in": span["control"].get("rtp_in"),
        "loadgen": {k: report["loadgen"].get(k) for k in ("cpu_percent", "loop_lag_ms",
                                                               "gc_full_collections")},
        "counts": counts,
        "delay_ms": report["delay_ms"],
        "notes": report["notes"],
        **({"first_join_ms": _first_join_ms(test), "join_ms": _ranked(
            [p.connected_at - p.started_at for p in test.participants
             if p.connected_at is not None]),
            "readyz_ms": _ranked(probes), "readyz_probes": len(probes)} if first_join else {}),
    }


def _first_join_ms(test: LoadTest) -> float | None:
    """Join time of the participant that started first (join sent to media connected)."""
    started = [p for p in test.participants if p.started_at]
    if not started:
        return None
    first = min(started, key=lambda p: p.started_at)
    return None if first.connected_at is None else \
        round(1000 * (first.connected_at - first.started_at), 1)


def render_first_join(results: list[dict[str, Any]], command: str, host: str,
                      label: str) -> str:
    lines = [f"### First call (media stack loaded on demand): {label}", "",
             f"Command: `{command}` on {host}.", "",
             "| N | joined | failed | removed | first join ms | join ms p50 / p99 / max "
             "| GET /readyz ms p50 / p99 / max (probes) | server CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        join, ready = r.get("join_ms") or {}, r.get("readyz_ms") or {}
        lines.append(
            f"| {r['size']} | {r['joined']} | {r['failed']} | {r['session_removed']} | "
            f"{r.get('first_join_ms')} | {join.get('p50')} / {join.get('p99')} / "
            f"{join.get('max')} | {ready.get('p50')} / {ready.get('p99')} / {ready.get('max')} "
            f"({r.get('readyz_probes')}) | {r['server_cpu_s']} |")
    return "\n".join(lines)


def _pauses(result: dict[str, Any]) -> str:
    gen2 = result.get("gen2_pauses") or {}
    if not gen2:
        return "-"
    return f"{gen2['count']}, {gen2['max_ms']:.0f}, {gen2['total_ms']:.0f}"


def render(results: list[dict[str, Any]], command: str, host: str, label: str) -> str:
    unmuted = results[0]["unmuted"] if results else 0
    lines = [
        f"### Join storm, {unmuted} unmuted: {label}",
        "",
        f"Command: `{command}` on {host}.",
        "",
        "| N | unmuted | joined | failed | removed | span s | server CPU s (waited s) "
        "| CPU ms/join | events/join "
        "| events/join/N | offers/join | rewires/join | route builds/join | plan builds/join "
        "| targets/join | delay p50/p99 ms | full collections: count, longest, total ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per = r["per_join"]
        delay = r["delay_ms"] or {}
        lines.append(
            f"| {r['size']} | {r['unmuted']} | {r['joined']} | {r['failed']} | "
            f"{r['session_removed']} | {r['join_span_s']} | {r['server_cpu_s']} "
            f"({r.get('server_waited_s', '-')}) | {r['cpu_ms_per_join']} | "
            f"{per['events_sent']} | {per['events_sent'] / r['size']:.2f} | "
            f"{per['offers_sent']} | {per['rewires']} | {per['route_builds']} | "
            f"{per['plan_builds']} | {per['targets_computed']} | "
            f"{delay.get('p50', '-')}/{delay.get('p99', '-')} | {_pauses(r)} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    results = []
    if args.from_json:  # stored lines of an earlier run (e.g. of an older commit), rendered
        results = [json.loads(line) for line in args.from_json.read_text().splitlines()
                   if line.startswith("{")]
        command, host = args.command or "(not stated)", args.host or machine()
    else:
        with tempfile.TemporaryDirectory(prefix="join-storm-") as tmp:
            for size in args.sizes:
                result = await storm(size, args.unmuted, args.window, Path(tmp), args.profile,
                                     args.first_join)
                print(json.dumps(result), flush=True)
                results.append(result)
        command = "python bench/join_storm.py " + " ".join(
            a for a in sys.argv[1:] if a != "--write" and not a.endswith(".md"))
        host = machine()
    body = render(results, command, host, args.label)
    if args.first_join:
        body = render_first_join(results, command, host, args.label)
    print(body)
    if args.write:
        key = args.label.split()[0].lower().strip(":,")
        if args.first_join:  # "first call: before" -> first-call-before
            key = "-".join(w for w in args.label.lower().replace(":", " ").split()
                           if w.isalnum())
        write_section(args.write, f"join-storm-{key}-unmuted-{results[0]['unmuted']}", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 500, 1000],
                        help="participants per storm (default 100 200 500 1000)")
    parser.add_argument("--unmuted", type=int, default=2, help="publishers (default 2)")
    parser.add_argument("--window", type=float, default=5.0,
                        help="steady window after the storm, seconds (default 5)")
    parser.add_argument("--profile", type=Path,
                        help="record py-spy raw stacks of the server during the joins here")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    parser.add_argument("--label", default="after", help="the section's name (default after)")
    parser.add_argument("--from-json", type=Path,
                        help="render the JSON lines an earlier run printed instead of running")
    parser.add_argument("--command", help="with --from-json: the command that made them")
    parser.add_argument("--host", help="with --from-json: the machine they were made on")
    parser.add_argument("--first-join", action="store_true",
                        help="also the first participant's join time, join p50/p99/max and "
                             "GET /readyz latency during the storm (the media stack's load)")
    parser.add_argument("--server-repo", type=Path,
                        help="run this other checkout's server (with this interpreter)")
    args = parser.parse_args()
    if args.server_repo is not None:  # run_all starts the server in its REPO directory
        if not (args.server_repo / "callsctl" / "__main__.py").exists():
            parser.error(f"--server-repo {args.server_repo}: not a callsctl checkout")
        run_all.REPO = args.server_repo.resolve()
    if any(not 1 <= size <= 1000 for size in args.sizes):
        parser.error("--sizes must be 1..1000 (one load generator's limit)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
