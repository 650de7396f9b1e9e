"""The saturation point of one server configuration: step the load up until it fails the budget.

A configuration is a server (`callsctl serve` with its C fan-out, or with its
Python engine) and the CPUs it is pinned to (`--server-cpus 0` = one core).
The load is one call of N participants, 2 unmuted (the run_all.py scenarios'
shape), N stepping through 50, 100, 200, 300, 500, 700, 1000 by default, with
run_all.py's join pacing (25 joins/s), window and meter: each step is
run_all.measure, imported, not copied.

A step passes when every participant joined, loss over the window is under
0.1 % and the forwarding delay p99 under 20 ms. Stepping stops at the first
failing step; the saturation point is the largest passing N and the packets/s
the server forwarded there. Every step is bounded in time (start, joins,
settling, the window, closing, and a margin); a step over its limit fails.
The machine these figures come from is shared: another job can stall the
server for tens of milliseconds, which alone breaks a 20 ms p99 in a short
window. So a failing step runs once more (`--retries`, default 1) and fails
only if every attempt failed; every attempt is a row of the table.

By default the load generator is one Python thread in this process: its own
CPU (% of one core over the window) is in every row. Near 100 % it, not the
server, limits the step, and the saturation point is then a lower bound.
`--loadgen-processes N` (run_all.py's option, passed through) splits the
participants over N worker processes (0: one per usable CPU); the row's
generator CPU is then the sum of the workers' and its loop lag the worst
worker's. The default stays 1 so the recorded figures remain comparable.

    python bench/saturation.py --server-cpus 0 --loadgen-cpus 1 --max-n 500 --window 6
    python bench/saturation.py --compare-cpus --json
    python bench/saturation.py --server-cpus 0 --loadgen-cpus 1 --loadgen-processes 2

`--sink`: every step with the sink meter (bench/sink_meter.py, run_all.py
--sink): the server's copies are counted and dropped at the loopback device
except to a few probe receivers per call (a tenth, 2 to 8), so neither the
receivers' socket delivery nor the load generator's reading of 100k+
packets/s takes the server's CPU. Loss is then the meter's over every receiver (forwarded /
(incoming x receivers)) and the probes' own; a step passes only if both are
under 0.1 % and the meter's own checks hold. Steps may then go up to 3000
participants (the load generator reads only the probes' packets).
`--call-size N`: each step is N-participant calls (steps must be multiples of
N), e.g. `--call-size 50 --steps 200,400,...` for K x 50.

    python bench/saturation.py --sink --server-cpus 0 --loadgen-cpus 1 \
        --steps 500,700,1000,1500,2000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from forwarding import write_section  # noqa: E402
from run_all import (  # noqa: E402
    PYTHON_ENGINE,
    START_TIMEOUT_S,
    Cpus,
    Shape,
    add_cpu_options,
    add_sink_option,
    affinity_of,
    apply_cpu_options,
    check_sink,
    cpu_list,
    describe_cpus,
    machine,
    measure,
    parse_cpus,
    pin_process,
    sample_every,
    sigterm_as_interrupt,
)

STEPS = (50, 100, 200, 300, 500, 700, 1000)
MAX_STEP = 1000  # the load generator's limit (delivered mode)
MAX_STEP_SINK = 3000  # with the sink meter it reads only the probes' packets
UNMUTED = 2  # speakers per call (--unmuted; 2 as in every recorded ladder)
MAX_LOSS = 0.001  # under 0.1 %
MAX_DELAY_P99_MS = 20.0
LOADGEN_BOUND_PERCENT = 90.0  # the generator's thread near a full core: it may be the limit
# The server's main thread runnable but not running this share of the window: other
# load on its CPUs, said next to a failure (the step may fail for that, not for its load).
CONTENDED_WAIT_PERCENT = 10.0
SYSTEMS = {"callsctl": "callsctl", "python": PYTHON_ENGINE}
COMPARE = ((0,), (0, 1))
# --compare-cpus without --loadgen-cpus: where the load generator runs beside each (by cores).
COMPARE_LOADGEN = {1: (1,), 2: (0, 1)}


def step_limit(participants: int, window: float) -> float:
    """Seconds one step may take: start, joins at 25/s, settling, the window, closing, margin.

    The same terms as run_all.measure_running's LoadConfig (join + 15 + window + 5
    is the load generator's own hard cap), plus the server's start and two
    closing timeouts.
    """
    join = max(1.0, participants / 25)
    return START_TIMEOUT_S + 1 + (join + 15 + window + 5) + 2 * 15 + 20


def verdict(result: dict[str, Any], participants: int) -> list[str]:
    """Why a step failed the budget; empty when it passed.

    In sink mode `loss` is the meter's (every receiver) and `probe_loss` the
    probes' own: both must be under budget, and the meter's checks must hold.
    """
    reasons = []
    meter = result.get("meter")
    if meter is not None:
        reasons += [f"meter: {problem}" for problem in meter.get("problems", [])]
        probe_loss = result.get("probe_loss")
        if probe_loss is not None and probe_loss >= MAX_LOSS:
            reasons.append(f"probe loss {100 * probe_loss:.2f} % >= {100 * MAX_LOSS:g} %")
    if result["joined"] < participants:
        # One example per stage that failed (the load generator's report), so a
        # failed step says where the joins stopped, not only how many.
        stages = "; ".join((result.get("failures") or {}).values())
        reasons.append(f"{participants - result['joined']} did not join"
                       + (f" ({stages})" if stages else ""))
    loss = result.get("loss")
    if loss is None:
        reasons.append("no loss figure (no media measured)")
    elif loss >= MAX_LOSS:
        reasons.append(f"loss {100 * loss:.2f} % >= {100 * MAX_LOSS:g} %")
    p99 = (result.get("delay_ms") or {}).get("p99")
    if p99 is None:
        reasons.append("no delay figure")
    elif p99 >= MAX_DELAY_P99_MS:
        reasons.append(f"delay p99 {p99:.1f} ms >= {MAX_DELAY_P99_MS:g} ms")
    return reasons


def shape_of(participants: int, call_size: int | None) -> Shape:
    """The step's load: one call of N, or N / call_size calls of call_size."""
    if call_size is None:
        return Shape(1, participants, UNMUTED)
    return Shape(participants // call_size, call_size, UNMUTED)


async def run_step(system: str, participants: int, cpus: Cpus, window: float,
                   slices: int, sink: bool = False,
                   call_size: int | None = None) -> dict[str, Any]:
    """One step: run_all.measure under its time limit; the row the tables show."""
    load_before = os.getloadavg()[0]
    limit = step_limit(participants, window)
    started = time.monotonic()
    row: dict[str, Any] = {"participants": participants, "limit_s": round(limit)}
    with tempfile.TemporaryDirectory(prefix="callsctl-saturation-") as tmp:
        try:
            result = await asyncio.wait_for(
                measure(SYSTEMS[system], shape_of(participants, call_size), window, slices,
                        Path(tmp), cpus, sample_every(participants), sink=sink), limit)
        except TimeoutError:
            row.update(passed=False, reasons=[f"over its time limit of {limit:.0f} s"])
            result = None
        except (RuntimeError, OSError) as exc:
            row.update(passed=False, reasons=[f"{type(exc).__name__}: {str(exc)[:160]}"])
            result = None
    row["seconds"] = round(time.monotonic() - started, 1)
    row["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if result is None:
        return row
    cpu = result["cpu"]
    reasons = verdict(result, participants)
    loadgen = (result.get("loadgen") or {}).get("window_cpu_percent")
    lag = ((result.get("loadgen") or {}).get("loop_lag_ms") or {}).get("p99")
    if reasons and lag is not None and lag >= MAX_DELAY_P99_MS:
        reasons.append(f"the load generator's own event loop lagged (p99 {lag:.0f} ms)")
    waited = cpu.get("server_wait_percent")
    if reasons and waited is not None and waited >= CONTENDED_WAIT_PERCENT:
        reasons.append(f"the server waited for a CPU {waited:.0f} % of the window")
    row.update(
        delay_p50_ms=(result.get("delay_ms") or {}).get("p50"), loadgen_lag_p99_ms=lag,
        passed=not reasons, reasons=reasons, joined=result["joined"],
        packets_per_s=cpu.get("packets_per_s"), counter=cpu.get("counter"),
        loss=result.get("loss"), delay_p99_ms=(result.get("delay_ms") or {}).get("p99"),
        probe_loss=result.get("probe_loss"), meter=result.get("meter"),
        server_cpu_percent=cpu.get("cpu_percent"), us_per_packet=cpu.get("us_per_packet"),
        server_wait_percent=cpu.get("server_wait_percent"),
        ksoftirqd_percent=cpu.get("ksoftirqd_percent"), threads=cpu.get("threads_percent"),
        loadgen_cpu_percent=loadgen,
        # audio the server skipped for waiting too long in its socket: in the joins, in the window
        dropped_late_before_window=cpu.get("dropped_late_before_window"),
        dropped_late_in_window=cpu.get("dropped_late_in_window"),
        # how long the forwarded RTP waited in the server's socket (calls/queuedelay.py):
        # a delay failure with a short wait there was added outside the server's reading
        server_queue_p50_ms=cpu.get("server_queue_p50_ms"),
        server_queue_p99_ms=cpu.get("server_queue_p99_ms"),
        # the server's own collections in the window (each holds the GIL its reader needs)
        server_gc_in_window=cpu.get("server_gc_in_window"),
        # its own full collections (gcpolicy.py): each one stalls its reads and delay stamps
        loadgen_gc=(result.get("loadgen") or {}).get("gc_full_collections"),
        loadgen_bound=loadgen is not None and loadgen >= LOADGEN_BOUND_PERCENT,
        cpus=result.get("cpus"), delay_sample_every=result.get("delay_sample_every"),
        # the joins' durations and the load generator's notes: why a window did not open
        join_s=result.get("join_s"), notes=result.get("notes"))
    return row


async def ladder(system: str, cpus: Cpus, steps: list[int], window: float,
                 slices: int, retries: int = 1, sink: bool = False,
                 call_size: int | None = None) -> dict[str, Any]:
    """Step up until the first failing step; the saturation point of this configuration."""
    rows: list[dict[str, Any]] = []
    for participants in steps:
        for attempt in range(1 + retries):
            print(f"[saturation] {system} on {describe_cpus(cpus)}: "
                  f"{shape_of(participants, call_size).describe()}"
                  f"{f' (attempt {attempt + 1})' if attempt else ''}", file=sys.stderr)
            row = await run_step(system, participants, cpus, window, slices, sink, call_size)
            row["attempt"] = attempt + 1
            rows.append(row)
            if row["passed"]:
                break
        if not rows[-1]["passed"]:
            break
    passing = [r for r in rows if r["passed"]]
    point = passing[-1] if passing else None
    return {
        "system": system, "server_cpus": cpu_list(cpus), "cores": describe_cpus(cpus),
        "loadgen_cpus": affinity_of(os.getpid()), "steps": rows,
        "saturation": None if point is None else {
            "participants": point["participants"], "packets_per_s": point["packets_per_s"],
            # Every step passed: the point is at least the last step, not the limit.
            "capped_by_steps": rows[-1]["passed"] and rows[-1]["participants"] == steps[-1],
            "loadgen_bound": any(r.get("loadgen_bound") for r in rows)},
    }


def ratio(configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """2 cores against 1: forwarded packets/s at the two saturation points."""
    if len(configs) != 2:
        return None
    one, two = (c["saturation"] for c in configs)
    if not one or not two or not one["packets_per_s"] or not two["packets_per_s"]:
        return {"packets_per_s": None, "participants": None}
    return {"packets_per_s": round(two["packets_per_s"] / one["packets_per_s"], 2),
            "participants": round(two["participants"] / one["participants"], 2)}


def contention_caveat(configs: list[dict[str, Any]]) -> str:
    """A sentence when the two ladders ran under different machine load, else "".

    The ratio compares two ladders run one after the other; if other jobs
    loaded the machine more during one of them, or a failure came with the
    server waiting for its CPU, the ratio says more about the machine.
    """
    loads = []
    for config in configs:
        values = [v for row in config["steps"] for v in row["load_average"]]
        loads.append(sum(values) / len(values) if values else 0.0)
    contended = any("waited for a CPU" in reason or "lagged" in reason
                    for config in configs for row in config["steps"]
                    for reason in row.get("reasons", []))
    if abs(loads[0] - loads[-1]) < 1.0 and not contended:
        return ""
    return (f" Caution: the machine's mean load average was {loads[0]:.1f} during the 1-core "
            f"ladder and {loads[-1]:.1f} during the 2-core one"
            + (", and failing steps came with the server waiting for a CPU or the load "
               "generator lagging" if contended else "")
            + ": this ratio measures the machine's other load as much as the server.")


def _cell(value: Any, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def render(report: dict[str, Any]) -> str:
    systems = {c["system"] for c in report["configs"]}
    name = " / ".join("callsctl serve" if s == "callsctl" else
                      "callsctl serve, Python engine" for s in sorted(systems))
    size = report.get("call_size")
    load = f"1 call x N, {UNMUTED} unmuted" if size is None else \
        f"N participants in calls of {size}, {UNMUTED} unmuted each"
    mode = ", sink mode" if report.get("sink") else ""
    lines = [
        f"## Saturation point: {name}, {load}{mode} (bench/saturation.py)",
        "",
        f"Command: `{report['command']}`  ",
        f"Measured: {report['measured_at']} on {report['host']}. The machine is shared with "
        "other engineers' jobs and busy: each row carries the load average before/after it; "
        "treat single figures as rough.  ",
        f"Budget: every participant joined, loss < {100 * MAX_LOSS:g} %, forwarding delay p99 "
        f"< {MAX_DELAY_P99_MS:g} ms. Window {report['window_s']:g} s per step; join pacing "
        "25/s (run_all.py's); a failing step runs again (--retries) and stepping stops at the "
        "first step that failed every attempt.",
        "",
        "On this 2-core machine \"2 cores for the server\" means the load generator runs on the "
        "same 2 cores (it has nowhere else to go), so a 2-core figure is a lower bound of what "
        "the server does with 2 cores of its own. With 1 core the load generator can have the "
        "other one (`--loadgen-cpus`).",
        "",
    ]
    if report.get("sink"):
        lines += [
            "Sink mode (bench/sink_meter.py): the server's SRTP copies are counted and dropped "
            "at the loopback device's egress except to a few probe receivers per call (a tenth "
            "of it, 2 to 8); loss is the "
            "meter's over every receiver (forwarded / (incoming x receivers)), with the "
            "probes' own in brackets; delay is the probes'. The receivers' socket delivery "
            "and the load generator's reading of every copy are no longer on the machine's "
            "CPUs, so on 2 cores the load generator takes only what joining and sending cost.",
            "",
        ]
    lines += [
        "| server | cores | N | joined | packets/s forwarded | loss | delay p50 / p99 "
        "(in the server's socket: p99) | server CPU | server waited "
        "| load generator CPU (loop lag p99) | load avg | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for config in report["configs"]:
        server = "callsctl" if config["system"] == "callsctl" else "callsctl (Python engine)"
        cores = f"{config['cores']}; load generator on CPU {config['loadgen_cpus']}"
        for row in config["steps"]:
            verdict_text = "pass" if row["passed"] else "FAIL: " + "; ".join(row["reasons"])
            if row.get("loadgen_bound"):
                verdict_text += " (load generator near a full core)"
            attempt = f" (attempt {row['attempt']})" if row.get("attempt", 1) > 1 else ""
            cells = [server, cores, f"{row['participants']}{attempt}",
                     _cell(row.get("joined"), "d"), _cell(row.get("packets_per_s"), ",.0f"),
                     ("n/a" if row.get("loss") is None else f"{100 * row['loss']:.2f} %")
                     + ("" if row.get("probe_loss") is None
                        else f" ({100 * row['probe_loss']:.2f} %)"),
                     f"{_cell(row.get('delay_p50_ms'), '.1f')} / "
                     f"{_cell(row.get('delay_p99_ms'), '.1f', ' ms')}"
                     + ("" if row.get("server_queue_p99_ms") is None else
                        f" ({row['server_queue_p99_ms']:.1f} ms)"),
                     _cell(row.get("server_cpu_percent"), ".0f", " %")
                     + ("" if not row.get("threads") else
                        f" (main {row['threads']['main']:.0f} %"
                        + "".join(f", {v:.0f}" for v in row["threads"]["others"]) + ")")
                     + ("" if not row.get("ksoftirqd_percent") else
                        f" +{row['ksoftirqd_percent']:.0f} % ksoftirqd"),
                     _cell(row.get("server_wait_percent"), ".0f", " %"),
                     f"{_cell(row.get('loadgen_cpu_percent'), '.0f', ' %')} "
                     f"({_cell(row.get('loadgen_lag_p99_ms'), '.0f', ' ms')})",
                     "{:g}/{:g}".format(*row["load_average"]), verdict_text]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for config in report["configs"]:
        point = config["saturation"]
        head = f"- Saturation point, {config['system']} on {config['cores']}: "
        if point is None:
            lines.append(head + "none (the first step already failed).")
            continue
        size = report.get("call_size")
        text = (f"{shape_of(point['participants'], size).describe()} "
                f"({_cell(point['packets_per_s'], ',.0f')} packets/s forwarded)")
        if point["capped_by_steps"]:
            text = "at least " + text + ": every step passed, the ladder ended first"
        if point["loadgen_bound"]:
            text += "; the load generator was near a full core in some step, so this is a " \
                    "lower bound of the server's"
        lines.append(head + text + ".")
    if report.get("ratio"):
        r = report["ratio"]
        if r["packets_per_s"] is None:
            lines.append("- 2 cores / 1 core: n/a (a configuration has no saturation point).")
        else:
            capped = report["configs"][-1]["saturation"]["capped_by_steps"]
            lines.append(f"- 2 cores / 1 core: {'at least ' if capped else ''}"
                         f"{r['packets_per_s']:.2f}x the forwarded "
                         f"packets/s at the saturation point ({r['participants']:.2f}x the "
                         "participants), with the load generator sharing the 2 cores."
                         + contention_caveat(report["configs"]))
    lines += [
        "- Columns: packets/s forwarded = the server's /stats `rtp_forwarded` over the window; "
        "server CPU = its CPU time (all threads) in % of one core, in brackets its main "
        "thread's (event loop and media socket reader) and the busiest others' "
        "(+ the kernel's ksoftirqd "
        "threads' when they worked: softirq work, loopback delivery among it, deferred there "
        "and charged to no process under test); server waited = its main "
        "thread runnable but not running (other load on the machine); load generator CPU = "
        "this process's CPU in % of one core (one Python thread: near 100 % it is the limit).",
    ]
    return "\n".join(lines)


def command_line(argv: list[str]) -> str:
    """The command as typed, without --write and its path (the section says where it is)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--write":
            skip = True
            continue
        if arg.startswith("--write="):
            continue
        out.append(arg)
    return " ".join(["python bench/saturation.py", *out])


def parse_steps(parser: argparse.ArgumentParser, text: str, max_n: int,
                top: int = MAX_STEP) -> list[int]:
    try:
        steps = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--steps {text!r}: use participant counts separated by commas")
    steps = [n for n in steps if n <= max_n]
    if not steps or steps[0] < 3 or steps[-1] > top:
        parser.error(f"--steps: counts 3..{top} (at most --max-n), at least one")
    return steps


async def main_async(args: argparse.Namespace, configs: list[Cpus]) -> dict[str, Any]:
    started = datetime.datetime.now(datetime.UTC)
    results = []
    for cpus in configs:
        if args.compare_cpus and args.loadgen_cpus is None:
            # 1 core: the load generator on the other CPU; 2 cores: on both, as the server.
            pin_process(os.getpid(), COMPARE_LOADGEN[len(cpus or ())])
        results.append(await ladder(args.system, cpus, args.steps, args.window, args.slices,
                                    args.retries, args.sink, args.call_size))
    return {"measured_at": started.strftime("%Y-%m-%d %H:%M UTC"), "host": machine(),
            "sink": args.sink, "call_size": args.call_size,
            "window_s": args.window, "slices": args.slices, "configs": results,
            "ratio": ratio(results) if args.compare_cpus else None}


def main() -> None:
    global UNMUTED
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="callsctl",
                        help="callsctl (C fan-out, the default) or python (CALLSCTL_FAST_PATH=0)")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)),
                        help="participant counts to step through (default %(default)s)")
    parser.add_argument("--max-n", type=int, default=None,
                        help=f"skip steps above this N (default {MAX_STEP}, {MAX_STEP_SINK} "
                             "with --sink)")
    parser.add_argument("--call-size", type=int, default=None, metavar="N",
                        help="each step is calls of N participants (steps multiples of N); "
                             "default: one call")
    parser.add_argument("--unmuted", type=int, default=UNMUTED, metavar="K",
                        help="speakers per call (default %(default)s): more packets per "
                             "participant, for when the load generator cannot hold more "
                             "participants")
    parser.add_argument("--compare-cpus", action="store_true",
                        help="run the ladder on CPU 0, then on CPU 0,1, and print the ratio; "
                             "without --loadgen-cpus the load generator runs on CPU 1, "
                             "then on CPU 0,1")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds of steady state measured per step (default 10)")
    parser.add_argument("--slices", type=int, default=5, help="slices of the window (median)")
    parser.add_argument("--retries", type=int, default=1,
                        help="run a failing step again this many times before it counts as "
                             "failed (default 1: the machine is shared)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    add_sink_option(parser)
    add_cpu_options(parser, loadgen_processes=True)
    args = parser.parse_args()
    top = MAX_STEP_SINK if args.sink else MAX_STEP
    args.max_n = top if args.max_n is None else args.max_n
    if not (3 <= args.window <= 600 and 2 <= args.slices <= 60 and 3 <= args.max_n <= top
            and 0 <= args.retries <= 3):
        parser.error(f"window 3..600 s, slices 2..60, max-n 3..{top}, retries 0..3")
    args.steps = parse_steps(parser, args.steps, args.max_n, top)
    if not 1 <= args.unmuted <= min(args.steps[0], args.call_size or args.steps[0], 50):
        parser.error("--unmuted: 1..50 and at most the smallest call")
    UNMUTED = args.unmuted
    if args.call_size is not None and not (
            2 <= args.call_size <= top and all(n % args.call_size == 0 for n in args.steps)):
        parser.error(f"--call-size: 2..{top}, and every step a multiple of it")
    if args.compare_cpus and args.server_cpus is not None:
        parser.error("--compare-cpus runs CPU 0 and CPU 0,1 itself; drop --server-cpus")
    apply_cpu_options(parser, args)
    check_sink(parser, args.sink)
    sigterm_as_interrupt()
    if args.compare_cpus:
        try:
            configs: list[Cpus] = [parse_cpus(cpu_list(c)) for c in COMPARE]
        except ValueError as exc:
            parser.error(f"--compare-cpus needs CPU 0 and 1: {exc}")
    else:
        configs = [args.server_cpus if args.server_cpus is not None else (0,)]
    report = asyncio.run(main_async(args, configs))
    report["command"] = command_line(sys.argv[1:])
    if args.json:
        print(json.dumps(report, indent=1))
    body = render(report)
    if not args.json:
        print(body)
    if args.write:
        key = "-".join(["saturation", args.system,
                        "compare" if args.compare_cpus else
                        "cpus" + cpu_list(configs[0]).replace(",", "+")]
                       + ([f"calls{args.call_size}"] if args.call_size else [])
                       + ([f"u{args.unmuted}"] if args.unmuted != 2 else [])
                       + (["sink"] if args.sink else []))
        write_section(args.write, key, body)


if __name__ == "__main__":
    main()
