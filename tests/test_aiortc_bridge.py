"""rtc/aiortc_bridge.py on real aiortc, aioice and pylibsrtp objects: one test per reach.

Two RTCPeerConnections connect in-process on loopback (one host candidate each,
given by the load generator's gather_on, itself a bridge user); the tests then
read and write through the bridge and check the effect where a peer sees it:
in SDP, on the wire through SRTP, in RTCP.
"""

from __future__ import annotations

import asyncio
import gc
import re
import tomllib
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest
from aioice import Candidate, Connection
from aiortc import (
    RTCCertificate,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.rtp import RtcpPsfbPacket, RtpPacket

from callsctl_sfu.client.loadgen import gather_on
from callsctl_sfu.client.participant import ToneTrack
from callsctl_sfu.rtc import aiortc_bridge as bridge
from callsctl_sfu.rtc import fastpath, medialoader
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.peer import MediaPeer
from tests.support.helpers import REPO
from tests.support.ice import connect_agents
from tests.support.peers import max_bundle_pc, until
from tests.support.private_reaches import private_reaches

pytestmark = pytest.mark.timeout(60)




@dataclass
class Pair:
    offerer: RTCPeerConnection
    answerer: RTCPeerConnection
    tone: ToneTrack

    def sender(self) -> Any:
        return self.offerer.getTransceivers()[0].sender

    def receiver(self) -> RTCRtpReceiver:
        return self.answerer.getTransceivers()[0].receiver




async def _connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection,
                   tone: ToneTrack) -> Pair:
    """`offerer` sends `tone` and opens a data channel; both connect on 127.0.0.1."""
    offerer.addTrack(tone)
    offerer.createDataChannel("calls-dc")
    await gather_on(offerer, "127.0.0.1")
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await gather_on(answerer, "127.0.0.1")
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(RTCSessionDescription(
        answerer.localDescription.sdp, "answer"))
    await until(lambda: offerer.connectionState == answerer.connectionState == "connected",
                 "both peer connections to connect")
    return Pair(offerer, answerer, tone)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """An offerer sending a tone to an answerer, connected on 127.0.0.1."""
    offerer, answerer, tone = max_bundle_pc(), max_bundle_pc(), ToneTrack()
    try:
        yield await _connect(offerer, answerer, tone)
    finally:
        tone.stop()
        await offerer.close()
        await answerer.close()


# -- RTCPeerConnection ---------------------------------------------------------------------------

async def test_ice_transports_are_the_ones_the_senders_use(pair: Pair) -> None:
    transports = bridge.ice_transports(pair.offerer)
    assert transports == [pair.sender().transport.transport]  # max-bundle: exactly one


async def test_dtls_transports_are_the_ones_the_senders_use(pair: Pair) -> None:
    assert bridge.dtls_transports(pair.offerer) == [pair.sender().transport]
    assert bridge.dtls_transports(pair.offerer)[0].state == "connected"


async def test_cname_is_the_one_announced_in_sdp(pair: Pair) -> None:
    cname = bridge.cname(pair.offerer)
    assert cname and f"cname:{cname}" in pair.offerer.localDescription.sdp


async def test_media_peer_keeps_its_cname_for_translated_sender_reports() -> None:
    peer = MediaPeer("s1", UdpMux(), _no_signal, lambda _p, _b: None, lambda _p, _s: None)
    try:
        assert peer.cname == bridge.cname(peer.pc) != ""
    finally:
        await peer.close()


async def _no_signal(_message: dict[str, Any]) -> None:
    return None


# -- the shared DTLS certificate -----------------------------------------------------------------

async def _connected_pair(answerer: RTCPeerConnection) -> Pair:
    """A new offerer with a tone and a data channel, connected to `answerer`."""
    return await _connect(max_bundle_pc(), answerer, ToneTrack())


def _fingerprint(sdp: str) -> str:
    return next(line.split(" ", 1)[1] for line in sdp.splitlines()
                if line.startswith("a=fingerprint:sha-256"))


