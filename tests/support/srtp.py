"""Real SRTP contexts and loopback receivers for the C media path's tests.

A receiver is a UDP socket on loopback holding the inbound twin of the SRTP
context the server side protects with; what it decrypts is what a browser
would see.
"""

from __future__ import annotations

import os
import socket

import pylibsrtp

from callsctl_sfu.rtc import aiortc_bridge, fastpath
from callsctl_sfu.rtc.rtp import parse_rtp

KEY_LEN = 30  # AES_CM_128_HMAC_SHA1_80 master key + salt


def srtp_pair(key: bytes | None = None) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """(the SFU's outbound context, the receiver's inbound one) sharing one key."""
    key = key or os.urandom(KEY_LEN)
    sessions = []
    for ssrc_type in (pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND):
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type)
        policy.allow_repeat_tx = True
        sessions.append(pylibsrtp.Session(policy))
    return sessions[0], sessions[1]


class Receiver:
    """One receiving participant: a socket, its SRTP context and its target tuple."""

    def __init__(self, ssrc: int, level_id: int | None = 1, key: bytes | None = None,
                 watched: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.outbound, self.inbound = srtp_pair(key)
        self.rewrite = fastpath.Rewrite(ssrc=ssrc, payload_type=111, audio_level_id=level_id)
        self.pair = object()
        # watched: the dict the server puts in aioice's place (aiortc_bridge.nominated_pairs),
        # which tells the C fan-out of each change; a plain dict is looked up per packet.
        pairs_type = fastpath.NominatedPairs if watched else dict
        self.nominated = pairs_type({1: self.pair})
        self.addr = self.sock.getsockname()
        self.target = self.target_to(self.addr)

    def target_to(self, addr: tuple[str, int]):
        return fastpath.Target(self.rewrite, self.outbound,
                               aiortc_bridge.srtp_context_address(self.outbound), addr,
                               self.nominated, self.pair)

    def receive(self):
        return parse_rtp(self.inbound.unprotect(self.sock.recv(2048)))

    def nothing_waiting(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(2048)
        except TimeoutError:
            return True
        return False
