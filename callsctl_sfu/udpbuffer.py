"""The media socket's UDP buffers: what `serve` asks for, and the warning when capped.

A media server that receives a burst larger than its socket's receive buffer
drops packets in the kernel (RcvbufErrors), so `serve` asks for
DEFAULT_UDP_BUFFER_SIZE of SO_RCVBUF and SO_SNDBUF and says so, with the fix,
when net.core.rmem_max / wmem_max cap it (the deployment guide's UDP buffer
tuning, which `callsctl tune --apply` makes). Kept apart from tuning.py, the
sysctl show / apply / persist / revert machinery of `callsctl tune`, so a
serving process imports only this.
"""

from __future__ import annotations

import socket

MIB = 1024 * 1024
DEFAULT_UDP_BUFFER_SIZE = 16 * MIB
"""What `serve` asks for with SO_RCVBUF/SO_SNDBUF on its media socket by default."""


def probe_udp_buffer(requested: int = DEFAULT_UDP_BUFFER_SIZE) -> tuple[int, int]:
    """What a new UDP socket gets when it asks for `requested` bytes: (rcvbuf, sndbuf).

    As reported by getsockopt, i.e. doubled on Linux. No packet is sent; the
    socket is never bound.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, requested)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, requested)
        return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def kernel_caps_udp_buffer(requested: int, got: int) -> bool:
    """True when the kernel gave a socket less buffer than it asked for.

    `got` is what getsockopt(SO_RCVBUF/SO_SNDBUF) reports, which on Linux is
    double the usable size set (the kernel reserves half for bookkeeping), so
    a request that was honoured in full reads back as 2 * requested.
    """
    return got < 2 * requested


def effective_buffer(got: int) -> int:
    """The size the kernel granted, from a doubled getsockopt figure."""
    return got // 2


def format_bytes(value: int) -> str:
    if value >= MIB and value % (MIB // 4) == 0:
        return f"{value / MIB:g} MiB"
    if value >= 1024 and value % 1024 == 0:
        return f"{value // 1024} KiB"
    return f"{value} B"


def udp_buffer_warning(requested: int, rcvbuf: int, sndbuf: int) -> str | None:
    """The warning `serve` logs when the kernel capped its media socket, else None."""
    capped = []
    if kernel_caps_udp_buffer(requested, rcvbuf):
        capped.append(f"SO_RCVBUF {format_bytes(effective_buffer(rcvbuf))} "
                      "(net.core.rmem_max)")
    if kernel_caps_udp_buffer(requested, sndbuf):
        capped.append(f"SO_SNDBUF {format_bytes(effective_buffer(sndbuf))} "
                      "(net.core.wmem_max)")
    if not capped:
        return None
    return (
        f"media socket asked for {format_bytes(requested)} buffers but the kernel capped "
        f"{' and '.join(capped)}; packets may drop under load: run `sudo callsctl tune "
        "--apply` and restart"
    )