async def test_connections_on_the_shared_certificate_connect_with_their_own_keys() -> None:
    shared = bridge.SharedCertificate.generateCertificate()
    pairs: list[Pair] = []
    try:
        for _ in range(2):
            answerer = max_bundle_pc()
            bridge.use_certificate(answerer, shared)
            pairs.append(await _connected_pair(answerer))
        expected = next(f.value for f in shared.getFingerprints() if f.algorithm == "sha-256")
        assert [_fingerprint(p.answerer.localDescription.sdp) for p in pairs] == [expected] * 2
        assert len(shared.contexts) == 1  # one OpenSSL context served both handshakes
        packet = RtpPacket(payload_type=111, sequence_number=7, timestamp=960,
                           ssrc=0x1234, payload=b"keys").serialize()
        protected = []
        for p in pairs:  # each connection keyed its own SRTP: same packet, other bytes
            _, answer_tx = bridge.srtp_sessions(p.receiver().transport)
            offer_rx, _ = bridge.srtp_sessions(p.sender().transport)
            protected.append(answer_tx.protect(packet))
            assert offer_rx.unprotect(protected[-1]) == packet
        assert protected[0] != protected[1]
    finally:
        for p in pairs:
            p.tone.stop()
            await p.offerer.close()
            await p.answerer.close()


def test_shared_certificate_is_one_until_it_rotates(monkeypatch: pytest.MonkeyPatch) -> None:
    first = bridge.shared_certificate()
    assert bridge.shared_certificate() is first
    monkeypatch.setattr(bridge, "CERTIFICATE_ROTATION_S", -1.0)
    rotated = bridge.shared_certificate()
    assert rotated is not first and rotated.getFingerprints() != first.getFingerprints()


async def test_media_peers_share_one_certificate() -> None:
    peers = [MediaPeer(f"s{i}", UdpMux(), _no_signal, lambda _p, _b: None,
                       lambda _p, _s: None) for i in range(2)]
    try:
        offers = []
        for peer in peers:
            peer.pc.addTransceiver("audio")
            await peer.pc.setLocalDescription(await peer.pc.createOffer())
            offers.append(_fingerprint(peer.pc.localDescription.sdp))
        expected = next(f.value for f in bridge.shared_certificate().getFingerprints()
                        if f.algorithm == "sha-256")
        assert offers == [expected, expected]
    finally:
        for peer in peers:
            await peer.close()


def test_shared_certificate_computes_its_fingerprints_once() -> None:
    shared = bridge.SharedCertificate.generateCertificate()
    first, second = shared.getFingerprints(), shared.getFingerprints()
    assert first is not second  # a list of its own for each description
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert first == RTCCertificate.getFingerprints(shared)  # aiortc's own digests


async def test_media_peer_drops_a_signal_once_it_is_handled() -> None:
    answers: list[dict[str, Any]] = []

    async def on_signal(message: dict[str, Any]) -> None:
        answers.append(message)

    class Signal(dict[str, Any]):  # a dict a weak reference can watch
        pass

    client = max_bundle_pc()
    peer = MediaPeer("s1", UdpMux(), on_signal, lambda _p, _b: None, lambda _p, _s: None)
    try:
        client.addTransceiver("audio")
        await client.setLocalDescription(await client.createOffer())
        offer = Signal(type="offer", sdp=client.localDescription.sdp)
        watch = weakref.ref(offer)
        peer.handle_signal(offer)
        del offer
        await until(lambda: answers, "the server's answer")
        assert answers[0]["data"]["type"] == "answer"
        gc.collect()
        assert watch() is None, "the handled offer (its SDP) is still referenced"
    finally:
        await client.close()
        await peer.close()


# -- equal negotiated codecs and header extensions, one object ----------------------------------

async def _negotiate(client: RTCPeerConnection, server: RTCPeerConnection,
                     munge: Any = None, gather: bool = False) -> None:
    """One offer/answer, client offering; the server shares its codecs as rtc/peer.py does."""
    await client.setLocalDescription(await client.createOffer())
    offer = client.localDescription.sdp
    await server.setRemoteDescription(RTCSessionDescription(
        munge(offer) if munge else offer, "offer"))
    if gather:
        await gather_on(server, "127.0.0.1")
    for transceiver in server.getTransceivers():  # as rtc/peer.py does
        transceiver.sender.send = transceiver.receiver.receive = _never
    await server.setLocalDescription(await server.createAnswer())
    await client.setRemoteDescription(server.localDescription)
    bridge.share_negotiated(server)


