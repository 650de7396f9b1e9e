"""udp_buffer_size: read once by the server, given to every media UDP socket.

The IPv4 socket is sized in server.py and the IPv6 one (enable_ipv6) in
rtc/connectivity.py, both with size_udp_buffers and the value the server
passes on; nothing else reads the setting. Checked on real sockets: Linux
grants twice the request (its bookkeeping overhead) when it is under the
system maximum, so a small request is visible exactly.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from callsctl_sfu.config import ServeConfig
from callsctl_sfu.rtc.connectivity import Connectivity, size_udp_buffers
from callsctl_sfu.rtc.mux import UdpMux
from tests.support.helpers import ipv6_loopback

SMALL = 48 * 1024  # below every default net.core.rmem_max / wmem_max

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux's buffer accounting")


def _granted(sock: socket.socket) -> tuple[int, int]:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def test_size_udp_buffers_sets_both_directions() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = _granted(sock)
        assert size_udp_buffers(sock, SMALL) == []
        assert _granted(sock) == (2 * SMALL, 2 * SMALL) != before
        assert size_udp_buffers(sock, 0) == []  # 0: leave the socket as it is
        assert _granted(sock) == (2 * SMALL, 2 * SMALL)


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_the_ipv6_media_socket_gets_the_size_the_server_passes() -> None:
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    # The config says something else: the value passed in is the one used.
    config = ServeConfig(bind="127.0.0.1", udp_port=port, stun_server="", ice_tcp=False,
                         enable_ipv6=True, udp_buffer_size=4 * SMALL)
    connectivity = await Connectivity.open(config, mux, port, udp_buffer_size=SMALL)
    try:
        assert mux.transport6 is not None
        assert _granted(mux.transport6.get_extra_info("socket")) == (2 * SMALL, 2 * SMALL)
    finally:
        connectivity.close()
        transport.close()
