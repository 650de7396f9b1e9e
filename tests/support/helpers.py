"""Shared test utilities: free loopback ports, running the CLI as a user would."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # tests/support/helpers.py -> the repository


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 for the given socket type (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_tcp_port(avoid: tuple[int, ...] = ()) -> int:
    """A port free for both UDP and TCP (the media port is both), none of `avoid`.

    `avoid`: ports the caller already picked but has not bound yet (the API
    port): the kernel may hand the same free number out again.
    """
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        if port in avoid:
            continue
        try:
            with socket.socket() as tcp:
                tcp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free for both UDP and TCP")


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
