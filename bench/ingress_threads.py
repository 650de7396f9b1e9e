"""The C ingress with many calls: packets/s and copies/s on 1 and 2 threads, 1 and 2 cores.

What it measures: the receive-and-forward path of `callsctl serve` for many
calls at once, without the rest of the server: a media socket read by
`fastpath.Ingress.drain` (rtc/_ingress.c), G calls with one speaking publisher
each (its own source address, its own real libsrtp inbound context), each
packet forwarded to the call's K receivers (each with its own outbound
context). Every round, each publisher sends one packet (protected with its
outbound context, a fresh sequence number) and the process drains them: one
read brings packets of G different calls, which the ingress sends on the
fan-out pool's threads side by side (`fanout_send_many`: one call per thread
at a time). Four configurations: pool off (1 thread) or on (2 threads), the
process pinned to 1 CPU or allowed on 2.

The copies leave through a veth pair in a private network namespace towards a
made-up neighbour (as bench/fanout_threads.py does), so each copy pays the
whole send path and no receiver's work is charged to the sender. The
publishers' sending is measured apart (the main thread's CPU while feeding)
and left out of the per-copy figure: in a server it is the clients' work.

    sudo python bench/ingress_threads.py                      # printed
    sudo python bench/ingress_threads.py --calls 8 --receivers 50 --seconds 5
    sudo python bench/ingress_threads.py --write bench/RESULTS.md

On a shared or busy machine the 2-core figures are bounded by what the other
processes leave (the "waited for a CPU" column says how much).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from fanout_threads import (  # noqa: E402
    CONFIGS,
    SINK_NET,
    build_targets,
    command_line,
    machine_line,
    publish,
    run_in_netns,
    task_times,
)

OPUS_PT = 111
LEVEL_ID = 1


class Publisher:
    """One call's speaker: a socket, its outbound SRTP context, the server's inbound twin."""

    def __init__(self, index: int, server_addr: tuple[str, int], ingress: Any) -> None:
        import pylibsrtp

        from callsctl_sfu.rtc import aiortc_bridge, fastpath

        key = os.urandom(30)
        self.protect = pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        inbound = pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.server_addr = server_addr
        self.ssrc = 0x5000 + index
        self.session = fastpath.InSession(aiortc_bridge.srtp_context_address(inbound), inbound)
        ingress.add(self.sock.getsockname(), self.session)

    def route(self, targets: list[Any], group: int) -> None:
        from callsctl_sfu.rtc import fastpath

        route = fastpath.InRoute(f"publisher-{self.ssrc}", OPUS_PT, LEVEL_ID)
        route.targets = targets
        route.group = group
        self.session.set_route(self.ssrc, route)

    def send(self, sequence: int, payload: bytes) -> None:
        header = struct.pack("!BBHIIHHBBH", 0x90, OPUS_PT, sequence & 0xFFFF, sequence * 960,
                             self.ssrc, 0xBEDE, 1, LEVEL_ID << 4, 0x80 | 30, 0)
        self.sock.sendto(self.protect.protect(header + payload), self.server_addr)


def measure(ingress: Any, server: socket.socket, publishers: list[Publisher], fd_out: int,
            cores: list[int], threads: int, seconds: float, payload: bytes,
            first_seq: int) -> dict[str, Any]:
    """One configuration: pin, start the pool, feed and drain for `seconds`, count."""
    from callsctl_sfu.rtc import fastpath

    fastpath.shutdown_pool()
    os.sched_setaffinity(0, cores)  # before the workers exist: they inherit it
    started = fastpath.start_pool(threads)
    fd_in = server.fileno()
    seq = first_seq

    def one_round() -> tuple[int, int, float]:
        nonlocal seq
        t = time.thread_time()
        for publisher in publishers:
            publisher.send(seq, payload)
        feed = time.thread_time() - t
        seq += 1
        read = copies = 0
        for _ in range(1000):  # bounded: the datagrams are already queued on loopback
            result = ingress.drain(fd_in, fd_out, time.monotonic())
            read += result.datagrams_in
            copies += result.forwarded
            if read >= len(publishers):
                break
        return read, copies, feed

    for _ in range(20):  # warm-up: caches, the SRTP streams
        one_round()
    batches0 = fastpath.parallel_batches()
    tasks0 = task_times()
    packets = copies = rounds = 0
    feeding = 0.0
    t0, c0 = time.perf_counter(), os.times()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        read, sent, feed = one_round()
        packets += read
        copies += sent
        feeding += feed
        rounds += 1
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) - feeding
    tasks1 = task_times()
    batches = fastpath.parallel_batches() - batches0
    fastpath.shutdown_pool()
    waited = sum(t[1] - tasks0[tid][1] for tid, t in tasks1.items() if tid in tasks0)
    return {"calls": len(publishers), "cores": len(cores), "threads": started,
            "rounds": rounds, "packets": packets, "copies": copies, "wall_s": round(wall, 3),
            "server_cpu_s": round(cpu, 3), "feeding_cpu_s": round(feeding, 3),
            "packets_per_s": round(packets / wall), "copies_per_s": round(copies / wall),
            "cpu_us_per_copy": round(1e6 * cpu / copies, 3) if copies else None,
            "parallel_batches": batches, "waited_for_cpu_s": round(waited, 3),
            "next_seq": seq}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from callsctl_sfu.rtc import fastpath

    if fastpath.Ingress is None:
        raise SystemExit(f"ingress_threads: the C ingress is not available: {fastpath.REASON}")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("ingress_threads: needs at least 2 usable CPUs (see `taskset -p $$`)")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sender.bind((SINK_NET[0], 0))
    sender.setblocking(False)
    addrs = [(SINK_NET[1], 20_000 + i) for i in range(64)]
    ingress = fastpath.Ingress()
    publishers = [Publisher(i, server.getsockname(), ingress) for i in range(args.calls)]
    keep = []
    for group, publisher in enumerate(publishers):
        sessions, targets = build_targets(args.receivers, addrs)
        keep.append(sessions)
        publisher.route(targets, group)
    payload = bytes(range(256))[:args.payload]
    results = []
    seq = 1
    try:
        for cores, threads in CONFIGS:
            result = measure(ingress, server, publishers, sender.fileno(), cpus[:cores],
                             threads, args.seconds, payload, seq)
            seq = result["next_seq"]
            result["receivers"] = args.receivers
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        os.sched_setaffinity(0, cpus)
        server.close()
        sender.close()
        for publisher in publishers:
            publisher.sock.close()
    return results


def render(results: list[dict[str, Any]], command: str, host: str) -> str:
    lines = [
        "### The C ingress with many calls on 1 and 2 threads, 1 and 2 cores "
        "(bench/ingress_threads.py)",
        "",
        f"Command: `{command}` on {host}. Each round every call's publisher sends one packet "
        "and one `Ingress.drain` reads them and forwards each to its call's receivers "
        "(own SRTP context each) through a veth towards a made-up neighbour. CPU: the whole "
        "process's utime + stime minus the publishers' sending. Speed-up: copies/s against "
        "1 core, 1 thread.",
        "",
        "| calls x receivers | cores | threads | packets/s in | copies/s | server CPU µs/copy "
        "| reads split across threads | waited for a CPU s | speed-up |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    base = None
    for r in results:
        if (r["cores"], r["threads"]) == (1, 1):
            base = r["copies_per_s"]
        speedup = f"{r['copies_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['calls']} x {r['receivers']} | {r['cores']} | {r['threads']} | "
                     f"{r['packets_per_s']:,} | {r['copies_per_s']:,} | {r['cpu_us_per_copy']} "
                     f"| {r['parallel_batches']}/{r['rounds']} "
                     f"| {r['waited_for_cpu_s']} of {r['wall_s']} | {speedup} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=8, help="calls, one publisher each (8)")
    parser.add_argument("--receivers", type=int, default=50, help="receivers per call (50)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured seconds per configuration (default 3)")
    parser.add_argument("--payload", type=int, default=160,
                        help="payload octets, an Opus frame is ~160 (default 160)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per run")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 2 <= args.calls <= 64 or not 1 <= args.receivers <= 2000:
        parser.error("--calls must be 2..64 (one read holds at most 64) and --receivers "
                     "1..2000")
    if not 0.1 <= args.seconds <= 600 or not 1 <= args.payload <= 1000:
        parser.error("--seconds must be 0.1..600 and --payload 1..1000")
    if args.in_netns:
        run(args)
        return
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        parser.error("needs root and unshare(1) for a private network namespace; run with sudo")
    host = machine_line()
    inner = [sys.executable, __file__, "--in-netns", "--calls", str(args.calls),
             "--receivers", str(args.receivers), "--seconds", str(args.seconds),
             "--payload", str(args.payload)]
    results = run_in_netns("ingress_threads", inner, timeout=60 + 8 * args.seconds)
    if args.json:
        for result in results:
            print(json.dumps(result))
    publish("ingress_threads", render(results, command_line("ingress_threads"), host), args,
            "ingress-threads")


if __name__ == "__main__":
    main()
