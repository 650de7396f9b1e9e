"""Synthetic media sources, encoded once: speech-like Opus and generated VP8 as RTP payloads.

A pure tone would make libopus produce unrealistically small packets and a
static picture would encode to almost nothing, so the signals are shaped to
spend a realistic bitrate. Each sample is encoded once per process (cached)
and replayed in a loop by every sender: no per-packet encoding.
"""

from __future__ import annotations

import fractions
import functools
import math
import random
from array import array
from dataclasses import dataclass

import av

AUDIO_CLOCK = 48000
AUDIO_FRAME = 960  # 20 ms
AUDIO_BITRATE = 80_000  # the deployment guide's speech sample
CAMERA_SIZE, CAMERA_FPS, CAMERA_BITRATE = (640, 360), 30, 500_000
SCREEN_SIZE, SCREEN_FPS, SCREEN_BITRATE = (1280, 720), 15, 1_600_000  # the guide's screen sample
# The simulcast screen's low layer: half the resolution, a quarter of the bitrate.
SCREEN_LOW_SIZE, SCREEN_LOW_BITRATE = (640, 360), 400_000
VIDEO_CLOCK = 90000
VP8_MAX_PAYLOAD = 1200


@dataclass(frozen=True)
class MediaSample:
    """A recording as RTP payloads: frames of packets, replayed in a loop.

    `levels` (audio only) are the RFC 6464 octets (voice flag | -dBov) per frame,
    measured from the PCM before encoding, which is what a browser sends.
    """

    name: str
    kind: str
    clock_rate: int
    frame_ticks: int
    interval: float
    frames: tuple[tuple[bytes, ...], ...]
    levels: tuple[int, ...] = ()

    @property
    def bitrate(self) -> float:
        """Average payload bitrate of one loop, bits per second."""
        octets = sum(len(p) for frame in self.frames for p in frame)
        return 8 * octets / (len(self.frames) * self.interval)

    @property
    def packets_per_second(self) -> float:
        return sum(len(frame) for frame in self.frames) / (len(self.frames) * self.interval)


def _speech_like_pcm(seconds: float, seed: int = 1) -> bytes:
    """Mono s16 PCM that encodes like speech: voiced harmonics, syllables and pauses.

    A pure tone would make libopus produce unrealistically small packets; this
    keeps a varying pitch, a 4 Hz syllable envelope and a short pause every 2.5 s.
    """
    rng = random.Random(seed)
    count = int(seconds * AUDIO_CLOCK)
    out = array("h", bytes(2 * count))
    two_pi = 2 * math.pi
    phase = 0.0
    for n in range(count):
        t = n / AUDIO_CLOCK
        pitch = 130 + 25 * math.sin(two_pi * 0.7 * t)
        phase += two_pi * pitch / AUDIO_CLOCK
        envelope = 0.0 if t % 2.5 > 1.9 else 0.5 * (1 - math.cos(two_pi * 4 * t))
        voiced = math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.33 * math.sin(3 * phase)
        out[n] = int(9000 * envelope * voiced + rng.uniform(-150, 150))
    return out.tobytes()


def _level_octet(pcm: bytes) -> int:
    samples = array("h", pcm)
    rms = math.sqrt(sum(s * s for s in samples) / max(1, len(samples))) / 32768
    dbov = 127 if rms <= 0 else min(127, max(0, int(round(-20 * math.log10(rms)))))
    return (0x80 if dbov < 50 else 0) | dbov


