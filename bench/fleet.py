"""A fleet of two nodes beside one node under the same load, written into bench/RESULTS.md.

Three figures the fleet must not make worse, or must show:

1. CPU per forwarded packet: the same calls (CALLS x USERS, 2 unmuted each)
   on one `callsctl serve` without --cluster, on one node with --cluster (the
   fleet code alone), then on two `serve --cluster` nodes on this machine
   sharing a real redis-server. Every participant's
   signaling goes to node A (one load balancer URL), so about half of them
   are relayed to node B. CPU = the CPU time of each node process
   (its CPU-time clock) over a steady window, divided by the packets the nodes
   forwarded in it (their /stats `rtp_forwarded`). The fleet figure counts
   both nodes together, relaying and registry work included.
2. Placement balance: calls and forwarded packets on the busiest and the
   idlest node (least-loaded policy).
3. Join latency (signaling only: WebSocket open, `join`, `joined`), 40 times
   straight to the hosting node and 40 times through the other node, which
   relays: p50 and p99.

    python bench/fleet.py                     # print (about 8 minutes)
    python bench/fleet.py --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
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

from callsctl_sfu.client.loadgen import LoadConfig, LoadTest, percentiles, proc_cpu_seconds  # noqa: E402,I001
from callsctl_sfu.tokens import issue_token  # noqa: E402

SHARED = ("jwt_secret", "admin_key", "fleet_secret")
IDLE_S = 8.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One `callsctl serve` subprocess on loopback with the shared secrets."""

    def __init__(self, workdir: Path, name: str, cluster: str | None) -> None:
        self.name = name
        self.api_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.data = workdir / name
        self.data.mkdir(mode=0o700)
        for secret in SHARED:
            shutil.copyfile(workdir / secret, self.data / secret)
            (self.data / secret).chmod(0o600)
        cmd = [sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1",
               "--api-port", str(self.api_port), "--udp-port", str(self.udp_port),
               "--data-dir", str(self.data), "--log-level", "warning"]
        if cluster:
            cmd += ["--cluster", cluster, "--node-id", name]
        env = {**os.environ, "CALLSCTL_STUN_SERVER": ""}
        self.log = (workdir / f"{name}.log").open("w")
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=REPO, env=env)
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.ws_url = f"ws://127.0.0.1:{self.api_port}/ws"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(200):
            try:
                async with http.get(f"{self.base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready")

    async def mark(self, http: aiohttp.ClientSession) -> dict[str, float]:
        async with http.get(f"{self.base}/stats") as response:
            stats = await response.json()
        return {"cpu": proc_cpu_seconds(self.process.pid), "time": time.monotonic(),
                "forwarded": stats["forwarding"]["rtp_forwarded"], "calls": stats["calls"],
                "sessions": stats["sessions"]}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


async def loaded(nodes: list[Node], entry: Node, calls: int, users: int, window: float,
                 token_for: Any) -> dict[str, Any]:
    """Run the load through `entry`; CPU and forwarding of every node over the window."""
    marks: dict[str, list[dict[str, float]]] = {}
    async with aiohttp.ClientSession() as http:
        for node in nodes:
            await node.ready(http)
        await asyncio.sleep(2)  # past start-up (fleet nodes: registered, CPU sampled once)
        idle0 = [await node.mark(http) for node in nodes]
        await asyncio.sleep(IDLE_S)
        idle1 = [await node.mark(http) for node in nodes]
        idle_cores = sum(b["cpu"] - a["cpu"] for a, b in zip(idle0, idle1, strict=True)) / (
            idle1[0]["time"] - idle0[0]["time"])

        async def on_window(edge: str) -> None:
            marks[edge] = [await node.mark(http) for node in nodes]

        join = max(3.0, calls * users / 10)
        config = LoadConfig(ws_url=entry.ws_url, token_for=token_for, calls=calls,
                            users_per_call=users, unmuted=2, duration=join + 15 + window + 5,
                            join_duration=join, window=window, call_prefix="fleet",
                            local_address="127.0.0.1", settle_timeout=15)
        report = (await LoadTest(config, on_window=on_window).run()).to_dict()
    per_node = []
    for node, start, end in zip(nodes, marks["start"], marks["end"], strict=True):
        forwarded = end["forwarded"] - start["forwarded"]
        per_node.append({"node": node.name, "calls": end["calls"], "sessions": end["sessions"],
                         "cpu_s": end["cpu"] - start["cpu"], "forwarded": forwarded,
                         "seconds": end["time"] - start["time"]})
    cpu = sum(n["cpu_s"] for n in per_node)
    forwarded = sum(n["forwarded"] for n in per_node)
    seconds = per_node[0]["seconds"]
    busy = cpu - idle_cores * seconds  # what the load added on top of the idle nodes
    return {"nodes": per_node, "cpu_us_per_pkt": 1e6 * cpu / forwarded if forwarded else None,
            "idle_percent": 100 * idle_cores,
            "busy_us_per_pkt": 1e6 * busy / forwarded if forwarded else None,
            "pkt_s": forwarded / per_node[0]["seconds"] if per_node else 0,
            "join_s": report["join_s"], "joined": report["participants"]}


