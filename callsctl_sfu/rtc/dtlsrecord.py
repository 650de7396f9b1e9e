"""DTLS 1.2 record protection after the handshake, without OpenSSL's per-connection state.

Once a WebRTC session's DTLS handshake is done, the DTLS connection has two
jobs left: carry the data channel (SCTP packets in application-data records)
and say goodbye (a close_notify alert). SRTP is keyed from the handshake
(RFC 5764) and never touches DTLS again. Yet OpenSSL keeps about 70 KB per
connection for the rest of its life: the handshake message buffer (kept after
a DTLS-over-UDP handshake in case the peer retransmits), a buffer for the next
epoch's records, the record layer's objects and the `SSL` itself, none of
which pyOpenSSL (aiortc's binding) lets a program release.

`RecordLayer` is what is left of the connection after the handshake: the two
directions' AEAD keys and sequence numbers and a replay window, about 1 KB. It
stands in for the pyOpenSSL `Connection` with the calls aiortc's
RTCDtlsTransport makes after the handshake (`bio_write`, `recv`, `send`,
`bio_read`, `shutdown`, `DTLSv1_get_timeout`) and raises pyOpenSSL's own
exceptions where OpenSSL would, so aiortc cannot tell them apart.

It follows:
- RFC 6347 §4.1 (DTLS 1.2 record layer: epoch and 48-bit sequence number in
  every record, §4.1.2.6 the anti-replay window, §4.1.2.7 invalid records
  dropped silently);
- RFC 5246 §5 (the PRF) and §6.3 (the key block), §6.2.3.3 (AEAD records and
  their additional data);
- RFC 5288 §3 (AES-GCM: a 4-byte implicit salt and an 8-byte explicit nonce
  in each record, here the record's epoch and sequence number, as OpenSSL and
  BoringSSL send it);
- RFC 7905 §2 (ChaCha20-Poly1305: the 12-byte IV XORed with the padded
  sequence number, no explicit nonce).

Only AEAD suites are handled (the ones WebRTC stacks pick); a session that
negotiated anything else keeps its OpenSSL connection (`suite_of` is None).
"""

from __future__ import annotations

import hmac
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from OpenSSL import SSL

DTLS_1_2 = 0xFEFD
DTLS_1_2_NAME = "DTLSv1.2"  # as OpenSSL names it (Connection.get_protocol_version_name)
HEADER = struct.Struct("!BHHHIH")  # type, version, epoch, sequence (high 16 + low 32 bits), length
HEADER_SIZE = HEADER.size  # 13
TAG_SIZE = 16
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CLOSE_NOTIFY = 0
FATAL = 2
MAX_PLAINTEXT = 1 << 14  # RFC 5246 §6.2.1
REPLAY_WINDOW = 64  # RFC 6347 §4.1.2.6: "a window size of 64 is preferred"
MAX_QUEUED = 64  # decrypted records waiting for recv(); aiortc reads one per datagram


@dataclass(frozen=True)
class Suite:
    """What the key block and the records of one AEAD cipher suite look like."""

    key_length: int
    iv_length: int  # the implicit part: 4 (GCM's salt) or 12 (ChaCha20-Poly1305's IV)
    explicit_nonce: bool
    prf_hash: str
    aead: type


# OpenSSL's names (Connection.get_cipher_name) of the AEAD suites WebRTC stacks negotiate.
SUITES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": Suite(16, 4, True, "sha256", AESGCM),
    "ECDHE-ECDSA-AES256-GCM-SHA384": Suite(32, 4, True, "sha384", AESGCM),
    "ECDHE-RSA-AES128-GCM-SHA256": Suite(16, 4, True, "sha256", AESGCM),
    "ECDHE-RSA-AES256-GCM-SHA384": Suite(32, 4, True, "sha384", AESGCM),
    "ECDHE-ECDSA-CHACHA20-POLY1305": Suite(32, 12, False, "sha256", ChaCha20Poly1305),
    "ECDHE-RSA-CHACHA20-POLY1305": Suite(32, 12, False, "sha256", ChaCha20Poly1305),
}


def suite_of(protocol: str | None, cipher: str | None) -> Suite | None:
    """The suite a finished handshake negotiated, if this module can carry its records."""
    if protocol != DTLS_1_2_NAME or cipher is None:
        return None
    return SUITES.get(cipher)


def prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """TLS 1.2's PRF, P_hash(secret, label + seed) cut to `length` (RFC 5246 §5)."""
    seed = label + seed
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return bytes(out[:length])


@dataclass(frozen=True)
class Keys:
    """One direction's AEAD key and implicit IV."""

    key: bytes
    iv: bytes


def derive_keys(suite: Suite, master_secret: bytes, client_random: bytes,
                server_random: bytes) -> tuple[Keys, Keys]:
    """(client write, server write) keys from the key block (RFC 5246 §6.3; AEAD: no MAC keys)."""
    k, i = suite.key_length, suite.iv_length
    block = prf(master_secret, b"key expansion", server_random + client_random,
                2 * (k + i), suite.prf_hash)
    return (Keys(block[:k], block[2 * k:2 * k + i]),
            Keys(block[k:2 * k], block[2 * k + i:2 * k + 2 * i]))


