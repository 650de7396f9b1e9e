"""A session's ICE paths on the shared media socket: aioice protocols, loaded with the stack.

aioice's ICE agent keeps one protocol object per local candidate; on the
shared socket (rtc/mux.py) each session gets these instead, which send
through the mux and leave the socket open when they close. They subclass
aioice's `StunProtocol`, so they live here rather than in rtc/mux.py: an idle
server (no call yet) never imports aioice, and this module is imported with
the first session (UdpMux.attach, rtc/peer.py), after the media stack is
loaded (rtc/medialoader.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import Connection, StunProtocol

from callsctl_sfu.rtc.demux import deliver
from callsctl_sfu.rtc.icetcp import REMEMBERED_REQUESTS, tcp_candidate_priority

if TYPE_CHECKING:
    from callsctl_sfu.rtc.icetcp import IceTcpStream, TcpMux
    from callsctl_sfu.rtc.mux import UdpMux

log = logging.getLogger("callsctl_sfu.rtc.icetcp")

Address = tuple[str, int]


class MuxedStunProtocol(StunProtocol):
    """aioice's per-candidate protocol, speaking through the shared socket.

    It keeps aioice's transaction handling and checks, and replaces only the
    socket: sending goes to the shared transport, closing unregisters from the
    mux instead of closing the socket everyone uses.
    """

    # This path is the shared IPv4 socket: the C fan-out and ingress may serve it.
    shared_ipv4 = True

    def __init__(self, connection: Connection, mux: UdpMux) -> None:
        super().__init__(connection)
        self.mux = mux
        self.transport = mux.transport  # type: ignore[assignment]
        self._last_rx = 0.0
        # Set by the session once DTLS is up: decrypts and forwards SRTP directly.
        self.fast_rx: Callable[[bytes], None] | None = None
        # The session's inbound state in the C ingress (fastpath.InSession), once DTLS is
        # up and the C engine runs: its audio is then forwarded without coming up here.
        self.ingress_session: Any = None
        self._closed_once = False
        # The same session's protocols on other paths, keyed udp6/tcp4/tcp6.
        self.siblings: dict[str, StunProtocol] = {}
        # The local address the peer's datagrams last came to (IP_PKTINFO on, rtc/pktinfo.py):
        # what everything for this session is sent from. None: the kernel's choice.
        self.source: str | None = None
        # (peer IP, the source the kernel's route to it prefers): UdpMux.source_for.
        self.kernel_source: tuple[str, str | None] | None = None
        # Synchronous send on this path (the media path's per-packet call).
        self.send_datagram: Callable[[bytes, Address], None] = (
            self._send_from_source if mux.pktinfo else mux.send4)

    def _sending_from(self) -> str | None:
        """The address this session sends from: where its peer writes; before the peer's
        first datagram (aioice checks the candidates the peer signalled at once), the
        advertised address, when it is the host's."""
        return self.source or self.mux.default_source()

    def _send_from_source(self, data: bytes, addr: Address) -> None:
        self.mux.send4(data, addr, self._sending_from())

    @property
    def connection(self) -> Connection:
        return self.receiver

    @property
    def last_rx(self) -> float:
        """Loop time of the last packet from the peer, whichever path read it."""
        session = self.ingress_session
        if session is not None and session.last_rx > self._last_rx:
            return float(session.last_rx)
        return self._last_rx

    @last_rx.setter
    def last_rx(self, value: float) -> None:
        self._last_rx = value

    async def request(self, request: stun.Message, addr: Address,
                      integrity_key: bytes | None = None,
                      retransmissions: int | None = None) -> tuple[stun.Message, Address]:
        self.mux.transactions[request.transaction_id] = self
        try:
            response = await super().request(request, addr, integrity_key, retransmissions)
        finally:
            self.mux.transactions.pop(request.transaction_id, None)
        # A verified answer from addr proves the peer is there: route it to us.
        self.mux.learn(addr, self)
        return response

    async def send_data(self, data: bytes, addr: Address) -> None:
        self.mux.sendto(data, addr, self._sending_from())

    def send_stun(self, message: stun.Message, addr: Address) -> None:
        # This path's synchronous send (send4 on the IPv4 socket: straight to the
        # kernel), as for media: answers to checks and consent checks are as frequent.
        self.mux.stats.stun_out += 1
        self.send_datagram(bytes(message), addr)

    async def close(self) -> None:
        if self._closed_once:
            return
        self._closed_once = True
        self.fast_rx = None
        self.mux.detach_ingress(self)
        self.mux.consent.discard(self.connection)
        self.mux.unregister(self)
        self.connection_lost(None)


