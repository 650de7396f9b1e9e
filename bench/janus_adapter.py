"""Janus (VideoRoom) driven by the load generator: the server's config, its process, a participant.

Bench code, not the product. The load generator (callsctl_sfu.client.loadgen)
builds its participants through `LoadTest(participant_factory=...)`;
`JanusParticipant` is a `LightParticipant` that speaks the Janus WebSocket API
instead of callsctl's `/ws`, and keeps everything that makes the meter the
same: the `StreamSender`s (pre-encoded Opus, send stamp in RTP padding), the
receive path (SRTP counted per SSRC undecrypted, every Nth packet decrypted
for the delay), the media clock, the window and the report.

What it follows (Janus 1.1.2, the Debian package `janus`):

- The Janus API over WebSockets (https://janus.conf.meetecho.com/docs/rest.html,
  "WebSockets interface"): the `janus-protocol` subprotocol; `create` a
  session, `attach` a handle to `janus.plugin.videoroom`, `message` with a
  `body` (and a `jsep`) per plugin request; a plugin's answer comes as an
  `ack` then an `event` with the same transaction; a session dies after 60 s
  without traffic, so a `keepalive` goes every KEEPALIVE_S.
- The VideoRoom API (https://janus.conf.meetecho.com/docs/videoroom.html,
  1.x multistream): `create` a room, `join` as `publisher` (its `joined`
  answer lists the room's current publishers, later ones come as `event`s
  with `publishers`), `configure` with the JSEP offer (answer in the event),
  `join` as `subscriber` with `streams: [{feed}]` (Janus sends the offer with
  `attached`), `subscribe` for more feeds on the same handle (offer with
  `updated`), `start` with the JSEP answer.

Every participant joins the room as a publisher, also the muted ones: that is
how a Janus client learns of publishers. Muted ones never `configure`, so they
publish nothing and only subscribe, like callsctl's muted listeners. A
publisher's offer carries one m-section per stream of its `Role`, as for
callsctl: Opus audio, a VP8 camera, a VP8 screen share (two simulcast layers
`l` and `h` when the test asks for simulcast, offered as a browser does:
negotiation.simulcast_offer, highest layer first as janus.js orders them);
`configure` names each stream (`descriptions`: "camera", "screen") so
subscribers can tell the two video streams apart (their offer's `streams`
carry the publisher's `feed_description`). An unmuted
participant has two peer connections (Janus publishes and subscribes on
separate handles); everyone's subscriptions share one subscriber handle, so
with two publishers a listener has one peer connection carrying both feeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import signal
import socket
import subprocess
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcconfiguration import RTCBundlePolicy
from run_all import stop_process

from callsctl_sfu.client.hangup import PEER_CLOSE_TIMEOUT_S, hang_up
from callsctl_sfu.client.loadgen import LightParticipant, LoadJoinError, Role, gather_on
from callsctl_sfu.client.loadgen.handshake import LIGHT_FLAG, install_light_switch
from callsctl_sfu.client.loadgen.negotiation import simulcast_offer
from callsctl_sfu.client.loadgen.sender import StreamSender
from callsctl_sfu.rtc import aiortc_bridge

if TYPE_CHECKING:
    from callsctl_sfu.client.loadgen import LoadTest

JANUS = "janus"
INSTALL_HINT = "install it with: apt-get install -y janus"
PLUGIN = "janus.plugin.videoroom"
KEEPALIVE_S = 25.0  # Janus drops a session after 60 s (session_timeout) without a request
REQUEST_TIMEOUT_S = 20.0
START_TIMEOUT_S = 20.0
MAX_FEEDS_PER_REQUEST = 64


class JanusUnavailable(RuntimeError):
    """Janus is not installed or did not start; the message is one line and says what to do."""


# -- the server --------------------------------------------------------------------------------


def janus_version() -> str:
    """`janus --version`'s first line, e.g. "Janus version: 1102 (1.1.2)"."""
    binary = shutil.which(JANUS)
    if binary is None:
        raise JanusUnavailable(f"janus is not installed; {INSTALL_HINT}")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                         check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "janus (version unknown)"


