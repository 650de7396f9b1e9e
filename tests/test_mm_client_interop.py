"""Mattermost's own calls client against a real `callsctl serve`, in its real order.

The client is `RTCPeer` from the npm package @mattermost/calls-common (pinned in
tests/mmclient/package-lock.json), bundled unchanged for headless Chromium and
driven by tests/mmclient/glue.js exactly as the Mattermost web app drives it:
everyone joins muted (the first offer carries only the `calls-dc` data
channel), the microphone is added with addTrack on the first unmute (libwebrtc
then reuses a transceiver the server created to send that client someone
else's audio), later mutes are replaceTrack(null), a screen share is a new
send-only transceiver with rids l/h, stopped with removeTrack.

Every step asserts what the people in the call would notice: packets from each
unmuted speaker keep arriving at every other participant, a muted one's stop,
and user_voice_on names each speaker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.callchecks import CallChecks
from tests.support.chromium import CHROMIUM, launched, static_site

HARNESS = Path(__file__).resolve().parent / "mmclient"
BUNDLE = HARNESS / "dist" / "rtcpeer.js"
CALL = "mm-interop"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def rtcpeer_bundle() -> Path:
    """Install the pinned client library (npm ci) and bundle it for the browser."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (Node.js is needed to bundle @mattermost/calls-common)")
    if not (HARNESS / "node_modules" / "@mattermost" / "calls-common").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HARNESS, check=True,
                       capture_output=True, timeout=300)
    subprocess.run([npm, "run", "build"], cwd=HARNESS, check=True, capture_output=True,
                   timeout=120)
    assert BUNDLE.stat().st_size > 10_000
    return BUNDLE


@pytest.fixture(scope="module")
def page_url(rtcpeer_bundle: Path) -> Iterator[str]:
    with static_site(HARNESS) as base:
        yield f"{base}/page.html"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched(sync_api) as chromium:
        yield chromium


class MMParticipant:
    """One browser profile running Mattermost's RTCPeer through the glue page."""

    def __init__(self, browser: Any, page_url: str, label: str) -> None:
        self.label = label
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))
        self.page.goto(page_url, timeout=15_000)
        self.session_id = ""

    def join(self, ws_url: str, simulcast: bool = False, generic: bool = False) -> str:
        self.session_id = self.page.evaluate(
            "([u, c, n, s, g]) => window.mm.join(u, c, n, {simulcast: s, generic: g})",
            [ws_url, CALL, self.label, simulcast, generic])
        self.page.wait_for_function("window.mm.state().connected", timeout=15_000)
        return self.session_id

    def call(self, method: str) -> Any:
        return self.page.evaluate(f"window.mm.{method}()")

    def inbound(self) -> dict[str, int]:
        return self.page.evaluate("window.mm.inbound()")

    def events(self) -> list[dict[str, Any]]:
        return self.page.evaluate("window.mm.state().events")

    def diagnostics(self) -> str:
        try:
            state = self.page.evaluate("window.mm.state()")
            state["events"] = state["events"][-15:]
            outbound = self.page.evaluate("window.mm.outbound()")
            outbound["transcript"] = self.page.evaluate("window.mm.transcript()")
            outbound["transceivers"] = self.call("transceivers")
        except Exception as exc:  # the page may be gone
            state, outbound = {"unavailable": str(exc)}, {}
        return (f"--- {self.label} ({self.session_id}) ---\n{state}\noutbound: {outbound}\n"
                + "\n".join(self.console[-10:]))

    def close(self) -> None:
        self.context.close()


class Call:
    """The participants of one call, with the checks a listener would make."""

    def __init__(self, browser: Any, page_url: str, server: Any, simulcast: bool = False):
        self.browser, self.page_url, self.server = browser, page_url, server
        self.simulcast = simulcast
        self.people: list[MMParticipant] = []
        checks = CallChecks(self.people, server.log)
        self.wait_flowing, self.assert_silent = checks.wait_flowing, checks.assert_silent
        self.wait_voice_on, self.diagnostics = checks.wait_voice_on, checks.diagnostics
        self.wait_voice_off = checks.wait_voice_off

    def join(self, label: str, generic: bool = False) -> MMParticipant:
        person = MMParticipant(self.browser, self.page_url, label)
        self.people.append(person)
        ws_url = f"{self.server.ws_url}?token={self.server.token(CALL, label)}"
        person.join(ws_url, simulcast=self.simulcast, generic=generic)
        return person

    def leave(self, person: MMParticipant) -> None:
        person.call("leave")
        person.close()
        self.people.remove(person)

    def close(self) -> None:
        for person in self.people:
            person.close()


def _mic_mid(person: MMParticipant) -> str:
    mids = [mid for mid, t in person.call("transceivers").items() if t["mic"]]
    assert len(mids) == 1, person.call("transceivers")
    return mids[0]


def _first_offer_has_no_media(person: MMParticipant) -> None:
    sdp = person.page.evaluate("window.mm.sdp()")
    assert "m=application" in sdp, sdp
    assert not any(line.startswith("a=sendrecv") or line.startswith("a=sendonly")
                   for line in sdp.splitlines()
                   if line), f"{person.label} publishes before unmuting:\n{sdp}"


