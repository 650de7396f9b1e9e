"""Every reach into aiortc's, aioice's and pylibsrtp's private internals, in one place.

aiortc has no public API for what an SFU on a shared socket needs: the ICE agent
behind a peer connection, the nominated candidate pair, the SRTP contexts DTLS
derived, the SSRC and msid a sender announces, the receiver's queue of encoded
frames. callsctl reads and writes those private attributes, and nowhere but
here: each function below names the attribute it touches and why, so an
upgrade of those libraries is a review of this file, not a hunt.

`check()` runs when the media stack is loaded (rtc/medialoader.py: at the first
call, or at start with --preload-media; the version half of it at every start):
the installed versions must be within the range
this file was verified with (the pins in pyproject.toml, `VERIFIED`), and every
attribute reached here must exist on freshly made real objects. A mismatch is
one clear line (`BridgeError`) instead of an AttributeError deep inside a call.

The accessors are plain attribute reads with no checks of their own (check()
has made them once). Hot paths call them when a peer connects and keep what
they return (the nominated-pair dict, the SRTP sessions), never per packet.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any

from aiortc import RTCCertificate

from callsctl_sfu.rtc.dtlsrecord import OutgoingRecords, RecordLayer

# The verified ranges and their check live with the loader, which runs it at start
# without importing this module (and so aiortc): rtc/medialoader.py.
from callsctl_sfu.rtc.medialoader import VERIFIED as VERIFIED
from callsctl_sfu.rtc.medialoader import BridgeError as BridgeError
from callsctl_sfu.rtc.medialoader import check_versions as check_versions
from callsctl_sfu.switches import switched_off

# -- aiortc: RTCPeerConnection ------------------------------------------------------------------

def ice_transports(pc: Any) -> list[Any]:
    """The connection's RTCIceTransports (`RTCPeerConnection.__iceTransports`).

    The server attaches each ICE agent to the shared socket before it gathers;
    aiortc creates them inside setRemoteDescription and lists them nowhere public.
    """
    return list(pc._RTCPeerConnection__iceTransports)


def dtls_transports(pc: Any) -> list[Any]:
    """The connection's RTCDtlsTransports (`RTCPeerConnection.__dtlsTransports`).

    The server watches each one's state to take over SRTP once DTLS is up.
    """
    return list(pc._RTCPeerConnection__dtlsTransports)


def release_listeners(pc: Any) -> None:
    """Remove every event listener from a closed connection and its transports.

    Why: aiortc subscribes the connection's own bound methods to its transports'
    `statechange` events (and the server its lambdas), so connection and transports
    refer to each other and `close()` leaves it so: a reference cycle that holds the
    whole peer (transceivers, descriptions, jitter buffers: some 500 objects) until
    the cyclic collector runs, and in a frozen server until its next thaw
    (gcpolicy.py). With the listeners gone, reference counting frees it all at once.
    Reached through the private transport sets above and the public `sctp`,
    `transport` and `iceGatherer` attributes; only call it after `close()`.
    """
    emitters: list[Any] = [pc]
    sctp = pc.sctp
    if sctp is not None:
        emitters.append(sctp)
    emitters.extend(dtls_transports(pc))
    for ice in ice_transports(pc):
        emitters.extend((ice, ice.iceGatherer))
    for emitter in emitters:
        emitter.remove_all_listeners()


def cname(pc: Any) -> str:
    """The RTCP CNAME aiortc generated for this connection (`RTCPeerConnection.__cname`).

    Sender reports the SFU translates carry it in their SDES chunk, as aiortc's own do.
    """
    return str(pc._RTCPeerConnection__cname)


# -- aiortc: the DTLS certificate -----------------------------------------------------------------

# How long one shared certificate is handed to new connections. aiortc's own
# certificates are valid 30 days; a connection keeps the one it started with.
CERTIFICATE_ROTATION_S = 24 * 3600.0


class SharedCertificate(RTCCertificate):
    """One DTLS certificate for many connections, with one OpenSSL context per SRTP profile list.

    aiortc makes a new ECDSA key and certificate for every RTCPeerConnection
    (about 15 KB each) and a new SSL_CTX for every DTLS transport (about 25 KB
    each). A server with hundreds of sessions needs neither per session:
    sharing a certificate among connections is what WebRTC's own
    `RTCPeerConnection.generateCertificate` + `RTCConfiguration.certificates`
    allow (W3C WebRTC, "Certificate Management"), and an SSL_CTX is OpenSSL's
    object to share among connections (each still gets its own SSL, handshake
    and SRTP keying material).

    The shared context differs from aiortc's in two settings:
    - no server-side session cache: one context for every connection would
      otherwise keep every finished DTLS session (OpenSSL's default cache
      holds up to 20480); WebRTC never resumes DTLS sessions anyway;
    - SSL_MODE_RELEASE_BUFFERS: OpenSSL frees a connection's record buffers
      while it is idle (about 15 KB per session measured, docs/performance-memory.md).

    Overrides aiortc's private `RTCCertificate._create_ssl_context`, which
    every RTCDtlsTransport calls when it starts; the context it returns is
    made by aiortc's own method (same verification, ciphers and SRTP profiles).
    """

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key=key, cert=cert)
        self.created = time.monotonic()
        self.contexts: dict[tuple[bytes, ...], Any] = {}
        self._fingerprints: list[Any] | None = None

    def getFingerprints(self) -> list[Any]:
        """aiortc's fingerprints of this certificate, computed once for every connection.

        aiortc computes three RTCDtlsFingerprints (sha-256/384/512 hex digests,
        about 400 characters) for every description it makes, and each connection
        keeps those of its last local description (`add_transport_description`):
        about 3.5 KB per session of identical objects. Each call returns a new
        list (aiortc assigns it into its descriptions) of the same fingerprint
        objects, which neither aiortc nor callsctl modifies.
        """
        if self._fingerprints is None:
            self._fingerprints = super().getFingerprints()
        return list(self._fingerprints)

    def _create_ssl_context(self, srtp_profiles: list[Any]) -> Any:
        key = tuple(profile.openssl_profile for profile in srtp_profiles)
        context = self.contexts.get(key)
        if context is None:
            from OpenSSL import SSL

            context = super()._create_ssl_context(srtp_profiles)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            self.contexts[key] = context
        return context


_shared: SharedCertificate | None = None


def shared_certificate() -> SharedCertificate:
    """This process's current shared certificate, a new one every CERTIFICATE_ROTATION_S."""
    global _shared
    if _shared is None or time.monotonic() - _shared.created > CERTIFICATE_ROTATION_S:
        _shared = SharedCertificate.generateCertificate()
    return _shared


