"""Host names and addresses for the check commands: syntax first, then a bounded lookup.

A malformed host is a usage error (exit 2) found without asking DNS; a lookup
runs with a deadline because getaddrinfo can block for tens of seconds.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from typing import Any

from callsctl.errors import EXIT_USAGE, fail

RESOLVE_TIMEOUT = 5.0

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def check_host(host: str) -> str:
    """Validate a host's syntax (IP literal or DNS name, RFC 1123 §2.1) before any lookup."""
    text = (host or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text.count(":") == 1 and text.rsplit(":", 1)[1].isdigit():
        fail(f"invalid host {host!r}: give the port with --port, not in the host", EXIT_USAGE)
    labels = text.rstrip(".").split(".")
    if not text or len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        fail(f"invalid host {host!r}: use an IP address or a DNS name such as "
             "calls.example.com", EXIT_USAGE)
    if all(label.isdigit() for label in labels):
        fail(f"invalid host {host!r}: not a valid IPv4 address", EXIT_USAGE)
    if labels[-1].lower() == "invalid":
        # RFC 6761 §6.4: such names never resolve; answer without asking DNS.
        fail(f"cannot resolve host {host!r}: names under .invalid never resolve (RFC 6761)")
    return text


def resolve(host: str, port: int, socktype: int = socket.SOCK_DGRAM,
            passive: bool = False) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, sockaddr) for HOST, in the resolver's preferred order (RFC 6724).

    The lookup runs in a daemon thread with a deadline, because getaddrinfo can
    block for tens of seconds when DNS is unreachable and a check must not hang.
    Bad syntax is a usage error (exit 2); a name that does not resolve is a
    failed check (exit 1): clients resolving it would fail the same way.
    """
    name = check_host(host)
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["result"] = socket.getaddrinfo(name, port, type=socktype,
                                               flags=socket.AI_PASSIVE if passive else 0)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            box["error"] = exc

    worker = threading.Thread(target=lookup, name="resolve", daemon=True)
    worker.start()
    worker.join(RESOLVE_TIMEOUT)
    if worker.is_alive():
        fail(f"cannot resolve host {host!r}: DNS did not answer within {RESOLVE_TIMEOUT:g} s; "
             "check this machine's DNS, or give the IP address")
    if "error" in box:
        exc = box["error"]
        reason = getattr(exc, "strerror", None) or str(exc)
        fail(f"cannot resolve host {host!r}: {reason}; check the name and this machine's DNS, "
             "or give the IP address")
    results = [(family, sockaddr) for family, _, _, _, sockaddr in box["result"]
               if family in (socket.AF_INET, socket.AF_INET6)]
    if not results:
        fail(f"cannot resolve host {host!r}: no IPv4 or IPv6 address")
    return results


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
