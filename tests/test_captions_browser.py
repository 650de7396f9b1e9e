"""Live captions in real browsers: the host's Captions button, and captions on screen.

Chromium's fake microphone plays an espeak-ng sentence (looped, with pauses);
the host turns captions on in the web client, and both pages show the
sentence's words under the speaker's name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import UI_TIMEOUT_MS, BrowserParticipant, browser_people, join_all
from tests.support.chromium import CHROMIUM, launched
from tests.support.helpers import have
from tests.support.speech import ALICE_1, BOB_VOICE

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.skipif(not (have("espeak-ng") and have("ffmpeg")),
                       reason="needs espeak-ng and ffmpeg (Debian packages)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def sentence(tmp_path_factory) -> Path:
    """The sentence with a second of silence around it (Chromium loops the file)."""
    folder = tmp_path_factory.mktemp("captions")
    spoken, wav = folder / "spoken.wav", folder / "sentence.wav"
    subprocess.run(["espeak-ng", "-v", BOB_VOICE, "-s", "140", "-w", str(spoken), ALICE_1],
                   check=True, timeout=30, capture_output=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(spoken), "-af",
                    "adelay=1000,apad=pad_dur=1.5", "-ar", "48000", "-ac", "1", str(wav)],
                   check=True, timeout=30, capture_output=True)
    return wav


# The sentence's content words. Through Chromium's capture processing and the Opus
# round trip pocketsphinx hears the looped sentence differently each time ("we need
# or that the product", "we need more likely to be a rock"): a caption counts as the
# sentence when it carries one of them (tests/test_captions.py checks accuracy on the
# undistorted path).
SENTENCE_WORDS = frozenset({"need", "more", "time", "finish", "project"})
CAPTION_WAIT_S = 45
# Every caption text the page has shown (app.js hands each signaling message to a
# `callsctl:message` event; captions.js shows `caption` ones under the speaker).
RECORD_JS = """() => {
  window.__captionsSeen = [];
  window.addEventListener("callsctl:message", (event) => {
    const msg = event.detail || {};
    if (msg.type === "caption") window.__captionsSeen.push(msg.text);
  });
}"""
SEEN_JS = "() => window.__captionsSeen || []"


def heard_words(person: BrowserParticipant, row: str) -> set[str]:
    """The sentence's words on screen in one caption under `row`, waited for."""
    with contextlib.suppress(Exception):  # a timeout: the caller reports what was shown
        person.page.wait_for_function(
            """([row, words]) => [...document.querySelectorAll(row + ' .caption-text')]
                 .some((n) => n.textContent.split(' ').some((w) => words.includes(w)))""",
            arg=[row, sorted(SENTENCE_WORDS)], timeout=CAPTION_WAIT_S * 1000)
    texts = [*person.page.evaluate(SEEN_JS),
             *person.page.locator(f"{row} .caption-text").all_inner_texts()]
    return max((set(text.split()) & SENTENCE_WORDS for text in texts), key=len, default=set())


@pytest.fixture(scope="module")
def speaking_browser(sentence: Path) -> Iterator[Any]:
    with launched(sync_api, f"--use-file-for-fake-audio-capture={sentence}") as browser:
        yield browser


def test_the_host_turns_captions_on_and_everyone_reads_them(speaking_browser, serve_factory):
    server = serve_factory(env={"CALLSCTL_LIVE_CAPTIONS_ENABLED": "true"})
    with browser_people(server) as people:
        alice, bob = join_all(speaking_browser, server, "web-cc", ["alice", "bob"], people)
        for person in people:
            person.page.evaluate(RECORD_JS)
        alice.unmute()  # everyone joins muted; alice is the one who speaks
        assert alice.page.locator("#captions-toggle").is_visible()
        assert bob.page.locator("#captions-toggle").is_hidden()
        alice.page.click("#captions-toggle", timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_function(
            "document.querySelector('#captions-toggle').textContent === 'Stop captions'",
            timeout=30_000)
        row = f'#captions .caption[data-session-id="{alice.session_id}"]'
        for person in people:
            caption = person.page.locator(row)
            caption.wait_for(state="visible", timeout=40_000)
            assert caption.locator(".caption-name").inner_text().startswith("Alice")
            heard = heard_words(person, row)
            assert heard & SENTENCE_WORDS, (
                f"{person.label} read no caption with any of {sorted(SENTENCE_WORDS)} in "
                f"{CAPTION_WAIT_S} s; captions shown: {person.page.evaluate(SEEN_JS)}")
        # The captions worker is not a participant anyone sees.
        assert bob.page.locator("#participants li").count() == 2
        alice.page.click("#captions-toggle", timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_function(
            "document.querySelector('#captions-toggle').textContent === 'Captions'",
            timeout=30_000)
        for person in people:
            assert not person.page_errors(), person.diagnostics()


def test_no_captions_button_where_the_server_has_no_captions(speaking_browser, server):
    """A host is not offered a button the server would refuse (live_captions_enabled off)."""
    people: list[BrowserParticipant] = []
    try:
        (alice,) = join_all(speaking_browser, server, "no-cc", ["alice"], people)
        assert alice.page.evaluate("window.callsctl.host === window.callsctl.sessionId")
        assert alice.page.locator("#captions-toggle").is_hidden()
    finally:
        for person in people:
            person.close()
