"""Recording a call of real browsers: the host's Record button, everyone's indicator,
and a recording that really holds the host's speech, camera and screen share.

Chromium's fake microphone plays a sentence spoken by espeak-ng
(--use-file-for-fake-audio-capture); the camera is Chromium's fake capture
device and the screen share a canvas (as in test_browser_video_e2e).
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import media_checks as media
from tests.support.admin import admin_key
from tests.support.browser import (
    CANVAS_SCREEN_JS,
    UI_TIMEOUT_MS,
    browser_people,
    join_all,
)
from tests.support.chromium import CHROMIUM, launched
from tests.support.helpers import have

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.skipif(not (have("espeak-ng") and have("ffmpeg")),
                       reason="needs espeak-ng and ffmpeg (Debian packages)"),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

SENTENCE = "This call is recorded. The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), SENTENCE], check=True,
                   timeout=30, capture_output=True)
    return wav


@pytest.fixture(scope="module")
def speaking_browser(speech: Path) -> Iterator[Any]:
    with launched(sync_api, f"--use-file-for-fake-audio-capture={speech}") as browser:
        yield browser


def rms(samples: Any, start_s: float, end_s: float) -> float:
    window = samples[int(start_s * media.PCM_RATE): int(end_s * media.PCM_RATE)]
    return math.sqrt(sum(s * s for s in window) / len(window)) if window else 0.0


def test_the_host_records_from_the_web_client(speaking_browser, server, speech) -> None:
    with browser_people(server) as people:
        alice, bob = join_all(speaking_browser, server, "web-rec", ["alice", "bob"], people,
                              init_script=CANVAS_SCREEN_JS)
        alice.unmute()  # everyone joins muted: both publish their microphones
        bob.unmute()
        # Only the host has the button; nobody sees the indicator yet.
        assert alice.page.locator("#record").is_visible()
        assert bob.page.locator("#record").is_hidden()
        assert bob.page.locator("#recording").is_hidden()
        alice.page.click("#camera", timeout=UI_TIMEOUT_MS)
        alice.page.click("#record", timeout=UI_TIMEOUT_MS)
        for person in people:
            person.page.locator("#recording").wait_for(state="visible", timeout=20_000)
        assert alice.page.locator("#record").inner_text() == "Stop recording"
        # The recorder is not a participant anyone sees.
        assert bob.page.locator("#participants li").count() == 2
        alice.page.wait_for_timeout(2000)
        alice.page.click("#screen", timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_function("window.callsctl.screenSharing === true",
                                     timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_timeout(5000)
        alice.page.click("#record", timeout=UI_TIMEOUT_MS)
        for person in people:
            person.page.locator("#recording").wait_for(state="hidden", timeout=20_000)
        for person in people:
            assert not person.page_errors(), person.diagnostics()

    headers = {"Authorization": f"Bearer {admin_key(server)}"}
    job: dict = {}
    for _ in range(240):
        jobs = httpx.get(f"{server.api_url}/api/v1/jobs", headers=headers, timeout=10).json()
        job = jobs["jobs"][0]
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert job["state"] == "done", job
    out = job["output_data"]
    directory = Path(out["directory"])
    kinds = {(t["name"], t["kind"]): t for t in out["tracks"]}
    assert {("Alice", "audio"), ("Alice", "video"), ("Alice", "screen"),
            ("Bob", "audio")} <= set(kinds), kinds
    screen = media.probe(directory / kinds[("Alice", "screen")]["file"])["streams"][0]
    assert (screen["codec_name"], screen["width"], screen["height"]) == ("vp8", 640, 360)
    camera = media.probe(directory / kinds[("Alice", "video")]["file"])["streams"][0]
    assert camera["codec_name"] == "vp8" and camera["width"] > 0

    # Alice's file holds her speech: loud stretches and pauses, like the source.
    track = kinds[("Alice", "audio")]
    samples = media.pcm(directory / track["file"])
    source = media.pcm(speech)
    loud = rms(source, 0, len(source) / media.PCM_RATE)
    windows = [rms(samples, t / 4, t / 4 + 0.25) for t in range(int(len(samples) / 2000))]
    speaking = [w for w in windows if w > loud / 4]
    assert len(speaking) > len(windows) / 4, (loud, windows)
    assert len(speaking) < len(windows), "no pauses: not speech"

    mp4 = directory / "recording.mp4"
    assert media.codecs(mp4) == {"video": "h264", "audio": "aac"}
    assert abs(media.duration(mp4) - out["duration_s"]) < 1.0
    mixed = media.pcm(mp4)
    start = track["start_s"]
    assert rms(mixed, start, start + track["duration_s"]) > loud / 8
    # While the screen was shared, the picture is the canvas (saturated colour), full frame.
    shared_at = kinds[("Alice", "screen")]["start_s"] + 2.0
    r, g, b = media.frame_mean(mp4, shared_at, "iw/2:ih/2:iw/4:ih/4")
    assert max(r, g, b) - min(r, g, b) > 40, (r, g, b)
