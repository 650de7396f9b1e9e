"""Which context protects a receiver's outgoing RTP: the server's own SRTP sender or libsrtp.

Why: every forwarded copy is protected with its receiver's context, and at a
call's packet rate that context is cold. libsrtp's is a chain of allocations
(srtp_t, stream list, stream, replay bitmap, cipher, OpenSSL's EVP context) and
its protect re-initialises OpenSSL's cipher per packet; the extension's
SrtpSealer (rtc/_srtpseal.c) is one object of about 400 bytes on AES-NI (and
PCLMULQDQ for GCM). bench/RESULTS.md ("The server's own SRTP sender") has
both side by side.

What it keeps: the keys are the ones DTLS-SRTP gave aiortc's `_tx_srtp`
(aiortc_bridge.srtp_send_key derives them again), its output is byte for byte
libsrtp's (tests/test_srtpseal.py compares them), and every RTP packet of the
session goes through it, the C fan-out's copies and the Python path's
(`MediaPeer.send_rtp`, NACK retransmissions) alike, so each SSRC's rollover
counter has one owner. SRTCP keeps libsrtp (its index and keys are separate,
RFC 3711 §3.4).

Profiles: the three aiortc offers, so every session of the C engine has
one: AES_CM_128_HMAC_SHA1_80 (RFC 3711; what Chromium picks as the DTLS
server of its sessions), AEAD_AES_128_GCM and AEAD_AES_256_GCM (RFC 7714;
what aiortc clients such as the load generator end up with).

When it is not used: the Python engine, a CPU without AES-NI and PCLMULQDQ,
AES-CM sessions on a CPU without the SHA extensions (the portable SHA-1 costs
more than libsrtp's OpenSSL: bench/RESULTS.md), or CALLSCTL_SRTP_SEALER=0
(for side-by-side measurements). Then libsrtp protects everything, as before.
"""

from __future__ import annotations

from typing import Any

from callsctl_sfu.rtc import fastpath
from callsctl_sfu.switches import switched_off

ENV = "CALLSCTL_SRTP_SEALER"
# RFC 5764 §4.1.2 / RFC 7714 §14.2 names: every profile aiortc offers.
AES_CM = "SRTP_AES128_CM_SHA1_80"
PROFILES = (AES_CM, "SRTP_AEAD_AES_128_GCM", "SRTP_AEAD_AES_256_GCM")


def wanted() -> bool:
    """Whether this build, this CPU and CALLSCTL_SRTP_SEALER let the sealer run."""
    return fastpath.SrtpSealer is not None and not switched_off(ENV)


def outbound_rtp(send_key: tuple[str, bytes] | None) -> Any | None:
    """A SrtpSealer for the session's outgoing RTP, or None: libsrtp protects it.

    `send_key` is aiortc_bridge.srtp_send_key's (profile name, master key + salt).
    """
    if send_key is None or not wanted():
        return None
    profile, key_and_salt = send_key
    if profile not in PROFILES:
        return None
    if profile == AES_CM and fastpath.SEALER_SHA1 != "sha-ni":
        return None  # its portable SHA-1 costs more per copy than libsrtp's OpenSSL
    return fastpath.SrtpSealer(key_and_salt)
