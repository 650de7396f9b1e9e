"""A small, blocking STUN/TURN client shared by `check stun`, `check turn` and `check rtc`.

Why blocking sockets and not aioice's asyncio transactions: every check is a
short, strictly sequential conversation with one server, and a blocking socket
with a deadline is the easiest thing to keep bounded in time (no check may
hang). The wire format is not ours: messages are built and parsed with
`aioice.stun` (RFC 5389/8489 encoding, MESSAGE-INTEGRITY, FINGERPRINT); this
module only adds what aioice leaves to its ICE agent:

- transactions with retransmission over UDP (RFC 5389 section 7.2.1) and
  single sends over TCP (section 7.2.2);
- stream framing: STUN messages back to back on a TCP connection to a TURN
  server (RFC 5389 section 7.2.2, RFC 5766 section 2.1), or the two-byte
  length prefix of RFC 4571 that ICE-TCP uses (RFC 6544);
- the TURN client side of RFC 5766 (Allocate, CreatePermission, Send and Data
  indications, Refresh) with long-term credentials (RFC 5389 sections 10.2
  and 15.4) and the TURN REST credential scheme coturn implements for
  `use-auth-secret`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

from aioice import stun
from aioice.stun import Class, Message, Method

from callsctl_sfu.errors import CallsctlError

Address = tuple[str, int]
Framing = Literal["stun", "rfc4571"]

COOKIE = stun.COOKIE
UDP_TRANSPORT = 17 << 24  # REQUESTED-TRANSPORT: protocol number in the first byte (RFC 5766 14.7)
INITIAL_RTO = 0.25  # seconds; RFC 5389 suggests 0.5 s on the open internet, checks favour speed


class StunTimeout(CallsctlError):
    """No answer before the deadline (after retransmissions over UDP)."""
    code = "stun_timeout"


class StunProtocolError(CallsctlError):
    """Bytes that are not a well-formed STUN message, or a transport that failed."""
    code = "stun_protocol_error"


class StunErrorResponse(CallsctlError):
    """The server answered with an error response (class 0x110) and ERROR-CODE."""
    code = "stun_error_response"

    def __init__(self, message: Message) -> None:
        self.response = message
        code, reason = message.attributes.get("ERROR-CODE", (0, ""))
        self.error_code: int = code
        self.reason: str = reason
        super().__init__(f"{code} {reason}".strip())


@dataclass
class Reply:
    """A response with where it came from and the round-trip time of the send that got it."""

    message: Message
    source: Address
    rtt_ms: float


def parse(data: bytes) -> Message:
    """Parse one STUN message, insisting on the RFC 5389 magic cookie.

    aioice's parser accepts any cookie; a check must not mistake a random
    datagram (or an RFC 3489 server's reply) for a modern STUN answer.
    """
    if len(data) < stun.HEADER_LENGTH or data[0] & 0xC0:
        raise StunProtocolError("not a STUN message")
    if struct.unpack("!I", data[4:8])[0] != COOKIE:
        raise StunProtocolError("STUN message without the RFC 5389 magic cookie")
    try:
        return stun.parse_message(data)
    except ValueError as exc:
        raise StunProtocolError(f"malformed STUN message: {exc}") from None


def binding_request(**attributes: object) -> Message:
    """A Binding Request with the given attributes (by aioice attribute name)."""
    return Message(Method.BINDING, Class.REQUEST, attributes=dict(attributes))


def resolve(host: str, port: int, kind: int = socket.SOCK_DGRAM) -> Address:
    """Resolve host to one address, IPv4 first: most self-hosted deployments are IPv4-only."""
    try:
        infos = socket.getaddrinfo(host, port, type=kind)
    except (socket.gaierror, UnicodeError) as exc:
        raise StunProtocolError(f"cannot resolve {host}: {getattr(exc, 'strerror', exc)}") from None
    infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


def family_of(ip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def route_local_ip(dest: Address) -> str:
    """The local address the kernel would use to reach dest (no packet is sent)."""
    with socket.socket(family_of(dest[0]), socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(dest)
        except OSError as exc:
            raise StunProtocolError(f"no route to {dest[0]}: {exc.strerror or exc}") from None
        return str(probe.getsockname()[0])


def fmt_addr(addr: Address | None) -> str:
    if addr is None:
        return "-"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split 'host', 'host:port', '[v6]:port' or a bare IPv6 address; ValueError if malformed."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed address {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:  # bare IPv6 address, no port
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if text.endswith(":") and text.count(":") == 1 or text.endswith("]:"):
        raise ValueError(f"no port after ':' in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in {text!r}")
    return host, int(port_text)


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


class Channel:
    """One socket to one server: a UDP socket (optionally connected) or a TCP stream."""

    def __init__(self, sock: socket.socket, *, stream: bool, framing: Framing = "stun") -> None:
        self.sock = sock
        self.stream = stream
        self.framing = framing
        self._buffer = b""

    # --- construction -------------------------------------------------------------
    @classmethod
    def udp(cls, dest: Address, *, bind: Address | None = None, connect: bool = False) -> Channel:
        """A UDP socket; `connect` makes ICMP port-unreachable surface as ConnectionRefused."""
        sock = socket.socket(family_of(dest[0]), socket.SOCK_DGRAM)
        try:
            if bind is not None:
                sock.bind(bind)
            if connect:
                sock.connect(dest)
        except OSError:
            sock.close()
            raise
        return cls(sock, stream=False)

    @classmethod
    def tcp(cls, dest: Address, timeout: float, framing: Framing = "stun") -> Channel:
        """Connect a TCP stream; raises ConnectionRefusedError / TimeoutError / OSError."""
        sock = socket.socket(family_of(dest[0]), socket.SOCK_STREAM)
        sock.settimeout(max(timeout, 0.01))
        try:
            sock.connect(dest)
        except OSError:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, stream=True, framing=framing)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def local(self) -> Address:
        name = self.sock.getsockname()
        return str(name[0]), int(name[1])

    # --- raw I/O ------------------------------------------------------------------
    def send(self, data: bytes, dest: Address) -> None:
        if not self.stream:
            if self._connected():
                self.sock.send(data)
            else:
                self.sock.sendto(data, dest)
            return
        if self.framing == "rfc4571":
            data = struct.pack("!H", len(data)) + data
        self.sock.sendall(data)

    def _connected(self) -> bool:
        try:
            self.sock.getpeername()
        except OSError:
            return False
        return True

    def recv(self, deadline: float) -> tuple[bytes, Address]:
        """The next datagram or framed message; StunTimeout at the deadline."""
        if not self.stream:
            left = _remaining(deadline)
            if left <= 0:
                raise StunTimeout()
            self.sock.settimeout(left)
            try:
                data, source = self.sock.recvfrom(65536)
            except TimeoutError:
                raise StunTimeout() from None
            return data, (str(source[0]), int(source[1]))
        peer = self.sock.getpeername()
        return self._read_frame(deadline), (str(peer[0]), int(peer[1]))

    def _frame_length(self) -> int | None:
        """Bytes of the first complete frame in the buffer, or None while it is incomplete."""
        if self.framing == "rfc4571":
            if len(self._buffer) < 2:
                return None
            return 2 + struct.unpack("!H", self._buffer[:2])[0]
        if len(self._buffer) < 4:
            return None
        first, length = struct.unpack("!HH", self._buffer[:4])
        if first & 0xC000 == 0x4000:  # TURN ChannelData, padded to 4 bytes over TCP (RFC 5766 11.5)
            return 4 + length + (-length % 4)
        return stun.HEADER_LENGTH + length

    def _read_frame(self, deadline: float) -> bytes:
        while True:
            need = self._frame_length()
            if need is not None and len(self._buffer) >= need:
                frame, self._buffer = self._buffer[:need], self._buffer[need:]
                return frame[2:] if self.framing == "rfc4571" else frame
            left = _remaining(deadline)
            if left <= 0:
                raise StunTimeout()
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise StunTimeout() from None
            if not chunk:
                raise StunProtocolError("the server closed the TCP connection")
            self._buffer += chunk

    # --- transactions ---------------------------------------------------------------
    def transact(self, request: Message, dest: Address, timeout: float,
                 rto: float = INITIAL_RTO) -> Reply:
        """Send a request and wait for its response or error response.

        Over UDP the request is retransmitted with a doubling interval until
        the deadline (RFC 5389 7.2.1). Datagrams that are not STUN or belong
        to another transaction are skipped. RTT is measured from the last
        transmission (Karn's rule: a reply to a retransmitted request cannot
        be attributed to a particular send, so the latest one is the safe one).
        Raises StunErrorResponse, StunTimeout or StunProtocolError.
        """
        data = bytes(request)
        deadline = time.monotonic() + timeout
        interval = rto
        sent_at = time.monotonic()
        self.send(data, dest)
        next_send = sent_at + interval if not self.stream else deadline + 1
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise StunTimeout()
            try:
                raw, source = self.recv(min(deadline, next_send))
            except StunTimeout:
                if time.monotonic() >= deadline:
                    raise
                interval *= 2
                sent_at = time.monotonic()
                self.send(data, dest)
                next_send = sent_at + interval
                continue
            try:
                message = parse(raw)
            except StunProtocolError:
                continue  # not STUN (media, ChannelData, an RFC 3489 reply): not ours
            if message.transaction_id != request.transaction_id:
                continue
            rtt_ms = (time.monotonic() - sent_at) * 1000
            if message.message_class == Class.ERROR:
                raise StunErrorResponse(message)
            if message.message_class != Class.RESPONSE:
                continue
            return Reply(message, source, rtt_ms)


def binding(channel: Channel, dest: Address, timeout: float, **attributes: object) -> Reply:
    """One Binding transaction; the reply carries XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS)."""
    return channel.transact(binding_request(**attributes), dest, timeout)


def mapped_address(message: Message) -> Address | None:
    """XOR-MAPPED-ADDRESS, falling back to the RFC 3489 MAPPED-ADDRESS."""
    value = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get("MAPPED-ADDRESS")
    return (str(value[0]), int(value[1])) if value else None


# --- TURN ---------------------------------------------------------------------------


def rest_credentials(secret: str, user: str, ttl_seconds: int = 3600,
                     now: float | None = None) -> tuple[str, str]:
    """TURN REST API credentials as coturn's `use-auth-secret` checks them.

    username = "<unix expiry>:<user>", password = base64(HMAC-SHA1(secret, username)),
    the scheme of draft-uberti-behave-turn-rest that Mattermost Calls uses
    with `turn_static_auth_secret`.
    """
    expiry = int((time.time() if now is None else now) + ttl_seconds)
    username = f"{expiry}:{user}" if user else str(expiry)
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password), the long-term credential key (RFC 5389 15.4).

    SASLprep is not applied: TURN REST passwords are base64 and operators'
    static users are ASCII in practice.
    """
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


