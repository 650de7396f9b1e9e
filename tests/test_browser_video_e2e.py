"""End to end: camera video and screen sharing in the web client, real Chromium, real SFU.

Chromium's fake capture device gives the camera frames. The screen share comes
from a canvas (`canvas.captureStream(10)`) that stands in for
`getDisplayMedia`, so the client's own screen-share code runs unchanged. That
video was decoded is checked with `getStats()`: inbound-rtp `framesDecoded`
per publishing session and source (the client maps each remote track to a
session and to mic/camera/screen from the stream id the SFU sets).
"""

from __future__ import annotations

import os

import pytest

from tests.support.browser import (
    CANVAS_SCREEN_JS,
    UI_TIMEOUT_MS,
    browser_people,
    inbound_video,
    join_all,
    wait_video_flowing,
)
from tests.support.chromium import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]


def test_cameras_flow_both_ways(browser, server) -> None:  # noqa: F811
    with browser_people(server) as people:
        alice, bob = join_all(browser, server, "video-call", ["alice", "bob"], people)
        for person in people:
            person.page.click("#camera", timeout=UI_TIMEOUT_MS)
        for person in people:
            person.page.wait_for_function("window.callsctl.camera === true",
                                          timeout=UI_TIMEOUT_MS)
            assert person.page.locator("#camera").get_attribute("aria-pressed") == "true"

        for viewer, other in ((alice, bob), (bob, alice)):
            # user_video_on reached the other page: the list shows the camera...
            viewer.page.locator(f'#participants [data-session-id="{other.session_id}"]'
                                '[data-video="true"]').wait_for(timeout=UI_TIMEOUT_MS)
            assert any("← user_video_on" in line and other.session_id in line
                       for line in viewer.page.evaluate("window.callsctl.log"))
            # ...the other's camera is decoded, and shown in its tile.
            stats = wait_video_flowing(viewer, f"{other.session_id}:camera")
            assert stats["width"] > 0, stats
            tile = viewer.page.locator(f'#videos video[data-session-id="{other.session_id}"]')
            tile.wait_for(timeout=UI_TIMEOUT_MS)
            viewer.page.wait_for_function(
                f"(() => {{ const v = window.callsctl.videoElement({other.session_id!r});"
                " return v && !v.paused && v.videoWidth > 0; })()", timeout=UI_TIMEOUT_MS)
            assert tile.evaluate("(v) => v.muted && v.autoplay && v.playsInline")
            # Nobody is sharing a screen here.
            assert viewer.page.locator("#screen-view").is_hidden()

        # A late joiner learns of both cameras from `joined` and gets both videos.
        (carol,) = join_all(browser, server, "video-call", ["carol"], people)
        for other in (alice, bob):
            assert carol.row(other.session_id).get_attribute("data-video") == "true"
            wait_video_flowing(carol, f"{other.session_id}:camera")
            carol.page.locator(f'#videos video[data-session-id="{other.session_id}"]').wait_for(
                timeout=UI_TIMEOUT_MS)
        carol.close()
        people.remove(carol)

        # Camera off on bob: alice's tile for him goes, her own stays.
        bob.page.click("#camera", timeout=UI_TIMEOUT_MS)
        assert bob.page.evaluate("window.callsctl.camera") is False
        alice.page.locator(f'#videos video[data-session-id="{bob.session_id}"]').wait_for(
            state="detached", timeout=UI_TIMEOUT_MS)
        assert alice.row(bob.session_id).get_attribute("data-video") == "false"
        assert alice.page.locator(
            f'#videos video[data-session-id="{alice.session_id}"]').count() == 1
        for person in people:
            assert not person.page_errors(), person.diagnostics()


