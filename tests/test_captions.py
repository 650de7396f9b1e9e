"""Live captions in a real call: espeak-ng speech in, caption events out, to everyone.

A real server, the real captions worker (a child process joining with the
`captions` role) and pocketsphinx; two aiortc participants speak with two
espeak-ng voices and each sees the other's words as captions with the right
name. Also: only the host starts them, the switch off, the worker's messages
are the worker's alone, and what the worker drops is counted in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

import httpx
import pytest

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.client.speech import espeak
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.jobs.transcribe.engine import load_engine
from callsctl_sfu.jobs.transcribe.live import CaptionPipeline
from callsctl_sfu.tokens import issue_token
from tests.support.admin import admin_client, env_of
from tests.support.helpers import have, run_cli
from tests.support.speech import ALICE_1, ALICE_VOICE, BOB_1, BOB_VOICE, speaker

pytestmark = pytest.mark.skipif(not (have("ffmpeg") and have("espeak-ng")),
                                reason="needs ffmpeg and espeak-ng (Debian packages)")

ENABLED = {"CALLSCTL_LIVE_CAPTIONS_ENABLED": "true"}


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.api_url}/metrics", timeout=5).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


async def caption_of(person: Participant, name: str, word: str, timeout: float = 30) -> dict:
    """The first caption of `name` with `word`; on timeout, the captions there were."""
    try:
        return await person.wait_for(lambda e: e["type"] == "caption" and e["name"] == name
                                     and word in e["text"].split(), timeout)
    except TimeoutError:
        got = [(e["name"], e["text"]) for e in person.events if e["type"] == "caption"]
        raise AssertionError(f"no caption of {name} with {word!r}; got {got}") from None


async def test_everyone_sees_the_speakers_words_as_captions(serve_factory):
    server = serve_factory(env=ENABLED)
    lines = await asyncio.gather(asyncio.to_thread(espeak, ALICE_1, ALICE_VOICE),
                                 asyncio.to_thread(espeak, BOB_1, BOB_VOICE))
    alice, alice_mic = await speaker(server, "cc", "alice")  # the host
    bob = None
    try:
        bob, bob_mic = await speaker(server, "cc", "bob")
        await bob.send({"type": "captions_start"})  # not the host
        refused = await bob.wait_for(lambda e: e["type"] == "error", 10)
        assert refused["code"] == "not_host"
        await alice.send({"type": "captions_start"})
        for person in (alice, bob):
            await person.wait_for(lambda e: e["type"] == "call_captions" and e["captions"], 30)
        async with admin_client(server) as http:
            calls = (await http.get("/api/v1/calls")).json()["calls"]
            assert calls[0]["participants"] == 2 and calls[0]["captions"] is True
            assert calls[0]["recording"] is False
        await asyncio.sleep(1.0)  # the worker's peer connection gets the tracks
        ended = await alice_mic.say(lines[0])
        caption = await caption_of(bob, "Alice", "project")
        assert caption["session_id"] == alice.session_id
        assert caption["start"] < caption["end"]
        assert "finish" in caption["text"].split()
        assert ended > 0
        await bob_mic.say(lines[1])
        await caption_of(alice, "Bob", "customer")
        # Everyone gets them, the speaker too.
        await caption_of(alice, "Alice", "project", 5)
        # The worker's messages are its own.
        await bob.send({"type": "caption", "session_id": alice.session_id, "text": "forged",
                        "start": 1, "end": 2})
        forged = await bob.wait_for(lambda e: e["type"] == "error" and e["code"] == "forbidden",
                                    10)
        assert "captions worker" in forged["message"]
        assert metric(server, "callsctl_jobs_live_captions_sent_total") >= 2
        await alice.send({"type": "captions_stop"})
        await bob.wait_for(lambda e: e["type"] == "call_captions" and not e["captions"], 30)
        async with admin_client(server) as http:
            jobs = (await http.get("/api/v1/jobs")).json()["jobs"]
            for _ in range(60):
                if jobs[0]["state"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.5)
                jobs = (await http.get("/api/v1/jobs")).json()["jobs"]
            assert jobs[0]["type"] == "captions" and jobs[0]["state"] == "done", jobs[0]
            assert jobs[0]["output_data"]["captions"] >= 2
        # The same from the CLI (admin): on, then off.
        env = env_of(server)
        started = await asyncio.to_thread(run_cli, "record", "captions", "cc", "--json",
                                          env=env)
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["type"] == "captions"
        await bob.wait_for(lambda e: e["type"] == "call_captions" and e["captions"], 30)
        stopped = await asyncio.to_thread(run_cli, "record", "captions", "cc", "--stop",
                                          env=env, timeout=90)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    finally:
        await alice.close()
        if bob is not None:
            await bob.close()


async def test_captions_off_on_this_server_is_a_clear_refusal(server):
    alice, _mic = await speaker(server, "off", "alice")
    try:
        await alice.send({"type": "captions_start"})
        refused = await alice.wait_for(lambda e: e["type"] == "error", 10)
        assert refused["code"] == "captions_refused"
        assert "live_captions_enabled = true" in refused["message"]
        async with admin_client(server) as http:
            response = await http.post("/api/v1/jobs", json={"type": "captions", "call": "off"})
            assert response.status_code == 409
            assert "live_captions_enabled" in response.json()["error"]
        cli = await asyncio.to_thread(run_cli, "record", "captions", "off", env=env_of(server))
        assert cli.returncode == 1 and "live_captions_enabled = true" in cli.stderr
        assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
        nothing = await asyncio.to_thread(run_cli, "record", "captions", "off", "--stop",
                                          env=env_of(server))
        assert nothing.returncode == 1 and "has no live captions" in nothing.stderr
    finally:
        await alice.close()


async def test_the_workers_drop_reports_become_metrics(serve_factory):
    server = serve_factory(env=ENABLED)
    alice, _mic = await speaker(server, "stats", "alice")
    worker = None
    try:
        token = issue_token(load_or_create_secret(server.data_dir), "stats", "captions-x",
                            600, role="captions")
        worker = Participant(server.ws_url, token, "stats", "Captions", send_audio=False)
        await worker.join()
        await alice.wait_for(lambda e: e["type"] == "call_captions" and e["captions"], 10)
        before = (metric(server, "callsctl_jobs_live_captions_window_dropped_total"),
                  metric(server, "callsctl_jobs_live_captions_pkt_payload_ch_buf_full_total"))
        await worker.send({"type": "captions_stats", "window_dropped": 3, "buf_full": 7})
        await worker.send({"type": "caption", "session_id": alice.session_id,
                           "text": "hello <b>there</b>", "start": 10.0, "end": 11.5})
        caption = await alice.wait_for(lambda e: e["type"] == "caption", 10)
        assert caption["name"] == "Alice" and caption["text"] == "hello <b>there</b>"
        await worker.send({"type": "caption", "session_id": alice.session_id, "text": "x",
                           "start": "soon", "end": 2})
        bad = await worker.wait_for(lambda e: e["type"] == "error", 10)
        assert bad["code"] == "bad_message" and "start" in bad["message"]
        after = (metric(server, "callsctl_jobs_live_captions_window_dropped_total"),
                 metric(server, "callsctl_jobs_live_captions_pkt_payload_ch_buf_full_total"))
        assert after == (before[0] + 3, before[1] + 7)
    finally:
        if worker is not None:
            await worker.close()
        await alice.close()


async def test_a_slow_engine_drops_windows_and_a_full_queue_drops_frames():
    import av

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    pipeline = CaptionPipeline(load_engine(), send, frame_queue=1000, window_queue=1)
    pipeline.start()
    speech = espeak(ALICE_1, ALICE_VOICE, rate=48000)
    silence = bytes(48000 * 2)
    pcm = (speech + silence) * 3
    step = 960 * 2  # 20 ms at 48 kHz
    for offset in range(0, len(pcm) - step + 1, step):
        frame = av.AudioFrame(format="s16", layout="mono", samples=step // 2)
        frame.planes[0].update(pcm[offset:offset + step])
        frame.sample_rate = 48000
        pipeline.push("alice-session", frame)
    # Three utterances were cut before the engine could take one: one waits, the rest drop.
    for _ in range(200):
        await asyncio.sleep(0.05)
        if pipeline.captions + pipeline.window_dropped >= 3 and pipeline.windows.empty():
            break
    assert pipeline.window_dropped >= 1
    assert pipeline.captions >= 1 and "project" in sent[0]["text"].split()
    stats = pipeline.stats()
    assert stats == {"type": "captions_stats", "window_dropped": pipeline.window_dropped,
                     "buf_full": 0}
    assert pipeline.stats() is None  # reported once
    # A receive queue that is full drops frames and says how many.
    small = CaptionPipeline(load_engine(), send, frame_queue=5)
    frame = av.AudioFrame(format="s16", layout="mono", samples=960)
    frame.planes[0].update(bytes(1920))
    frame.sample_rate = 48000
    for _ in range(20):
        small.push("bob-session", frame)
    assert small.buf_full == 15
    await pipeline.close()
    await small.close()


async def test_a_killed_captions_worker_leaves_the_call_and_the_call_goes_on(serve_factory):
    server = serve_factory(env=ENABLED)
    alice, _mic = await speaker(server, "kill", "alice")
    try:
        async with admin_client(server) as http:
            created = await http.post("/api/v1/jobs", json={"type": "captions", "call": "kill"})
            assert created.status_code == 201, created.text
            again = await http.post("/api/v1/jobs", json={"type": "captions", "call": "kill"})
            assert again.status_code == 409 and "already has live captions" in again.text
            await alice.wait_for(lambda e: e["type"] == "call_captions" and e["captions"], 30)
            job = (await http.get(f"/api/v1/jobs/{created.json()['id']}")).json()
            os.kill(job["output_data"]["pid"], signal.SIGKILL)
            await alice.wait_for(lambda e: e["type"] == "call_captions" and not e["captions"],
                                 30)
            for _ in range(60):
                job = (await http.get(f"/api/v1/jobs/{job['id']}")).json()
                if job["state"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.5)
            assert job["state"] == "failed" and "SIGKILL" in job["error"], job
            calls = (await http.get("/api/v1/calls")).json()["calls"]
            assert calls[0]["participants"] == 1 and calls[0]["captions"] is False
            assert alice.pc.connectionState == "connected"
    finally:
        await alice.close()


async def test_a_missing_model_reaches_the_host_as_one_sentence(serve_factory, tmp_path):
    server = serve_factory(env={**ENABLED, "CALLSCTL_TRANSCRIPTION_MODEL":
                                str(tmp_path / "no-model")})
    alice, _mic = await speaker(server, "nomodel", "alice")
    try:
        await alice.send({"type": "captions_start"})
        failed = await alice.wait_for(lambda e: e["type"] == "error", 60)
        assert failed["code"] == "captions_failed", failed
        assert "no-model' is not a directory; set transcription_model" in failed["message"]
        assert "\n" not in failed["message"]
        assert alice.pc.connectionState == "connected"
    finally:
        await alice.close()
