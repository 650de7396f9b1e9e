"""Transcribing recorded calls: speech nobody typed, from espeak-ng, through a real call.

Two aiortc participants speak sentences made by espeak-ng with two different
voices; the call is recorded by the real recorder worker and transcribed by
the real transcription worker (pocketsphinx with its bundled model). What a
user reads is checked: the words, the WebVTT cues (strictly parsed), their
order and speakers, the CLI, and the one-line errors when things are missing.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from callsctl_sfu.client.speech import espeak
from callsctl_sfu.jobs.transcribe.audio import Segmenter
from callsctl_sfu.jobs.transcribe.engine import EngineError, load_engine
from tests.support import webvtt_strict
from tests.support.admin import admin_client, env_of
from tests.support.helpers import have, run_cli
from tests.support.speech import ALICE_1, ALICE_VOICE, BOB_1, BOB_VOICE, speaker

pytestmark = pytest.mark.skipif(not (have("ffmpeg") and have("espeak-ng")),
                                reason="needs ffmpeg and espeak-ng (Debian packages)")

ALICE_2 = "the office is closed on friday"


def test_the_engine_hears_espeak_and_cuts_utterances_at_pauses() -> None:
    engine = load_engine()
    pcm = espeak(ALICE_1, ALICE_VOICE, rate=16000)
    silence = bytes(16000 * 2)  # one second
    segmenter = Segmenter()
    utterances = segmenter.feed(silence + pcm + silence + pcm + silence) + segmenter.flush()
    assert len(utterances) == 2, utterances
    assert 0.75 <= utterances[0].start <= 1.0  # a 0.2 s pre-roll before the first voice
    speech_s = len(pcm) / 32000
    # It ends at the last voiced frame (espeak-ng leaves some silence after a sentence).
    assert 0.4 + speech_s < utterances[0].end <= 1.0 + speech_s, (utterances[0], speech_s)
    words = [w.text for w in engine.transcribe(utterances[1].pcm)]
    assert {"finish", "project"} <= set(words), words
    # Audio that never came (a muted speaker, dropped frames) ends the utterance and moves
    # the time line on: the next utterance is placed after the gap.
    gapped = Segmenter()
    cut = gapped.feed(silence + pcm[: len(pcm) // 2]) + gapped.skip(5.0)
    assert len(cut) == 1 and cut[0].start < 1.0
    later = gapped.feed(pcm + silence)
    assert len(later) == 1 and later[0].start >= 1.0 + speech_s / 2 + 5.0 - 0.3, later


def test_a_missing_model_or_language_is_one_clear_sentence(tmp_path) -> None:
    with pytest.raises(EngineError, match="is not a directory"):
        load_engine(model=str(tmp_path / "nowhere"))
    with pytest.raises(EngineError, match="lacks an acoustic model"):
        load_engine(model=str(tmp_path))
    with pytest.raises(EngineError, match="en-US only"):
        load_engine(language="de-DE")
    with pytest.raises(EngineError, match="unknown transcription engine"):
        load_engine("whisper")


async def transcript_of(http, recording_id: str, timeout: float = 180) -> dict:
    job: dict = {}
    for _ in range(int(timeout / 0.5)):
        job = (await http.get(f"/api/v1/jobs/{recording_id}")).json()
        info = job["output_data"].get("transcript")
        if info and info["state"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.5)
    raise AssertionError(f"the recording was never transcribed: {job}")


async def test_a_recorded_call_is_transcribed_with_speakers_in_order(serve_factory):
    server = serve_factory(env={"CALLSCTL_TRANSCRIPTION_ENABLED": "true"})
    lines = await asyncio.gather(*(asyncio.to_thread(espeak, text, voice) for text, voice in
                                   ((ALICE_1, ALICE_VOICE), (BOB_1, BOB_VOICE),
                                    (ALICE_2, ALICE_VOICE))))
    alice, alice_mic = await speaker(server, "talk", "alice")
    bob = None
    try:
        bob, bob_mic = await speaker(server, "talk", "bob")
        async with admin_client(server) as http:
            created = await http.post("/api/v1/jobs", json={"call": "talk"})
            assert created.status_code == 201, created.text
            recording_id = created.json()["id"]
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"],
                                 20)
            await asyncio.sleep(1.0)
            await alice_mic.say(lines[0])
            await asyncio.sleep(1.0)
            await bob_mic.say(lines[1])
            await asyncio.sleep(1.0)
            await alice_mic.say(lines[2])
            await asyncio.sleep(1.5)
            stopped = await asyncio.to_thread(run_cli, "record", "stop", recording_id,
                                              env=env_of(server), timeout=120)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            job = await transcript_of(http, recording_id)
            info = job["output_data"]["transcript"]
            assert info["state"] == "done", info
            assert {"transcript.vtt", "transcript.txt"} <= set(job["output_data"]["files"])
            vtt = await http.get(f"/api/v1/jobs/{recording_id}/files/transcript.vtt")
            assert vtt.status_code == 200
            listed = (await http.get("/api/v1/jobs?limit=10")).json()["jobs"]
            assert {j["type"] for j in listed} == {"recording", "transcription"}
    finally:
        await alice.close()
        if bob is not None:
            await bob.close()

    cues = webvtt_strict.parse(vtt.text)
    assert {c.speaker for c in cues} == {"Alice", "Bob"}, cues

    def first_cue_with(word: str) -> webvtt_strict.ParsedCue:
        found = [c for c in cues if word in c.text.split()]
        assert found, f"no cue says {word!r}: {cues}"
        return found[0]

    project, customer, friday = (first_cue_with(w) for w in ("project", "customer", "friday"))
    assert project.speaker == "Alice" and customer.speaker == "Bob" and \
        friday.speaker == "Alice", cues
    assert project.end <= customer.start and customer.end <= friday.start, cues

    text = await asyncio.to_thread(run_cli, "record", "transcript", recording_id,
                                   env=env_of(server))
    assert text.returncode == 0, text.stderr
    assert "Alice: " in text.stdout and "Bob: " in text.stdout
    for word in ("finish", "project", "customer", "friday"):
        assert word in text.stdout, text.stdout
    as_vtt = await asyncio.to_thread(run_cli, "record", "transcript", recording_id, "--vtt",
                                     env=env_of(server))
    assert as_vtt.stdout == vtt.text

    # On demand, again: a second transcription of the same recording, from the CLI.
    again = await asyncio.to_thread(run_cli, "record", "transcribe", recording_id, "--json",
                                    env=env_of(server), timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    result = json.loads(again.stdout)
    assert result["type"] == "transcription" and result["state"] == "done"
    assert result["output_data"]["recording"] == recording_id
    assert result["output_data"]["cues"] == len(cues)


async def test_missing_model_and_bad_requests_say_what_to_do(serve_factory, tmp_path):
    server = serve_factory(env={"CALLSCTL_TRANSCRIPTION_MODEL": str(tmp_path / "no-model")})
    alice, _mic = await speaker(server, "quiet", "alice")
    try:
        async with admin_client(server) as http:
            created = await http.post("/api/v1/jobs", json={"call": "quiet"})
            recording_id = created.json()["id"]
            # Not finished yet: refused with a reason.
            early = await http.post("/api/v1/jobs", json={"type": "transcription",
                                                          "recording": recording_id})
            assert early.status_code == 409 and "still" in early.json()["error"]
            await alice.wait_for(lambda e: e["type"] == "call_recording" and e["recording"],
                                 20)
            await asyncio.sleep(1.5)
            await http.post(f"/api/v1/jobs/{recording_id}/stop")
            for _ in range(120):
                if (await http.get(f"/api/v1/jobs/{recording_id}")).json()["state"] == "done":
                    break
                await asyncio.sleep(0.5)
            bad = await http.post("/api/v1/jobs", json={"type": "transcription"})
            assert bad.status_code == 400 and "recording" in bad.json()["error"]
    finally:
        await alice.close()
    env = env_of(server)
    none_yet = await asyncio.to_thread(run_cli, "record", "transcript", recording_id, env=env)
    assert none_yet.returncode == 1
    assert f"callsctl record transcribe {recording_id}" in none_yet.stderr
    # rich wraps at 80 columns off a terminal, inside a long temporary path too
    failed = await asyncio.to_thread(run_cli, "record", "transcribe", recording_id,
                                     env={**env, "COLUMNS": "400"}, timeout=120)
    assert failed.returncode == 1
    said = " ".join(failed.stdout.split())
    assert "no-model' is not a directory; set transcription_model" in said, said
    after = await asyncio.to_thread(run_cli, "record", "transcript", recording_id, env=env)
    assert after.returncode == 1 and "is not a directory" in after.stderr
    assert len(after.stderr.strip().splitlines()) == 1, after.stderr
    unknown = await asyncio.to_thread(run_cli, "record", "transcribe", "nosuchjob", env=env)
    assert unknown.returncode == 1 and "no job 'nosuchjob'" in unknown.stderr
    # Per request: the bundled model instead of the server's missing one, or a language.
    async with admin_client(server) as http:
        bundled = await http.post("/api/v1/jobs", json={"type": "transcription",
                                                        "recording": recording_id, "model": ""})
        german = await http.post("/api/v1/jobs", json={
            "type": "transcription", "recording": recording_id, "model": "",
            "language": "de-DE"})
        assert german.status_code == 409 and "already being transcribed" in german.text
        done = await finished(http, bundled.json()["id"])
        assert done["state"] == "done" and done["output_data"]["cues"] == 0, done  # silence
        german = await http.post("/api/v1/jobs", json={
            "type": "transcription", "recording": recording_id, "model": "",
            "language": "de-DE"})
        failed_job = await finished(http, german.json()["id"])
        assert "en-US only, not 'de-DE'" in failed_job["error"], failed_job
        typo = await http.post("/api/v1/jobs", json={"call": "quiet", "language": "en-US"})
        assert typo.status_code == 400 and "transcription and captions" in typo.text


async def finished(http, job_id: str) -> dict:
    job: dict = {}
    for _ in range(240):
        job = (await http.get(f"/api/v1/jobs/{job_id}")).json()
        if job["state"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.5)
    raise AssertionError(f"job never finished: {job}")
