"""One source cannot take every ICE-TCP slot.

The audit held 600 idle ICE-TCP connections from one address and the server
refused every legitimate ICE-TCP client (the cap was global). Connections
that have not sent a valid first check are now capped per source address,
closed after a few seconds, and a new source always finds room.
127.0.0.2 plays the attacker, 127.0.0.1 the client (Linux routes all of
127/8 over loopback).
"""

from __future__ import annotations

import socket
import time

from aioice import stun

from callsctl_sfu.rtc.icetcp import MAX_UNBOUND_PER_SOURCE, UNBOUND_TIMEOUT

ATTACKERS = 600


def attacker_connection(port: int) -> socket.socket | None:
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(16) != b""
    except BlockingIOError:
        return True  # nothing to read and not closed
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def probe(port: int) -> bool:
    """A bare Binding Request over ICE-TCP from 127.0.0.1, as `check rtc` sends it."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    data = bytes(request)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(len(data).to_bytes(2, "big") + data)
        try:
            header = sock.recv(2)
            if len(header) < 2:
                return False
            body = b""
            while len(body) < int.from_bytes(header, "big"):
                chunk = sock.recv(2048)
                if not chunk:
                    return False
                body += chunk
        except OSError:
            return False
    return stun.parse_message(body).transaction_id == request.transaction_id


def test_idle_connections_from_one_source_do_not_lock_others_out(server) -> None:
    port = server.udp_port  # ICE-TCP listens on the media port number by default
    sockets = [s for s in (attacker_connection(port) for _ in range(ATTACKERS)) if s]
    try:
        time.sleep(0.5)
        assert probe(port), "a legitimate client was refused"
        still_open = [s for s in sockets if is_open(s)]
        assert len(still_open) <= MAX_UNBOUND_PER_SOURCE, len(still_open)
        deadline = time.monotonic() + UNBOUND_TIMEOUT + 10
        while still_open and time.monotonic() < deadline:
            time.sleep(0.5)
            still_open = [s for s in still_open if is_open(s)]
        assert not still_open, "idle unauthenticated connections were not closed"
        assert probe(port)
    finally:
        for sock in sockets:
            sock.close()