def use_certificate(pc: Any, certificate: Any) -> None:
    """Make a new connection use `certificate` (`RTCPeerConnection.__certificates`).

    aiortc 1.16's RTCConfiguration takes no certificates (W3C's does); its
    connection reads this list when it creates its DTLS transports, in
    setRemoteDescription/setLocalDescription, so this must come before either.
    """
    pc._RTCPeerConnection__certificates = [certificate]


# -- aiortc: transports -------------------------------------------------------------------------

def ice_connection(ice_transport: Any) -> Any:
    """The aioice Connection behind an RTCIceTransport (`RTCIceTransport._connection`).

    It holds the candidates, the protocols (one per local socket) and the
    nominated pair; aiortc wraps it without exposing it.
    """
    return ice_transport._connection


def srtp_sessions(dtls: Any) -> tuple[Any, Any]:
    """(inbound, outbound) pylibsrtp Sessions DTLS-SRTP keyed (`_rx_srtp`, `_tx_srtp`).

    Both are None until the handshake completes. The server decrypts and
    encrypts media with them directly, bypassing aiortc's RTP machinery.
    """
    return dtls._rx_srtp, dtls._tx_srtp


def srtp_send_key(dtls: Any) -> tuple[str, bytes] | None:
    """(profile name, master key + salt) of the outgoing SRTP, or None when unknown.

    aiortc keys its pylibsrtp Sessions in `_setup_srtp` and keeps neither key;
    this derives the sending one again the same way (RFC 5764 §4.2: the
    "EXTRACTOR-dtls_srtp" exporter gives client key, server key, client salt,
    server salt, in that order), from `_ssl` (the pyOpenSSL Connection, so
    before release_dtls) and `_role`. The exporter is deterministic (RFC 5705),
    so this is the key `_tx_srtp` holds.
    """
    connection = dtls._ssl
    if connection is None or isinstance(connection, RecordLayer):
        return None  # not started, or OpenSSL's connection already released
    from OpenSSL import SSL

    selected = connection.get_selected_srtp_profile()
    profile = next((p for p in dtls._srtp_profiles if p.openssl_profile == selected), None)
    if profile is None:
        return None
    try:
        material = connection.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length))
    except SSL.Error:
        return None  # libsrtp (aiortc's _tx_srtp) then protects the session's RTP
    ours = 1 if dtls._role == "server" else 0
    return profile.openssl_profile.decode(), profile.get_key_and_salt(material, ours)


def set_srtp_profiles(dtls: Any, names: list[str]) -> None:
    """Offer only these SRTP profiles (RFC 5764 names) in this transport's DTLS handshake.

    aiortc offers every profile its libsrtp has (`RTCDtlsTransport._srtp_profiles`,
    read when the handshake starts); the side that is the DTLS server picks from its
    own list. The load generator uses this to pick as Chromium does. Raises
    ValueError for a name aiortc does not know.
    """
    from aiortc.rtcdtlstransport import SRTP_PROFILES

    known = {p.openssl_profile.decode(): p for p in SRTP_PROFILES}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"SRTP profiles must be some of {', '.join(known)}, not {unknown}")
    dtls._srtp_profiles = [known[name] for name in names]


