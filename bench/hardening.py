"""Before/after figures for the hardening against the audit's loads (docs/reliability.md).

Four loads an unauthenticated (or singly authenticated) client can put on a
server, each against a fresh `callsctl serve` on loopback, bounded in count
and time:

- flood:    malformed STUN datagrams (2-octet FINGERPRINT, 0-octet LIFETIME,
            ...) at --rate per second for --seconds on the media port, while
            two aiortc participants talk; server CPU, log bytes written, the
            audio frames/s one participant receives, the malformed counter;
- api:      --connections TCP connections to the API port, half silent, half
            sending a request line and then one header byte every 2 s; how many are still open after
            --api-wait seconds, and whether a real request is answered;
- icetcp:   --connections idle ICE-TCP connections from 127.0.0.2; whether a
            client from 127.0.0.1 still gets its bare Binding answered, and how
            many attacker connections are open after 1 s and after 8 s;
- sessions: --sockets websockets joining with ONE token; sessions right after,
            and after --session-wait seconds.

`--repo DIR` runs the server from another checkout of the code (e.g. the
commit before the fixes, unpacked with `git archive`), with this one's
virtualenv; the client side always runs this checkout's code.

    python bench/hardening.py --json /tmp/after.json
    git archive a522756 | tar -x -C /tmp/before
    python bench/hardening.py --repo /tmp/before --json /tmp/before.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from aioice import stun  # noqa: E402

from callsctl_sfu.client.participant import Participant  # noqa: E402
from callsctl_sfu.datadir import load_or_create_secret  # noqa: E402
from callsctl_sfu.tokens import issue_token  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
        try:
            with socket.socket() as tcp:
                tcp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


class Serve:
    """`callsctl serve` from `repo` on loopback, its log in a file."""

    def __init__(self, repo: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.api_port, self.udp_port = free_port(), free_port()
        self.data_dir = workdir / f"data-{self.api_port}"
        self.log_path = workdir / f"serve-{self.api_port}.log"
        full_env = {**os.environ, "CALLSCTL_STUN_SERVER": "", "PYTHONPATH": str(repo),
                    **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1", "--api-port",
             str(self.api_port), "--udp-port", str(self.udp_port), "--data-dir",
             str(self.data_dir)], cwd=repo, env=full_env, stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.api_port}"

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{self.base}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"serve did not start: {self.log_path.read_text()[-2000:]}")

    def token(self, call: str, user: str) -> str:
        return issue_token(load_or_create_secret(self.data_dir), call, user, 3600)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size

    async def sessions(self) -> int:
        async with aiohttp.ClientSession() as http, http.get(f"{self.base}/stats") as response:
            return int((await response.json())["sessions"])

    async def metric(self, name: str) -> float:
        async with aiohttp.ClientSession() as http, http.get(f"{self.base}/metrics") as response:
            text = await response.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except Exception:  # noqa: BLE001 - a bench must not leave a server behind
            self.process.kill()


def malformed_packets() -> list[bytes]:
    def packet(kind: int, value: bytes) -> bytes:
        body = struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)
        return struct.pack("!HHI12s", 1, len(body), 0x2112A442, os.urandom(12)) + body
    return [packet(0x8028, b"\1\2"), packet(0x0024, b"\1\2"), packet(0x802A, b"\1\2"),
            packet(0x000D, b"")]


async def flood(repo: Path, workdir: Path, rate: int, seconds: float) -> dict[str, Any]:
    server = Serve(repo, workdir)
    await server.ready()
    people = [Participant(f"ws://127.0.0.1:{server.api_port}/ws", server.token("bench", user),
                          "bench", user, tone=tone) for user, tone in (("a", 440), ("b", 660))]
    try:
        for person in people:
            await person.join()
        for person in people:
            await person.wait_connected(15)
        await asyncio.sleep(2)
        listener, speaker = people
        packets = malformed_packets()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        target = ("127.0.0.1", server.udp_port)
        frames_before = listener.frames_from[speaker.session_id]
        cpu_before, log_before = server.cpu_seconds(), server.log_bytes()
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(packets[sent % len(packets)], target)
                sent += 1
            await asyncio.sleep(0.005)
        window = time.monotonic() - started
        sock.close()
        result = {
            "datagrams_sent": sent, "window_s": round(window, 1),
            "server_cpu_percent": round(100 * (server.cpu_seconds() - cpu_before) / window, 1),
            "log_bytes": server.log_bytes() - log_before,
            "audio_frames_per_s": round(
                (listener.frames_from[speaker.session_id] - frames_before) / window, 1),
        }
        try:
            result["malformed_counter"] = await server.metric(
                "callsctl_rtc_malformed_packets_total")
        except Exception:  # noqa: BLE001 - the old code has no such metric
            result["malformed_counter"] = None
        return result
    finally:
        for person in people:
            await person.close()
        server.stop()


def still_open(sock: socket.socket) -> bool:
    """True while the peer has not closed `sock` (whatever it sent before is drained)."""
    sock.setblocking(False)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


async def api(repo: Path, workdir: Path, connections: int, wait: float) -> dict[str, Any]:
    server = Serve(repo, workdir)
    await server.ready()
    sockets: list[socket.socket] = []
    try:
        for _ in range(connections):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", server.api_port), 5))
            except OSError:
                break
        slow = sockets[len(sockets) // 2:]
        for sock in slow:  # a request line, then a header that never ends
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        while time.monotonic() - started < wait:
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            await asyncio.sleep(2)
        open_after = sum(still_open(s) for s in sockets)
        try:
            async with aiohttp.ClientSession() as http, \
                    http.get(f"{server.base}/healthz",
                             timeout=aiohttp.ClientTimeout(total=5)) as response:
                legit = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            legit = False
        return {"connections_opened": len(sockets), "wait_s": wait,
                "still_open_after_wait": open_after, "legit_request_answered": legit}
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def ice_tcp_probe(port: int) -> bool:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    data = bytes(request)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(len(data).to_bytes(2, "big") + data)
            header = sock.recv(2)
            return len(header) == 2
    except OSError:
        return False


async def icetcp(repo: Path, workdir: Path, connections: int) -> dict[str, Any]:
    server = Serve(repo, workdir)
    await server.ready()
    sockets = []
    try:
        for _ in range(connections):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            try:
                sock.connect(("127.0.0.1", server.udp_port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        await asyncio.sleep(1)
        open_1s = sum(still_open(s) for s in sockets)
        legit = await asyncio.to_thread(ice_tcp_probe, server.udp_port)
        await asyncio.sleep(7)
        open_8s = sum(still_open(s) for s in sockets)
        return {"attacker_connections": len(sockets), "open_after_1s": open_1s,
                "open_after_8s": open_8s, "legit_client_answered": legit}
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


async def sessions(repo: Path, workdir: Path, count: int, wait: float) -> dict[str, Any]:
    server = Serve(repo, workdir, env={"CALLSCTL_WS_RATE_LIMIT": "1000"})
    await server.ready()
    token = server.token("bench", "mallory")
    async with aiohttp.ClientSession() as http:
        sockets = []
        try:
            for _ in range(count):
                ws = await http.ws_connect(f"ws://127.0.0.1:{server.api_port}/ws?token={token}")
                await ws.send_str(json.dumps({"type": "join", "call": "bench"}))
                sockets.append(ws)
            await asyncio.sleep(1)
            right_after = await server.sessions()
            await asyncio.sleep(wait)
            later = await server.sessions()
            return {"sockets": count, "sessions_after_1s": right_after,
                    f"sessions_after_{wait:g}s_more": later}
        finally:
            for ws in sockets:
                await ws.close()
            server.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    repo = Path(args.repo).resolve()
    results: dict[str, Any] = {"repo": str(repo), "measured": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="callsctl-hardening-") as tmp:
        workdir = Path(tmp)
        if "flood" in args.only:
            results["flood"] = await flood(repo, workdir, args.rate, args.seconds)
        if "api" in args.only:
            results["api"] = await api(repo, workdir, args.connections, args.api_wait)
        if "icetcp" in args.only:
            results["icetcp"] = await icetcp(repo, workdir, args.connections)
        if "sessions" in args.only:
            results["sessions"] = await sessions(repo, workdir, args.sockets, args.session_wait)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(HERE.parent),
                        help="checkout whose server code runs (default: this one)")
    parser.add_argument("--only", nargs="+", default=["flood", "api", "icetcp", "sessions"],
                        choices=["flood", "api", "icetcp", "sessions"])
    parser.add_argument("--rate", type=int, default=10000, help="malformed datagrams/s")
    parser.add_argument("--seconds", type=float, default=10, help="flood duration")
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--api-wait", type=float, default=20)
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--session-wait", type=float, default=25)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
