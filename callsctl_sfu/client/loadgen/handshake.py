"""aiortc for the handshake only: ICE, DTLS and SRTP keys, one host candidate, no media loops.

aiortc's per-track machinery (RTP sender/receiver loops, decoder threads,
RTCP reports) is switched off for load-generator connections, and each
participant gathers one host candidate on the address that routes to the
server, so hundreds of participants cost a socket each and nothing more.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)

from callsctl_sfu.rtc import aiortc_bridge

LIGHT_FLAG = "_callsctl_loadgen"
_patched = False


def install_light_switch() -> None:
    """Make aiortc's RTP senders/receivers inert on connections marked as load-generator ones.

    aiortc starts a sender loop, a receiver decoder thread and RTCP tasks per
    transceiver from a task it schedules itself (`__connect`), possibly before a
    renegotiation's new transceivers are visible to us. Guarding the two entry
    points at class level, keyed on a flag set on the connection's (single,
    max-bundle) DTLS transport, covers every transceiver without racing that
    task, and leaves every other RTCPeerConnection in the process untouched.
    """
    global _patched
    if _patched:
        return
    _patched = True
    original_send = RTCRtpSender.send
    original_receive = RTCRtpReceiver.receive

    async def send(self: RTCRtpSender, parameters: Any) -> None:
        if getattr(self.transport, LIGHT_FLAG, False):
            return
        await original_send(self, parameters)

    async def receive(self: RTCRtpReceiver, parameters: Any) -> None:
        if getattr(self.transport, LIGHT_FLAG, False):
            return
        await original_receive(self, parameters)

    RTCRtpSender.send = send  # type: ignore[method-assign]
    RTCRtpReceiver.receive = receive  # type: ignore[method-assign]


async def gather_on(pc: RTCPeerConnection, address: str,
                    consent: Callable[[Any], None] | None = None) -> None:
    """Give `pc` exactly one host candidate, on `address`, before it gathers.

    aioice would bind one socket per interface address (and never loopback,
    which is where a local server is): for hundreds of participants that is
    hundreds of useless sockets and connectivity checks. Call after the first
    transceiver exists and before setLocalDescription; `pc` must use max-bundle.
    With `consent` (a `ConsentScheduler.add`), that scheduler checks the
    connection's consent once ICE completes, instead of a task of aioice's own
    per connection: the generator's loop then wakes once per tick for all of
    them, as the server's does.
    """
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise RuntimeError("gather_on needs a transceiver first")
    connection = aiortc_bridge.ice_connection(transceivers[0].sender.transport.transport)
    if aiortc_bridge.gathering_started(connection):
        return
    if consent is not None:
        aiortc_bridge.replace_consent(connection, consent)
    candidates = await connection.get_component_candidates(component=1, addresses=[address])
    if not candidates:
        raise OSError(f"cannot bind a UDP socket on {address}")
    aiortc_bridge.set_local_candidates(connection, list(candidates))


def local_address_for(host: str, port: int = 9) -> str:
    """The local address the kernel would send from to reach host (no packet is sent)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
        sock.connect(info[4])
        return sock.getsockname()[0]


def is_loopback_host(host: str) -> bool:
    """True when every address host resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)
