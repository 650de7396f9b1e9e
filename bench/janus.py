"""Janus (VideoRoom) beside callsctl: the same scenarios, load generator and meter, in one run.

A real, unmodified SFU a user could pick instead: Janus from the Debian
package (`apt-get install -y janus`), started by this script with its own
generated config folder (bench/janus_adapter.py: VideoRoom and the WebSockets
transport only, ICE on one local address, no STUN/TURN, no event handlers).
The load generator drives it through `JanusParticipant`, which speaks the
Janus WebSocket API but sends and counts media exactly as callsctl's
participants do. For each scenario, in the same run, `callsctl serve` runs
the same load, so the ratios are within one run.

The meter is bench/run_all.py's: server CPU (the CPU time of the whole
process, all threads, from its CPU-time clock) per forwarded packet over slices
of a steady window, median slice. Janus has no forwarded-packets counter, so
for Janus "forwarded" is the packets its receivers got (its loss is next to
it); callsctl's figure uses its own /stats counter, as in run_all.py. Memory
per session = (RSS at the end of the window - idle RSS) / participants.

The camera and screen-share scenarios (1x50-screen, 1x10-av) publish VP8
through VideoRoom the way the load generator publishes to callsctl: the same
pre-encoded VP8 samples, the screen share as simulcast layers `l` and `h` in
1x10-av. `--server-cpus` pins Janus (and callsctl serve) with taskset, as in
run_all.py.

    python bench/janus.py --only 1x10 1x50 --write bench/RESULTS.md
    python bench/janus.py --only 1x200 --window 10 --json
    python bench/janus.py --only 1x50-screen 1x10-av --server-cpus 0 --loadgen-cpus 1
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from forwarding import write_section  # noqa: E402
from janus_adapter import (  # noqa: E402
    JanusParticipant,
    JanusUnavailable,
    janus_version,
    start_janus,
)
from run_all import (  # noqa: E402
    SCENARIOS,
    Cpus,
    Running,
    Shape,
    add_cpu_options,
    affinity_of,
    apply_cpu_options,
    cores_text,
    cpu_list,
    loadgen_cpu,
    machine,
    measure,
    measure_running,
    pinned,
    sample_every,
)

KEYS = ("1x10", "1x50", "1x200", "1x500", "10x10", "1x50-screen", "1x10-av")
SECTION = "janus-comparison"
AUDIO_KEYS = {"1x10", "1x50", "1x200", "1x500", "10x10"}


def section_key(keys: list[str], cpus: Cpus) -> str:
    """The audio runs keep the first section; video runs and pinned runs get their own."""
    key = SECTION if set(keys) <= AUDIO_KEYS else f"{SECTION}-video"
    return key if cpus is None else f"{key}-cpus{cpu_list(cpus).replace(',', '+')}"


async def measure_janus(shape: Shape, window: float, slices: int,
                        workdir: Path, cpus: Cpus = None) -> dict[str, Any]:
    """Janus under one shape: start it (on `cpus`), load it through the adapter, stop it."""
    server = await start_janus(workdir, prefix=pinned([], cpus))
    running = Running(server.process, "", server.ws_url, None, False, server.log)
    result = await measure_running(running, "janus", shape, window, slices,
                                   local_address=server.address,
                                   participant_factory=JanusParticipant, cpus=cpus,
                                   delay_sample_every=sample_every(shape.participants))
    result["settings"] = server.settings
    return result


async def run(keys: list[str], window: float, slices: int,
              cpus: Cpus = None) -> dict[str, Any]:
    version = janus_version()
    results = []
    for scenario in (s for s in SCENARIOS if s.key in keys):
        load_before = os.getloadavg()[0]
        started = datetime.datetime.now(datetime.UTC)
        with tempfile.TemporaryDirectory(prefix="callsctl-janus-") as tmp:
            workdir = Path(tmp)
            print(f"[{scenario.key}] janus: {scenario.shape.describe()}", file=sys.stderr)
            janus = await measure_janus(scenario.shape, window, slices, workdir, cpus)
            print(f"[{scenario.key}] callsctl serve", file=sys.stderr)
            sfu = await measure("callsctl", scenario.shape, window, slices, workdir, cpus,
                                sample_every(scenario.shape.participants))
        results.append({"key": scenario.key, "title": scenario.title,
                        "measured_at": started.strftime("%Y-%m-%d %H:%M UTC"),
                        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                        "janus": janus, "callsctl": sfu})
    return {"janus_version": version, "host": machine(), "window_s": window,
            "slices": slices, "scenarios": results, "server_cpus": cpu_list(cpus),
            "loadgen_cpus": affinity_of(os.getpid())}


def _us(result: dict[str, Any]) -> float | None:
    return result["cpu"].get("us_per_packet")


def _cell_ms(values: dict[str, float] | None, key: str, unit: str, digits: int) -> str:
    return "n/a" if not values or values.get(key) is None else f"{values[key]:.{digits}f} {unit}"


def _row(name: str, result: dict[str, Any]) -> str:
    cpu = result["cpu"]
    us = _us(result)
    loss = result["loss"]
    kb = result["rss_per_session_kb"]
    cells = [name, f"{result['joined']}/{result['participants']}",
             "n/a" if us is None else f"{cpu['packets_per_s']:.0f}",
             "n/a" if us is None else f"{cpu['cpu_percent']:.1f} %",
             "n/a" if us is None else f"**{us:.1f}** ({cpu['us_min']:.1f}-{cpu['us_max']:.1f})",
             cpu.get("counter", "n/a"),
             "n/a" if kb is None else f"{kb:.0f} KB",
             _cell_ms(result["join_s"], "p99", "s", 2),
             _cell_ms(result["delay_ms"], "p99", "ms", 1),
             "n/a" if loss is None else f"{100 * loss:.2f} %", loadgen_cpu(result)]
    return "| " + " | ".join(cells) + " |"


def render(report: dict[str, Any], command: str) -> str:
    settings = next((s["janus"].get("settings") for s in report["scenarios"]), None) or {}
    video = any(s["key"] not in AUDIO_KEYS for s in report["scenarios"])
    lines = [
        "## Janus VideoRoom beside callsctl"
        + (", cameras and screen share" if video else "")
        + ("" if report.get("server_cpus", "all") == "all"
           else f", server on CPU {report['server_cpus']}") + " (bench/janus.py)",
        "",
        f"Command: `{command}`  ",
        f"Janus: Debian package `janus`, `janus --version`: {report['janus_version']}; "
        f"its plugin janus.plugin.videoroom, driven over its WebSocket API by "
        f"bench/janus_adapter.py. Host: {report['host']}.  ",
        f"Window {report['window_s']:g} s in {report['slices']} slices per system; Janus "
        "first, then callsctl serve, per scenario.  ",
        cores_text(report),
        "",
        "Janus settings (generated config folder, `-F`): "
        + "; ".join(f"{k} {v}" for k, v in settings.items()) + ". Room: audio codec opus, "
        "audio-level extension negotiated, no audio-level events, `publishers` = the call's "
        "size (every participant joins as a publisher; only the unmuted configure media).",
        "",
        "| scenario | system | joined | packets/s out | server CPU | CPU µs / packet, "
        "median slice (min-max) | packets counted | RSS / session | join p99 | delay p99 "
        "| loss | load generator CPU |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for scenario in report["scenarios"]:
        janus, sfu = scenario["janus"], scenario["callsctl"]
        lines.append(_row(f"{scenario['title']} ({scenario['measured_at']}, load "
                          f"{scenario['load_average'][0]:g}/{scenario['load_average'][1]:g})"
                          f" | Janus {report['janus_version'].split('(')[-1].rstrip(')')}",
                          janus))
        lines.append(_row(f"{scenario['title']} | callsctl serve", sfu))
        if _us(janus) and _us(sfu):
            notes.append(f"{scenario['key']}: Janus spent {_us(janus) / _us(sfu):.1f}x the "  # type: ignore[operator]
                         "CPU per packet of callsctl serve in this run.")
        for name, result in (("Janus", janus), ("callsctl", sfu)):
            by_label = result.get("loss_by_label") or {}
            if len(by_label) > 1:
                notes.append(f"{scenario['key']}, {name}: loss by stream: " + ", ".join(
                    f"{label} {100 * v['loss']:.2f} % of {v['expected']}"
                    for label, v in by_label.items() if v.get("loss") is not None) + ".")
            if result["failed"]:
                notes.append(f"{scenario['key']}: {result['failed']} participants failed to "
                             f"join {name}: {'; '.join(result['failures'].values())}")
            for note in result["notes"]:
                notes.append(f"{scenario['key']}, {name}, load generator: {note}.")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    medians = ", ".join(f"{s['key']} {s['janus']['join_s']['p50']:.2f} s"
                        for s in report["scenarios"] if s["janus"].get("join_s"))
    if medians:
        lines.append(f"- Janus join p50: {medians}. Its join p99 counts from the first "
                     "request to the first connection able to carry media (a listener's "
                     "subscriber connection, which needs a publisher first and its own "
                     "offer/answer). The tail of about 1 s: for those participants the DTLS "
                     "handshake alone took 1.0 s (traced: `connecting` to `connected`), as "
                     "when the client's first ClientHello reaches Janus before its ICE has "
                     "selected the pair and aiortc's DTLS (OpenSSL) resends after its 1 s "
                     "timer. Forwarding CPU, delay and loss are the comparison.")
    lines += [
        "- Packets counted: callsctl's figure divides by its own /stats `rtp_forwarded`; "
        "Janus has no such counter, so its figure divides by the packets its receivers got "
        "(`delivered`; with 0 % loss the two are the same number).",
        "- Janus's CPU is the whole process (all its threads) from /proc/<pid>/stat, as for "
        "callsctl. The load generator runs in this process on the same 2 cores; the machine "
        "is shared with other jobs (see the load averages), so absolute figures move between "
        "runs; the ratio within a run is the comparison. Rerun with the command above.",
        "- Janus 1.1.2 does not gather ICE candidates on loopback, so its ICE is pinned "
        "(`ice_enforce_list`) to this machine's own address and the participants gather on "
        "it too; the kernel routes that traffic through the loopback device.",
    ]
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    parts = ["python bench/janus.py --only", *args.only]
    if args.window != 15.0:
        parts.append(f"--window {args.window:g}")
    if args.slices != 5:
        parts.append(f"--slices {args.slices}")
    if args.server_cpus is not None:
        parts.append(f"--server-cpus {cpu_list(args.server_cpus)}")
    if args.loadgen_cpus is not None:
        parts.append(f"--loadgen-cpus {cpu_list(args.loadgen_cpus)}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=["1x10", "1x50"], choices=KEYS,
                        help="scenarios to run (default: 1x10 1x50)")
    parser.add_argument("--window", type=float, default=15.0,
                        help="seconds of steady state measured per system (default 15)")
    parser.add_argument("--slices", type=int, default=5, help="slices of the window (median)")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    add_cpu_options(parser)
    args = parser.parse_args()
    if not (3 <= args.window <= 600 and 2 <= args.slices <= 60):
        parser.error("window 3..600 s, slices 2..60")
    apply_cpu_options(parser, args)
    try:
        report = asyncio.run(run(args.only, args.window, args.slices, args.server_cpus))
    except JanusUnavailable as exc:
        print(f"bench/janus.py: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    command = command_line(args)
    report["command"] = command
    if args.json:
        print(json.dumps(report, indent=1))
    body = render(report, command)
    if not args.json:
        print(body)
    if args.write:
        write_section(args.write, section_key(args.only, args.server_cpus), body)


if __name__ == "__main__":
    main()
