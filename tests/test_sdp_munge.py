"""Server offers take the client's payload types and extension ids (RFC 8843 §9)."""

from __future__ import annotations

from callsctl_sfu.rtc.sdp_munge import harmonise, numbering_of

CHROME_OFFER = "\r\n".join([
    "v=0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "",
])

AIORTC_OFFER = "\r\n".join([
    "v=0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 9 0 8",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "",
])


def test_codecs_and_extensions_take_the_clients_numbers():
    out = harmonise(AIORTC_OFFER, numbering_of(CHROME_OFFER))
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111 9 0 8" in out
    assert "a=rtpmap:111 opus/48000/2" in out and "a=fmtp:111 useinbandfec=1" in out
    assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in out
    assert "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level" in out


def test_unknown_codecs_never_collide_with_client_numbers():
    client = numbering_of(CHROME_OFFER)
    out = numbering_of(harmonise(AIORTC_OFFER, client))
    # PCMA was not offered by the client: it keeps static 8, which the client does not use.
    assert out.payload_types[("audio", "pcma", 8000, 1)] == 8
    used_by_client = {pt: key for key, pt in client.payload_types.items()}
    for key, pt in out.payload_types.items():
        assert used_by_client.get(pt, key) == key


def test_dynamic_codec_unknown_to_client_gets_a_free_number():
    client = numbering_of(CHROME_OFFER)
    offer = AIORTC_OFFER.replace("a=rtpmap:96 opus/48000/2", "a=rtpmap:96 opus/48000/2\r\n"
                                 "a=rtpmap:98 L16/48000")
    offer = offer.replace("96 9 0 8", "96 98 9 0 8")
    out = numbering_of(harmonise(offer, client))
    l16 = out.payload_types[("audio", "l16", 48000, 1)]
    assert l16 not in client.used_payload_types and 96 <= l16 <= 127


def test_extension_unknown_to_client_gets_a_free_id():
    client = numbering_of(CHROME_OFFER)
    offer = AIORTC_OFFER.replace(
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
        "a=extmap:3 urn:example:new")
    out = numbering_of(harmonise(offer, client))
    assert out.extension_ids["urn:example:new"] not in client.used_extension_ids


CHROME_VIDEO = "\r\n".join([
    "v=0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 108 109",
    "a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102",
    "a=rtpmap:108 H264/90000",
    "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:109 rtx/90000", "a=fmtp:109 apt=108",
    "",
])

AIORTC_VIDEO = "\r\n".join([
    "v=0",
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99 100 101 102",
    "a=rtpmap:97 VP8/90000", "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97",
    "a=rtpmap:99 H264/90000",
    "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:100 rtx/90000", "a=fmtp:100 apt=99",
    "a=rtpmap:101 H264/90000",
    "a=fmtp:101 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:102 rtx/90000", "a=fmtp:102 apt=101",
    "",
])


def test_codec_variants_and_their_rtx_never_share_a_number():
    out = harmonise(AIORTC_VIDEO, numbering_of(CHROME_VIDEO))
    mline = next(line for line in out.splitlines() if line.startswith("m=video"))
    numbers = mline.split(" ")[3:]
    assert len(numbers) == len(set(numbers)) == 6
    rtpmaps = [line for line in out.splitlines() if line.startswith("a=rtpmap:")]
    assert len({line.split(" ")[0] for line in rtpmaps}) == 6
    # Each variant keeps the client's number; each RTX points at its own codec.
    assert "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f" \
        in out
    assert "a=fmtp:109 apt=108" in out and "a=fmtp:97 apt=96" in out
