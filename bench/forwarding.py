"""Server CPU per forwarded audio packet: one call, N participants, K speaking.

Starts `callsctl serve` on loopback, joins N scripted participants (K of them
sending Opus, the rest receive-only), waits for a steady state, then reads the
server's CPU time (its CPU-time clock) and its forwarded-packet counter from
/stats over a fixed window. The figure is (CPU time delta) / (forwarded
packets delta), the method of the seed deployment guide's performance table.

    python bench/forwarding.py --participants 10 --speakers 2 --window 10 --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from callsctl_sfu.client.loadgen import proc_cpu_seconds  # noqa: E402
from callsctl_sfu.client.participant import Participant  # noqa: E402
from callsctl_sfu.datadir import load_or_create_secret  # noqa: E402
from callsctl_sfu.tokens import issue_token  # noqa: E402


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_serve(api: int, udp: int, data_dir: str,
                env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`callsctl serve` on loopback with these ports, quiet; wait_ready() before use."""
    return subprocess.Popen(
        [sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1", "--api-port",
         str(api), "--udp-port", str(udp), "--data-dir", data_dir, "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def wait_ready(base: str, attempts: int = 200) -> None:
    """Polls /readyz (bounded: about 10 s plus the request timeouts)."""
    for _ in range(attempts):
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


def bench_command(script: str) -> str:
    """The command line to print beside a figure: this run's flags, without --write."""
    return f"python bench/{script} " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--write") and not a.endswith(".md"))


async def run(participants: int, speakers: int, window: float) -> dict[str, float]:
    api, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    data_dir = tempfile.mkdtemp(prefix="callsctl-bench-")
    server = start_serve(api, udp, data_dir)
    base = f"http://127.0.0.1:{api}"
    people: list[Participant] = []
    try:
        wait_ready(base)
        idle_rss = rss_bytes(server.pid)
        secret = load_or_create_secret(data_dir)
        for index in range(participants):
            person = Participant(f"ws://127.0.0.1:{api}/ws",
                                 issue_token(secret, "bench", f"u{index}"), "bench", f"u{index}",
                                 tone=300 + 50 * index, send_audio=index < speakers)
            await person.join()
            people.append(person)
        for person in people:
            await person.wait_connected(30)
        await asyncio.sleep(3)  # steady state: every renegotiation done
        joined_rss = rss_bytes(server.pid)
        stats0 = httpx.get(f"{base}/stats").json()["forwarding"]
        cpu0, wall0 = proc_cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu1, wall1 = proc_cpu_seconds(server.pid), time.monotonic()
        stats1 = httpx.get(f"{base}/stats").json()["forwarding"]
        forwarded = stats1["rtp_forwarded"] - stats0["rtp_forwarded"]
        received = stats1["rtp_in"] - stats0["rtp_in"]
        cpu = cpu1 - cpu0
        return {
            "participants": participants, "speakers": speakers, "window_s": wall1 - wall0,
            "forwarded_pps": forwarded / (wall1 - wall0),
            "received_pps": received / (wall1 - wall0),
            "cpu_percent": 100 * cpu / (wall1 - wall0),
            "us_per_forwarded": 1e6 * cpu / forwarded if forwarded else float("nan"),
            "rss_idle_mb": idle_rss / 2**20, "rss_joined_mb": joined_rss / 2**20,
            "rss_per_session_kb": (joined_rss - idle_rss) / participants / 1024,
        }
    finally:
        for person in people:
            await person.close()
        server.send_signal(signal.SIGTERM)
        server.wait(15)


def render(result: dict[str, float], command: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} vCPU, {platform.machine()}, Python {platform.python_version()}"
    return "\n".join([
        f"Command: `{command}`  ",
        f"Measured: {when} on {machine}.",
        "",
        "| participants | speaking | forwarded pkt/s | server CPU | CPU µs / forwarded pkt "
        "| RSS idle | RSS joined | RSS / session |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['participants']} | {result['speakers']} | {result['forwarded_pps']:.0f} "
        f"| {result['cpu_percent']:.1f}% | **{result['us_per_forwarded']:.1f}** "
        f"| {result['rss_idle_mb']:.1f} MB | {result['rss_joined_mb']:.1f} MB "
        f"| {result['rss_per_session_kb']:.0f} KB |",
    ])


def write_section(path: Path, key: str, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m: block, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--speakers", type=int, default=2)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--write", type=Path, help="update this results file in place")
    args = parser.parse_args()
    if not 1 <= args.speakers <= args.participants <= 60:
        parser.error("need 1 <= speakers <= participants <= 60")
    result = asyncio.run(run(args.participants, args.speakers, args.window))
    command = bench_command("forwarding.py")
    body = render(result, command)
    print(body)
    if args.write:
        write_section(args.write, f"audio-{args.participants}x{args.speakers}", body)


if __name__ == "__main__":
    main()