@functools.lru_cache(maxsize=4)
def opus_sample(seconds: float = 5.0, bitrate: int = AUDIO_BITRATE) -> MediaSample:
    """`seconds` of speech-like audio as 20 ms Opus payloads (libopus via PyAV)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_CLOCK
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, AUDIO_CLOCK)
    codec.options = {"application": "voip"}
    pcm = _speech_like_pcm(seconds)
    frame_bytes = 2 * AUDIO_FRAME
    payloads: list[bytes] = []
    levels: list[int] = []
    for index in range(len(pcm) // frame_bytes):
        chunk = pcm[index * frame_bytes:(index + 1) * frame_bytes]
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME)
        frame.planes[0].update(chunk)
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = index * AUDIO_FRAME
        frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        payloads += [bytes(p) for p in codec.encode(frame)]
        levels.append(_level_octet(chunk))
    payloads += [bytes(p) for p in codec.encode(None)]
    payloads = payloads[:len(levels)]
    return MediaSample("opus", "audio", AUDIO_CLOCK, AUDIO_FRAME, AUDIO_FRAME / AUDIO_CLOCK,
                       tuple((p,) for p in payloads), tuple(levels[:len(payloads)]))


def _vp8_payloads(frame: bytes) -> tuple[bytes, ...]:
    """RFC 7741 packetization with the one-octet descriptor (S bit on the first packet)."""
    chunks = [frame[i:i + VP8_MAX_PAYLOAD - 1] for i in range(0, len(frame), VP8_MAX_PAYLOAD - 1)]
    return tuple((b"\x10" if i == 0 else b"\x00") + chunk for i, chunk in enumerate(chunks))


@functools.lru_cache(maxsize=4)
def vp8_sample(name: str, size: tuple[int, int], fps: int, bitrate: int,
               seconds: float = 2.0) -> MediaSample:
    """`seconds` of generated video as VP8 frames (libvpx via PyAV), keyframe first.

    The picture is a gradient with a moving block of noise, so a CBR encoder
    really spends its bitrate (a static picture would encode to almost nothing).
    """
    width, height = size
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fps
    codec.gop_size = 100_000  # one keyframe per loop: the first frame
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                     "minrate": str(bitrate), "maxrate": str(bitrate), "bufsize": str(bitrate),
                     "undershoot-pct": "95", "overshoot-pct": "15", "static-thresh": "0"}
    rng = random.Random(7)
    gradient = bytes((x * 3) & 0xFF for x in range(width))
    rows = [gradient.translate(bytes((i + 2 * y) & 0xFF for i in range(256)))
            for y in range(height)]
    block_w, block_h = width // 4, height // 4
    frames: list[tuple[bytes, ...]] = []
    for index in range(int(seconds * fps)):
        picture = av.VideoFrame(width, height, "yuv420p")
        luma = picture.planes[0]
        stride = luma.line_size
        plane = bytearray(stride * height)
        for y, row in enumerate(rows):
            plane[y * stride:y * stride + width] = row
        ox = (index * 8) % (width - block_w)
        oy = (index * 4) % (height - block_h)
        for r in range(block_h):
            start = (oy + r) * stride + ox
            plane[start:start + block_w] = rng.randbytes(block_w)
        luma.update(bytes(plane))
        for chroma in picture.planes[1:]:
            chroma.update(b"\x80" * (chroma.line_size * chroma.height))
        picture.pts = index
        picture.time_base = fractions.Fraction(1, fps)
        encoded = b"".join(bytes(p) for p in codec.encode(picture))
        if encoded:
            frames.append(_vp8_payloads(encoded))
    return MediaSample(name, "video", VIDEO_CLOCK, VIDEO_CLOCK // fps, 1 / fps, tuple(frames))


def camera_sample() -> MediaSample:
    return vp8_sample("camera", CAMERA_SIZE, CAMERA_FPS, CAMERA_BITRATE)


def screen_sample() -> MediaSample:
    return vp8_sample("screen", SCREEN_SIZE, SCREEN_FPS, SCREEN_BITRATE)


def screen_low_sample() -> MediaSample:
    """The simulcast screen's `l` layer: same picture and frame rate as `screen`, smaller."""
    return vp8_sample("screen-l", SCREEN_LOW_SIZE, SCREEN_FPS, SCREEN_LOW_BITRATE)