class Direction:
    """One direction's record protection: its AEAD, implicit IV and epoch."""

    __slots__ = ("aead", "iv", "explicit", "epoch")

    def __init__(self, suite: Suite, keys: Keys, epoch: int) -> None:
        self.aead = suite.aead(keys.key)
        self.iv = keys.iv
        self.explicit = suite.explicit_nonce
        self.epoch = epoch

    def _nonce(self, sequence_number: bytes) -> bytes:
        if self.explicit:
            return self.iv + sequence_number
        padded = bytes(4) + sequence_number
        return bytes(a ^ b for a, b in zip(self.iv, padded, strict=True))

    def seal(self, content_type: int, sequence: int, plaintext: bytes) -> bytes:
        """One record: header, (explicit nonce), ciphertext and tag."""
        sequence_number = struct.pack("!HHI", self.epoch, sequence >> 32, sequence & 0xFFFFFFFF)
        aad = sequence_number + struct.pack("!BHH", content_type, DTLS_1_2, len(plaintext))
        sealed = self.aead.encrypt(self._nonce(sequence_number), plaintext, aad)
        fragment = sequence_number + sealed if self.explicit else sealed
        return HEADER.pack(content_type, DTLS_1_2, self.epoch, sequence >> 32,
                           sequence & 0xFFFFFFFF, len(fragment)) + fragment

    def open(self, content_type: int, sequence_number: bytes, fragment: bytes) -> bytes | None:
        """The plaintext of one record's fragment, or None when it does not authenticate."""
        if self.explicit:
            if len(fragment) < 8 + TAG_SIZE:
                return None
            nonce, fragment = self.iv + fragment[:8], fragment[8:]
        else:
            if len(fragment) < TAG_SIZE:
                return None
            nonce = self._nonce(sequence_number)
        aad = sequence_number + struct.pack("!BHH", content_type, DTLS_1_2,
                                            len(fragment) - TAG_SIZE)
        try:
            return self.aead.decrypt(nonce, fragment, aad)
        except Exception:  # cryptography's InvalidTag: a forged or damaged record
            return None


class ReplayWindow:
    """RFC 6347 §4.1.2.6: the highest sequence number seen and a bitmap of the 64 below it."""

    __slots__ = ("top", "bits")

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0

    def seen(self, sequence: int) -> bool:
        """Whether `sequence` is a replay or too old to tell (checked before decrypting)."""
        if sequence > self.top:
            return False
        offset = self.top - sequence
        return offset >= REPLAY_WINDOW or bool(self.bits >> offset & 1)

    def accept(self, sequence: int) -> None:
        """Mark an authenticated record's number (only after it decrypted, §4.1.2.6)."""
        if sequence > self.top:
            shift = sequence - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.top = sequence
        else:
            self.bits |= 1 << (self.top - sequence)