def test_screen_share_one_at_a_time(browser, server) -> None:  # noqa: F811
    with browser_people(server) as people:
        alice, bob, carol = join_all(browser, server, "screen-call", ["alice", "bob", "carol"],
                                     people, init_script=CANVAS_SCREEN_JS)
        alice.page.click("#screen", timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_function("window.callsctl.screenSharing === true",
                                     timeout=UI_TIMEOUT_MS)
        assert "sharing your screen" in alice.page.locator("#screen-view").inner_text()
        # Her own screen is previewed (the local capture, not a round trip through the SFU).
        preview = alice.page.locator(f'#screen-view video[data-session-id="{alice.session_id}"]')
        preview.wait_for(timeout=UI_TIMEOUT_MS)
        assert preview.get_attribute("data-self") == "true"
        assert f"{alice.session_id}:screen" not in inbound_video(alice)

        # The other two learn of it, decode it, and show it large.
        for viewer in (bob, carol):
            viewer.page.wait_for_function(
                f"window.callsctl.screenSharer === {alice.session_id!r}", timeout=UI_TIMEOUT_MS)
            assert viewer.row(alice.session_id).get_attribute("data-screen") == "true"
            stats = wait_video_flowing(viewer, f"{alice.session_id}:screen")
            assert stats["width"] == 640, stats
            view = viewer.page.locator(f'#screen-view video[data-session-id="{alice.session_id}"]')
            view.wait_for(timeout=UI_TIMEOUT_MS)
            viewer.page.wait_for_function(
                "(() => { const v = window.callsctl.screenElement();"
                " return v && !v.paused && v.videoWidth === 640; })()", timeout=UI_TIMEOUT_MS)
            # It is a screen, not a camera: no camera tile for alice.
            assert viewer.page.locator("#videos video").count() == 0
            assert f"{alice.session_id}:camera" not in inbound_video(viewer)

        # Bob tries to share too: refused, said so, and his capture is stopped.
        bob.page.click("#screen", timeout=UI_TIMEOUT_MS)
        error = bob.page.locator("#error")
        error.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        assert "already sharing" in error.inner_text(), error.inner_text()
        assert bob.page.evaluate("window.callsctl.error.code") == "screen_share_taken"
        bob.page.wait_for_function(
            "window.__screenTracks.length === 1"
            " && window.__screenTracks.every((t) => t.readyState === 'ended')",
            timeout=UI_TIMEOUT_MS)
        assert bob.page.evaluate("window.callsctl.screenSharing") is False
        assert bob.page.locator("#screen").get_attribute("aria-pressed") == "false"
        assert bob.page.evaluate("window.callsctl.screenSharer") == alice.session_id
        assert carol.page.evaluate("window.callsctl.screenSharer") == alice.session_id

        # Alice stops: everyone else gets user_screen_off and the view clears.
        alice.page.click("#screen", timeout=UI_TIMEOUT_MS)
        assert alice.page.evaluate("window.__screenTracks[0].readyState") == "ended"
        for viewer in (bob, carol):
            viewer.page.locator("#screen-view").wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
            assert viewer.page.locator("#screen-view video").count() == 0
            assert viewer.page.evaluate("window.callsctl.screenSharer") is None
            assert viewer.row(alice.session_id).get_attribute("data-screen") == "false"
            assert any("← user_screen_off" in line and alice.session_id in line
                       for line in viewer.page.evaluate("window.callsctl.log"))

        # The slot is free again: now bob's share gets through to carol.
        bob.page.click("#screen", timeout=UI_TIMEOUT_MS)
        bob.page.wait_for_function("window.callsctl.screenSharing === true",
                                   timeout=UI_TIMEOUT_MS)
        wait_video_flowing(carol, f"{bob.session_id}:screen")
        carol.page.locator(f'#screen-view video[data-session-id="{bob.session_id}"]').wait_for(
            timeout=UI_TIMEOUT_MS)
        for person in people:
            assert not person.page_errors(), person.diagnostics()


def test_screen_share_refused_when_disabled(browser, serve_factory) -> None:  # noqa: F811
    server = serve_factory(env={"CALLSCTL_ALLOW_SCREEN_SHARING": "false"})
    with browser_people(server) as people:
        (dave,) = join_all(browser, server, "no-screens", ["dave"], people,
                           init_script=CANVAS_SCREEN_JS)
        dave.page.click("#screen", timeout=UI_TIMEOUT_MS)
        error = dave.page.locator("#error")
        error.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        assert "disabled" in error.inner_text(), error.inner_text()
        assert dave.page.evaluate("window.callsctl.error.code") == "screen_sharing_disabled"
        dave.page.wait_for_function(
            "window.__screenTracks.length === 1 && window.__screenTracks[0].readyState === 'ended'",
            timeout=UI_TIMEOUT_MS)
        assert dave.page.evaluate("window.callsctl.screenSharing") is False
        assert dave.page.evaluate("window.callsctl.screenSharer") is None
        assert dave.page.locator("#screen-view").is_hidden()
        # Nothing was added to the connection for the refused share.
        assert dave.page.evaluate(
            "window.callsctl.pc.getTransceivers().filter((t) => t.sender.track"
            " && t.sender.track.kind === 'video').length") == 0
        assert not dave.page_errors(), dave.diagnostics()


def test_share_again_then_camera(browser, server) -> None:  # noqa: F811
    """The same sharer shares twice, then turns the camera on: each reaches the viewer."""
    with browser_people(server) as people:
        alice, bob = join_all(browser, server, "share-again", ["alice", "bob"], people,
                              init_script=CANVAS_SCREEN_JS)
        for _ in range(2):
            alice.page.click("#screen", timeout=UI_TIMEOUT_MS)
            alice.page.wait_for_function("window.callsctl.screenSharing === true",
                                         timeout=UI_TIMEOUT_MS)
            wait_video_flowing(bob, f"{alice.session_id}:screen")
            bob.page.locator(f'#screen-view video[data-session-id="{alice.session_id}"]').wait_for(
                timeout=UI_TIMEOUT_MS)
            alice.page.click("#screen", timeout=UI_TIMEOUT_MS)
            bob.page.locator("#screen-view").wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
        alice.page.click("#camera", timeout=UI_TIMEOUT_MS)
        wait_video_flowing(bob, f"{alice.session_id}:camera")
        bob.page.locator(f'#videos video[data-session-id="{alice.session_id}"]').wait_for(
            timeout=UI_TIMEOUT_MS)
        for person in people:
            assert not person.page_errors(), person.diagnostics()