class SiblingUdpProtocol(MuxedStunProtocol):
    """A session's IPv6 UDP path: its own candidate and pairs, the primary's fast path."""

    shared_ipv4 = False

    def __init__(self, connection: Connection, mux: UdpMux, primary: MuxedStunProtocol) -> None:
        self.primary = primary
        super().__init__(connection, mux)
        # mux.sendto picks the IPv6 socket by address family (from `source` with --bind ::'s
        # packet info on).
        self.send_datagram = self._send6_from_source if mux.pktinfo6 else mux.sendto

    def _send6_from_source(self, data: bytes, addr: Address) -> None:
        self.mux.sendto(data, addr, self.source)

    @property
    def fast_rx(self) -> Callable[[bytes], None] | None:
        return self.primary.fast_rx

    @fast_rx.setter
    def fast_rx(self, _value: Callable[[bytes], None] | None) -> None:
        pass  # the session sets its fast path on the primary only

    @property
    def last_rx(self) -> float:
        return self.primary.last_rx

    @last_rx.setter
    def last_rx(self, value: float) -> None:
        if value:
            self.primary.last_rx = value


class TcpStunProtocol(StunProtocol):
    """The aioice protocol of one session's passive TCP candidate, over bound TCP streams.

    It has the interface the media path uses on MuxedStunProtocol: `send_datagram`
    (synchronous send to an address) and the session's `fast_rx`/`last_rx`, which
    live on the session's primary (UDP) protocol so that whichever path the
    client ends up on, SRTP goes to the same fast path and counts as activity.
    """

    def __init__(self, connection: Connection, mux: TcpMux, primary: MuxedStunProtocol) -> None:
        super().__init__(connection)
        self.mux = mux
        self.primary = primary
        self.streams: dict[Address, IceTcpStream] = {}
        self._sent_requests: dict[bytes, None] = {}
        self._closed_once = False
        self._loop = asyncio.get_event_loop()

    @property
    def connection(self) -> Connection:
        return self.receiver

    # -- receiving --------------------------------------------------------------------

    def frame_received(self, data: bytes, addr: Address) -> None:
        """Demultiplex one frame as the UDP mux does a datagram (RFC 7983 first byte)."""
        deliver(data, addr, self.primary, self, self._loop.time(), "tcp")

    def bind(self, stream: IceTcpStream, addr: Address, request: stun.Message) -> None:
        """Route addr to stream and make the client's TCP address a remote candidate.

        aioice would learn the address as a peer-reflexive *UDP* candidate; it is
        registered first as what it is, a TCP active one (RFC 6544 §7.1), with the
        PRIORITY the client put in its check (RFC 8445 §7.3.1.3).
        """
        old = self.streams.get(addr)
        if old is not None and old is not stream:
            old.close()
        self.streams[addr] = stream
        connection = self.connection
        from callsctl_sfu.rtc import aiortc_bridge  # loaded with the first session

        remote = aiortc_bridge.remote_candidates(connection)
        for candidate in remote:
            if aiortc_bridge.candidate_network_host(candidate) == addr[0] \
                    and candidate.port == addr[1]:
                return
        priority = request.attributes.get("PRIORITY")
        if not isinstance(priority, int):
            priority = tcp_candidate_priority("prflx", "active")
        remote.append(Candidate(
            foundation=secrets.token_hex(5), component=1, transport="tcp", priority=priority,
            host=addr[0], port=addr[1], type="prflx", tcptype="active"))

    def stream_lost(self, stream: IceTcpStream) -> None:
        """A bound TCP connection closed; if it carried the selected pair, the path is gone."""
        addr = stream.peer
        if self.streams.get(addr) is not stream:
            return
        del self.streams[addr]
        from callsctl_sfu.rtc import aiortc_bridge  # loaded with the first session

        pair = aiortc_bridge.nominated_pair(self.connection)
        if pair is not None and pair.protocol is self and pair.remote_addr == addr:
            log.info("%s: ICE-TCP connection from %s:%d closed", self.connection, *addr)
            self.connection.protocol_lost(self)

    # -- sending ----------------------------------------------------------------------

    def send_datagram(self, data: bytes, addr: Address) -> None:
        stream = self.streams.get(addr)
        if stream is not None:
            stream.write_frame(data)

    async def send_data(self, data: bytes, addr: Address) -> None:
        self.send_datagram(data, addr)

    def send_stun(self, message: stun.Message, addr: Address) -> None:
        if message.message_class == stun.Class.REQUEST:
            sent = self._sent_requests
            if message.transaction_id in sent:
                return  # a retransmission: never on a reliable transport (RFC 8489 §6.2.2)
            sent[message.transaction_id] = None
            if len(sent) > REMEMBERED_REQUESTS:
                del sent[next(iter(sent))]
        self.send_datagram(bytes(message), addr)

    async def close(self) -> None:
        if self._closed_once:
            return
        self._closed_once = True
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.proto = None
            stream.close()
        self.connection_lost(None)
