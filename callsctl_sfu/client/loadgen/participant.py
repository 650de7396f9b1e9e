"""One synthetic participant: `/ws` signaling, an aiortc peer for the handshake, SRTP counting.

It joins like the web client, sends the streams of its `Role` once DTLS is up
and counts received SRTP per SSRC without decrypting it (the SSRC is in the
clear, RFC 3711 §3.1); every Nth packet is decrypted to read the send stamp.
A participant that fails records why in `failure` instead of raising, so one
broken join does not end the run.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import random
import socket
import struct
import termios
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtcconfiguration import RTCBundlePolicy

from callsctl_sfu.client.hangup import hang_up
from callsctl_sfu.client.loadgen.config import Role
from callsctl_sfu.client.loadgen.handshake import LIGHT_FLAG, gather_on, install_light_switch
from callsctl_sfu.client.loadgen.negotiation import (
    AUDIO_LEVEL_URI,
    MID_URI,
    RID_URI,
    Negotiated,
    answer_accepts_simulcast,
    simulcast_offer,
    source_of,
)
from callsctl_sfu.client.loadgen.pump import Counts, Handlers, SharedPump
from callsctl_sfu.client.loadgen.sender import STAMP, STAMP_LEN, STAMP_MAGIC, StreamSender
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.rtc import aiortc_bridge

if TYPE_CHECKING:
    from callsctl_sfu.client.loadgen.orchestrate import LoadTest


READ_BATCH = 64      # datagrams read per wake-up of a participant's socket at most
MAX_DATAGRAM = 65535  # what asyncio's datagram transport reads at most, too


class LightParticipant:
    """A participant that handshakes like a client and then only counts and replays packets."""

    def __init__(self, test: LoadTest, call: str, user: str, role: Role) -> None:
        self.test = test
        self.call = call
        self.user = user
        self.role = role
        # Measured for loss and delay (every receiver unless a bench set probes_per_call).
        self.probe = test.is_probe(user)
        self.session_id: str | None = None
        self.failure: str | None = None
        self.started_at = 0.0
        self.joined_at: float | None = None
        self.connected_at: float | None = None
        self._first_media_at: float | None = None
        self._received: dict[int, int] = {}  # packets per SSRC (read via `received`)
        self._rtcp_in = 0
        # While its socket is read by the process's C receive thread (pump.py): the pump
        # and the socket's slot there, which keep the counts until the participant leaves.
        self._pumped: tuple[SharedPump, int] | None = None
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
        self.dc_open_at: float | None = None  # `calls-dc` open (LoadConfig.data_channel)
        self.dc_pongs = 0
        self.closed = False

    @property
    def connected(self) -> bool:
        return self.connected_at is not None and not self.closed

    def _pump_counts(self) -> Counts | None:
        """What the C receive thread counted on this socket, while it reads it."""
        if self._pumped is None:
            return None
        pump, slot = self._pumped
        return pump.counts(slot)

    @property
    def received(self) -> dict[int, int]:
        """SRTP packets received per SSRC so far (a copy while the C thread counts them)."""
        counts = self._pump_counts()
        return self._received if counts is None else counts.received

    @property
    def rtcp_in(self) -> int:
        counts = self._pump_counts()
        return self._rtcp_in if counts is None else counts.rtcp_in

    @property
    def first_media_at(self) -> float | None:
        """loop.time() (time.monotonic()) of the first SRTP packet received."""
        if self._first_media_at is None and (counts := self._pump_counts()) is not None:
            self._first_media_at = counts.first_media
        return self._first_media_at

    @property
    def _watches_rtcp(self) -> bool:
        """SRTCP is read for keyframe requests only when this participant sends video."""
        return any(s.sample.kind == "video" for s in self.senders)

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

        install_light_switch()
        pc = self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        first = pc.addTransceiver("audio", direction="sendrecv" if self.role.audio else "recvonly")
        dtls = first.sender.transport
        setattr(dtls, LIGHT_FLAG, True)
        if test.config.srtp_profile is not None:
            aiortc_bridge.set_srtp_profiles(dtls, [test.config.srtp_profile])
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
        if test.config.data_channel:
            self._open_data_channel(pc)
        await gather_on(pc, test.address_for(self), consent=test.consent.add)
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

    def _open_data_channel(self, pc: RTCPeerConnection) -> None:
        """`calls-dc` as the clients make it: one "ping" once open, "pong" counted.

        One ping, not one a second like the clients: it proves the channel
        works end to end, and the association state it leaves on the server
        (the stream's inbound and outbound sequence) is what steady pinging keeps.
        """
        channel = pc.createDataChannel("calls-dc")

        @channel.on("open")
        def on_open() -> None:
            self.dc_open_at = asyncio.get_running_loop().time()
            channel.send("ping")

        @channel.on("message")
        def on_message(message: Any) -> None:
            if message == "pong":
                self.dc_pongs += 1

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
                source = source_of(media.msid, media.kind)
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
                rid_id = ids.get(RID_URI) if sender.layers and answer_accepts_simulcast(
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
        if not self._read_on_pump(protocol, transport):
            protocol.datagram_received = self._receiver(protocol.datagram_received,
                                                        protocol.error_received, transport)
        now = asyncio.get_running_loop().time()
        self.connected_at = now
        for sender in self.all_senders():
            sender.next_due = now + random.uniform(0, sender.sample.interval)
        self._connected.set()
        self.test.on_connected(self)

    def _read_on_pump(self, protocol: Any, transport: Any) -> bool:
        """Hand the socket to the process's C receive thread (pump.py); False: asyncio's."""
        pump = self.test.receive_pump()
        if pump is None:
            return False
        closing = transport.is_closing

        def on_error(exc: Exception) -> None:
            if not closing():
                protocol.error_received(exc)

        handlers = Handlers(datagram=protocol.datagram_received, sample=self._sample_read,
                            rtcp=self._on_rtcp, error=on_error)
        every = self.test.config.delay_sample_every if self.probe else 0
        slot = pump.add(transport, every, self._watches_rtcp, handlers)
        if slot is None:
            return False
        self._pumped = (pump, slot)
        return True

    def release_socket(self) -> None:
        """Take the socket back from the C thread (before it closes), keeping its counts."""
        if self._pumped is None:
            return
        pump, slot = self._pumped
        self._pumped = None
        counts = pump.remove(slot)
        self._received, self._rtcp_in = counts.received, counts.rtcp_in
        if self._first_media_at is None:
            self._first_media_at = counts.first_media

    def _sample_read(self, data: bytes, arrived: float) -> None:
        self._sample_delay(data, int(arrived * 1e9))

    def _receiver(self, original: Callable[[bytes, Any], None],
                  on_error: Callable[[Exception], None],
                  transport: Any) -> Callable[[bytes, Any], None]:
        """The receive path: count SRTP per SSRC undecrypted; sample every Nth for the stamp.

        After the datagram asyncio read, up to READ_BATCH - 1 more queued on the
        same socket are read in the same call, as the server's own Python reader
        does (rtc/mux.py). asyncio's datagram transport reads one per wake-up, so
        a socket that fell behind (the generator busy joining) drained by one
        datagram per loop pass, at barely more than they arrived: a standing
        queue of seconds that read as the server's forwarding delay.

        Whether more is queued is asked with FIONREAD (ioctl(2); for UDP, the
        size of the next datagram, 0 when none), not with a recvfrom that fails:
        at one datagram per wake-up, the usual case of a generator keeping up,
        that look is paid on every packet, and the failing recvfrom with its
        exception costs about 1.3 µs against 0.5 µs.
        """
        received = self._received
        every = self.test.config.delay_sample_every
        loop = asyncio.get_running_loop()
        watch_rtcp = self._watches_rtcp
        sock = getattr(transport, "_sock", None)  # asyncio's own socket (rtc/mux.py reads it too)
        if not isinstance(sock, socket.socket):
            sock = None
        recvfrom = sock.recvfrom if sock is not None else None
        fd = sock.fileno() if sock is not None else -1
        next_size = array.array("i", [0])
        ioctl, closing = fcntl.ioctl, transport.is_closing

        def datagram_received(data: bytes, addr: Any) -> None:
            handle(data, addr)
            if recvfrom is None:
                return
            for _ in range(READ_BATCH - 1):
                try:
                    ioctl(fd, termios.FIONREAD, next_size, True)
                    if not next_size[0]:
                        return
                    data, addr = recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # a queued ICMP error, reported as asyncio would
                    if not closing():
                        on_error(exc)
                    return
                handle(data, addr)

        def handle(data: bytes, addr: Any) -> None:
            if len(data) > 12 and 127 < data[0] < 192:
                if 191 < data[1] < 224:
                    self._rtcp_in += 1
                    if watch_rtcp:
                        self._on_rtcp(data)
                    return
                ssrc = int.from_bytes(data[8:12], "big")
                count = received.get(ssrc, 0) + 1
                received[ssrc] = count
                if count == 1 and self._first_media_at is None:
                    self._first_media_at = loop.time()
                if count % every == 0 and self.probe:
                    self._sample_delay(data)
                return
            original(data, addr)

        return datagram_received

    def _sample_delay(self, data: bytes, arrived: int | None = None) -> None:
        """A sampled packet's stamp against `arrived` (time.monotonic_ns(); now if None)."""
        if arrived is None:
            arrived = time.monotonic_ns()
        try:
            plain = self._rx.unprotect(data)  # type: ignore[union-attr]
        except pylibsrtp.Error:
            self.srtp_errors += 1
            return
        if plain[0] & 0x20 and len(plain) >= 12 + STAMP_LEN and plain[-1] == STAMP_LEN:
            magic, sent, _zero, _count = STAMP.unpack_from(plain, len(plain) - STAMP_LEN)
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
        """An RTCP RR (RFC 3550 §6.4.2): the regular RTCP a receiving client sends.

        One report block per stream received so far, at most 31, as libwebrtc
        sends them, so the server reads what it reads from browsers. The generator
        keeps no reception statistics: the blocks say no loss, no jitter, and the
        packets counted as the highest sequence; LSR and DLSR are 0 (RFC 3550
        §6.4.1: no sender report received).
        """
        if self._rtcp_send is None or self.closed:
            return
        ssrcs = list(self.received.items())[:31]
        packet = struct.pack("!BBHI", 0x80 | len(ssrcs), 201, 1 + 6 * len(ssrcs),
                             self._rr_ssrc)
        packet += b"".join(struct.pack("!IIIIII", ssrc, 0, count & 0xFFFFFFFF, 0, 0, 0)
                           for ssrc, count in ssrcs)
        with contextlib.suppress(pylibsrtp.Error, OSError):
            self._rtcp_send(packet)

    # -- leaving ---------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sender in self.all_senders():
            sender.ready = False
        self.release_socket()
        await hang_up(self._tasks, self.pc, self._ws, say_leave=self._send)


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
