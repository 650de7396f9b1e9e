"""Synthetic participants by the hundred: the engine behind `callsctl loadtest` and bench/.

Why not the scripted `Participant` (client/participant.py)? It is a faithful
client, but it encodes Opus per packet, decodes everything it receives and runs
aiortc's jitter buffers and decoder threads: a few dozen of those saturate a
core, and the load generator would measure itself rather than the server. Here:

- Handshakes are real: the same `/ws` signaling as the web client, aiortc for
  ICE, DTLS and the SRTP keys, one UDP socket per participant (max-bundle, one
  host candidate on the address that routes to the server).
- aiortc's per-track machinery is switched off for these connections (its RTP
  sender/receiver loops, decoder threads and RTCP reports), and the received
  datagrams are taken off the participant's socket before aiortc sees them.
- Media is real and encoded once: a generated speech-like signal encoded with
  libopus into a list of payloads (`opus_sample`), a generated picture encoded
  with libvpx into VP8 frames (`vp8_sample`). Every 20 ms (audio) or frame
  interval (video) each sender builds an RTP header, SRTP-protects the packet
  with its own DTLS-derived context and sends it on its socket. No per-packet
  encoding.
- Receivers count datagrams per SSRC without decrypting them (the SSRC is in the
  clear, RFC 3711 §3.1); the SSRC -> publisher map comes from the server's SDP
  (msid `<publisher>-<label>`, the SFU's track ids).

Forwarding delay: every sent packet carries its send time in RTP padding
(RFC 3550 §5.1: P bit set, the last padding octet counts the padding octets).
Padding is part of the payload as far as an SFU is concerned: callsctl's
forwarder rewrites the header, drops foreign header extensions and keeps the P
bit and the payload bytes, so the stamp survives, while a real receiver's
depacketizer strips padding before the decoder (so a browser in the same call
still hears clean Opus). Header extensions would not survive (the SFU drops
unknown ones). The stamp is 12 octets: magic "cl", the sender's
`time.monotonic_ns()` (8 octets), one zero octet and the count octet 12. Sender
and receivers live in this one process, so the clocks agree. Only every Nth
packet of each received stream (`delay_sample_every`) is decrypted to read it,
keeping the receive path cheap; libsrtp's replay window (1024) tolerates the gaps.

Loss: after every participant has joined and every expected stream has
delivered its first packet (or a settle timeout passed), a steady window opens:
per sender the packets sent in it, per receiver the packets received in it
from each sender of its call. Sending stops before the window closes and the
in-flight packets drain, so expected vs received compare the same packets
(up to the few in flight when the window opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import ipaddress
import json
import math
import os
import random
import re
import socket
import struct
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import av
import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtcconfiguration import RTCBundlePolicy

from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.rtc import aiortc_bridge

# -- limits: admission control for every caller (CLI, bench, tests) ----------------------------

MAX_PARTICIPANTS = 1000  # one process cannot hold more: ~3 fds and ~1 MB each, one core
MAX_CALLS = 200
MAX_DURATION_S = 2 * 3600.0
MIN_DURATION_S = 1.0
MAX_JOIN_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 15.0

AUDIO_CLOCK = 48000
AUDIO_FRAME = 960  # 20 ms
AUDIO_BITRATE = 80_000  # the deployment guide's speech sample
CAMERA_SIZE, CAMERA_FPS, CAMERA_BITRATE = (640, 360), 30, 500_000
SCREEN_SIZE, SCREEN_FPS, SCREEN_BITRATE = (1280, 720), 15, 1_600_000  # the guide's screen sample
# The simulcast screen's low layer: half the resolution, a quarter of the bitrate.
SCREEN_LOW_SIZE, SCREEN_LOW_BITRATE = (640, 360), 400_000
SIMULCAST_RIDS = ("l", "h")  # lowest first, the names the Mattermost web app uses
VIDEO_CLOCK = 90000
VP8_MAX_PAYLOAD = 1200

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"  # RFC 8852

_RTP = struct.Struct("!BBHII")
_STAMP = struct.Struct("!2sQBB")
STAMP_MAGIC = b"cl"
STAMP_LEN = _STAMP.size  # 12
MAX_CATCH_UP = 5  # frames one stream may send late in one tick before frames are skipped
MAX_DELAY_SAMPLES = 500_000
RECEIVER_REPORT_INTERVAL = 1.0
SETTLED_DELAY_MS = 100.0  # the window opens once recent forwarding delay is below this
MAX_OK_LOSS = 0.05  # above this a run is reported as failed (exit code 1)


class LoadConfigError(CallsctlError, ValueError):
    """A load-test setting is out of bounds; the message names it and the limit."""
    code = "bad_load_setting"


# -- media samples, encoded once ---------------------------------------------------------------


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


def simulcast_offer(sdp: str, mid: str, rids: Iterable[str] = SIMULCAST_RIDS) -> str:
    """`sdp` with the m-section `mid` offering to send `rids` as simulcast (RFC 8853, 8851).

    aiortc cannot offer simulcast, so its offer is completed the way a browser
    writes one: `a=rid:<rid> send` per layer, `a=simulcast:send l;h` and the
    RtpStreamId extension (RFC 8852) the layers are told apart by, on an id no
    other extension of the offer uses (BUNDLE shares one id space). The
    section's a=ssrc lines go: each layer has its own SSRC, announced by the
    rid in its packets, as browsers do.
    """
    rids = list(rids)
    used = {int(i) for i in re.findall(r"^a=extmap:(\d+)", sdp, flags=re.M)}
    existing = re.search(r"^a=extmap:(\d+)(?:/\w+)? " + re.escape(RID_URI), sdp, flags=re.M)
    free = [i for i in range(1, 15) if i not in used]  # one-byte form: ids 1..14
    if existing is None and not free:
        raise ValueError("no free one-byte header extension id for the rid")
    rid_id = int(existing.group(1)) if existing else free[0]
    out: list[str] = []
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        match = re.search(r"^a=mid:(\S+)", section, flags=re.M)
        if match is None or match.group(1) != mid or "a=simulcast:" in section:
            out.append(section)
            continue
        lines = [line for line in section.rstrip("\r\n").split("\r\n")
                 if not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
        if f" {RID_URI}" not in section:
            lines.append(f"a=extmap:{rid_id} {RID_URI}")
        lines += [f"a=rid:{rid} send" for rid in rids]
        lines.append("a=simulcast:send " + ";".join(rids))
        out.append("\r\n".join(lines) + "\r\n")
    return "".join(out)


def _answer_accepts_simulcast(sdp: str, mid: str) -> bool:
    """Whether the answer's m-section `mid` receives our layers (`a=simulcast:recv`)."""
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        match = re.search(r"^a=mid:(\S+)", section, flags=re.M)
        if match is not None and match.group(1) == mid:
            return re.search(r"^a=simulcast:recv ", section, flags=re.M) is not None
    return False


