"""One UDP socket for every session's ICE, DTLS and SRTP.

aioice binds a socket per candidate per connection; an SFU that promises
operators "open UDP 8443 and nothing else" needs the opposite: one socket, and
a demultiplexer in front of each session's ICE agent.

Demultiplexing (RFC 7983 first-byte ranges, RFC 8445 §7.3):
- a datagram from an address already learned goes to that session: STUN to its
  ICE agent, DTLS into its queue, SRTP/SRTCP straight to the session's fast path;
- from an unknown address, only a STUN Binding Request is considered: its
  USERNAME is `serverUfrag:clientUfrag` (RFC 8445 §7.2.2), which names the
  session; the address is learned only after MESSAGE-INTEGRITY verifies with
  that session's password, so nobody can hijack a session by spoofing;
- a Binding Request without USERNAME gets a plain XOR-MAPPED-ADDRESS answer
  (RFC 8489 §6.3.1), so `callsctl check rtc` can prove the port is reachable
  from outside before any call exists.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol

log = logging.getLogger("callsctl_sfu.rtc.mux")

Address = tuple[str, int]


class MuxStats:
    """Counters an operator wants when media does not flow."""

    __slots__ = ("datagrams_in", "bytes_in", "unknown_dropped", "bare_binding_answered",
                 "auth_failed", "datagrams_out", "bytes_out", "send_errors")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class MuxedStunProtocol(StunProtocol):
    """aioice's per-candidate protocol, speaking through the shared socket.

    It keeps aioice's transaction handling and checks, and replaces only the
    socket: sending goes to the shared transport, closing unregisters from the
    mux instead of closing the socket everyone uses.
    """

    def __init__(self, connection: Connection, mux: UdpMux) -> None:
        super().__init__(connection)
        self.mux = mux
        self.transport = mux.transport  # type: ignore[assignment]
        self.last_rx = 0.0
        # Set by the session once DTLS is up: decrypts and forwards SRTP directly.
        self.fast_rx: Callable[[bytes], None] | None = None
        self._closed_once = False

    @property
    def connection(self) -> Connection:
        return self.receiver  # type: ignore[return-value]

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
        self.mux.sendto(data, addr)

    def send_stun(self, message: stun.Message, addr: Address) -> None:
        self.mux.sendto(bytes(message), addr)

    async def close(self) -> None:
        if self._closed_once:
            return
        self._closed_once = True
        self.fast_rx = None
        self.mux.unregister(self)
        self.connection_lost(None)


class UdpMux(asyncio.DatagramProtocol):
    """The shared media socket and its routing tables."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.by_ufrag: dict[str, MuxedStunProtocol] = {}
        self.by_addr: dict[Address, MuxedStunProtocol] = {}
        self.transactions: dict[bytes, MuxedStunProtocol] = {}
        self.stats = MuxStats()
        self._loop = asyncio.get_event_loop()
        self.advertised: Address = ("127.0.0.1", 0)

    # -- asyncio.DatagramProtocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable from a vanished client) must not stop the socket.
        log.debug("media socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        stats = self.stats
        stats.datagrams_in += 1
        stats.bytes_in += len(data)
        if not data:
            return
        proto = self.by_addr.get(addr)
        first = data[0]
        if proto is not None:
            proto.last_rx = self._loop.time()
            if 127 < first < 192:
                fast = proto.fast_rx
                if fast is not None:
                    fast(data)
                else:
                    proto.receiver.data_received(data, 1)
            elif first < 4:
                proto.datagram_received(data, addr)
            else:
                proto.receiver.data_received(data, 1)
            return
        if first < 4:
            self._unknown_stun(data, addr)
        else:
            stats.unknown_dropped += 1

    # -- routing -----------------------------------------------------------------

    def _unknown_stun(self, data: bytes, addr: Address) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.stats.unknown_dropped += 1
            return
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            proto = self.transactions.get(message.transaction_id)
            if proto is not None:
                proto.datagram_received(data, addr)
            else:
                self.stats.unknown_dropped += 1
            return
        if message.message_class != stun.Class.REQUEST or message.message_method != \
                stun.Method.BINDING:
            self.stats.unknown_dropped += 1
            return
        username = message.attributes.get("USERNAME")
        if username is None:
            self._answer_bare_binding(message, addr)
            return
        proto = self.by_ufrag.get(str(username).split(":", 1)[0])
        if proto is None:
            self.stats.unknown_dropped += 1
            return
        password = proto.connection.local_password.encode("utf8")
        try:
            verified = message.check_message_integrity(password)
        except Exception:  # malformed attributes: treat as unauthenticated
            verified = False
        if not verified:
            self.stats.auth_failed += 1
            proto.datagram_received(data, addr)  # aioice answers 401 (RFC 8489 §9.1.3)
            return
        self.learn(addr, proto)
        proto.last_rx = self._loop.time()
        proto.datagram_received(data, addr)

    def _answer_bare_binding(self, request: stun.Message, addr: Address) -> None:
        response = stun.Message(message_method=stun.Method.BINDING,
                                message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        response.attributes["SOFTWARE"] = "callsctl"
        response.add_fingerprint()
        self.stats.bare_binding_answered += 1
        self.sendto(bytes(response), addr)

    def learn(self, addr: Address, proto: MuxedStunProtocol) -> None:
        if proto._closed_once:
            return
        self.by_addr[addr] = proto

    def register(self, proto: MuxedStunProtocol) -> None:
        self.by_ufrag[proto.connection.local_username] = proto

    def unregister(self, proto: MuxedStunProtocol) -> None:
        ufrag = proto.connection.local_username
        if self.by_ufrag.get(ufrag) is proto:
            del self.by_ufrag[ufrag]
        for addr in [a for a, p in self.by_addr.items() if p is proto]:
            del self.by_addr[addr]
        for tid in [t for t, p in self.transactions.items() if p is proto]:
            del self.transactions[tid]

    def sendto(self, data: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            transport.sendto(data, addr)
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)

    @property
    def session_count(self) -> int:
        return len(self.by_ufrag)

    # -- attaching aiortc/aioice connections ------------------------------------------

    def attach(self, connection: Connection) -> None:
        """Make `connection` gather one host candidate: the shared socket's advertised address.

        Replaces gather_candidates on this instance only, so aiortc clients in the
        same process (checks, load tests) keep their normal behaviour.
        """
        if getattr(connection, "_callsctl_muxed", False):
            return
        connection._callsctl_muxed = True  # type: ignore[attr-defined]
        mux = self

        async def gather_candidates() -> None:
            if connection._local_candidates_start:
                return
            connection._local_candidates_start = True
            proto = MuxedStunProtocol(connection, mux)
            host, port = mux.advertised
            proto.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=1,
                transport="udp",
                priority=candidate_priority(1, "host"),
                host=host,
                port=port,
                type="host",
            )
            connection._protocols.append(proto)
            connection._local_candidates.append(proto.local_candidate)
            connection._local_candidates_end = True
            mux.register(proto)

        connection.gather_candidates = gather_candidates  # type: ignore[method-assign]


def socket_buffer_sizes(transport: asyncio.DatagramTransport) -> tuple[int, int]:
    """(SO_RCVBUF, SO_SNDBUF) the kernel actually granted (Linux reports 2x the request)."""
    sock = transport.get_extra_info("socket")
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
