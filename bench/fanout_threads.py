"""The parallel fan-out: copies per second of `fastpath.fanout` on 1 and 2 threads, 1 and 2 cores.

What it measures: one Python thread calls `fastpath.fanout` (the C fan-out in
callsctl_sfu/rtc/_fanout.c) in a loop with K targets (K = 200, 500, 1000), each
with its own real libsrtp context (AES-CM-128/HMAC-SHA1-80, as browsers
negotiate), and counts the copies sent per second of wall time and the CPU
microseconds per copy (utime + stime of the whole process, every thread). Four
configurations per K: the fan-out pool off (1 thread) or on (2 threads, the
pool that `--media-threads 2` starts), with the process pinned to 1 CPU or
allowed on 2 (`os.sched_setaffinity`, before the pool's workers are created so
they inherit it).

Where the datagrams go (`--sink`):

- `veth` (default): the script re-runs itself in a network namespace of its own
  (`unshare --net`, needs root) with a veth pair, and sends to an address on
  it whose neighbour entry is a made-up MAC address. Every copy goes through
  sendmmsg, the UDP/IP output path and the device's transmit, as towards a real
  NIC; the peer end then drops the frame (not addressed to it) before any
  socket, so no receiver's work is charged to the sender. The namespace
  disappears with the process.
- `loopback`: the copies go to sink sockets on 127.0.0.1 drained by a separate
  process. On loopback the kernel delivers each datagram into the sink's queue
  in the sender's own system call, so the per-copy CPU includes a receive
  path, and the drain process competes for the same CPUs.

    sudo python bench/fanout_threads.py                      # printed
    sudo python bench/fanout_threads.py --json               # one JSON line per run
    sudo python bench/fanout_threads.py --write bench/RESULTS.md
    sudo python bench/fanout_threads.py --sizes 1000 --seconds 5 --sink loopback

On a shared or busy machine the 2-core figures are bounded by what the other
processes leave: rerun on a quiet machine for the speed-up the design targets.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from forwarding import write_section  # noqa: E402

SINK_NET = ("10.77.0.1", "10.77.0.2")  # our veth end, the made-up neighbour behind it
FAKE_MAC = "02:00:00:00:77:02"
SINK_PORTS = 4  # loopback sink sockets
CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 2))  # (cores, fan-out threads)
NETNS_SETUP = (
    "ip link set lo up && ip link add fo0 type veth peer name fo1 && "
    "ip link set fo0 up && ip link set fo1 up && "
    f"ip addr add {SINK_NET[0]}/24 dev fo0 && "
    f"ip neigh replace {SINK_NET[1]} lladdr {FAKE_MAC} dev fo0 nud permanent && "
    'exec "$@"')


def drain(ports: list[int], stop: Any) -> None:
    """The loopback sink: read and discard until told to stop."""
    selector = selectors.DefaultSelector()
    for port in ports:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sink.bind(("127.0.0.1", port))
        sink.setblocking(False)
        selector.register(sink, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in selector.select(0.2):
            try:
                for _ in range(256):
                    key.fileobj.recv(2048)  # type: ignore[union-attr]
            except BlockingIOError:
                pass


def free_udp_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def build_targets(count: int, addrs: list[tuple[str, int]]) -> tuple[list[Any], list[Any]]:
    """K receivers: each its own outbound SRTP context, Rewrite and Target."""
    import pylibsrtp

    from callsctl_sfu.rtc import aiortc_bridge, fastpath

    sessions, targets = [], []
    for i in range(count):
        policy = pylibsrtp.Policy(key=os.urandom(30),
                                  ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True
        session = pylibsrtp.Session(policy)
        sessions.append(session)
        pair = object()
        targets.append(fastpath.Target(
            fastpath.Rewrite(ssrc=10_000 + i, payload_type=111, audio_level_id=1), session,
            aiortc_bridge.srtp_context_address(session), addrs[i % len(addrs)], {1: pair},
            pair))
    return sessions, targets


def task_times() -> dict[int, tuple[float, float]]:
    """Per thread of this process: (CPU seconds, seconds runnable but waiting for a CPU)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            sched = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except OSError:
            continue
        out[int(tid)] = ((int(stat[11]) + int(stat[12])) / tick, int(sched[1]) / 1e9)
    return out