# -- aiortc: handshake only -------------------------------------------------------------------

_LIGHT_FLAG = "_callsctl_loadgen"
_patched = False


def _install_light_switch() -> None:
    """Make aiortc's RTP senders/receivers inert on connections marked as load-generator ones.

    aiortc starts a sender loop, a receiver decoder thread and RTCP tasks per
    transceiver from a task it schedules itself (`__connect`), possibly before a
    renegotiation's new transceivers are visible to us. Guarding the two entry
    points at class level, keyed on a flag set on the connection's (single,
    max-bundle) DTLS transport, covers every transceiver without racing that
    task, and leaves every other RTCPeerConnection in the process untouched.
    """
    global _patched
    if _patched:
        return
    _patched = True
    original_send = RTCRtpSender.send
    original_receive = RTCRtpReceiver.receive

    async def send(self: RTCRtpSender, parameters: Any) -> None:
        if getattr(self.transport, _LIGHT_FLAG, False):
            return
        await original_send(self, parameters)

    async def receive(self: RTCRtpReceiver, parameters: Any) -> None:
        if getattr(self.transport, _LIGHT_FLAG, False):
            return
        await original_receive(self, parameters)

    RTCRtpSender.send = send  # type: ignore[method-assign]
    RTCRtpReceiver.receive = receive  # type: ignore[method-assign]


async def gather_on(pc: RTCPeerConnection, address: str) -> None:
    """Give `pc` exactly one host candidate, on `address`, before it gathers.

    aioice would bind one socket per interface address (and never loopback,
    which is where a local server is): for hundreds of participants that is
    hundreds of useless sockets and connectivity checks. Call after the first
    transceiver exists and before setLocalDescription; `pc` must use max-bundle.
    """
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise RuntimeError("gather_on needs a transceiver first")
    connection = aiortc_bridge.ice_connection(transceivers[0].sender.transport.transport)
    if aiortc_bridge.gathering_started(connection):
        return
    candidates = await connection.get_component_candidates(component=1, addresses=[address])
    if not candidates:
        raise OSError(f"cannot bind a UDP socket on {address}")
    aiortc_bridge.set_local_candidates(connection, list(candidates))


def local_address_for(host: str, port: int = 9) -> str:
    """The local address the kernel would send from to reach host (no packet is sent)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
        sock.connect(info[4])
        return sock.getsockname()[0]


def is_loopback_host(host: str) -> bool:
    """True when every address host resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)


# -- one synthetic participant -------------------------------------------------------------------


@dataclass
class Negotiated:
    """What the server's answer fixed for one of our sending m-sections."""

    payload_type: int
    mid: str
    mid_id: int | None
    level_id: int | None
    rid_id: int | None = None  # RtpStreamId: only when the answer accepted simulcast


@functools.lru_cache(maxsize=256)
def _tails(sample: MediaSample, mid: str, mid_id: int | None, level_id: int | None,
           rid_id: int | None = None, rid: str | None = None
           ) -> tuple[tuple[bytes, ...], ...]:
    """Per frame, per packet: the RFC 8285 one-byte header extension block + payload.

    Shared by every sender with the same negotiation (usually all of them), so
    a hundred senders of the same sample cost one copy. A simulcast layer's rid
    (RFC 8852) goes in the same block as the MID: RFC 8285 allows one block per
    packet, so the elements are concatenated, then padded to 32 bits.
    """
    out = []
    for index, frame in enumerate(sample.frames):
        elements = b""
        if mid_id is not None:
            elements += bytes(((mid_id << 4) | (len(mid) - 1),)) + mid.encode("ascii")
        if level_id is not None and sample.levels:
            elements += bytes(((level_id << 4), sample.levels[index]))
        if rid_id is not None and rid:
            elements += bytes(((rid_id << 4) | (len(rid) - 1),)) + rid.encode("ascii")
        if elements:
            elements += b"\x00" * (-len(elements) % 4)
            block = struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
        else:
            block = b""
        out.append(tuple(block + payload for payload in frame))
    return tuple(out)


class StreamSender:
    """One published stream (audio, camera or screen) replaying its sample."""

    def __init__(self, owner: LightParticipant, label: str, sample: MediaSample,
                 transceiver: Any, rid: str | None = None, ssrc: int | None = None) -> None:
        self.owner = owner
        self.label = label
        self.sample = sample
        self.transceiver = transceiver
        self.ssrc: int = ssrc if ssrc is not None else aiortc_bridge.sender_ssrc(
            transceiver.sender)
        # Simulcast: this sender is the layer `rid`; `layers` are the publisher's other
        # layers on the same m-section. Only this (the top) sender is in the owner's
        # `senders`: receivers get one layer, and the loss figures compare against it.
        self.rid = rid
        self.layers: list[StreamSender] = []
        self.sequence = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.index = 0
        self.tails: tuple[tuple[bytes, ...], ...] = ()
        self.first_octet = 0xB0  # V=2, P=1, X=1
        self.payload_type = 0
        self.ready = False
        self.next_due = 0.0
        self.sent = 0
        self.frames_sent = 0
        self.skipped_frames = 0
        self.keyframe_requests = 0

    def arm(self, negotiated: Negotiated) -> None:
        """Fix the numbers the answer agreed on; a simulcast sender arms its layers too.

        An answer without `a=simulcast:recv` (rid_id None) means the server takes
        one stream: the extra layers then stay silent rather than mix into it.
        """
        rid = self.rid if negotiated.rid_id is not None else None
        self.payload_type = negotiated.payload_type
        self.tails = _tails(self.sample, negotiated.mid, negotiated.mid_id, negotiated.level_id,
                            negotiated.rid_id if rid else None, rid)
        self.first_octet = 0xB0 if self.tails and self.tails[0][0][:2] == b"\xbe\xde" else 0xA0
        self.ready = True
        if rid is not None:
            for layer in self.layers:
                layer.arm(negotiated)

    def all_layers(self) -> list[StreamSender]:
        """This sender and its simulcast layers: everything the media clock drives."""
        return [self, *self.layers]

    def send_frame(self, send: Callable[[bytes], None], clock: Callable[[], int]) -> None:
        """Build, stamp and send every packet of the next frame; advance the loop."""
        tails = self.tails[self.index]
        last = len(tails) - 1
        for number, tail in enumerate(tails):
            second = self.payload_type | (0x80 if number == last and self.sample.kind == "video"
                                          else 0)
            header = _RTP.pack(self.first_octet, second, self.sequence, self.timestamp, self.ssrc)
            send(header + tail + _STAMP.pack(STAMP_MAGIC, clock(), 0, STAMP_LEN))
            self.sequence = (self.sequence + 1) & 0xFFFF
            self.sent += 1
        self.advance(1)
        self.frames_sent += 1

    def advance(self, frames: int) -> None:
        self.timestamp = (self.timestamp + frames * self.sample.frame_ticks) & 0xFFFFFFFF
        self.index = (self.index + frames) % len(self.sample.frames)

    def restart_at_keyframe(self) -> None:
        """A receiver asked for a keyframe (PLI/FIR): the loop's first frame is one."""
        self.keyframe_requests += 1
        if self.sample.kind == "video":
            self.index = 0


