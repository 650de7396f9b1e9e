"""ICE-TCP: passive TCP candidates on ONE listening socket for every session.

Clients whose firewall drops UDP (some corporate networks) can still reach
the SFU over TCP, the seed deployment's "TCP 8443 as fallback". aioice has no
ICE-TCP, so this module supplies it the way the UDP mux supplies one-port UDP:

- one asyncio server accepts every connection (RFC 6544 §5: the server's
  candidates are `tcptype passive`, the browser connects actively);
- each connection carries RFC 4571 frames: a two-byte big-endian length, then
  one STUN, DTLS or SRTP packet (RFC 6544 §3);
- the connection is unbound until its first frame, which must be a STUN
  Binding Request. Without USERNAME it is a reachability probe (`callsctl
  check rtc`) and gets a framed XOR-MAPPED-ADDRESS answer. With USERNAME
  (`serverUfrag:clientUfrag`, RFC 8445 §7.2.2) it names a session, and the
  connection is bound to that session only after MESSAGE-INTEGRITY verifies
  with the session's password — the rule the UDP mux applies to a new address;
- once bound, the connection is a path of that session's aioice Connection:
  `TcpStunProtocol` (rtc/muxproto.py, loaded with the media stack) is the
  aioice protocol object of the session's TCP candidate, and the client's
  address is registered as a peer-reflexive TCP candidate (RFC 8445 §7.3.1.3)
  so aioice pairs it with that protocol. Before any session, a connection's
  first frame is read with rtc/stunwire.py (an idle server imports no aioice).

STUN transactions over TCP are not retransmitted (RFC 8489 §6.2.2): the
stream is reliable, so a request aioice would resend is sent once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Any

from callsctl_sfu.ratelog import RateLimitedLog
from callsctl_sfu.rtc import stunwire
from callsctl_sfu.rtc.demux import parse_stun

if TYPE_CHECKING:  # aioice comes with the media stack: an idle server never imports it
    from aioice import stun
    from aioice.ice import Connection

    from callsctl_sfu.rtc.mux import UdpMux
    from callsctl_sfu.rtc.muxproto import MuxedStunProtocol, TcpStunProtocol

log = logging.getLogger("callsctl_sfu.rtc.icetcp")

Address = tuple[str, int]
MAX_FRAME = 0xFFFF  # RFC 4571 §2: the length field is 16 bits
# A browser sends its first connectivity check as soon as the TCP connection is up;
# a connection that has not sent a valid one after this long is someone else's.
UNBOUND_TIMEOUT = 5.0
MAX_UNBOUND = 512  # connections allowed to wait for their first check at once
# ... and from one source address (IPv6: one /64, what one host usually holds), so
# one attacker cannot take every slot; when all slots are taken, the busiest
# source's oldest connection makes room for a new source.
MAX_UNBOUND_PER_SOURCE = 8
WRITE_HIGH_WATER = 512 * 1024  # bytes queued in user space before frames are dropped
REMEMBERED_REQUESTS = 64


def source_key(host: str) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.ip_network(f"{host}/64", strict=False))
    except ValueError:
        return host


def frame(data: bytes) -> bytes:
    """One RFC 4571 frame: the 16-bit length, then the packet."""
    if len(data) > MAX_FRAME:
        raise ValueError(f"a packet of {len(data)} bytes does not fit an RFC 4571 frame")
    return len(data).to_bytes(2, "big") + data


class Deframer:
    """Reassembles RFC 4571 frames from TCP reads of any size."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        end = len(buffer)
        while end - start >= 2:
            length = (buffer[start] << 8) | buffer[start + 1]
            if end - start - 2 < length:
                break
            frames.append(bytes(buffer[start + 2:start + 2 + length]))
            start += 2 + length
        if start:
            del buffer[:start]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


def tcp_local_preference(candidate_type: str, tcptype: str, other_pref: int = 8191) -> int:
    """RFC 6544 §4.2: local preference = 2^13 * direction-pref + other-pref.

    Recommended direction-pref for host (and relayed) candidates: active 6,
    passive 4, simultaneous-open 2; for server-reflexive ones: S-O 6, active 4,
    passive 2. With the host type preference (126) this keeps a passive TCP
    host candidate below the UDP host candidate (local preference 65535), so
    clients that can use UDP do.
    """
    host_like = {"active": 6, "passive": 4, "so": 2}
    reflexive = {"so": 6, "active": 4, "passive": 2}
    table = reflexive if candidate_type in ("srflx", "prflx") else host_like
    return (table[tcptype] << 13) + other_pref


