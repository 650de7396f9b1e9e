"""The live captions worker: hear every speaker, cut utterances, caption them.

It joins like the recorder (transcribe reuses RecorderSession's join and
signaling) with a `captions` role. Audio goes through bounded queues so a
slow transcriber never backs up into aiortc, let alone the SFU:

    track.recv() --(frames, per speaker, bounded: drop = buf_full)--> resample to
    16 kHz, cut utterances --(windows, all speakers, bounded: drop =
    window_dropped)--> engine (one thread) --> `caption` over signaling

The server turns the drop counts (`captions_stats`) into /metrics counters.
Video and screen tracks are not decoded: their frames are tapped and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from callsctl_sfu.jobs.recorder.run import _client_ssl
from callsctl_sfu.jobs.recorder.session import RecorderSession, tap_receiver
from callsctl_sfu.jobs.transcribe.audio import Segmenter, Utterance
from callsctl_sfu.jobs.transcribe.engine import SAMPLE_RATE, Engine, EngineError, load_engine

log = logging.getLogger("callsctl_sfu.jobs.captions")

FRAME_QUEUE = 50  # per speaker: 1 s of 20 ms frames
WINDOW_QUEUE = 4  # utterances waiting for the engine, all speakers together
STATS_EVERY_S = 1.0
GAP_S = 0.5  # audio missing for longer than this is a gap in the speaker's time line

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class _Speaker:
    session_id: str
    frames: asyncio.Queue[Any]
    segmenter: Segmenter = field(default_factory=Segmenter)
    resampler: Any = None
    started_at: float = 0.0  # wall clock of its first frame
    task: asyncio.Task[None] | None = None


class CaptionPipeline:
    """Bounded queues between arriving audio, utterance cutting and the engine."""

    def __init__(self, engine: Engine, send: Send, frame_queue: int = FRAME_QUEUE,
                 window_queue: int = WINDOW_QUEUE) -> None:
        self.engine = engine
        self.send = send
        self.frame_queue = frame_queue
        self.windows: asyncio.Queue[tuple[_Speaker, Utterance]] = asyncio.Queue(window_queue)
        self.speakers: dict[str, _Speaker] = {}
        self.window_dropped = 0
        self.buf_full = 0
        self.captions = 0
        self.audio_s = 0.0
        self._reported = (0, 0)
        self._transcriber: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._transcriber = asyncio.create_task(self._transcribe_loop())

    async def close(self) -> None:
        tasks = [s.task for s in self.speakers.values() if s.task] + \
            ([self._transcriber] if self._transcriber else [])
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def push(self, session_id: str, frame: av.AudioFrame) -> None:
        """One decoded frame of a speaker; never blocks (a full queue drops it)."""
        speaker = self.speakers.get(session_id)
        if speaker is None:
            speaker = self.speakers[session_id] = _Speaker(
                session_id, asyncio.Queue(self.frame_queue), started_at=time.time(),
                resampler=av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE))
            speaker.task = asyncio.create_task(self._cut_loop(speaker))
        try:
            speaker.frames.put_nowait((frame, time.time()))
        except asyncio.QueueFull:  # the time line catches up in _cut_loop (a gap)
            self.buf_full += 1

    def flush(self) -> None:
        """The stream ended: utterances in progress are cut now."""
        for speaker in self.speakers.values():
            for utterance in speaker.segmenter.flush():
                self._window(speaker, utterance)

    async def _cut_loop(self, speaker: _Speaker) -> None:
        while True:
            frame, arrived = await speaker.frames.get()
            # A muted speaker sends nothing (the SFU drops muted audio): when audio comes
            # back, the speaker's clock jumps to the wall clock so captions keep true times.
            gap = arrived - (speaker.started_at + speaker.segmenter.position_s) - \
                frame.samples / max(1, frame.sample_rate)
            if gap > GAP_S:
                for utterance in speaker.segmenter.skip(gap):
                    self._window(speaker, utterance)
            pcm = b"".join(bytes(out.planes[0])[: out.samples * 2]
                           for out in speaker.resampler.resample(frame))
            self.audio_s += len(pcm) / (2 * SAMPLE_RATE)
            for utterance in speaker.segmenter.feed(pcm):
                self._window(speaker, utterance)

    def _window(self, speaker: _Speaker, utterance: Utterance) -> None:
        try:
            self.windows.put_nowait((speaker, utterance))
        except asyncio.QueueFull:  # the engine is behind: this utterance gets no caption
            self.window_dropped += 1

    async def _transcribe_loop(self) -> None:
        while True:
            speaker, utterance = await self.windows.get()
            try:
                words = await asyncio.to_thread(self.engine.transcribe, utterance.pcm)
            except Exception:
                log.exception("the engine failed on an utterance; it is skipped")
                continue
            if not words:
                continue
            start = speaker.started_at + utterance.start + words[0].start
            end = speaker.started_at + utterance.start + words[-1].end
            self.captions += 1
            with contextlib.suppress(Exception):  # signaling gone: the session ends anyway
                await self.send({"type": "caption", "session_id": speaker.session_id,
                                 "text": " ".join(w.text for w in words),
                                 "start": round(start, 3), "end": round(max(end, start), 3)})

    def stats(self) -> dict[str, Any] | None:
        """`captions_stats` with what was dropped since the last report, or None."""
        window, full = self.window_dropped - self._reported[0], self.buf_full - self._reported[1]
        if not window and not full:
            return None
        self._reported = (self.window_dropped, self.buf_full)
        return {"type": "captions_stats", "window_dropped": window, "buf_full": full}


class CaptionsSession(RecorderSession):
    """The recorder's join and signaling; audio goes to a CaptionPipeline, not to files."""

    display_name = "Captions"

    def __init__(self, ws_url: str, token: str, call: str, directory: Path, engine: Engine,
                 ssl: Any = None) -> None:
        super().__init__(ws_url, token, call, directory, ssl)
        self.pipeline = CaptionPipeline(engine, self._send)

    def _on_track(self, track: Any) -> None:
        assert self._pc is not None
        publisher, _, label = track.id.rpartition("-")
        if label != "audio":  # cameras and screens: tap the frames away undecoded
            receiver = next((t.receiver for t in self._pc.getTransceivers()
                             if t.receiver.track is track), None)
            if receiver is not None:
                with contextlib.suppress(Exception):
                    tap_receiver(receiver, lambda _data, _ts: None)
            return
        self._tasks.append(asyncio.create_task(self._receive(track, publisher)))

    async def _receive(self, track: Any, publisher: str) -> None:
        with contextlib.suppress(Exception):  # MediaStreamError: the track ended
            while True:
                self.pipeline.push(publisher, await track.recv())


