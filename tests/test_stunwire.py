"""rtc/stunwire.py, the idle server's STUN codec, against aioice's (the one it stands in for).

The answers an idle server sends must be the ones aioice sent before, byte
for byte, and what aioice rejected as malformed must stay rejected.
"""

from __future__ import annotations

import os
import struct

import pytest
from aioice import stun

from callsctl_sfu.rtc import stunwire


def aioice_answer(transaction_id: bytes, addr: tuple[str, int]) -> bytes:
    response = stun.Message(message_method=stun.Method.BINDING,
                            message_class=stun.Class.RESPONSE, transaction_id=transaction_id)
    response.attributes["XOR-MAPPED-ADDRESS"] = addr
    response.attributes["SOFTWARE"] = "callsctl"
    response.add_fingerprint()
    return bytes(response)


@pytest.mark.parametrize("addr", [("127.0.0.1", 5000), ("203.0.113.9", 1), ("::1", 65535),
                                  ("2001:db8::7", 3478)])
def test_binding_answer_is_aioices_byte_for_byte_and_reads_back(addr) -> None:
    transaction_id = os.urandom(12)
    answer = stunwire.binding_success(transaction_id, addr)
    assert answer == aioice_answer(transaction_id, addr)
    parsed = stun.parse_message(answer)
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == addr
    ours = stunwire.parse(answer)
    assert (ours.method, ours.message_class) == (stunwire.BINDING, stunwire.SUCCESS)
    assert ours.mapped_address() == addr


def test_requests_and_errors_as_aioice_encodes_them() -> None:
    transaction_id, request = stunwire.binding_request()
    expected = stun.Message(message_method=stun.Method.BINDING,
                            message_class=stun.Class.REQUEST, transaction_id=transaction_id)
    expected.attributes["SOFTWARE"] = "callsctl"
    assert request == bytes(expected)
    assert stunwire.parse(request).is_bare_binding_request
    expected.attributes["USERNAME"] = "server:client"
    assert not stunwire.parse(bytes(expected)).is_bare_binding_request
    error = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.ERROR,
                         transaction_id=transaction_id)
    error.attributes["ERROR-CODE"] = (401, "Unauthenticated")
    error.add_fingerprint()
    assert stunwire.parse(bytes(error)).error_code() == (401, "Unauthenticated")
    # An RFC 3489 server's MAPPED-ADDRESS, when there is no XOR-MAPPED-ADDRESS.
    legacy = stun.Message(message_method=stun.Method.BINDING,
                          message_class=stun.Class.RESPONSE, transaction_id=transaction_id)
    legacy.attributes["MAPPED-ADDRESS"] = ("198.51.100.4", 40000)
    assert stunwire.parse(bytes(legacy)).mapped_address() == ("198.51.100.4", 40000)


def header(length: int, kind: int = 0x0001, cookie: int = stunwire.MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI", kind, length, cookie) + bytes(12)


@pytest.mark.parametrize("data, why", [
    (b"\x00\x01\x00", "shorter than a STUN header"),
    (header(0, cookie=0x01020304), "no magic cookie"),
    (header(0, kind=0x8001), "first two bits"),
    (header(4), "does not match"),
    (header(2) + b"\x00\x00", "does not match"),
    (header(4) + b"\x00\x06\x00\x08", "runs past"),
    (header(8) + b"\x80\x28\x00\x02\x01\x02\x00\x00", "of 2 bytes"),
    (header(4) + b"\x00\x0d\x00\x00", "of 0 bytes"),
    (header(8) + b"\x80\x28\x00\x04\x00\x00\x00\x00", "FINGERPRINT does not match"),
])
def test_malformed_messages_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(stunwire.StunFormatError, match=why):
        stunwire.parse(data)


def test_fingerprint_must_be_last_and_a_corrupted_answer_is_refused() -> None:
    answer = bytearray(stunwire.binding_success(os.urandom(12), ("127.0.0.1", 9)))
    answer[-1] ^= 1
    with pytest.raises(stunwire.StunFormatError, match="FINGERPRINT"):
        stunwire.parse(bytes(answer))
    body = stunwire.encode(stunwire.BINDING, stunwire.REQUEST, bytes(12),
                           [(stunwire.FINGERPRINT, bytes(4)), (stunwire.SOFTWARE, b"x")])
    with pytest.raises(stunwire.StunFormatError, match="not the last"):
        stunwire.parse(body)
