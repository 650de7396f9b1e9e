"""A transcription job from start to finish, inside its worker process.

Input: a finished recording's directory (its metadata.json lists each
speaker's audio file, name and session). Each speaker's audio is decoded,
cut into utterances and transcribed; the cues of everyone are merged into
transcript.vtt and transcript.txt, written beside the recording so they are
listed and downloaded with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

from callsctl_sfu.jobs.transcribe.audio import Segmenter, decode
from callsctl_sfu.jobs.transcribe.engine import Engine, EngineError, load_engine
from callsctl_sfu.jobs.transcribe.transcript import (
    TEXT_FILE,
    VTT_FILE,
    Cue,
    plain_text,
    webvtt,
)

log = logging.getLogger("callsctl_sfu.jobs.transcribe")

METADATA_FILE = "metadata.json"


def speaker_tracks(recording_dir: Path) -> list[dict[str, Any]]:
    """The microphone tracks of a recording, from its metadata.json."""
    try:
        metadata = json.loads((recording_dir / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise EngineError(f"no recording in {recording_dir} (its {METADATA_FILE} is missing; "
                          "was it recorded on another machine?)") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {recording_dir / METADATA_FILE}: {exc}") from None
    return [t for t in metadata.get("tracks", []) if t.get("kind") == "audio"]


def transcribe_track(engine: Engine, path: Path, speaker: str, session_id: str) -> \
        tuple[list[Cue], float]:
    """Cues of one speaker's file, and the seconds of audio it held."""
    segmenter = Segmenter()
    cues: list[Cue] = []

    def add(utterances: list[Any]) -> None:
        for utterance in utterances:
            words = engine.transcribe(utterance.pcm)
            if words:
                cues.append(Cue(utterance.start + words[0].start,
                                utterance.start + words[-1].end, speaker,
                                " ".join(w.text for w in words), session_id))

    for chunk in decode(path):
        add(segmenter.feed(chunk))
    add(segmenter.flush())
    return cues, segmenter.position_s


def transcribe_recording(spec: dict[str, Any]) -> dict[str, Any]:
    recording_dir = Path(spec["recording_dir"])
    tracks = speaker_tracks(recording_dir)
    engine = load_engine(spec.get("engine") or "pocketsphinx", spec.get("model") or "",
                         spec.get("language") or "en-US")
    started, cpu_before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    cues: list[Cue] = []
    audio_s = 0.0
    for track in tracks:
        path = recording_dir / track["file"]
        if not path.is_file():
            raise EngineError(f"the recording has no file {track['file']} any more")
        found, seconds = transcribe_track(engine, path, track.get("name") or "?",
                                          track.get("session_id", ""))
        log.info("%s (%s): %d cue(s) in %.1f s of audio", track["file"], track.get("name"),
                 len(found), seconds)
        cues += found
        audio_s += max(0.0, seconds - float(track.get("start_s", 0.0)))
    (recording_dir / VTT_FILE).write_text(webvtt(cues))
    (recording_dir / TEXT_FILE).write_text(plain_text(cues))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"recording": spec["recording"], "recording_directory": str(recording_dir),
            "files": [VTT_FILE, TEXT_FILE], "cues": len(cues),
            "speakers": sorted({c.speaker for c in cues}), "engine": engine.name,
            "audio_s": round(audio_s, 1), "cpu_s": round(cpu, 2),
            "elapsed_s": round(time.monotonic() - started, 2)}


async def transcribe(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(transcribe_recording, spec)
    except EngineError as exc:
        return {"recording": spec.get("recording"), "error": str(exc)}