async def test_equal_codecs_of_two_sessions_are_one_object_and_others_stay_apart() -> None:
    clients, servers = [max_bundle_pc() for _ in range(3)], [max_bundle_pc() for _ in range(3)]
    try:
        for client in clients:
            client.addTransceiver("audio")
        await _negotiate(clients[0], servers[0])
        await _negotiate(clients[1], servers[1])
        # The third client numbers opus 109: equal otherwise, but not the same codec.
        await _negotiate(clients[2], servers[2],
                         lambda sdp: re.sub(r"(?<=[ :])96(?=[ \r\n])", "109", sdp))
        codecs = [bridge.negotiated_codecs(s.getTransceivers()[0]) for s in servers]
        assert codecs[0][0].mimeType == "audio/opus"
        assert all(a is b for a, b in zip(codecs[0], codecs[1], strict=True))
        assert codecs[2][0] is not codecs[0][0]
        assert (codecs[0][0].payloadType, codecs[2][0].payloadType) == (96, 109)
        assert "a=rtpmap:109 opus/48000/2" in servers[2].localDescription.sdp
        assert "a=rtpmap:96 opus/48000/2" in servers[0].localDescription.sdp
    finally:
        for pc in clients + servers:
            await asyncio.wait_for(pc.close(), 10)


async def test_shared_codecs_renegotiate_and_connect() -> None:
    client, server, other_client, other = (max_bundle_pc() for _ in range(4))
    tone = ToneTrack()
    try:
        other_client.addTransceiver("audio")
        await _negotiate(other_client, other)  # the codecs the next session shares
        client.addTrack(tone)
        client.createDataChannel("calls-dc")
        await gather_on(client, "127.0.0.1")
        await _negotiate(client, server, gather=True)
        before = server.localDescription.sdp
        client.addTransceiver("audio", direction="sendrecv")  # a renegotiation
        await _negotiate(client, server)
        assert server.signalingState == client.signalingState == "stable"
        after = server.localDescription.sdp
        assert after.count("m=audio") == 2
        assert [line for line in after.splitlines() if line.startswith("a=rtpmap")] == \
            2 * [line for line in before.splitlines() if line.startswith("a=rtpmap")]
        await until(lambda: client.connectionState == server.connectionState == "connected",
                     "the renegotiated connection to connect")
    finally:
        tone.stop()
        for pc in (client, server, other_client, other):
            await asyncio.wait_for(pc.close(), 10)


async def test_transport_parameters_are_one_object_across_and_within_sessions() -> None:
    """The server's candidates and fingerprints: one object for every session; the client's
    ICE and DTLS parameters: one per session however many m-sections repeat them."""
    candidate = Candidate(foundation="1", component=1, transport="udp", priority=1,
                          host="127.0.0.1", port=9, type="host")  # as the shared socket's
    clients, servers = [max_bundle_pc() for _ in range(2)], [max_bundle_pc() for _ in range(2)]
    try:
        for client, server in zip(clients, servers, strict=True):
            bridge.use_certificate(server, bridge.shared_certificate())
            client.addTransceiver("audio")
            client.createDataChannel("calls-dc")  # a second m-section on the same transport
            await gather_on(client, "127.0.0.1")
            await client.setLocalDescription(await client.createOffer())
            await server.setRemoteDescription(client.localDescription)
            bridge.set_local_candidates(bridge.ice_connection(bridge.ice_transports(server)[0]),
                                        [candidate])
            await server.setLocalDescription(await server.createAnswer())
            bridge.share_negotiated(server)
        local = [bridge.description_media(s, "local") for s in servers]
        remote = [bridge.description_media(s, "remote") for s in servers]
        assert [m.kind for m in local[0]] == ["audio", "application"]
        first = local[0][0]
        for media in local[0] + local[1]:
            assert media.ice_candidates[0] is first.ice_candidates[0]
            assert media.dtls is first.dtls
        assert local[0][0].ice is local[0][1].ice  # a session's own credentials, once
        assert local[0][0].ice is not local[1][0].ice
        assert local[0][0].ice != local[1][0].ice
        for media in remote:
            assert media[0].dtls is media[1].dtls and media[0].ice is media[1].ice
        assert remote[0][0].dtls is not remote[1][0].dtls  # each client's own fingerprint
        assert remote[0][0].dtls.fingerprints != remote[1][0].dtls.fingerprints
    finally:
        for pc in clients + servers:
            await asyncio.wait_for(pc.close(), 10)


