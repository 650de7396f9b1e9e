"""End to end: the web client in real headless Chromium against a real `callsctl serve`.

Three browser contexts (separate profiles, fake microphones) open join links for
the same call, unmute (everyone joins muted and adds the microphone on the
first unmute, as Mattermost's client does), talk through the SFU and see each
other's state changes. Audio
flow is checked with `RTCPeerConnection.getStats()` on every page: inbound audio
from each of the other two participants must have packets and non-zero energy
(the client plays every remote stream through an <audio> element, which is what
makes Chromium compute the level).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from callsctl_sfu.rtc import fastpath
from callsctl_sfu.tokens import issue_token
from tests.support.browser import JOIN_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserParticipant, wait_for_audio
from tests.support.chromium import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def run_three_party_call(browser: Any, join_urls: list[str], server_log=lambda: "",
                         while_joined: Any = None) -> None:
    """Three join, all hear each other, mute/hand/reactions show elsewhere, leave removes.

    `while_joined()`, when given, runs once all three hear each other."""
    labels = ["alice", "bob", "carol"]
    people = [BrowserParticipant(browser, label) for label in labels]
    try:
        for person, url in zip(people, join_urls, strict=True):
            person.join(url, f"{person.label.title()} E2E")
        for person in people:
            person.wait_media_connected()
        sids = [p.session_id for p in people]
        assert len(set(sids)) == 3, sids

        # Everyone lists everyone with the display name they chose, and one host.
        for person in people:
            for other in people:
                person.row(other.session_id).wait_for(timeout=UI_TIMEOUT_MS)
                assert person.row(other.session_id).locator(".name").inner_text() == \
                    f"{other.label.title()} E2E"
        hosts = {p.page.locator("#participants [data-host='true']").get_attribute("data-session-id")
                 for p in people}
        assert len(hosts) == 1 and hosts <= set(sids), hosts
        for person in people:
            assert person.page.locator("#participants .badge.host").count() == 1

        # Everyone joined muted, with no microphone on the connection yet: nobody
        # publishes, so every description is still the first one, the data channel alone.
        for person in people:
            assert person.page.evaluate("window.callsctl.muted") is True
            assert person.page.evaluate(
                "window.callsctl.pc.getSenders().filter((s) => s.track).length") == 0
            sections = person.page.evaluate(
                "window.callsctl.pc.localDescription.sdp.split('\\r\\n')"
                ".filter((l) => l.startsWith('m='))")
            assert [m.split(" ")[0] for m in sections] == ["m=application"], sections
        # Each unmutes in turn (the microphone is added then, renegotiating).
        for person in people:
            person.unmute()

        # Audio from each of the other two arrives, is decoded and played.
        for person in people:
            others = [sid for sid in sids if sid != person.session_id]
            wait_for_audio(person, others)
        # Each page's data channel pings were answered (its round-trip time is shown).
        for person in people:
            person.page.wait_for_function("window.callsctl.rtt !== null",
                                          timeout=UI_TIMEOUT_MS)
        if while_joined is not None:
            while_joined()
            playing = person.page.evaluate(
                "[...document.querySelectorAll('#media audio')]"
                ".filter((a) => !a.paused && a.srcObject).length")
            assert playing >= 2, person.diagnostics()

        # Nobody is muted now. Then bob mutes: alice (who learnt of bob from
        # user_joined) and carol (from joined.participants) show him muted.
        alice, bob, carol = people
        for person in people:
            person.page.wait_for_function(
                "document.querySelectorAll('#participants .muted').length === 0",
                timeout=UI_TIMEOUT_MS)
        bob.page.click("#mute", timeout=UI_TIMEOUT_MS)
        assert bob.page.evaluate("window.callsctl.muted") is True
        assert bob.page.locator("#mute").get_attribute("aria-pressed") == "true"
        # Mute is replaceTrack(null): the sender stays, without a track.
        bob.page.wait_for_function(
            "window.callsctl.pc.getSenders().some((s) => s.track === null)"
            " && !window.callsctl.pc.getSenders().some((s) => s.track && s.track.kind === 'audio')",
            timeout=UI_TIMEOUT_MS)
        for person in (alice, carol):
            person.row(bob.session_id).locator(".muted").wait_for(timeout=UI_TIMEOUT_MS)
            assert person.row(bob.session_id).get_attribute("data-muted") == "true"
            assert person.page.evaluate(
                f"window.callsctl.participants[{bob.session_id!r}].muted") is True
            assert person.page.locator("#participants .muted").count() == 1
        bob.page.click("#mute", timeout=UI_TIMEOUT_MS)
        for person in (alice, carol):
            person.row(bob.session_id).locator(".muted").wait_for(state="detached",
                                                                  timeout=UI_TIMEOUT_MS)

        # A raised hand and a reaction from bob reach alice.
        bob.page.click("#hand", timeout=UI_TIMEOUT_MS)
        alice.row(bob.session_id).locator(".hand").wait_for(timeout=UI_TIMEOUT_MS)
        bob.react("👍")
        alice.page.locator(f"#reactions [data-session-id='{bob.session_id}']").wait_for(
            timeout=UI_TIMEOUT_MS)
        bob.page.click("#hand", timeout=UI_TIMEOUT_MS)
        alice.row(bob.session_id).locator(".hand").wait_for(state="detached",
                                                            timeout=UI_TIMEOUT_MS)

        # Leaving removes carol from the others' lists (and the page says so).
        carol.page.click("#leave", timeout=UI_TIMEOUT_MS)
        assert carol.page.evaluate("window.callsctl.state") == "left"
        for person in (alice, bob):
            person.row(carol.session_id).wait_for(state="detached", timeout=UI_TIMEOUT_MS)
            assert carol.session_id not in person.page.evaluate("window.callsctl.participants")

        for person in people:
            assert not person.page_errors(), person.diagnostics()
    except Exception as exc:
        details = "\n".join(p.diagnostics() for p in people)
        raise AssertionError(
            f"{exc}\n{details}\n--- server log ---\n{server_log()[-4000:]}") from exc
    finally:
        for person in people:
            person.close()


def test_three_browsers_talk_mute_and_leave(browser, server) -> None:
    urls = [server.join_url("e2e-call", user) for user in ("alice", "bob", "carol")]
    stats_while_joined: list[dict] = []
    run_three_party_call(browser, urls, server.log, while_joined=lambda: stats_while_joined.append(
        httpx.get(f"{server.api_url}/stats", timeout=10).json()))
    # The server answered each browser's offer, so it was the DTLS client, and the
    # data channel's records (the pongs above) went through rtc/dtlsrecord.py.
    assert stats_while_joined[0]["dtls_records"] == 3, stats_while_joined[0]
    # What each browser heard above was protected by the server's own sender
    # (rtc/_srtpseal.c) and decrypted by Chromium's libsrtp, in the profile Chromium
    # picks as the DTLS server: AES-CM with HMAC-SHA1.
    if fastpath.SEALER_SHA1 == "sha-ni":  # AES-CM gets the sealer only with SHA-NI
        sealer = stats_while_joined[0]["srtp_sealer"]
        assert sealer["sessions"] == 3 and sealer["packets"] > 100, sealer
        assert sealer["profiles"] == {"SRTP_AES128_CM_SHA1_80": 3}, sealer
    # Chromium's consent checks and its answers to the server's were handled by the
    # media socket's reader thread (rtc/_iceanswer.c), not by the event loop.
    ingress = httpx.get(f"{server.api_url}/stats", timeout=10).json()["ingress"]
    if fastpath.Ingress is not None:  # the C extension is built (the server's too)
        assert ingress["reader"] == "thread", ingress
        assert ingress["stun_in"] > 0 and ingress["stun_out"] > 0, ingress


def test_bad_or_missing_token_shows_error(browser, server) -> None:
    page_user = BrowserParticipant(browser, "mallory")
    try:
        forged = issue_token(b"not-the-server-secret-0123456789", "e2e-call", "mallory", 600)
        page_user.open(f"{server.api_url}/?token={forged}")
        page_user.page.click("#join", timeout=UI_TIMEOUT_MS)
        error = page_user.page.locator("#error")
        error.wait_for(state="visible", timeout=JOIN_TIMEOUT_MS)
        assert error.inner_text().strip(), page_user.diagnostics()
        assert page_user.page.evaluate("window.callsctl.error.code") == "unauthorized", \
            page_user.diagnostics()
        assert page_user.page.evaluate("window.callsctl.state") == "error"
        assert page_user.page.evaluate("window.callsctl.sessionId") is None

        page_user.open(f"{server.api_url}/")
        error.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        assert "token" in error.inner_text()
        assert page_user.page.locator("#join").is_hidden()
        assert not page_user.page_errors(), page_user.diagnostics()
    finally:
        page_user.close()


# Stand-in for a blocked media port: no TURN server is configured, so a relay-only
# ICE policy leaves the peer connection without a single candidate pair.
FORCE_RELAY_ONLY_JS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config) {
    return new Native({...(config || {}), iceTransportPolicy: "relay"});
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})();
"""


def test_media_that_cannot_connect_is_reported(browser, server) -> None:
    person = BrowserParticipant(browser, "dave")
    try:
        person.page.add_init_script(FORCE_RELAY_ONLY_JS)
        person.join(server.join_url("e2e-blocked", "dave"), "Dave")
        # The client gives up waiting after 15 s and says why.
        person.page.wait_for_function("window.callsctl.error !== null", timeout=25_000)
        assert person.page.evaluate("window.callsctl.error.code") in (
            "media_timeout", "media_failed"), person.diagnostics()
        assert person.page.evaluate("window.callsctl.media") != "connected"
        assert "media" in person.page.locator("#error").inner_text().lower()
        assert not person.page_errors(), person.diagnostics()
    finally:
        person.close()
