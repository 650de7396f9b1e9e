"""The server's own SRTP sender (rtc/_srtpseal.c) against libsrtp, the reference.

A receiver decrypts with libsrtp (aiortc's, a browser's), so what matters is
that every packet the sealer protects is the packet libsrtp would have made
with the same key, in each of the three profiles: the same session keys
(RFC 3711 §4.3), counter-mode IV (§4.1.1) or GCM nonce (RFC 7714 §8.1),
rollover counter (RFC 3711 §3.3.1) and tag (HMAC-SHA1-80 or GCM's). These tests compare byte
for byte over sequence-number wraps, retransmissions, CSRCs, header extensions
and many SSRCs, send through the C fan-out to real sockets, and check that bad
input is refused with an error, never a crash.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct

import pylibsrtp
import pytest

from callsctl_sfu.rtc import fastpath, sealing
from callsctl_sfu.rtc.rtp import parse_rtp

try:
    from callsctl_sfu.rtc import _fanout
except ImportError:
    _fanout = None
needs_sealer = pytest.mark.skipif(fastpath.SrtpSealer is None,
                                  reason=fastpath.REASON or "no AES-NI/PCLMULQDQ")

# master key + salt length -> (libsrtp profile, RFC 5764 name, tag length)
PROFILES = {30: (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, "SRTP_AES128_CM_SHA1_80", 10),
            28: (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, "SRTP_AEAD_AES_128_GCM", 16),
            44: (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, "SRTP_AEAD_AES_256_GCM", 16)}


def libsrtp(key: bytes, outbound: bool = True) -> pylibsrtp.Session:
    """A libsrtp context as aiortc keys one (rtcdtlstransport.py's _setup_srtp)."""
    policy = pylibsrtp.Policy(
        key=key, srtp_profile=PROFILES[len(key)][0],
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound
        else pylibsrtp.Policy.SSRC_ANY_INBOUND)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def rtp(seq: int, ssrc: int, payload: bytes, csrcs: int = 0, extension: bytes = b"",
        marker: bool = False) -> bytes:
    first = 0x80 | (0x10 if extension else 0) | csrcs
    header = struct.pack("!BBHII", first, 111 | (0x80 if marker else 0), seq & 0xFFFF,
                         (seq * 960) & 0xFFFFFFFF, ssrc)
    header += b"".join(struct.pack("!I", 0x1000 + i) for i in range(csrcs))
    if extension:
        header += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    return header + payload


@needs_sealer
@pytest.mark.parametrize("key_len", sorted(PROFILES))
def test_every_packet_is_libsrtps_byte_for_byte_across_a_wrap(key_len):
    key = os.urandom(key_len)
    _, name, tag = PROFILES[key_len]
    reference, sealer, receiver = libsrtp(key), fastpath.SrtpSealer(key), libsrtp(key, False)
    shapes = [{}, {"csrcs": 2}, {"extension": b"\x10\x30\x00\x00"},
              {"csrcs": 1, "extension": b"\x10\x7f\x22\x01\x02\x00\x00\x00", "marker": True}]
    for number in range(400):  # 65300 .. 65535, 0 .. 163: the rollover counter goes to 1
        seq = 65300 + number
        # 0 to 180 octets: partial and whole AES blocks, one or two SHA-1 blocks
        payload = os.urandom(number % 181)
        packet = rtp(seq, 0x5EA1, payload, **shapes[number % len(shapes)])
        protected = sealer.protect(packet)
        assert protected == reference.protect(packet), f"packet {number} (seq {seq & 0xFFFF})"
        assert len(protected) == len(packet) + tag
        assert receiver.unprotect(protected) == packet
    assert sealer.packets == 400 and sealer.streams == 1
    assert sealer.profile == name and sealer.rounds == (14 if key_len == 44 else 10)


@needs_sealer
@pytest.mark.parametrize("key_len", [30, 44])
def test_retransmissions_keep_the_index_they_were_sent_with(key_len):
    """A NACK answer after the wrap is the same packet, protected with its old counter."""
    key = os.urandom(key_len)
    reference, sealer = libsrtp(key), fastpath.SrtpSealer(key)
    sent: dict[int, tuple[bytes, bytes]] = {}
    for seq in range(65500, 65600):
        packet = rtp(seq, 7, os.urandom(60))
        sent[seq] = packet, sealer.protect(packet)
        assert sent[seq][1] == reference.protect(packet)
    for seq in (65530, 65535, 65536, 65540, 65599):  # before and after the wrap
        packet, first = sent[seq]
        again = sealer.protect(packet)
        # the same bytes as the first time: the index (and so the counter) it had then
        assert again == first == reference.protect(packet), seq


@needs_sealer
def test_a_random_walk_of_sequence_numbers_stays_with_libsrtp():
    """Forward steps, jumps, reordering and the first packet's high number (no wrap is
    guessed before 2^15), as a sender whose sources come and go sees them."""
    rng = random.Random(8)
    for start, key_len in ((0, 28), (100, 30), (32768, 44), (40000, 30), (65535, 28)):
        key = os.urandom(key_len)
        reference, sealer = libsrtp(key), fastpath.SrtpSealer(key)
        seq = start
        for _ in range(600):
            step = rng.choice([1, 1, 1, 2, -3, 700, -500, 30000, 33000])
            seq = (seq + step) % 65536
            packet = rtp(seq, 99, os.urandom(rng.randrange(1, 90)))
            try:
                expected = reference.protect(packet)
            except pylibsrtp.Error:  # libsrtp refuses an index older than its window
                continue
            assert sealer.protect(packet) == expected, (start, seq)


@needs_sealer
@pytest.mark.parametrize("key_len", [30, 44])
def test_many_ssrcs_of_one_receiver_each_have_their_own_counter(key_len):
    key = os.urandom(key_len)
    reference, sealer = libsrtp(key), fastpath.SrtpSealer(key)
    ssrcs = [0x1000 + 17 * i for i in range(40)]  # past the ones kept in the object
    for round_number in range(30):
        for i, ssrc in enumerate(ssrcs):
            seq = (65520 + round_number + 1000 * i) % 65536
            packet = rtp(seq, ssrc, os.urandom(40))
            assert sealer.protect(packet) == reference.protect(packet), (ssrc, seq)
    assert sealer.streams == 40


@needs_sealer
def test_bad_packets_and_keys_are_refused_with_one_line():
    sealer = fastpath.SrtpSealer(os.urandom(28))
    for bad in (b"", b"\x80" * 11, b"\x00" * 20,  # empty, short, not version 2
                bytes([0x8F]) + bytes(11),  # 15 CSRCs that are not there
                bytes([0x90, 111]) + bytes(10) + b"\xbe\xde\x00\x09"):  # extension past the end
        with pytest.raises(ValueError, match="not an RTP packet"):
            sealer.protect(bad)
    with pytest.raises(TypeError):
        sealer.protect("text")  # type: ignore[arg-type]
    for key_len in (0, 29, 32, 45):
        with pytest.raises(ValueError, match=f"not {key_len} octets"):
            fastpath.SrtpSealer(os.urandom(key_len))
    # still works after all that
    key = os.urandom(28)
    assert fastpath.SrtpSealer(key).protect(rtp(5, 5, b"ok")) == libsrtp(key).protect(
        rtp(5, 5, b"ok"))


@needs_sealer
@pytest.mark.parametrize("key_len", [30, 44])
def test_fanout_copies_and_a_python_send_share_the_sealer(key_len):
    """The C fan-out's copies and send_rtp's (NACK answers) to one receiver, in turn: the
    receiver's libsrtp decrypts every one, in order, on one rollover counter."""
    key = os.urandom(key_len)
    sealer, inbound = fastpath.SrtpSealer(key), libsrtp(key, outbound=False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.bind(("127.0.0.1", 0))
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        rewrite = fastpath.Rewrite(ssrc=4321, payload_type=111, audio_level_id=1)
        pair = object()
        target = fastpath.Target(rewrite, sealer, 0, receiver.getsockname(), {1: pair}, pair)
        assert target.srtp_session is sealer
        for seq in range(65530, 65545):
            if seq % 3:
                result = fastpath.fanout(sender.fileno(), 0x90, False, seq & 0xFFFF, seq * 960,
                                         0xABC, b"frame-%d" % seq, 30, [target])
                assert (result.sent, result.srtp_errors) == (1, 0)
            else:
                packet = parse_rtp(rtp(seq, 0xABC, b"frame-%d" % seq))
                sender.sendto(sealer.protect(rewrite.build(packet, None)),
                              receiver.getsockname())
            got = parse_rtp(inbound.unprotect(receiver.recv(2048)))
            assert (got.ssrc, bytes(got.payload)) == (4321, b"frame-%d" % seq)
        assert sealer.packets == 15
    finally:
        sender.close()
        receiver.close()


def test_every_profile_gets_a_sealer_and_the_switch_turns_it_off(monkeypatch):
    assert sealing.outbound_rtp(None) is None  # no key derived (OpenSSL already let go)
    assert sealing.outbound_rtp(("SRTP_AES128_CM_SHA1_32", os.urandom(30))) is None
    keys = [(name, os.urandom(length)) for length, (_, name, _) in PROFILES.items()]
    if fastpath.SrtpSealer is None:
        assert all(sealing.outbound_rtp(key) is None for key in keys)
        return
    sealed = [sealing.outbound_rtp(key) for key in keys]
    # AES-CM only where the HMAC runs on the SHA extensions (else libsrtp is cheaper)
    expected = [name for name, _ in keys
                if name != sealing.AES_CM or fastpath.SEALER_SHA1 == "sha-ni"]
    assert [s.profile for s in sealed if s is not None] == expected
    monkeypatch.setattr(fastpath, "SEALER_SHA1", "portable")
    assert sealing.outbound_rtp(("SRTP_AES128_CM_SHA1_80", os.urandom(30))) is None
    assert sealing.outbound_rtp(("SRTP_AEAD_AES_128_GCM", os.urandom(28))) is not None
    monkeypatch.setenv(sealing.ENV, "0")
    assert not sealing.wanted() and all(sealing.outbound_rtp(key) is None for key in keys)


@needs_sealer
@pytest.mark.parametrize("implementation", ["portable", "sha-ni"])
def test_both_sha1_compressions_give_hashlibs_digest(implementation):
    """The AES-CM profile's HMAC runs on the SHA extensions where the CPU has them and on
    the portable compression elsewhere; both must be SHA-1 (FIPS 180-4) at every length
    around the block and padding boundaries."""
    if implementation == "sha-ni" and _fanout.sealer_sha1() != "sha-ni":
        pytest.skip("this CPU has no SHA extensions")
    rng = random.Random(1)
    for length in [*range(0, 200), 1000, 1500]:
        data = bytes(rng.randrange(256) for _ in range(length))
        assert _fanout.sealer_sha1_digest(data, implementation) == hashlib.sha1(data).digest()
    with pytest.raises(ValueError, match="no sha-3 SHA-1"):
        _fanout.sealer_sha1_digest(b"", "sha-3")
