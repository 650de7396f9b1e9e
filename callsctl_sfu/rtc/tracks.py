"""What a participant publishes, as the SFU sees it: one entry per sending m-section.

A published track is found from the negotiated SDP (a client m-section that the
client sends on and that is not one of the server's own forwarding
transceivers). Incoming RTP is routed to it by the MID header extension
(RFC 8843 §15) when present, else by SSRC, so an SSRC change on an existing
mid (libwebrtc does that after glare) is followed rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiortc import sdp as aiortc_sdp

from callsctl_sfu.rtc.reports import ReceptionStats
from callsctl_sfu.rtc.rtcp import KeyframeThrottle, RingBuffer

CLOCK_RATES = {"audio": 48000, "video": 90000}

# What the receivers see: stream ids group tracks in the browser (one stream per
# participant for mic+camera, one for the screen share and its audio).
LABEL_KINDS = {"audio": "audio", "video": "video", "screen": "video", "screenaudio": "audio"}


@dataclass
class PublishedTrack:
    mid: str
    kind: str
    label: str
    stream_id: str | None
    ssrcs: set[int] = field(default_factory=set)
    rtx_payload_types: dict[int, int] = field(default_factory=dict)  # rtx pt -> media pt
    ring: RingBuffer | None = None
    keyframes: KeyframeThrottle = field(default_factory=KeyframeThrottle)
    highest_seq: dict[int, int] = field(default_factory=dict)
    # Packets and payload octets the Python path handled; `packets`/`octets` add the C
    # ingress's share (fast_route, a fastpath.InRoute, once the forwarder registered one).
    python_packets: int = 0
    python_octets: int = 0
    fast_route: Any = None
    nacks_sent: int = 0
    primary_ssrc: int | None = None
    # Sequence numbers the SFU itself is missing, with when the gap was seen: not
    # filled in time means receivers cannot be repaired either, so ask for a keyframe.
    missing: dict[int, float] = field(default_factory=dict)
    reception: dict[int, ReceptionStats] = field(default_factory=dict)
    forwarded: bool = True
    # Simulcast layers (rids, lowest first) and which SSRC carries which.
    rids: list[str] = field(default_factory=list)
    ssrc_rid: dict[int, str] = field(default_factory=dict)
    layer_bytes: dict[str, int] = field(default_factory=dict)
    layer_bps: dict[str, float] = field(default_factory=dict)

    def rid_of(self, ssrc: int, rid_value: bytes | None) -> str | None:
        if rid_value is not None:
            rid = rid_value.decode("ascii", "replace")
            self.ssrc_rid[ssrc] = rid
            return rid
        return self.ssrc_rid.get(ssrc)

    def ssrc_of(self, rid: str) -> int | None:
        return next((ssrc for ssrc, r in self.ssrc_rid.items() if r == rid), None)

    def received(self, ssrc: int, sequence: int, rtp_timestamp: int, arrival: float) -> None:
        stats = self.reception.get(ssrc)
        if stats is None:
            stats = self.reception[ssrc] = ReceptionStats(CLOCK_RATES[self.kind])
        stats.update(sequence, rtp_timestamp, arrival)

    @property
    def packets(self) -> int:
        route = self.fast_route
        return self.python_packets + (int(route.packets) if route is not None else 0)

    @property
    def octets(self) -> int:
        route = self.fast_route
        return self.python_octets + (int(route.octets) if route is not None else 0)

    @property
    def key_suffix(self) -> str:
        return self.label


def stream_id_for(publisher_id: str, label: str) -> str:
    return f"screen-{publisher_id}" if label.startswith("screen") else publisher_id


def _stream_of(media: aiortc_sdp.MediaDescription) -> str | None:
    return media.msid.split(" ", 1)[0] if media.msid else None


def sending_sections(remote_sdp: str, server_mids: set[str] | None = None,
                     active_mids: set[str] | frozenset[str] = frozenset()
                     ) -> list[aiortc_sdp.MediaDescription]:
    """The audio/video m-sections on which the client says it sends.

    Any m-section the client marks sendrecv/sendonly, whoever created it: a
    standard client's addTrack reuses a transceiver the server created to send
    it someone else's media (JSEP, RFC 8829 §5.2.2, addTrack's reuse rule), so
    a mid of the server's may carry the client's track too.

    With `server_mids` given, only those that certainly carry a track: a server
    mid marked sendrecv with msid "-" may carry nothing (the Mattermost client
    forces incoming video transceivers to sendrecv, a Firefox workaround) or a
    real track whose stream Chromium forgot when it rolled back its own offer in
    glare; such a mid counts once its RTP has been seen (`active_mids`).
    """
    description = aiortc_sdp.SessionDescription.parse(remote_sdp)
    sections = []
    for media in description.media:
        mid = media.rtp.muxId
        if media.kind not in ("audio", "video") or mid is None:
            continue
        if media.direction not in ("sendrecv", "sendonly"):
            continue
        if server_mids is not None and mid in server_mids and mid not in active_mids \
                and _stream_of(media) in (None, "-"):
            continue
        sections.append(media)
    return sections


def discover_published(remote_sdp: str, server_mids: set[str], screen_streams: set[str],
                       ring_size: int, previous: dict[str, PublishedTrack],
                       active_mids: set[str] | frozenset[str] = frozenset()
                       ) -> dict[str, PublishedTrack]:
    """The client's sending m-sections, keyed by mid, keeping state of known ones."""
    found: dict[str, PublishedTrack] = {}
    for media in sending_sections(remote_sdp, server_mids, active_mids):
        mid = media.rtp.muxId
        stream = _stream_of(media)
        is_screen = stream is not None and stream in screen_streams
        label = ("screen" if media.kind == "video" else "screenaudio") if is_screen else media.kind
        track = previous.get(mid)
        if track is None or track.kind != media.kind or track.label != label:
            track = PublishedTrack(mid=mid, kind=media.kind, label=label, stream_id=stream,
                                   ring=RingBuffer(ring_size) if media.kind == "video" and ring_size
                                   else None)
        track.ssrcs |= {s.ssrc for s in media.ssrc}
        if media.ssrc and track.primary_ssrc is None:
            track.primary_ssrc = media.ssrc[0].ssrc
        track.rtx_payload_types = {
            codec.payloadType: int(codec.parameters["apt"])
            for codec in media.rtp.codecs
            if codec.mimeType.lower().endswith("/rtx") and "apt" in codec.parameters
        }
        found[mid] = track
    # One forwarded track per label (the first by m-line order): receivers get one
    # "<publisher>-<label>" track, and two sources must never share its numbering.
    labels: set[str] = set()
    for track in found.values():
        track.forwarded = track.label not in labels
        labels.add(track.label)
    return found
