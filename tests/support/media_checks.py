"""What a person would check in a recording, done with ffprobe/ffmpeg: streams,
durations, start times, which tone is audible when (Goertzel, one frequency
bin of a DFT), and what a video frame shows."""

from __future__ import annotations

import json
import math
import subprocess
from array import array
from pathlib import Path
from typing import Any

PCM_RATE = 8000


def probe(path: Path) -> dict[str, Any]:
    """ffprobe's streams and format of one file (raises if ffprobe cannot read it)."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout)


def codecs(path: Path) -> dict[str, str]:
    return {s["codec_type"]: s["codec_name"] for s in probe(path)["streams"]}


def start_time(path: Path) -> float:
    return float(probe(path)["streams"][0]["start_time"])


def duration(path: Path) -> float:
    return float(probe(path)["format"]["duration"])


def decoded_duration(path: Path) -> float:
    """Seconds of audio that actually decode (what a player can play)."""
    return len(pcm(path)) / PCM_RATE


def pcm(path: Path, keep_start: bool = False) -> array:
    """The file's audio as mono 8 kHz samples; with keep_start, silence before its start."""
    command = ["ffmpeg", "-v", "error", "-i", str(path)]
    if keep_start:
        command += ["-af", "aresample=async=1:first_pts=0"]
    command += ["-ac", "1", "-ar", str(PCM_RATE), "-f", "s16le", "-"]
    raw = subprocess.run(command, capture_output=True, timeout=60, check=True).stdout
    samples = array("h")
    samples.frombytes(raw[: len(raw) // 2 * 2])
    return samples


def tone_level(samples: array, frequency: float, start_s: float, end_s: float) -> float:
    """RMS amplitude (0..32767) of `frequency` in [start_s, end_s) by the Goertzel algorithm."""
    window = samples[int(start_s * PCM_RATE): int(end_s * PCM_RATE)]
    if not window:
        return 0.0
    coefficient = 2 * math.cos(2 * math.pi * frequency / PCM_RATE)
    previous = before = 0.0
    for sample in window:
        previous, before = sample + coefficient * previous - before, previous
    power = previous * previous + before * before - coefficient * previous * before
    return math.sqrt(max(power, 0.0)) * math.sqrt(2) / len(window)


def frame_mean(path: Path, at_s: float, crop: str = "iw:ih:0:0") -> tuple[float, float, float]:
    """Mean R, G, B of the (cropped) video frame at `at_s`."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", f"{at_s:.2f}", "-i", str(path), "-frames:v", "1",
         "-vf", f"crop={crop},scale=64:36", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, timeout=60, check=True).stdout
    count = len(raw) // 3 or 1
    return (sum(raw[0::3]) / count, sum(raw[1::3]) / count, sum(raw[2::3]) / count)