async def test_shared_parameters_and_idle_queues_connect_and_carry_messages() -> None:
    """A server connection with the memory changes applied (shared parameters, idle SCTP
    and asyncio queue parts) still connects, and its data channel carries a burst both
    ways in order; the SCTP queues are empty again afterwards."""
    client, server = max_bundle_pc(), max_bundle_pc()
    bridge.use_certificate(server, bridge.shared_certificate())
    client.addTransceiver("audio")  # first: the channel bundles on the audio's transport
    channel = client.createDataChannel("calls-dc")
    served: list[Any] = []
    answers: list[str] = []
    server.on("datachannel", served.append)
    channel.on("message", answers.append)
    try:
        await gather_on(client, "127.0.0.1")
        await _negotiate(client, server, gather=True)  # shares as rtc/peer.py does
        bridge.share_idle_parts(server)  # SCTP queues; aioice's queues carry every record
        assert all(isinstance(q, bridge.IdleQueue) for q in bridge.sctp_queues(server.sctp))
        await until(lambda: bool(served) and channel.readyState == "open",
                     "the data channel to open on both sides")
        served[0].on("message", lambda m: served[0].send(m.replace("ping", "pong")))
        for n in range(200):  # more than the first congestion window holds
            channel.send(f"ping {n}")
        await until(lambda: len(answers) == 200, "200 pongs")
        assert answers == [f"pong {n}" for n in range(200)]
        await until(lambda: not any(bridge.sctp_queues(server.sctp)), "the queues to empty")
        assert all(len(q) == 0 for q in bridge.sctp_queues(server.sctp))
    finally:
        await asyncio.wait_for(client.close(), 10)
        await asyncio.wait_for(server.close(), 10)


# -- the data channel's SCTP transport -----------------------------------------------------------

async def test_remote_track_with_idle_queue_parts_still_gets_frames(pair: Pair) -> None:
    """A started receiver's track (the recorder's kind) keeps working with shared parts."""
    bridge.share_idle_queues(pair.answerer)
    bridge.share_idle_queues(pair.offerer)
    frame = await asyncio.wait_for(pair.receiver().track.recv(), 10)
    assert frame.samples > 0


async def test_queues_with_idle_parts_still_queue_and_bounded_ones_still_wait() -> None:
    bounded: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queues: list[asyncio.Queue[int]] = [asyncio.Queue(), asyncio.Queue()]
    for queue in (bounded, *queues):
        bridge.share_idle_queue_parts(queue)
    for n in range(3):
        queues[0].put_nowait(n)
        queues[1].put_nowait(10 + n)
    assert [queues[0].get_nowait() for _ in range(3)] == [0, 1, 2]
    assert [queues[1].get_nowait() for _ in range(3)] == [10, 11, 12]
    bounded.put_nowait(1)
    waiting = asyncio.ensure_future(bounded.put(2))  # a producer waits for room
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert bounded.get_nowait() == 1
    await asyncio.wait_for(waiting, 5)
    assert bounded.get_nowait() == 2


def test_idle_queue_does_what_aiortc_asks_of_a_deque() -> None:
    queue = bridge.IdleQueue()
    assert not queue and len(queue) == 0 and list(queue) == []
    with pytest.raises(IndexError):
        queue.popleft()
    with pytest.raises(IndexError):
        queue[0]  # noqa: B018
    with pytest.raises(ValueError):
        queue.index("a")
    for item in "abc":
        queue.append(item)
    assert queue and len(queue) == 3 and list(queue) == ["a", "b", "c"]
    assert (queue[0], queue[-1], queue.index("b")) == ("a", "c", 1)
    assert [queue.popleft() for _ in range(3)] == ["a", "b", "c"]
    assert not queue and list(queue) == []
    queue.append("d")  # usable again once emptied
    assert list(queue) == ["d"]


# -- the idle parts of never-started senders and receivers ---------------------------------------

async def _never(*_args: Any) -> None:
    """Stands in for send()/receive(), as rtc/peer.py's _not_started does."""


