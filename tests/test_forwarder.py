"""The forwarder through its interface alone: membership calls in, packets out, metrics out.

Stand-in peers record what they are sent (their fan-out target is None, so
every copy takes the per-receiver Python path, with or without the C engine);
the packets, tracks, rewrites and routes are the real ones. What the
integration tests check through a server (mute, leave, metrics), this checks
without one, which is how another media plane would be tested against the seam.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from callsctl_sfu.calls.forward_metrics import ForwardMetrics, NoMetrics
from callsctl_sfu.calls.forwarder import VOICE_LEVEL_DBOV, WRITE_SAMPLE_EVERY, Forwarder
from callsctl_sfu.rtc.peer import DownTrack
from callsctl_sfu.rtc.rtp import PyRewrite, parse_rtp
from callsctl_sfu.rtc.tracks import PublishedTrack

LEVEL_ID = 1
OPUS_PT = 111


class Peer:
    """The few MediaPeer attributes the forwarder reads, and a record of what it sent."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.published: dict[str, PublishedTrack] = {}
        self.downtracks: dict[str, DownTrack] = {}
        self.retired: dict[str, DownTrack] = {}
        self.ssrc_to_mid: dict[int, str] = {}
        self.mid_ext_id = None
        self.rid_ext_id = None
        self.audio_level_id = LEVEL_ID
        self.opus_pt = OPUS_PT
        self.vp8_pt = 96
        self.connected = True
        self.sent: list[bytes] = []
        self.ingress = None  # no socket here: nothing for the C ingress to read

    def drop_ingress_routes(self) -> None:
        pass

    @property
    def video_published(self) -> tuple[PublishedTrack, ...]:
        return tuple(t for t in self.published.values() if t.kind == "video")

    @property
    def simulcast_published(self) -> tuple[PublishedTrack, ...]:
        return tuple(t for t in self.video_published if t.rids)

    def publish_audio(self, ssrc: int) -> None:
        self.published["0"] = PublishedTrack("0", "audio", "audio", None, ssrcs={ssrc})
        self.ssrc_to_mid[ssrc] = "0"

    def receive_from(self, publisher: Peer, ssrc: int) -> DownTrack:
        key = f"{publisher.session_id}:audio"
        down = DownTrack(key, publisher.session_id, "audio", None,
                         PyRewrite(ssrc, OPUS_PT, LEVEL_ID), negotiated=True)
        self.downtracks[key] = down
        return down

    def track_for(self, ssrc: int, _mid: bytes | None) -> PublishedTrack | None:
        mid = self.ssrc_to_mid.get(ssrc)
        return self.published.get(mid) if mid is not None else None

    def fanout_target(self, _down: DownTrack) -> None:
        return None  # not on the shared IPv4 socket: the Python path

    def send_rtp(self, packet: bytes) -> bool:
        self.sent.append(packet)
        return True

    def send_rtcp(self, _packet: bytes) -> bool:
        return True


class Recorded:
    """A ForwardMetrics that keeps what it is told."""

    def __init__(self) -> None:
        self.costs: list[tuple[str, float]] = []

    def on_send_cost(self, kind: str, seconds: float) -> None:
        self.costs.append((kind, seconds))


def opus(seq: int, ssrc: int = 0xA, level: int = 20) -> bytes:
    """One RTP packet with an RFC 6464 level (one-byte extension, RFC 8285)."""
    header = struct.pack("!BBHII", 0x90, OPUS_PT, seq, seq * 960, ssrc)
    extension = struct.pack("!HH", 0xBEDE, 1) + bytes([LEVEL_ID << 4, level, 0, 0])
    return header + extension + b"opus-frame"


