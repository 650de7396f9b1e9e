"""The recorder in the call: signaling, a receive-only peer, and a tap on every track.

It joins with a token whose `role` claim is `recorder`, so the server does
not count it as a participant and tells everyone the call is being recorded
(`call_recording`). It publishes nothing. aiortc reassembles each track's
frames in its jitter buffer (asking for retransmissions and keyframes as a
browser would) and would hand them to a decoder; the tap takes them there
instead, so nothing is decoded (the decoder thread just idles), and passes
them to the track's writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from callsctl_sfu.client.hangup import hang_up
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.jobs.recorder.writers import TrackWriter, writer_for
from callsctl_sfu.rtc import aiortc_bridge

log = logging.getLogger("callsctl_sfu.jobs.recorder")

JOIN_TIMEOUT_S = 15.0
KEYFRAME_RETRY_S = 0.5


class RecorderError(CallsctlError, RuntimeError):
    """The recorder could not join or record; the message says which step failed."""
    code = "recorder_failed"


class FrameTap:
    """Stands in for an aiortc receiver's decoder queue: frames go to `sink`.

    `None` (aiortc's stop signal for its decoder thread) is passed on to the
    real queue so the receiver still shuts down cleanly.
    """

    def __init__(self, original: Any, sink: Callable[[bytes, int], None]) -> None:
        self.original = original
        self.sink = sink

    def get(self) -> Any:
        """What aiortc's decoder thread waits on: only the stop signal ever comes."""
        return self.original.get()

    def put(self, item: Any) -> None:
        if item is None:
            self.original.put(None)
            return
        _codec, frame = item
        try:
            self.sink(bytes(frame.data), frame.timestamp)
        except Exception:  # one bad frame must not end the recording (nor aiortc's loop)
            log.exception("could not write a frame")


def tap_receiver(receiver: Any, sink: Callable[[bytes, int], None]) -> None:
    """Divert the encoded frames of one aiortc RTCRtpReceiver (aiortc 1.16 internals)."""
    original = aiortc_bridge.decoder_queue(receiver)
    if original is None:
        raise RecorderError("this aiortc version has no decoder queue to tap (the recorder "
                            "needs aiortc 1.16, as pinned in pyproject.toml)")
    if not isinstance(original, FrameTap):
        aiortc_bridge.set_decoder_queue(receiver, FrameTap(original, sink))


class RecorderSession:
    """Joins one call and records every track it receives into `directory`."""

    display_name = "Recorder"  # the name it joins with (the captions worker reuses the join)

    def __init__(self, ws_url: str, token: str, call: str, directory: Path,
                 ssl: Any = None) -> None:
        self.ws_url = ws_url
        self.token = token
        self.call = call
        self.directory = directory
        self.ssl = ssl
        self.started_mono = time.monotonic()
        self.started_at = time.time()
        self.writers: dict[str, TrackWriter] = {}
        self.names: dict[str, str] = {}
        self.tracks: list[dict[str, Any]] = []
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.failure: BaseException | None = None
        self.session_id: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc: RTCPeerConnection | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pli_at: dict[int, float] = {}
        self._seen: dict[str, int] = {}
        self._joined = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await asyncio.wait_for(self._http.ws_connect(
                f"{self.ws_url}?token={self.token}", ssl=self.ssl), JOIN_TIMEOUT_S)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RecorderError(f"cannot reach the server's signaling at {self.ws_url}: "
                                f"{exc}") from None
        self._tasks.append(asyncio.create_task(self._read_loop()))
        await self._send({"type": "join", "call": self.call, "name": self.display_name})
        try:
            joined = await asyncio.wait_for(asyncio.shield(self._joined), JOIN_TIMEOUT_S)
        except TimeoutError:
            raise RecorderError(f"the server did not answer the join in "
                                f"{JOIN_TIMEOUT_S:g} s") from None
        self.session_id = joined["session_id"]
        for person in joined.get("participants", []):
            self.names[person["session_id"]] = person.get("name") or person.get("user", "")
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.on("track", self._on_track)
        pc.addTransceiver("audio", direction="recvonly")
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        await self._send({"type": "signal", "data": {"type": "offer",
                                                     "sdp": pc.localDescription.sdp}})
        log.info("joined call %s as recorder session %s", self.call, self.session_id)

    def stop(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def close(self) -> None:
        """Leave the call and finish every file (trailers, cues)."""
        await hang_up(self._tasks, self._pc, self._ws, self._http, say_leave=self._send)
        for key, writer in self.writers.items():
            try:
                writer.close()
            except Exception as exc:  # keep finishing the others
                log.error("could not finish %s: %s", writer.path.name, exc)
            self._describe(key, writer)

    # -- signaling ------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                await self._on_event(json.loads(frame.data))
        except Exception as exc:
            log.error("signaling failed: %s", exc)
        if not self._joined.done():
            self._joined.set_exception(RecorderError("the server closed signaling before "
                                                     "the recorder joined"))
        self.stop("the server closed the signaling connection")

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "joined" and not self._joined.done():
            self._joined.set_result(event)
        elif kind == "error":
            message = f"{event.get('code')}: {event.get('message')}"
            if not self._joined.done():
                self._joined.set_exception(RecorderError(f"the server refused the join "
                                                         f"({message})"))
            elif event.get("code") == "session_removed":
                self.stop(f"removed from the call ({event.get('message')})")
            else:
                log.warning("server error event: %s", message)
        elif kind == "user_joined":
            self.names[event["session_id"]] = event.get("name") or event.get("user", "")
        elif kind == "call_end":
            self.stop(f"the call ended ({event.get('reason', 'ended')})")
        elif kind == "signal":
            await self._on_signal(event.get("data") or {})

    async def _on_signal(self, data: dict[str, Any]) -> None:
        pc = self._pc
        if pc is None:
            return
        if data.get("type") == "answer":
            await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "answer"))
        elif data.get("type") == "offer":
            await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            await self._send({"type": "signal", "data": {
                "type": "answer", "sdp": pc.localDescription.sdp}})

    # -- media ---------------------------------------------------------------------------

    def _on_track(self, track: Any) -> None:
        assert self._pc is not None
        publisher, _, label = track.id.rpartition("-")
        receiver = next((t.receiver for t in self._pc.getTransceivers()
                         if t.receiver.track is track), None)
        if receiver is None or not publisher:
            log.warning("track %s has no receiver; not recorded", track.id)
            return
        # A source that comes back (a second screen share) on a new receiver restarts its
        # RTP time line: it gets a file of its own rather than a jump backwards.
        self._seen[track.id] = self._seen.get(track.id, 0) + 1
        count = self._seen[track.id]
        key = track.id if count == 1 else f"{track.id}-{count}"
        stem = self.directory / (f"{label}-{publisher}" if count == 1
                                 else f"{label}-{publisher}-{count}")

        def sink(data: bytes, timestamp: int) -> None:
            if self.failure is not None:
                return
            writer = self.writers.get(key)
            if writer is None:
                # RTP timestamp 0 of this track (aiortc's mapper starts at the first frame
                # it releases) is placed when its first packet arrived: the audio jitter
                # buffer holds a few packets back, which would otherwise delay the voice.
                offset = first_packet.get("at", time.monotonic()) - self.started_mono
                writer = self.writers[key] = writer_for(label, stem, offset)
                writer.publisher, writer.label = publisher, label  # type: ignore[attr-defined]
                log.info("recording %s of %s (%s) from %.3f s", label,
                         self.names.get(publisher, publisher), writer.path.name, offset)
            try:
                writer.write(data, timestamp)
                if writer.frames == 0:  # a video track waiting for its first keyframe
                    self._ask_keyframe(receiver)
            except OSError as exc:  # disk full, directory gone: stop, say so
                self.failure = exc
                self.stop(f"cannot write {writer.path.name}: {exc.strerror or exc}")

        first_packet: dict[str, float] = {}
        handle = aiortc_bridge.rtp_packet_handler(receiver)
        if handle is not None:
            async def arrival_clock(packet: Any, arrival_time_ms: int) -> None:
                first_packet.setdefault("at", time.monotonic())
                await handle(packet, arrival_time_ms=arrival_time_ms)

            aiortc_bridge.set_rtp_packet_handler(receiver, arrival_clock)
        try:
            tap_receiver(receiver, sink)
        except RecorderError as exc:
            self.failure = exc
            self.stop(str(exc))

    def _ask_keyframe(self, receiver: Any) -> None:
        """PLI (RFC 4585 §6.3.1) upstream, at most twice a second per receiver.

        The SFU asks the publisher for a keyframe when the recorder's track starts, but
        if that keyframe arrives incomplete nobody notices: aiortc would learn it from
        its decoder, which the tap bypasses. So the recorder asks until one arrives.
        """
        now = time.monotonic()
        if now - self._pli_at.get(id(receiver), 0.0) < KEYFRAME_RETRY_S:
            return
        self._pli_at[id(receiver)] = now
        ssrcs = aiortc_bridge.active_ssrcs(receiver)
        if ssrcs:
            self._tasks.append(asyncio.ensure_future(aiortc_bridge.send_pli(receiver, ssrcs[-1])))

    def _describe(self, key: str, writer: TrackWriter) -> None:
        if writer.frames == 0:
            return
        publisher = getattr(writer, "publisher", key)
        self.tracks.append({
            "file": writer.path.name, "kind": getattr(writer, "label", ""),
            "session_id": publisher, "name": self.names.get(publisher, publisher),
            "start_s": round(writer.start_s, 3),
            "duration_s": round(writer.duration, 3), "frames": writer.frames})
