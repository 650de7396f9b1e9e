"""Synthetic speech as a participant's microphone: espeak-ng sentences played in real time.

Tests and the transcription bench need speech that nobody typed by hand:
espeak-ng (a Debian package) speaks a sentence, ffmpeg resamples it to 48 kHz
mono, and SpeechTrack plays queued sentences as 20 ms frames at the pace of a
real microphone, silence in between. It notes when each sentence finished
playing, which is where caption latency is measured from.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import subprocess
import time

from aiortc import MediaStreamTrack
from av import AudioFrame

from callsctl_sfu.errors import CallsctlError

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2


class SpeechError(CallsctlError, RuntimeError):
    """espeak-ng or ffmpeg is missing or failed; the message says which."""
    code = "speech_unavailable"


def espeak(text: str, voice: str = "en-us+f2", speed: int = 140,
           rate: int = SAMPLE_RATE) -> bytes:
    """`text` spoken by espeak-ng as mono s16le PCM at `rate` Hz."""
    try:
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                             capture_output=True, check=True, timeout=60).stdout
        return subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", "pipe:0",
                               "-ar", str(rate), "-ac", "1", "-f", "s16le", "-"], input=wav,
                              capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError as exc:
        raise SpeechError(f"{exc.filename} is not installed (apt-get install espeak-ng "
                          "ffmpeg)") from None
    except subprocess.CalledProcessError as exc:
        raise SpeechError(f"{exc.cmd[0]} failed: {exc.stderr.decode(errors='replace')[:200]}"
                          ) from None


class SpeechTrack(MediaStreamTrack):
    """A microphone that says what it is given (`say`) and is silent otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None
        self._queue: collections.deque[tuple[bytes, asyncio.Future[float] | None]] = \
            collections.deque()
        self._current = b""
        self._done: asyncio.Future[float] | None = None

    def say(self, pcm: bytes) -> asyncio.Future[float]:
        """Queue 48 kHz mono s16le speech; the future is the monotonic time it ended."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((pcm, future))
        return future

    @property
    def speaking(self) -> bool:
        return bool(self._current or self._queue)

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._pts / SAMPLE_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not self._current and self._queue:
            self._current, self._done = self._queue.popleft()
        chunk, self._current = self._current[:FRAME_BYTES], self._current[FRAME_BYTES:]
        if not self._current and self._done is not None and chunk:
            if not self._done.done():
                self._done.set_result(time.monotonic() + FRAME_SAMPLES / SAMPLE_RATE)
            self._done = None
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(chunk.ljust(FRAME_BYTES, b"\0"))
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pts += FRAME_SAMPLES
        return frame
