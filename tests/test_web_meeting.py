"""The web client as a meeting app: layout at two sizes, screenshots, many participants.

Real Chromium (fake camera and microphone; a canvas stands in for the shared
screen) against a real `callsctl serve`. Each view is photographed at desktop
(1280x800) and phone (390x844) size and its geometry checked the way a user
would notice a broken layout: every tile visible inside the stage, no two
tiles overlapping, the shared screen the largest thing on the page, the
controls on screen, no sideways scrolling on a phone. Set
CALLSCTL_SCREENSHOTS=DIR to keep the PNGs (docs/screenshots/ is made so).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.browser import (
    CANVAS_SCREEN_JS,
    UI_TIMEOUT_MS,
    BrowserParticipant,
    browser_people,
    wait_for_audio,
    wait_video_flowing,
)
from tests.support.chromium import CHROMIUM, CHROMIUM_FLAGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]

DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
MIN_TILE_WIDTH = {"desktop": 180, "phone": 150}  # app.js MIN_TILE_WIDTH(_NARROW)

# Geometry of what is on screen, in CSS pixels.
LAYOUT_JS = """
() => {
  const rect = (n) => { const r = n.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const shown = (n) => { const r = n.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(n).display !== 'none'; };
  const videos = document.querySelector('#videos');
  const screen = document.querySelector('#screen-view video');
  return {
    viewport: {w: innerWidth, h: innerHeight},
    scrollWidth: document.documentElement.scrollWidth,
    stage: rect(document.querySelector('#stage')),
    strip: {...rect(videos), scrollW: videos.scrollWidth, scrollH: videos.scrollHeight,
            clientW: videos.clientWidth, clientH: videos.clientHeight},
    tiles: [...document.querySelectorAll('#videos .tile')].filter(shown).map((n) => ({
      sid: n.dataset.sessionId, speaking: n.dataset.speaking, video: n.dataset.video,
      ...rect(n)})),
    screen: screen && shown(screen) ? rect(screen) : null,
    controls: rect(document.querySelector('#controls')),
    buttons: [...document.querySelectorAll(
      '#controls > .group > button, #controls .popover-anchor > button')]
      .filter(shown).map((n) => ({id: n.id, ...rect(n)})),
    mode: window.callsctl.layout,
  };
}
"""


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["x"] < b["x"] + b["w"] - 1 and b["x"] < a["x"] + a["w"] - 1
            and a["y"] < b["y"] + b["h"] - 1 and b["y"] < a["y"] + a["h"] - 1)


def inside(a: dict[str, float], box: dict[str, float]) -> bool:
    return (a["x"] >= box["x"] - 1 and a["y"] >= box["y"] - 1
            and a["x"] + a["w"] <= box["x"] + box["w"] + 1
            and a["y"] + a["h"] <= box["y"] + box["h"] + 1)


def layout(person: BrowserParticipant) -> dict[str, Any]:
    return person.page.evaluate(LAYOUT_JS)


def check_frame(geo: dict[str, Any]) -> None:
    """What holds in every view: controls on screen, no sideways scrolling."""
    view = {"x": 0, "y": 0, "w": geo["viewport"]["w"], "h": geo["viewport"]["h"]}
    assert geo["scrollWidth"] <= geo["viewport"]["w"], geo
    assert inside(geo["controls"], view), geo["controls"]
    assert not overlap(geo["controls"], geo["stage"]), (geo["controls"], geo["stage"])
    for button in geo["buttons"]:
        assert inside(button, view), button
    for a, b in zip(geo["buttons"], geo["buttons"][1:], strict=False):
        assert not overlap(a, b), (a, b)


def check_grid(geo: dict[str, Any], count: int, size: str) -> None:
    """A grid: `count` tiles visible, inside the stage, apart, all one size, not tiny."""
    check_frame(geo)
    tiles = geo["tiles"]
    assert geo["mode"]["mode"] == "grid", geo["mode"]
    assert len(tiles) == count, (len(tiles), geo["mode"])
    for tile in tiles:
        assert inside(tile, geo["stage"]), (tile, geo["stage"])
        assert tile["w"] >= min(MIN_TILE_WIDTH[size], geo["stage"]["w"] - 16), tile
    for i, a in enumerate(tiles):
        for b in tiles[i + 1:]:
            assert not overlap(a, b), (a, b)
    widths = {round(t["w"]) for t in tiles}
    assert max(widths) - min(widths) <= 1, widths


def check_screen(geo: dict[str, Any]) -> None:
    """A screen share: the screen largest, the cameras in a strip beside or below it."""
    check_frame(geo)
    assert geo["mode"]["mode"] == "screen", geo["mode"]
    screen = geo["screen"]
    assert screen is not None and inside(screen, geo["stage"]), (screen, geo["stage"])
    strip = geo["strip"]
    seen = [t for t in geo["tiles"] if overlap(t, strip)]
    assert seen, geo["tiles"]
    for tile in seen:
        assert screen["w"] * screen["h"] > 2 * tile["w"] * tile["h"], (screen, tile)
        assert not overlap(tile, screen), (tile, screen)
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            assert not overlap(a, b), (a, b)


def wait_tiles(person: BrowserParticipant, count: int) -> None:
    person.page.wait_for_function(f"window.callsctl.layout.tiles === {count}",
                                  timeout=UI_TIMEOUT_MS)


def wait_camera_tile(viewer: BrowserParticipant, sid: str) -> None:
    viewer.page.wait_for_function(
        f"(() => {{ const v = window.callsctl.videoElement({sid!r});"
        " return v && !v.paused && v.videoWidth > 0; })()", timeout=20_000)


def test_meeting_views_at_desktop_and_phone_size(browser, server, shots) -> None:  # noqa: F811
    with browser_people(server) as people:
        alice = BrowserParticipant(browser, "alice", **DESKTOP)
        bob = BrowserParticipant(browser, "bob", **PHONE)
        carol = BrowserParticipant(browser, "carol", **DESKTOP)
        people += [alice, bob, carol]
        carol.page.add_init_script(CANVAS_SCREEN_JS)

        # A link minted for no one in particular asks for a name; it is required.
        alice.open(server.join_url("standup", "guest"))
        assert alice.page.input_value("#name") == ""
        alice.page.click("#join", timeout=UI_TIMEOUT_MS)
        assert alice.page.evaluate("window.callsctl.state") == "ready"
        assert alice.page.evaluate("document.querySelector('#name').validity.valueMissing")
        shots(alice, "lobby-desktop")
        bob.open(server.join_url("standup", "bob"))
        assert bob.page.input_value("#name") == "bob"  # a named link starts filled in
        shots(bob, "lobby-phone")
        for person, name in ((alice, "Alice Example"), (bob, "Bob Example"),
                             (carol, "Carol Example")):
            if person is not alice:
                person.open(server.join_url("standup", person.label))
            person.page.fill("#name", name, timeout=UI_TIMEOUT_MS)
            person.page.click("#join", timeout=UI_TIMEOUT_MS)
            person.page.wait_for_function("window.callsctl.state === 'joined'",
                                          timeout=UI_TIMEOUT_MS * 3)
            person.session_id = person.page.evaluate("window.callsctl.sessionId")
        for person in people:
            person.wait_media_connected()
            wait_tiles(person, 3)
        # Alone on a phone the list starts closed; on a desktop open.
        assert bob.page.locator("#side").is_hidden()
        assert alice.page.locator("#side").is_visible()

        # Cameras on for alice and bob; carol shows as her initials.
        for person in (alice, bob):
            person.page.click("#camera", timeout=UI_TIMEOUT_MS)
        for viewer in people:
            for other in (alice, bob):
                wait_camera_tile(viewer, other.session_id)
        tile = alice.page.locator(f'#videos .tile[data-session-id="{carol.session_id}"]')
        assert tile.locator(".avatar").inner_text() == "CE"
        assert tile.locator(".tile-state.muted").count() == 1  # everyone joins muted

        # Alice speaks: her tile lights up on the others' pages.
        alice.unmute()
        for viewer in (bob, carol):
            viewer.page.locator(f'#videos .tile[data-session-id="{alice.session_id}"]'
                                '[data-speaking="true"]').wait_for(timeout=20_000)
            assert viewer.page.locator(
                f'#videos .tile[data-session-id="{alice.session_id}"] .tile-state.muted'
            ).count() == 0
        check_grid(layout(alice), 3, "desktop")
        check_grid(layout(bob), 3, "phone")
        shots(alice, "grid-desktop")
        shots(bob, "grid-phone")

        # Carol shares her screen: large on the others' pages, a preview on hers.
        carol.page.click("#screen", timeout=UI_TIMEOUT_MS)
        carol.page.wait_for_function("window.callsctl.screenSharing === true",
                                     timeout=UI_TIMEOUT_MS)
        for viewer in (alice, bob):
            viewer.page.wait_for_function(
                "(() => { const v = window.callsctl.screenElement();"
                " return v && !v.paused && v.videoWidth === 640; })()", timeout=20_000)
        carol.page.wait_for_function(
            "(() => { const v = window.callsctl.screenElement();"
            " return v && v.dataset.self === 'true' && v.videoWidth > 0; })()",
            timeout=UI_TIMEOUT_MS)
        for person in people:
            check_screen(layout(person))
        shots(alice, "screen-desktop")
        shots(bob, "screen-phone")
        shots(carol, "screen-presenter-desktop")

        # The host's menu for a participant, and the participant list on a phone.
        alice.row(bob.session_id).locator("button.more").click(timeout=UI_TIMEOUT_MS)
        menu = alice.page.locator("#host-menu")
        menu.wait_for(timeout=UI_TIMEOUT_MS)
        box = menu.bounding_box()
        assert box and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= 1280 \
            and box["y"] + box["height"] <= 800, box
        shots(alice, "host-menu-desktop")
        alice.page.keyboard.press("Escape")
        menu.wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
        bob.page.click("#participants-toggle", timeout=UI_TIMEOUT_MS)
        bob.page.locator("#side").wait_for(timeout=UI_TIMEOUT_MS)
        side = bob.page.locator("#side").bounding_box()
        assert side and side["width"] >= 380, side  # the whole phone width
        for other in people:
            assert bob.row(other.session_id).is_visible()
        assert bob.row(bob.session_id).locator("button.more").count() == 0  # not the host
        shots(bob, "participants-phone")
        for person in people:
            assert not person.page_errors(), person.diagnostics()


class Crowd:
    """Participants on signaling only (no media), each on its own WebSocket.

    Enough for the page to show a tile per person; cheap enough for dozens.
    Runs its own event loop in a thread, as the browser tests are synchronous.
    """

    def __init__(self, server: Any, call: str, count: int) -> None:
        self.server = server
        self.call = call
        self.count = count
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sockets: list[Any] = []
        self.session: aiohttp.ClientSession | None = None

    async def _join_all(self) -> None:
        self.session = aiohttp.ClientSession()
        for i in range(self.count):
            ws = await self.session.ws_connect(
                f"{self.server.ws_url}?token={self.server.token(self.call, f'crowd{i:02d}')}")
            await ws.send_str(json.dumps({"type": "join", "call": self.call,
                                          "name": f"Guest {i + 1:02d}"}))
            while True:
                reply = json.loads((await ws.receive(timeout=10)).data)
                if reply["type"] == "joined":
                    break
                assert reply["type"] != "error", reply
            self.sockets.append(ws)
            self.loop.create_task(self._drain(ws))

    @staticmethod
    async def _drain(ws: Any) -> None:
        async for _frame in ws:
            pass

    async def _close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        if self.session is not None:
            await self.session.close()

    def __enter__(self) -> Crowd:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._join_all(), self.loop).result(60)
        return self

    def __exit__(self, *_exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def crowd() -> Iterator[Any]:
    crowds: list[Crowd] = []

    def make(server: Any, call: str, count: int) -> Crowd:
        group = Crowd(server, call, count).__enter__()
        crowds.append(group)
        return group

    yield make
    for group in crowds:
        group.__exit__(None, None, None)


def test_fifty_participants_page_on_desktop_and_phone(browser, serve_factory,  # noqa: F811
                                                     shots, crowd) -> None:
    # The crowd never connects media: give it longer than the test before a server
    # that removes such sessions (media_connect_timeout) would.
    server = serve_factory(env={"CALLSCTL_MEDIA_CONNECT_TIMEOUT": "300"})
    with browser_people(server) as people:
        host = BrowserParticipant(browser, "host", **DESKTOP)
        people.append(host)
        host.page.add_init_script(CANVAS_SCREEN_JS)
        host.join(server.join_url("allhands", "host"), "Host")
        host.wait_media_connected()
        crowd(server, "allhands", 48)
        speaker = BrowserParticipant(browser, "speaker", **DESKTOP)
        people.append(speaker)
        speaker.join(server.join_url("allhands", "speaker"), "Speaker")
        speaker.wait_media_connected()
        wait_tiles(host, 50)
        host.page.locator("#participant-count").filter(has_text="50").wait_for(
            timeout=UI_TIMEOUT_MS)

        # Desktop: pages of tiles no smaller than the minimum, all of them reachable.
        geo = layout(host)
        mode = geo["mode"]
        assert mode["pages"] >= 2 and mode["perPage"] * mode["pages"] >= 50, mode
        check_grid(geo, mode["perPage"], "desktop")
        first_page = {t["sid"] for t in geo["tiles"]}
        assert host.session_id in first_page  # oneself on the first page
        assert speaker.session_id not in first_page  # the last to join
        # Someone on another page speaks: their tile comes to the first page, ringed.
        speaker.unmute()
        host.page.locator(f'#videos .tile[data-session-id="{speaker.session_id}"]'
                          '[data-speaking="true"]').wait_for(timeout=20_000)
        geo = layout(host)
        check_grid(geo, mode["perPage"], "desktop")
        assert speaker.session_id in {t["sid"] for t in geo["tiles"]}
        first_page = {t["sid"] for t in geo["tiles"]}
        shots(host, "fifty-desktop")
        seen = set(first_page)
        for page in range(1, mode["pages"]):
            host.page.click("#page-next", timeout=UI_TIMEOUT_MS)
            host.page.wait_for_function(f"window.callsctl.layout.page === {page}",
                                        timeout=UI_TIMEOUT_MS)
            geo = layout(host)
            last = page == mode["pages"] - 1
            check_grid(geo, 50 - mode["perPage"] * page if last else mode["perPage"],
                       "desktop")
            seen |= {t["sid"] for t in geo["tiles"]}
        assert len(seen) == 50
        assert host.page.locator("#page-next").is_disabled()
        host.page.click("#page-prev", timeout=UI_TIMEOUT_MS)

        # Phone width: the list closes, the tiles page again, nothing spills sideways.
        host.page.set_viewport_size(PHONE["viewport"])
        host.page.locator("#side").wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
        host.page.wait_for_timeout(300)
        geo = layout(host)
        assert geo["mode"]["pages"] >= 2, geo["mode"]
        check_grid(geo, geo["mode"]["perPage"], "phone")
        shots(host, "fifty-phone")

        # A screen share with 50: the screen large, the 50 tiles in a scrolling strip.
        host.page.set_viewport_size(DESKTOP["viewport"])
        host.page.click("#screen", timeout=UI_TIMEOUT_MS)
        host.page.wait_for_function("window.callsctl.screenSharing === true",
                                    timeout=UI_TIMEOUT_MS)
        host.page.wait_for_function("window.callsctl.layout.mode === 'screen'",
                                    timeout=UI_TIMEOUT_MS)
        host.page.wait_for_timeout(300)
        geo = layout(host)
        check_screen(geo)
        assert geo["strip"]["scrollH"] > geo["strip"]["clientH"], geo["strip"]  # it scrolls
        shots(host, "fifty-screen-desktop")
        assert not host.page_errors(), host.diagnostics()


def options(person: BrowserParticipant, select: str) -> list[dict[str, str]]:
    return person.page.eval_on_selector_all(
        f"{select} option", "(os) => os.map((o) => ({value: o.value, label: o.textContent}))")


def test_device_pickers_switch_microphone_camera_and_speaker(browser, server,  # noqa: F811
                                                            shots) -> None:
    # Alice's browser has three fake cameras (the shared one has a single camera).
    # Chromium's second fake camera delivers Y16 depth frames, which no encoder
    # sends; the third (MJPEG) stands in for a real second camera.
    more_cameras = browser.browser_type.launch(
        executable_path=CHROMIUM, headless=True, ignore_default_args=["--mute-audio"],
        args=[*(f for f in CHROMIUM_FLAGS if not f.startswith("--use-fake-device")),
              "--use-fake-device-for-media-stream=device-count=3"])
    try:
        with browser_people(server) as people:
            alice = BrowserParticipant(more_cameras, "alice", **DESKTOP)
            bob = BrowserParticipant(browser, "bob", **DESKTOP)
            people += [alice, bob]
            alice.join(server.join_url("gear", "alice"), "Alice")
            bob.join(server.join_url("gear", "bob"), "Bob")
            for person in people:
                person.wait_media_connected()
            alice.unmute()
            alice.page.click("#camera", timeout=UI_TIMEOUT_MS)
            wait_camera_tile(bob, alice.session_id)
            wait_for_audio(bob, [alice.session_id])

            alice.page.click("#settings", timeout=UI_TIMEOUT_MS)
            alice.page.locator("#settings-dialog").wait_for(timeout=UI_TIMEOUT_MS)
            mics = options(alice, "#mic-select")
            assert len(mics) >= 2 and all(m["label"] for m in mics), mics
            current = alice.page.evaluate("window.callsctl.microphone.deviceId")
            assert alice.page.input_value("#mic-select") == current
            other = next(m for m in mics if m["value"] != current)
            alice.page.select_option("#mic-select", other["value"])
            alice.page.wait_for_function(
                f"window.callsctl.microphone.deviceId === {other['value']!r}",
                timeout=UI_TIMEOUT_MS)
            # The new microphone is what bob hears now: its packets keep arriving.
            heard = bob.inbound_audio()[alice.session_id]["packetsReceived"]
            for _ in range(40):
                if bob.inbound_audio()[alice.session_id]["packetsReceived"] > heard + 50:
                    break
                bob.page.wait_for_timeout(100)
            assert bob.inbound_audio()[alice.session_id]["packetsReceived"] > heard + 50
            assert alice.page.evaluate(
                "window.callsctl.pc.getSenders().find((s) => s.track && s.track.kind === 'audio')"
                ".track.getSettings().deviceId") == other["value"]
            assert not alice.page.evaluate("window.callsctl.error"), alice.diagnostics()

            # The other camera: the page sends it instead (no renegotiation), bob sees it.
            cams = options(alice, "#cam-select")
            assert len(cams) == 3 and all(c["label"] for c in cams), cams
            camera = alice.page.evaluate("window.callsctl.videos")[alice.session_id]
            assert alice.page.input_value("#cam-select") != cams[2]["value"]
            other = cams[2]
            alice.page.select_option("#cam-select", other["value"])
            alice.page.wait_for_function(
                f"(() => {{ const v = window.callsctl.videos[{alice.session_id!r}];"
                f" return v && v.trackId !== {camera['trackId']!r} && v.width > 0; }})()",
                timeout=UI_TIMEOUT_MS)
            assert alice.page.evaluate(
                "window.callsctl.pc.getSenders().find((s) => s.track && s.track.kind === 'video')"
                ".track.getSettings().deviceId") == other["value"]
            wait_video_flowing(bob, f"{alice.session_id}:camera")
            speakers = options(alice, "#speaker-select")
            if alice.page.locator("#speaker-select").is_visible() and len(speakers) > 1:
                choice = speakers[-1]["value"]
                alice.page.select_option("#speaker-select", choice)
                alice.page.wait_for_function(
                    f"[...document.querySelectorAll('#media audio')]"
                    f".every((a) => a.sinkId === {choice!r})", timeout=UI_TIMEOUT_MS)
            shots(alice, "devices-desktop")
            alice.page.click("#settings-close", timeout=UI_TIMEOUT_MS)
            assert not alice.page_errors(), alice.diagnostics()
    finally:
        more_cameras.close()
