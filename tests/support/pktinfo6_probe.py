"""The mux's IPv6 socket bound to ::, asked on each of two addresses: where answers come from.

    python -m tests.support.pktinfo6_probe CLIENT_ADDRESS ADDRESS [ADDRESS ...]

Run inside a network namespace a test made, whose loopback carries the
addresses (tests/test_pktinfo.py). Prints one JSON line: whether the socket's
packet info is on, and for each address asked on, the address the bare STUN
Binding's answer came from.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from callsctl_sfu.rtc.connectivity import _Ipv6Intake
from callsctl_sfu.rtc.mux import UdpMux

BINDING = bytes.fromhex("000100002112a442") + bytes(range(12))


async def probe(client_address: str, addresses: list[str]) -> dict:
    loop = asyncio.get_running_loop()
    mux = UdpMux()
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::", 0))
    transport, _intake = await loop.create_datagram_endpoint(lambda: _Ipv6Intake(mux), sock=v6)
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client.bind((client_address, 0))
    client.setblocking(False)
    answered_from = {}
    try:
        await asyncio.sleep(0.05)  # the reader swap after connection_made
        port = v6.getsockname()[1]
        for address in addresses:
            client.sendto(BINDING, (address, port))
            _data, sender = await asyncio.wait_for(loop.sock_recvfrom(client, 2048), 5)
            answered_from[address] = sender[0]
    finally:
        transport.close()
        client.close()
    return {"pktinfo6": mux.pktinfo6, "answered_from": answered_from}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(sys.argv[1], sys.argv[2:]))))
