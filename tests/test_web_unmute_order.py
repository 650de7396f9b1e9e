"""The bundled web client in Mattermost's order: everyone joins muted, unmutes in turn.

The web client publishes as Mattermost's RTCPeer does (the first offer carries
only the `calls-dc` data channel; the microphone is added with addTrack on the
first unmute; mute is replaceTrack(null)), so the same scenarios as
tests/test_mm_client_interop.py run here through its own buttons: every
participant receives packets from every unmuted speaker and sees user_voice_on
for each; a muted one stops being forwarded; a late joiner; camera after
unmute; a screen share started and stopped twice; someone leaving.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.support.browser import CANVAS_SCREEN_JS, UI_TIMEOUT_MS, BrowserParticipant
from tests.support.callchecks import CallChecks
from tests.support.chromium import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]

CALL = "web-order"

# Packets received per "<session id>/<audio|video|screen>", from getStats and
# the client's own record of which session each remote track belongs to.
PACKETS_JS = """
async () => {
  const c = window.callsctl;
  if (!c || !c.pc) return {};
  const tracks = c.remoteTracks;
  const out = {};
  (await c.pc.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    const info = tracks[r.trackIdentifier];
    if (!info) return;
    const screen = (info.streamId || "").startsWith("screen-");
    const key = `${info.sessionId}/${screen ? "screen" : r.kind}`;
    out[key] = (out[key] || 0) + (r.packetsReceived || 0);
  });
  return out;
}
"""

# Every server event the page receives, kept for the test (the client's socket).
RECORD_EVENTS_JS = """
() => {
  window.__events = [];
  window.callsctl.ws.addEventListener("message", (m) => {
    try { window.__events.push(JSON.parse(m.data)); } catch (e) { /* not JSON */ }
  });
}
"""


class WebPerson(BrowserParticipant):
    """A web-client participant with what CallChecks asks of one."""

    def enter(self, server: Any) -> WebPerson:
        self.page.add_init_script(CANVAS_SCREEN_JS)
        self.join(server.join_url(CALL, self.label), self.label.title())
        self.page.evaluate(RECORD_EVENTS_JS)
        self.wait_media_connected()
        return self

    def inbound(self) -> dict[str, int]:
        return self.page.evaluate(PACKETS_JS)

    def events(self) -> list[dict[str, Any]]:
        return self.page.evaluate("window.__events")

    def click(self, button: str) -> None:
        self.page.click(button, timeout=UI_TIMEOUT_MS)


def test_four_join_muted_unmute_in_turn_mute_late_joiner_leave(browser, server):  # noqa: F811
    people: list[WebPerson] = []
    checks = CallChecks(people, server.log)
    try:
        for name in ("ann", "bob", "cat", "dan"):
            people.append(WebPerson(browser, name).enter(server))
        for count, speaker in enumerate(list(people), start=1):
            speaker.unmute()
            checks.wait_voice_on(speaker)
            checks.wait_flowing({p: ["audio"] for p in people[:count]})

        ann, bob = people[0], people[1]
        ann.click("#mute")  # replaceTrack(null)
        checks.wait_voice_off(ann)
        checks.assert_silent(ann)
        checks.wait_flowing({p: ["audio"] for p in people[1:]})
        ann.click("#mute")
        checks.wait_flowing({p: ["audio"] for p in people})

        eve = WebPerson(browser, "eve").enter(server)
        people.append(eve)
        checks.wait_flowing({p: ["audio"] for p in people[:4]})
        eve.unmute()
        checks.wait_voice_on(eve)
        checks.wait_flowing({p: ["audio"] for p in people})

        bob.click("#leave")
        people.remove(bob)
        bob.close()
        checks.wait_flowing({p: ["audio"] for p in people})
    finally:
        for person in people:
            person.close()


def test_camera_after_unmute_and_screen_share_twice(browser, server):  # noqa: F811
    people: list[WebPerson] = []
    checks = CallChecks(people, server.log)
    try:
        ann = WebPerson(browser, "ann").enter(server)
        bob = WebPerson(browser, "bob").enter(server)
        people += [ann, bob]
        ann.unmute()
        bob.unmute()
        checks.wait_voice_on(ann)
        checks.wait_voice_on(bob)
        checks.wait_flowing({ann: ["audio"], bob: ["audio"]})

        bob.click("#camera")
        checks.wait_flowing({ann: ["audio"], bob: ["audio", "video"]})

        for _ in range(2):
            ann.click("#screen")
            checks.wait_flowing({ann: ["audio", "screen"], bob: ["audio", "video"]})
            ann.click("#screen")
            checks.assert_silent(ann, "screen")
            checks.wait_flowing({ann: ["audio"], bob: ["audio", "video"]})
    finally:
        for person in people:
            person.close()
