"""The one file a person plays: an MP4 (H.264 + AAC) made by ffmpeg from the track files.

Like Mattermost's recorder: every voice mixed; the screen share fills the
frame when there is one; otherwise a grid of the cameras, or the speakers'
names on a plain background when nobody had a camera on. 1280x720 at 15 fps,
about 1 Mbit/s, Mattermost's default quality.

Each track file starts at its own offset in the recording (writers.py); ffmpeg
restarts every input at 0, so the offsets come back as `adelay` (audio) and as
presentation-time shifts before `overlay` (video). Gaps inside an audio track
(a muted speaker sends nothing) are filled with silence by `aresample=async`.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

from callsctl_sfu.errors import CallsctlError

log = logging.getLogger("callsctl_sfu.jobs.recorder")

WIDTH, HEIGHT, FPS = 1280, 720, 15
VIDEO_BITRATE = "1M"
AUDIO_BITRATE = "128k"
COMPOSED_FILE = "recording.mp4"


class ComposeError(CallsctlError, RuntimeError):
    """ffmpeg is missing or failed; the message has its last error line."""
    code = "compose_failed"


def _escape(text: str) -> str:
    """Text for drawtext inside a filter graph (both levels of escaping)."""
    for char in ("\\", "'", ":", ",", ";", "[", "]", "%"):
        text = text.replace(char, "\\" + char)
    return text


def build_command(tracks: list[dict[str, Any]], directory: Path, duration: float,
                  output: Path, names: list[str], with_text: bool = True) -> list[str]:
    """The ffmpeg command line composing `tracks` (dicts from RecorderSession.tracks)."""
    inputs: list[str] = []
    filters: list[str] = []
    audio = [t for t in tracks if t["kind"] in ("audio", "screenaudio")]
    screens = [t for t in tracks if t["kind"] == "screen"]
    cameras = [t for t in tracks if t["kind"] == "video"]
    index = 0
    audio_labels = []
    for track in audio:
        inputs += ["-i", str(directory / track["file"])]
        delay = max(0, round(track["start_s"] * 1000))
        filters.append(f"[{index}:a]aresample=48000:async=1:first_pts=0,"
                       f"adelay={delay}:all=1[a{index}]")
        audio_labels.append(f"[a{index}]")
        index += 1
    if audio_labels:
        if len(audio_labels) > 1:
            filters.append(f"{''.join(audio_labels)}amix=inputs={len(audio_labels)}:"
                           "duration=longest:normalize=0[aout]")
        else:
            filters.append(f"{audio_labels[0]}anull[aout]")
    else:
        filters.append(f"anullsrc=r=48000:cl=mono,atrim=0:{duration:.3f}[aout]")
    filters.append(f"color=c=0x202020:s={WIDTH}x{HEIGHT}:r={FPS}:d={duration:.3f}[base0]")
    current = "base0"
    inputs_so_far = index

    def place(track: dict[str, Any], width: int, height: int, x: int, y: int) -> None:
        """Overlay one video file at its time offset; after it ends, what is below shows."""
        nonlocal current, inputs_so_far
        n = inputs_so_far
        inputs.extend(["-i", str(directory / track["file"])])
        filters.append(
            f"[{n}:v]setpts=PTS-STARTPTS+{track['start_s']:.3f}/TB,"
            f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2[v{n}]")
        filters.append(f"[{current}][v{n}]overlay={x}:{y}:eof_action=pass[o{n}]")
        current = f"o{n}"
        inputs_so_far += 1

    if cameras:
        columns = math.ceil(math.sqrt(len(cameras)))
        rows = math.ceil(len(cameras) / columns)
        cell_w, cell_h = WIDTH // columns // 2 * 2, HEIGHT // rows // 2 * 2
        for n, track in enumerate(cameras):
            place(track, cell_w, cell_h, (n % columns) * cell_w, (n // columns) * cell_h)
    elif names and with_text:
        lines = "\n".join(names[:12])
        filters.append(f"[{current}]drawtext=font=Sans:fontcolor=white:fontsize=40:"
                       f"line_spacing=16:x=(w-text_w)/2:y=(h-text_h)/2:"
                       f"text='{_escape(lines)}'[named]")
        current = "named"
    for track in screens:  # while a screen is shared (one at a time) it fills the frame
        place(track, WIDTH, HEIGHT, 0, 0)
    filters.append(f"[{current}]format=yuv420p[vout]")
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs,
            "-filter_complex", ";".join(filters), "-map", "[vout]", "-map", "[aout]",
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", VIDEO_BITRATE,
            "-r", str(FPS), "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-t", f"{duration:.3f}",
            "-movflags", "+faststart", str(output)]


def compose(tracks: list[dict[str, Any]], directory: Path, duration: float,
            names: list[str], timeout: float | None = None) -> Path:
    """Run ffmpeg; returns the MP4's path or raises ComposeError with ffmpeg's reason."""
    if shutil.which("ffmpeg") is None:
        raise ComposeError("ffmpeg is not installed (Debian: apt-get install ffmpeg); the "
                           "per-track files are kept")
    output = directory / COMPOSED_FILE
    partial = directory / f".{COMPOSED_FILE}.part.mp4"
    attempts = [True, False] if names else [False]
    last = ""
    for with_text in attempts:
        command = build_command(tracks, directory, max(duration, 0.5), partial, names,
                                with_text)
        log.info("composing %s: %s", output.name, " ".join(command))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ComposeError(f"ffmpeg took longer than {timeout:g} s") from None
        if result.returncode == 0:
            partial.replace(output)
            return output
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        log.warning("ffmpeg failed (%s)%s", last, "; retrying without names" if with_text
                    and len(attempts) > 1 else "")
    partial.unlink(missing_ok=True)
    if "No space left" in last:
        raise ComposeError(f"disk full while composing {COMPOSED_FILE} ({last}); the "
                           "per-track files are kept")
    raise ComposeError(f"ffmpeg could not compose {COMPOSED_FILE}: {last}")
