"""This host's IPv4 and IPv6 interface addresses, asked of the kernel over rtnetlink.

`serve` reads them once at start, when it is bound to every address: the
first non-loopback IPv4 address is what clients are told to connect to when
nothing else is configured, and the IPv6 ones become host candidates
(rtc/connectivity.py). An idle server should not pay for a library for this
one question: psutil is 1.6 MB of its RSS and ifaddr (ctypes) 0.5 MB, and the
kernel answers a netlink dump with nothing but the socket module.

The request is an RTM_GETADDR dump (rtnetlink(7), netlink(7); the message
layout is the kernel's uapi linux/netlink.h, linux/rtnetlink.h and
linux/if_addr.h). The answer is listed in the order psutil.net_if_addrs and
getifaddrs(3) use: by interface index, and within an interface in the
kernel's order (IPv4 first). An IPv4 address is the interface's own
(IFA_LOCAL), not a point-to-point peer (IFA_ADDRESS). Where netlink is not
available (a sandbox without AF_NETLINK) the same list comes from ifaddr.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
NLMSG_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
IFADDRMSG = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
RTATTR = struct.Struct("=HH")  # rtattr: length, type
MAX_MESSAGES = 100_000  # a bound on the dump, far above any host's address count
TIMEOUT_S = 2.0

Address = tuple[socket.AddressFamily, str]


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """The rtattr list of one message, type -> payload."""
    found: dict[int, bytes] = {}
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > end:
            break
        found[kind] = data[offset + RTATTR.size:offset + length]
        offset += _align(length)
    return found


def _parse(data: bytes, sequence: int, out: list[tuple[int, Address]]) -> bool:
    """Add the addresses of one datagram of the dump to `out`; True once it is done."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, seq, _port = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            raise OSError("truncated netlink message")
        body = offset + NLMSG_HEADER.size
        if seq == sequence:
            if kind == NLMSG_DONE:
                return True
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", data, body)
                if error == 0:  # an acknowledgement (not asked for): nothing more comes
                    return True
                raise OSError(-error, os.strerror(-error))
            if kind == RTM_NEWADDR and body + IFADDRMSG.size <= offset + length:
                family, _prefix, _flags, _scope, index = IFADDRMSG.unpack_from(data, body)
                attrs = _attributes(data, body + IFADDRMSG.size, offset + length)
                raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
                if family == socket.AF_INET and raw and len(raw) == 4:
                    out.append((index, (socket.AF_INET, socket.inet_ntop(family, raw))))
                elif family == socket.AF_INET6 and raw and len(raw) == 16:
                    out.append((index, (socket.AF_INET6, socket.inet_ntop(family, raw))))
        offset += _align(length)
    return False


def via_netlink() -> list[Address]:
    """The kernel's address table, dumped over a NETLINK_ROUTE socket."""
    found: list[tuple[int, Address]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.bind((0, 0))
        sequence = 1
        request = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(request), RTM_GETADDR,
                                   NLM_F_REQUEST | NLM_F_DUMP, sequence, 0)
        sock.sendto(header + request, (0, 0))
        for _ in range(MAX_MESSAGES):
            if _parse(sock.recv(65536), sequence, found):
                break
        else:
            raise OSError("the netlink address dump did not end")
    found.sort(key=lambda item: item[0])  # stable: each interface keeps the kernel's order
    return [address for _index, address in found]


def via_ifaddr() -> list[Address]:
    """The same list from getifaddrs(3), through ifaddr (ctypes): where netlink is refused."""
    import ifaddr

    found: list[Address] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4:
                found.append((socket.AF_INET, str(ip.ip)))
            elif ip.is_IPv6:
                found.append((socket.AF_INET6, str(ip.ip[0]).split("%", 1)[0]))
    return found


def interface_addresses() -> list[Address]:
    """(family, address) of every IPv4 and IPv6 interface address; IPv6 without %scope."""
    try:
        return via_netlink()
    except OSError:
        return via_ifaddr()
