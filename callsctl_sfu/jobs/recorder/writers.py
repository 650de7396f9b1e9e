"""Per-track files without re-encoding: Opus into Ogg, VP8 into WebM (PyAV muxers).

The frames arrive already reassembled by aiortc's jitter buffer, with RTP
timestamps unwrapped to start at 0 (its timestamp mapper). Each file's
timestamps are `offset + RTP timestamp`, where the offset is when the track's
first frame reached the recorder, measured from the start of the recording:
so all files of one recording share one time line and line up in any player
or in the composer (RFC 3550 §5.1: the RTP clock is the media's sampling clock,
48 kHz for Opus (RFC 7587), 90 kHz for VP8 (RFC 7741)).

Files are written as they go (Ogg pages, WebM clusters in live mode), so a
worker that is killed leaves files that still open and play up to the kill.
"""

from __future__ import annotations

import fractions
import logging
from pathlib import Path
from typing import Any

import av

log = logging.getLogger("callsctl_sfu.jobs.recorder")

OPUS_RATE = 48000
VP8_RATE = 90000


def vp8_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) when `frame` is a VP8 keyframe (RFC 6386 §9.1), else None."""
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


class TrackWriter:
    """One track's file; subclasses choose the container and the codec."""

    suffix = ""
    rate = 1

    def __init__(self, path: Path, offset_s: float) -> None:
        self.path = path
        self.offset = round(offset_s * self.rate)
        self.time_base = fractions.Fraction(1, self.rate)
        self.container: Any = None
        self.stream: Any = None
        self.frames = 0
        self.first_ts: int | None = None
        self.last_ts = 0
        self.last_pts: int | None = None

    def _open(self, **stream_args: Any) -> None:
        raise NotImplementedError

    def write(self, data: bytes, timestamp: int) -> None:
        """Mux one encoded frame; `timestamp` is the unwrapped RTP timestamp from 0."""
        pts = self.offset + timestamp
        if self.last_pts is not None and pts <= self.last_pts:
            return  # a late duplicate: muxers need increasing timestamps
        if self.container is None and not self._ready(data):
            return
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = self.time_base
        packet.stream = self.stream
        self._mark(packet, data)
        self.container.mux(packet)
        self.last_pts = pts
        if self.first_ts is None:
            self.first_ts = timestamp
        self.last_ts = timestamp
        self.frames += 1

    def _ready(self, data: bytes) -> bool:
        self._open()
        return True

    def _mark(self, packet: Any, data: bytes) -> None:
        pass

    @property
    def start_s(self) -> float:
        """Where the file's first frame sits in the recording, in seconds."""
        return (self.offset + (self.first_ts or 0)) / self.rate

    @property
    def duration(self) -> float:
        return 0.0 if self.first_ts is None else (self.last_ts - self.first_ts) / self.rate

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class OpusWriter(TrackWriter):
    """Opus packets as they came (20 ms each from browsers) into an Ogg file."""

    suffix = ".ogg"
    rate = OPUS_RATE

    def _open(self, **_: Any) -> None:
        # flush_packets: each Ogg page reaches the file when it is complete, so a killed
        # worker loses at most the last page (a quarter of a second).
        self.container = av.open(str(self.path), "w", format="ogg",
                                 options={"flush_packets": "1", "page_duration": "250000"})
        # The Opus encoder context is only opened to produce the OpusHead the Ogg muxer
        # needs (RFC 7845 §5.1); it never encodes anything.
        self.stream = self.container.add_stream("libopus", rate=OPUS_RATE, layout="mono")
        self.stream.time_base = self.time_base


class Vp8Writer(TrackWriter):
    """VP8 frames into WebM, starting at the first keyframe (it carries the size)."""

    suffix = ".webm"
    rate = VP8_RATE

    def __init__(self, path: Path, offset_s: float) -> None:
        super().__init__(path, offset_s)
        self.skipped = 0
        self.size: tuple[int, int] | None = None

    def _ready(self, data: bytes) -> bool:
        size = vp8_keyframe_size(data)
        if size is None:  # nothing decodes before a keyframe: wait for one (PLI is sent)
            self.skipped += 1
            return False
        self.size = size
        self.container = av.open(str(self.path), "w", format="webm",
                                 options={"live": "1", "flush_packets": "1"})
        self.stream = self.container.add_mux_stream("vp8", width=size[0], height=size[1])
        self.stream.time_base = fractions.Fraction(1, 1000)
        return True

    def _mark(self, packet: Any, data: bytes) -> None:
        packet.is_keyframe = vp8_keyframe_size(data) is not None


def writer_for(label: str, path_stem: Path, offset_s: float) -> TrackWriter:
    cls: type[TrackWriter] = OpusWriter if label in ("audio", "screenaudio") else Vp8Writer
    return cls(path_stem.with_suffix(cls.suffix), offset_s)
