"""Recording a real call: aiortc participants with known tones, a camera and a red
screen share, through `callsctl serve`, its job service and a recorder worker.

What a user checks is checked: the files exist with the right codecs, open in
ffprobe, start when each speaker started, the MP4 plays for the recorded time
with each speaker's tone at the right moments (Goertzel) and the screen share in
the picture while it was shared. Also the bad cases: a killed worker, the call
ending, the max duration, two recordings for one call, a full disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import av
import pytest
from aiortc import VideoStreamTrack

from callsctl_sfu.rtc import aiortc_bridge
from tests.support import media_checks as media
from tests.support.admin import admin_client, admin_key, job_state, join
from tests.support.helpers import have, is_root, run_cli, wait_until

pytestmark = pytest.mark.skipif(not have("ffmpeg"), reason="needs ffmpeg (Debian package)")

ALICE_HZ, BOB_HZ = 440.0, 1000.0


class ColorTrack(VideoStreamTrack):
    """A solid-colour 320x240 video (a stand-in screen share that a frame check can see)."""

    def __init__(self, yuv: tuple[int, int, int]) -> None:
        super().__init__()
        self.yuv = yuv

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane, value in zip(frame.planes, self.yuv, strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


RED = (81, 90, 240)  # BT.601 studio-range YUV of pure red


async def share_screen(person, track) -> None:
    """Publish `track` as a screen share in a stream of its own (as browsers do; aiortc
    would otherwise put it in the microphone's stream)."""
    sender = person.pc.addTrack(track)
    stream_id = f"screen-{uuid.uuid4().hex[:8]}"
    aiortc_bridge.set_sender_identity(sender, stream_id=stream_id)
    offer = await person.pc.createOffer()
    await person.pc.setLocalDescription(offer)
    await person.send({"type": "screen_on", "stream_id": stream_id})
    await person.send({"type": "signal", "data": {"type": "offer",
                                                  "sdp": person.pc.localDescription.sdp}})


def cli_env(server) -> dict[str, str]:
    return {"CALLSCTL_SERVER": server.api_url, "CALLSCTL_ADMIN_KEY": admin_key(server)}


async def close(*people) -> None:
    for person in people:
        await person.close()


async def test_a_recorded_call_has_aligned_tracks_and_a_playable_mp4(server):
    alice = await join(server, "rec", "alice", tone=ALICE_HZ)
    bob = None
    try:
        await alice.add_track(VideoStreamTrack())  # a camera (aiortc's green test picture)
        await alice.send({"type": "video_on"})
        started = await asyncio.to_thread(
            run_cli, "record", "start", "rec", "--json", env=cli_env(server))
        assert started.returncode == 0, started.stderr
        job_id = json.loads(started.stdout)["id"]
        await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
        async with admin_client(server) as http:
            calls = (await http.get("/api/v1/calls")).json()["calls"]
            assert calls[0]["participants"] == 1 and calls[0]["recording"] is True
            await asyncio.sleep(2.5)
            bob = await join(server, "rec", "bob", tone=BOB_HZ)
            await share_screen(bob, ColorTrack(RED))
            await asyncio.sleep(4.5)
            stopped = await asyncio.to_thread(
                run_cli, "record", "stop", job_id, "--json", env=cli_env(server), timeout=120)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            job = json.loads(stopped.stdout)
            assert job["state"] == "done", job
            logs = (await http.get(f"/api/v1/jobs/{job_id}/logs")).text
            assert "joined call rec as recorder" in logs
        # The recorder was never a participant to the others.
        assert not any(e["type"] == "user_joined" and e.get("user", "").startswith("recorder")
                       for e in alice.events)
        await alice.wait_for(lambda e: e["type"] == "call_recording" and not e["recording"], 10)
    finally:
        await close(alice, *([bob] if bob else []))

    out = job["output_data"]
    directory = Path(out["directory"])
    tracks = {(t["name"], t["kind"]): t for t in out["tracks"]}
    assert set(tracks) == {("Alice", "audio"), ("Alice", "video"), ("Bob", "audio"),
                           ("Bob", "screen")}, tracks
    for (_name, kind), track in tracks.items():
        path = directory / track["file"]
        expected = {"audio": ("audio", "opus"), "video": ("video", "vp8"),
                    "screen": ("video", "vp8")}[kind]
        assert media.codecs(path) == {expected[0]: expected[1]}, path
        # Timestamps come from RTP, placed at the track's start in the recording.
        assert abs(media.start_time(path) - track["start_s"]) < 0.1, (path, track)
    alice_audio, bob_audio = tracks[("Alice", "audio")], tracks[("Bob", "audio")]
    bob_start = bob_audio["start_s"]
    assert 2.0 < bob_start - alice_audio["start_s"] < 8.0  # joined 2.5 s (+ connect) later
    # What decodes is as long as what was recorded (no holes, no stretch).
    assert abs(media.decoded_duration(directory / alice_audio["file"])
               - alice_audio["duration_s"]) < 0.5

    mp4 = directory / "recording.mp4"
    assert media.codecs(mp4) == {"video": "h264", "audio": "aac"}
    assert abs(media.duration(mp4) - out["duration_s"]) < 1.0
    samples = media.pcm(mp4)
    early = (alice_audio["start_s"] + 0.3, bob_start - 0.3)
    late = (bob_start + 0.5, out["duration_s"] - 0.5)
    assert media.tone_level(samples, ALICE_HZ, *early) > 1000
    assert media.tone_level(samples, BOB_HZ, *early) < 100, "Bob heard before he joined"
    assert media.tone_level(samples, ALICE_HZ, *late) > 1000
    assert media.tone_level(samples, BOB_HZ, *late) > 1000
    # Before the share: Alice's camera; while sharing: the red screen fills the frame.
    before = media.frame_mean(mp4, tracks[("Bob", "screen")]["start_s"] - 0.5,
                              "iw/2:ih/2:iw/4:ih/4")
    during = media.frame_mean(mp4, out["duration_s"] - 1.0, "iw/2:ih/2:iw/4:ih/4")
    assert not (before[0] > 150 and before[1] < 80), before
    assert during[0] > 150 and during[1] < 80 and during[2] < 80, during


async def test_a_killed_worker_leaves_playable_files_and_the_call_goes_on(server):
    alice = await join(server, "kill", "alice", tone=ALICE_HZ)
    try:
        await alice.add_track(VideoStreamTrack())
        async with admin_client(server) as http:
            response = await http.post("/api/v1/jobs", json={"call": "kill"})
            assert response.status_code == 201, response.text
            job = await job_state(http, response.json()["id"], ("running",))
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
            directory = server.data_dir / "recordings" / job["id"]
            assert await wait_until(lambda: any(directory.glob("video-*.webm")), 20)
            await asyncio.sleep(3)
            os.kill(job["output_data"]["pid"], signal.SIGKILL)
            job = await job_state(http, job["id"], ("done", "failed"))
            assert job["state"] == "failed" and "SIGKILL" in job["error"], job
            # The call is untouched: Alice is still in it, and sees the recording end.
            await alice.wait_for(lambda e: e["type"] == "call_recording"
                                 and not e["recording"], 15)
            calls = (await http.get("/api/v1/calls")).json()["calls"]
            assert calls[0]["participants"] == 1 and calls[0]["recording"] is False
            assert alice.pc.connectionState == "connected"
            # The partial files still open and play up to the kill.
            audio = next(directory.glob("audio-*.ogg"))
            assert media.codecs(audio) == {"audio": "opus"}
            assert media.decoded_duration(audio) > 1.5
            video = next(directory.glob("video-*.webm"))
            assert media.codecs(video) == {"video": "vp8"}
            frames = subprocess.run(
                ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                 "stream=nb_read_frames", "-of", "csv=p=0", str(video)],
                capture_output=True, text=True, timeout=60, check=True).stdout
            assert int(frames.strip()) > 20
            # And the call can be recorded again.
            again = await http.post("/api/v1/jobs", json={"call": "kill"})
            assert again.status_code == 201, again.text
            await http.post(f"/api/v1/jobs/{again.json()['id']}/stop")
            await job_state(http, again.json()["id"], ("done", "failed"))
    finally:
        await alice.close()


