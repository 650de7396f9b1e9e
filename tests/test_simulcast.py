"""Simulcast negotiation (RFC 8853/8851/8852) and per-receiver layer choice."""

from __future__ import annotations

from callsctl_sfu.rtc.simulcast import (
    PROBE_AFTER,
    RID_URI,
    accept_layers,
    choose_layer,
    offered_layers,
    order_by_quality,
)

OFFER = "\r\n".join([
    "v=0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=rtpmap:111 opus/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1",
    f"a=extmap:10 {RID_URI}",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=rtpmap:96 VP8/90000", "a=rid:h send", "a=rid:l send", "a=simulcast:send h;l",
    "",
])
ANSWER = "\r\n".join([
    "v=0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=rtpmap:111 opus/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=rtpmap:96 VP8/90000",
    "",
])


def test_offered_layers_are_read_per_mid_lowest_first():
    assert offered_layers(OFFER) == {"1": ["l", "h"]}
    assert order_by_quality(["f", "h", "q"]) == ["q", "h", "f"]
    assert offered_layers(OFFER.replace("h;l", "~h;l")) == {"1": ["l", "h"]}


def test_answer_gains_receive_lines_and_the_rid_extension():
    out = accept_layers(ANSWER, OFFER)
    video = out[out.index("m=video"):]
    assert "a=rid:l recv" in video and "a=rid:h recv" in video
    assert "a=simulcast:recv l;h" in video
    assert f"a=extmap:10 {RID_URI}" in video
    assert "a=simulcast" not in out[:out.index("m=video")]  # audio untouched
    assert accept_layers(ANSWER, ANSWER) == ANSWER  # no simulcast offered: unchanged


def test_layer_choice_follows_the_receivers_estimate():
    rids, rates = ["l", "h"], {"l": 300_000.0, "h": 2_000_000.0}
    assert choose_layer(rids, rates, None, None, 0) == "h"  # no estimate yet: best
    assert choose_layer(rids, rates, 3_000_000, "h", 5) == "h"
    assert choose_layer(rids, rates, 800_000, "h", 0.1) == "l"  # down at once
    assert choose_layer(rids, rates, 500_000, "l", 3) == "l"  # stays low...
    assert choose_layer(rids, rates, 500_000, "l", PROBE_AFTER) == "h"  # ...until a probe
    assert choose_layer(rids, rates, 100_000, None, 0) == "l"  # nothing fits: lowest


def test_layers_the_publisher_stopped_sending_are_not_chosen():
    rids = ["l", "h"]
    only_low = {"l": 300_000.0, "h": 0.0}
    assert choose_layer(rids, only_low, None, None, 0) == "l"
    assert choose_layer(rids, only_low, 5_000_000, "h", 0.1) == "l"  # h went silent
