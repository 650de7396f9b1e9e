"""What idle joined sessions cost the server: CPU and STUN packets per session per second.

A joined session whose user is muted sends and receives no media, yet it is
not free: ICE consent freshness (RFC 7675) has the server send a STUN Binding
request to every session every ~5 s and answer the client's own consent
checks, plus RTCP now and then. At 1 call x 1000 that background work is what
the loop has left after forwarding, so it is measured here on its own.

This script starts `callsctl serve` on loopback, joins N muted participants
with the load generator (callsctl_sfu.client.loadgen) in this process, lets
them settle, and over a window of idle seconds reads:

- the server's CPU seconds (its CPU-time clock, in nanoseconds) and how long
  it waited for a CPU (/proc/<pid>/schedstat; the machine may be shared);
- the media socket's counters (GET /stats "media_socket"): datagrams and STUN
  messages in and out, and whether any session was removed;
- this process's own CPU (`time.process_time()`): the load generator's cost
  per idle participant, which bounds how many it can hold on a shared machine.

Figures are per session per second of the window.

    python bench/consent.py --sessions 200 --window 30
    python bench/consent.py --sessions 200 --window 30 --json
    python bench/consent.py --sessions 200 --label "after" --write bench/RESULTS.md
    python bench/consent.py --sessions 200 --profile /tmp/consent   # py-spy of the window

With `--unmuted K` that many participants talk (Opus, 50 packets/s), and the
figures add the server's CPU per forwarded packet (GET /stats
`forwarding.rtp_forwarded` over the window): a small call's cost measured
over one long window rather than run_all.py's slices, which the machine's
spread moves more. `--server-cpus 0 --loadgen-cpus 1` pins the two apart.

    python bench/consent.py --sessions 10 --unmuted 2 --window 30 --server-cpus 0 --loadgen-cpus 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from forwarding import write_section  # noqa: E402
from run_all import (  # noqa: E402
    add_cpu_options,
    apply_cpu_options,
    machine,
    one_call_config,
    run_queue_wait,
    sessions_removed,
    start_callsctl,
    start_py_spy,
    wait_py_spy,
)

from callsctl_sfu.client.loadgen import LoadTest, proc_cpu_seconds  # noqa: E402

SOCKET_COUNTERS = ("datagrams_in", "datagrams_out", "stun_in", "stun_out")


async def _stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/stats") as response:
        return dict(await response.json())


async def measure(sessions: int, window: float, workdir: Path,
                  profile: Path | None, unmuted: int = 0,
                  server_cpus: tuple[int, ...] | None = None) -> dict[str, Any]:
    """One server, `sessions` participants (`unmuted` of them talking); a window's figures."""
    running = await start_callsctl(workdir, cpus=server_cpus)
    marks: dict[str, dict[str, Any]] = {}
    spy: asyncio.subprocess.Process | None = None
    try:
        pid = running.process.pid
        config = one_call_config(running, sessions, unmuted=unmuted, window=window,
                                 prefix="idle", settle_s=20)
        async with aiohttp.ClientSession() as http:

            async def on_window(name: str) -> None:
                nonlocal spy
                marks[name] = {"at": time.monotonic(), "cpu": proc_cpu_seconds(pid),
                               "loadgen_cpu": time.process_time(),
                               "waited": run_queue_wait(pid),
                               "stats": await _stats(http, running.base_url)}
                if name == "start" and profile is not None:
                    spy = await start_py_spy(pid, profile / f"consent-{sessions}.txt", 100,
                                             window)

            test = LoadTest(config, on_window=on_window)
            report = (await test.run()).to_dict()
            final = await _stats(http, running.base_url)
    finally:
        await wait_py_spy(spy)
        await running.stop()
    removed = sessions_removed(test)
    result: dict[str, Any] = {
        "sessions": sessions, "joined": report["participants"]["joined"],
        "failed": report["participants"]["failed"], "session_removed": removed,
        "sessions_at_end": final.get("sessions"), "notes": report["notes"]}
    if "start" not in marks or "end" not in marks:
        result["error"] = "no idle window (joins took the whole run)"
        return result
    start, end = marks["start"], marks["end"]
    seconds = end["at"] - start["at"]
    per = sessions * seconds
    cpu = end["cpu"] - start["cpu"]
    socket0, socket1 = start["stats"]["media_socket"], end["stats"]["media_socket"]
    counts = {name: socket1.get(name, 0) - socket0.get(name, 0) for name in SOCKET_COUNTERS}
    result.update({
        "window_s": round(seconds, 1), "server_cpu_s": round(cpu, 3),
        "server_waited_s": round(end["waited"] - start["waited"], 2),
        "cpu_us_per_session_s": round(1e6 * cpu / per, 1),
        "cpu_fraction_of_core": round(cpu / seconds, 3),
        # This process is the load generator: its CPU over the same window.
        "loadgen_cpu_us_per_session_s": round(
            1e6 * (end["loadgen_cpu"] - start["loadgen_cpu"]) / per, 1),
        "per_session_s": {name: round(value / per, 3) for name, value in counts.items()},
        "counts": counts,
        "consent": end["stats"].get("consent"),
    })
    if unmuted:
        forwarded = end["stats"]["forwarding"]["rtp_forwarded"] - \
            start["stats"]["forwarding"]["rtp_forwarded"]
        result.update({"unmuted": unmuted, "forwarded_per_s": round(forwarded / seconds),
                       "cpu_us_per_forwarded": round(1e6 * cpu / forwarded, 2)
                       if forwarded else None})
    return result