async def test_max_duration_and_the_call_ending_finish_the_recording(server):
    alice = await join(server, "end", "alice", tone=ALICE_HZ)
    try:
        async with admin_client(server) as http:
            response = await http.post("/api/v1/jobs",
                                       json={"call": "end", "max_duration_sec": 3})
            job = await job_state(http, response.json()["id"], ("done", "failed"))
            assert job["state"] == "done", job
            assert job["output_data"]["stop_reason"] == "max_duration"
            mp4 = Path(job["output_data"]["directory"]) / "recording.mp4"
            assert abs(media.duration(mp4) - job["output_data"]["duration_s"]) < 1.0
            assert job["output_data"]["duration_s"] < 4.0

            response = await http.post("/api/v1/jobs", json={"call": "end"})
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"]
                                 and e.get("started_at", 0) > job["stop_at"], 20)
            await asyncio.sleep(2)
            await alice.leave()  # the last participant leaves: the call ends
            job = await job_state(http, response.json()["id"], ("done", "failed"))
            assert job["state"] == "done", job
            assert "call ended" in job["output_data"]["stop_reason"]
            mp4 = Path(job["output_data"]["directory"]) / "recording.mp4"
            assert media.codecs(mp4) == {"video": "h264", "audio": "aac"}
            assert media.decoded_duration(mp4) > 1.5
            assert not (await http.get("/api/v1/calls")).json()["calls"]
    finally:
        await alice.close()