def tcp_candidate_priority(candidate_type: str, tcptype: str = "passive",
                           other_pref: int = 8191) -> int:
    """RFC 5245 §4.1.2.1 priority with RFC 6544's TCP local preference (component 1)."""
    from aioice.candidate import candidate_priority  # with a session: aioice is loaded

    return candidate_priority(1, candidate_type,
                              tcp_local_preference(candidate_type, tcptype, other_pref))


class TcpStats:
    """Counters an operator wants when the TCP fallback does not work."""

    __slots__ = ("connections_accepted", "connections_bound", "connections_open",
                 "bare_binding_answered", "auth_failed", "unknown_session", "rejected",
                 "timed_out", "evicted", "frames_in", "bytes_in", "frames_out", "bytes_out",
                 "dropped_backpressure")
    # Each counter, for the type checker (__init__ sets them all to 0).
    connections_accepted: int
    connections_bound: int
    connections_open: int
    bare_binding_answered: int
    auth_failed: int
    unknown_session: int
    rejected: int
    timed_out: int
    evicted: int
    frames_in: int
    bytes_in: int
    frames_out: int
    bytes_out: int
    dropped_backpressure: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def _binding_error(request: stun.Message, code: int, reason: str) -> bytes:
    from aioice import stun  # a check for a session: aioice is loaded

    response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.ERROR,
                            transaction_id=request.transaction_id)
    response.attributes["ERROR-CODE"] = (code, reason)
    response.add_fingerprint()  # 401s are not signed (RFC 8489 §9.1.3)
    return bytes(response)


