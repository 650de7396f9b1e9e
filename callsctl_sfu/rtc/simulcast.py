"""Simulcast: accept a client's layers, and pick one per receiver.

A simulcasting client (the Mattermost web app shares its screen as rids `l`
and `h`) offers `a=rid:<id> send` and `a=simulcast:send l;h` (RFC 8853,
RFC 8851) and tags each layer's packets with the RtpStreamId header extension
(RFC 8852). aiortc does not negotiate simulcast, so the server's answer is
completed here: the same rids as `recv`, `a=simulcast:recv` and the RtpStreamId
extension the layers are told apart by.

Each receiver gets exactly one layer on its ordinary single-layer track: the
best its bandwidth estimate allows (REMB from the receiver), switched only at
a keyframe of the new layer so its decoder never sees a stream start mid-GOP.
"""

from __future__ import annotations

import re

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# Names clients use, lowest quality first; unknown names keep their offered order.
_QUALITY = {"q": 0, "l": 0, "low": 0, "m": 1, "h": 2, "high": 2, "f": 3, "full": 3}
HEADROOM = 1.2  # a layer fits when the estimate exceeds its bitrate by this factor
MIN_DWELL = 2.0  # seconds on a layer before moving up
PROBE_AFTER = 10.0  # seconds on a lower layer before trying the next one up
_SIMULCAST = re.compile(r"^a=simulcast:send (\S+)")


def offered_layers(offer: str) -> dict[str, list[str]]:
    """mid -> the rids a client offers to send on it, lowest quality first."""
    layers: dict[str, list[str]] = {}
    mid: str | None = None
    for line in offer.splitlines():
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif (match := _SIMULCAST.match(line)) is not None and mid is not None:
            # "l;h" or alternatives "l,x;h"; a leading "~" marks a paused layer.
            rids = [alt.split(",")[0].lstrip("~") for alt in match.group(1).split(";")]
            layers[mid] = order_by_quality([r for r in rids if r])
    return layers


def order_by_quality(rids: list[str]) -> list[str]:
    return sorted(rids, key=lambda rid: (_QUALITY.get(rid.lower(), 1), rids.index(rid)))


def accept_layers(answer: str, offer: str) -> str:
    """Add to `answer` the simulcast receive lines for each m-section the offer simulcasts."""
    ext_ids = {uri: int(ext_id) for ext_id, uri in
               re.findall(r"^a=extmap:(\d+)(?:/\w+)? (\S+)", offer, flags=re.M)}
    return receive_layers(answer, offered_layers(offer), ext_ids)


def receive_layers(sdp: str, layers: dict[str, list[str]], ext_ids: dict[str, int]) -> str:
    """Mark the m-sections in `layers` as receiving those rids (answers and re-offers alike).

    A server re-offer must repeat them, or the client would stop simulcasting.
    """
    if not layers:
        return sdp
    out: list[str] = []
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        match = re.search(r"^a=mid:(\S+)", section, flags=re.M)
        rids = layers.get(match.group(1)) if match else None
        if not rids or "a=simulcast:" in section:
            out.append(section)
            continue
        lines = section.rstrip("\r\n").split("\r\n")
        for uri in (RID_URI, REPAIRED_RID_URI):
            if uri in ext_ids and f" {uri}" not in section:
                lines.append(f"a=extmap:{ext_ids[uri]} {uri}")
        lines += [f"a=rid:{rid} recv" for rid in rids]
        lines.append("a=simulcast:recv " + ";".join(rids))
        out.append("\r\n".join(lines) + "\r\n")
    return "".join(out)


def with_rid_extensions(sdp: str, ext_ids: dict[str, int], offer: str | None = None) -> str:
    """Negotiate the RtpStreamId extensions on the video m-sections we describe.

    aiortc leaves them out, and Chromium then treats them as refused for the
    whole session: a later simulcast transceiver of the client (the Mattermost
    web app's screen share, rids l/h) fails its own setLocalDescription with
    "negotiates simulcast but does not negotiate the RID RTP header extension".
    Negotiated but unused they cost nothing (RFC 8852 §3). In an answer
    (`offer` given) only where that m-section of the offer has them, since an
    answer may only accept what was offered (RFC 8285 §6).
    """
    offered = _extensions_by_mid(offer) if offer is not None else None
    out: list[str] = []
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        mid = re.search(r"^a=mid:(\S+)", section, flags=re.M)
        if not section.startswith("m=video") or mid is None:
            out.append(section)
            continue
        ids = ext_ids if offered is None else offered.get(mid.group(1), {})
        lines = section.rstrip("\r\n").split("\r\n")
        used = {int(i) for i in re.findall(r"^a=extmap:(\d+)", section, flags=re.M)}
        for uri in (RID_URI, REPAIRED_RID_URI):
            ext_id = ids.get(uri)
            if ext_id is not None and f" {uri}" not in section and ext_id not in used:
                lines.append(f"a=extmap:{ext_id} {uri}")
        out.append("\r\n".join(lines) + "\r\n")
    return "".join(out)


def _extensions_by_mid(sdp: str) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        mid = re.search(r"^a=mid:(\S+)", section, flags=re.M)
        if mid is not None:
            found[mid.group(1)] = {uri: int(ext_id) for ext_id, uri in re.findall(
                r"^a=extmap:(\d+)(?:/\w+)? (\S+)", section, flags=re.M)}
    return found


def choose_layer(rids: list[str], layer_bps: dict[str, float], estimate_bps: int | None,
                 current: str | None, since_switch: float) -> str:
    """The best layer that fits the receiver's estimate.

    A receiver's estimate (REMB) follows what it receives (libwebrtc caps it near
    1.5 times the incoming rate), so a receiver on a low layer cannot show that a
    higher one would fit: after PROBE_AFTER seconds on a lower layer it is tried
    again, and it stays only if the estimate then keeps up.
    """
    # Only layers the publisher is actually sending: a sender's own bandwidth
    # estimate may have switched its higher layers off.
    active = [rid for rid in rids if layer_bps.get(rid, 0.0) > 0] or rids
    best = active[-1]
    if estimate_bps is None:
        return best
    fitting = [rid for rid in active if layer_bps.get(rid, 0.0) * HEADROOM <= estimate_bps]
    choice = fitting[-1] if fitting else active[0]
    if current not in active:
        return choice
    if current is not None and rids.index(choice) < rids.index(current):
        return choice  # down at once: the receiver is losing packets otherwise
    if current is not None and rids.index(choice) <= rids.index(current) \
            and since_switch >= PROBE_AFTER and current != best:
        return active[active.index(current) + 1]
    return choice if current is None or since_switch >= MIN_DWELL else current