def dtls_connection(dtls: Any) -> Any:
    """What carries a DTLS transport's records (`RTCDtlsTransport._ssl`): None before it
    starts, then a pyOpenSSL Connection, or a RecordLayer once release_dtls took over."""
    return dtls._ssl


# Set to 0 to keep every session's OpenSSL DTLS connection for its whole life.
RECORDS_ENV = "CALLSCTL_DTLS_RECORDS"


def records_enabled() -> bool:
    """Whether finished DTLS connections are handed to rtc/dtlsrecord.py (RECORDS_ENV)."""
    return not switched_off(RECORDS_ENV)


def note_dtls_records(dtls: Any) -> None:
    """At DTLS "connecting": see the records the new OpenSSL connection sends (`_ssl`).

    aiortc has just made the connection (`RTCDtlsTransport._ssl`, a pyOpenSSL
    Connection) and flushes what it writes with `bio_read`; wrapping that one
    method on the instance lets release_dtls continue the sequence numbers
    after the last record OpenSSL sent.
    """
    connection = dtls._ssl
    if connection is None or not records_enabled():
        return
    sent = OutgoingRecords()
    read = connection.bio_read

    def bio_read(bufsiz: int) -> bytes:
        data = read(bufsiz)
        sent.note(data)
        return data

    connection.bio_read = bio_read
    dtls._callsctl_sent = sent


def release_dtls(dtls: Any) -> bool:
    """At DTLS "connected": put a RecordLayer in place of the OpenSSL connection.

    What the session's DTLS does from now on (the data channel's records,
    close_notify) needs about 1 KB of keys and counters; OpenSSL's connection
    keeps about 70 KB (rtc/dtlsrecord.py). Only as the DTLS client: the
    client's handshake ends with the server's last flight, so nothing of the
    handshake can be asked of it again, while a server may have to resend its
    last flight if it was lost. A suite rtc/dtlsrecord.py does not carry, or
    data OpenSSL decrypted and aiortc has not read, leave the connection as it
    is. True when released.
    """
    connection = dtls._ssl
    sent = dtls.__dict__.pop("_callsctl_sent", None)
    if connection is None or sent is None:
        return False
    del connection.bio_read  # the wrapper's closure holds the connection: undo it either way
    if dtls._role != "client":
        return False
    sequence = sent.next_in(1)
    if sequence is None:
        return False
    layer = RecordLayer.from_connection(connection, is_client=True, write_sequence=sequence)
    if layer is None:
        return False
    dtls._ssl = layer
    return True


# -- aiortc: RTCRtpSender -----------------------------------------------------------------------

def sender_ssrc(sender: Any) -> int:
    """The SSRC an RTCRtpSender announces in SDP (`RTCRtpSender._ssrc`)."""
    return int(sender._ssrc)


def sender_stream_id(sender: Any) -> str:
    """The msid stream id an RTCRtpSender announces (`RTCRtpSender._stream_id`).

    The signaling protocol names screen shares by that id (`screen_on`).
    """
    return str(sender._stream_id)


def set_sender_identity(sender: Any, *, ssrc: int | None = None, stream_id: str | None = None,
                        track_id: str | None = None) -> None:
    """Set what an RTCRtpSender announces in SDP (`_ssrc`, `_stream_id`, `_track_id`).

    The SFU's senders carry forwarded media: their msid names the publisher
    and label so clients can group tracks, and their SSRC is the one the
    rewrite puts on the wire. aiortc has no setter for any of them.
    """
    if ssrc is not None:
        sender._ssrc = ssrc
    if stream_id is not None:
        sender._stream_id = stream_id
    if track_id is not None:
        sender._track_id = track_id


# -- aiortc: RTCRtpReceiver (the recorder) ------------------------------------------------------

def decoder_queue(receiver: Any) -> Any | None:
    """The queue an RTCRtpReceiver hands encoded frames to its decoder thread on.

    (`RTCRtpReceiver.__decoder_queue`). The recorder replaces it to write
    frames to disk undecoded; None when this aiortc has no such queue.
    """
    return getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)


def set_decoder_queue(receiver: Any, queue: Any) -> None:
    """Replace the receiver's decoder queue (`RTCRtpReceiver.__decoder_queue`)."""
    receiver._RTCRtpReceiver__decoder_queue = queue


class _Idle:
    """What every never-started sender and receiver shares (see share_idle_receiver)."""

    def __init__(self) -> None:
        import queue
        import threading

        self.queue: queue.Queue[Any] = queue.Queue()
        self.error = threading.Event()
        self.event = asyncio.Event()  # never set, never awaited
        # An unbounded asyncio.Queue's putters (never one: put never waits) and
        # join()'s event (nobody joins these queues), see share_idle_queue_parts.
        self.putters: collections.deque[Any] = collections.deque()
        self.finished = asyncio.Event()