async def test_idle_senders_and_receivers_renegotiate() -> None:
    client, server = max_bundle_pc(), max_bundle_pc()
    try:
        client.addTransceiver("audio", direction="sendrecv")
        for round_ in range(2):  # the second offer is a renegotiation with one more track
            if round_:
                client.addTransceiver("audio", direction="sendrecv")
            await client.setLocalDescription(await client.createOffer())
            await server.setRemoteDescription(client.localDescription)
            for transceiver in server.getTransceivers():  # as rtc/peer.py does
                transceiver.sender.send = transceiver.receiver.receive = _never
                bridge.share_idle_sender(transceiver.sender)
                bridge.share_idle_receiver(transceiver.receiver)
            await server.setLocalDescription(await server.createAnswer())
            await client.setRemoteDescription(server.localDescription)
            assert server.signalingState == client.signalingState == "stable"
        assert server.localDescription.sdp.count("m=audio") == 2
    finally:
        await client.close()
        await asyncio.wait_for(server.close(), 10)


async def test_never_started_senders_and_receivers_share_idle_parts_and_still_close() -> None:
    pc = max_bundle_pc()
    try:
        transceivers = [pc.addTransceiver("audio") for _ in range(2)]
        receivers = [t.receiver for t in transceivers]
        own = [bridge.decoder_queue(r) for r in receivers]
        assert own[0] is not own[1]
        for transceiver in transceivers:
            bridge.share_idle_sender(transceiver.sender)
            bridge.share_idle_receiver(transceiver.receiver)
        shared = [bridge.decoder_queue(r) for r in receivers]
        assert shared[0] is shared[1] and shared[0] is not own[0]
    finally:
        await asyncio.wait_for(pc.close(), 10)  # stop() of never-started parts waits for nothing


async def test_a_decoding_receiver_keeps_its_decoder(pair: Pair) -> None:
    receiver = pair.receiver()
    await until(lambda: bridge.active_ssrcs(receiver), "the first RTP packet")
    own = bridge.decoder_queue(receiver)
    bridge.share_idle_receiver(receiver)
    bridge.share_idle_sender(pair.sender())
    assert bridge.decoder_queue(receiver) is own  # its thread reads it; close() still ends it


# -- transports ----------------------------------------------------------------------------------

async def test_ice_connection_holds_the_gathered_candidate(pair: Pair) -> None:
    connection = bridge.ice_connection(pair.sender().transport.transport)
    assert isinstance(connection, Connection)
    assert [(c.host, c.type) for c in connection.local_candidates] == [("127.0.0.1", "host")]


async def test_srtp_sessions_carry_media_from_one_peer_to_the_other(pair: Pair) -> None:
    rx, tx = bridge.srtp_sessions(pair.sender().transport)
    peer_rx, _ = bridge.srtp_sessions(pair.receiver().transport)
    assert isinstance(rx, pylibsrtp.Session) and isinstance(tx, pylibsrtp.Session)
    packet = RtpPacket(payload_type=111, sequence_number=7, timestamp=960,
                       ssrc=0x1234, payload=b"bridge").serialize()
    protected = tx.protect(packet)
    assert protected != packet
    assert peer_rx.unprotect(protected) == packet


async def test_srtp_send_key_is_the_key_the_outgoing_session_holds(pair: Pair) -> None:
    """What the server's own AES-GCM sender is keyed with (rtc/sealing.py): the same
    bytes as aiortc's `_tx_srtp` makes, which the other side's session decrypts."""
    dtls = pair.sender().transport
    profile, key = bridge.srtp_send_key(dtls)
    _, tx = bridge.srtp_sessions(dtls)
    peer_rx, _ = bridge.srtp_sessions(pair.receiver().transport)
    assert profile == "SRTP_AEAD_AES_256_GCM" and len(key) == 44  # aiortc's first choice
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM)
    packet = RtpPacket(payload_type=111, sequence_number=9, timestamp=960,
                       ssrc=0x5EA1, payload=b"same key").serialize()
    assert pylibsrtp.Session(policy).protect(packet) == tx.protect(packet)
    assert peer_rx.unprotect(tx.protect(packet)) == packet
    # the receiving side's key is the other half of the exporter's output
    _, other_key = bridge.srtp_send_key(pair.receiver().transport)
    assert other_key != key


