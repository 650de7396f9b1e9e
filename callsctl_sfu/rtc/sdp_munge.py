"""Make the server's renegotiation offers speak the client's numbering.

aiortc writes every offer with its own payload types (Opus = 96) and header
extension ids (mid = 1, audio level = 2). A browser that made the first offer
has already bound other numbers to those, and within one BUNDLE group a
payload type or an extension id must not mean two things (RFC 8843 §9.1-9.2;
libwebrtc rejects "RTP extension ID reassignment" and codec collisions). So
before an offer leaves the server, each codec takes the payload type the
client used for it, each extension the client's id, and anything the client
never offered takes a number the client does not use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?")
_EXTMAP = re.compile(r"^a=extmap:(\d+)(/\w+)? (\S+)(.*)$")
_PT_ATTR = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)(.*)$")


# fmtp parameters that make two entries of one codec different codecs (RFC 6184
# H.264 profiles and packetization modes, VP9/AV1 profiles). Others (Opus
# useinbandfec, minptime) are preferences of the same codec.
_VARIANT_PARAMS = ("profile-level-id", "packetization-mode", "profile-id", "profile")
Identity = tuple[str, ...]


@dataclass
class Numbering:
    """Payload types by codec and extension ids by URI, as a peer uses them.

    `payload_types` answers "which number is Opus / VP8" (first entry of a
    codec); `identities` tells every payload type apart, codec variants and
    each RTX entry (keyed by the codec it repairs) included.
    """

    payload_types: dict[tuple[str, str, int, int], int] = field(default_factory=dict)
    extension_ids: dict[str, int] = field(default_factory=dict)
    identities: dict[int, Identity] = field(default_factory=dict)

    @property
    def used_payload_types(self) -> set[int]:
        return set(self.payload_types.values()) | set(self.identities)

    @property
    def used_extension_ids(self) -> set[int]:
        return set(self.extension_ids.values())

    def number_for(self, identity: Identity) -> int | None:
        return next((pt for pt, ident in self.identities.items() if ident == identity), None)


def merge_numbering(current: Numbering, earlier: Numbering) -> Numbering:
    """`current` (what the peer's latest description says), completed by `earlier`.

    An earlier entry is kept only where it contradicts nothing current: neither
    its codec/URI nor its number is bound otherwise now (within one BUNDLE group a
    number must keep one meaning, RFC 8843 §9.1-9.2).
    """
    merged = Numbering(dict(current.payload_types), dict(current.extension_ids),
                       dict(current.identities))
    for pt, identity in earlier.identities.items():
        if pt not in merged.identities and merged.number_for(identity) is None:
            merged.identities[pt] = identity
    for key, pt in earlier.payload_types.items():
        if key not in merged.payload_types and merged.identities.get(pt, ())[:4] == \
                tuple(str(x) for x in key):
            merged.payload_types[key] = pt
    for uri, ext_id in earlier.extension_ids.items():
        if uri not in merged.extension_ids and ext_id not in merged.used_extension_ids:
            merged.extension_ids[uri] = ext_id
    return merged


def libwebrtc_numbering() -> Numbering:
    """The numbers libwebrtc (Chromium, Mattermost's desktop and mobile apps) picks itself.

    Until a client has offered audio or video (the Mattermost client's first
    offer carries only a data channel), the server's offers use these. A client
    that adds a track while the server's offer is in flight (glare: it rolls its
    own offer back and answers ours) has already bound these numbers to the same
    meanings, so our offer cannot collide with them; with aiortc's own numbers
    (mid = 1, audio level = 2, Opus = 96) Chromium refuses the offer with "RTP
    extension ID reassignment not supported". Observed in Chromium's offers:
    audio level 1, abs-send-time 2, transport-cc 3, mid 4, rid 10, repaired rid
    11; Opus 111, VP8 96 with its RTX 97.
    """
    opus = ("audio", "opus", "48000", "2")
    vp8 = ("video", "vp8", "90000", "1")
    return Numbering(
        payload_types={("audio", "opus", 48000, 2): 111, ("video", "vp8", 90000, 1): 96},
        extension_ids={
            "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
            "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
            "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 3,
            "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
            "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id": 10,
            "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id": 11,
        },
        identities={111: opus, 96: vp8, 97: ("rtx", *vp8)},
    )


def _codec_key(kind: str, name: str, clock: str, channels: str | None) -> tuple[str, str, int, int]:
    return (kind, name.lower(), int(clock), int(channels or 1))


def numbering_of(sdp: str) -> Numbering:
    """Collect the numbering a description uses across all m-sections."""
    result = Numbering()
    kind = ""
    names: dict[int, tuple[str, str, int, int]] = {}
    params: dict[int, dict[str, str]] = {}
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            continue
        match = _RTPMAP.match(line)
        if match:
            pt = int(match.group(1))
            names[pt] = _codec_key(kind, match.group(2), match.group(3), match.group(4))
            continue
        match = _EXTMAP.match(line)
        if match:
            result.extension_ids.setdefault(match.group(3), int(match.group(1)))
            continue
        fmtp = re.match(r"^a=fmtp:(\d+) (.*)$", line)
        if fmtp:
            params[int(fmtp.group(1))] = dict(
                item.strip().split("=", 1) for item in fmtp.group(2).split(";") if "=" in item)

    def variant(pt: int) -> Identity:
        found = params.get(pt, {})
        return tuple(str(x) for x in names[pt]) + tuple(
            f"{k}={found[k].lower()}" for k in _VARIANT_PARAMS if k in found)

    for pt, key in names.items():
        apt = params.get(pt, {}).get("apt")
        if key[1] == "rtx" and apt is not None and apt.isdigit() and int(apt) in names:
            result.identities[pt] = ("rtx",) + variant(int(apt))
        else:
            result.identities[pt] = variant(pt)
            result.payload_types.setdefault(key, pt)
    return result


def _allocator(used: set[int], low: int, high: int):
    def allocate() -> int:
        for candidate in range(low, high + 1):
            if candidate not in used:
                used.add(candidate)
                return candidate
        raise ValueError("no free number left in the BUNDLE group")

    return allocate


def harmonise(offer: str, reference: Numbering) -> str:
    """Rewrite `offer`'s payload types and extension ids to agree with `reference`."""
    own = numbering_of(offer)
    used_pts = set(reference.used_payload_types)
    new_pt = _allocator(used_pts, 96, 127)
    pt_map: dict[int, int] = {}
    # First the codecs the client knows (exact variant), so that free numbers are
    # not taken by others first; then every other entry gets a number of its own.
    for pt, identity in own.identities.items():
        known = reference.number_for(identity)
        if known is not None and known not in pt_map.values():
            pt_map[pt] = known
    for pt in own.identities:
        if pt in pt_map:
            continue
        pt_map[pt] = pt if pt < 96 and pt not in used_pts else new_pt()
        used_pts.add(pt_map[pt])

    used_ids = set(reference.used_extension_ids)
    new_id = _allocator(used_ids, 1, 14)
    id_map: dict[int, int] = {}
    for uri, ext_id in own.extension_ids.items():
        id_map[ext_id] = reference.extension_ids.get(uri) or new_id()

    out = []
    for line in offer.splitlines():
        if line.startswith("m=") and "RTP/" in line:
            parts = line.split(" ")
            fmts = [str(pt_map.get(int(f), f)) if f.isdigit() else f for f in parts[3:]]
            line = " ".join(parts[:3] + fmts)
        elif (match := _PT_ATTR.match(line)) is not None:
            pt = int(match.group(2))
            rest = match.group(3)
            rest = re.sub(r"apt=(\d+)", lambda m: f"apt={pt_map.get(int(m.group(1)), m.group(1))}",
                          rest)
            line = f"a={match.group(1)}:{pt_map.get(pt, pt)}{rest}"
        elif (match := _EXTMAP.match(line)) is not None:
            ext_id = int(match.group(1))
            line = f"a=extmap:{id_map.get(ext_id, ext_id)}{match.group(2) or ''} " \
                   f"{match.group(3)}{match.group(4)}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"