_idle: _Idle | None = None


def _idle_parts() -> _Idle:
    global _idle
    if _idle is None:
        _idle = _Idle()
    return _idle


def share_idle_receiver(receiver: Any) -> None:
    """Give a receiver whose receive() never runs the shared idle decoder queue and events.

    (`RTCRtpReceiver.__decoder_queue`, `__decoder_error`, `__rtcp_started`,
    `__rtcp_exited`). aiortc makes a queue.Queue, a threading.Event and two
    asyncio.Events per receiver for the decoder thread and RTCP loop that only
    receive() starts (about 5 KB: four Conditions, locks, six deques). The SFU
    never calls receive() on its transceivers (rtc/peer.py silences it), and
    without that thread and loop nothing puts in that queue, sets those flags
    or waits on them (stop() waits only for a started receiver), so every such
    receiver can hold the same ones. A receiver that was started (the
    recorder's, the test clients') keeps its own, or its stop() would wait forever.
    """
    if receiver._RTCRtpReceiver__started or \
            receiver._RTCRtpReceiver__decoder_thread is not None:
        return
    idle = _idle_parts()
    receiver._RTCRtpReceiver__decoder_queue = idle.queue
    receiver._RTCRtpReceiver__decoder_error = idle.error
    receiver._RTCRtpReceiver__rtcp_started = idle.event
    receiver._RTCRtpReceiver__rtcp_exited = idle.event


def share_idle_sender(sender: Any) -> None:
    """Give a sender whose send() never runs the shared idle asyncio.Event.

    (`RTCRtpSender.__rtp_started`, `__rtp_exited`, `__rtcp_started`,
    `__rtcp_exited`: four Events, about 1.5 KB, for the RTP and RTCP loops
    that only send() starts; stop() waits on them only for a started sender.)
    A started sender keeps its own.
    """
    if sender._RTCRtpSender__started:
        return
    event = _idle_parts().event
    sender._RTCRtpSender__rtp_started = event
    sender._RTCRtpSender__rtp_exited = event
    sender._RTCRtpSender__rtcp_started = event
    sender._RTCRtpSender__rtcp_exited = event


# -- aiortc: the data channel's SCTP transport --------------------------------------------------

class IdleQueue:
    """A deque that exists only while it holds something: what an idle association's queues cost.

    aiortc's RTCSctpTransport keeps three deques (`_outbound_queue`,
    `_sent_queue`, `_data_channel_queue`: chunks waiting for the congestion
    window, chunks waiting for their SACK, messages waiting for a free
    stream) of which every empty one holds CPython's first 64-slot block
    (about 750 bytes each). A session's `calls-dc` carries a ping a second
    at most, so they are empty almost always. This stands for a deque with
    exactly the operations aiortc uses on them (append, popleft, len, truth,
    iteration, indexing, index): the deque is made by the first append and
    dropped when the last item leaves. aiortc replaces `_data_channel_queue`
    with a new deque when streams are reset; that one then stays a deque.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None

    def append(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)

    def popleft(self) -> Any:
        if self._items is None:
            raise IndexError("pop from an empty deque")
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def index(self, item: Any) -> int:
        if self._items is None:
            raise ValueError(f"{item!r} is not in deque")
        return self._items.index(item)

    def __getitem__(self, index: int) -> Any:
        if self._items is None:
            raise IndexError("deque index out of range")
        return self._items[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items) if self._items is not None else iter(())

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    def __bool__(self) -> bool:
        return self._items is not None


_SCTP_QUEUES = ("_outbound_queue", "_sent_queue", "_data_channel_queue")


def sctp_queues(sctp: Any) -> list[Any]:
    """The SCTP transport's three queues share_idle_sctp replaces (`_outbound_queue`...)."""
    return [getattr(sctp, name) for name in _SCTP_QUEUES]


def share_idle_sctp(pc: Any) -> None:
    """Give the connection's SCTP transport queues that cost nothing while empty (IdleQueue).

    (`RTCSctpTransport._outbound_queue`, `_sent_queue`, `_data_channel_queue`.)
    Only an empty deque is replaced, so calling it again, or after the
    association has started, loses nothing; no SCTP transport (a client that
    negotiated no data channel): nothing to do.
    """
    sctp = pc.sctp
    if sctp is None:
        return
    for name in _SCTP_QUEUES:
        queue = getattr(sctp, name)
        if type(queue) is collections.deque and not queue:
            setattr(sctp, name, IdleQueue())


# -- asyncio queues of aioice's connection and aiortc's remote tracks -----------------------------