@dataclass
class TurnClient:
    """The client side of one TURN allocation (RFC 5766), over a UDP or TCP channel."""

    channel: Channel
    server: Address
    username: str
    password: str
    timeout: float
    realm: str | None = None
    nonce: bytes | None = None
    relayed: Address | None = None
    mapped: Address | None = None
    lifetime: int | None = None
    stale_nonce_retries: int = 0
    unauthenticated_ok: bool = False
    software: str | None = None
    allocate_rtt_ms: float | None = None
    log: list[str] = field(default_factory=list)

    def _key(self) -> bytes:
        return long_term_key(self.username, self.realm or "", self.password)

    def _signed(self, method: Method, attributes: dict[str, object]) -> Message:
        message = Message(method, Class.REQUEST, attributes=dict(attributes))
        message.attributes["USERNAME"] = self.username
        message.attributes["REALM"] = self.realm or ""
        message.attributes["NONCE"] = self.nonce or b""
        message.add_message_integrity(self._key())
        return message

    def _learn(self, response: Message) -> None:
        """Take REALM/NONCE from a 401/438 so the next request can be authenticated."""
        if "REALM" in response.attributes:
            self.realm = response.attributes["REALM"]
        if "NONCE" in response.attributes:
            self.nonce = response.attributes["NONCE"]
        if "SOFTWARE" in response.attributes:
            self.software = response.attributes["SOFTWARE"]

    def request(self, method: Method, attributes: dict[str, object]) -> Reply:
        """An authenticated request; a 438 Stale Nonce is retried once with the new nonce."""
        for attempt in range(2):
            try:
                reply = self.channel.transact(self._signed(method, attributes), self.server,
                                              self.timeout)
            except StunErrorResponse as exc:
                if exc.error_code == 438 and attempt == 0:
                    self.stale_nonce_retries += 1
                    self.log.append(f"{method.name}: 438 stale nonce, retrying with the new nonce")
                    self._learn(exc.response)
                    continue
                raise
            if not reply.message.check_message_integrity(self._key()):
                raise StunProtocolError(
                    f"{method.name} response failed the MESSAGE-INTEGRITY check"
                )
            return reply
        raise AssertionError("unreachable")

    def allocate(self, lifetime: int = 60) -> Reply:
        """Allocate a UDP relay: the 401 challenge, then the signed request (RFC 5766 6.1)."""
        attributes: dict[str, object] = {"REQUESTED-TRANSPORT": UDP_TRANSPORT,
                                         "LIFETIME": lifetime}
        first = Message(Method.ALLOCATE, Class.REQUEST, attributes=dict(attributes))
        first.add_fingerprint()
        try:
            reply = self.channel.transact(first, self.server, self.timeout)
            # A server that allocates without a challenge does not authenticate at all.
            self.unauthenticated_ok = True
        except StunErrorResponse as exc:
            if exc.error_code != 401:
                raise
            self._learn(exc.response)
            if not self.nonce:
                raise StunProtocolError("401 challenge without NONCE") from None
            reply = self.request(Method.ALLOCATE, attributes)
        attrs = reply.message.attributes
        if "XOR-RELAYED-ADDRESS" not in attrs:
            raise StunProtocolError("Allocate success response without XOR-RELAYED-ADDRESS")
        self.relayed = (str(attrs["XOR-RELAYED-ADDRESS"][0]), int(attrs["XOR-RELAYED-ADDRESS"][1]))
        self.mapped = mapped_address(reply.message)
        self.lifetime = attrs.get("LIFETIME")
        self.allocate_rtt_ms = reply.rtt_ms
        return reply

    def create_permission(self, peer: Address) -> Reply:
        """Install a permission for the peer's IP (RFC 5766 9)."""
        return self.request(Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer})

    def send_indication(self, peer: Address, data: bytes) -> None:
        """Send indications are unauthenticated and never answered (RFC 5766 10.1)."""
        message = Message(Method.SEND, Class.INDICATION,
                          attributes={"XOR-PEER-ADDRESS": peer, "DATA": data})
        message.add_fingerprint()
        self.channel.send(bytes(message), self.server)

    def wait_data(self, deadline: float) -> tuple[Address, bytes]:
        """The next Data indication (RFC 5766 10.3): (peer address, payload)."""
        while True:
            raw, _ = self.channel.recv(deadline)
            try:
                message = parse(raw)
            except StunProtocolError:
                continue
            if message.message_method == Method.DATA and message.message_class == Class.INDICATION:
                peer = message.attributes.get("XOR-PEER-ADDRESS")
                data = message.attributes.get("DATA", b"")
                if peer is not None:
                    return (str(peer[0]), int(peer[1])), data

    def release(self) -> None:
        """Delete the allocation (Refresh with LIFETIME 0, RFC 5766 7); best effort."""
        if self.relayed is None:
            return
        with contextlib.suppress(StunTimeout, StunErrorResponse, StunProtocolError, OSError):
            self.request(Method.REFRESH, {"LIFETIME": 0})
        self.relayed = None


def random_payload(label: bytes = b"callsctl-check") -> bytes:
    """A payload that cannot be confused with a stale or foreign datagram."""
    return label + b":" + os.urandom(8).hex().encode()
