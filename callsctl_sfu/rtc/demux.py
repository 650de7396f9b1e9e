"""Where a packet from an already-known peer goes (RFC 7983), for UDP and ICE-TCP alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aioice.ice import StunProtocol

if TYPE_CHECKING:
    from callsctl_sfu.rtc.mux import MuxedStunProtocol

Address = tuple[str, int]


def deliver(data: bytes, addr: Address, session: MuxedStunProtocol, path: StunProtocol,
            now: float) -> None:
    """Hand a packet from a known peer to its session, by RFC 7983 first-byte ranges.

    SRTP/SRTCP (128-191) takes the session's fast path once DTLS is up; STUN (0-3)
    goes to the ICE agent through the path it came on (UDP or an ICE-TCP
    connection); everything else (DTLS) is queued for aiortc.
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
        path.datagram_received(data, addr)
    else:
        path.receiver.data_received(data, 1)
