"""Reference only: a naive Python SFU built the way aiortc's examples suggest.

Every publisher track is received by aiortc (jitter buffer, decoder thread),
fanned out with `aiortc.contrib.media.MediaRelay`, and re-encoded by one
aiortc RTCRtpSender per subscriber. This is what "an SFU in Python" costs
without callsctl's forwarding path, so bench/run_all.py runs it beside
`callsctl serve` on the same load and reports the ratio.

It speaks just enough of callsctl's `/ws` protocol for the load generator
(callsctl_sfu.client.loadgen): `join` -> `joined`, the client's offer ->
answer, server offers when a publisher's track appears, answers to those.
Track ids are `<publisher>-<label>` like callsctl's, so the generator maps
SSRCs the same way. No authentication: it binds loopback and is for benches.
Each peer gets one host candidate on 127.0.0.1 (loadgen.gather_on), like the
generator's side.

Where its time goes (a cProfile of one run, not a figure): the event-loop
thread spends the largest share in aiortc's pure-Python audio-level
computation (aiortc/rtp.py), run for every frame of every subscriber's
sender, beside one Opus (or VP8) encode per frame per subscriber in aiortc's
executor threads. It saturates near ten participants on two cores.

    python bench/mediarelay_server.py --port 0   # prints "listening <port>" when ready
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.contrib.media import MediaRelay
from aiortc.rtcconfiguration import RTCBundlePolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callsctl_sfu.client.loadgen import gather_on  # noqa: E402
from callsctl_sfu.rtc import aiortc_bridge

MAX_PEERS = 400  # a reference for benches, not a server: refuse beyond what a bench asks


@dataclass
class Peer:
    session_id: str
    call: str
    ws: web.WebSocketResponse
    pc: RTCPeerConnection
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    published: dict[str, Any] = field(default_factory=dict)  # label -> remote track
    subscribed: set[tuple[str, str]] = field(default_factory=set)
    answered_first_offer: bool = False
    needs_offer: bool = False
    gathered: bool = False


class RelayServer:
    """Calls of peers; each publisher track relayed to every other peer of its call."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.peers: dict[str, Peer] = {}
        self.tracks_relayed = 0

    def call_peers(self, call: str) -> list[Peer]:
        return [p for p in self.peers.values() if p.call == call]

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        peer: Peer | None = None
        worker: asyncio.Task[None] | None = None
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                kind = message.get("type")
                if kind == "join" and peer is None:
                    if len(self.peers) >= MAX_PEERS:
                        await ws.send_json({"type": "error", "code": "full",
                                            "message": "reference server is full"})
                        continue
                    pc = RTCPeerConnection(RTCConfiguration(
                        iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
                    peer = Peer(uuid.uuid4().hex[:16], str(message.get("call")), ws, pc)
                    self.peers[peer.session_id] = peer
                    worker = asyncio.create_task(self._work(peer))
                    await ws.send_json({"type": "joined", "session_id": peer.session_id,
                                        "call": peer.call, "participants": [],
                                        "ice_servers": []})
                elif kind == "signal" and peer is not None:
                    peer.queue.put_nowait(("signal", message.get("data") or {}))
                elif kind == "leave":
                    break
        finally:
            if peer is not None:
                self.peers.pop(peer.session_id, None)
                if worker is not None:
                    worker.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(peer.pc.close(), 5)
        return ws

    async def _work(self, peer: Peer) -> None:
        """Signals and renegotiations of one peer, strictly in order."""
        while True:
            kind, data = await peer.queue.get()
            try:
                if kind == "signal" and data.get("type") == "offer":
                    await self._on_offer(peer, data["sdp"])
                elif kind == "signal" and data.get("type") == "answer":
                    await peer.pc.setRemoteDescription(
                        RTCSessionDescription(data["sdp"], "answer"))
                await self._maybe_offer(peer)
            except Exception as exc:  # a reference server: log and go on
                print(f"peer {peer.session_id}: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def _on_offer(self, peer: Peer, sdp: str) -> None:
        pc = peer.pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        if not peer.gathered:
            await gather_on(pc, "127.0.0.1")
            peer.gathered = True
        self._discover(peer, sdp)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        await peer.ws.send_json({"type": "signal", "data": {
            "type": "answer", "sdp": pc.localDescription.sdp}})
        if not peer.answered_first_offer:
            peer.answered_first_offer = True
            for other in self.call_peers(peer.call):
                for label, track in other.published.items():
                    if other is not peer:
                        self._subscribe(peer, other, label, track)

    def _discover(self, peer: Peer, sdp: str) -> None:
        """The client's sending m-sections become published tracks, relayed to the call."""
        description = aiortc_sdp.SessionDescription.parse(sdp)
        streams = {m.rtp.muxId: (m.msid or "").split(" ")[0] for m in description.media}
        for transceiver in peer.pc.getTransceivers():
            track = transceiver.receiver.track
            if track is None or transceiver.mid not in streams:
                continue
            direction = next((m.direction for m in description.media
                              if m.rtp.muxId == transceiver.mid), None)
            if direction not in ("sendrecv", "sendonly"):
                continue
            stream = streams[transceiver.mid]
            label = ("screen" if stream.startswith("screen-") else "video") \
                if track.kind == "video" else "audio"
            if label in peer.published:
                continue
            peer.published[label] = track
            for other in self.call_peers(peer.call):
                if other is not peer and other.answered_first_offer:
                    self._subscribe(other, peer, label, track)

    def _subscribe(self, receiver: Peer, publisher: Peer, label: str, track: Any) -> None:
        key = (publisher.session_id, label)
        if key in receiver.subscribed:
            return
        receiver.subscribed.add(key)
        sender = receiver.pc.addTrack(self.relay.subscribe(track))
        prefix = "screen-" if label == "screen" else ""
        aiortc_bridge.set_sender_identity(sender, stream_id=prefix + publisher.session_id,
                                          track_id=f"{publisher.session_id}-{label}")
        self.tracks_relayed += 1
        receiver.needs_offer = True
        receiver.queue.put_nowait(("negotiate", None))

    async def _maybe_offer(self, peer: Peer) -> None:
        pc = peer.pc
        if not peer.needs_offer or pc.signalingState != "stable" or \
                pc.remoteDescription is None:
            return
        peer.needs_offer = False
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        await peer.ws.send_json({"type": "signal", "data": {
            "type": "offer", "sdp": pc.localDescription.sdp}})

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid(), "sessions": len(self.peers),
                                  "tracks_relayed": self.tracks_relayed})

    async def readyz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ready": True})


async def serve(port: int) -> None:
    server = RelayServer()
    app = web.Application()
    app.router.add_get("/ws", server.websocket)
    app.router.add_get("/stats", server.stats)
    app.router.add_get("/readyz", server.readyz)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server else port
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for peer in list(server.peers.values()):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(peer.pc.close(), 2)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any)")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
