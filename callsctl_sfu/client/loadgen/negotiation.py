"""The SDP side of a synthetic participant: simulcast offers, answers, msid -> publisher.

aiortc cannot offer simulcast, so the offer is completed the way a browser
writes one; the server's answer and offers are read as they came (aiortc
re-serializes without the simulcast lines) to learn the agreed payload types
and extension ids and which publisher each receiving SSRC belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SIMULCAST_RIDS = ("l", "h")  # lowest first, the names the Mattermost web app uses

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"  # RFC 8852


def simulcast_offer(sdp: str, mid: str, rids: Iterable[str] = SIMULCAST_RIDS) -> str:
    """`sdp` with the m-section `mid` offering to send `rids` as simulcast (RFC 8853, 8851).

    aiortc cannot offer simulcast, so its offer is completed the way a browser
    writes one: `a=rid:<rid> send` per layer, `a=simulcast:send l;h` and the
    RtpStreamId extension (RFC 8852) the layers are told apart by, on an id no
    other extension of the offer uses (BUNDLE shares one id space). The
    section's a=ssrc lines go: each layer has its own SSRC, announced by the
    rid in its packets, as browsers do.
    """
    rids = list(rids)
    used = {int(i) for i in re.findall(r"^a=extmap:(\d+)", sdp, flags=re.M)}
    existing = re.search(r"^a=extmap:(\d+)(?:/\w+)? " + re.escape(RID_URI), sdp, flags=re.M)
    free = [i for i in range(1, 15) if i not in used]  # one-byte form: ids 1..14
    if existing is None and not free:
        raise ValueError("no free one-byte header extension id for the rid")
    rid_id = int(existing.group(1)) if existing else free[0]
    out: list[str] = []
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        match = re.search(r"^a=mid:(\S+)", section, flags=re.M)
        if match is None or match.group(1) != mid or "a=simulcast:" in section:
            out.append(section)
            continue
        lines = [line for line in section.rstrip("\r\n").split("\r\n")
                 if not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
        if f" {RID_URI}" not in section:
            lines.append(f"a=extmap:{rid_id} {RID_URI}")
        lines += [f"a=rid:{rid} send" for rid in rids]
        lines.append("a=simulcast:send " + ";".join(rids))
        out.append("\r\n".join(lines) + "\r\n")
    return "".join(out)


def answer_accepts_simulcast(sdp: str, mid: str) -> bool:
    """Whether the answer's m-section `mid` receives our layers (`a=simulcast:recv`)."""
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        match = re.search(r"^a=mid:(\S+)", section, flags=re.M)
        if match is not None and match.group(1) == mid:
            return re.search(r"^a=simulcast:recv ", section, flags=re.M) is not None
    return False


@dataclass
class Negotiated:
    """What the server's answer fixed for one of our sending m-sections."""

    payload_type: int
    mid: str
    mid_id: int | None
    level_id: int | None
    rid_id: int | None = None  # RtpStreamId: only when the answer accepted simulcast


def source_of(msid: str, kind: str) -> tuple[str, str] | None:
    """(publisher, label) from an msid: the SFU's track ids are `<publisher>-<label>`."""
    parts = msid.split()
    stream = parts[0] if parts else ""
    track = parts[1] if len(parts) > 1 else ""
    publisher, _, label = track.rpartition("-")
    if publisher and label in ("audio", "video", "screen", "screenaudio"):
        return publisher, label
    if stream.startswith("screen-"):
        return stream[len("screen-"):], "screen" if kind == "video" else "screenaudio"
    return (stream, kind) if stream and stream != "-" else None
