"""Fixtures that start real parts: `callsctl serve` as a subprocess on loopback.

Fixtures shared by several test modules are defined in tests/support/ and
registered here by import (`browser`, `shots`, `coturn_factory`), so test
modules use them by name and never import from one another.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import browser, shots  # noqa: F401  (shared fixtures)
from tests.support.coturn import coturn_factory  # noqa: F401  (shared fixture)
from tests.support.fleet import redis  # noqa: F401  (shared fixture)
from tests.support.serve import ServeProcess, start_serve


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator:
    """Start as many servers as a test needs; all are stopped afterwards."""
    started: list[ServeProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None, wait: bool = True):
        server = start_serve(tmp_path, *args, env=env, wait=wait)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL if server.process.poll() is None else signal.SIGTERM)
    # Whatever a test threw at it, the server must never have logged a traceback.
    for server in started:
        log = server.log()
        if "Traceback" in log:
            start = max(0, log.index("Traceback") - 300)
            pytest.fail(f"serve logged a traceback:\n{log[start:start + 3000]}")


@pytest.fixture
def server(serve_factory) -> ServeProcess:
    """One running server with default settings."""
    return serve_factory()


@pytest.fixture()
def udp_echo() -> Iterator[int]:
    """A UDP echo socket on loopback (a stand-in for `check listen --udp --echo`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(data, peer)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
