"""Shared test utilities: free loopback ports, running the CLI as a user would."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # tests/support/helpers.py -> the repository


# Ports this process handed out lately: a caller may take two before binding either.
_recent_ports: collections.deque[int] = collections.deque(maxlen=512)
# The ports tests pick from: below the kernel's ephemeral range and below the ones
# tests/support/coturn.py takes for its listeners (20000-29000) and relays (30000-32200).
_LOWEST_PORT, _HIGHEST_PORT = 10000, 20000
# Ports browsers refuse to load pages from (Chromium's restricted ports, the WHATWG
# Fetch standard's "bad ports"; net::ERR_UNSAFE_PORT): a test page served there fails.
# The ones above 1024; only 10080 lies in the range above, the rest are for safety.
_BROWSER_BAD_PORTS = frozenset({1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000,
                                6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080})


def _port_slice() -> tuple[int, int] | None:
    """Where this test process picks ports: below the ephemeral range, its own slice.

    A port found by binding port 0 comes from the kernel's ephemeral range, where
    any socket another xdist worker binds to port 0 (a load generator binds
    hundreds) can land before the server under test binds it: a "port in use"
    that has nothing to do with the test. Below that range only explicit binds
    take ports, and each worker has a slice of its own, so two never pick the same.
    None when the machine's ephemeral range leaves no room below it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    width = (min(low, _HIGHEST_PORT) - _LOWEST_PORT) // count
    if width < 200:
        return None
    start = _LOWEST_PORT + (index % count) * width
    return start, start + width


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        try:
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(kinds: tuple[int, ...], avoid: tuple[int, ...] = ()) -> int:
    span = _port_slice()
    if span is not None:
        for _ in range(200):
            port = random.randrange(*span)
            if port in avoid or port in _recent_ports or port in _BROWSER_BAD_PORTS \
                    or not _bindable(port, kinds):
                continue
            _recent_ports.append(port)
            return port
    for _ in range(50):  # no room below the ephemeral range: the kernel's choice
        with socket.socket(socket.AF_INET, kinds[0]) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid and port not in _BROWSER_BAD_PORTS and _bindable(port, kinds):
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 for the given socket type (TCP by default)."""
    return _pick_port((kind,))


def free_udp_tcp_port(avoid: tuple[int, ...] = ()) -> int:
    """A port free for both UDP and TCP (the media port is both), none of `avoid`.

    `avoid`: ports the caller already picked but has not bound yet (the API
    port); `_pick_port` also skips what this process handed out lately.
    """
    return _pick_port((socket.SOCK_DGRAM, socket.SOCK_STREAM), avoid)


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m callsctl ARGS` as a separate process, bounded in time."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "callsctl", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=REPO, input=input)


def is_root() -> bool:
    return os.geteuid() == 0


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run_main(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run the real entry point in-process; return (exit code, stdout, stderr)."""
    from callsctl.app import main

    saved = sys.argv
    sys.argv = ["callsctl", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def wait_until(predicate: Callable[[], Any], timeout: float,
                     interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def ipv6_loopback() -> bool:
    """Whether this host can bind ::1 (containers often run without IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False
