"""A scripted call participant: real signaling, real ICE/DTLS/SRTP, real Opus.

Used wherever callsctl needs a participant without a browser: the integration
tests, `callsctl check webrtc` and the load generator. It speaks exactly the
protocol the web client speaks, answers the server's renegotiation offers, and
counts the audio frames it receives from each publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from callsctl_sfu.client.hangup import hang_up
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.rtc import aiortc_bridge

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms


class ToneTrack(MediaStreamTrack):
    """A sine tone (or silence) as a microphone: loud enough to count as speech."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._pts = 0
        self._start: float | None = None
        # One second of samples, computed once; frames are slices of it (48000 is a
        # multiple of 960, so frames never straddle the wrap-around).
        peak = amplitude * 32767
        self._second = array("h", (int(peak * math.sin(2 * math.pi * frequency * n / SAMPLE_RATE))
                                   for n in range(SAMPLE_RATE))).tobytes()

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._pts / SAMPLE_RATE
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        start = self._pts % SAMPLE_RATE
        chunk = self._second[start * 2:(start + FRAME_SAMPLES) * 2]
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(chunk)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pts += FRAME_SAMPLES
        return frame


class ParticipantError(CallsctlError, RuntimeError):
    """The participant could not join or connect; the message names the stage."""
    code = "participant_failed"

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class Participant:
    """One synthetic participant in one call."""

    def __init__(self, ws_url: str, token: str, call: str, name: str = "bot",
                 tone: float | None = 440.0, ssl: Any = None, send_audio: bool = True,
                 video: bool = False, audio_track: MediaStreamTrack | None = None) -> None:
        self.ws_url = ws_url
        self.audio_track = audio_track  # a microphone of the caller's (e.g. SpeechTrack)
        self.token = token
        self.call = call
        self.name = name
        self.tone = tone
        self.ssl = ssl
        self.send_audio = send_audio
        self.video = video
        self.session_id: str | None = None
        self.joined: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.frames_from: Counter[str] = Counter()
        self.media_frames: Counter[tuple[str, str]] = Counter()
        self.pc: RTCPeerConnection | None = None
        self.dc_pongs = 0
        self.dc_rtts: list[float] = []
        self._ping_sent: float | None = None
        self.ping_interval = 1.0
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._event_arrived = asyncio.Event()
        self._signals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connected_at: float | None = None
        self.started_at = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------

    async def join(self, timeout: float = 15.0) -> None:
        """Connect signaling, join, offer media; returns once `joined` arrived."""
        self._http = aiohttp.ClientSession()
        url = f"{self.ws_url}?token={self.token}"
        try:
            self._ws = await asyncio.wait_for(self._http.ws_connect(
                url, ssl=True if self.ssl is None else self.ssl), timeout)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            await self._http.close()
            raise ParticipantError("signaling", f"cannot open {self.ws_url}: {exc}") from None
        self._tasks.append(asyncio.create_task(self._read_loop()))
        await self.send({"type": "join", "call": self.call, "name": self.name})
        event = await self.wait_for(lambda e: e["type"] in ("joined", "error"), timeout)
        if event["type"] == "error":
            raise ParticipantError("join", f"{event.get('code')}: {event.get('message')}")
        self.joined = event
        self.session_id = event["session_id"]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)
        if self.send_audio:
            self.pc.addTrack(self.audio_track or
                             ToneTrack(self.tone or 440.0, 0.3 if self.tone else 0.0))
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        if self.video:
            self.pc.addTrack(VideoStreamTrack())
        channel = self.pc.createDataChannel("calls-dc")
        channel.on("open", lambda: self._tasks.append(asyncio.create_task(self._ping(channel))))
        channel.on("message", self._on_dc_message)
        self._tasks.append(asyncio.create_task(self._signal_loop()))
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        await self.send({"type": "signal", "data": {"type": "offer",
                                                    "sdp": self.pc.localDescription.sdp}})

    async def add_track(self, track: MediaStreamTrack) -> str:
        """Publish one more track (renegotiating); returns its stream id."""
        assert self.pc is not None
        sender = self.pc.addTrack(track)
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        await self.send({"type": "signal", "data": {"type": "offer",
                                                    "sdp": self.pc.localDescription.sdp}})
        return aiortc_bridge.sender_stream_id(sender)

    async def wait_connected(self, timeout: float = 15.0) -> float:
        """Seconds from join to a connected peer connection; raises with the stage."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pc is not None and self.pc.connectionState == "connected":
                return (self.connected_at or time.monotonic()) - self.started_at
            if self.pc is not None and self.pc.connectionState == "failed":
                raise ParticipantError("ice", "the peer connection failed (ICE/DTLS)")
            await asyncio.sleep(0.05)
        state = self.pc.connectionState if self.pc else "no peer"
        raise ParticipantError("ice", f"not connected after {timeout:g} s (state {state})")

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            await self.send({"type": "leave"})
        await self.close()

    async def close(self) -> None:
        """Drop everything without saying goodbye (what a closed tab does)."""
        await hang_up(self._tasks, self.pc, self._ws, self._http)

    # -- signaling ---------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                       since: int = 0) -> dict[str, Any]:
        """The first event (from index `since`) matching predicate, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            while checked < len(self.events):
                event = self.events[checked]
                checked += 1
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                types = [e.get("type") for e in self.events[since:]]
                raise TimeoutError(f"no matching event in {timeout:g} s; got {types}")
            self._event_arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event_arrived.wait(), remaining)

    async def _read_loop(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(frame.data)
            self.events.append(event)
            self._event_arrived.set()
            if event.get("type") == "signal":
                self._signals.put_nowait(event["data"])
        self.events.append({"type": "_closed"})
        self._event_arrived.set()

    async def _signal_loop(self) -> None:
        assert self.pc is not None
        while True:
            data = await self._signals.get()
            kind = data.get("type")
            if kind == "answer":
                await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "answer"))
            elif kind == "offer":
                await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
                answer = await self.pc.createAnswer()
                await self.pc.setLocalDescription(answer)
                await self.send({"type": "signal", "data": {
                    "type": "answer", "sdp": self.pc.localDescription.sdp}})

    # -- media -------------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        if self.pc is not None and self.pc.connectionState == "connected":
            self.connected_at = time.monotonic()

    def _on_track(self, track: MediaStreamTrack) -> None:
        publisher, _, label = track.id.rpartition("-")
        self._tasks.append(asyncio.create_task(self._consume(track, publisher, label)))

    async def _consume(self, track: MediaStreamTrack, publisher: str, label: str) -> None:
        """Count decoded frames: mic audio in frames_from, anything else in media_frames."""
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                if label == "audio":
                    self.frames_from[publisher] += 1
                else:
                    self.media_frames[(publisher, label)] += 1

    async def _ping(self, channel: Any) -> None:
        """Like the Mattermost client: `ping` on calls-dc every second, RTT from `pong`."""
        while channel.readyState == "open":
            self._ping_sent = time.monotonic()
            channel.send("ping")
            await asyncio.sleep(self.ping_interval)

    def _on_dc_message(self, message: Any) -> None:
        if message == "pong":
            self.dc_pongs += 1
            if self._ping_sent is not None:
                self.dc_rtts.append(time.monotonic() - self._ping_sent)
                self._ping_sent = None

    def selected_pair(self) -> dict[str, str] | None:
        """The nominated ICE pair as an operator reads it: types, protocol, addresses."""
        return selected_pair_of(self.pc)

    async def inbound_audio_stats(self) -> list[dict[str, Any]]:
        """aiortc's inbound-rtp stats for audio: packets, loss and jitter per stream."""
        if self.pc is None:
            return []
        report = await self.pc.getStats()
        return [{"packets": s.packetsReceived, "lost": s.packetsLost, "jitter": s.jitter}
                for s in report.values() if s.type == "inbound-rtp" and s.kind == "audio"]


def selected_pair_of(pc: Any) -> dict[str, str] | None:
    """A bundled connection's nominated ICE pair as an operator reads it, or None.

    aiortc exposes no getSelectedCandidatePair: the pair comes from aioice
    through the bridge. The data channel's transport is the bundled one.
    """
    if pc is None or pc.sctp is None:
        return None
    pair = aiortc_bridge.nominated_pair(aiortc_bridge.ice_connection(pc.sctp.transport.transport))
    if pair is None:
        return None
    local, remote = pair.local_candidate, pair.remote_candidate
    return {"local": f"{local.host}:{local.port}", "local_type": local.type,
            "remote": f"{remote.host}:{remote.port}", "remote_type": remote.type,
            "protocol": local.transport.lower()}
