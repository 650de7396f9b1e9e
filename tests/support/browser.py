"""The web client in headless Chromium, as tests drive it.

`BrowserParticipant` is one browser context (its own profile and fake
microphone) on the web client, with its console kept for diagnostics; the
`browser` fixture (module-scoped, registered in conftest.py) is one headless
Chromium per test module. The getStats polls (`wait_for_audio`,
`wait_video_flowing`) and the canvas stand-in for getDisplayMedia are shared by
every browser test.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.chromium import launched

JOIN_TIMEOUT_MS = 15_000
MEDIA_TIMEOUT_MS = 15_000
UI_TIMEOUT_MS = 5_000
AUDIO_TIMEOUT_S = 20.0

# Inbound audio per publishing session: the client records which session each
# remote track belongs to (window.callsctl.remoteTracks, keyed by track id);
# inbound-rtp stats name their track (trackIdentifier) and transceiver (mid).
INBOUND_AUDIO_JS = """
async () => {
  const c = window.callsctl;
  if (!c || !c.pc) return {};
  const tracks = c.remoteTracks;
  const byMid = {};
  for (const t of c.pc.getTransceivers()) {
    const info = t.receiver && t.receiver.track && tracks[t.receiver.track.id];
    if (t.mid !== null && info) byMid[t.mid] = info.sessionId;
  }
  const out = {};
  const stats = await c.pc.getStats();
  stats.forEach((r) => {
    if (r.type !== "inbound-rtp" || r.kind !== "audio") return;
    const info = tracks[r.trackIdentifier];
    const sid = info ? info.sessionId : byMid[r.mid];
    if (!sid) return;
    const o = out[sid] || (out[sid] = {packetsReceived: 0, audioLevel: 0, totalAudioEnergy: 0});
    o.packetsReceived += r.packetsReceived || 0;
    o.audioLevel = Math.max(o.audioLevel, r.audioLevel || 0);
    o.totalAudioEnergy += r.totalAudioEnergy || 0;
  });
  return out;
}
"""


RAW_RTP_JS = """
async () => {
  if (!window.callsctl || !window.callsctl.pc) return null;
  const out = [];
  (await window.callsctl.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp") {
      out.push({type: "in", kind: r.kind, mid: r.mid, ssrc: r.ssrc, track: r.trackIdentifier,
                packets: r.packetsReceived, energy: r.totalAudioEnergy});
    } else if (r.type === "outbound-rtp") {
      out.push({type: "out", kind: r.kind, mid: r.mid, ssrc: r.ssrc, packets: r.packetsSent});
    }
  });
  const transceivers = window.callsctl.pc.getTransceivers().map((t) => ({
    mid: t.mid, direction: t.direction, current: t.currentDirection,
    track: t.receiver.track && t.receiver.track.id}));
  return {rtp: out, transceivers};
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module; skips when playwright is not installed."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with launched(sync_api) as chromium:
        yield chromium


class BrowserParticipant:
    """One browser context on the web client, with its console kept for diagnostics."""

    def __init__(self, browser: Any, label: str, **context_options: Any) -> None:
        self.label = label
        self.context = browser.new_context(**context_options)
        self.context.set_default_timeout(JOIN_TIMEOUT_MS)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))
        self.session_id = ""

    def open(self, url: str) -> None:
        self.page.goto(url, timeout=JOIN_TIMEOUT_MS)

    def join(self, url: str, name: str) -> str:
        self.open(url)
        self.page.fill("#name", name, timeout=UI_TIMEOUT_MS)
        self.page.click("#join", timeout=UI_TIMEOUT_MS)
        self.page.wait_for_function("window.callsctl.state === 'joined'", timeout=JOIN_TIMEOUT_MS)
        self.session_id = self.page.evaluate("window.callsctl.sessionId")
        assert self.session_id, self.diagnostics()
        return self.session_id

    def wait_media_connected(self) -> None:
        self.page.wait_for_function("window.callsctl.media === 'connected'",
                                    timeout=MEDIA_TIMEOUT_MS)

    def unmute(self) -> None:
        """Click the microphone button: the first time it asks for the microphone."""
        assert self.page.evaluate("window.callsctl.muted") is True, self.diagnostics()
        self.page.click("#mute", timeout=UI_TIMEOUT_MS)
        self.page.wait_for_function("window.callsctl.muted === false", timeout=UI_TIMEOUT_MS)
        assert self.page.locator("#mute").get_attribute("aria-pressed") == "false"

    def react(self, emoji: str) -> None:
        self.page.click("#react", timeout=UI_TIMEOUT_MS)
        self.page.click(f"#reaction-buttons [data-emoji='{emoji}']", timeout=UI_TIMEOUT_MS)

    def row(self, session_id: str) -> Any:
        return self.page.locator(f'#participants [data-session-id="{session_id}"]')

    def inbound_audio(self) -> dict[str, dict[str, float]]:
        return self.page.evaluate(INBOUND_AUDIO_JS)

    def page_errors(self) -> list[str]:
        return [line for line in self.console if line.startswith("pageerror")]

    def diagnostics(self) -> str:
        try:
            state = self.page.evaluate(
                "({state: window.callsctl.state, media: window.callsctl.media,"
                " error: window.callsctl.error, participants: window.callsctl.participants,"
                " remoteTracks: window.callsctl.remoteTracks,"
                " log: window.callsctl.log.slice(-40)})")
            rtp = self.page.evaluate(RAW_RTP_JS)
        except Exception as exc:  # the page may be gone
            state, rtp = f"(page state unavailable: {exc})", None
        return (f"--- {self.label} ({self.session_id}) ---\n{state}\nrtp: {rtp}\n"
                + "\n".join(self.console[-20:]))

    def close(self) -> None:
        self.context.close()