def share_idle_queue_parts(queue: Any) -> None:
    """Give an unbounded asyncio.Queue that nobody joins the shared idle putters and event.

    (`asyncio.Queue._putters`, `_finished`.) Every asyncio.Queue keeps a
    deque of producers waiting for room and an Event for join(), about 1.6 KB
    together. A queue without maxsize never makes a producer wait, so its
    putters deque is only ever read (empty); and join() is the only reader of
    the event, which put_nowait() and task_done() merely clear and set. A
    bounded queue, or one with a producer waiting, keeps its own.
    """
    if queue.maxsize > 0 or queue._putters:
        return
    idle = _idle_parts()
    queue._putters = idle.putters
    queue._finished = idle.finished


# How many asyncio queues each object holds, in the versions verified (VERIFIED):
# aioice's Connection two (the check-list state and received data), aiortc's
# RemoteStreamTrack one (decoded frames). check() counts them again: an upgrade that
# adds one, which might be joined, is a review of share_idle_queues first.
_QUEUES_VERIFIED = {"Connection": 2, "RemoteStreamTrack": 1}


def _asyncio_queues(obj: Any) -> list[Any]:
    """The asyncio.Queue objects among an object's instance attributes, whatever their names."""
    return [value for value in vars(obj).values() if type(value) is asyncio.Queue]


def share_idle_queues(pc: Any) -> None:
    """share_idle_queue_parts for the unbounded queues of a connection's aioice agents
    and of its receivers' remote tracks (`RTCRtpReceiver.track`).

    About 1.6 KB for each of a session's five (two of aioice's connection, one
    per receiving transceiver's track; three for a listener of two speakers).
    Neither aioice nor aiortc joins any of them (the pinned versions: no
    join() or task_done() anywhere in either), and all are unbounded. They are
    found by type rather than by their private names.
    """
    for ice in ice_transports(pc):
        for queue in _asyncio_queues(ice_connection(ice)):
            share_idle_queue_parts(queue)
    for transceiver in pc.getTransceivers():
        track = transceiver.receiver.track
        if track is not None:
            for queue in _asyncio_queues(track):
                share_idle_queue_parts(queue)


def share_idle_parts(pc: Any) -> None:
    """After each negotiation: the SCTP queues (share_idle_sctp) and asyncio queues'
    idle parts (share_idle_queues) of this connection."""
    share_idle_sctp(pc)
    share_idle_queues(pc)


# -- aiortc: negotiated codecs and header extensions --------------------------------------------

# Each distinct codec / header extension object stands for all equal ones while any
# description or transceiver still holds it (weak: a client's odd codec is not kept).
_canonical: weakref.WeakValueDictionary[Any, Any] = weakref.WeakValueDictionary()