async def caption(spec: dict[str, Any], directory: Path,
                  stopped_early: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    try:
        engine = await asyncio.to_thread(load_engine, spec.get("engine") or "pocketsphinx",
                                         spec.get("model") or "",
                                         spec.get("language") or "en-US")
    except EngineError as exc:
        return {"call": spec["call"], "error": str(exc)}
    session = CaptionsSession(spec["ws_url"], spec["token"], spec["call"], directory, engine,
                              _client_ssl(spec["ws_url"]))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, session.stop, "stopped")
    if stopped_early():
        session.stop("stopped")
    pipeline = session.pipeline
    pipeline.start()

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            stats = pipeline.stats()
            if stats is not None:
                with contextlib.suppress(Exception):
                    await session._send(stats)

    reporter = asyncio.create_task(report())
    try:
        await session.start()
        try:
            await asyncio.wait_for(session.ended.wait(), float(spec.get("max_duration", 3600)))
        except TimeoutError:
            session.stop("max_duration")
    finally:
        reporter.cancel()
        stats = pipeline.stats()
        if stats is not None:
            with contextlib.suppress(Exception):
                await session._send(stats)
        await pipeline.close()
        await session.close()
    result = {"call": spec["call"], "started_at": session.started_at,
              "stopped_at": time.time(), "duration_s": round(time.time() - session.started_at, 3),
              "stop_reason": session.end_reason, "captions": pipeline.captions,
              "audio_s": round(pipeline.audio_s, 1), "window_dropped": pipeline.window_dropped,
              "buf_full": pipeline.buf_full, "files": []}
    with contextlib.suppress(OSError):
        (directory / "captions.json").write_text(json.dumps(result, indent=2))
    log.info("captioned %.1f s of audio: %d caption(s), dropped %d window(s) and %d frame(s)",
             pipeline.audio_s, pipeline.captions, pipeline.window_dropped, pipeline.buf_full)
    if session.failure is not None:
        result["error"] = str(session.failure)
    return result
