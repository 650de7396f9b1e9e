"""What a packet on the media port is: RFC 7983's first-byte rules, one payload at a time.

The SFU demultiplexes its one socket by the first byte of each UDP payload
(RFC 7983 §7); these functions name a payload the same way:

    0..3     STUN (ICE connectivity checks, RFC 8445; STUN itself RFC 8489)
    16..19   ZRTP (RFC 6189)
    20..63   DTLS (RFC 6347; key exchange for SRTP, RFC 5764)
    64..79   TURN ChannelData (RFC 8656 §12)
    128..191 RTP or RTCP (RFC 3550), SRTP/SRTCP once DTLS ran (RFC 3711);
             RTCP when the second byte is 192..223 (RFC 5761 §4)

ICE-TCP (RFC 6544) frames each packet with a two-byte length (RFC 4571 §2);
`split_rfc4571` cuts a stream into frames and `classify_tcp_payload` names a
segment. Everything here is pure (bytes in, names out) and imports nothing
heavy, so `check capture` (which adds scapy for the packets around these
payloads) and `check udp|tcp|listen` (which describe replies) share it
without importing each other.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

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


def is_webrtc(item: Classification) -> bool:
    """True for the protocols a WebRTC media port carries (anything but OTHER)."""
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
    if items and is_webrtc(items[0]):
        return "ice-tcp", items
    return "tcp", [classify_payload(payload)]
