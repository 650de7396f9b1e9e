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
