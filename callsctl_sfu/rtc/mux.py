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

An idle server (no session yet) imports no aioice: what it must read and
answer before a call, bare Binding requests and the STUN server's answer at
start, goes through rtc/stunwire.py; the sessions' aioice protocols are in
rtc/muxproto.py, imported with the first session.

Each session gets one *primary* protocol (IPv4 UDP, the one the media path
hooks its SRTP fast path into) and, when enabled, siblings for the same
session on other paths: IPv6 UDP (a second, v6-only socket on the same port
number) and ICE-TCP (rtc/icetcp.py). Siblings share the primary's `fast_rx`
and `last_rx`, so media arriving on any path takes the same fast path and
keeps the session alive. Every protocol offers `send_datagram(data, addr)`,
which sends on the path the selected candidate pair uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callsctl_sfu.ratelog import RateLimitedLog
from callsctl_sfu.rtc import fastpath, hostaddrs, pktinfo, stunwire
from callsctl_sfu.rtc.demux import deliver, dispatch_stun, parse_stun

if TYPE_CHECKING:  # aioice and what is built on it come with the media stack (module doc)
    from aioice.candidate import Candidate
    from aioice.ice import Connection, StunProtocol

    from callsctl_sfu.rtc.consent import ConsentScheduler
    from callsctl_sfu.rtc.icetcp import TcpMux
    from callsctl_sfu.rtc.muxproto import MuxedStunProtocol

log = logging.getLogger("callsctl_sfu.rtc.mux")

Address = tuple[str, int]
# Local preference of IPv6 host candidates: one below IPv4's so priorities stay
# unique (RFC 8445 §5.1.2.1); the client, which is controlling, decides anyway.
IPV6_LOCAL_PREFERENCE = 65534
# Datagrams read per wake-up of the media socket (datagram_received) and the largest one.
READ_BATCH = 64
# How long a thread keeps the GIL once another asks for it, while the reader thread
# runs (CPython's default is 5 ms): the reader needs the GIL for each read of the
# socket, so a busy event loop would otherwise delay the next packets by up to that
# (bench/RESULTS.md: at 1 x 900, 8 speaking, on one core, delay p50 4.6 ms against 37.6).
READER_SWITCH_INTERVAL = 0.001
MAX_DATAGRAM = 65536


@dataclass(frozen=True)
class CandidateSpec:
    """One local candidate every session advertises (same for all sessions: one port)."""

    transport: str  # "udp" or "tcp" (passive)
    type: str  # "host" or "srflx"
    host: str
    port: int
    related: Address | None = None  # base of a server-reflexive candidate

    @property
    def path(self) -> str:
        """Which socket carries it: udp4, udp6, tcp4 or tcp6."""
        return f"{self.transport}{6 if ':' in self.host else 4}"

    def candidate(self) -> Candidate:
        # Called when a session gathers, so after the media stack (aioice) is loaded.
        from aioice.candidate import Candidate, candidate_foundation, candidate_priority

        from callsctl_sfu.rtc.icetcp import tcp_candidate_priority

        base = self.related[0] if self.related else self.host
        v6 = ":" in self.host
        if self.transport == "tcp":
            priority = tcp_candidate_priority(self.type, "passive", 8190 if v6 else 8191)
        else:
            priority = candidate_priority(1, self.type, IPV6_LOCAL_PREFERENCE if v6 else 65535)
        return Candidate(
            foundation=candidate_foundation(self.type, self.transport, base),
            component=1, transport=self.transport, priority=priority, host=self.host,
            port=self.port, type=self.type,
            related_address=self.related[0] if self.related else None,
            related_port=self.related[1] if self.related else None,
            tcptype="passive" if self.transport == "tcp" else None)