class IceTcpStream(asyncio.Protocol):
    """One accepted TCP connection: unbound until a verified check names its session."""

    def __init__(self, mux: TcpMux) -> None:
        self.mux = mux
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.proto: TcpStunProtocol | None = None
        self._deframer = Deframer()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        mux = self.mux
        mux.stats.connections_accepted += 1
        mux.stats.connections_open += 1
        mux.streams.add(self)
        if not mux.admit(self):
            mux.stats.rejected += 1
            self.close()
            return
        self._timer = asyncio.get_running_loop().call_later(UNBOUND_TIMEOUT, self._expire)

    def data_received(self, data: bytes) -> None:
        frames = self._deframer.feed(data)
        stats = self.mux.stats
        for packet in frames:
            stats.frames_in += 1
            stats.bytes_in += len(packet)
            if self._closed or not packet:
                continue
            try:
                proto = self.proto
                if proto is not None:
                    proto.frame_received(packet, self.peer)
                else:
                    self._first_frame(packet)
            except Exception as exc:  # noqa: BLE001 - a frame never costs a traceback
                self.mux.udp_mux.malformed_packet("tcp", "handler", self.peer, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        mux = self.mux
        if self in mux.streams:
            mux.streams.discard(self)
            mux.stats.connections_open -= 1
        mux.release(self)
        if self.proto is not None:
            self.proto.stream_lost(self)

    # -- binding ----------------------------------------------------------------------

    def _first_frame(self, packet: bytes) -> None:
        """RFC 6544 §7.2-style admission: only a Binding Request may open a session path."""
        stats = self.mux.stats
        if packet[0] > 3:
            stats.rejected += 1
            self.mux.udp_mux.malformed_packet("tcp", "frame", self.peer)
            self.close()
            return
        try:
            header = stunwire.parse(packet)
        except stunwire.StunFormatError as exc:
            stats.rejected += 1
            self.mux.udp_mux.malformed_packet("tcp", "stun", self.peer, exc)
            self.close()
            return
        if header.method != stunwire.BINDING or header.message_class != stunwire.REQUEST:
            stats.rejected += 1
            self.close()
            return
        if header.is_bare_binding_request:
            stats.bare_binding_answered += 1
            self.write_frame(stunwire.binding_success(header.transaction_id, self.peer))
            return
        username = header.attributes[stunwire.USERNAME].decode("utf8", "replace")
        primary = self.mux.udp_mux.by_ufrag.get(username.split(":", 1)[0])
        proto = None
        if primary is not None:
            # A session exists, so the media stack (aioice, rtc/muxproto.py) is loaded.
            from callsctl_sfu.rtc.muxproto import TcpStunProtocol

            sibling = primary.siblings.get("tcp6" if ":" in self.peer[0] else "tcp4")
            proto = sibling if isinstance(sibling, TcpStunProtocol) else None
        if primary is None or proto is None:
            stats.unknown_session += 1
            self.close()
            return
        message = parse_stun(packet)
        if isinstance(message, Exception):
            stats.rejected += 1
            self.mux.udp_mux.malformed_packet("tcp", "stun", self.peer, message)
            self.close()
            return
        password = primary.connection.local_password.encode("utf8")
        try:
            verified = message.check_message_integrity(password)
        except Exception:  # malformed attributes: treat as unauthenticated
            verified = False
        if not verified:
            stats.auth_failed += 1
            self.write_frame(_binding_error(message, 401, "Unauthenticated"))
            self.close()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.mux.release(self)
        stats.connections_bound += 1
        self.proto = proto
        proto.bind(self, self.peer, message)
        proto.frame_received(packet, self.peer)

    def _expire(self) -> None:
        self._timer = None
        if self.proto is None and not self._closed:
            self.mux.stats.timed_out += 1
            self.close()

    # -- sending ---------------------------------------------------------------------

    def write_frame(self, data: bytes) -> bool:
        """Frame and queue one packet; drops it (like a full UDP socket) when the peer lags."""
        transport = self.transport
        if transport is None or self._closed or transport.is_closing():
            return False
        stats = self.mux.stats
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER or len(data) > MAX_FRAME:
            stats.dropped_backpressure += 1
            return False
        transport.write(len(data).to_bytes(2, "big") + data)
        stats.frames_out += 1
        stats.bytes_out += len(data)
        return True

    def close(self) -> None:
        """Close after queued frames are flushed (a 401 still reaches the client)."""
        self._closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class TcpMux:
    """The ICE-TCP listening socket(s) and the connections they accepted."""

    def __init__(self, udp_mux: UdpMux) -> None:
        self.udp_mux = udp_mux
        self.servers: list[asyncio.Server] = []
        self.streams: set[IceTcpStream] = set()
        self.unbound: set[IceTcpStream] = set()
        # source key -> its connections waiting for a first check, oldest first
        self.unbound_by_source: dict[str, dict[IceTcpStream, None]] = {}
        self._refusals = RateLimitedLog(log)
        self.stats = TcpStats()
        self.port = 0

    async def listen(self, host: str, port: int) -> int:
        """Listen on host:port (IPv6 sockets are v6-only); returns the bound port."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = await loop.create_server(lambda: IceTcpStream(self), host=host, port=port,
                                          family=family, reuse_address=True, backlog=256)
        self.servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    def admit(self, stream: IceTcpStream) -> bool:
        """Room for one more connection waiting for its first check, or False.

        Per source (MAX_UNBOUND_PER_SOURCE) and in total (MAX_UNBOUND); at the
        total cap the busiest source gives up its oldest waiting connection,
        so a source with fewer waiting connections always gets in.
        """
        key = source_key(stream.peer[0])
        group = self.unbound_by_source.setdefault(key, {})
        if len(group) >= MAX_UNBOUND_PER_SOURCE:
            self._refusals.warning(key, "ICE-TCP: refused a connection from %s: %d of its "
                                        "connections have not sent a valid check yet",
                                   stream.peer[0], len(group))
            return False
        if len(self.unbound) >= MAX_UNBOUND:
            busiest = max(self.unbound_by_source.values(), key=len)
            if len(busiest) <= len(group) + 1:
                self._refusals.warning("*", "ICE-TCP: %d connections are waiting for their "
                                            "first check from as many sources; refusing "
                                            "more", len(self.unbound))
                return False
            oldest = next(iter(busiest))
            self.stats.evicted += 1
            oldest.close()
            self.release(oldest)
        group[stream] = None
        self.unbound.add(stream)
        return True

    def release(self, stream: IceTcpStream) -> None:
        """The stream is bound to a session or closed: it no longer waits."""
        if stream not in self.unbound:
            return
        self.unbound.discard(stream)
        key = source_key(stream.peer[0])
        group = self.unbound_by_source.get(key)
        if group is not None:
            group.pop(stream, None)
            if not group:
                del self.unbound_by_source[key]

    def make_protocol(self, connection: Connection, primary: MuxedStunProtocol) -> TcpStunProtocol:
        from callsctl_sfu.rtc.muxproto import TcpStunProtocol  # a session: the stack is loaded

        return TcpStunProtocol(connection, self, primary)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for stream in list(self.streams):
            stream.close()
        self.servers.clear()

    def info(self) -> dict[str, Any]:
        return {"port": self.port or None, **self.stats.as_dict()}
