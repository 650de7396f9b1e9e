"""`callsctl check capture`: the guide's `sudo tcpdump -n port 8443`, with every packet named.

tcpdump shows that packets move; an operator debugging a call needs to know how
far the call got. So each packet on the media port is classified the way the
SFU itself demultiplexes its one socket (RFC 7983 §7, first byte of the UDP
payload):

    0..3     STUN (ICE connectivity checks, RFC 8445; STUN itself RFC 8489)
    16..19   ZRTP (RFC 6189)
    20..63   DTLS (RFC 6347; key exchange for SRTP, RFC 5764)
    64..79   TURN ChannelData (RFC 8656 §12)
    128..191 RTP or RTCP (RFC 3550), SRTP/SRTCP once DTLS ran (RFC 3711);
             RTCP when the second byte is 192..223 (RFC 5761 §4)

TCP on the same port is ICE-TCP (RFC 6544): each STUN/DTLS/RTP packet is
prefixed by a two-byte length (RFC 4571 §2), and the framed payload is
classified by the same rules. The milestones of a call's set-up (first ICE
check with USERNAME, its success response, DTLS ClientHello/ServerHello, first
SRTP) are what tell "blocked by a firewall" apart from "ICE works, DTLS fails".

The classification functions at module level are pure (bytes in, names out)
so tests and `check listen` use them without scapy. scapy is imported only
inside the command: importing it costs about a second, and `callsctl --help`
must stay fast.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from callsctl.check import app
from callsctl.check.netcat import (
    SignalStop,
    parse_count,
    parse_port,
    parse_seconds,
    resolve,
)
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.errors import EXIT_USAGE, fail

# --- packet kinds --------------------------------------------------------------------------

STUN = "STUN"
DTLS = "DTLS"
RTP = "SRTP/RTP"
RTCP = "SRTCP/RTCP"
TURN_CHANNEL = "TURN ChannelData"
ZRTP = "ZRTP"
OTHER = "other"
TCP_CONTROL = "TCP control"

STUN_MAGIC_COOKIE = 0x2112A442  # RFC 8489 §5

_STUN_METHODS = {
    0x001: "Binding",
    0x003: "Allocate",
    0x004: "Refresh",
    0x006: "Send",
    0x007: "Data",
    0x008: "CreatePermission",
    0x009: "ChannelBind",
}
_STUN_CLASSES = ("request", "indication", "success", "error")
_STUN_CLASS_TEXT = {
    "request": "Request",
    "indication": "Indication",
    "success": "Success Response",
    "error": "Error Response",
}
_ATTR_MAPPED_ADDRESS = 0x0001
_ATTR_USERNAME = 0x0006
_ATTR_ERROR_CODE = 0x0009
_ATTR_XOR_MAPPED_ADDRESS = 0x0020
_ATTR_USE_CANDIDATE = 0x0025

_DTLS_CONTENT = {20: "ChangeCipherSpec", 21: "Alert", 22: "Handshake", 23: "ApplicationData"}
_DTLS_HANDSHAKE = {
    0: "HelloRequest",
    1: "ClientHello",
    2: "ServerHello",
    3: "HelloVerifyRequest",
    4: "NewSessionTicket",
    11: "Certificate",
    12: "ServerKeyExchange",
    13: "CertificateRequest",
    14: "ServerHelloDone",
    15: "CertificateVerify",
    16: "ClientKeyExchange",
    20: "Finished",
}
_RTCP_TYPES = {200: "SR", 201: "RR", 202: "SDES", 203: "BYE", 204: "APP", 205: "RTPFB",
               206: "PSFB", 207: "XR"}


@dataclass(frozen=True)
class Classification:
    """What one datagram (or one ICE-TCP frame) is, with the fields a milestone needs."""

    kind: str
    detail: str = ""
    stun_method: str | None = None
    stun_class: str | None = None  # request / indication / success / error
    username: str | None = None  # STUN USERNAME: ICE "remote-ufrag:local-ufrag"
    transaction_id: bytes | None = None
    mapped_address: str | None = None  # from (XOR-)MAPPED-ADDRESS
    use_candidate: bool = False
    handshake: tuple[str, ...] = ()  # DTLS handshake messages readable in clear (epoch 0)
    payload_type: int | None = None  # RTP payload type / RTCP packet type
    ssrc: int | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.detail}".strip()


def _text_preview(data: bytes, limit: int = 40) -> str | None:
    """The payload as text if it is printable (netcat probes are), else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or not all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return None
    shown = text if len(text) <= limit else text[:limit] + "…"
    return repr(shown)


