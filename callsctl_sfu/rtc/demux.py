"""Where a packet from an already-known peer goes (RFC 7983), for UDP and ICE-TCP alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # aioice is imported with the media stack, not by an idle server
    from aioice import stun
    from aioice.ice import StunProtocol

    from callsctl_sfu.rtc.muxproto import MuxedStunProtocol

Address = tuple[str, int]


def parse_stun(data: bytes) -> stun.Message | Exception:
    """aioice's STUN parser, returning what it raised instead of raising.

    The parser unpacks each attribute by its type without checking the length
    first, so a 2-octet FINGERPRINT or a 0-octet LIFETIME raises struct.error,
    others IndexError or ValueError: every exception means "not a STUN message
    we can use" here, and the caller counts it. Only called for sessions, so
    aioice is loaded already (an idle server reads STUN with rtc/stunwire.py).
    """
    from aioice import stun

    try:
        return stun.parse_message(data)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed packet
        return exc


def dispatch_stun(path: StunProtocol, message: stun.Message, addr: Address) -> None:
    """What aioice's StunProtocol.datagram_received does once a message has parsed."""
    from aioice import stun

    if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
        transaction = path.transactions.get(message.transaction_id)
        if transaction is not None:
            transaction.response_received(message, addr)
    elif message.message_class == stun.Class.REQUEST:
        path.receiver.request_received(message, addr, path)


def deliver(data: bytes, addr: Address, session: MuxedStunProtocol, path: StunProtocol,
            now: float, transport: str = "udp") -> None:
    """Hand a packet from a known peer to its session, by RFC 7983 first-byte ranges.

    SRTP/SRTCP (128-191) takes the session's fast path once DTLS is up; STUN (0-3)
    is parsed here (a malformed one is counted and dropped) and goes to the ICE
    agent through the path it came on (UDP or an ICE-TCP connection); everything
    else (DTLS) is queued for aiortc.
    """
    session.last_rx = now
    first = data[0]
    if 127 < first < 192:
        fast = session.fast_rx
        if fast is not None:
            fast(data)
        else:
            path.receiver.data_received(data, 1)
    elif first < 4:
        if transport == "udp":
            session.mux.stats.stun_in += 1
        message = parse_stun(data)
        if isinstance(message, Exception):
            session.mux.malformed_packet(transport, "stun", addr, message)
            return
        dispatch_stun(path, message, addr)
    else:
        path.receiver.data_received(data, 1)
