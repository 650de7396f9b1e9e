"""The few STUN messages the server handles before the media stack is loaded.

An idle server answers bare Binding requests on its media port (UDP and
ICE-TCP: `callsctl check rtc` proves the port is reachable that way) and asks
a STUN server once at start for its public address. aioice's codec does all
of that and more, but importing it brings aioice's ICE agent, dnspython and
ifaddr: about 3.7 MB of an idle server's RSS (docs/performance-memory.md). So
this module encodes and decodes just that much of RFC 8489, on the standard
library; everything that needs a session (checks with USERNAME and
MESSAGE-INTEGRITY, aioice's transactions, consent) still goes through aioice,
loaded with the media stack (rtc/medialoader.py).

What is followed (RFC 8489):
- §5: the 20-byte header: two zero bits, the 14-bit message type (method and
  class interleaved), the length of what follows (a multiple of 4), the magic
  cookie 0x2112A442, the 96-bit transaction ID;
- §14: attributes as type-length-value, each padded to 4 bytes; only the first
  of a repeated attribute counts (§14, "Any attribute type MAY appear more
  than once ... only the first occurrence needs to be processed");
- §14.1/§14.2: MAPPED-ADDRESS and XOR-MAPPED-ADDRESS (the port XORed with the
  cookie's high 16 bits, an IPv4 address with the cookie, IPv6 with the cookie
  and the transaction ID);
- §7.3: a message whose FINGERPRINT does not match is discarded;
- §14.7: FINGERPRINT, the CRC-32 (zlib's, ISO HDLC) of the message up to it,
  with the header length already counting it, XORed with 0x5354554E;
- §14.8: ERROR-CODE (class * 100 + number, then the reason phrase).

Answers are byte for byte what aioice sent before (XOR-MAPPED-ADDRESS,
SOFTWARE, FINGERPRINT, in that order): tests/test_stunwire.py compares them.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import zlib
from dataclasses import dataclass

from callsctl_sfu.errors import CallsctlError

Address = tuple[str, int]

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E
SOFTWARE_NAME = "callsctl"

# Methods and classes (RFC 8489 §5, §18.2).
BINDING = 0x001
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3

# Attribute types (RFC 8489 §18.3).
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028

# Attributes whose value has one size (RFC 8489 §14, RFC 8445 §16.1, RFC 8656 §18) and
# the address attributes (8 bytes for IPv4, 20 for IPv6): a message with one of another
# size is malformed, even where this codec has no use for its value, as aioice judged
# it before (tests/test_media_port_malformed.py sends such messages).
FIXED_SIZES = {
    MESSAGE_INTEGRITY: (20,), 0x000C: (4,), 0x000D: (4,), 0x0018: (1,), 0x0019: (4,),
    0x001A: (0,), 0x0022: (8,), 0x0024: (4,), 0x0025: (0,), FINGERPRINT: (4,),
    0x8029: (8,), 0x802A: (8,),
    MAPPED_ADDRESS: (8, 20), XOR_MAPPED_ADDRESS: (8, 20), 0x0012: (8, 20), 0x0016: (8, 20),
    0x8023: (8, 20),
}

_HEADER = struct.Struct("!HHI12s")
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")


class StunFormatError(CallsctlError, ValueError):
    """Not a STUN message this codec can read (the mux counts it as malformed)."""

    code = "malformed_stun"


def message_type(method: int, message_class: int) -> int:
    """RFC 8489 §5: M11-M7, C1, M6-M4, C0, M3-M0."""
    return ((method & 0x0F80) << 2) | ((method & 0x0070) << 1) | (method & 0x000F) | \
        ((message_class & 0b10) << 7) | ((message_class & 0b01) << 4)


def _split_type(value: int) -> tuple[int, int]:
    method = ((value & 0x3E00) >> 2) | ((value & 0x00E0) >> 1) | (value & 0x000F)
    return method, ((value >> 7) & 0b10) | ((value >> 4) & 0b01)


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A parsed message: its method, class, transaction ID and raw attribute values."""

    method: int
    message_class: int
    transaction_id: bytes
    attributes: dict[int, bytes]  # type -> value (padding removed), first occurrence only

    @property
    def is_bare_binding_request(self) -> bool:
        """A Binding request without USERNAME: someone asking only for its mapped address."""
        return self.method == BINDING and self.message_class == REQUEST and \
            USERNAME not in self.attributes

    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (an RFC 3489 server), else None."""
        value = self.attributes.get(XOR_MAPPED_ADDRESS)
        if value is not None:
            return _decode_address(value, self.transaction_id, xored=True)
        value = self.attributes.get(MAPPED_ADDRESS)
        if value is not None:
            return _decode_address(value, self.transaction_id, xored=False)
        return None

    def error_code(self) -> tuple[int, str] | None:
        """ERROR-CODE as (code, reason), None without one."""
        value = self.attributes.get(ERROR_CODE)
        if value is None:
            return None
        if len(value) < 4:
            raise StunFormatError("ERROR-CODE is shorter than 4 bytes")
        return (value[2] & 0x07) * 100 + value[3], value[4:].decode("utf8", "replace")


def parse(data: bytes) -> StunMessage:
    """Decode one message; StunFormatError when the bytes are not a well-formed one."""
    if len(data) < HEADER_LENGTH:
        raise StunFormatError(f"{len(data)} bytes: shorter than a STUN header")
    kind, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if kind & 0xC000:
        raise StunFormatError("the first two bits are not zero")
    if cookie != MAGIC_COOKIE:
        raise StunFormatError("no magic cookie")
    if length % 4 or HEADER_LENGTH + length != len(data):
        raise StunFormatError(f"length {length} does not match the {len(data)}-byte message")
    attributes: dict[int, bytes] = {}
    pos = HEADER_LENGTH
    end = len(data)
    while pos < end:
        if end - pos < 4:
            raise StunFormatError("a truncated attribute header")
        attr_type, attr_length = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + attr_length > end:
            raise StunFormatError(f"attribute 0x{attr_type:04x} runs past the message")
        sizes = FIXED_SIZES.get(attr_type)
        if sizes is not None and attr_length not in sizes:
            raise StunFormatError(f"attribute 0x{attr_type:04x} of {attr_length} bytes")
        if attr_type == FINGERPRINT:  # §14.7: the last attribute, and it must match
            if pos + 4 != end:
                raise StunFormatError("FINGERPRINT is not the last attribute")
            crc = (zlib.crc32(data[:pos - 4]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if int.from_bytes(data[pos:end], "big") != crc:
                raise StunFormatError("FINGERPRINT does not match")
        attributes.setdefault(attr_type, bytes(data[pos:pos + attr_length]))
        pos += attr_length + (-attr_length % 4)
    method, message_class = _split_type(kind)
    return StunMessage(method, message_class, bytes(transaction_id), attributes)


def _decode_address(value: bytes, transaction_id: bytes, xored: bool) -> Address:
    if len(value) < 4:
        raise StunFormatError("an address attribute shorter than 4 bytes")
    family = value[1]
    port = int.from_bytes(value[2:4], "big")
    raw = value[4:]
    if family == 0x01 and len(raw) == 4:
        mask = _COOKIE_BYTES
    elif family == 0x02 and len(raw) == 16:
        mask = _COOKIE_BYTES + transaction_id
    else:
        raise StunFormatError(f"an address of family {family} and {len(raw)} bytes")
    if xored:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=True))
    return str(ipaddress.ip_address(raw)), port


def _encode_address(addr: Address, transaction_id: bytes) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    raw = ip.packed
    mask = _COOKIE_BYTES if ip.version == 4 else _COOKIE_BYTES + transaction_id
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, addr[1] ^ (MAGIC_COOKIE >> 16)) \
        + bytes(a ^ b for a, b in zip(raw, mask, strict=True))


def encode(method: int, message_class: int, transaction_id: bytes,
           attributes: list[tuple[int, bytes]], fingerprint: bool = False) -> bytes:
    """The message with these attributes in this order, FINGERPRINT last if asked."""
    body = b"".join(struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
                    for attr_type, value in attributes)
    kind = message_type(method, message_class)
    if not fingerprint:
        return _HEADER.pack(kind, len(body), MAGIC_COOKIE, transaction_id) + body
    head = _HEADER.pack(kind, len(body) + 8, MAGIC_COOKIE, transaction_id) + body
    crc = (zlib.crc32(head) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + struct.pack("!HHI", FINGERPRINT, 4, crc)


def binding_success(transaction_id: bytes, addr: Address) -> bytes:
    """The answer to a bare Binding request from addr (RFC 8489 §6.3.1.1)."""
    return encode(BINDING, SUCCESS, transaction_id,
                  [(XOR_MAPPED_ADDRESS, _encode_address(addr, transaction_id)),
                   (SOFTWARE, SOFTWARE_NAME.encode())], fingerprint=True)


def binding_request(transaction_id: bytes | None = None) -> tuple[bytes, bytes]:
    """(transaction ID, a Binding request with SOFTWARE), to ask a STUN server."""
    transaction_id = transaction_id if transaction_id is not None else os.urandom(12)
    return transaction_id, encode(BINDING, REQUEST, transaction_id,
                                  [(SOFTWARE, SOFTWARE_NAME.encode())])