def _xor_address(value: bytes, transaction_id: bytes) -> str | None:
    """Decode XOR-MAPPED-ADDRESS (RFC 8489 §14.2): port and address XORed with the cookie."""
    if len(value) < 8:
        return None
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0] ^ (STUN_MAGIC_COOKIE >> 16)
    key = struct.pack("!I", STUN_MAGIC_COOKIE) + transaction_id
    if family == 0x01:
        raw = bytes(a ^ b for a, b in zip(value[4:8], key[:4], strict=True))
        return f"{ipaddress.IPv4Address(raw)}:{port}"
    if family == 0x02 and len(value) >= 20:
        raw = bytes(a ^ b for a, b in zip(value[4:20], key[:16], strict=True))
        return f"[{ipaddress.IPv6Address(raw)}]:{port}"
    return None


def _plain_address(value: bytes) -> str | None:
    """Decode MAPPED-ADDRESS (RFC 8489 §14.1), used by classic STUN servers."""
    if len(value) < 8:
        return None
    port = struct.unpack_from("!H", value, 2)[0]
    if value[1] == 0x01:
        return f"{ipaddress.IPv4Address(value[4:8])}:{port}"
    if value[1] == 0x02 and len(value) >= 20:
        return f"[{ipaddress.IPv6Address(value[4:20])}]:{port}"
    return None


def _classify_stun(data: bytes) -> Classification:
    """Header and the attributes a diagnosis needs (RFC 8489 §5, §14)."""
    if len(data) < 20:
        return Classification(STUN, "(truncated header)")
    msg_type, length, cookie = struct.unpack_from("!HHI", data)
    transaction_id = data[8:20]
    # RFC 8489 §5: the 14-bit type interleaves method bits M0-M11 with class bits C0, C1.
    method_num = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    cls = _STUN_CLASSES[((msg_type >> 4) & 0x1) | ((msg_type >> 7) & 0x2)]
    method = _STUN_METHODS.get(method_num, f"method {method_num:#05x}")
    detail = f"{method} {_STUN_CLASS_TEXT[cls]}"
    if cookie != STUN_MAGIC_COOKIE:
        detail += " (classic RFC 3489, no magic cookie)"
    username = mapped = None
    use_candidate = False
    end = 20 + length
    if length % 4 or end > len(data):
        detail += " (truncated or malformed length)"
        end = len(data)
    offset = 20
    # Each attribute is type(2) length(2) value, padded to 4 bytes: the loop advances
    # by at least 4 bytes per turn and stops at the message end.
    while offset + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + attr_len]
        if attr_type == _ATTR_USERNAME:
            username = value.decode("utf-8", "replace")
        elif attr_type == _ATTR_XOR_MAPPED_ADDRESS:
            mapped = _xor_address(value, transaction_id) or mapped
        elif attr_type == _ATTR_MAPPED_ADDRESS and mapped is None:
            mapped = _plain_address(value)
        elif attr_type == _ATTR_USE_CANDIDATE:
            use_candidate = True
        elif attr_type == _ATTR_ERROR_CODE and len(value) >= 4:
            code = (value[2] & 0x7) * 100 + value[3]
            detail += f" {code} {value[4:].decode('utf-8', 'replace')}".rstrip()
        offset += 4 + attr_len + (-attr_len % 4)
    if username is not None:
        detail += f" USERNAME={username}"
    if mapped is not None:
        detail += f" mapped={mapped}"
    return Classification(STUN, detail, stun_method=method, stun_class=cls, username=username,
                          transaction_id=transaction_id, mapped_address=mapped,
                          use_candidate=use_candidate)


