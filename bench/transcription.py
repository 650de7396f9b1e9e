"""Transcription and live captions: word error rate, caption latency, CPU per audio minute.

22 fixed sentences spoken by espeak-ng with two voices (en-us+f2 and
en-us+f5, alternating, as two aiortc participants) in one call on a loopback
`callsctl serve` with live captions on and the call recorded and transcribed
afterwards. Reported:

- word error rate (WER: word substitutions + deletions + insertions over the
  reference words) of the engine alone (espeak-ng straight to the engine), of
  the live captions, and of the transcript of the recording (both through
  Opus and the SFU);
- caption latency: from the end of a sentence at the speaker's microphone to
  the caption event at the other participant, p50 and p95;
- CPU seconds per minute of audio of the transcription job and of the captions
  worker.

    python bench/transcription.py --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.forwarding import (  # noqa: E402
    cpu_seconds,
    free_port,
    start_serve,
    wait_ready,
    write_section,
)
from callsctl_sfu.client.participant import Participant  # noqa: E402
from callsctl_sfu.client.speech import SpeechTrack, espeak  # noqa: E402
from callsctl_sfu.datadir import load_or_create_secret  # noqa: E402
from callsctl_sfu.jobs.transcribe.engine import load_engine  # noqa: E402
from callsctl_sfu.tokens import issue_token  # noqa: E402

SENTENCES = [
    "the meeting starts tomorrow morning at nine",
    "please send me the report before lunch",
    "we need more time to finish the project",
    "the weather is very good today",
    "can you hear me now",
    "i will call you back in five minutes",
    "the budget for next year is ready",
    "let us talk about the new design",
    "my computer is working again",
    "thank you everyone for joining the call",
    "the server was down for two hours",
    "we should test the system this week",
    "please share your screen with the team",
    "the customer wants a new feature",
    "i think we are almost done",
    "the office is closed on friday",
    "who is going to write the documents",
    "the price of the house went up",
    "open the door and turn on the light",
    "good morning and welcome to the show",
    "the children are playing in the garden",
    "we have a problem with the network",
]
VOICES = ("en-us+f2", "en-us+f5")
PAUSE_S = 1.5


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words (substitution, deletion, insertion cost 1)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row = row, [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ref != hyp))
    return row[-1]


def wer(pairs: list[tuple[str, str]]) -> float:
    errors = sum(word_errors(r.split(), h.split()) for r, h in pairs)
    return errors / sum(len(r.split()) for r, _ in pairs)


def engine_only() -> tuple[float, float]:
    """WER and CPU s per audio minute of the engine on espeak-ng's 16 kHz audio."""
    engine = load_engine()
    pairs, audio_s, cpu = [], 0.0, 0.0
    for index, sentence in enumerate(SENTENCES):
        pcm = espeak(sentence, VOICES[index % 2], rate=16000)
        audio_s += len(pcm) / 32000
        started = time.process_time()
        words = engine.transcribe(pcm)
        cpu += time.process_time() - started
        pairs.append((sentence, " ".join(w.text for w in words)))
    return wer(pairs), 60 * cpu / audio_s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def in_a_call() -> dict:
    api, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    data_dir = tempfile.mkdtemp(prefix="callsctl-bench-stt-")
    env = {**os.environ, "CALLSCTL_LIVE_CAPTIONS_ENABLED": "true",
           "CALLSCTL_TRANSCRIPTION_ENABLED": "true"}
    server = start_serve(api, udp, data_dir, env)
    base = f"http://127.0.0.1:{api}"
    people: list[Participant] = []
    try:
        wait_ready(base)
        secret = load_or_create_secret(data_dir)
        key = (Path(data_dir) / "admin_key").read_text().strip()
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                             timeout=10)
        mics = [SpeechTrack(), SpeechTrack()]
        for index, mic in enumerate(mics):
            person = Participant(f"ws://127.0.0.1:{api}/ws",
                                 issue_token(secret, "bench", f"speaker{index + 1}"), "bench",
                                 f"Speaker {index + 1}", audio_track=mic)
            await person.join()
            people.append(person)
        for person in people:
            await person.wait_connected(30)
        recording = admin.post("/api/v1/jobs", json={"call": "bench"}).json()
        captions = admin.post("/api/v1/jobs", json={"type": "captions", "call": "bench"}).json()
        for person in people:
            await person.wait_for(lambda e: e["type"] == "call_captions" and e["captions"], 60)
            await person.wait_for(lambda e: e["type"] == "call_recording" and e["recording"],
                                  60)
        await asyncio.sleep(2)
        worker = admin.get(f"/api/v1/jobs/{captions['id']}").json()["output_data"]["pid"]
        cpu0 = cpu_seconds(worker)
        audio = [await asyncio.to_thread(espeak, s, VOICES[i % 2])
                 for i, s in enumerate(SENTENCES)]
        latencies, live_pairs, spoken_s = [], [], 0.0
        for index, sentence in enumerate(SENTENCES):
            speaker, listener = people[index % 2], people[1 - index % 2]
            since = len(listener.events)
            ended = await mics[index % 2].say(audio[index])
            spoken_s += len(audio[index]) / 96000
            try:
                event = await listener.wait_for(
                    lambda e, sid=speaker.session_id: e["type"] == "caption"
                    and e["session_id"] == sid, 20, since=since)
                latencies.append(time.monotonic() - ended)
                await asyncio.sleep(PAUSE_S)
                texts = [e["text"] for e in listener.events[since:]
                         if e["type"] == "caption" and e["session_id"] == speaker.session_id]
                live_pairs.append((sentence, " ".join(texts) or event["text"]))
            except TimeoutError:
                live_pairs.append((sentence, ""))
        captions_cpu = cpu_seconds(worker) - cpu0
        admin.post(f"/api/v1/jobs/{captions['id']}/stop")
        admin.post(f"/api/v1/jobs/{recording['id']}/stop")
        job: dict = {}
        for _ in range(1200):
            job = admin.get(f"/api/v1/jobs/{recording['id']}").json()
            info = job.get("output_data", {}).get("transcript")
            if info and info["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.25)
        jobs = admin.get("/api/v1/jobs?limit=10").json()["jobs"]
        transcription = next(j for j in jobs if j["type"] == "transcription")
        vtt = admin.get(f"/api/v1/jobs/{recording['id']}/files/transcript.vtt").text
        names = {p.session_id: p.name for p in people}
        heard: dict[str, list[str]] = {name: [] for name in names.values()}
        for block in vtt.split("\n\n")[1:]:
            payload = block.strip().split("\n")[-1]
            if payload.startswith("<v "):
                name, _, text = payload[3:].partition(">")
                heard.setdefault(name, []).append(text)
        file_pairs = [(" ".join(s for i, s in enumerate(SENTENCES) if i % 2 == n),
                       " ".join(heard.get(f"Speaker {n + 1}", []))) for n in (0, 1)]
        out = transcription["output_data"]
        return {"latencies": latencies, "live_wer": wer(live_pairs),
                "file_wer": wer(file_pairs), "spoken_s": spoken_s,
                "captions_cpu_per_min": 60 * captions_cpu / spoken_s,
                "job_cpu_per_min": 60 * out["cpu_s"] / max(out["audio_s"], 1e-9),
                "job_audio_s": out["audio_s"], "job_elapsed_s": out["elapsed_s"],
                "captioned": sum(1 for _, h in live_pairs if h)}
    finally:
        for person in people:
            await person.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def render(engine_wer: float, engine_cpu: float, r: dict, command: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} vCPU, {platform.machine()}, Python {platform.python_version()}"
    lat = r["latencies"]
    return "\n".join([
        f"Command: `{command}`  ",
        f"Measured: {when} on {machine}; pocketsphinx with its bundled en-US model; "
        f"{len(SENTENCES)} sentences, voices {' and '.join(VOICES)} (espeak-ng, 140 words/min).",
        "",
        "| path | WER | CPU s |",
        "|---|---:|---:|",
        f"| engine alone (espeak-ng 16 kHz straight in) | {100 * engine_wer:.0f} % "
        f"| {engine_cpu:.1f} per minute of speech |",
        f"| live captions (Opus through the SFU, captions worker) | {100 * r['live_wer']:.0f} % "
        f"| {r['captions_cpu_per_min']:.1f} per minute of speech (the whole worker: "
        "receiving and decoding both microphones all the time, cutting, engine) |",
        f"| transcript of the recording (transcription job) | {100 * r['file_wer']:.0f} % "
        f"| {r['job_cpu_per_min']:.1f} per minute of recorded microphone audio "
        f"({r['job_audio_s']:.0f} s over 2 speakers, {r['spoken_s']:.0f} s of it speech; "
        f"done in {r['job_elapsed_s']:.0f} s) |",
        "",
        f"Caption latency, end of the sentence at the microphone to the caption at the other "
        f"participant ({len(lat)} of {len(SENTENCES)} sentences captioned): p50 "
        f"**{percentile(lat, 0.5):.2f} s**, p95 **{percentile(lat, 0.95):.2f} s** "
        f"(mean {statistics.mean(lat):.2f} s; 0.6 s of it is the pause that ends an "
        "utterance).",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="update this results file in place")
    args = parser.parse_args()
    engine_wer, engine_cpu = engine_only()
    result = asyncio.run(in_a_call())
    body = render(engine_wer, engine_cpu, result, "python bench/transcription.py")
    print(body)
    if args.write:
        write_section(args.write, "transcription", body)


if __name__ == "__main__":
    main()