def _plugins_folder(kind: str) -> Path:
    """Where Debian puts Janus's plugins/transports (the multiarch lib directory)."""
    for base in sorted(Path("/usr/lib").glob("*/janus")) + [Path("/usr/lib/janus"),
                                                            Path("/opt/janus/lib/janus")]:
        if (base / kind).is_dir():
            return base / kind
    raise JanusUnavailable(f"janus's {kind} folder was not found; {INSTALL_HINT}")


def _others(folder: Path, keep: str) -> str:
    """Every plugin library in folder except `keep`: Janus's `disable` list is by file name."""
    names = sorted({p.name.split(".so")[0] + ".so" for p in folder.glob("libjanus_*.so*")})
    return ",".join(n for n in names if n != keep)


def ice_address() -> str:
    """The machine's own IPv4 address that Janus gathers its one host candidate on.

    Janus 1.1.2 never gathers on a loopback interface: with `ice_enforce_list =
    "lo"` it finds no usable address and libnice falls back to every interface
    (measured: its answer then carried eth0's IPv4 and IPv6 candidates, and ICE
    with an aiortc peer on 127.0.0.1 failed). So Janus's ICE is pinned to one
    address of this machine instead, and the load generator gathers on the
    same address: the kernel delivers traffic between two local addresses
    through the loopback device (`ip route get` says `local ... dev lo`), so
    nothing leaves the machine.
    """
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show", "up"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        interfaces = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise JanusUnavailable(f"cannot list this machine's addresses (ip -j addr): {exc}"
                               ) from None
    for interface in interfaces:
        if "LOOPBACK" in interface.get("flags", []):
            continue
        for info in interface.get("addr_info", []):
            if info.get("family") == "inet" and info.get("scope") == "global":
                return str(info["local"])
    raise JanusUnavailable("no non-loopback IPv4 address on this machine for Janus's ICE "
                           "(Janus does not gather candidates on loopback)")


