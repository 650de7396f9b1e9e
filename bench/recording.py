"""SFU CPU per forwarded packet with and without a recording, and the recorder's own CPU.

One call of N aiortc participants (K speaking, one with a camera) on a
loopback `callsctl serve`. Three windows of equal length: no recording, then
with a recording job running (the recorder is one more receiver of every
track: the SFU's extra work is one more rewrite/protect/send per packet), then
the recording is stopped and composed. Reported: the server's CPU µs per
forwarded packet in both windows, the recorder process's CPU seconds per
recorded minute, and how long the MP4 compose took for the recorded time.

    python bench/recording.py --participants 6 --speakers 2 --window 15 --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.forwarding import (  # noqa: E402
    bench_command,
    cpu_seconds,
    free_port,
    start_serve,
    wait_ready,
    write_section,
)
from callsctl_sfu.client.participant import Participant  # noqa: E402
from callsctl_sfu.datadir import load_or_create_secret  # noqa: E402
from callsctl_sfu.tokens import issue_token  # noqa: E402


async def window(base: str, pid: int, seconds: float) -> dict[str, float]:
    stats0 = httpx.get(f"{base}/stats").json()["forwarding"]
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wall1 = cpu_seconds(pid), time.monotonic()
    stats1 = httpx.get(f"{base}/stats").json()["forwarding"]
    forwarded = stats1["rtp_forwarded"] - stats0["rtp_forwarded"]
    cpu = cpu1 - cpu0
    return {"forwarded_pps": forwarded / (wall1 - wall0),
            "cpu_percent": 100 * cpu / (wall1 - wall0),
            "us_per_forwarded": 1e6 * cpu / forwarded if forwarded else float("nan")}


async def run(participants: int, speakers: int, seconds: float) -> dict[str, float]:
    api, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    data_dir = tempfile.mkdtemp(prefix="callsctl-bench-rec-")
    server = start_serve(api, udp, data_dir)
    base = f"http://127.0.0.1:{api}"
    people: list[Participant] = []
    try:
        wait_ready(base)
        secret = load_or_create_secret(data_dir)
        key = (Path(data_dir) / "admin_key").read_text().strip()
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                             timeout=10)
        for index in range(participants):
            person = Participant(f"ws://127.0.0.1:{api}/ws",
                                 issue_token(secret, "bench", f"u{index}"), "bench", f"u{index}",
                                 tone=300 + 50 * index, send_audio=index < speakers,
                                 video=index == 0)
            await person.join()
            people.append(person)
        for person in people:
            await person.wait_connected(30)
        await asyncio.sleep(3)
        without = await window(base, server.pid, seconds)
        job = admin.post("/api/v1/jobs", json={"call": "bench"}).json()
        for _ in range(200):
            job = admin.get(f"/api/v1/jobs/{job['id']}").json()
            if job["state"] == "running":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # the recorder joined, renegotiated and receives everything
        worker = job["output_data"]["pid"]
        rec0 = cpu_seconds(worker)
        with_recorder = await window(base, server.pid, seconds)
        recorder_cpu = cpu_seconds(worker) - rec0
        stopped = time.monotonic()
        admin.post(f"/api/v1/jobs/{job['id']}/stop")
        for _ in range(1200):
            job = admin.get(f"/api/v1/jobs/{job['id']}").json()
            if job["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.25)
        finish_s = time.monotonic() - stopped
        return {
            "participants": participants, "speakers": speakers, "window_s": seconds,
            "without": without, "with": with_recorder,
            "recorder_cpu_s_per_min": 60 * recorder_cpu / seconds,
            "recorded_s": job["output_data"].get("duration_s", float("nan")),
            "finish_s": finish_s, "state": job["state"],
            "tracks": len(job["output_data"].get("tracks", [])),
        }
    finally:
        for person in people:
            await person.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def render(r: dict, command: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} vCPU, {platform.machine()}, Python {platform.python_version()}"
    a, b = r["without"], r["with"]
    return "\n".join([
        f"Command: `{command}`  ",
        f"Measured: {when} on {machine}.",
        "",
        "| window | forwarded pkt/s | server CPU | CPU µs / forwarded pkt |",
        "|---|---:|---:|---:|",
        f"| no recording | {a['forwarded_pps']:.0f} | {a['cpu_percent']:.1f}% "
        f"| **{a['us_per_forwarded']:.1f}** |",
        f"| recording | {b['forwarded_pps']:.0f} | {b['cpu_percent']:.1f}% "
        f"| **{b['us_per_forwarded']:.1f}** |",
        "",
        f"Recorder process ({r['tracks']} tracks, no decoding): **"
        f"{r['recorder_cpu_s_per_min']:.1f} CPU s per recorded minute**. Stop to finished "
        f"job (files closed, MP4 composed by ffmpeg) for {r['recorded_s']:.0f} s recorded: "
        f"{r['finish_s']:.1f} s (state {r['state']}).",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=6)
    parser.add_argument("--speakers", type=int, default=2)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--write", type=Path, help="update this results file in place")
    args = parser.parse_args()
    if not 1 <= args.speakers <= args.participants <= 30:
        parser.error("need 1 <= speakers <= participants <= 30")
    result = asyncio.run(run(args.participants, args.speakers, args.window))
    command = bench_command("recording.py")
    body = render(result, command)
    print(body)
    if args.write:
        write_section(args.write, f"recording-{args.participants}x{args.speakers}", body)


if __name__ == "__main__":
    main()