async def test_srtp_sessions_are_none_before_dtls() -> None:
    pc = max_bundle_pc()
    try:
        transceiver = pc.addTransceiver("audio")
        assert bridge.srtp_sessions(transceiver.sender.transport) == (None, None)
    finally:
        await pc.close()


# -- RTCRtpSender --------------------------------------------------------------------------------

async def test_sender_identity_is_what_the_offer_announces() -> None:
    pc = max_bundle_pc()
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        bridge.set_sender_identity(sender, ssrc=0xCAFE, stream_id="alice-screen",
                                   track_id="alice-screen-track")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        assert f"a=ssrc:{0xCAFE} " in sdp
        assert "a=msid:alice-screen alice-screen-track" in sdp
        assert bridge.sender_ssrc(sender) == 0xCAFE
        assert bridge.sender_stream_id(sender) == "alice-screen"
    finally:
        await pc.close()


async def test_set_sender_identity_leaves_unnamed_fields_alone() -> None:
    pc = max_bundle_pc()
    try:
        sender = pc.addTransceiver("audio").sender
        ssrc = bridge.sender_ssrc(sender)
        bridge.set_sender_identity(sender, stream_id="only-the-stream")
        assert bridge.sender_ssrc(sender) == ssrc
        assert bridge.sender_stream_id(sender) == "only-the-stream"
    finally:
        await pc.close()


async def test_sender_ssrc_is_the_one_on_the_wire(pair: Pair) -> None:
    receiver = pair.receiver()
    await until(lambda: bridge.active_ssrcs(receiver), "the first RTP packet")
    assert bridge.active_ssrcs(receiver) == [bridge.sender_ssrc(pair.sender())]


# -- RTCRtpReceiver (what the recorder taps) -----------------------------------------------------

class _Tap:
    def __init__(self, original: Any) -> None:
        self.original, self.frames = original, 0

    def get(self) -> Any:
        return self.original.get()

    def put(self, item: Any) -> None:
        if item is None:
            self.original.put(None)
        else:
            self.frames += 1


async def test_decoder_queue_replacement_gets_the_encoded_frames(pair: Pair) -> None:
    receiver = pair.receiver()
    original = bridge.decoder_queue(receiver)
    assert original is not None and hasattr(original, "put")
    tap = _Tap(original)
    bridge.set_decoder_queue(receiver, tap)
    assert bridge.decoder_queue(receiver) is tap
    await until(lambda: tap.frames >= 3, "encoded frames in the replaced queue")


async def test_rtp_packet_handler_wrapper_sees_every_packet(pair: Pair) -> None:
    receiver = pair.receiver()
    handle = bridge.rtp_packet_handler(receiver)
    assert handle is not None
    seen: list[int] = []

    async def counting(packet: Any, arrival_time_ms: int) -> None:
        seen.append(packet.sequence_number)
        await handle(packet, arrival_time_ms=arrival_time_ms)

    bridge.set_rtp_packet_handler(receiver, counting)
    await until(lambda: len(seen) >= 3, "packets through the wrapped handler")
    assert seen == sorted(seen)


async def test_send_pli_reaches_the_sender(pair: Pair) -> None:
    sender = pair.sender()
    got: list[Any] = []
    original = sender._handle_rtcp_packet  # the test's own view of what arrives

    async def recording(packet: Any) -> None:
        got.append(packet)
        await original(packet)

    sender._handle_rtcp_packet = recording
    receiver = pair.receiver()
    await until(lambda: bridge.active_ssrcs(receiver), "the first RTP packet")
    await bridge.send_pli(receiver, bridge.active_ssrcs(receiver)[-1])
    await until(lambda: any(isinstance(p, RtcpPsfbPacket) and p.fmt == 1 for p in got),
                 "the PLI at the sender")


# -- aioice --------------------------------------------------------------------------------------

async def test_nominated_pair_is_the_path_in_use(pair: Pair) -> None:
    connection = bridge.ice_connection(pair.sender().transport.transport)
    peer = bridge.ice_connection(pair.receiver().transport.transport)
    selected = bridge.nominated_pair(connection)
    assert selected is not None
    assert selected.remote_addr == (peer.local_candidates[0].host,
                                    peer.local_candidates[0].port)
    live = bridge.nominated_pairs(connection)
    assert live is bridge.nominated_pairs(connection)  # the live dict, safe to keep
    assert live.get(1) is selected