@pytest.fixture
def call():
    """A forwarder with three members of one call: alice publishes, bob and carol receive."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loud: list[str] = []
    metrics = Recorded()
    forwarder = Forwarder(mux=None, metrics=metrics, on_loud=loud.append)  # type: ignore[arg-type]
    alice, bob, carol = Peer("alice"), Peer("bob"), Peer("carol")
    alice.publish_audio(0xA)
    for ssrc, peer in ((0xB, bob), (0xC, carol)):
        peer.receive_from(alice, ssrc)
    for peer in (alice, bob, carol):
        forwarder.add_session(peer.session_id, "call-1", peer)  # type: ignore[arg-type]
    yield forwarder, (alice, bob, carol), loud, metrics
    asyncio.set_event_loop(None)
    loop.close()


def test_a_packet_reaches_every_other_member_rewritten_for_each(call):
    forwarder, (alice, bob, carol), loud, _metrics = call
    forwarder.on_rtp(alice, opus(5))  # type: ignore[arg-type]
    for receiver, ssrc in ((bob, 0xB), (carol, 0xC)):
        (packet,) = [parse_rtp(p) for p in receiver.sent]
        assert (packet.ssrc, packet.sequence, bytes(packet.payload)) == (ssrc, 5, b"opus-frame")
        assert packet.extensions == {LEVEL_ID: bytes([20])}
    assert alice.sent == [] and forwarder.stats.rtp_forwarded == 2
    assert loud == ["alice"]  # level 20 -dBov is speech
    forwarder.on_rtp(alice, opus(6, level=VOICE_LEVEL_DBOV + 1))  # type: ignore[arg-type]
    assert loud == ["alice"]  # quiet: not reported


def test_set_muted_drops_the_microphone_until_unmuted(call):
    forwarder, (alice, bob, carol), loud, _metrics = call
    forwarder.set_muted("alice", True)
    forwarder.on_rtp(alice, opus(1))  # type: ignore[arg-type]
    assert bob.sent == carol.sent == [] and forwarder.stats.dropped_muted == 1
    assert loud == []  # a muted speaker is never "speaking"
    forwarder.set_muted("alice", False)
    forwarder.on_rtp(alice, opus(2))  # type: ignore[arg-type]
    assert len(bob.sent) == len(carol.sent) == 1


def test_remove_session_stops_its_media_both_ways(call):
    forwarder, (alice, bob, carol), _loud, _metrics = call
    forwarder.on_rtp(alice, opus(1))  # type: ignore[arg-type]
    forwarder.remove_session("bob")
    forwarder.on_rtp(alice, opus(2))  # type: ignore[arg-type]
    assert [parse_rtp(p).sequence for p in bob.sent] == [1]
    assert [parse_rtp(p).sequence for p in carol.sent] == [1, 2]
    forwarder.remove_session("alice")
    forwarder.on_rtp(alice, opus(3))  # type: ignore[arg-type]  # a departed publisher
    assert len(carol.sent) == 2 and forwarder.stats.rtp_in == 3


def test_a_publisher_that_leaves_and_rejoins_is_routed_again(call):
    """The per-member routing keys (cached, not built per packet) match the routing tables."""
    forwarder, (alice, bob, carol), _loud, _metrics = call
    forwarder.on_rtp(alice, opus(1))  # type: ignore[arg-type]
    forwarder.remove_session("alice")
    forwarder.on_rtp(alice, opus(2))  # type: ignore[arg-type]  # gone: reaches nobody
    forwarder.add_session("alice", "call-1", alice)  # type: ignore[arg-type]
    forwarder.on_rtp(alice, opus(3))  # type: ignore[arg-type]
    for receiver in (bob, carol):
        assert [parse_rtp(p).sequence for p in receiver.sent] == [1, 3]


def test_a_sample_of_sends_is_reported_to_the_metrics_interface(call):
    forwarder, (alice, _bob, _carol), _loud, metrics = call
    for seq in range(WRITE_SAMPLE_EVERY):  # 2 copies each: WRITE_SAMPLE_EVERY * 2 sends
        forwarder.on_rtp(alice, opus(seq))  # type: ignore[arg-type]
    assert len(metrics.costs) == 2
    assert all(kind == "audio" and seconds >= 0 for kind, seconds in metrics.costs)


def test_the_no_op_metrics_fit_the_interface():
    quiet: ForwardMetrics = NoMetrics()
    assert quiet.on_send_cost("audio", 0.001) is None