def render(results: list[dict[str, Any]], command: str, host: str, label: str) -> str:
    lines = [
        f"### Idle sessions (ICE consent): {label}",
        "",
        f"Command: `{command}` on {host}. The machine is shared and busy: CPU is the "
        "server process's own CPU time, \"waited\" how long it was runnable but not "
        "running.",
        "",
        "| N | joined | removed | window s | server CPU s (waited s) | CPU µs/session/s "
        "| core fraction | STUN in/session/s | STUN out/session/s | datagrams in/out/session/s "
        "| load generator CPU µs/session/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['sessions']} | {r['joined']} | {r['session_removed']} | "
                         f"{r['error']} | | | | | | | |")
            continue
        p = r["per_session_s"]
        lines.append(
            f"| {r['sessions']} | {r['joined']} | {r['session_removed']} | {r['window_s']} | "
            f"{r['server_cpu_s']} ({r['server_waited_s']}) | {r['cpu_us_per_session_s']} | "
            f"{r['cpu_fraction_of_core']} | {p['stun_in']} | {p['stun_out']} | "
            f"{p['datagrams_in']}/{p['datagrams_out']} | "
            f"{r.get('loadgen_cpu_us_per_session_s', 'n/a')} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    results = []
    if args.from_json:  # stored --json lines of earlier runs (e.g. of an older commit)
        results = [json.loads(line) for line in args.from_json.read_text().splitlines()
                   if line.startswith("{")]
        command = args.command or "(not stated)"
    else:
        with tempfile.TemporaryDirectory(prefix="consent-bench-") as tmp:
            for size in args.sessions:
                result = await measure(size, args.window, Path(tmp), args.profile,
                                       args.unmuted, args.server_cpus)
                results.append(result)
                if args.json:
                    print(json.dumps(result), flush=True)
        command = "python bench/consent.py " + " ".join(
            a for a in sys.argv[1:] if a not in ("--write", "--json") and not a.endswith(".md"))
    if not results:
        print("no results to render", file=sys.stderr)
        return 1
    body = render(results, command, machine(), args.label)
    if not args.json:
        print(body)
    if args.write:
        key = args.label.split()[0].lower().strip(":,")
        write_section(args.write, f"consent-{key}", body)
    return 1 if any("error" in r or r["session_removed"] for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[200],
                        help="idle participants in one call, per run (1..1000)")
    parser.add_argument("--window", type=float, default=30.0,
                        help="idle seconds measured once everyone has connected (5..600)")
    parser.add_argument("--label", default="current", help="section title; its first word "
                        "keys the section in --write")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the window here")
    parser.add_argument("--unmuted", type=int, default=0,
                        help="participants who talk (adds CPU per forwarded packet)")
    parser.add_argument("--from-json", type=Path, help="render these stored --json lines "
                        "instead of running")
    parser.add_argument("--command", help="with --from-json: the command that produced them")
    add_cpu_options(parser)
    args = parser.parse_args()
    if not all(1 <= n <= 1000 for n in args.sessions):
        parser.error("--sessions must each be 1..1000")
    if not 5 <= args.window <= 600:
        parser.error("--window must be 5..600 seconds")
    if not all(0 <= args.unmuted <= n for n in args.sessions):
        parser.error("--unmuted must be 0..the call's size")
    apply_cpu_options(parser, args)  # pins this process (the load generator) too
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