def test_four_join_muted_then_unmute_mute_late_joiner_and_leave(browser, page_url, server):
    """2 then 4 speakers unmuting in turn; mute/unmute; a late joiner; someone leaves."""
    call = Call(browser, page_url, server)
    try:
        people = [call.join(name) for name in ("ann", "bob", "cat", "dan")]
        for person in people:
            _first_offer_has_no_media(person)

        # One after another, each first unmute is an addTrack that may land on a
        # transceiver the server created; everyone must hear every speaker so far.
        for count, speaker in enumerate(people, start=1):
            receiving_mids = set(speaker.call("transceivers"))
            speaker.call("unmute")
            call.wait_voice_on(speaker)
            call.wait_flowing({p: ["audio"] for p in people[:count]})
            if count > 1:  # the path of the bug: addTrack took a transceiver of the server's
                mic_mid = _mic_mid(speaker)
                assert mic_mid in receiving_mids, (speaker.label, mic_mid, receiving_mids)

        # Mute (replaceTrack(null)) stops ann at everyone while the others go on;
        # unmuting again (replaceTrack(track)) brings her back.
        ann, bob = people[0], people[1]
        ann.call("mute")
        call.wait_voice_off(ann)
        call.assert_silent(ann)
        call.wait_flowing({p: ["audio"] for p in people[1:]})
        ann.call("unmute")
        call.wait_flowing({p: ["audio"] for p in people})

        # A late joiner hears everyone already speaking, then is heard by all.
        eve = call.join("eve")
        call.wait_flowing({p: ["audio"] for p in people})
        eve.call("unmute")
        call.wait_voice_on(eve)
        call.wait_flowing({p: ["audio"] for p in [*people, eve]})

        # Someone leaves while others keep speaking: the rest still hear each other
        # (the leaver's forwarding transceivers are retired, never their own media).
        call.leave(bob)
        call.wait_flowing({p: ["audio"] for p in call.people})
    finally:
        call.close()


def test_mute_is_enforced_on_a_reused_transceiver(browser, page_url, server):
    """A client that says mute but keeps sending is not forwarded (server-side mute)."""
    call = Call(browser, page_url, server)
    try:
        ann, bob = call.join("ann"), call.join("bob")
        ann.call("unmute")
        bob.call("unmute")  # bob's addTrack reuses the transceiver that brings ann's audio
        call.wait_flowing({ann: ["audio"], bob: ["audio"]})
        # Speaking is detected from the audio level (Chromium's fake microphone beeps),
        # which can come a moment after the first packets: voice_off needs a voice_on first.
        call.wait_voice_on(bob)
        bob.call("muteSignalOnly")  # only the signaling message: the track keeps sending
        call.wait_voice_off(bob)
        call.assert_silent(bob)
        call.wait_flowing({ann: ["audio"]})
    finally:
        call.close()


def test_two_unmute_then_camera_and_screen_share_twice(browser, page_url, serve_factory):
    """Camera after unmute; a simulcast screen share started and stopped twice."""
    server = serve_factory(env={"CALLSCTL_ENABLE_SIMULCAST": "true"})
    call = Call(browser, page_url, server, simulcast=True)
    try:
        ann, bob = call.join("ann"), call.join("bob")
        ann.call("unmute")
        bob.call("unmute")
        call.wait_voice_on(ann)
        call.wait_voice_on(bob)
        call.wait_flowing({ann: ["audio"], bob: ["audio"]})

        bob.page.evaluate("window.mm.cameraOn()")
        call.wait_flowing({ann: ["audio"], bob: ["audio", "video"]})

        for _ in range(2):
            ann.call("startScreen")
            call.wait_flowing({ann: ["audio", "screen"], bob: ["audio", "video"]})
            ann.call("stopScreen")
            call.assert_silent(ann, "screen")
            call.wait_flowing({ann: ["audio"], bob: ["audio", "video"]})
    finally:
        call.close()


def test_standard_client_ways_to_publish(browser, page_url, server):
    """Direction toggling, a new track after replaceTrack(null), a camera via addTrack."""
    call = Call(browser, page_url, server)
    try:
        ann, bob, cat = call.join("ann"), call.join("bob", generic=True), call.join("cat")
        ann.call("unmute")
        bob.call("unmute")
        call.wait_flowing({ann: ["audio"], bob: ["audio"]})
        receiving = set(cat.call("transceivers"))
        cat.call("unmute")
        call.wait_flowing({ann: ["audio"], bob: ["audio"], cat: ["audio"]})
        mid = _mic_mid(cat)
        assert mid in receiving, (mid, receiving)  # cat sends on a mid that also brings audio

        # Mute by turning that transceiver recvonly: cat stops being forwarded but
        # still hears everyone, on that mid too; sendrecv again and cat is heard.
        cat.page.evaluate("window.mm.setMicDirection('recvonly')")
        call.assert_silent(cat)
        call.wait_flowing({ann: ["audio"], bob: ["audio"]})
        assert cat.call("transceivers")[mid]["current"] == "recvonly"
        cat.page.evaluate("window.mm.setMicDirection('sendrecv')")
        call.wait_flowing({ann: ["audio"], bob: ["audio"], cat: ["audio"]})

        # replaceTrack(null), then a new microphone track on the same sender.
        cat.call("mute")
        call.assert_silent(cat)
        cat.page.evaluate("window.mm.replaceMicWithNewTrack()")
        call.wait_flowing({ann: ["audio"], bob: ["audio"], cat: ["audio"]})

        # ann's camera comes to bob on a transceiver the server created; bob (a
        # generic client) adds his own camera with plain addTrack, which reuses
        # that transceiver: both others see it, and bob still sees ann's.
        ann.page.evaluate("window.mm.cameraOn()")
        call.wait_flowing({ann: ["audio", "video"], bob: ["audio"], cat: ["audio"]})
        receiving = {mid for mid, t in bob.call("transceivers").items() if t["kind"] == "video"}
        cam_mid = bob.page.evaluate("window.mm.addCameraByAddTrack()")
        assert cam_mid in receiving, (cam_mid, receiving)
        call.wait_flowing({ann: ["audio", "video"], bob: ["audio", "video"], cat: ["audio"]})
    finally:
        call.close()