def _classify_dtls(data: bytes) -> Classification:
    """Walk the DTLS records of one datagram (RFC 6347 §4.1, §4.2.2); name what is in clear."""
    names: list[str] = []
    handshake: list[str] = []
    offset = 0
    # A record header is 13 bytes; every turn consumes a whole record, at most 64 of them.
    for _ in range(64):
        if offset + 13 > len(data):
            break
        content, _version, epoch, length = struct.unpack_from("!BHH6xH", data, offset)
        body = data[offset + 13 : offset + 13 + length]
        if content == 22 and epoch == 0:
            # Handshake fragments: type(1) length(3) seq(2) frag_offset(3) frag_length(3).
            pos = 0
            for _ in range(32):
                if pos + 12 > len(body):
                    break
                msg = _DTLS_HANDSHAKE.get(body[pos], f"handshake type {body[pos]}")
                handshake.append(msg)
                names.append(msg)
                frag_len = int.from_bytes(body[pos + 9 : pos + 12], "big")
                pos += 12 + frag_len
        elif content == 22:
            names.append("encrypted handshake (Finished)")
        elif content == 23:
            names.append("application data (SCTP: data channel)")
        else:
            names.append(_DTLS_CONTENT.get(content, f"content type {content}"))
        offset += 13 + length
    unique = list(dict.fromkeys(names))
    return Classification(DTLS, ", ".join(unique) or "(truncated record)",
                          handshake=tuple(handshake))


def _classify_rtp_family(data: bytes) -> Classification:
    """RTP vs RTCP per RFC 5761 §4: RTCP packet types 200-207 sit in the 192..223 band."""
    if len(data) >= 2 and 192 <= data[1] <= 223:
        ptype = data[1]
        ssrc = struct.unpack_from("!I", data, 4)[0] if len(data) >= 8 else None
        name = _RTCP_TYPES.get(ptype, f"type {ptype}")
        detail = name + (f" SSRC {ssrc:#010x}" if ssrc is not None else "")
        return Classification(RTCP, detail, payload_type=ptype, ssrc=ssrc)
    if len(data) < 12:
        return Classification(RTP, "(shorter than an RTP header)")
    pt = data[1] & 0x7F
    seq, _ts, ssrc = struct.unpack_from("!HII", data, 2)
    return Classification(RTP, f"PT {pt} SSRC {ssrc:#010x} seq {seq}", payload_type=pt,
                          ssrc=ssrc)


def classify_payload(data: bytes) -> Classification:
    """Classify one UDP payload (or one ICE-TCP frame) by RFC 7983's first-byte ranges."""
    if not data:
        return Classification(OTHER, "(empty)")
    first = data[0]
    if first <= 3:
        return _classify_stun(data)
    if 16 <= first <= 19:
        return Classification(ZRTP)
    if 20 <= first <= 63:
        return _classify_dtls(data)
    if 64 <= first <= 79:
        if len(data) >= 4:
            channel, length = struct.unpack_from("!HH", data)
            return Classification(TURN_CHANNEL, f"channel {channel:#06x}, {length} B")
        return Classification(TURN_CHANNEL, "(truncated)")
    if 128 <= first <= 191:
        return _classify_rtp_family(data)
    text = _text_preview(data)
    return Classification(OTHER, f"text {text}" if text else f"first byte {first}")


