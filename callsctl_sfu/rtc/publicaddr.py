"""Ask a STUN server, once at startup, which public address the media socket has.

The request leaves from the media socket itself, so the answer is the mapping
clients will actually reach (the NAT maps the socket, not the host). It is
time-boxed: a missing, slow or blocked STUN server costs at most `timeout`
seconds of startup and never stops it; the caller falls back to the local
address and says why.

RFC 8489: a Binding Request over UDP, retransmitted with a doubling RTO
starting at 500 ms (§6.2.1) until the deadline; the answer's
XOR-MAPPED-ADDRESS (§14.2), or MAPPED-ADDRESS from an RFC 3489 server (§14.1).
Encoded and read with rtc/stunwire.py: the start imports no aioice.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from callsctl_sfu.rtc import stunwire

if TYPE_CHECKING:
    from callsctl_sfu.rtc.mux import UdpMux

DISCOVERY_TIMEOUT = 3.0
INITIAL_RTO = 0.5


@dataclass(frozen=True)
class Discovery:
    """What the STUN server said: the mapped address, or why there is none."""

    server: str
    address: tuple[str, int] | None
    error: str = ""


async def discover_public_address(mux: UdpMux, host: str, port: int,
                                  timeout: float = DISCOVERY_TIMEOUT) -> Discovery:
    """The media socket's address as seen by the STUN server at host:port (IPv4)."""
    server = f"{host}:{port}"
    stage = ["resolving"]
    try:
        return await asyncio.wait_for(_discover(mux, host, port, server, stage), timeout)
    except TimeoutError:
        if stage[0] == "resolving":
            return Discovery(server, None, f"could not resolve {host} within {timeout:g} s")
        return Discovery(server, None, f"no answer within {timeout:g} s")


async def _discover(mux: UdpMux, host: str, port: int, server: str,
                    stage: list[str]) -> Discovery:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    except OSError as exc:
        return Discovery(server, None, f"cannot resolve {host} ({exc.strerror or exc})")
    stage[0] = "asking"
    if not infos:
        return Discovery(server, None, f"{host} has no IPv4 address")
    dest = infos[0][4][0], infos[0][4][1]
    transaction_id, request = stunwire.binding_request()
    waiter: asyncio.Future[tuple[stunwire.StunMessage, tuple[str, int]]] = loop.create_future()
    mux.stun_waiters[transaction_id] = waiter
    try:
        rto = INITIAL_RTO
        while True:
            mux.sendto(request, dest)
            done, _ = await asyncio.wait({waiter}, timeout=rto)
            if done:
                break
            rto *= 2
        response, _source = waiter.result()
    finally:
        mux.stun_waiters.pop(transaction_id, None)
        if not waiter.done():
            waiter.cancel()
    try:
        if response.message_class != stunwire.SUCCESS:
            code = response.error_code() or (0, "error")
            return Discovery(server, None, f"STUN error {code[0]} {code[1]}")
        mapped = response.mapped_address()
    except stunwire.StunFormatError as exc:
        return Discovery(server, None, f"a malformed answer ({exc})")
    if not mapped:
        return Discovery(server, None, "the answer has no mapped address")
    return Discovery(server, (str(mapped[0]), int(mapped[1])))
