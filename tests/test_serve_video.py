"""Camera video and screen sharing through `callsctl serve`, with aiortc participants."""

from __future__ import annotations

import asyncio

import httpx
from aiortc import VideoStreamTrack

from callsctl_sfu.client.participant import Participant
from tests.support.clients import close_all
from tests.support.helpers import wait_until


def stats(server) -> dict:
    return httpx.get(f"{server.api_url}/stats", timeout=5).json()["forwarding"]


async def join(server, user: str, **kwargs) -> Participant:
    person = Participant(server.ws_url, server.token("room", user), "room", user, **kwargs)
    await person.join()
    await person.wait_connected(15)
    return person


async def test_camera_reaches_others_and_new_receivers_get_a_keyframe(server):
    camera = await join(server, "cam", video=True)
    viewer = await join(server, "viewer")
    try:
        await camera.send({"type": "video_on"})
        await viewer.wait_for(lambda e: e["type"] == "user_video_on"
                              and e["session_id"] == camera.session_id, 5)
        assert await wait_until(
            lambda: viewer.media_frames[(camera.session_id, "video")] > 15, 20), \
            dict(viewer.media_frames)
        # The viewer joined after the camera started: it could only decode after
        # the SFU asked the publisher for a keyframe.
        assert stats(server)["plis_sent"] >= 1
        # Audio still flows both ways beside the video.
        assert await wait_until(lambda: camera.frames_from[viewer.session_id] > 10, 5)
    finally:
        await close_all([camera, viewer])


async def test_screen_share_is_labelled_and_only_one_per_call(server):
    sharer = await join(server, "sharer")
    viewer = await join(server, "viewer")
    second = await join(server, "second")
    try:
        stream_id = await sharer.add_track(VideoStreamTrack())
        await sharer.send({"type": "screen_on", "stream_id": stream_id})
        event = await viewer.wait_for(lambda e: e["type"] == "user_screen_on", 5)
        assert event["session_id"] == sharer.session_id and event["stream_id"] == stream_id
        assert await wait_until(
            lambda: viewer.media_frames[(sharer.session_id, "screen")] > 10, 20), \
            dict(viewer.media_frames)
        mark = len(second.events)
        await second.send({"type": "screen_on", "stream_id": "whatever"})
        refused = await second.wait_for(lambda e: e["type"] == "error", 5, since=mark)
        assert refused["code"] == "screen_share_taken" and "sharer" in refused["message"]
        await sharer.send({"type": "screen_off"})
        await viewer.wait_for(lambda e: e["type"] == "user_screen_off", 5)
        await second.send({"type": "screen_on", "stream_id": "now-mine"})
        await viewer.wait_for(lambda e: e["type"] == "user_screen_on"
                              and e["session_id"] == second.session_id, 5)
    finally:
        await close_all([sharer, viewer, second])


async def test_screen_sharing_can_be_disabled(serve_factory):
    server = serve_factory(env={"CALLSCTL_ALLOW_SCREEN_SHARING": "false"})
    person = await join(server, "p")
    try:
        await person.send({"type": "screen_on", "stream_id": "s"})
        refused = await person.wait_for(lambda e: e["type"] == "error", 5)
        assert refused["code"] == "screen_sharing_disabled"
        await asyncio.sleep(0.2)
        assert not any(e["type"] == "user_screen_on" for e in person.events)
    finally:
        await person.close()
