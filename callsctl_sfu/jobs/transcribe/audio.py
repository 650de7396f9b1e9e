"""Audio for the engines: decoding recordings to 16 kHz mono, and cutting utterances.

Cutting is by energy: a 20 ms frame louder than a threshold is voiced, an
utterance ends after a pause (hangover) and is cut at a maximum length so a
long monologue still gives captions. The recorded files carry their place on
the recording's time line (Ogg granule positions, the track's start offset),
and ffmpeg's `aresample=async=1:first_pts=0` turns that into samples from the
recording's start, gaps (muted moments) filled with silence, so a cue's time is
a sample count.
"""

from __future__ import annotations

import math
import subprocess
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from callsctl_sfu.jobs.transcribe.engine import SAMPLE_RATE, EngineError

FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2
DECODE_CHUNK = FRAME_BYTES * 50


def decode_command(path: Path) -> list[str]:
    return ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-vn",
            "-af", "aresample=async=1:first_pts=0", "-ar", str(SAMPLE_RATE), "-ac", "1",
            "-f", "s16le", "-"]


def decode(path: Path) -> Iterator[bytes]:
    """16 kHz mono s16le PCM of `path` from the recording's start, in ~1 s chunks."""
    try:
        process = subprocess.Popen(decode_command(path), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise EngineError("ffmpeg is not installed; transcription decodes the recordings "
                          "with it (apt-get install ffmpeg)") from None
    assert process.stdout is not None and process.stderr is not None
    try:
        while chunk := process.stdout.read(DECODE_CHUNK):
            yield chunk
    finally:
        process.stdout.close()
        error = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        if process.wait() != 0:
            raise EngineError(f"ffmpeg cannot decode {path.name}: "
                              f"{error.splitlines()[-1] if error else 'no reason given'}")


def level_dbfs(frame: bytes) -> float:
    """RMS level of s16le PCM in dB below full scale (-100 for digital silence)."""
    samples = array("h", frame[: len(frame) // 2 * 2])
    if not samples:
        return -100.0
    power = sum(s * s for s in samples) / len(samples)
    return 10 * math.log10(power / (32768.0 ** 2)) if power > 0 else -100.0


@dataclass
class Utterance:
    """Voiced audio with its place (seconds from the stream's start)."""

    start: float
    end: float
    pcm: bytes = b""


@dataclass
class Segmenter:
    """Feed 16 kHz PCM in any chunk size; get utterances as their pauses arrive."""

    threshold_dbfs: float = -45.0
    hangover_s: float = 0.6
    max_s: float = 12.0
    min_voiced_s: float = 0.15
    preroll_s: float = 0.2
    _pending: bytes = b""
    _position: int = 0  # frames seen
    _current: bytearray | None = None
    _start: int = 0
    _last_voiced: int = 0
    _voiced: int = 0
    _history: list[bytes] = field(default_factory=list)

    def feed(self, pcm: bytes) -> list[Utterance]:
        done: list[Utterance] = []
        data = self._pending + pcm
        whole = len(data) // FRAME_BYTES * FRAME_BYTES
        self._pending = data[whole:]
        for offset in range(0, whole, FRAME_BYTES):
            frame = data[offset:offset + FRAME_BYTES]
            utterance = self._frame(frame)
            if utterance is not None:
                done.append(utterance)
        return done

    def flush(self) -> list[Utterance]:
        """The utterance in progress at the end of the stream (or of a stretch), if any."""
        if self._current is None:
            return []
        return [u for u in (self._close(),) if u is not None]

    def skip(self, seconds: float) -> list[Utterance]:
        """Audio that never arrived (muted, dropped): time moves on, an utterance ends."""
        done = self.flush()
        self._history.clear()
        self._position += int(seconds * 50)
        return done

    @property
    def position_s(self) -> float:
        return self._position / 50

    def _frame(self, frame: bytes) -> Utterance | None:
        index = self._position
        self._position += 1
        voiced = level_dbfs(frame) > self.threshold_dbfs
        if self._current is None:
            self._history.append(frame)
            preroll = int(self.preroll_s * 50)
            if len(self._history) > preroll + 1:
                del self._history[0]
            if voiced:
                self._current = bytearray(b"".join(self._history))
                self._start = index + 1 - len(self._history)
                self._history.clear()
                self._last_voiced, self._voiced = index, 1
            return None
        self._current += frame
        if voiced:
            self._last_voiced = index
            self._voiced += 1
        too_long = index - self._start + 1 >= self.max_s * 50
        if too_long or index - self._last_voiced >= self.hangover_s * 50:
            return self._close()
        return None

    def _close(self) -> Utterance | None:
        assert self._current is not None
        pcm, start, voiced = bytes(self._current), self._start, self._voiced
        end = self._last_voiced + 1
        self._current = None
        self._voiced = 0
        if voiced < self.min_voiced_s * 50:
            return None
        return Utterance(start / 50, end / 50, pcm)
