"""ICE consent checks and the C session that answers them, for the C ingress's tests.

The server side is controlled (it answers the client's offer), as in a call; the
checks are built by aioice's own codec, as a controlling client sends them.
"""

from __future__ import annotations

import os

import pylibsrtp
from aioice import stun

from callsctl_sfu.rtc import aiortc_bridge, fastpath

SERVER_UFRAG, SERVER_PASSWORD = "srvU", "server-password-22chars"
CLIENT_UFRAG, CLIENT_PASSWORD = "cliU", "client-password-22chars"
TIE_BREAKER = 0x0102030405060708


def inbound_session() -> tuple[pylibsrtp.Session, object]:
    """A real inbound SRTP context and the C session around it (no routes: no media here)."""
    policy = pylibsrtp.Policy(key=os.urandom(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    srtp = pylibsrtp.Session(policy)
    return srtp, fastpath.InSession(aiortc_bridge.srtp_context_address(srtp), srtp)


def set_ice(session, nominated: dict, **changes) -> None:
    """The server side is controlled (it answers the client's offer), as in a call."""
    settings = dict(username=f"{SERVER_UFRAG}:{CLIENT_UFRAG}".encode(),
                    local_key=SERVER_PASSWORD.encode(), remote_key=CLIENT_PASSWORD.encode(),
                    controlling=False, nominated=nominated,
                    check_username=f"{CLIENT_UFRAG}:{SERVER_UFRAG}".encode(),
                    tie_breaker=TIE_BREAKER, priority=1853824767)
    settings.update(changes)
    session.set_ice(**settings)


def check(username: str = f"{SERVER_UFRAG}:{CLIENT_UFRAG}", password: str = SERVER_PASSWORD,
          role: str = "ICE-CONTROLLING", use_candidate: bool = True,
          extra: dict | None = None, fingerprint: bool = True) -> stun.Message:
    """A consent check as a controlling client sends it (RFC 8445 §7.2.2), aioice-built."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    request.attributes[role] = TIE_BREAKER
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    request.attributes.update(extra or {})
    if fingerprint:
        request.add_message_integrity(password.encode())  # aioice adds FINGERPRINT too
    else:
        request.attributes["MESSAGE-INTEGRITY"] = stun.message_integrity(
            bytes(request) + b"\x00" * 24, password.encode())
    return request