def wait_for_audio(listener: BrowserParticipant, publishers: list[str]
                   ) -> dict[str, dict[str, float]]:
    """Poll getStats until audio with energy has arrived from every publisher."""
    deadline = time.monotonic() + AUDIO_TIMEOUT_S
    stats: dict[str, dict[str, float]] = {}
    while time.monotonic() < deadline:
        stats = listener.inbound_audio()
        if all(stats.get(sid, {}).get("packetsReceived", 0) > 0
               and (stats[sid]["audioLevel"] > 0 or stats[sid]["totalAudioEnergy"] > 0)
               for sid in publishers):
            return stats
        listener.page.wait_for_timeout(250)
    raise AssertionError(f"{listener.label} did not hear {publishers} within {AUDIO_TIMEOUT_S} s;"
                         f" inbound audio by session: {stats}")


VIDEO_TIMEOUT_S = 20.0
FRAMES_MORE = 10  # frames decoded after the first ones, to show that video keeps flowing


# Inbound video per "<session>:<source>" (source: camera or screen).
INBOUND_VIDEO_JS = """
async () => {
  const c = window.callsctl;
  if (!c || !c.pc) return {};
  const tracks = c.remoteTracks;
  const out = {};
  (await c.pc.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp" || r.kind !== "video") return;
    const info = tracks[r.trackIdentifier];
    if (!info) return;
    const key = `${info.sessionId}:${info.source}`;
    const o = out[key] || (out[key] = {framesDecoded: 0, packetsReceived: 0, width: 0});
    o.framesDecoded += r.framesDecoded || 0;
    o.packetsReceived += r.packetsReceived || 0;
    o.width = Math.max(o.width, r.frameWidth || 0);
  });
  return out;
}
"""


# getDisplayMedia answered by an animated canvas (10 fps); tracks are kept so the
# test can check that a refused share was stopped.
CANVAS_SCREEN_JS = """
(() => {
  window.__screenTracks = [];
  if (!navigator.mediaDevices) return;
  navigator.mediaDevices.getDisplayMedia = async () => {
    const canvas = document.createElement("canvas");
    canvas.width = 640;
    canvas.height = 360;
    const ctx = canvas.getContext("2d");
    const stream = canvas.captureStream(10);
    const track = stream.getVideoTracks()[0];
    let n = 0;
    const draw = () => {
      if (track.readyState === "ended") { clearInterval(timer); return; }
      n += 1;
      ctx.fillStyle = `hsl(${(n * 9) % 360} 70% 45%)`;
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "#fff";
      ctx.font = "48px sans-serif";
      ctx.fillText(`screen ${n}`, 40, 120);
    };
    const timer = setInterval(draw, 100);
    draw();
    window.__screenTracks.push(track);
    return stream;
  };
})();
"""


def inbound_video(person: BrowserParticipant) -> dict[str, dict[str, int]]:
    return person.page.evaluate(INBOUND_VIDEO_JS)


def wait_video_flowing(viewer: BrowserParticipant, key: str) -> dict[str, int]:
    """framesDecoded for `key` ("<session>:<source>") above zero, then growing."""
    deadline = time.monotonic() + VIDEO_TIMEOUT_S
    first: int | None = None
    stats: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        # A renegotiation the browser refused never recovers: say so at once.
        error = viewer.page.evaluate("window.callsctl.error")
        if error and error.get("code") == "negotiation_failed":
            raise AssertionError(f"{viewer.label}: {error['message']} (waiting for {key})")
        stats = inbound_video(viewer)
        frames = stats.get(key, {}).get("framesDecoded", 0)
        if first is None and frames > 0:
            first = frames
        elif first is not None and frames >= first + FRAMES_MORE:
            return stats[key]
        viewer.page.wait_for_timeout(250)
    raise AssertionError(f"{viewer.label}: no growing video for {key} within {VIDEO_TIMEOUT_S} s"
                         f" (first frames: {first}); inbound video: {stats}")


def failure(people: list[BrowserParticipant], exc: Exception, server: Any) -> AssertionError:
    details = "\n".join(p.diagnostics() for p in people)
    return AssertionError(f"{exc}\n{details}\n--- server log ---\n{server.log()[-4000:]}")


@contextmanager
def browser_people(server: Any) -> Iterator[list[BrowserParticipant]]:
    """The pages a test opens: every one closed at the end, and a failure carries
    each page's console and the server's log, so a red browser test says why."""
    people: list[BrowserParticipant] = []
    try:
        yield people
    except Exception as exc:
        raise failure(people, exc, server) from exc
    finally:
        for person in people:
            person.close()


def join_all(chromium: Any, server: Any, call: str, labels: list[str],
             people: list[BrowserParticipant], init_script: str | None = None
             ) -> list[BrowserParticipant]:
    """Join one page per label; each goes into `people` at once, so the caller closes it."""
    joined = []
    for label in labels:
        person = BrowserParticipant(chromium, label)
        people.append(person)
        joined.append(person)
        if init_script:
            person.page.add_init_script(init_script)
        person.join(server.join_url(call, label), label.title())
    for person in joined:
        person.wait_media_connected()
    return joined


@pytest.fixture
def shots(tmp_path: Path) -> Any:
    """shots(person, name): a PNG of the page, kept in CALLSCTL_SCREENSHOTS if set."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    keep = os.environ.get("CALLSCTL_SCREENSHOTS")

    def take(person: BrowserParticipant, name: str) -> Path:
        person.page.wait_for_timeout(400)  # let the last layout and video frames paint
        path = folder / f"{name}.png"
        person.page.screenshot(path=str(path))
        assert path.stat().st_size > 5000, path  # a real picture, not a blank page
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return path

    return take