@dataclass(frozen=True)
class Role:
    audio: bool = False
    camera: bool = False
    screen: bool = False


class LightParticipant:
    """A participant that handshakes like a client and then only counts and replays packets."""

    def __init__(self, test: LoadTest, call: str, user: str, role: Role) -> None:
        self.test = test
        self.call = call
        self.user = user
        self.role = role
        self.session_id: str | None = None
        self.failure: str | None = None
        self.started_at = 0.0
        self.joined_at: float | None = None
        self.connected_at: float | None = None
        self.first_media_at: float | None = None
        self.received: dict[int, int] = {}
        self.rtcp_in = 0
        self.srtp_errors = 0
        self.events: Counter[str] = Counter()
        self.error_codes: Counter[str] = Counter()
        self.streams: dict[int, tuple[str, str]] = {}  # receiving SSRC -> (publisher, label)
        self.senders: list[StreamSender] = []
        self.pc: RTCPeerConnection | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._joined: asyncio.Future[dict[str, Any]] | None = None
        self._signals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._send_srtp: Callable[[bytes], None] | None = None
        self._rtcp_send: Callable[[bytes], None] | None = None
        self._rx: pylibsrtp.Session | None = None
        self._rr_ssrc = random.getrandbits(32) or 1
        self.closed = False

    @property
    def connected(self) -> bool:
        return self.connected_at is not None and not self.closed

    # -- joining -------------------------------------------------------------------------------

    async def join(self, timeout: float) -> None:
        """Signaling, join, offer, ICE and DTLS; sets failure instead of raising."""
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        try:
            await asyncio.wait_for(self._join(), timeout)
            await asyncio.wait_for(self._connected.wait(),
                                   max(0.1, timeout - (loop.time() - self.started_at)))
        except TimeoutError:
            stage = "ice/dtls" if self.joined_at is not None else "join"
            self.failure = f"{stage}: no answer within {timeout:g} s"
        except LoadJoinError as exc:
            self.failure = str(exc)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.failure = f"signaling: {type(exc).__name__}: {exc}"[:200]
        except Exception as exc:  # one broken participant must not end the whole test
            self.failure = f"client: {type(exc).__name__}: {exc}"[:200]
        if self.failure is not None:
            await self.close()

    async def _join(self) -> None:
        test = self.test
        url = f"{test.config.ws_url}?token={test.config.token_for(self.call, self.user)}"
        ssl = True if test.config.ssl is None else test.config.ssl
        self._ws = await test.http.ws_connect(url, ssl=ssl)
        loop = asyncio.get_running_loop()
        self._joined = loop.create_future()
        self._tasks.append(asyncio.create_task(self._read_loop()))
        await self._send({"type": "join", "call": self.call, "name": self.user})
        joined = await self._joined
        self.session_id = joined["session_id"]
        self.joined_at = loop.time()

        _install_light_switch()
        pc = self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        first = pc.addTransceiver("audio", direction="sendrecv" if self.role.audio else "recvonly")
        dtls = first.sender.transport
        setattr(dtls, _LIGHT_FLAG, True)
        dtls.on("statechange", lambda: self._on_dtls_state(dtls))
        if self.role.audio:
            self.senders.append(StreamSender(self, "audio", test.samples["audio"], first))
        if self.role.camera:
            camera = pc.addTransceiver("video", direction="sendonly")
            self.senders.append(StreamSender(self, "video", test.samples["camera"], camera))
        if self.role.screen:
            screen = pc.addTransceiver("video", direction="sendonly")
            screen_stream = f"screen-{self.user}-{random.getrandbits(32):08x}"
            aiortc_bridge.set_sender_identity(screen.sender, stream_id=screen_stream)
            if test.config.simulcast:
                top = StreamSender(self, "screen", test.samples["screen"], screen, rid="h")
                top.layers.append(StreamSender(self, "screen", test.samples["screen-l"], screen,
                                               rid="l", ssrc=_other_ssrc(top.ssrc)))
                self.senders.append(top)
            else:
                self.senders.append(StreamSender(self, "screen", test.samples["screen"], screen))
            # Before the offer, so the server labels the stream as a screen from the start.
            await self._send({"type": "screen_on", "stream_id": screen_stream})
        if self.role.camera:
            await self._send({"type": "video_on"})
        await gather_on(pc, test.local_address)
        self._tasks.append(asyncio.create_task(self._signal_loop()))
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        sdp = pc.localDescription.sdp
        for sender in self.senders:
            if sender.layers and sender.transceiver.mid is not None:
                # Only what the server sees changes: aiortc's RTP machinery is off
                # here, so its own idea of the m-section does not matter.
                sdp = simulcast_offer(sdp, sender.transceiver.mid,
                                      [s.rid for s in reversed(sender.all_layers()) if s.rid])
        await self._send({"type": "signal", "data": {"type": "offer", "sdp": sdp}})

    def all_senders(self) -> list[StreamSender]:
        """Every stream this participant sends, simulcast layers included."""
        return [layer for sender in self.senders for layer in sender.all_layers()]

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(json.dumps(message))

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(frame.data)
                kind = str(event.get("type"))
                self.events[kind] += 1
                if kind == "signal":
                    self._signals.put_nowait(event.get("data") or {})
                elif kind == "joined" and self._joined and not self._joined.done():
                    self._joined.set_result(event)
                elif kind == "error":
                    code = str(event.get("code"))
                    self.error_codes[code] += 1
                    if self._joined and not self._joined.done():
                        self._joined.set_exception(LoadJoinError(
                            f"join: {code}: {event.get('message')}"))
        except (aiohttp.ClientError, ValueError):
            pass
        if self._joined and not self._joined.done():
            self._joined.set_exception(LoadJoinError("signaling: connection closed before joined"))
        elif not self.closed:
            self.events["_ws_closed"] += 1

    async def _signal_loop(self) -> None:
        assert self.pc is not None
        pc = self.pc
        while True:
            data = await self._signals.get()
            kind = data.get("type")
            try:
                if kind == "answer":
                    await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "answer"))
                elif kind == "offer":
                    await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
                    answer = await pc.createAnswer()
                    await pc.setLocalDescription(answer)
                    await self._send({"type": "signal", "data": {
                        "type": "answer", "sdp": pc.localDescription.sdp}})
                else:
                    continue  # trickled candidates: the SDP already carries the server's
            except Exception as exc:  # a bad SDP fails this participant's negotiation only
                self.error_codes[f"negotiation: {type(exc).__name__}"] += 1
                continue
            self._read_negotiation(str(data.get("sdp") or ""))

    def _read_negotiation(self, remote_sdp: str) -> None:
        """Map receiving SSRCs to publishers; arm our senders with the agreed numbers.

        Reads the server's SDP as it came: aiortc's `remoteDescription` is
        re-serialized from what aiortc understood, without the simulcast lines.
        """
        if not remote_sdp:
            return
        description = aiortc_sdp.SessionDescription.parse(remote_sdp)
        ours = {s.transceiver.mid: s for s in self.senders}
        for media in description.media:
            if media.kind not in ("audio", "video"):
                continue
            mid = media.rtp.muxId
            if media.direction in ("sendonly", "sendrecv") and media.msid:
                source = _source_of(media.msid, media.kind)
                if source is not None:
                    for ssrc in media.ssrc:
                        self.streams[ssrc.ssrc] = source
            sender = ours.get(mid)
            if sender is not None and not sender.ready and mid is not None:
                wanted = "opus" if media.kind == "audio" else "vp8"
                codec = next((c for c in media.rtp.codecs
                              if c.mimeType.lower().endswith("/" + wanted)), None)
                if codec is None:
                    self.error_codes[f"no {wanted} in answer"] += 1
                    continue
                ids = {e.uri: e.id for e in media.rtp.headerExtensions}
                rid_id = ids.get(RID_URI) if sender.layers and _answer_accepts_simulcast(
                    remote_sdp, mid) else None
                if sender.layers and rid_id is None:
                    self.error_codes["simulcast not accepted"] += 1
                sender.arm(Negotiated(codec.payloadType, mid, ids.get(MID_URI),
                                      ids.get(AUDIO_LEVEL_URI) if media.kind == "audio"
                                      else None, rid_id))

    # -- media -----------------------------------------------------------------------------------

    def _on_dtls_state(self, dtls: Any) -> None:
        rx, tx = aiortc_bridge.srtp_sessions(dtls)
        if dtls.state != "connected" or self.connected_at is not None or rx is None:
            return
        pair = aiortc_bridge.nominated_pair(aiortc_bridge.ice_connection(dtls.transport))
        if pair is None:
            return
        protocol, remote = pair.protocol, pair.remote_addr
        transport = protocol.transport
        self._rx = rx
        sendto = transport.sendto

        def send_srtp(packet: bytes) -> None:
            sendto(tx.protect(packet), remote)

        def send_rtcp(packet: bytes) -> None:
            sendto(tx.protect_rtcp(packet), remote)

        self._send_srtp, self._rtcp_send = send_srtp, send_rtcp
        protocol.datagram_received = self._receiver(protocol.datagram_received)
        now = asyncio.get_running_loop().time()
        self.connected_at = now
        for sender in self.all_senders():
            sender.next_due = now + random.uniform(0, sender.sample.interval)
        self._connected.set()
        self.test.on_connected(self)

    def _receiver(self, original: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        """The receive path: count SRTP per SSRC undecrypted; sample every Nth for the stamp."""
        received = self.received
        every = self.test.config.delay_sample_every
        loop = asyncio.get_running_loop()
        watch_rtcp = any(s.sample.kind == "video" for s in self.senders)

        def datagram_received(data: bytes, addr: Any) -> None:
            if len(data) > 12 and 127 < data[0] < 192:
                if 191 < data[1] < 224:
                    self.rtcp_in += 1
                    if watch_rtcp:
                        self._on_rtcp(data)
                    return
                ssrc = int.from_bytes(data[8:12], "big")
                count = received.get(ssrc, 0) + 1
                received[ssrc] = count
                if count == 1 and self.first_media_at is None:
                    self.first_media_at = loop.time()
                if count % every == 0:
                    self._sample_delay(data)
                return
            original(data, addr)

        return datagram_received

    def _sample_delay(self, data: bytes) -> None:
        arrived = time.monotonic_ns()
        try:
            plain = self._rx.unprotect(data)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return
        if plain[0] & 0x20 and len(plain) >= 12 + STAMP_LEN and plain[-1] == STAMP_LEN:
            magic, sent, _zero, _count = _STAMP.unpack_from(plain, len(plain) - STAMP_LEN)
            if magic == STAMP_MAGIC and 0 <= arrived - sent < 60_000_000_000:
                self.test.record_delay(arrived - sent)

    def _on_rtcp(self, data: bytes) -> None:
        """Keyframe requests (PLI, FIR) for our video: restart the loop at its keyframe."""
        try:
            plain = self._rx.unprotect_rtcp(data)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return
        offset = 0
        while offset + 12 <= len(plain):
            fmt, kind = plain[offset] & 0x1F, plain[offset + 1]
            length = (int.from_bytes(plain[offset + 2:offset + 4], "big") + 1) * 4
            if kind == 206 and fmt in (1, 4):
                at = offset + 8 if fmt == 1 else offset + 12
                target = int.from_bytes(plain[at:at + 4], "big")
                for sender in self.all_senders():
                    if sender.ssrc == target:
                        sender.restart_at_keyframe()
            offset += length

    def send_receiver_report(self) -> None:
        """An empty RTCP RR (RFC 3550 §6.4.2): the regular RTCP a receiving client sends."""
        if self._rtcp_send is not None and not self.closed:
            with contextlib.suppress(pylibsrtp.Error, OSError):
                self._rtcp_send(struct.pack("!BBHI", 0x80, 201, 1, self._rr_ssrc))

    # -- leaving ---------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sender in self.all_senders():
            sender.ready = False
        with contextlib.suppress(Exception):
            await self._send({"type": "leave"})
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()


class LoadJoinError(CallsctlError, RuntimeError):
    """A participant could not join; the message starts with the stage."""
    code = "load_join_failed"


def _other_ssrc(taken: int) -> int:
    """A random nonzero SSRC other than `taken`: each simulcast layer is its own stream."""
    for _ in range(8):  # a collision is 1 in 2**32; bounded all the same
        ssrc = random.getrandbits(32)
        if ssrc not in (0, taken):
            return ssrc
    return (taken % 0xFFFFFFFF) + 1


def _source_of(msid: str, kind: str) -> tuple[str, str] | None:
    """(publisher, label) from an msid: the SFU's track ids are `<publisher>-<label>`."""
    parts = msid.split()
    stream = parts[0] if parts else ""
    track = parts[1] if len(parts) > 1 else ""
    publisher, _, label = track.rpartition("-")
    if publisher and label in ("audio", "video", "screen", "screenaudio"):
        return publisher, label
    if stream.startswith("screen-"):
        return stream[len("screen-"):], "screen" if kind == "video" else "screenaudio"
    return (stream, kind) if stream and stream != "-" else None


# -- the load test --------------------------------------------------------------------------------


TokenFactory = Callable[[str, str], str]
WindowHook = Callable[[str], Awaitable[None]]


@dataclass
class LoadConfig:
    """What to simulate. Validated by `validate()`; every loop it drives is bounded by it."""

    ws_url: str
    token_for: TokenFactory
    calls: int = 1
    users_per_call: int = 2
    unmuted: int = 1
    screen_sharing: bool = False
    # The screen share as two simulcast layers (rids l and h); needs a server that accepts them.
    simulcast: bool = False
    video: bool = False
    duration: float = 60.0
    join_duration: float = 30.0
    call_prefix: str = "loadtest"
    ssl: Any = None
    local_address: str | None = None
    delay_sample_every: int = 5
    join_timeout: float = 30.0
    max_concurrent_joins: int = 32
    settle_timeout: float = 10.0
    # Benches: measure exactly this many seconds once steady (duration stays the hard cap).
    window: float | None = None

    @property
    def participants(self) -> int:
        return self.calls * self.users_per_call

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise LoadConfigError(message)

        need(1 <= self.calls <= MAX_CALLS, f"--calls must be 1..{MAX_CALLS}, not {self.calls}")
        need(1 <= self.users_per_call <= MAX_PARTICIPANTS,
             f"--users-per-call must be 1..{MAX_PARTICIPANTS}, not {self.users_per_call}")
        need(self.participants <= MAX_PARTICIPANTS,
             f"{self.calls} calls x {self.users_per_call} users = {self.participants} "
             f"participants; one load generator holds at most {MAX_PARTICIPANTS}")
        need(0 <= self.unmuted <= self.users_per_call,
             f"--unmuted must be 0..--users-per-call ({self.users_per_call}), not {self.unmuted}")
        need(MIN_DURATION_S <= self.duration <= MAX_DURATION_S,
             f"--duration must be {MIN_DURATION_S:g} s..{MAX_DURATION_S / 3600:g} h, "
             f"not {self.duration:g} s")
        need(0 <= self.join_duration < self.duration,
             f"--join-duration ({self.join_duration:g} s) must be shorter than --duration "
             f"({self.duration:g} s)")
        need(1 <= self.delay_sample_every <= 10_000, "delay sampling must be every 1..10000")
        need(0 < self.join_timeout <= MAX_JOIN_TIMEOUT_S,
             f"join timeout must be 0..{MAX_JOIN_TIMEOUT_S:g} s")
        need(1 <= self.max_concurrent_joins <= 256, "concurrent joins must be 1..256")
        need(self.window is None or 0.5 <= self.window <= MAX_DURATION_S,
             "the measuring window must be 0.5 s..2 h")
        need(bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", self.call_prefix)),
             "the call prefix must be 1-40 letters, digits, '.', '_' or '-'")


@dataclass
class Progress:
    """A snapshot for a live display."""

    phase: str
    elapsed: float
    duration: float
    requested: int
    joined: int
    connected: int
    failed: int
    packets_sent: int
    packets_received: int
    delay_samples: int
    server_cpu_percent: float | None


def percentiles(values: Iterable[float], points: Iterable[int] = (50, 95, 99)
                ) -> dict[str, float] | None:
    """Nearest-rank percentiles plus max, or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    out = {}
    for p in points:
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


class LoadTest:
    """Joins the participants, drives the media clock, measures a steady window, reports."""

    def __init__(self, config: LoadConfig, on_window: WindowHook | None = None,
                 monitor: ServerMonitor | None = None) -> None:
        config.validate()
        self.config = config
        self.on_window = on_window
        self.monitor = monitor
        self.participants: list[LightParticipant] = []
        self.samples: dict[str, MediaSample] = {}
        self.phase = "preparing"
        self.http: aiohttp.ClientSession = None  # type: ignore[assignment]
        self.local_address = config.local_address or "127.0.0.1"
        self.delays: list[int] = []
        self.active: list[StreamSender] = []
        self.started = 0.0
        self.window: tuple[float, float] | None = None
        self._stop = asyncio.Event()
        self._loop_lag: list[float] = []
        self._cpu0 = (0.0, 0.0)
        self._window_counts: dict[str, Any] = {}
        self.notes: list[str] = []

    # -- hooks used by participants ----------------------------------------------------------------

    def record_delay(self, nanoseconds: int) -> None:
        if len(self.delays) < MAX_DELAY_SAMPLES:
            self.delays.append(nanoseconds)

    def on_connected(self, participant: LightParticipant) -> None:
        self.active.extend(participant.all_senders())

    def request_stop(self) -> None:
        """Finish early (Ctrl-C): measure what ran, then leave."""
        if not self._stop.is_set():
            self.notes.append(f"stopped early (interrupted) in the {self.phase} phase")
        self._stop.set()

    # -- running ------------------------------------------------------------------------------

    def roles(self) -> list[tuple[str, str, Role]]:
        """(call, user, role) in join order: round robin over calls, speakers first."""
        config = self.config
        order = []
        for index in range(config.users_per_call):
            for number in range(1, config.calls + 1):
                call = f"{config.call_prefix}-{number}"
                role = Role(audio=index < config.unmuted,
                            camera=config.video and index < config.unmuted,
                            screen=config.screen_sharing and index == 0)
                order.append((call, f"{call}-u{index + 1}", role))
        return order

    def prepare_media(self) -> None:
        """Encode the samples once (seconds of CPU for video; before anyone joins)."""
        self.samples["audio"] = opus_sample()
        if self.config.video:
            self.samples["camera"] = camera_sample()
        if self.config.screen_sharing:
            self.samples["screen"] = screen_sample()
            if self.config.simulcast:
                self.samples["screen-l"] = screen_low_sample()

    async def run(self) -> LoadReport:
        config = self.config
        loop = asyncio.get_running_loop()
        self.prepare_media()
        if config.local_address is None:
            self.local_address = local_address_for(urlsplit(config.ws_url).hostname or "")
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        background: list[asyncio.Task[Any]] = []
        cpu_start = time.process_time()
        try:
            self.started = loop.time()
            end = self.started + config.duration
            background = [asyncio.create_task(self._media_clock(end)),
                          asyncio.create_task(self._receiver_reports(end)),
                          asyncio.create_task(self._watch_loop_lag(end))]
            if self.monitor is not None:
                if self.monitor.source is None:
                    await self.monitor.detect()
                background.append(asyncio.create_task(self.monitor.run(end)))
            self.phase = "joining"
            await self._join_all(end)
            self.phase = "settling"
            await self._settle(end)
            window_start = loop.time()
            if window_start < end - 0.5 and not self._stop.is_set():
                self.phase = "measuring"
                await self._open_window()
                close_at = end if config.window is None else min(end, loop.time() + config.window)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, close_at - loop.time()))
                self.phase = "draining"
                self._stop_sending()
                await asyncio.sleep(0.3)
                await self._close_window(window_start)
            else:
                self.notes.append("no steady window: joins and negotiation took the whole "
                                  "--duration; raise --duration")
            self.phase = "leaving"
            self._stop_sending()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(
                    *(p.close() for p in self.participants), return_exceptions=True),
                    CLOSE_TIMEOUT_S)
            await self.http.close()
            if self.monitor is not None:
                await self.monitor.close()
        self.phase = "done"
        wall = loop.time() - self.started
        return self._report(cpu_seconds=time.process_time() - cpu_start, wall=wall)

    def _stop_sending(self) -> None:
        for participant in self.participants:
            for sender in participant.all_senders():
                sender.ready = False

    async def _join_all(self, end: float) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        order = self.roles()
        spacing = config.join_duration / len(order)
        gate = asyncio.Semaphore(config.max_concurrent_joins)
        tasks = []

        async def one(participant: LightParticipant) -> None:
            async with gate:
                timeout = min(config.join_timeout, max(0.5, end - loop.time()))
                await participant.join(timeout)

        for number, (call, user, role) in enumerate(order):
            due = self.started + number * spacing
            if due > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), due - loop.time())
            if self._stop.is_set() or loop.time() >= end:
                break
            participant = LightParticipant(self, call, user, role)
            self.participants.append(participant)
            tasks.append(asyncio.create_task(one(participant)))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _expected_sources(self, receiver: LightParticipant) -> list[StreamSender]:
        return [s for p in self.participants if p.call == receiver.call and p is not receiver
                and p.connected for s in p.senders if s.ready]

    def _flowing(self) -> bool:
        for receiver in self.participants:
            if not receiver.connected:
                continue
            have = {receiver.streams.get(ssrc) for ssrc, n in receiver.received.items() if n}
            for sender in self._expected_sources(receiver):
                if (sender.owner.session_id, sender.label) not in have:
                    return False
        return True

    def _recent_delay_ms(self, count: int = 200) -> float | None:
        recent = self.delays[-count:]
        return sorted(recent)[len(recent) // 2] / 1e6 if recent else None

    async def _settle(self, end: float) -> None:
        """Wait until every expected stream reached every receiver and queues drained.

        Joining is the heavy part for a server (handshakes, renegotiations); a
        server that fell behind then still holds a queue of media, so the window
        also waits for the median of the latest delay samples to drop under
        SETTLED_DELAY_MS. Bounded by settle_timeout; a note says what was not met.
        """
        loop = asyncio.get_running_loop()
        deadline = min(end - 0.5, loop.time() + self.config.settle_timeout)
        flowing = False
        while loop.time() < deadline and not self._stop.is_set():
            flowing = flowing or self._flowing()
            recent = self._recent_delay_ms()
            if flowing and (recent is None or recent < SETTLED_DELAY_MS):
                await asyncio.sleep(0.5)  # let the last renegotiations' first packets pass
                return
            await asyncio.sleep(0.1)
        if self._stop.is_set():
            return
        if not flowing:
            self.notes.append("some streams had not reached every receiver when the window "
                              "opened; they count as loss")
        recent = self._recent_delay_ms()
        if recent is not None and recent >= SETTLED_DELAY_MS:
            self.notes.append(f"the server still had a queue when the window opened (recent "
                              f"delay median {recent:.0f} ms after {self.config.settle_timeout:g}"
                              " s of settling)")

    async def _open_window(self) -> None:
        self._window_counts["sent0"] = {id(s): s.sent for p in self.participants
                                        for s in p.senders}
        self._window_counts["recv0"] = {id(p): dict(p.received) for p in self.participants}
        self._window_counts["skipped0"] = sum(s.skipped_frames for p in self.participants
                                              for s in p.all_senders())
        self.delays.clear()
        self._loop_lag.clear()
        self._cpu0 = (time.process_time(), asyncio.get_running_loop().time())
        if self.monitor is not None:
            await self.monitor.mark("start")
        if self.on_window is not None:
            await self.on_window("start")

    async def _close_window(self, opened: float) -> None:
        loop = asyncio.get_running_loop()
        self._window_counts["delays"] = len(self.delays)
        if self.on_window is not None:
            await self.on_window("end")
        if self.monitor is not None:
            await self.monitor.mark("end")
        cpu0, wall0 = self._cpu0
        self._window_counts["loadgen_cpu"] = (time.process_time() - cpu0) / max(
            1e-9, loop.time() - wall0)
        self._window_counts["sent1"] = {id(s): s.sent for p in self.participants
                                        for s in p.senders}
        self._window_counts["recv1"] = {id(p): dict(p.received) for p in self.participants}
        self._window_counts["skipped1"] = sum(s.skipped_frames for p in self.participants
                                              for s in p.all_senders())
        self.window = (opened - self.started, loop.time() - opened)

    async def _media_clock(self, end: float) -> None:
        """One loop sends every due frame of every stream; late frames are caught up or skipped."""
        loop = asyncio.get_running_loop()
        clock = time.monotonic_ns
        while loop.time() < end:
            now = loop.time()
            wake = now + 0.02
            active = self.active
            for sender in active:
                if not sender.ready:
                    continue
                send = sender.owner._send_srtp
                if send is None:
                    continue
                late = 0
                interval = sender.sample.interval
                while sender.next_due <= now and late < MAX_CATCH_UP:
                    try:
                        sender.send_frame(send, clock)
                    except (pylibsrtp.Error, OSError):
                        sender.ready = False
                        break
                    sender.next_due += interval
                    late += 1
                if sender.next_due <= now:
                    behind = int((now - sender.next_due) / interval) + 1
                    sender.skipped_frames += behind
                    sender.advance(behind)
                    sender.next_due += behind * interval
                wake = min(wake, sender.next_due)
            await asyncio.sleep(max(0.0, wake - loop.time()))

    async def _receiver_reports(self, end: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            await asyncio.sleep(RECEIVER_REPORT_INTERVAL)
            for participant in self.participants:
                if participant.connected:
                    participant.send_receiver_report()

    async def _watch_loop_lag(self, end: float) -> None:
        """How late this process's event loop runs: a loaded generator inflates delays."""
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            before = loop.time()
            await asyncio.sleep(0.05)
            self._loop_lag.append(max(0.0, loop.time() - before - 0.05))
            if len(self._loop_lag) > 100_000:
                del self._loop_lag[:50_000]

    # -- reporting ---------------------------------------------------------------------------------

    def progress(self) -> Progress:
        loop = asyncio.get_running_loop()
        elapsed = loop.time() - self.started if self.started else 0.0
        return Progress(
            phase=self.phase, elapsed=elapsed, duration=self.config.duration,
            requested=self.config.participants,
            joined=sum(1 for p in self.participants if p.session_id),
            connected=sum(1 for p in self.participants if p.connected),
            failed=sum(1 for p in self.participants if p.failure),
            packets_sent=sum(s.sent for p in self.participants for s in p.senders),
            packets_received=sum(sum(p.received.values()) for p in self.participants),
            delay_samples=len(self.delays),
            server_cpu_percent=self.monitor.latest_cpu_percent if self.monitor else None)

    def _report(self, cpu_seconds: float, wall: float) -> LoadReport:
        config = self.config
        joined = [p for p in self.participants if p.connected_at is not None]
        failures = Counter(p.failure.split(":", 1)[0] for p in self.participants if p.failure)
        examples = {}
        for p in self.participants:
            if p.failure:
                examples.setdefault(p.failure.split(":", 1)[0], p.failure)
        join_times = [p.connected_at - p.started_at for p in joined
                      if p.connected_at is not None]
        first_media = [p.first_media_at - p.started_at for p in joined
                       if p.first_media_at is not None]
        media = self._media_figures()
        delays_ms = [d / 1e6 for d in self.delays[:self._window_counts.get("delays", 0)]]
        lag = percentiles([x * 1000 for x in self._loop_lag], (50, 99))
        samples = {name: {"bitrate_kbps": round(s.bitrate / 1000, 1),
                          "packets_per_second": round(s.packets_per_second, 1)}
                   for name, s in self.samples.items()}
        errors: Counter[str] = Counter()
        for p in self.participants:
            errors.update(p.error_codes)
        requested = config.participants
        silent = not any(p.senders for p in self.participants)  # --unmuted 0: joins only
        ok = len(joined) == requested and (silent or (
            media is not None and media["loss"] is not None and media["loss"] <= MAX_OK_LOSS))
        return LoadReport(
            ok=ok,
            target=config.ws_url,
            settings={"calls": config.calls, "users_per_call": config.users_per_call,
                      "unmuted": config.unmuted, "screen_sharing": config.screen_sharing,
                      "simulcast": config.simulcast,
                      "video": config.video, "duration_s": config.duration,
                      "join_duration_s": config.join_duration,
                      "delay_sample_every": config.delay_sample_every},
            participants={"requested": requested, "started": len(self.participants),
                          "joined": len(joined), "failed": sum(failures.values()),
                          "failures": dict(failures), "failure_examples": examples},
            join_s=_rounded(percentiles(join_times), 3),
            first_media_s=_rounded(percentiles(first_media), 3),
            window=None if self.window is None else {
                "starts_at_s": round(self.window[0], 2), "seconds": round(self.window[1], 2)},
            media=media,
            delay_ms=None if not delays_ms else {"samples": len(delays_ms),
                                                 **_rounded(percentiles(delays_ms), 3)},
            server=self.monitor.report() if self.monitor is not None else None,
            loadgen={"cpu_percent": round(100 * cpu_seconds / max(wall, 1e-9), 1),
                     "window_cpu_percent": round(100 * self._window_counts.get(
                         "loadgen_cpu", 0.0), 1) if self.window else None,
                     "loop_lag_ms": _rounded(lag, 2), "local_address": self.local_address,
                     "signaling_errors": dict(errors)},
            samples=samples,
            notes=list(self.notes),
        )

    def _media_figures(self) -> dict[str, Any] | None:
        counts = self._window_counts
        if "recv1" not in counts:
            return None
        sent0, sent1 = counts["sent0"], counts["sent1"]
        per_receiver = []
        total_expected = total_received = 0
        pairs = lossy_pairs = 0
        worst = 0.0
        extra = 0
        by_label: dict[str, list[int]] = {}
        for receiver in self.participants:
            if receiver.connected_at is None:
                continue
            before = counts["recv0"].get(id(receiver), {})
            after = counts["recv1"].get(id(receiver), {})
            got: Counter[tuple[str | None, str]] = Counter()
            for ssrc, n in after.items():
                source = receiver.streams.get(ssrc, (None, f"ssrc-{ssrc}"))
                got[source] += n - before.get(ssrc, 0)
            expected = received = 0
            sources: dict[str, list[int]] = {}
            for p in self.participants:
                if p is receiver or p.call != receiver.call or p.connected_at is None:
                    continue
                for sender in p.senders:
                    want = sent1.get(id(sender), 0) - sent0.get(id(sender), 0)
                    have = got.get((p.session_id, sender.label), 0)
                    if want <= 0:
                        continue
                    pairs += 1
                    pair_loss = max(0.0, 1 - have / want)
                    worst = max(worst, pair_loss)
                    lossy_pairs += pair_loss > 0.01
                    expected += want
                    received += min(have, want)
                    extra += max(0, have - want)
                    sources[f"{p.user}/{sender.label}"] = [want, have]
                    totals = by_label.setdefault(sender.label, [0, 0])
                    totals[0] += want
                    totals[1] += min(have, want)
            total_expected += expected
            total_received += received
            per_receiver.append({"user": receiver.user, "call": receiver.call,
                                 "expected": expected, "received": received,
                                 "loss": round(1 - received / expected, 5) if expected else None,
                                 "sources": sources})
        senders = [s for p in self.participants for s in p.senders]
        sent = sum(sent1.get(id(s), 0) - sent0.get(id(s), 0) for s in senders)
        return {
            "senders": len(senders), "packets_sent": sent,
            "expected": total_expected, "received": total_received,
            "loss": round(1 - total_received / total_expected, 5) if total_expected else None,
            "pairs": pairs, "pairs_over_1pct_loss": lossy_pairs, "worst_pair_loss": round(worst, 5),
            # More than was sent in the window: in flight when it opened, or duplicates.
            "received_beyond_expected": extra,
            "frames_skipped_by_generator": counts["skipped1"] - counts["skipped0"],
            "keyframe_requests": sum(s.keyframe_requests for p in self.participants
                                     for s in p.all_senders()),
            "by_label": {label: {"expected": e, "received": r,
                                 "loss": round(1 - r / e, 5) if e else None}
                         for label, (e, r) in sorted(by_label.items())},
            "per_receiver": per_receiver,
        }


def _rounded(values: dict[str, float] | None, digits: int) -> dict[str, float] | None:
    return None if values is None else {k: round(v, digits) for k, v in values.items()}


@dataclass
class LoadReport:
    """Everything a run measured; `to_dict()` is the `--json` output."""

    ok: bool
    target: str
    settings: dict[str, Any]
    participants: dict[str, Any]
    join_s: dict[str, float] | None
    first_media_s: dict[str, float] | None
    window: dict[str, float] | None
    media: dict[str, Any] | None
    delay_ms: dict[str, float] | None
    server: dict[str, Any] | None
    loadgen: dict[str, Any]
    samples: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# -- the server's CPU and memory -------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of pid from /proc/<pid>/stat (the figure `top` shows)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


_PROM_CPU = re.compile(r"^(?:rtcd_)?process_cpu_seconds_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)",
                       re.M)
_PROM_RSS = re.compile(
    r"^(?:rtcd_)?process_resident_memory_bytes(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)


class ServerMonitor:
    """Samples the server's CPU time and memory once a second, and its forwarding counters.

    Sources, best first: the server's own process through /proc when it runs on
    this host (the pid from GET /stats, checked to be a callsctl process) —
    exact and costs the server nothing; else GET /metrics
    (`rtcd_process_cpu_seconds_total`, `rtcd_process_resident_memory_bytes`)
    and GET /system (`process_rss_bytes`). Forwarding counters come from
    GET /stats when the server has it.
    """

    def __init__(self, base_url: str, local: bool, ssl: Any = None, interval: float = 1.0,
                 pid: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.local = local
        self.ssl = ssl
        self.interval = interval
        self.pid = pid
        self.source: str | None = None
        self.samples: list[tuple[float, float | None, int | None]] = []
        self.marks: dict[str, dict[str, Any]] = {}
        self.latest_cpu_percent: float | None = None
        self._http: aiohttp.ClientSession | None = None

    async def _get(self, path: str) -> aiohttp.ClientResponse | None:
        assert self._http is not None
        try:
            response = await self._http.get(self.base_url + path, ssl=self.ssl,
                                            timeout=aiohttp.ClientTimeout(total=3))
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        if response.status != 200:
            response.release()
            return None
        return response

    async def _json(self, path: str) -> dict[str, Any] | None:
        response = await self._get(path)
        if response is None:
            return None
        try:
            value = await response.json(content_type=None)
        except (aiohttp.ClientError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    async def detect(self) -> None:
        """Pick the source once, before the run."""
        self._http = self._http or aiohttp.ClientSession()
        if self.pid is None and self.local:
            stats = await self._json("/stats")
            pid = stats.get("pid") if stats else None
            if isinstance(pid, int) and _looks_like_callsctl(pid):
                self.pid = pid
        if self.pid is not None:
            self.source = "proc"
            return
        if await self._metrics() != (None, None):
            self.source = "metrics"
        elif await self._json("/system") is not None:
            self.source = "system"

    async def _metrics(self) -> tuple[float | None, int | None]:
        response = await self._get("/metrics")
        if response is None:
            return None, None
        text = await response.text()
        cpu, rss = _PROM_CPU.search(text), _PROM_RSS.search(text)
        return (float(cpu.group(1)) if cpu else None, int(float(rss.group(1))) if rss else None)

    async def sample(self) -> tuple[float, float | None, int | None]:
        now = time.monotonic()
        cpu: float | None = None
        rss: int | None = None
        if self.source == "proc" and self.pid is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                cpu, rss = proc_cpu_seconds(self.pid), proc_rss_bytes(self.pid)
        elif self.source in ("metrics", "system"):
            if self.source == "metrics":
                cpu, rss = await self._metrics()
            if rss is None:
                system = await self._json("/system")
                value = system.get("process_rss_bytes") if system else None
                rss = value if isinstance(value, int) else None
        if self.samples and cpu is not None and self.samples[-1][1] is not None:
            then, cpu_then, _ = self.samples[-1]
            if now > then:
                self.latest_cpu_percent = 100 * (cpu - cpu_then) / (now - then)
        self.samples.append((now, cpu, rss))
        return now, cpu, rss

    async def run(self, end_loop_time: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < end_loop_time:
            await self.sample()
            await asyncio.sleep(self.interval)

    async def mark(self, name: str) -> None:
        """Window edges: CPU, memory and forwarding counters at this instant."""
        now, cpu, rss = await self.sample()
        stats = await self._json("/stats")
        forwarding = stats.get("forwarding") if stats else None
        self.marks[name] = {"time": now, "cpu": cpu, "rss": rss,
                            "forwarding": forwarding if isinstance(forwarding, dict) else None}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "pid": self.pid}
        rates = []
        for (t0, c0, _), (t1, c1, _) in zip(self.samples, self.samples[1:], strict=False):
            if c0 is not None and c1 is not None and t1 > t0:
                rates.append(100 * (c1 - c0) / (t1 - t0))
        memory = [r for _, _, r in self.samples if r is not None]
        out["cpu_percent"] = ({"avg": round(sum(rates) / len(rates), 1),
                               "max": round(max(rates), 1)} if rates else None)
        out["rss_mb"] = ({"first": round(memory[0] / 2**20, 1),
                          "max": round(max(memory) / 2**20, 1)} if memory else None)
        start, end = self.marks.get("start"), self.marks.get("end")
        window: dict[str, Any] | None = None
        if start and end and end["time"] > start["time"]:
            seconds = end["time"] - start["time"]
            window = {"seconds": round(seconds, 2)}
            if start["cpu"] is not None and end["cpu"] is not None:
                window["cpu_percent"] = round(100 * (end["cpu"] - start["cpu"]) / seconds, 1)
            fwd0, fwd1 = start["forwarding"], end["forwarding"]
            if fwd0 and fwd1 and "rtp_forwarded" in fwd0:
                forwarded = fwd1["rtp_forwarded"] - fwd0["rtp_forwarded"]
                window["forwarded_packets"] = forwarded
                window["forwarded_pps"] = round(forwarded / seconds, 1)
                window["rtp_in_pps"] = round((fwd1.get("rtp_in", 0) - fwd0.get("rtp_in", 0))
                                             / seconds, 1)
                if forwarded and start["cpu"] is not None and end["cpu"] is not None:
                    window["cpu_us_per_forwarded_packet"] = round(
                        1e6 * (end["cpu"] - start["cpu"]) / forwarded, 2)
            if end["rss"] is not None:
                window["rss_mb"] = round(end["rss"] / 2**20, 1)
        out["window"] = window
        return out


def _looks_like_callsctl(pid: int) -> bool:
    """Whether pid on this host is a callsctl server (not a namesake in another namespace)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"callsctl" in cmdline