async def test_nominated_pair_is_none_before_connecting() -> None:
    pc = max_bundle_pc()
    try:
        transceiver = pc.addTransceiver("audio")
        connection = bridge.ice_connection(transceiver.sender.transport.transport)
        assert bridge.nominated_pair(connection) is None
        assert bridge.nominated_pairs(connection) == {}
    finally:
        await pc.close()


@pytest.mark.skipif(not fastpath.AVAILABLE, reason=fastpath.REASON or "C engine off")
async def test_aioice_announces_its_nominations_through_the_servers_dict() -> None:
    """The dict nominated_pairs puts in aioice's place is the one aioice then updates.

    The C fan-out checks a route's receivers again only when this dict says a
    pair changed (fastpath.NominatedPairs): if aioice kept writing to a dict of
    its own, a renominated receiver would go on being sent to at its old address.
    """
    controlled = Connection(ice_controlling=False, use_ipv6=False)
    controlling = Connection(ice_controlling=True, use_ipv6=False)
    try:
        pairs = bridge.nominated_pairs(controlled)  # before ICE, as early as the server can
        assert type(pairs) is fastpath.NominatedPairs and pairs == {}
        assert controlled._nominated is pairs and bridge.nominated_pairs(controlled) is pairs
        epoch = fastpath.nomination_epoch()
        for connection in (controlled, controlling):
            await connection.gather_candidates()
        await connect_agents(controlled, controlling, timeout=20)
        assert pairs.get(1) is bridge.nominated_pair(controlled) is not None
        assert fastpath.nomination_epoch() > epoch  # aioice's nomination went through it
        epoch = fastpath.nomination_epoch()
        await controlled.close()
        assert pairs == {} and fastpath.nomination_epoch() > epoch
    finally:
        await controlled.close()
        await controlling.close()


async def test_protocols_hold_the_selected_pairs_protocol(pair: Pair) -> None:
    connection = bridge.ice_connection(pair.sender().transport.transport)
    selected = bridge.nominated_pair(connection)
    assert selected is not None and selected.protocol in bridge.protocols(connection)
    assert bridge.protocols(connection) is bridge.protocols(connection)


async def test_remote_candidates_and_their_network_host(pair: Pair) -> None:
    connection = bridge.ice_connection(pair.sender().transport.transport)
    remote = bridge.remote_candidates(connection)
    assert remote is bridge.remote_candidates(connection)
    assert [bridge.candidate_network_host(c) for c in remote] == ["127.0.0.1"]


async def test_candidate_network_host_is_the_address_not_the_name() -> None:
    candidate = Candidate(foundation="1", component=1, transport="udp", priority=1,
                          host="192.0.2.7", port=9, type="host")
    assert bridge.candidate_network_host(candidate) == "192.0.2.7"


async def test_set_local_candidates_replaces_gathering() -> None:
    pc = max_bundle_pc()
    try:
        transceiver = pc.addTransceiver("audio")
        connection = bridge.ice_connection(transceiver.sender.transport.transport)
        assert not bridge.gathering_started(connection)
        mine = Candidate(foundation="1", component=1, transport="udp", priority=1,
                         host="192.0.2.7", port=40000, type="host")
        bridge.set_local_candidates(connection, [mine])
        assert bridge.gathering_started(connection)
        await connection.gather_candidates()  # already done: binds nothing more
        assert connection.local_candidates == [mine]
        await pc.setLocalDescription(await pc.createOffer())
        assert "192.0.2.7 40000 typ host" in pc.localDescription.sdp
    finally:
        await pc.close()


# -- aioice: consent freshness (rtc/consent.py) --------------------------------------------------