class MuxStats:
    """Counters an operator wants when media does not flow."""

    __slots__ = ("datagrams_in", "bytes_in", "unknown_dropped", "bare_binding_answered",
                 "auth_failed", "datagrams_out", "bytes_out", "send_errors", "stun_in",
                 "stun_out")
    # Each counter, for the type checker (__init__ sets them all to 0).
    datagrams_in: int
    bytes_in: int
    unknown_dropped: int
    bare_binding_answered: int
    auth_failed: int
    datagrams_out: int
    bytes_out: int
    send_errors: int
    stun_in: int  # STUN messages received (checks, consent, answers), either UDP socket
    stun_out: int  # STUN messages sent: answers to checks, own checks and consent requests

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


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
        # What every session advertises; None = one UDP host candidate at `advertised`.
        self.candidate_specs: list[CandidateSpec] | None = None
        self.transport6: asyncio.DatagramTransport | None = None  # --enable-ipv6
        self._sock: socket.socket | None = None
        self._backlogged = False
        # IP_PKTINFO on the IPv4 socket (rtc/pktinfo.py): bound to every address, each
        # session's datagrams are sent from the address its peer wrote to.
        self.pktinfo = False
        self.pktinfo6 = False  # the same on the IPv6 socket (--enable-ipv6), bound to ::
        self.local_ipv4: frozenset[str] = frozenset()  # this host's IPv4 addresses, then
        self.tcp: TcpMux | None = None  # ICE-TCP, when enabled
        # Answers to the server's own STUN requests (public address discovery).
        self.stun_waiters: dict[bytes, asyncio.Future[tuple[stunwire.StunMessage, Address]]] = {}
        # (transport, kind) -> malformed packets (callsctl_rtc_malformed_packets_total):
        # anyone can send them, so each costs a count, and a log line only now and then.
        self.malformed: Counter[tuple[str, str]] = Counter()
        self._malformed_log = RateLimitedLog(log)
        # ICE consent freshness of every attached connection (RFC 7675), one timer for all:
        # made with the first session (the `consent` property), as it needs aioice.
        self._consent: ConsentScheduler | None = None
        # The C reader of the IPv4 socket (rtc/_ingress.c), None with the Python engine.
        self.ingress: Any = fastpath.Ingress() if fastpath.Ingress is not None else None
        # What the ingress did besides reading, for the forwarder (set by it): counters,
        # speakers heard, send-cost samples.
        self.ingress_sink: Callable[[Any], None] | None = None
        # The eventfd the ingress's reader thread wakes the loop with, while it runs.
        self._wake_fd = -1
        # Consent STUN the ingress handled itself (rtc/_iceanswer.c): received, answers sent.
        self.ingress_stun_in = 0
        self.ingress_stun_out = 0

    # -- asyncio.DatagramProtocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The real socket behind asyncio's transport (get_extra_info gives a wrapper
        # without sendto): send4 uses it while the kernel takes data, and
        # datagram_received reads the rest of a batch from it.
        sock = getattr(transport, "_sock", None)
        self._sock = sock if isinstance(sock, socket.socket) else None
        if self._sock is not None and pktinfo.enable(self._sock):
            self.pktinfo = True
            self.local_ipv4 = frozenset(address for family, address in
                                        hostaddrs.interface_addresses()
                                        if family == socket.AF_INET)
        if self.ingress is not None and self._sock is not None:
            # asyncio adds its reader right after this call; take the socket over after it.
            self._loop.call_soon(self._read_with_ingress)
        elif self.pktinfo and self._sock is not None:
            # asyncio's reader gives no destination address: read with recvmsg instead.
            self._loop.call_soon(self.read_with_recvmsg, self._sock, transport)

    def _read_with_ingress(self) -> None:
        """Read the IPv4 socket with the C ingress instead of asyncio's one-datagram reader.

        The transport stays (sending, its write queue, closing); only its reader is
        replaced. The public add_reader refuses a transport's socket, so this uses the
        selector loop's own `_add_reader`, which the transport itself registered with
        and which its close() undoes. A loop without it keeps asyncio's reader (and
        every packet takes the Python path).
        """
        sock, transport = self._sock, self.transport
        add_reader = getattr(self._loop, "_add_reader", None)
        if sock is None or transport is None or transport.is_closing() or add_reader is None:
            self.ingress = None
            return
        if fastpath.INGRESS_THREAD and self._start_reader_thread(sock):
            return
        add_reader(sock.fileno(), self._ingress_ready)

    def read_with_recvmsg(self, sock: socket.socket, transport: Any) -> bool:
        """Read `sock` (the IPv4 socket, or the IPv6 one) in Python with recvmsg, which
        gives each datagram's destination (rtc/pktinfo.py), instead of asyncio's reader,
        through the same private selector calls as _read_with_ingress. False (asyncio's
        reader kept) when the transport is closing or the loop has no such calls."""
        loop: Any = self._loop
        if transport is None or transport.is_closing() or \
                getattr(loop, "_add_reader", None) is None:
            return False
        loop._remove_reader(sock.fileno())
        loop._add_reader(sock.fileno(), self._read_batch, READ_BATCH,
                         None if sock is self._sock else sock)
        return True

    def _start_reader_thread(self, sock: socket.socket) -> bool:
        """Read the socket on the ingress's own thread (rtc/_ingress.c); False if it cannot.

        asyncio's reader of the socket is removed (the thread reads it now); the loop
        watches the thread's eventfd instead, readable only when something needs Python.
        """
        fd = sock.fileno()
        loop: Any = self._loop  # the selector loop's own reader calls (see above)
        loop._remove_reader(fd)
        try:
            self._wake_fd = self.ingress.start(fd, self.fanout_fd())
        except OSError as exc:
            log.warning("the C ingress cannot read on a thread of its own (%s); the event "
                        "loop reads the media socket", exc)
            loop._add_reader(fd, self._ingress_ready)
            return False
        fastpath.reader_started(self.ingress)
        if sys.getswitchinterval() > READER_SWITCH_INTERVAL:
            sys.setswitchinterval(READER_SWITCH_INTERVAL)
        self._loop.add_reader(self._wake_fd, self._reader_thread_ready)
        return True

    def _stop_reader_thread(self) -> None:
        """Stop and join the reader thread (before the socket closes); its counters are kept."""
        ingress = self.ingress
        if ingress is None or not ingress.running:
            return
        if self._wake_fd >= 0:
            self._loop.remove_reader(self._wake_fd)
            self._wake_fd = -1
        ingress.stop()
        fastpath.reader_stopped(ingress)
        self._handle_thread_output(ingress)

    def _reader_thread_ready(self) -> None:
        """The reader thread handed something up: its counters, then each hand-up in order."""
        ingress = self.ingress
        if ingress is None:
            return
        self._handle_thread_output(ingress)
        failure = ingress.failure
        if failure is not None:
            self._give_up_ingress(failure)

    def _handle_thread_output(self, ingress: Any) -> None:
        """The reader thread's counters since the last collection, then its hand-ups in order."""
        results = ingress.take()
        self._handle_drain(ingress.collect(), counted=True)
        for result in results:
            self._handle_drain(result, counted=True)

    def collect_ingress(self) -> None:
        """Fold what the reader thread counted into the stats now (before they are read).

        The thread counts in C and hands up only what needs Python, so /stats,
        /metrics and the once-a-second sampler call this first to read exact counters.
        """
        ingress = self.ingress
        if ingress is not None and ingress.running:
            self._handle_drain(ingress.collect(), counted=True)

    def ingress_stats(self) -> dict[str, Any]:
        """How the media socket is read, for GET /stats: reader "thread" (the C ingress on
        its own thread), "event-loop" (the C ingress from asyncio's callback) or "python";
        wakes: times the thread woke the event loop; stun_in / stun_out: ICE consent
        messages it handled without Python (checks answered, answers to ours taken) and
        the answers it sent; plan_checks: times a route's receivers had their nominated
        pairs looked up, once per change of any pair (fastpath.NominatedPairs), not per
        packet."""
        ingress = self.ingress
        if ingress is None:
            return {"reader": "python", "wakes": 0, "stun_in": 0, "stun_out": 0,
                    "plan_checks": 0}
        return {"reader": "thread" if ingress.running else "event-loop",
                "wakes": int(getattr(ingress, "wakes", 0)),
                "stun_in": self.ingress_stun_in, "stun_out": self.ingress_stun_out,
                "plan_checks": fastpath.plan_checks()}

    def _ingress_ready(self) -> None:
        """The socket is readable: one C drain, then what it handed up, in order."""
        sock = self._sock
        if sock is None:
            return
        if self.ingress is None:  # it failed once: the Python path reads from now on
            self._read_batch(READ_BATCH)
            return
        try:
            result = self.ingress.drain(sock.fileno(), self.fanout_fd(), self._loop.time())
        except Exception as exc:  # noqa: BLE001 - a failure must cost speed, never media
            self._give_up_ingress(exc)
            return
        self._handle_drain(result, counted=False)

    def _handle_drain(self, result: Any, counted: bool) -> None:
        """Account for one drain's result and handle what it handed up, in order.

        counted: the reader thread already left the handed-up datagrams out of the
        counters (asyncio mode: they are subtracted here); handle_datagram counts
        them, like any other.
        """
        stats = self.stats
        slow = result.slow
        datagrams_in, bytes_in = result.datagrams_in, result.bytes_in
        if slow and not counted:
            datagrams_in -= len(slow)
            bytes_in -= sum(len(item[0]) for item in slow)
        stats.datagrams_in += datagrams_in
        stats.bytes_in += bytes_in
        if result.truncated:
            self.malformed[("udp", "oversized")] += result.truncated
        if result.forwarded or result.send_errors or result.unsent:
            self.fanned_out(result.forwarded, result.wire_octets, result.send_errors,
                            result.unsent)
        sink = self.ingress_sink
        if sink is not None and (result.rtp_in or result.loud or result.samples):
            sink(result)
        if result.error:
            self.error_received(OSError(result.error, os.strerror(result.error)))
        if result.stun_in:  # consent checks answered, answers taken (rtc/_iceanswer.c)
            self.ingress_stun_in += result.stun_in
            self.ingress_stun_out += result.stun_out
            stats.stun_in += result.stun_in
            self.count_stun_sent(result.stun_out, result.stun_octets_out)
        if result.plain:  # decrypted video packets whose next step Python decides, in order
            for on_plain, packet in result.plain:
                on_plain(packet)
        if slow:
            for data, addr, destination in slow:
                self.handle_datagram(data, addr, destination)

    @property
    def consent(self) -> ConsentScheduler:
        """The consent scheduler, made with the first session (the media stack is loaded)."""
        consent = self._consent
        if consent is None:
            from callsctl_sfu.rtc.consent import ConsentScheduler

            consent = self._consent = ConsentScheduler()
        return consent

    @consent.setter
    def consent(self, scheduler: ConsentScheduler) -> None:
        self._consent = scheduler

    def count_stun_sent(self, messages: int, octets: int) -> None:
        """STUN the C ingress sent on the IPv4 socket itself (consent checks and answers)."""
        stats = self.stats
        stats.stun_out += messages
        stats.datagrams_out += messages
        stats.bytes_out += octets

    def consent_stats(self) -> dict[str, int]:
        """The scheduler's counters for GET /stats; empty before the first session."""
        return {} if self._consent is None else self._consent.stats_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_reader_thread()  # asyncio closes the socket after this returns
        self._sock = None
        if self._consent is not None:
            self._consent.close()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable from a vanished client) must not stop the socket.
        log.debug("media socket error: %s", exc)

    def _give_up_ingress(self, exc: BaseException) -> None:
        """The C ingress failed: say so once and read every datagram in Python from now on.

        The sessions' routes and sources are dropped with it, so nothing is
        forwarded twice or lost: each packet takes the Python path, as with
        CALLSCTL_FAST_PATH=0.
        """
        log.error("the C ingress failed (%s: %s); the media socket is read in Python from "
                  "now on, at a higher CPU cost per packet", type(exc).__name__, exc)
        threaded = self.ingress is not None and self.ingress.running
        self._stop_reader_thread()
        self.ingress = None
        sock, add_reader = self._sock, getattr(self._loop, "_add_reader", None)
        if threaded and sock is not None and add_reader is not None:
            add_reader(sock.fileno(), self._ingress_ready)  # the Python reader, as before
        for proto in set(self.by_addr.values()):
            session = getattr(proto, "ingress_session", None)
            if session is not None:
                session.clear_routes()
                proto.ingress_session = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """asyncio's one datagram per wake-up, then what else is queued (up to READ_BATCH).

        asyncio reads a single datagram each time the loop polls the socket; when
        the loop is busy (a join storm: handshakes, events to hundreds) that caps
        the media socket at one datagram per loop pass, the kernel queue grows,
        forwarding delay grows with it and ICE consent answers arrive too late
        (sessions removed). Draining a batch per wake-up keeps the socket's pace
        independent of how long the loop's other work takes.
        """
        self.handle_datagram(data, addr)
        self._read_batch(READ_BATCH - 1)

    def _read_batch(self, count: int, sock: socket.socket | None = None) -> None:
        """Read and route up to `count` queued datagrams in Python, as many as are there
        (from the IPv4 socket, or `sock`: the IPv6 one)."""
        with_destination = self.pktinfo if sock is None else self.pktinfo6
        sock = sock or self._sock
        if sock is None:
            return
        destination = None
        for _ in range(count):
            try:
                if with_destination:
                    data, ancdata, _flags, addr = sock.recvmsg(MAX_DATAGRAM,
                                                               pktinfo.CONTROL_SPACE)
                    destination = pktinfo.destination(ancdata)
                else:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket, as asyncio reports it
                self.error_received(exc)
                return
            self.handle_datagram(data, addr, destination)

    def handle_datagram(self, data: bytes, addr: Any, destination: str | None = None) -> None:
        """Route one datagram (either socket: IPv6 datagrams come here directly).

        destination: the local address it was sent to, when IP_PKTINFO is on; what
        the session (or a bare STUN answer) is sent from from now on.
        """
        addr = (addr[0], addr[1])
        stats = self.stats
        stats.datagrams_in += 1
        stats.bytes_in += len(data)
        if not data:
            return
        try:
            proto = self.by_addr.get(addr)
            if proto is not None:
                if destination is not None:
                    proto.source = destination
                deliver(data, addr, proto, proto, self._loop.time())
                return
            if data[0] < 4:
                self._unknown_stun(data, addr, destination)
            else:
                stats.unknown_dropped += 1
        except Exception as exc:  # noqa: BLE001 - one datagram never costs a traceback
            self.malformed_packet("udp", "handler", addr, exc)

    def malformed_packet(self, transport: str, kind: str, addr: Address,
                         exc: BaseException | None = None) -> None:
        """Count a packet that could not be used; log it once per source per interval."""
        self.malformed[(transport, kind)] += 1
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "malformed"
        self._malformed_log.warning(addr[0], "dropped a malformed %s %s packet from %s:%d (%s)",
                                    transport, kind, addr[0], addr[1], why[:120])

    # -- routing -----------------------------------------------------------------

    def _unknown_stun(self, data: bytes, addr: Address, destination: str | None = None) -> None:
        """STUN from an address no session has: a bare Binding, an answer to us, a first check.

        Read with rtc/stunwire.py, which is all an idle server needs; a message
        for a session (a check with USERNAME, an answer to a session's own
        check) goes on to aioice's parser in `_session_stun`, and only when a
        session exists, so an idle server never imports aioice.
        """
        self.stats.stun_in += 1
        try:
            message = stunwire.parse(data)
        except stunwire.StunFormatError as exc:
            self.stats.unknown_dropped += 1
            self.malformed_packet("udp", "stun", addr, exc)
            return
        if message.is_bare_binding_request:
            self.stats.bare_binding_answered += 1
            self.sendto(stunwire.binding_success(message.transaction_id, addr), addr,
                        destination)
            return
        if message.message_class in (stunwire.SUCCESS, stunwire.ERROR):
            waiter = self.stun_waiters.get(message.transaction_id)
            if waiter is not None and message.transaction_id not in self.transactions:
                if not waiter.done():
                    waiter.set_result((message, addr))
                return
        if not self.by_ufrag and not self.transactions:  # no session it could be for
            self.stats.unknown_dropped += 1
            return
        self._session_stun(data, addr, destination)

    def _session_stun(self, data: bytes, addr: Address, destination: str | None = None) -> None:
        """A first check for a session, or an answer to a session's check (aioice's codec)."""
        from aioice import stun  # imported with the media stack, before any session exists

        message = parse_stun(data)
        if isinstance(message, Exception):
            self.stats.unknown_dropped += 1
            self.malformed_packet("udp", "stun", addr, message)
            return
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            proto = self.transactions.get(message.transaction_id)
            if proto is not None:
                dispatch_stun(proto, message, addr)
            else:
                self.stats.unknown_dropped += 1
            return
        if message.message_class != stun.Class.REQUEST or message.message_method != \
                stun.Method.BINDING:
            self.stats.unknown_dropped += 1
            return
        username = message.attributes.get("USERNAME")
        proto = self.by_ufrag.get(str(username).split(":", 1)[0])
        if proto is None:
            self.stats.unknown_dropped += 1
            return
        if ":" in addr[0]:
            proto = proto.siblings.get("udp6", proto)  # type: ignore[assignment]
        password = proto.connection.local_password.encode("utf8")
        try:
            verified = message.check_message_integrity(password)
        except Exception:  # malformed attributes: treat as unauthenticated
            verified = False
        if not verified:
            self.stats.auth_failed += 1
            dispatch_stun(proto, message, addr)  # aioice answers 401 (RFC 8489 §9.1.3)
            return
        self.learn(addr, proto)
        proto.last_rx = self._loop.time()
        if destination is not None:
            proto.source = destination  # aioice answers it at once, from there
        dispatch_stun(proto, message, addr)

    def learn(self, addr: Address, proto: MuxedStunProtocol) -> None:
        if proto._closed_once:
            return
        self.by_addr[addr] = proto
        if proto.ingress_session is not None and ":" not in addr[0]:
            self.ingress.add(addr, proto.ingress_session)

    def attach_ingress(self, proto: MuxedStunProtocol, session: Any) -> None:
        """The session's DTLS is up: the C ingress may read its IPv4 sources' media."""
        if self.ingress is None or proto._closed_once:
            return
        sock = self._sock
        if fastpath.INGRESS_THREAD and not self.ingress.running and sock is not None \
                and self.transport is not None and not self.transport.is_closing():
            # The media stack (and with it the thread's locking, fastpath.wire) loads with
            # the first session: an idle server's socket was read by the event loop so far.
            self._start_reader_thread(sock)
        proto.ingress_session = session
        from callsctl_sfu.rtc.consent import hand_to_ingress  # loaded with the first session

        hand_to_ingress(proto.connection, session)
        for addr, owner in self.by_addr.items():
            if owner is proto and ":" not in addr[0]:
                self.ingress.add(addr, session)

    def detach_ingress(self, proto: MuxedStunProtocol) -> None:
        """Every packet of this session comes up to Python again (it closes)."""
        if proto.ingress_session is None or self.ingress is None:
            return
        proto.ingress_session.clear_routes()
        proto.ingress_session = None
        for addr, owner in self.by_addr.items():
            if owner is proto and ":" not in addr[0]:
                self.ingress.remove(addr)

    def register(self, proto: MuxedStunProtocol) -> None:
        self.by_ufrag[proto.connection.local_username] = proto

    def unregister(self, proto: MuxedStunProtocol) -> None:
        ufrag = proto.connection.local_username
        if self.by_ufrag.get(ufrag) is proto:
            del self.by_ufrag[ufrag]
        for addr in [a for a, p in self.by_addr.items() if p is proto]:
            del self.by_addr[addr]
            if self.ingress is not None and ":" not in addr[0]:
                self.ingress.remove(addr)
        for tid in [t for t, p in self.transactions.items() if p is proto]:
            del self.transactions[tid]

    def sendto(self, data: bytes, addr: Address, source: str | None = None) -> None:
        """Send on the socket of addr's family, from `source` when the packet info is on."""
        if source is not None and ":" not in addr[0] and self.pktinfo:
            self.send4(data, addr, source)
            return
        if source is not None and ":" in addr[0] and self.pktinfo6 and \
                self._send6_from(data, addr, source):
            return
        transport = self.transport
        if self.transport6 is not None and ":" in addr[0]:
            transport = self.transport6
        self._queue_in_asyncio(data, addr, transport)

    def send4(self, data: bytes, addr: Address, source: str | None = None) -> None:
        """The forwarding path's send on the IPv4 socket: straight to the kernel.

        asyncio's transport.sendto does the same after several checks that cost
        about as much as the send; only when the kernel's buffer is full does this
        fall back to it, which queues and drains when the socket is writable (from
        the kernel's choice of source address: asyncio has no control messages).
        source: the local address to send from (IP_PKTINFO on), else the kernel's.
        """
        sock = self._sock
        if sock is not None and not self._backlogged:
            try:
                if source is not None and self.pktinfo:
                    sock.sendmsg([data], pktinfo.source_control(source), 0, addr)
                else:
                    sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self._set_backlogged(True)
            except OSError:
                self.stats.send_errors += 1
                return
            else:
                stats = self.stats
                stats.datagrams_out += 1
                stats.bytes_out += len(data)
                return
        self._queue_in_asyncio(data, addr, self.transport)
        transport = self.transport
        if transport is not None and not transport.get_write_buffer_size():
            self._set_backlogged(False)

    def _send6_from(self, data: bytes, addr: Address, source: str) -> bool:
        """The IPv6 socket's send from `source`; False: let asyncio queue it (kernel full)."""
        transport: Any = self.transport6  # a selector datagram transport (a write buffer)
        sock = getattr(transport, "_sock", None)  # as connection_made reads the IPv4 one
        if not isinstance(sock, socket.socket) or transport is None or \
                transport.get_write_buffer_size():
            return False  # asyncio holds datagrams for it: they go first
        try:
            sock.sendmsg([data], pktinfo.source_control(source), 0, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.stats.send_errors += 1
            return True
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)
        return True

    def _queue_in_asyncio(self, data: bytes, addr: Address,
                          transport: asyncio.DatagramTransport | None) -> None:
        """asyncio's send, which queues what the kernel will not take now."""
        if transport is None or transport.is_closing():
            return
        try:
            transport.sendto(data, addr)
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)

    def default_source(self) -> str | None:
        """What a session sends from before its peer's first datagram says where it wrote:
        the advertised IPv4 address when it is one of this host's (a VIP given as
        ice_host_override), else None (the kernel's choice)."""
        host = self.advertised[0]
        return host if self.pktinfo and host in self.local_ipv4 else None

    def source_for(self, proto: Any, pair: Any) -> str | None:
        """The local address a session's fanned-out media to `pair` must name, or None.

        The nominated pair's local candidate when it is one of this host's addresses
        (what the peer checked); else (an advertised address that is not the host's,
        as behind a 1:1 NAT) the address the session's datagrams last came to. None
        when that is what the kernel would choose anyway (one lookup per session and
        peer address): the copies then carry no control message, which measured
        about 5 % more CPU per copy (bench/RESULTS.md, "Source addresses").
        """
        if not self.pktinfo:
            return None
        host = getattr(getattr(pair, "local_candidate", None), "host", None)
        wanted = str(host) if host in self.local_ipv4 else getattr(proto, "source", None)
        if wanted is None:
            return None
        peer_ip = pair.remote_addr[0]
        known = getattr(proto, "kernel_source", None)
        if known is None or known[0] != peer_ip:
            known = (peer_ip, pktinfo.kernel_source(peer_ip))
            if hasattr(proto, "kernel_source"):
                proto.kernel_source = known
        return None if known[1] == wanted else wanted

    def _set_backlogged(self, backlogged: bool) -> None:
        """asyncio holds queued datagrams (or no longer): the reader thread's fan-out follows."""
        self._backlogged = backlogged
        ingress = self.ingress
        if ingress is not None and ingress.running:
            ingress.send_fd = self.fanout_fd()

    def fanout_fd(self) -> int:
        """The IPv4 socket for the C fan-out, or -1 while asyncio holds queued data.

        While the kernel's buffer is full the fan-out steps aside, so datagrams
        keep their order through asyncio's queue (send4 clears the state).
        """
        sock = self._sock
        if sock is None or self._backlogged:
            return -1
        return sock.fileno()

    def fanned_out(self, sent: int, wire_octets: int, errors: int,
                   unsent: list[tuple[bytes, Address]] | None) -> None:
        """Account for one C fan-out; queue what the kernel would not take now."""
        stats = self.stats
        stats.datagrams_out += sent
        stats.bytes_out += wire_octets
        stats.send_errors += errors
        if unsent:
            self._set_backlogged(True)
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            for data, addr in unsent:
                transport.sendto(data, addr)

    @property
    def session_count(self) -> int:
        return len(self.by_ufrag)

    # -- attaching aiortc/aioice connections ------------------------------------------

    def specs(self) -> list[CandidateSpec]:
        """The candidates to advertise, the primary (IPv4 UDP host) first."""
        specs = self.candidate_specs or [CandidateSpec("udp", "host", *self.advertised)]
        return sorted(specs, key=lambda s: (s.path != "udp4", s.type != "host"))

    def attach(self, connection: Connection) -> None:
        """Make `connection` gather the shared sockets' candidates instead of its own sockets.

        One protocol per path (udp4 primary, then udp6/tcp4/tcp6 siblings) whose
        local candidate is that path's host candidate; server-reflexive
        candidates are only advertised, their base is the host candidate's socket
        (RFC 8445 §5.1.1.2). Replaces gather_candidates on this instance only, so
        aiortc clients in the same process (checks, load tests) keep their
        normal behaviour. Likewise its consent freshness: the mux's one
        scheduler (rtc/consent.py) checks it instead of a task of its own.
        """
        if getattr(connection, "_callsctl_muxed", False):
            return
        connection._callsctl_muxed = True  # type: ignore[attr-defined]
        mux = self
        # A connection exists only once the media stack is loaded (rtc/medialoader.py).
        from callsctl_sfu.rtc import aiortc_bridge
        from callsctl_sfu.rtc.muxproto import MuxedStunProtocol, SiblingUdpProtocol

        aiortc_bridge.replace_consent(connection, self.consent.add)

        async def gather_candidates() -> None:
            if aiortc_bridge.gathering_started(connection):
                return
            primary = MuxedStunProtocol(connection, mux)
            candidates: list[Candidate] = []
            for spec in mux.specs():
                candidate = spec.candidate()
                candidates.append(candidate)
                if spec.type != "host" or spec.path in primary.siblings:
                    continue
                proto: StunProtocol
                if spec.path == "udp4" and not hasattr(primary, "local_candidate"):
                    proto = primary
                elif spec.path == "udp6" and mux.transport6 is not None:
                    proto = SiblingUdpProtocol(connection, mux, primary)
                elif spec.transport == "tcp" and mux.tcp is not None:
                    proto = mux.tcp.make_protocol(connection, primary)
                else:
                    continue
                proto.local_candidate = candidate
                aiortc_bridge.protocols(connection).append(proto)
                if proto is not primary:
                    primary.siblings[spec.path] = proto
            aiortc_bridge.set_local_candidates(connection, candidates)
            mux.register(primary)

        connection.gather_candidates = gather_candidates  # type: ignore[method-assign]


def socket_buffer_sizes(transport: asyncio.DatagramTransport) -> tuple[int, int]:
    """(SO_RCVBUF, SO_SNDBUF) the kernel actually granted (Linux reports 2x the request)."""
    sock = transport.get_extra_info("socket")
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