async def test_recording_requests_that_cannot_work_are_refused_clearly(server):
    async with admin_client(server) as http:
        absent = await http.post("/api/v1/jobs", json={"call": "nobody-here"})
        assert absent.status_code == 409 and "no live call" in absent.json()["error"]
        bad = await http.post("/api/v1/jobs", json={"call": "x", "max_duration_sec": -1})
        assert bad.status_code == 400 and "max_duration_sec" in bad.json()["error"]
        assert (await http.post("/api/v1/jobs", content=b"[1]")).status_code == 400
        assert (await http.get("/api/v1/jobs/nope")).status_code == 404
        assert (await http.get("/api/v1/jobs?limit=0")).status_code == 400
        alice = await join(server, "twice", "alice")
        try:
            first = await http.post("/api/v1/jobs", json={"call": "twice"})
            assert first.status_code == 201
            job_id = first.json()["id"]
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
            second = await http.post("/api/v1/jobs", json={"call": "twice"})
            assert second.status_code == 409 and job_id in second.json()["error"]
            busy = await http.delete(f"/api/v1/jobs/{job_id}")
            assert busy.status_code == 409 and "stop it first" in busy.json()["error"]
            await http.post(f"/api/v1/jobs/{job_id}/stop")
            job = await job_state(http, job_id, ("done", "failed"))
            directory = Path(job["output_data"]["directory"])
            assert directory.is_dir()
            listed = (await http.get("/api/v1/jobs?call=twice")).json()["jobs"]
            assert [j["id"] for j in listed] == [job_id]
            file = await http.get(f"/api/v1/jobs/{job_id}/files/recording.mp4")
            assert file.status_code == 200 and file.content[4:8] == b"ftyp"
            assert (await http.get(f"/api/v1/jobs/{job_id}/files/job.json")).status_code == 404
            removed = await asyncio.to_thread(run_cli, "record", "rm", job_id,
                                              env=cli_env(server))
            assert removed.returncode == 0, removed.stderr
            assert not directory.exists()
            assert (await http.get(f"/api/v1/jobs/{job_id}")).status_code == 404
        finally:
            await alice.close()
        # Stopped the moment it was asked for: it ends cleanly, nothing hangs.
        alice = await join(server, "quick", "alice")
        try:
            quick = (await http.post("/api/v1/jobs", json={"call": "quick"})).json()
            await http.post(f"/api/v1/jobs/{quick['id']}/stop")
            quick = await job_state(http, quick["id"], ("done", "failed"))
            assert quick["state"] == "done" or "SIGTERM" in quick["error"], quick
        finally:
            await alice.close()
    refused = await asyncio.to_thread(run_cli, "record", "start", "nobody-here",
                                      env=cli_env(server))
    assert refused.returncode == 1 and "no live call" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    unknown = await asyncio.to_thread(run_cli, "record", "get", "nope", env=cli_env(server))
    assert unknown.returncode == 1 and "no job" in unknown.stderr