async def test_replace_consent_hands_the_connected_agent_over_and_ends_aioices_task() -> None:
    """connect() calls the replacement once ICE completes; the untouched agent keeps its task."""
    taken: list[Connection] = []
    replaced = Connection(ice_controlling=False, use_ipv6=False)
    untouched = Connection(ice_controlling=True, use_ipv6=False)
    try:
        bridge.replace_consent(replaced, taken.append)
        for connection in (replaced, untouched):
            await connection.gather_candidates()
        await connect_agents(replaced, untouched, timeout=20)
        await asyncio.sleep(0)
        assert taken == [replaced]
        assert bridge.consent_task(replaced).done()
        assert not bridge.consent_task(untouched).done()  # aioice's own, still checking
        # What the scheduler builds its checks from.
        request = replaced.build_request(bridge.nominated_pair(replaced), nominate=False)
        assert request.attributes["USERNAME"] == \
            f"{untouched.local_username}:{replaced.local_username}"
        assert replaced.remote_password == untouched.local_password
    finally:
        await untouched.close()
        await replaced.close()


# -- pylibsrtp -----------------------------------------------------------------------------------

def _session() -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=bytes(range(30)),
                                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))


def test_srtp_context_address_is_per_session_and_stable() -> None:
    one, two = _session(), _session()
    address = bridge.srtp_context_address(one)
    assert address != 0
    assert address == bridge.srtp_context_address(one)
    assert address != bridge.srtp_context_address(two)


def test_srtp_functions_are_the_libsrtp_2_ones() -> None:
    protect, protect_signature = bridge.srtp_function("srtp_protect")
    unprotect, unprotect_signature = bridge.srtp_function("srtp_unprotect")
    assert protect and unprotect and protect != unprotect
    assert protect_signature == unprotect_signature == fastpath.EXPECTED_PROTECT


# -- the checks ----------------------------------------------------------------------------------

def _pins() -> dict[str, str]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {spec.split(">=")[0]: spec for spec in dependencies if spec.split(">=")[0]
            in bridge.VERIFIED}


def test_verified_ranges_are_the_pyproject_pins() -> None:
    pins = _pins()
    assert set(pins) == set(bridge.VERIFIED)
    for name, (lowest, beyond) in bridge.VERIFIED.items():
        assert pins[name] == (f"{name}>={lowest[0]}.{lowest[1]},<{beyond[0]}.{beyond[1]}")


async def test_check_passes_on_the_installed_libraries() -> None:
    bridge.check_versions()
    await bridge.check()


def test_versions_read_from_dist_info_names_agree_with_importlib_metadata() -> None:
    from importlib import metadata

    for name in [*bridge.VERIFIED, "pyOpenSSL", "aiohttp", "prometheus-client"]:
        assert medialoader.installed_version(name) == metadata.version(name), name


def test_dist_info_lookup_normalises_names_and_takes_the_first_path(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in ("pyOpenSSL-25.1.0.dist-info", "zope.interface-7.2.dist-info",
                      "not_a_dist-1.0.egg-info"):
        (first / directory).mkdir(parents=True)
    (second / "pyopenssl-24.0.0.dist-info").mkdir(parents=True)
    paths = [str(tmp_path / "missing"), str(first), str(second)]
    assert medialoader.installed_version("pyopenssl", paths) == "25.1.0"
    assert medialoader.installed_version("Zope-Interface", paths) == "7.2"
    assert medialoader.installed_version("callsctl-no-such-dist", paths) is None


def test_version_out_of_range_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = medialoader.installed_version
    monkeypatch.setattr(medialoader, "installed_version",
                        lambda name: "1.17.0" if name == "aiortc" else real(name))
    with pytest.raises(bridge.BridgeError) as error:
        bridge.check_versions()
    message = str(error.value)
    assert "\n" not in message
    assert "aiortc 1.17.0" in message and ">=1.16,<1.17" in message


async def test_missing_internal_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(bridge.BridgeError) as error:
        await bridge.check()
    message = str(error.value)
    assert "\n" not in message and "_send_rtcp_pli" in message


async def test_an_unexpected_number_of_asyncio_queues_is_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As if an aioice upgrade had added a queue share_idle_queues was not verified with.
    monkeypatch.setitem(bridge._QUEUES_VERIFIED, "Connection", 3)
    with pytest.raises(bridge.BridgeError) as error:
        await bridge.check()
    assert "\n" not in str(error.value) and "Connection's asyncio queues" in str(error.value)


def test_no_private_reach_outside_the_bridge() -> None:
    found = private_reaches(Path(REPO))
    assert found == [], "use callsctl_sfu/rtc/aiortc_bridge.py for:\n" + "\n".join(found)
