"""The source address of what the server sends, on a media socket bound to every address.

Why: a host with several IPv4 addresses (a secondary address on one interface,
a floating or virtual IP, an address routed to it) answers from whichever
address its route to the peer prefers, not the one the peer wrote to. ICE
drops a STUN answer that does not come from the address it checked (RFC 8445
§7.2.5.2.1), and a browser drops DTLS and SRTP from an address it has no
candidate pair for: a participant who reached the server through its second
address hears nothing, and `callsctl check rtc` reports "answered from
another address".

What: with the socket bound to 0.0.0.0, IP_PKTINFO (ip(7)) is turned on, so
every datagram read carries the address it was sent to, and every datagram
sent can name its source address in the same kind of control message
(`ipi_spec_dst`). The IPv6 socket (--enable-ipv6) bound to :: does the same
with IPV6_RECVPKTINFO and IPV6_PKTINFO (RFC 3542 §6): hosts with several
IPv6 addresses are the rule rather than the exception (the IPv6 socket is
read and written in Python only). The C paths (rtc/_pktinfo.h) read and set
it for what they receive and send on the IPv4 socket; rtc/mux.py does the
same for the Python paths, through these helpers. A socket bound to one
address needs none of it: the kernel sends from that address.
CALLSCTL_PKTINFO=0 turns it off (the kernel's choice again), for side-by-side
measurements and for tests of `check`'s diagnosis.
"""

from __future__ import annotations

import socket
import struct
from functools import lru_cache

from callsctl_sfu.switches import switched_off

ENV = "CALLSCTL_PKTINFO"
# Linux's value (<linux/in.h>); Python 3.11's socket module does not name it.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
# struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }
_IN_PKTINFO = struct.Struct("=i4s4s")
# struct in6_pktinfo { struct in6_addr ipi6_addr; unsigned int ipi6_ifindex; }
_IN6_PKTINFO = struct.Struct("=16sI")
# Room for the control messages of one datagram read: the packet info and a timestamp.
CONTROL_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(16)


def enable(sock: socket.socket) -> bool:
    """Turn the packet info on for a wildcard-bound UDP socket; whether it is on.

    Off (False) for a socket bound to one address, with CALLSCTL_PKTINFO=0, or when
    the kernel refuses the option (then the kernel picks the source, as before).
    """
    if switched_off(ENV) or sock.getsockname()[0] not in ("0.0.0.0", "::"):
        return False
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        return False
    return True


@lru_cache(maxsize=64)
def source_control(source: str) -> list[tuple[int, int, bytes]]:
    """The control message that sends a datagram from the local address `source`."""
    if ":" in source:
        info6 = _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, source), 0)
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info6)]
    info = _IN_PKTINFO.pack(0, socket.inet_aton(source), bytes(4))
    return [(socket.IPPROTO_IP, IP_PKTINFO, info)]


def kernel_source(peer_ip: str) -> str | None:
    """The source address the kernel's route to `peer_ip` prefers, or None (no route).

    A connected UDP socket looks the route up without sending anything. When it
    already is the address a session needs, its copies need no control message:
    on a host with one address that is always so, and the fan-out costs nothing more.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((peer_ip, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return None


def destination(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The address a datagram read with recvmsg was sent to, from its packet info."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            return socket.inet_ntoa(_IN_PKTINFO.unpack_from(data)[2])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and \
                len(data) >= _IN6_PKTINFO.size:
            return socket.inet_ntop(socket.AF_INET6, _IN6_PKTINFO.unpack_from(data)[0])
    return None