async def test_the_host_starts_and_stops_recording_from_the_call(server):
    host = await join(server, "hosted", "alice")
    guest = await join(server, "hosted", "bob", tone=BOB_HZ)
    try:
        mark = len(guest.events)
        await guest.send({"type": "record_start"})
        refused = await guest.wait_for(lambda e: e["type"] == "error", 5, since=mark)
        assert refused["code"] == "not_host"
        await host.send({"type": "record_start"})
        await guest.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
        mark = len(host.events)
        await host.send({"type": "record_start"})
        twice = await host.wait_for(lambda e: e["type"] == "error", 5, since=mark)
        assert "already being recorded" in twice["message"]
        await asyncio.sleep(1.5)
        await host.send({"type": "record_stop"})
        await guest.wait_for(lambda e: e["type"] == "call_recording" and not e["recording"],
                             20)
        async with admin_client(server) as http:
            job_id = (await http.get("/api/v1/jobs")).json()["jobs"][0]["id"]
            job = await job_state(http, job_id, ("done", "failed"))
        assert job["state"] == "done" and "host" in job["output_data"]["stop_reason"], job
        assert job["output_data"]["participants"] == ["Alice", "Bob"]
    finally:
        await close(host, guest)


@pytest.mark.root
@pytest.mark.skipif(not is_root(), reason="mounts a tiny tmpfs (root)")
async def test_a_full_disk_fails_the_job_clearly_and_leaves_the_call_alone(serve_factory,
                                                                            tmp_path):
    recordings = tmp_path / "small"
    recordings.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(recordings)],
                   check=True, timeout=10)
    try:
        server = serve_factory()
        target = server.data_dir / "recordings"
        target.rmdir()
        target.symlink_to(recordings)
        alice = await join(server, "full", "alice", tone=ALICE_HZ)
        try:
            await alice.add_track(VideoStreamTrack())
            async with admin_client(server) as http:
                response = await http.post("/api/v1/jobs", json={"call": "full"})
                job = await job_state(http, response.json()["id"], ("done", "failed"), 60)
                assert job["state"] == "failed" and "disk full" in job["error"], job
                calls = (await http.get("/api/v1/calls")).json()["calls"]
                assert calls[0]["participants"] == 1
            assert alice.pc.connectionState == "connected"
        finally:
            await alice.close()
    finally:
        subprocess.run(["umount", "-l", str(recordings)], timeout=10, check=False)


async def test_a_muted_stretch_is_silence_at_the_right_time_not_a_shift(server):
    alice = await join(server, "mute", "alice", tone=ALICE_HZ)
    bob = await join(server, "mute", "bob", tone=BOB_HZ)
    try:
        async with admin_client(server) as http:
            job = (await http.post("/api/v1/jobs", json={"call": "mute"})).json()
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"], 20)
            await asyncio.sleep(2.5)
            muted_at = time.time()
            await bob.send({"type": "mute"})
            await alice.wait_for(lambda e: e["type"] == "user_muted", 5)
            await asyncio.sleep(3)
            await bob.send({"type": "unmute"})
            await alice.wait_for(lambda e: e["type"] == "user_unmuted", 5)
            unmuted_at = time.time()
            await asyncio.sleep(3)
            await http.post(f"/api/v1/jobs/{job['id']}/stop")
            job = await job_state(http, job["id"], ("done", "failed"))
    finally:
        await close(alice, bob)
    assert job["state"] == "done", job
    out = job["output_data"]
    bob_track = next(t for t in out["tracks"] if t["name"] == "Bob")
    # Bob's own file has a gap, not a shortened time line: it still ends at the end.
    assert bob_track["duration_s"] > out["duration_s"] - bob_track["start_s"] - 1.0
    samples = media.pcm(Path(out["directory"]) / "recording.mp4")
    end = out["duration_s"]
    # Recording time of the mute and unmute (same clock as the worker's started_at).
    mute, unmute = muted_at - out["started_at"], unmuted_at - out["started_at"]
    assert media.tone_level(samples, BOB_HZ, bob_track["start_s"] + 0.5, mute - 0.2) > 1000
    assert media.tone_level(samples, BOB_HZ, mute + 0.5, unmute - 0.5) < 100, \
        "Bob heard while muted"
    assert media.tone_level(samples, BOB_HZ, unmute + 0.5, end - 0.5) > 1000
    assert media.tone_level(samples, ALICE_HZ, mute + 0.5, unmute - 0.5) > 1000