def measure(targets: list[Any], fd: int, cores: list[int], threads: int, seconds: float,
            payload: bytes, first_seq: int) -> dict[str, Any]:
    """One configuration: pin, start the pool, fan out for `seconds`, count.

    Sequence numbers continue from the previous configuration's (`first_seq`): the
    targets' SRTP contexts refuse a packet index far behind one already sent.
    """
    from callsctl_sfu.rtc import fastpath

    fastpath.shutdown_pool()
    os.sched_setaffinity(0, cores)  # before the workers exist: they inherit it
    started = fastpath.start_pool(threads)
    seq = first_seq
    for seq in range(first_seq, first_seq + 20):  # warm-up: caches, the SRTP streams
        fastpath.fanout(fd, 0x90, False, seq & 0xFFFF, seq * 960, 0xABC, payload, 30, targets)
    split0 = fastpath.parallel_fanouts()
    tasks0 = task_times()
    copies = errors = srtp_errors = unsent = fanouts = 0
    seq += 1
    t0, c0 = time.perf_counter(), os.times()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(10):
            result = fastpath.fanout(fd, 0x90, False, seq & 0xFFFF, seq * 960, 0xABC, payload,
                                     30, targets)
            copies += result.sent
            errors += result.send_errors
            srtp_errors += result.srtp_errors
            unsent += len(result.unsent or ())
            seq += 1
            fanouts += 1
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    split = fastpath.parallel_fanouts() - split0
    tasks1 = task_times()
    fastpath.shutdown_pool()
    main = os.getpid()  # the main thread's id is the process id
    deltas = {tid: (t[0] - tasks0[tid][0], t[1] - tasks0[tid][1])
              for tid, t in tasks1.items() if tid in tasks0}
    workers_cpu = sum(d[0] for tid, d in deltas.items() if tid != main)
    waited = sum(d[1] for d in deltas.values())
    return {"targets": len(targets), "cores": len(cores), "threads": started,
            "fanouts": fanouts, "copies": copies, "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3), "copies_per_s": round(copies / wall),
            "cpu_us_per_copy": round(1e6 * cpu / copies, 3) if copies else None,
            "cpu_cores_busy": round(cpu / wall, 2), "split_fanouts": split,
            "workers_cpu_s": round(workers_cpu, 3), "waited_for_cpu_s": round(waited, 3),
            "send_errors": errors, "srtp_errors": srtp_errors, "unsent": unsent,
            "next_seq": seq}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from callsctl_sfu.rtc import fastpath

    if not fastpath.AVAILABLE:
        raise SystemExit(f"fanout_threads: the C fan-out is not available: {fastpath.REASON}")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("fanout_threads: needs at least 2 usable CPUs (see `taskset -p $$`)")
    stop, sink = None, None
    if args.sink == "veth":
        source = SINK_NET[0]
        addrs = [(SINK_NET[1], 20_000 + i) for i in range(64)]
    else:
        source = "127.0.0.1"
        ports = free_udp_ports(SINK_PORTS)
        addrs = [("127.0.0.1", port) for port in ports]
        stop = multiprocessing.Event()
        sink = multiprocessing.Process(target=drain, args=(ports, stop), daemon=True)
        sink.start()
        time.sleep(0.5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sender.bind((source, 0))
    payload = bytes(range(256))[:args.payload]
    results = []
    try:
        for size in args.sizes:
            _sessions, targets = build_targets(size, addrs)
            seq = 0
            for cores, threads in CONFIGS:
                result = measure(targets, sender.fileno(), cpus[:cores], threads, args.seconds,
                                 payload, seq)
                seq = result["next_seq"]
                result["sink"] = args.sink
                results.append(result)
                if args.json:
                    print(json.dumps(result), flush=True)
    finally:
        os.sched_setaffinity(0, cpus)
        sender.close()
        if stop is not None and sink is not None:
            stop.set()
            sink.join(5)
    return results


def render(results: list[dict[str, Any]], command: str, host: str) -> str:
    lines = [
        "### The fan-out on 1 and 2 threads, 1 and 2 cores (bench/fanout_threads.py)",
        "",
        f"Command: `{command}` on {host}. Sink: {results[0]['sink'] if results else '-'}. "
        "One Python thread calls `fastpath.fanout` with K targets (own SRTP context each); "
        "CPU is the whole process's utime + stime; workers' CPU share: the part spent on "
        "the pool's threads; waited for a CPU: seconds the process's threads were runnable "
        "but not running (other load on the machine). Speed-up: copies/s against 1 core, "
        "1 thread for the same K.",
        "",
        "| K | cores | threads | copies/s | CPU µs/copy | cores busy | workers' CPU share "
        "| waited for a CPU s | split fan-outs | errors | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[int, int] = {}
    for r in results:
        if (r["cores"], r["threads"]) == (1, 1):
            base[r["targets"]] = r["copies_per_s"]
        ref = base.get(r["targets"])
        speedup = f"{r['copies_per_s'] / ref:.2f}x" if ref else "-"
        share = f"{r['workers_cpu_s'] / r['cpu_s']:.0%}" if r["cpu_s"] else "-"
        lines.append(f"| {r['targets']} | {r['cores']} | {r['threads']} | "
                     f"{r['copies_per_s']:,} | {r['cpu_us_per_copy']} | {r['cpu_cores_busy']} "
                     f"| {share} | {r['waited_for_cpu_s']} of {r['wall_s']} "
                     f"| {r['split_fanouts']}/{r['fanouts']} "
                     f"| {r['send_errors'] + r['srtp_errors']} | {speedup} |")
    return "\n".join(lines)


def machine_line() -> str:
    from run_all import machine

    load = os.getloadavg()
    return f"{machine()}; load average {load[0]:.2f} at the start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000],
                        help="targets per fan-out (default 200 500 1000)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="measured seconds per configuration (default 2)")
    parser.add_argument("--payload", type=int, default=160,
                        help="payload octets, an Opus frame is ~160 (default 160)")
    parser.add_argument("--sink", choices=("veth", "loopback"), default="veth",
                        help="where the copies go (default veth; see the module docstring)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per run")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if any(not 1 <= size <= 10_000 for size in args.sizes):
        parser.error("--sizes must be 1..10000")
    if not 0.1 <= args.seconds <= 600 or not 1 <= args.payload <= 1000:
        parser.error("--seconds must be 0.1..600 and --payload 1..1000")
    if args.sink == "veth" and not args.in_netns:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            parser.error("--sink veth needs root and unshare(1) for a private network "
                         "namespace; run with sudo or use --sink loopback")
        host = machine_line()
        inner = [sys.executable, __file__, "--in-netns", "--json", "--sink", "veth",
                 "--seconds", str(args.seconds), "--payload", str(args.payload),
                 "--sizes", *map(str, args.sizes)]
        results = run_in_netns("fanout_threads", inner)
        if args.json:
            for result in results:
                print(json.dumps(result))
    else:
        host = machine_line()
        results = run(args)
        if args.in_netns:
            return
    publish("fanout_threads", render(results, command_line("fanout_threads"), host), args,
            f"fanout-threads-{args.sink}")


def run_in_netns(name: str, inner: list[str], timeout: float | None = None
                 ) -> list[dict[str, Any]]:
    """Run `inner` in a private network namespace with the veth of NETNS_SETUP; its results.

    The inner run prints one JSON object per line; the namespace goes with the process.
    """
    done = subprocess.run(["unshare", "--net", "--", "sh", "-c", NETNS_SETUP, "sh", *inner],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{name}: the run in its network namespace failed: "
                         f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def command_line(name: str) -> str:
    """How this run was started, for the section (without --write, --json and the file)."""
    return (f"python bench/{name}.py " + " ".join(
        a for a in sys.argv[1:] if a not in ("--write", "--json") and not a.endswith(".md"))
            ).strip()


def publish(name: str, body: str, args: argparse.Namespace, key: str) -> None:
    """Print the section (unless --json) and write it into --write's file under `key`."""
    if not args.json:
        print(body)
    if args.write:
        write_section(args.write, key, body)


if __name__ == "__main__":
    main()