async def join_latency(host: Node, other: Node, token_for: Any, rounds: int
                       ) -> dict[str, dict[str, float] | None]:
    """Signaling-only joins to a call on `host`: straight, and relayed through `other`."""
    out: dict[str, list[float]] = {"direct": [], "relayed": []}
    async with aiohttp.ClientSession() as http:
        holder = await http.ws_connect(f"{host.ws_url}?token={token_for('probe', 'holder')}")
        await holder.send_json({"type": "join", "call": "probe"})
        await holder.receive(timeout=10)
        for index in range(rounds):
            for kind, node in (("direct", host), ("relayed", other)):
                started = time.perf_counter()
                ws = await http.ws_connect(f"{node.ws_url}?token="
                                           f"{token_for('probe', f'{kind}{index}')}")
                await ws.send_json({"type": "join", "call": "probe"})
                while True:
                    message = json.loads((await ws.receive(timeout=10)).data)
                    if message["type"] in ("joined", "error"):
                        break
                if message["type"] != "joined":
                    raise RuntimeError(f"{kind} join failed: {message}")
                out[kind].append(time.perf_counter() - started)
                await ws.send_json({"type": "leave"})
                await ws.close()
        await holder.close()
    return {kind: percentiles(values) for kind, values in out.items()}


async def run(calls: int, users: int, window: float, rounds: int, ab_rounds: int
              ) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="callsctl-fleet-bench-"))
    for secret in SHARED:
        (workdir / secret).write_text(secrets.token_urlsafe(32) + "\n")
    jwt = (workdir / "jwt_secret").read_text().strip().encode()

    def token_for(call: str, user: str) -> str:
        return issue_token(jwt, call, user, 3600)

    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                              "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                             stdout=subprocess.DEVNULL)
    cluster = f"redis://127.0.0.1:{redis_port}/0"
    result: dict[str, Any] = {}
    try:
        single = Node(workdir, "single", None)
        try:
            result["single"] = await loaded([single], single, calls, users, window, token_for)
        finally:
            single.stop()
        solo = Node(workdir, "solo", cluster)
        try:
            result["solo"] = await loaded([solo], solo, calls, users, window, token_for)
        finally:
            solo.stop()
        await asyncio.sleep(6)  # solo's registration expired
        # The same one-node pair again, alternating, to show the run-to-run spread.
        result["ab"] = {"single": [], "solo": []}
        for round_ in range(ab_rounds):
            for kind in ("single", "solo"):
                node = Node(workdir, f"{kind}-ab{round_}", cluster if kind == "solo" else None)
                try:
                    run_ = await loaded([node], node, calls, users, window, token_for)
                    result["ab"][kind].append(run_["cpu_us_per_pkt"])
                finally:
                    node.stop()
                await asyncio.sleep(6)
        a, b = Node(workdir, "node-a", cluster), Node(workdir, "node-b", cluster)
        try:
            result["fleet"] = await loaded([a, b], a, calls, users, window, token_for)
            await asyncio.sleep(3)  # the load's calls ended and were released
            probe_host = a  # least-loaded may pick either: ask Redis after the first join
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(f"{a.ws_url}?token={token_for('probe', 'p')}")
                await ws.send_json({"type": "join", "call": "probe"})
                await ws.receive(timeout=10)
                host = subprocess.run(["redis-cli", "-p", str(redis_port), "HGET",
                                       "callsctl:calls", "probe"], capture_output=True,
                                      text=True).stdout.strip()
                probe_host = a if host == "node-a" else b
                result["join"] = await join_latency(probe_host, b if probe_host is a else a,
                                                    token_for, rounds)
                await ws.close()
        finally:
            a.stop()
            b.stop()
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def render(result: dict[str, Any], command: str, calls: int, users: int) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [f"## A fleet of two nodes beside one node ({calls} calls x {users}, 2 unmuted)",
             "", f"Command: `{command}`  ",
             f"Measured: {when} on {os.cpu_count()} vCPU, {platform.machine()}, Python "
             f"{platform.python_version()}, redis-server {_redis_version()}; load average "
             f"{load:.2f} (a shared machine: other jobs ran too).", "",
             "| setup | joined | packets/s out | CPU µs / forwarded packet (all nodes) | "
             "idle CPU (all nodes, before the load) | µs / packet above idle | "
             "calls per node | join p99 (load) |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for key, name in (("single", "one node, no --cluster"),
                      ("solo", "one node with --cluster (a fleet of one)"),
                      ("fleet", "two nodes + Redis, all signaling via node-a")):
        r = result[key]
        per = ", ".join(f"{n['node']} {n['calls']}" for n in r["nodes"])
        joined = r["joined"]
        lines.append(f"| {name} | {joined.get('joined')}/{joined.get('requested')} | "
                     f"{r['pkt_s']:.0f} | **{r['cpu_us_per_pkt']:.1f}** | "
                     f"{r['idle_percent']:.1f} % | {r['busy_us_per_pkt']:.1f} | {per} | "
                     f"{(r['join_s'] or {}).get('p99', 0):.2f} s |")
    fleet = result["fleet"]["nodes"]
    ordered = sorted(fleet, key=lambda n: (n["forwarded"], n["calls"]))
    idlest, busiest = ordered[0], ordered[-1]
    join = result["join"]
    single, solo, two = (result[k]["cpu_us_per_pkt"] for k in ("single", "solo", "fleet"))
    per_node = ", ".join(f"{n['node']} {1e6 * n['cpu_s'] / n['forwarded']:.1f}"
                         for n in result["fleet"]["nodes"] if n["forwarded"])
    lines += ["", f"- The fleet code itself (registration every second, placement, the "
                  f"reaper) on one node: {100 * (solo / single - 1):+.0f} % CPU per packet "
                  f"against no --cluster. Two nodes on this one machine: "
                  f"{100 * (two / single - 1):+.0f} % (each node's own µs per packet: "
                  f"{per_node}): two server processes and the load generator share two "
                  "vCPUs here; on separate machines each node carries only its own calls."]
    ab = result.get("ab") or {}
    if ab.get("single") and ab.get("solo"):
        def spread(values: list[float]) -> str:
            return ", ".join(f"{v:.1f}" for v in values)
        lines += [f"- Run-to-run spread on this machine, the one-node pair again "
                  f"{len(ab['single'])} times, alternating: no --cluster {spread(ab['single'])}"
                  f" µs/packet; with --cluster {spread(ab['solo'])} µs/packet."]
    lines += [f"- Placement balance (least-loaded): busiest {busiest['node']} "
                  f"{busiest['calls']} calls / {busiest['forwarded']} packets forwarded in the "
                  f"window, idlest {idlest['node']} {idlest['calls']} calls / "
                  f"{idlest['forwarded']} packets.",
              f"- Join, signaling only ({len(join)} ways, 40 each): straight to the host p50 "
              f"{1000 * join['direct']['p50']:.1f} ms, p99 {1000 * join['direct']['p99']:.1f} "
              f"ms; relayed through the other node p50 {1000 * join['relayed']['p50']:.1f} "
              f"ms, p99 {1000 * join['relayed']['p99']:.1f} ms (the relay opens a WebSocket "
              "to the host per client)."]
    return "\n".join(lines)


def _redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--ab", type=int, default=3,
                        help="alternating single/fleet-of-one repeats, to show the spread")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        parser.error("needs redis-server (apt-get install redis-server)")
    result = asyncio.run(run(args.calls, args.users, args.window, args.rounds, args.ab))
    command = "python bench/fleet.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--write") and not a.endswith(".md"))
    body = render(result, command.strip(), args.calls, args.users)
    print(body)
    if args.write:
        write_section(args.write, "fleet", body)


if __name__ == "__main__":
    main()