def split_rfc4571(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Cut a TCP byte stream into RFC 4571 frames; return the complete ones and the rest."""
    frames: list[bytes] = []
    offset = 0
    # Every frame consumes at least its 2-byte length prefix, so this ends.
    while offset + 2 <= len(buffer):
        length = struct.unpack_from("!H", buffer, offset)[0]
        if offset + 2 + length > len(buffer):
            break
        frames.append(buffer[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return frames, buffer[offset:]


def _is_webrtc(item: Classification) -> bool:
    return item.kind not in (OTHER,)


def classify_tcp_payload(payload: bytes) -> tuple[str, list[Classification]]:
    """Stateless: a TCP segment taken to start at a frame boundary.

    Returns ("ice-tcp", frames) when the first frame is STUN/DTLS/RTP, else
    ("tcp", [one classification of the raw bytes]) — e.g. text from `nc`.
    A last frame cut off by the segment end is classified from what is there.
    """
    if not payload:
        return "tcp", []
    frames, rest = split_rfc4571(payload)
    if rest[2:]:
        frames.append(rest[2:])
    items = [classify_payload(frame) for frame in frames]
    if items and _is_webrtc(items[0]):
        return "ice-tcp", items
    return "tcp", [classify_payload(payload)]


@dataclass
class PacketInfo:
    """One captured IP packet: its flow, size and what it carried."""

    proto: str  # "udp" or "tcp"
    src: str
    sport: int
    dst: str
    dport: int
    size: int  # IP packet length in bytes
    transport: str  # "udp", "ice-tcp" (RFC 4571 framed) or "tcp"
    items: list[Classification] = field(default_factory=list)
    tcp_flags: str = ""
    tcp_seq: int = 0
    payload: bytes = b""

    @property
    def kind(self) -> str:
        return self.items[0].kind if self.items else TCP_CONTROL

    @property
    def flow(self) -> str:
        """The flow's key: protocol and both ends (one TCP connection direction = one flow)."""
        return f"{self.proto} {_hostport(self.src, self.sport)} → " \
               f"{_hostport(self.dst, self.dport)}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ip_length(ip: Any) -> int:
    """IP packet length from its header (link padding excluded); built length if unset."""
    from scapy.layers.inet import IP

    declared = ip.len if isinstance(ip, IP) else (None if ip.plen is None else 40 + ip.plen)
    return int(declared) if declared is not None else len(bytes(ip))


def classify_packet(pkt: Any) -> PacketInfo | None:
    """Classify a scapy packet (any link layer): None when it is not UDP or TCP over IP."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    if ip is None:
        return None
    size = _ip_length(ip)
    udp = ip.getlayer(UDP)
    if udp is not None and udp.underlayer is ip:
        payload = bytes(udp.payload)
        if udp.len is not None and udp.len >= 8:
            payload = payload[: udp.len - 8]  # drop link-layer padding
        return PacketInfo("udp", str(ip.src), int(udp.sport), str(ip.dst), int(udp.dport),
                          size, "udp", [classify_payload(payload)], payload=payload)
    tcp = ip.getlayer(TCP)
    if tcp is not None and tcp.underlayer is ip:
        header_len = len(bytes(ip)) - len(bytes(tcp.payload))
        payload = bytes(tcp.payload)[: max(0, size - header_len)]
        transport, items = classify_tcp_payload(payload)
        return PacketInfo("tcp", str(ip.src), int(tcp.sport), str(ip.dst), int(tcp.dport),
                          size, transport if items else "tcp", items, tcp_flags=str(tcp.flags),
                          tcp_seq=int(tcp.seq), payload=payload)
    return None


class TcpFramer:
    """Reassembles one direction of a TCP flow into RFC 4571 frames across segments.

    A capture can start mid-stream or miss segments; after a gap the next
    segment is assumed to start at a frame boundary (ICE-TCP stacks usually
    send one frame per write). The buffer is bounded to one maximum frame.
    """

    MAX_BUFFER = 2 + 65535

    def __init__(self) -> None:
        self.buffer = b""
        self.next_seq: int | None = None
        self.plain = False  # not ICE-TCP: classify segments as raw bytes
        self.framed = False  # saw at least one WebRTC frame

    def feed(self, seq: int, payload: bytes, syn: bool = False) -> list[bytes] | None:
        """Frames completed by this segment; None once the stream is known not to be framed."""
        if syn:
            self.next_seq = (seq + 1) % 2**32
            return []
        if self.plain:
            return None
        if self.next_seq is not None and payload:
            behind = (self.next_seq - seq) % 2**32
            if 0 < behind < 2**31:  # retransmission: skip what we already have
                if behind >= len(payload):
                    return []
                payload = payload[behind:]
                seq = self.next_seq
            elif seq != self.next_seq:  # gap: resynchronise at this segment
                self.buffer = b""
        if payload:
            self.next_seq = (seq + len(payload)) % 2**32
        self.buffer += payload
        frames, self.buffer = split_rfc4571(self.buffer)
        if len(self.buffer) > self.MAX_BUFFER:
            self.buffer = b""
        if not self.framed:
            probe = frames[0] if frames else self.buffer[2:]
            if probe:
                if _is_webrtc(classify_payload(probe)):
                    self.framed = True
                else:
                    self.plain = True
                    self.buffer = b""
                    return None
        return frames


# --- capture state: flows, rates, milestones ---------------------------------------------

_MAX_FLOWS = 256


@dataclass
class FlowStats:
    flow: str
    ice_tcp: bool = False  # RFC 4571 frames seen: shown as "ice-tcp" instead of "tcp"
    packets: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    first: float = 0.0
    last: float = 0.0
    shown_packets: int = 0
    shown_bytes: int = 0

    @property
    def label(self) -> str:
        return "ice-" + self.flow if self.ice_tcp else self.flow

    def to_json(self) -> dict[str, Any]:
        span = max(self.last - self.first, 1e-9)
        return {"flow": self.label, "packets": self.packets, "bytes": self.bytes,
                "kinds": dict(self.kinds), "first": round(self.first, 3),
                "last": round(self.last, 3),
                "avg_pps": round(self.packets / span, 1) if self.packets > 1 else None}


class CaptureState:
    """Counts per flow and kind, and the first time each call set-up step was seen."""

    def __init__(self, port: int, start: float) -> None:
        self.port = port
        self.start = start
        self.packets = 0
        self.bytes = 0
        self.kinds: Counter[str] = Counter()
        self.flows: dict[str, FlowStats] = {}
        self.milestones: dict[str, dict[str, Any]] = {}
        self.framers: dict[tuple[str, int, str, int], TcpFramer] = {}
        self.new_milestones: list[str] = []
        self.last_refresh = start

    def _milestone(self, key: str, text: str, info: PacketInfo, ts: float) -> None:
        if key not in self.milestones:
            self.milestones[key] = {"t": round(ts - self.start, 3), "event": text,
                                    "flow": ("ice-" if info.transport == "ice-tcp" else "")
                                    + info.flow}
            self.new_milestones.append(key)

    def _items(self, info: PacketInfo) -> list[Classification]:
        """UDP: as classified. TCP: reassemble RFC 4571 frames across segments."""
        if info.proto != "tcp":
            return info.items
        key = (info.src, info.sport, info.dst, info.dport)
        framer = self.framers.get(key)
        if framer is None:
            if len(self.framers) >= 4 * _MAX_FLOWS:
                return info.items
            framer = self.framers[key] = TcpFramer()
        frames = framer.feed(info.tcp_seq, info.payload, syn="S" in info.tcp_flags)
        if frames is None:
            info.transport = "tcp"
            return [classify_payload(info.payload)] if info.payload else []
        info.transport = "ice-tcp" if framer.framed else "tcp"
        return [classify_payload(frame) for frame in frames]

    def add(self, info: PacketInfo, ts: float) -> None:
        items = self._items(info)
        self.packets += 1
        self.bytes += info.size
        key = info.flow if (info.flow in self.flows or len(self.flows) < _MAX_FLOWS) \
            else "(other flows)"
        stats = self.flows.get(key)
        if stats is None:
            stats = self.flows[key] = FlowStats(key, first=ts)
        stats.packets += 1
        stats.bytes += info.size
        stats.last = ts
        stats.ice_tcp = stats.ice_tcp or info.transport == "ice-tcp"
        # A segment carrying only part of a frame adds to no kind; one without data is control.
        kinds = [item.kind for item in items] or ([] if info.payload else [TCP_CONTROL])
        for kind in kinds:
            stats.kinds[kind] += 1
            self.kinds[kind] += 1
        for item in items:
            self._note(item, info, ts)

    def _note(self, item: Classification, info: PacketInfo, ts: float) -> None:
        if item.kind == STUN and item.stun_method == "Binding":
            if item.stun_class == "request" and item.username:
                self._milestone("stun_request", f"first ICE check: STUN Binding Request "
                                f"USERNAME={item.username}", info, ts)
            elif item.stun_class == "request":
                self._milestone("stun_bare_request", "first STUN Binding Request without "
                                "USERNAME (a reachability probe)", info, ts)
            elif item.stun_class == "success":
                mapped = f" mapped={item.mapped_address}" if item.mapped_address else ""
                self._milestone("stun_response", f"first STUN Binding Success Response{mapped}",
                                info, ts)
            elif item.stun_class == "error":
                self._milestone("stun_error", f"first STUN Binding Error: {item.detail}",
                                info, ts)
        elif item.kind == DTLS:
            for msg in item.handshake:
                if msg in ("ClientHello", "ServerHello"):
                    self._milestone(f"dtls_{msg}", f"DTLS {msg}", info, ts)
            if "application data" in item.detail:
                self._milestone("dtls_data", "first DTLS application data (data channel)",
                                info, ts)
        elif item.kind == RTP:
            self._milestone("srtp", f"first SRTP/RTP ({item.detail})", info, ts)
        elif item.kind == RTCP:
            self._milestone("srtcp", f"first SRTCP/RTCP ({item.detail})", info, ts)

    def take_new_milestones(self) -> list[dict[str, Any]]:
        keys, self.new_milestones = self.new_milestones, []
        return [self.milestones[k] for k in keys]

    def render(self, now: float, header: str, milestones: bool = True,
               final: bool = False) -> Group:
        """A table of flows with rates and the milestones.

        Live, rates cover the time since the previous refresh (what is happening
        now); in the final table they are averages over the whole capture.
        """
        elapsed = max(now - self.last_refresh, 1e-3)
        table = Table(title=header, title_justify="left", expand=False)
        for col, justify in (("flow", "left"), ("kinds", "left"), ("pkts", "right"),
                             ("bytes", "right"), ("pkt/s", "right"), ("kbit/s", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for stats in sorted(self.flows.values(), key=lambda s: -s.packets)[:20]:
            if final:
                span = max(now - self.start, 1e-3)
                pps, kbps = stats.packets / span, stats.bytes * 8 / 1000 / span
            else:
                pps = (stats.packets - stats.shown_packets) / elapsed
                kbps = (stats.bytes - stats.shown_bytes) * 8 / 1000 / elapsed
            stats.shown_packets, stats.shown_bytes = stats.packets, stats.bytes
            kinds = " · ".join(f"{k} {n}" for k, n in stats.kinds.most_common())
            table.add_row(escape(stats.label), kinds, str(stats.packets), str(stats.bytes),
                          f"{pps:.1f}", f"{kbps:.1f}")
        self.last_refresh = now
        if not milestones:
            return Group(table)
        lines = [f"[dim]+{m['t']:.3f}s[/dim] {escape(m['event'])}  [dim]{escape(m['flow'])}[/dim]"
                 for m in self.milestones.values()]
        return Group(table, "milestones:" if lines else "milestones: none yet", *lines)

    def verdict(self, where: str, seconds: float) -> CheckResult:
        """Name how far calls got on this port, from the milestones seen."""
        m = self.milestones
        k = self.kinds
        figure = f"{self.packets} pkts, {self.bytes} B"
        if self.packets == 0:
            return CheckResult(
                "capture", "fail", f"no packets on {where} in {seconds:.1f} s", figure,
                fix=(f"nothing reached port {self.port} here: check that the firewall / cloud "
                     f"security group allows UDP and TCP {self.port} in, that port forwarding "
                     "(NAT) points at this host, and that a call is active while capturing"))
        if k[RTP] or k[RTCP]:
            return CheckResult("capture", "pass",
                               f"media is flowing: {k[RTP]} SRTP/RTP and {k[RTCP]} SRTCP/RTCP "
                               "packets", figure)
        if "dtls_ClientHello" in m and "dtls_ServerHello" not in m:
            return CheckResult(
                "capture", "warn", "DTLS ClientHello seen but no ServerHello", figure,
                fix="the SFU receives the handshake but does not answer: check its log for "
                    "DTLS/certificate errors and that only one process owns the port")
        if "dtls_ServerHello" in m:
            return CheckResult(
                "capture", "warn", "DTLS handshake seen but no SRTP yet", figure,
                fix="keys were negotiated but no media followed: check that participants "
                    "unmuted / published and the SFU log for SRTP errors")
        if "stun_request" in m and "stun_response" not in m:
            return CheckResult(
                "capture", "warn", "ICE checks (STUN with USERNAME) arrive but none is answered",
                figure,
                fix="is the SFU running and bound to this port? (`callsctl check listen` or "
                    "`ss -ulpn`); a wrong ICE host override makes clients check the wrong "
                    "address")
        if "stun_response" in m:
            return CheckResult(
                "capture", "warn", "ICE checks succeed but DTLS never starts", figure,
                fix="look at the SFU log for DTLS errors; a client on a blocked path falls "
                    "back to TCP or TURN")
        if k[STUN] or k[TURN_CHANNEL]:
            return CheckResult("capture", "pass", "STUN traffic on the port (no call set-up "
                               "yet)", figure)
        return CheckResult(
            "capture", "warn", f"packets arrive on port {self.port} but none is WebRTC "
            "(STUN/DTLS/RTP), e.g. netcat probes: the path is open", figure)


# --- the command ------------------------------------------------------------------------------


def require_capture_privilege() -> None:
    """Fail with the fix when this process may not open a raw packet socket."""
    family = getattr(socket, "AF_PACKET", None)
    if family is None:
        fail("packet capture is supported on Linux only (AF_PACKET sockets)")
    try:
        socket.socket(family, socket.SOCK_RAW, 0).close()
    except PermissionError:
        fail("capturing packets needs root or the CAP_NET_RAW capability: run it with sudo, "
             "or grant the capability: sudo setcap cap_net_raw+ep "
             f"{os.path.realpath(sys.executable)}")


def _interfaces(iface: str) -> list[str]:
    names = [name for _, name in socket.if_nameindex()]
    if iface == "any":
        return names
    if iface not in names:
        fail(f"no network interface {iface!r} on this host; use one of: "
             f"{', '.join(names)} (or any)", EXIT_USAGE)
    return [iface]


def _bpf(port: int, hosts: list[str]) -> str:
    expr = f"(udp or tcp) and port {port}"
    if hosts:
        expr += " and (" + " or ".join(f"host {h}" for h in hosts) + ")"
    return expr


def _open_sockets(ifaces: list[str], bpf: str) -> tuple[list[Any], bool]:
    """One scapy listen socket per interface; BPF in the kernel when libpcap compiles it.

    Returns the sockets and whether the filter must be applied in Python instead.
    On loopback each packet is seen twice by a packet socket (outgoing and
    incoming); the outgoing copy is dropped so counts match `tcpdump -i lo`.
    """
    logging.getLogger("scapy").setLevel(logging.ERROR)
    from scapy.arch.linux import L2ListenSocket, get_last_packet_timestamp
    from scapy.data import ETH_P_ALL, MTU
    from scapy.error import Scapy_Exception
    from scapy.layers import inet, inet6, l2  # noqa: F401  (registers link types: lo = Ether)

    class ListenSocket(L2ListenSocket):  # type: ignore[misc]
        def recv_raw(self, x: int = MTU) -> tuple[Any, Any, Any]:
            pkt, sa_ll, ts = self._recv_raw(self.ins, x)
            if sa_ll[2] == socket.PACKET_OUTGOING and sa_ll[3] == 772:  # ARPHRD_LOOPBACK
                return None, None, None
            if ts is None:
                ts = get_last_packet_timestamp(self.ins)
            return self.LL, pkt, ts

    sockets: list[Any] = []
    python_filter = False
    errors: list[str] = []
    for name in ifaces:
        try:
            try:
                sock = ListenSocket(iface=name, type=ETH_P_ALL,
                                    filter=None if python_filter else bpf)
            except (Scapy_Exception, ImportError):
                python_filter = True  # no libpcap to compile BPF: filter each packet here
                sock = ListenSocket(iface=name, type=ETH_P_ALL)
            sock.iface_name = name
            sockets.append(sock)
        except PermissionError:
            for sock in sockets:
                sock.close()
            require_capture_privilege()
            fail("capturing packets needs root or the CAP_NET_RAW capability")
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror or exc}")
    if not sockets:
        fail("could not capture on any interface: " + "; ".join(errors))
    return sockets, python_filter


def _matches(info: PacketInfo, port: int, hosts: list[str]) -> bool:
    if port not in (info.sport, info.dport):
        return False
    return not hosts or info.src in hosts or info.dst in hosts


def _ip_bytes(pkt: Any) -> bytes | None:
    """The IP packet alone (no link header): the pcap is written as LINKTYPE_RAW (101)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    if ip is None:
        return None
    return bytes(ip)[: _ip_length(ip)]


class _CaptureRun:
    """The capture loop: read, classify, count, write; redraw or log milestones."""

    def __init__(self, state: CaptureState, writer: Any, count: int | None,
                 python_filter: tuple[int, list[str]] | None) -> None:
        self.state = state
        self.writer = writer
        self.count = count
        self.python_filter = python_filter  # (port, hosts) when the kernel does not filter
        self.written = 0

    def full(self) -> bool:
        return self.count is not None and self.state.packets >= self.count

    def take(self, pkt: Any) -> None:
        info = classify_packet(pkt)
        if info is None or (self.python_filter and not _matches(info, *self.python_filter)):
            return
        ts = float(pkt.time)
        self.state.add(info, ts)
        if self.writer is not None:
            data = _ip_bytes(pkt)
            if data is not None:
                sec = int(ts)
                self.writer.write_packet(data, sec=sec, usec=int((ts - sec) * 1e6))
                self.written += 1

    def drain(self, sock: Any, budget: int = 256) -> None:
        """Read what is queued on SOCK now (at most BUDGET packets) without blocking."""
        sock.ins.setblocking(False)
        for _ in range(budget):
            if self.full():
                return
            try:
                pkt = sock.recv()
            except (BlockingIOError, InterruptedError):
                return
            if pkt is not None:
                self.take(pkt)

    def loop(self, sockets: list[Any], duration: float, live: Any, header: str,
             log: Console | None) -> str:
        """Run until the deadline, --count or a signal; return which one ended it."""
        import select

        deadline = time.monotonic() + duration
        next_draw = time.monotonic()
        with SignalStop() as stop:
            # Bounded by the deadline: each turn waits at most 0.2 s.
            while time.monotonic() < deadline:
                if stop.requested:
                    return "signal"
                ready, _, _ = select.select(sockets, [], [], 0.2)
                for sock in ready:
                    self.drain(sock)
                if log is not None:
                    for m in self.state.take_new_milestones():
                        log.print(f"+{m['t']:.3f}s {m['event']}  {m['flow']}", markup=False)
                if live is not None and time.monotonic() >= next_draw:
                    live.update(self.state.render(time.time(), header), refresh=True)
                    next_draw = time.monotonic() + 0.25
                if self.full():
                    return "count"
        return "duration"


@app.command("capture")
def capture_cmd(
    port: int = typer.Option(8443, "--port", "-p", parser=parse_port, metavar="PORT",
                             help="Media port to watch (UDP and ICE-TCP)."),
    iface: str = typer.Option("any", "--iface", "-i",
                              help="Interface to capture on, or 'any' for all of them."),
    duration: float = typer.Option(10.0, "--duration", "-d", parser=parse_seconds,
                                   metavar="SECONDS", help="Stop after this long (30s, 2m)."),
    count: int | None = typer.Option(None, "--count", "-c", parser=parse_count, metavar="N",
                                     help="Stop after N packets."),
    write: Path | None = typer.Option(None, "--write", "-w", metavar="FILE",
                                      help="Also write the packets to FILE (pcap; "
                                           "`tcpdump -r FILE`, Wireshark)."),
    host: str | None = typer.Option(None, "--host", help="Only packets to or from this host."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Capture packets on the media port and name each one: STUN, DTLS, SRTP, ICE-TCP.

    Like the guide's `sudo tcpdump -n port 8443`, but shows per-flow counts and
    rates live and the milestones of a call's set-up (ICE check, DTLS hellos,
    first SRTP), so you see where a failing call stops. Needs root or
    CAP_NET_RAW. Ctrl-C stops early and still prints the summary.
    """
    require_capture_privilege()
    ifaces = _interfaces(iface)
    hosts = sorted({addr[0] for _, addr in resolve(host, port)}) if host else []
    bpf = _bpf(port, hosts)
    writer = None
    if write is not None:
        from scapy.utils import RawPcapWriter

        try:
            writer = RawPcapWriter(str(write), linktype=101, sync=False)
            writer.write_header(None)
        except OSError as exc:
            fail(f"cannot write the capture file {write}: {exc.strerror or exc}")
    sockets, python_filter = _open_sockets(ifaces, bpf)
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"callsctl: capturing on {iface} ({bpf}) for {duration:g} s; Ctrl-C to stop")
    sys.stderr.flush()
    header = f"capture on {iface}, port {port}" + (f", host {host}" if host else "")
    run = _CaptureRun(CaptureState(port, time.time()), writer, count,
                      (port, hosts) if python_filter else None)
    console = Console()
    live = None
    if not as_json and console.is_terminal:
        from rich.live import Live

        live = Live(run.state.render(time.time(), header), console=console, auto_refresh=False)
        live.start()
    try:
        stopped_by = run.loop(sockets, duration, live, header,
                              None if as_json or live is not None else console)
    finally:
        for sock in sockets:
            sock.close()
        if writer is not None:
            writer.close()
        if live is not None:
            live.update(run.state.render(time.time(), header, final=True), refresh=True)
            live.stop()
    state, written, start = run.state, run.written, run.state.start
    seconds = time.time() - start
    where = f"port {port} ({iface})"
    result = state.verdict(where, seconds)
    result.details = {
        "iface": iface, "filter": bpf, "port": port, "host": host,
        "seconds": round(seconds, 3), "stopped_by": stopped_by,
        "packets": state.packets, "bytes": state.bytes, "by_kind": dict(state.kinds),
        "flows": [s.to_json() for s in sorted(state.flows.values(), key=lambda s: -s.packets)],
        "milestones": list(state.milestones.values()),
        "pcap": str(write) if write is not None else None, "written": written,
    }
    if write is not None:
        result.summary += f"; {written} packets written to {write}"
    if live is None and not as_json:  # milestones were printed as they happened
        console.print(state.render(time.time(), header, milestones=False, final=True))
    raise typer.Exit(emit([result], as_json, title="check capture"))

