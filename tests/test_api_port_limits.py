"""The API port closes connections that never finish a request and caps how many are open.

An audit found 600 connections that sent one header byte every 10 s, or
nothing at all, stayed open forever (one file descriptor each). Raw sockets
play the attacker here; real requests must keep working around them.
"""

from __future__ import annotations

import socket
import time

import httpx

IDLE = 2  # http_idle_timeout for these servers, seconds
CAP = 12  # max_http_connections


SLOW_START = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def closed_by_server(sock: socket.socket, deadline: float, trickle: bool) -> bool:
    """Wait until the server closes `sock` (EOF or reset) without having answered.

    A trickling client sends a valid request line and then one byte of a header
    that never ends, the way a slow-headers attack does.
    """
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.send(b"a")
            data = sock.recv(1024)
        except TimeoutError:
            continue
        except OSError:
            return True  # reset, or a send into a closed connection
        assert not data, f"the server answered an incomplete request: {data[:60]!r}"
        return True
    return False


def test_silent_and_slow_connections_are_closed(serve_factory) -> None:
    server = serve_factory(env={"CALLSCTL_HTTP_IDLE_TIMEOUT": str(IDLE)})
    silent = [socket.create_connection(("127.0.0.1", server.api_port)) for _ in range(4)]
    slow = [socket.create_connection(("127.0.0.1", server.api_port)) for _ in range(4)]
    for sock in slow:
        sock.sendall(SLOW_START)
    try:
        deadline = time.monotonic() + IDLE + 10
        assert all(closed_by_server(s, deadline, trickle=False) for s in silent)
        assert all(closed_by_server(s, deadline, trickle=True) for s in slow)
        # A client that keeps its connection between requests is served as before.
        with httpx.Client(base_url=server.api_url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/healthz").status_code == 200
    finally:
        for sock in silent + slow:
            sock.close()


def test_connections_beyond_the_cap_are_refused_with_a_log_line(serve_factory) -> None:
    server = serve_factory(env={"CALLSCTL_HTTP_IDLE_TIMEOUT": "30",
                                "CALLSCTL_MAX_HTTP_CONNECTIONS": str(CAP)})
    idle = [socket.create_connection(("127.0.0.1", server.api_port)) for _ in range(CAP)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server.api_port))
        extra.settimeout(5)
        answer = extra.recv(1024)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        log = server.log()
        assert "connection cap" in log and "max_http_connections" in log, log[-2000:]
    finally:
        for sock in idle:
            sock.close()
    # Freed connections make room again.
    for _ in range(50):
        try:
            if httpx.get(f"{server.api_url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    assert httpx.get(f"{server.api_url}/healthz", timeout=5).status_code == 200
