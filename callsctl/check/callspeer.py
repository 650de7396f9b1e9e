"""A WebRTC participant like Mattermost's Calls client, for `check rtcd` and `webrtc --mattermost`.

The signaling differs (rtcd's MessagePack WebSocket, or Mattermost's
WebSocket with the Calls plugin's events), the peer does not. It does what
the web app's RTCPeer (@mattermost/calls-common) and rtcd's own Go client
(mattermost/rtcd client/rtc.go initRTCSession) do:

- the first offer carries the `calls-dc` data channel and an audio m-line
  (here sendrecv, with a tone playing: the check wants media both ways);
- the server answers, then trickles its candidates as
  `{"type": "candidate", "candidate": {"candidate": "candidate:...", ...}}`
  (rtcd service/rtc/msg.go newICEMessage); candidates that arrive before the
  answer wait for it (client/rtc.go iceCh);
- the server may later send an offer of its own (a new participant's
  track); the peer answers it;
- `ping` on calls-dc is answered with `pong` (rtcd service/rtc/dc.go), the
  client's RTT measure.

Beyond the client, a check needs to know the ICE credentials of both sides
and the server's candidates: with them `ice_probe` sends a STUN Binding
request that names the live session (USERNAME `serverUfrag:clientUfrag`,
MESSAGE-INTEGRITY with the server's password; RFC 8445 section 7.2.2) to any
address, over UDP or RFC 4571-framed TCP (RFC 6544), which a pion server
answers. That proves the ICE-TCP port (aiortc has no ICE-TCP) and tells a
blocked UDP port from a wrong advertised address.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaStreamError
from aiortc.rtcicetransport import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

from callsctl.check.stunclient import (
    Address,
    Channel,
    StunErrorResponse,
    StunProtocolError,
    StunTimeout,
)
from callsctl_sfu.client.participant import ToneTrack, selected_pair_of

SendSignal = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Candidate:
    """A server candidate as an operator reads it."""

    protocol: str
    host: str
    port: int
    type: str
    tcptype: str | None = None

    def as_text(self) -> str:
        extra = f" {self.tcptype}" if self.tcptype else ""
        return f"{self.protocol} {self.host}:{self.port} ({self.type}{extra})"


@dataclass
class CallsPeer:
    """The client side of one Calls session; signaling goes through `send`."""

    send: SendSignal
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    relay_only: bool = False
    tone: float = 440.0
    pc: RTCPeerConnection | None = None
    server_candidates: list[Candidate] = field(default_factory=list)
    remote_ufrag: str | None = None
    remote_pwd: str | None = None
    local_ufrag: str | None = None
    offer_at: float | None = None
    answer_at: float | None = None
    connected_at: float | None = None
    audio_frames: int = 0
    dc_rtts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _ping_sent: float | None = None

    async def start(self) -> None:
        """Create the peer and send the first offer (data channel + sendrecv audio)."""
        servers = [RTCIceServer(urls=s["urls"], username=s.get("username"),
                                credential=s.get("credential")) for s in self.ice_servers]
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers,
                                                     iceTransportPolicy=policy))
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.addTrack(ToneTrack(self.tone, 0.3))
        channel = self.pc.createDataChannel("calls-dc")
        channel.on("open", lambda: self._tasks.append(asyncio.create_task(self._ping(channel))))
        channel.on("message", self._on_dc_message)
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self.local_ufrag = _sdp_attr(self.pc.localDescription.sdp, "ice-ufrag")
        self.offer_at = time.monotonic()
        await self.send({"type": "offer", "sdp": self.pc.localDescription.sdp})

    async def on_signal(self, msg: dict[str, Any]) -> None:
        """An answer, an offer or a candidate from the server (already JSON-decoded)."""
        assert self.pc is not None
        kind = msg.get("type")
        if kind == "answer":
            self.answer_at = time.monotonic()
            self.remote_ufrag = _sdp_attr(msg["sdp"], "ice-ufrag")
            self.remote_pwd = _sdp_attr(msg["sdp"], "ice-pwd")
            for line in msg["sdp"].splitlines():
                if line.startswith("a=candidate:"):
                    self._note_candidate(line[2:])
            await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
            pending, self._pending = self._pending, []
            for item in pending:
                await self._add_candidate(item)
        elif kind == "offer":
            await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})
        elif kind == "candidate":
            item = msg.get("candidate")
            if isinstance(item, dict) and item.get("candidate"):
                self._note_candidate(str(item["candidate"]))
                if self.pc.remoteDescription is None:
                    self._pending.append(item)
                else:
                    await self._add_candidate(item)

    def _note_candidate(self, text: str) -> None:
        with contextlib.suppress(ValueError, IndexError):
            cand = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:")
                                      else text)
            entry = Candidate(cand.protocol.lower(), cand.ip, cand.port, cand.type, cand.tcpType)
            if entry not in self.server_candidates:
                self.server_candidates.append(entry)

    async def _add_candidate(self, item: dict[str, Any]) -> None:
        assert self.pc is not None
        text = str(item["candidate"])
        try:
            cand = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:")
                                      else text)
        except (ValueError, IndexError):
            self.errors.append(f"unparsable candidate {text!r}")
            return
        if cand.protocol.lower() != "udp":
            return  # aiortc has no ICE-TCP; the TCP candidate is probed by ice_probe instead
        cand.sdpMid = item.get("sdpMid") or "0"
        cand.sdpMLineIndex = item.get("sdpMLineIndex") or 0
        await self.pc.addIceCandidate(cand)

    async def wait_connected(self, timeout: float) -> str:
        """'connected', 'failed' or 'timeout' (the client gives up after 15 s too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.pc.connectionState if self.pc else "new"
            if state == "connected":
                return "connected"
            if state in ("failed", "closed"):
                return "failed"
            await asyncio.sleep(0.05)
        return "timeout"

    def ice_state(self) -> str:
        return self.pc.iceConnectionState if self.pc else "new"

    def dtls_state(self) -> str | None:
        if self.pc is None or self.pc.sctp is None:
            return None
        return self.pc.sctp.transport.state

    def selected_pair(self) -> dict[str, str] | None:
        """The nominated pair, described as callsctl's own test participant does."""
        return selected_pair_of(self.pc)

    async def rtcp_report(self) -> dict[str, Any] | None:
        """The server's receiver report on our audio (remote-inbound-rtp): it got our packets."""
        if self.pc is None:
            return None
        report = await self.pc.getStats()
        for item in report.values():
            if item.type == "remote-inbound-rtp" and getattr(item, "kind", "audio") == "audio":
                return {"packets_lost": item.packetsLost,
                        "fraction_lost": item.fractionLost,
                        "rtt_ms": round(item.roundTripTime * 1000, 1)
                        if item.roundTripTime is not None else None}
        return None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5)

    # -- media and data channel ----------------------------------------------------------

    def _on_state(self) -> None:
        if self.pc is not None and self.pc.connectionState == "connected":
            self.connected_at = time.monotonic()

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.create_task(self._consume(track)))

    async def _consume(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                await track.recv()
                self.audio_frames += 1

    async def _ping(self, channel: Any) -> None:
        while channel.readyState == "open":
            self._ping_sent = time.monotonic()
            channel.send("ping")
            await asyncio.sleep(0.5)

    def _on_dc_message(self, message: Any) -> None:
        if message == "pong" and self._ping_sent is not None:
            self.dc_rtts.append(time.monotonic() - self._ping_sent)
            self._ping_sent = None


def _sdp_attr(sdp: str, name: str) -> str | None:
    prefix = f"a={name}:"
    for line in sdp.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


@dataclass
class IceProbe:
    """One authenticated Binding request to one address."""

    transport: str
    dest: Address
    ok: bool
    rtt_ms: float | None = None
    error: str | None = None

    def as_details(self) -> dict[str, Any]:
        return {"transport": self.transport, "dest": f"{self.dest[0]}:{self.dest[1]}",
                "ok": self.ok, "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 1),
                "error": self.error}


def ice_probe(transport: str, dest: Address, peer: CallsPeer, timeout: float) -> IceProbe:
    """A connectivity check that names the live session; blocking (run it in a thread).

    The request is what an ICE agent in the controlling role sends (RFC 8445
    7.2.2): USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY with the
    server's password, FINGERPRINT. A pion server answers it from any source
    address (it learns a peer-reflexive candidate), so a fresh socket works.
    """
    if not (peer.remote_ufrag and peer.remote_pwd and peer.local_ufrag):
        return IceProbe(transport, dest, False, error="no ICE credentials (no answer yet)")
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={
        "USERNAME": f"{peer.remote_ufrag}:{peer.local_ufrag}",
        "PRIORITY": 1853824767,
        "ICE-CONTROLLING": secrets.randbits(64),
    })
    request.add_message_integrity(peer.remote_pwd.encode())
    request.add_fingerprint()
    try:
        channel = (Channel.udp(dest, connect=True) if transport == "udp"
                   else Channel.tcp(dest, timeout, framing="rfc4571"))
    except ConnectionRefusedError:
        return IceProbe(transport, dest, False, error="connection refused")
    except TimeoutError:
        return IceProbe(transport, dest, False, error=f"TCP connect timed out after {timeout:g} s")
    except OSError as exc:
        return IceProbe(transport, dest, False, error=exc.strerror or str(exc))
    with channel:
        try:
            reply = channel.transact(request, dest, timeout)
        except ConnectionRefusedError:
            return IceProbe(transport, dest, False, error="ICMP port unreachable")
        except StunTimeout:
            return IceProbe(transport, dest, False, error=f"no answer within {timeout:g} s")
        except StunErrorResponse as exc:
            return IceProbe(transport, dest, False, error=f"STUN error {exc}")
        except (StunProtocolError, OSError) as exc:
            return IceProbe(transport, dest, False, error=str(exc) or type(exc).__name__)
    return IceProbe(transport, dest, True, rtt_ms=reply.rtt_ms)