def _frozen(value: Any) -> Hashable:
    """A hashable stand-in for a codec's field (lists, dicts and dataclasses, recursively)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value), tuple(_frozen(getattr(value, f.name))
                                   for f in dataclasses.fields(value)))
    hash(value)
    return value


def _canonical_of(item: Any, table: Any = None) -> Any:
    """The object equal to dataclass `item` in `table` (`item` itself when it is the first).

    `table` defaults to the process's weak table: for objects equal across
    sessions. Objects equal only within one session (its ICE credentials, its
    client's fingerprint) go into a table of that session's alone: an entry
    in the weak table costs more than a copy of them (its key and weak
    reference, about 0.3 KB each), so only what many sessions share goes there.
    """
    try:
        key = _frozen(item)
    except TypeError:  # an unhashable parameter value: keep this one as it is
        return item
    table = _canonical if table is None else table
    canonical = table.get(key)
    if canonical is None:
        table[key] = item
        return item
    return canonical


def _share_equal(items: list[Any], table: Any = None) -> None:
    """Replace each dataclass in `items` by the canonical equal one, in place."""
    for index, item in enumerate(items):
        canonical = _canonical_of(item, table)
        if canonical is not item:
            items[index] = canonical


_DESCRIPTIONS = tuple(f"_RTCPeerConnection__{state}{side}Description"
                      for state in ("current", "pending") for side in ("Local", "Remote"))
# The remote ICE and DTLS parameters aiortc keeps per transceiver (and per SCTP
# transport) until its transports start: the very objects of the remote description.
_REMOTE_PARAMETERS = ("_RTCPeerConnection__remoteDtls", "_RTCPeerConnection__remoteIce")


def share_negotiated(pc: Any) -> None:
    """Make equal codecs and header extensions one object across sessions.

    (`RTCPeerConnection.__currentLocalDescription`, `__currentRemoteDescription`,
    the `__pending...` pair, `RTCRtpTransceiver._codecs` and `_headerExtensions`.)
    aiortc keeps each connection's last local and remote description parsed,
    every codec a new RTCRtpCodecParameters with its own feedback list and
    parameters dict, and a deep copy of the negotiated ones per transceiver:
    about 12 KB per audio session of objects equal across sessions. aiortc
    never modifies them once stored: it deep-copies codecs before changing one
    (`find_common_codecs`), parses a new description into new objects, and
    itself shares header extensions between description and transceiver
    (`find_common_header_extensions`). So equal ones can be one object.
    """
    session: dict[Hashable, Any] = {}  # what is equal within this session only
    for name in _DESCRIPTIONS:
        description = getattr(pc, name)
        if description is None:
            continue
        for media in description.media:
            _share_equal(media.rtp.codecs)
            _share_equal(media.rtp.headerExtensions)
            _share_transport_parameters(media, session, local="Local" in name)
    for transceiver in pc.getTransceivers():
        _share_equal(transceiver._codecs)
        _share_equal(transceiver._headerExtensions)
    for name in _REMOTE_PARAMETERS:
        table = getattr(pc, name)
        for key, value in table.items():  # values replaced, no key added: safe to iterate
            table[key] = _canonical_of(value, session)


def _share_transport_parameters(media: Any, session: dict[Hashable, Any], local: bool) -> None:
    """One object for equal ICE candidates, ICE and DTLS parameters and SCTP capabilities.

    (`MediaDescription.ice_candidates`, `.ice`, `.dtls` and its `fingerprints`,
    `.sctpCapabilities` of a stored description; `__remoteDtls`, `__remoteIce`.)
    Every m-section of a description carries its own parsed copy of the same
    transport's parameters (max-bundle: one transport, so a session with the
    data channel has two equal copies of each, and aiortc's per-transport
    tables a third), and the server's own candidates, fingerprints and
    capabilities are equal across sessions (the shared socket's, the shared
    certificate's): those go to the process's table, the rest (ICE
    credentials, the client's candidates and fingerprint) to the session's.
    aiortc reads these once stored and never changes them: it parses each new
    description into new objects, appends trickled candidates to the list
    (whose items it leaves alone) and sets a DTLS role only on the
    descriptions it is building.
    """
    shared = None if local else session
    _share_equal(media.ice_candidates, shared)
    if media.ice is not None:
        media.ice = _canonical_of(media.ice, session)
    if media.dtls is not None:
        _share_equal(media.dtls.fingerprints, shared)
        media.dtls = _canonical_of(media.dtls, shared)
    if media.sctpCapabilities is not None:
        media.sctpCapabilities = _canonical_of(media.sctpCapabilities)


def description_media(pc: Any, side: str) -> list[Any]:
    """The m-sections of the stored local or remote description (`__currentLocalDescription`,
    `__currentRemoteDescription`, else the pending one): what share_negotiated works on."""
    for state in ("current", "pending"):
        description = getattr(pc, f"_RTCPeerConnection__{state}{side.title()}Description")
        if description is not None:
            return list(description.media)
    return []


def negotiated_codecs(transceiver: Any) -> list[Any]:
    """The codecs a transceiver negotiated, first preferred (`RTCRtpTransceiver._codecs`)."""
    return list(transceiver._codecs)


def rtp_packet_handler(receiver: Any) -> Callable[..., Awaitable[None]] | None:
    """The coroutine aiortc calls per RTP packet a receiver gets (`_handle_rtp_packet`).

    The recorder wraps it to note when a track's first packet arrived.
    """
    return getattr(receiver, "_handle_rtp_packet", None)


def set_rtp_packet_handler(receiver: Any, handler: Callable[..., Awaitable[None]]) -> None:
    """Replace the receiver's per-packet coroutine (`RTCRtpReceiver._handle_rtp_packet`)."""
    receiver._handle_rtp_packet = handler


def active_ssrcs(receiver: Any) -> list[int]:
    """The SSRCs a receiver has had packets from, oldest first (`__active_ssrc`)."""
    return list(getattr(receiver, "_RTCRtpReceiver__active_ssrc", {}))


def send_pli(receiver: Any, media_ssrc: int) -> Awaitable[None]:
    """Ask the sender of media_ssrc for a keyframe (`RTCRtpReceiver._send_rtcp_pli`).

    aiortc sends PLI only when its decoder asks; the recorder bypasses the decoder.
    """
    return receiver._send_rtcp_pli(media_ssrc)


# -- aioice: Connection and Candidate -----------------------------------------------------------

def nominated_pairs(connection: Any) -> dict[int, Any]:
    """aioice's live {component: CandidatePair} of nominated pairs (`Connection._nominated`).

    The very dict aioice updates on (re)nomination (only cleared on close): the
    media path keeps it from connect on and reads `.get(1)` per packet. The first
    call puts a fastpath.NominatedPairs with the same items in aioice's place,
    which aioice then updates as its own (it reads the attribute every time), so
    the C fan-out hears of each change instead of looking the pair up per packet;
    every later call returns that same dict.
    """
    pairs = connection._nominated
    if type(pairs) is dict and fastpath.AVAILABLE:
        pairs = connection._nominated = fastpath.NominatedPairs(pairs)
    return pairs


def nominated_pair(connection: Any) -> Any | None:
    """The selected pair of component 1 (`Connection._nominated`), None before nomination.

    aiortc has no getSelectedCandidatePair; operators and checks want the path in use.
    """
    return connection._nominated.get(1)


def tie_breaker(connection: Any) -> int:
    """The agent's 64-bit role tie-breaker (`Connection._tie_breaker`, RFC 8445 §7.1.3).

    Its checks carry it in ICE-CONTROLLING / ICE-CONTROLLED; the C ingress
    builds the consent checks itself and needs the same value.
    """
    return int(connection._tie_breaker)


def protocols(connection: Any) -> list[Any]:
    """aioice's live list of the connection's per-socket protocols (`Connection._protocols`).

    The shared-socket mux adds its own protocols here; the server finds its
    session's protocol here once DTLS is up.
    """
    return connection._protocols


def remote_candidates(connection: Any) -> list[Any]:
    """aioice's live list of remote candidates (`Connection._remote_candidates`).

    ICE-TCP registers a client's TCP address as a TCP candidate before aioice
    would learn it as a peer-reflexive UDP one.
    """
    return connection._remote_candidates


def candidate_network_host(candidate: Any) -> str:
    """The address a candidate is reached at (`Candidate._network_host`; differs from
    `host` for mDNS-named candidates)."""
    return str(candidate._network_host)


def gathering_started(connection: Any) -> bool:
    """Whether the connection has begun gathering (`Connection._local_candidates_start`)."""
    return bool(connection._local_candidates_start)


def set_local_candidates(connection: Any, candidates: list[Any]) -> None:
    """Gathering done with exactly these candidates (`_local_candidates`, `_start`, `_end`).

    Used by the mux (the shared sockets' candidates) and the load generator
    (one loopback candidate) instead of aioice binding a socket per interface.
    """
    connection._local_candidates[:] = candidates
    connection._local_candidates_start = True
    connection._local_candidates_end = True


# -- aioice: consent freshness (rtc/consent.py) --------------------------------------------------

def replace_consent(connection: Any, start: Callable[[Any], None]) -> None:
    """Have `start(connection)` take over consent checks (`Connection.query_consent`).

    aioice's connect() starts `self.query_consent()` as a task of its own per
    connection once ICE completes; replacing the method on this instance
    makes that task call `start` and end at once, so the server's one
    scheduler checks consent instead (close() only cancels a task still
    running). The scheduler builds each request with the public
    `build_request` and signs it with the public `remote_password`.
    """
    async def query_consent() -> None:
        start(connection)

    connection.query_consent = query_consent


def consent_task(connection: Any) -> Any | None:
    """The task connect() started for consent (`Connection._query_consent_task`)."""
    return connection._query_consent_task


# -- pylibsrtp ------------------------------------------------------------------------------------

def srtp_context_address(session: Any) -> int:
    """The address of the srtp_t behind a pylibsrtp Session (`Session._srtp`, `_binding.ffi`).

    The C fan-out protects with the very context the Python path uses, so
    both share its sequence state.
    """
    from pylibsrtp._binding import ffi

    return int(ffi.cast("uintptr_t", session._srtp[0]))


def srtp_function(name: str) -> tuple[int, str]:
    """(address, C signature) of a libsrtp function in pylibsrtp's cffi module.

    (`pylibsrtp._binding.lib`). The C media path calls srtp_protect and
    srtp_unprotect through them; the caller compares each signature with the
    one it was written for. ImportError when there is no cffi binding.
    """
    from pylibsrtp._binding import ffi, lib

    pointer = ffi.addressof(lib, name)
    return int(ffi.cast("uintptr_t", pointer)), str(ffi.typeof(pointer).cname)


# -- the checks ---------------------------------------------------------------------------------

async def _self_test() -> None:
    """Every accessor above, once, on real objects (no socket is opened)."""
    import pylibsrtp
    from aioice import Candidate
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        getattr(pc, "_RTCPeerConnection" + "__certificates")  # use_certificate replaces it
        use_certificate(pc, shared_certificate())
        from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80

        RTCCertificate._create_ssl_context  # noqa: B018 - SharedCertificate overrides it
        shared_certificate()._create_ssl_context([SRTP_AES128_CM_SHA1_80])
        transceiver = pc.addTransceiver("audio")
        sender, receiver = transceiver.sender, transceiver.receiver
        cname(pc)
        dtls_transports(pc)
        ice_transports(pc)
        dtls = sender.transport
        srtp_sessions(dtls)
        if dtls._ssl is not None or dtls._role not in ("auto", "client", "server"):
            raise AttributeError("RTCDtlsTransport._ssl, _role")  # note/release_dtls read them
        from OpenSSL import SSL

        dtls._ssl = SSL.Connection(shared_certificate()._create_ssl_context(
            [SRTP_AES128_CM_SHA1_80]))
        note_dtls_records(dtls)  # wraps bio_read on the instance, as at "connecting"
        dtls._ssl.export_keying_material  # noqa: B018 - srtp_send_key calls it
        set_srtp_profiles(dtls, [p.openssl_profile.decode() for p in dtls._srtp_profiles])
        if srtp_send_key(dtls) is not None:  # no handshake, so no profile selected yet
            raise AttributeError("srtp_send_key keyed an unfinished connection")
        dtls._ssl.bio_read  # noqa: B018
        dtls._ssl.master_key, dtls._ssl.client_random, dtls._ssl.server_random  # noqa: B018
        if release_dtls(dtls):  # not connected: nothing to release
            raise AttributeError("release_dtls released an unfinished connection")
        dtls._ssl = None
        connection = ice_connection(dtls.transport)
        nominated_pairs(connection).get(1)
        nominated_pair(connection)
        protocols(connection)
        remote_candidates(connection)
        gathering_started(connection)
        consent_task(connection)
        for name in ("query_consent", "build_request", "remote_password"):
            getattr(connection, name)
        tie_breaker(connection)  # the C ingress's consent checks carry it
        for name in ("_local_candidates", "_local_candidates_end"):
            getattr(connection, name)
        for name in _DESCRIPTIONS + _REMOTE_PARAMETERS:
            getattr(pc, name)  # share_negotiated reads them
        pc.createDataChannel("calls-dc")  # an SCTP transport: share_idle_sctp's queues
        for name, queue in zip(_SCTP_QUEUES, sctp_queues(pc.sctp), strict=True):
            if type(queue) is not collections.deque:
                raise AttributeError(f"RTCSctpTransport.{name} (a deque)")
        share_idle_sctp(pc)
        probe: asyncio.Queue[Any] = asyncio.Queue()
        if type(getattr(probe, "_putters", None)) is not collections.deque or \
                type(getattr(probe, "_finished", None)) is not asyncio.Event:
            raise AttributeError("asyncio.Queue._putters, _finished")
        from aiortc.rtcrtpreceiver import RemoteStreamTrack

        for holder in (connection, RemoteStreamTrack("audio")):
            name = type(holder).__name__
            if len(_asyncio_queues(holder)) != _QUEUES_VERIFIED[name]:
                raise AttributeError(f"{name}'s asyncio queues (share_idle_queues counted "
                                     f"{_QUEUES_VERIFIED[name]})")
        share_idle_queues(pc)
        negotiated_codecs(transceiver)
        description_media(pc, "local")
        transceiver._headerExtensions  # noqa: B018 - share_negotiated replaces its items
        share_negotiated(pc)
        sender_ssrc(sender)
        sender_stream_id(sender)
        sender._track_id  # noqa: B018 - set_sender_identity writes it
        if decoder_queue(receiver) is None:
            raise AttributeError("RTCRtpReceiver.__decoder_queue")
        for name in ("__decoder_error", "__decoder_thread", "__started", "__rtcp_started",
                     "__rtcp_exited"):  # share_idle_receiver reads or replaces them
            getattr(receiver, "_RTCRtpReceiver" + name)
        for name in ("__started", "__rtp_started", "__rtp_exited", "__rtcp_started",
                     "__rtcp_exited"):  # and share_idle_sender these
            getattr(sender, "_RTCRtpSender" + name)
        if rtp_packet_handler(receiver) is None:
            raise AttributeError("RTCRtpReceiver._handle_rtp_packet")
        getattr(receiver, "_RTCRtpReceiver__active_ssrc")  # noqa: B009
        receiver._send_rtcp_pli  # noqa: B018
        candidate_network_host(Candidate(foundation="1", component=1, transport="udp",
                                         priority=1, host="127.0.0.1", port=9, type="host"))
        session = pylibsrtp.Session(pylibsrtp.Policy(
            key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        srtp_context_address(session)
        srtp_function("srtp_protect")
        srtp_function("srtp_unprotect")
    finally:
        await pc.close()
        release_listeners(pc)  # as MediaPeer.close does; and this probe's cycles go too


async def check() -> None:
    """The load-time check: versions in range and every internal reached present.

    Raises BridgeError with one line naming what is missing and what to do.
    """
    check_versions()
    try:
        await _self_test()
    except (AttributeError, ImportError, TypeError) as exc:
        raise BridgeError(f"aiortc/aioice/pylibsrtp internals callsctl relies on are missing "
                          f"({exc}): reinstall the versions pyproject.toml pins") from None


# Importing this module brings the media stack (aiortc, pylibsrtp): hand libsrtp's
# functions to the C side now, before any module binds the engine's names (peer.py's
# Rewrite and Target, reports.py's Reception). Idempotent; rtc/fastpath.py, wire().
from callsctl_sfu.rtc import fastpath  # noqa: E402 - after the accessors wire() calls

fastpath.wire()