class RecordLayer:
    """A finished DTLS 1.2 connection's record layer, in place of pyOpenSSL's Connection.

    Made by `from_connection` from a connection whose handshake just finished;
    `write_sequence` is the next sequence number of the current write epoch
    (the caller saw the records OpenSSL sent, `OutgoingRecords`).
    """

    __slots__ = ("_write", "_read", "_write_sequence", "_replay", "_inbox", "_outbox",
                 "_closed", "_sent_close", "cipher", "dropped")

    def __init__(self, write: Direction, read: Direction, write_sequence: int,
                 cipher: str) -> None:
        self._write = write
        self._read = read
        self._write_sequence = write_sequence
        self._replay = ReplayWindow()
        self._inbox: deque[bytes] | None = None
        self._outbox: list[bytes] = []
        self._closed = False
        self._sent_close = False
        self.cipher = cipher
        self.dropped = 0  # records dropped: forged, replayed, of another epoch, or not data

    @classmethod
    def from_connection(cls, connection: Any, is_client: bool,
                        write_sequence: int) -> RecordLayer | None:
        """The record layer of a pyOpenSSL Connection whose handshake finished, or None.

        None when the connection negotiated something this module does not carry
        (DTLS 1.3, a CBC suite) or still holds data OpenSSL decrypted and the
        application has not read: it then stays as it is.
        """
        cipher = connection.get_cipher_name()
        suite = suite_of(connection.get_protocol_version_name(), cipher)
        if suite is None or connection.pending():
            return None
        client, server = derive_keys(suite, connection.master_key(),
                                     connection.client_random(), connection.server_random())
        write, read = (client, server) if is_client else (server, client)
        return cls(Direction(suite, write, 1), Direction(suite, read, 1), write_sequence, cipher)

    # -- what aiortc's RTCDtlsTransport calls after the handshake --------------------------

    def bio_write(self, datagram: bytes) -> int:
        """Take one datagram from the peer: every authenticated record in it is read."""
        offset = 0
        while len(datagram) - offset >= HEADER_SIZE:
            content_type, version, epoch, high, low, length = HEADER.unpack_from(datagram, offset)
            start = offset + HEADER_SIZE
            offset = start + length
            if offset > len(datagram):
                self.dropped += 1
                break
            sequence = high << 32 | low
            if epoch != self._read.epoch or version != DTLS_1_2 or self._replay.seen(sequence):
                self.dropped += 1  # a retransmitted handshake record, a stray or a replay
                continue
            plain = self._read.open(content_type, datagram[start - 10:start - 2],
                                    datagram[start:offset])
            if plain is None:
                self.dropped += 1
                continue
            self._replay.accept(sequence)
            self._received(content_type, plain)
        return len(datagram)

    def _received(self, content_type: int, plain: bytes) -> None:
        if content_type == APPLICATION_DATA:
            if self._closed:
                return
            if self._inbox is None:
                self._inbox = deque()
            if len(self._inbox) >= MAX_QUEUED:
                self.dropped += 1
                return
            self._inbox.append(plain)
        elif content_type == ALERT and len(plain) >= 2:
            if plain[1] == CLOSE_NOTIFY or plain[0] == FATAL:
                self._closed = True  # the peer is gone: recv() says so, as OpenSSL would
        else:
            self.dropped += 1  # a handshake record (a late retransmission) or anything else

    def recv(self, bufsiz: int) -> bytes:
        """One record's application data; WantReadError when none, ZeroReturnError once closed."""
        if self._inbox:
            data = self._inbox.popleft()
            if not self._inbox:
                self._inbox = None
            return data[:bufsiz]
        if self._closed:
            raise SSL.ZeroReturnError()
        raise SSL.WantReadError()

    def send(self, data: bytes) -> int:
        """Protect `data` as one application-data record, kept until bio_read."""
        if self._sent_close:
            raise SSL.Error([("callsctl", "dtlsrecord", "send after close_notify")])
        if len(data) > MAX_PLAINTEXT:
            raise SSL.Error([("callsctl", "dtlsrecord", "record larger than 2^14 bytes")])
        self._seal(APPLICATION_DATA, bytes(data))
        return len(data)

    def shutdown(self) -> bool:
        """Queue a close_notify alert (RFC 5246 §7.2.1); True as OpenSSL's once both sent it."""
        if not self._sent_close:
            self._seal(ALERT, bytes((1, CLOSE_NOTIFY)))
            self._sent_close = True
        return self._closed

    def bio_read(self, bufsiz: int) -> bytes:
        """The records waiting to go out (whole records, at least one), as one datagram."""
        if not self._outbox:
            raise SSL.WantReadError()
        out = self._outbox.pop(0)
        while self._outbox and len(out) + len(self._outbox[0]) <= bufsiz:
            out += self._outbox.pop(0)
        return out

    def pending(self) -> int:
        """Bytes of application data read and not yet taken (SSL_pending)."""
        return sum(map(len, self._inbox)) if self._inbox else 0

    def DTLSv1_get_timeout(self) -> None:  # noqa: N802 - pyOpenSSL's name
        """No handshake timer runs any more (aiortc asks to know the handshake is over)."""
        return None

    def DTLSv1_handle_timeout(self) -> bool:  # noqa: N802 - pyOpenSSL's name
        return False

    def get_protocol_version_name(self) -> str:
        return DTLS_1_2_NAME

    def get_cipher_name(self) -> str:
        return self.cipher

    def _seal(self, content_type: int, plaintext: bytes) -> None:
        if self._write_sequence >= 1 << 48:
            raise SSL.Error([("callsctl", "dtlsrecord", "sequence numbers exhausted")])
        self._outbox.append(self._write.seal(content_type, self._write_sequence, plaintext))
        self._write_sequence += 1


class OutgoingRecords:
    """The highest (epoch, sequence number) among the records a connection sent.

    OpenSSL does not say which sequence number it will give its next record, and
    a DTLS receiver drops a number it has seen: whoever takes the connection over
    must continue after the last one sent. `note` reads the record headers of
    each datagram the connection produced (the caller wraps its bio_read).
    """

    __slots__ = ("epoch", "sequence")

    def __init__(self) -> None:
        self.epoch = 0
        self.sequence = -1

    def note(self, datagram: bytes) -> None:
        offset = 0
        while len(datagram) - offset >= HEADER_SIZE:
            _type, _version, epoch, high, low, length = HEADER.unpack_from(datagram, offset)
            sequence = high << 32 | low
            if (epoch, sequence) > (self.epoch, self.sequence):
                self.epoch, self.sequence = epoch, sequence
            offset += HEADER_SIZE + length

    def next_in(self, epoch: int) -> int | None:
        """The next sequence number of `epoch`; None when records of a later one went out."""
        if self.epoch > epoch:
            return None
        return self.sequence + 1 if self.epoch == epoch else 0