def write_config(folder: Path, ws_port: int, rtp_ports: tuple[int, int], log: Path,
                 address: str) -> dict[str, str]:
    """janus.jcfg, the WebSockets transport's and VideoRoom's config; returns the settings.

    Only VideoRoom and the WebSockets transport load (the rest is in `disable`),
    ICE gathers on one local address only (`ice_address`), IPv6 off, no
    STUN/TURN, no event handlers, no libnice debugging, a fixed RTP port range,
    the log goes to a file.
    """
    plugins, transports = _plugins_folder("plugins"), _plugins_folder("transports")
    settings = {
        "plugins": "libjanus_videoroom.so only",
        "transports": "libjanus_websockets.so only (ws on 127.0.0.1, no admin, no wss)",
        "ice_enforce_list": f"{address} (this machine's own address; see ice_address)",
        "ipv6": "off", "stun/turn": "none", "nice_debug": "false",
        "full_trickle": "false (half-trickle, the default)",
        "rtp_port_range": f"{rtp_ports[0]}-{rtp_ports[1]}", "event handlers": "off",
        "debug_level": "3 (warnings and errors), to a file",
        "session_timeout": "60 s (the default; the adapter sends keepalives)",
    }
    (folder / "janus.jcfg").write_text(f"""general: {{
\tconfigs_folder = "{folder}"
\tplugins_folder = "{plugins}"
\ttransports_folder = "{transports}"
\tevents_folder = "{plugins.parent / 'events'}"
\tloggers_folder = "{plugins.parent / 'loggers'}"
\tlog_to_file = "{log}"
\tdebug_level = 3
\tsession_timeout = 60
}}
media: {{
\trtp_port_range = "{rtp_ports[0]}-{rtp_ports[1]}"
}}
nat: {{
\tnice_debug = false
\tfull_trickle = false
\tignore_mdns = true
\tice_enforce_list = "{address}"
}}
plugins: {{
\tdisable = "{_others(plugins, 'libjanus_videoroom.so')}"
}}
transports: {{
\tdisable = "{_others(transports, 'libjanus_websockets.so')}"
}}
loggers: {{
\tdisable = "{_others(plugins.parent / 'loggers', '')}"
}}
events: {{
\tbroadcast = false
}}
""")
    (folder / "janus.transport.websockets.jcfg").write_text(f"""general: {{
\tjson = "plain"
\tws = true
\tws_port = {ws_port}
\tws_ip = "127.0.0.1"
\twss = false
}}
admin: {{
\tadmin_ws = false
\tadmin_wss = false
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return settings


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rtp_port_range(count: int) -> tuple[int, int]:
    """A free-looking UDP range of `count` ports from a random base (Janus binds in it)."""
    base = 40000 + (time.monotonic_ns() // 1000) % 15000
    return base, base + count - 1


@dataclass
class JanusServer:
    """A running Janus: its process, WebSocket URL, log, settings and ICE address."""

    process: asyncio.subprocess.Process
    ws_url: str
    log: Path
    settings: dict[str, str]
    address: str

    async def stop(self) -> None:
        await stop_process(self.process)


async def start_janus(workdir: Path, rtp_ports: int = 2000,
                      prefix: Sequence[str] = ()) -> JanusServer:
    """Janus with its own generated config folder (`-F`), WebSockets on a free loopback port.

    `prefix` goes before the command (bench/run_all.pinned: `taskset -c 0`).

    Raises JanusUnavailable (one line) when the binary is missing or it does not
    answer on its WebSocket within START_TIMEOUT_S.
    """
    binary = shutil.which(JANUS)
    if binary is None:
        raise JanusUnavailable(f"janus is not installed; {INSTALL_HINT}")
    port = _free_port()
    folder = workdir / f"janus-{port}"
    folder.mkdir()
    log = folder / "janus.log"
    address = ice_address()
    settings = write_config(folder, port, rtp_port_range(rtp_ports), log, address)
    process = await asyncio.create_subprocess_exec(
        *prefix, binary, "-F", str(folder), "-C", str(folder / "janus.jcfg"), "-N",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"ws://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise JanusUnavailable(f"janus exited at start (code {process.returncode})"
                                       f"{_last_line(log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.ws_connect(url, protocols=("janus-protocol",),
                                           timeout=aiohttp.ClientWSTimeout(ws_close=1)) as ws:
                    await ws.send_str(json.dumps({"janus": "info", "transaction": "ready"}))
                    reply = await ws.receive(timeout=2)
                    if reply.type == aiohttp.WSMsgType.TEXT and \
                            json.loads(reply.data).get("janus") == "server_info":
                        return JanusServer(process, url, log, settings, address)
            await asyncio.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    raise JanusUnavailable(f"janus did not answer on {url} within {START_TIMEOUT_S:g} s"
                           f"{_last_line(log)}")


def _last_line(log: Path) -> str:
    """The log's last line for a one-line error (the log sits in a temp dir that goes away)."""
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines:
            return f"; its log ends: {lines[-1][:200]}"
    return ""


def room_number(call: str) -> int:
    """A VideoRoom id per load-generator call name (Janus rooms are numbers)."""
    return 100000 + zlib.crc32(call.encode()) % 1_000_000_000


# -- one participant ---------------------------------------------------------------------------


class JanusError(LoadJoinError):
    """Janus or VideoRoom answered a request with an error."""


class JanusParticipant(LightParticipant):
    """A load-generator participant that joins a VideoRoom over the Janus WebSocket API."""

    def __init__(self, test: LoadTest, call: str, user: str, role: Role) -> None:
        super().__init__(test, call, user, role)
        self._transactions = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._janus_session: int | None = None
        self._publisher_handle: int | None = None
        self._subscriber_handle: int | None = None
        self._feed_id: int | None = None
        self._feeds: dict[int, str] = {}  # publisher feed id -> display (= its user name)
        self._subscribed: set[int] = set()
        self._new_feeds: asyncio.Queue[int] = asyncio.Queue()
        self._offers: asyncio.Queue[tuple[dict[str, Any], dict[str, Any]]] = asyncio.Queue()
        self.sub_pc: RTCPeerConnection | None = None
        self._sub_rx: Any = None
        self._pub_rx: Any = None
        self.room = room_number(call)

    # -- the Janus API ---------------------------------------------------------------------------

    async def _request(self, message: dict[str, Any], handle: int | None = None,
                       timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Send one Janus API request; the reply (or the plugin's event) with its transaction."""
        transaction = f"t{next(self._transactions)}"
        message = {**message, "transaction": transaction}
        if self._janus_session is not None:
            message["session_id"] = self._janus_session
        if handle is not None:
            message["handle_id"] = handle
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        try:
            await self._send(message)
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise JanusError(f"janus: no answer to {message.get('janus')}/"
                             f"{(message.get('body') or {}).get('request', '')} "
                             f"within {timeout:g} s") from None
        finally:
            self._pending.pop(transaction, None)
        if reply.get("janus") == "error":
            error = reply.get("error") or {}
            raise JanusError(f"janus: {error.get('code')}: {error.get('reason')}")
        data = (reply.get("plugindata") or {}).get("data") or {}
        if "error_code" in data:
            raise JanusError(f"videoroom: {data['error_code']}: {data.get('error')}")
        return reply

    async def _message(self, handle: int, body: dict[str, Any],
                       jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        return await self._request(message, handle)

    async def _read_loop(self) -> None:
        """Replies go to their request; unsolicited plugin events feed the subscriptions."""
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(frame.data)
                kind = str(event.get("janus"))
                self.events[kind] += 1
                if kind == "ack" and "plugindata" not in event:
                    continue  # a plugin request was taken; its event follows
                future = self._pending.get(str(event.get("transaction")))
                if future is not None and not future.done():
                    future.set_result(event)
                    continue
                if kind == "event":
                    self._on_plugin_event(event)
                elif kind == "error":
                    self.error_codes[f"janus {(event.get('error') or {}).get('code')}"] += 1
        except (aiohttp.ClientError, ValueError):
            pass
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LoadJoinError("signaling: janus closed the connection"))
        if not self.closed:
            self.events["_ws_closed"] += 1

    def _on_plugin_event(self, event: dict[str, Any]) -> None:
        data = (event.get("plugindata") or {}).get("data") or {}
        self._learn_publishers(data.get("publishers") or [])
        if "error_code" in data:
            self.error_codes[f"videoroom {data['error_code']}"] += 1

    def _learn_publishers(self, publishers: list[dict[str, Any]]) -> None:
        for publisher in publishers:
            feed = publisher.get("id")
            if not isinstance(feed, int) or feed == self._feed_id or feed in self._feeds:
                continue
            self._feeds[feed] = str(publisher.get("display") or feed)
            self._new_feeds.put_nowait(feed)

    async def _keepalive(self) -> None:
        """A `keepalive` every KEEPALIVE_S; Janus acks it (nothing to wait for)."""
        while not self.closed:
            await asyncio.sleep(KEEPALIVE_S)
            with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                await self._send({"janus": "keepalive", "session_id": self._janus_session,
                                  "transaction": f"k{next(self._transactions)}"})

    # -- joining ---------------------------------------------------------------------------------

    async def _join(self) -> None:
        test = self.test
        loop = asyncio.get_running_loop()
        self._ws = await test.http.ws_connect(test.config.ws_url, protocols=("janus-protocol",))
        self._tasks.append(asyncio.create_task(self._read_loop()))
        created = await self._request({"janus": "create"})
        self._janus_session = int(created["data"]["id"])
        self._tasks.append(asyncio.create_task(self._keepalive()))
        attached = await self._request({"janus": "attach", "plugin": PLUGIN})
        handle = self._publisher_handle = int(attached["data"]["id"])
        await self._ensure_room(handle)
        joined = await self._message(handle, {"request": "join", "ptype": "publisher",
                                              "room": self.room, "display": self.user})
        data = joined["plugindata"]["data"]
        self._feed_id = int(data["id"])
        self.session_id = self.user  # what receivers map SSRCs to (the feed's display)
        self.joined_at = loop.time()
        self._learn_publishers(data.get("publishers") or [])
        self._tasks.append(asyncio.create_task(self._subscriptions()))
        install_light_switch()
        if self.role.audio or self.role.camera or self.role.screen:
            await self._publish(handle)

    async def _ensure_room(self, handle: int) -> None:
        """Create the call's room unless it exists (the first joiner of a call makes it)."""
        exists = await self._message(handle, {"request": "exists", "room": self.room})
        if exists["plugindata"]["data"].get("exists"):
            return
        body = {"request": "create", "room": self.room, "description": self.call,
                "publishers": max(3, self.test.config.users_per_call),
                "audiocodec": "opus", "videocodec": "vp8", "notify_joining": False,
                "audiolevel_event": False, "audiolevel_ext": True}
        try:
            await self._message(handle, body)
        except JanusError as exc:
            if "427" not in str(exc):  # 427: the room already exists
                raise

    async def _publish(self, handle: int) -> None:
        """The publisher's own peer connection: its streams sendonly, offered with `configure`.

        No legacy `audio`/`video` switches in the request: in 1.x they would
        turn whole media kinds off; the offer says what is published.
        """
        pc = self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        samples = self.test.samples
        described: list[tuple[Any, str]] = []
        if self.role.audio:
            audio = pc.addTransceiver("audio", direction="sendonly")
            self.senders.append(StreamSender(self, "audio", samples["audio"], audio))
        if self.role.camera:
            camera = pc.addTransceiver("video", direction="sendonly")
            self.senders.append(StreamSender(self, "video", samples["camera"], camera))
            described.append((camera, "camera"))
        screen_sender: StreamSender | None = None
        if self.role.screen:
            screen = pc.addTransceiver("video", direction="sendonly")
            screen_sender = StreamSender(self, "screen", samples["screen"], screen,
                                         rid="h" if self.test.config.simulcast else None)
            if self.test.config.simulcast:
                screen_sender.layers.append(StreamSender(
                    self, "screen", samples["screen-l"], screen, rid="l",
                    ssrc=(screen_sender.ssrc % 0xFFFFFFFF) + 1))
            self.senders.append(screen_sender)
            described.append((screen, "screen"))
        dtls = pc.getTransceivers()[0].sender.transport  # BUNDLE: one transport for all
        setattr(dtls, LIGHT_FLAG, True)
        dtls.on("statechange", lambda: self._on_publisher_dtls(dtls))
        await gather_on(pc, self.test.local_address, consent=self.test.consent.add)
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        sdp = pc.localDescription.sdp
        if screen_sender is not None and screen_sender.layers:
            # Highest first (`a=simulcast:send h;l`): VideoRoom reads the rid list in
            # that order, as its own janus.js offers it. Listed lowest first, as
            # callsctl's clients do, Janus took `l` for its top layer and forwarded
            # only that (measured: the receivers got exactly the `l` packet count).
            sdp = simulcast_offer(sdp, str(screen_sender.transceiver.mid),
                                  [s.rid for s in screen_sender.all_layers() if s.rid])
        body: dict[str, Any] = {"request": "configure"}
        if described:
            body["descriptions"] = [{"mid": str(t.mid), "description": text}
                                    for t, text in described]
        reply = await self._message(handle, body,
                                    {"type": "offer", "sdp": sdp, "trickle": False})
        jsep = reply.get("jsep") or {}
        if jsep.get("type") != "answer":
            raise LoadJoinError("janus: configure was not answered with a JSEP answer")
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], "answer"))
        self._read_negotiation(jsep["sdp"])  # arms the sender with Janus's payload type, ids

    def _on_publisher_dtls(self, dtls: Any) -> None:
        self._on_dtls_state(dtls)
        if self._pub_rx is None and dtls.state == "connected":
            self._pub_rx = aiortc_bridge.srtp_sessions(dtls)[0]
        if self._sub_rx is not None:
            self._rx = self._sub_rx  # the delay samples come in on the subscriber connection

    def _on_rtcp(self, data: bytes) -> None:
        """RTCP on either connection: Janus's keyframe requests come on the publisher's.

        The base class decrypts with one receive context (`_rx`, the
        subscriber's once it is up); a video publisher has two connections, so
        each context is tried in turn (a wrong key fails authentication and
        changes no replay state, RFC 3711 §3.3.2).
        """
        saved, errors = self._rx, self.srtp_errors
        try:
            for rx in (self._pub_rx, self._sub_rx):
                if rx is None:
                    continue
                self._rx = rx
                super()._on_rtcp(data)
                if self.srtp_errors == errors:
                    return
                self.srtp_errors = errors
            self.srtp_errors = errors + 1
        finally:
            self._rx = saved

    async def _subscriptions(self) -> None:
        """Subscribe to new feeds, one negotiation at a time, all on one subscriber handle."""
        while not self.closed:
            feeds = [await self._new_feeds.get()]
            while not self._new_feeds.empty() and len(feeds) < MAX_FEEDS_PER_REQUEST:
                feeds.append(self._new_feeds.get_nowait())
            feeds = [f for f in feeds if f not in self._subscribed]
            if not feeds:
                continue
            streams = [{"feed": feed} for feed in feeds]
            try:
                if self._subscriber_handle is None:
                    attached = await self._request({"janus": "attach", "plugin": PLUGIN})
                    self._subscriber_handle = int(attached["data"]["id"])
                    reply = await self._message(self._subscriber_handle, {
                        "request": "join", "ptype": "subscriber", "room": self.room,
                        "streams": streams})
                else:
                    reply = await self._message(self._subscriber_handle,
                                                {"request": "subscribe", "streams": streams})
                self._subscribed.update(feeds)
                await self._answer(reply)
            except (JanusError, LoadJoinError) as exc:
                self.error_codes[f"subscribe: {str(exc)[:60]}"] += 1
            except Exception as exc:  # a bad offer fails this participant's reception only
                self.error_codes[f"subscribe: {type(exc).__name__}"] += 1

    async def _answer(self, reply: dict[str, Any]) -> None:
        """Answer Janus's subscriber offer with `start`; map its SSRCs to publishers."""
        jsep = reply.get("jsep") or {}
        if jsep.get("type") != "offer":
            return  # nothing new to receive (e.g. the feed left meanwhile)
        first = self.sub_pc is None
        if first:
            self.sub_pc = RTCPeerConnection(RTCConfiguration(
                iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        pc = self.sub_pc
        assert pc is not None
        await pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], "offer"))
        if first:
            dtls = pc.getTransceivers()[0].receiver.transport
            setattr(dtls, LIGHT_FLAG, True)
            dtls.on("statechange", lambda: self._on_subscriber_dtls(dtls))
            await gather_on(pc, self.test.local_address, consent=self.test.consent.add)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        await self._message(self._subscriber_handle,  # type: ignore[arg-type]
                            {"request": "start"},
                            {"type": "answer", "sdp": pc.localDescription.sdp, "trickle": False})
        data = (reply.get("plugindata") or {}).get("data") or {}
        by_mid = {str(s.get("mid")): s for s in data.get("streams") or []}
        description = aiortc_sdp.SessionDescription.parse(jsep["sdp"])
        for media in description.media:
            stream = by_mid.get(str(media.rtp.muxId))
            if stream is None or media.kind not in ("audio", "video"):
                continue
            display = str(stream.get("feed_display") or self._feeds.get(stream.get("feed_id"), ""))
            # The labels the load generator's senders carry: audio, video (camera), screen.
            label = "audio" if media.kind == "audio" else (
                "screen" if stream.get("feed_description") == "screen" else "video")
            for ssrc in media.ssrc:
                self.streams[ssrc.ssrc] = (display, label)

    def _on_subscriber_dtls(self, dtls: Any) -> None:
        """The subscriber connection is up: its socket gets the load generator's receive path."""
        rx, _tx = aiortc_bridge.srtp_sessions(dtls)
        if dtls.state != "connected" or rx is None or self._sub_rx is not None:
            return
        pair = aiortc_bridge.nominated_pair(aiortc_bridge.ice_connection(dtls.transport))
        if pair is None:
            return
        self._sub_rx = self._rx = rx
        protocol = pair.protocol
        protocol.datagram_received = self._receiver(protocol.datagram_received)
        if not self.role.audio and self.connected_at is None:
            # A listener is connected once it can receive; a publisher once it can send.
            self.connected_at = asyncio.get_running_loop().time()
            self._connected.set()
            self.test.on_connected(self)

    # -- leaving ---------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sender in self.all_senders():
            sender.ready = False
        if self.sub_pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sub_pc.close(), PEER_CLOSE_TIMEOUT_S)
        if self._janus_session is not None and self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._send({"janus": "destroy", "session_id": self._janus_session,
                                  "transaction": "bye"})
        await hang_up(self._tasks, self.pc, self._ws)
