"""The run: join everyone, drive the media clock, settle, measure a steady window, leave.

One event loop drives every participant: joins are spread over
`join_duration` with a cap on concurrent handshakes, one media clock sends
every due frame of every stream (late frames caught up or skipped), and the
steady window opens once every expected stream reaches every receiver and the
server's queues have drained (or a settle timeout passed).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import pylibsrtp

from callsctl_sfu.client.loadgen.config import CLOSE_TIMEOUT_S, LoadConfig, Role, WindowHook
from callsctl_sfu.client.loadgen.handshake import local_address_for
from callsctl_sfu.client.loadgen.media import (
    MediaSample,
    camera_sample,
    opus_sample,
    screen_low_sample,
    screen_sample,
)
from callsctl_sfu.client.loadgen.monitor import ServerMonitor
from callsctl_sfu.client.loadgen.participant import LightParticipant
from callsctl_sfu.client.loadgen.pump import SharedPump, pump_enabled
from callsctl_sfu.client.loadgen.report import LoadReport, Progress, merge_report, raw_figures
from callsctl_sfu.client.loadgen.sender import StreamSender
from callsctl_sfu.gcpolicy import LOADGEN_ENV, CollectorPolicy, min_sessions_from_env
from callsctl_sfu.rtc.consent import ConsentScheduler
from callsctl_sfu.tasks import install_exception_handler

MAX_CATCH_UP = 5  # frames one stream may send late in one tick before frames are skipped
MAX_DELAY_SAMPLES = 500_000
# How often a receiving participant sends RTCP: libwebrtc's defaults (its RTCP sender
# reports every 5 s for an audio stream, every 1 s for video), each interval drawn from
# 0.5-1.5 times that (RFC 3550 §6.3.1), so a thousand receivers do not report at once.
AUDIO_REPORT_INTERVAL_S = 5.0
VIDEO_REPORT_INTERVAL_S = 1.0
SETTLED_DELAY_MS = 100.0  # the window opens once recent forwarding delay is below this

# Builds one participant: (test, call, user, role). The signaling dialect seam: the
# default speaks callsctl's /ws; bench/janus_adapter.py passes one that speaks Janus's API.
ParticipantFactory = Callable[["LoadTest", str, str, Role], LightParticipant]


def join_order(config: LoadConfig) -> list[tuple[str, str, Role]]:
    """(call, user, role) of every participant of the run in join order.

    Round robin over calls, speakers first. A worker process runs only its
    share (`LoadConfig.in_share`) but keeps every participant's slot in this
    order, so the join rate stays the configured one over all workers.
    """
    order = []
    for index in range(config.users_per_call):
        for number in range(1, config.calls + 1):
            call = f"{config.call_prefix}-{number}"
            role = Role(audio=index < config.unmuted,
                        camera=config.video and index < config.unmuted,
                        screen=config.screen_sharing and index == 0)
            order.append((call, f"{call}-u{index + 1}", role))
    return order


def runs_here(config: LoadConfig, call: str, user: str) -> bool:
    """Whether the process with this config runs `user` of `call` (`join_order` names)."""
    number = int(call.rsplit("-", 1)[1])
    index = int(user.rsplit("-u", 1)[1]) - 1
    return config.in_share(number, index)


class Coordinator(Protocol):
    """A worker process's line to the parent that runs a test split over processes.

    Every worker starts on the same clock, learns the streams the others send
    (its receivers expect them too) and measures the same steady window, so the
    parent can hold every receiver against every sender of its call.
    """

    async def start(self) -> float:
        """Wait for the common start; returns it in this loop's time."""

    async def senders(self, mine: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Tell the parent this process's streams after joining; get the others' streams."""

    async def window(self, can_measure: bool) -> tuple[float, float] | None:
        """The common window (open, close) in this loop's time, or None: none is measured."""


class LoadTest:
    """Joins the participants, drives the media clock, measures a steady window, reports."""

    def __init__(self, config: LoadConfig, on_window: WindowHook | None = None,
                 monitor: ServerMonitor | None = None,
                 participant_factory: ParticipantFactory = LightParticipant) -> None:
        """`participant_factory` is the signaling dialect seam.

        Every participant is built by it, so another SFU's signaling (a subclass
        of `LightParticipant` that joins differently but sends with the same
        `StreamSender`s and counts with the same receive path) is measured by
        the same media clock, window and report. callsctl's own `/ws` dialect,
        `LightParticipant`, is the default.
        """
        config.validate()
        self.participant_factory = participant_factory
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
        self.loop_lag: list[float] = []
        self.lag_before_window: list[float] = []
        self._cpu0 = (0.0, 0.0)
        self.window_counts: dict[str, Any] = {}
        self.notes: list[str] = []
        # Set in a worker process: the parent's start, sender list and window timing.
        self.coordinator: Coordinator | None = None
        # Every participant's ICE consent checks (RFC 7675) from one timer, as the server
        # does its own, instead of an aioice task per connection (handshake.gather_on).
        self.consent = ConsentScheduler()
        # The server's collector policy over this process's participants (gcpolicy.py): its
        # own full collections would otherwise stall every read and delay stamp here for
        # hundreds of ms while a big call joins, and read as the server's delay.
        self.collector = CollectorPolicy(min_sessions=min_sessions_from_env(LOADGEN_ENV))
        # The C thread that reads connected participants' sockets (pump.py), made at the
        # first connect; None when the extension is not built or CALLSCTL_LOADGEN_PUMP=0.
        self._pump: SharedPump | None = None
        self._pump_wanted = pump_enabled()
        self.pump_stats: dict[str, int] | None = None  # its counters, once it stopped
        # Streams sent by other worker processes: (call, session id, label).
        self.remote_senders: list[tuple[str, str, str]] = []
        self.raw: dict[str, Any] = {}  # what this process measured, plain data (`raw_figures`)

    # -- hooks used by participants ----------------------------------------------------------------

    def record_delay(self, nanoseconds: int) -> None:
        if len(self.delays) < MAX_DELAY_SAMPLES:
            self.delays.append(nanoseconds)

    def receive_pump(self) -> SharedPump | None:
        """This process's receive thread, started at the first connected participant."""
        if self._pump is None and self._pump_wanted:
            self._pump = SharedPump(asyncio.get_running_loop())
        return self._pump

    def on_connected(self, participant: LightParticipant) -> None:
        self.active.extend(participant.all_senders())
        self.collector.joined()

    def request_stop(self) -> None:
        """Finish early (Ctrl-C): measure what ran, then leave."""
        if not self._stop.is_set():
            self.notes.append(f"stopped early (interrupted) in the {self.phase} phase")
        self._stop.set()

    # -- running ------------------------------------------------------------------------------

    def roles(self) -> list[tuple[str, str, Role]]:
        """(call, user, role) of every participant of the run in join order (`join_order`)."""
        return join_order(self.config)

    def is_probe(self, user: str) -> bool:
        """Whether `user` (a `join_order` name) is measured: every one unless probes are set."""
        if not self.config.probes_per_call:
            return True
        return self.config.is_probe(int(user.rsplit("-u", 1)[1]) - 1)

    def address_for(self, participant: LightParticipant) -> str:
        """Where a participant gathers: probes on the probe address, when one is set."""
        if self.config.probes_per_call and participant.probe and self.config.probe_address:
            return self.config.probe_address
        return self.local_address

    def mine(self, call: str, user: str) -> bool:
        """Whether this process runs `user` of `call` (names as `join_order` makes them)."""
        return runs_here(self.config, call, user)

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
        loop = asyncio.get_running_loop()
        # aiortc's own connect task fails when a participant that could not join is
        # closed under it: one line per kind of failure, not a traceback per participant.
        previous_handler = loop.get_exception_handler()
        install_exception_handler(loop)
        try:
            return await self._run(loop)
        finally:
            loop.set_exception_handler(previous_handler)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> LoadReport:
        config = self.config
        self.prepare_media()
        if config.local_address is None:
            self.local_address = local_address_for(urlsplit(config.ws_url).hostname or "")
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        background: list[asyncio.Task[Any]] = []
        cpu_start = time.process_time()
        self.collector.install()
        try:
            self.started = loop.time()
            if self.coordinator is not None:
                self.started = await self.coordinator.start()
            end = self.started + config.duration
            background = [asyncio.create_task(self._media_clock(end)),
                          asyncio.create_task(self._receiver_reports(end)),
                          asyncio.create_task(self._watch_loop_lag(end)),
                          asyncio.create_task(self._collector_ticks(end))]
            if self.monitor is not None:
                if self.monitor.source is None:
                    await self.monitor.detect()
                background.append(asyncio.create_task(self.monitor.run(end)))
            self.phase = "joining"
            await self._join_all(end)
            if self.coordinator is not None:
                self.remote_senders = await self.coordinator.senders(self._local_senders())
            self.phase = "settling"
            await self._settle(end)
            window_start = loop.time()
            close_at = end if config.window is None else min(end, window_start + config.window)
            can_measure = window_start < end - 0.5 and not self._stop.is_set()
            if self.coordinator is not None:
                timing = await self.coordinator.window(can_measure)
                can_measure = timing is not None and not self._stop.is_set()
                if timing is not None:
                    window_start, close_at = timing
                    await asyncio.sleep(max(0.0, window_start - loop.time()))
            if can_measure:
                self.phase = "measuring"
                await self._open_window()
                if self.coordinator is None and config.window is not None:
                    close_at = min(end, loop.time() + config.window)
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
            self.consent.close()
            self.collector.close()
            if self._pump is not None:
                for participant in self.participants:  # any that did not close in time
                    participant.release_socket()
                self.pump_stats = self._pump.stats()
                self._pump.close()
                if self.pump_stats["dropped"]:
                    self.notes.append(
                        f"the receive thread's queue to Python overflowed: "
                        f"{self.pump_stats['dropped']} STUN/DTLS datagrams or delay samples "
                        f"dropped")
            await self.http.close()
            if self.monitor is not None:
                await self.monitor.close()
        self.phase = "done"
        wall = loop.time() - self.started
        self.raw = raw_figures(self, cpu_seconds=time.process_time() - cpu_start, wall=wall)
        return merge_report(config, [self.raw], server=self.monitor.report()
                            if self.monitor is not None else None)

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
            if not self.mine(call, user):
                continue
            due = self.started + number * spacing
            if due > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), due - loop.time())
            if self._stop.is_set() or loop.time() >= end:
                break
            participant = self.participant_factory(self, call, user, role)
            self.participants.append(participant)
            tasks.append(asyncio.create_task(one(participant)))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _expected_sources(self, receiver: LightParticipant) -> list[StreamSender]:
        return [s for p in self.participants if p.call == receiver.call and p is not receiver
                and p.connected for s in p.senders if s.ready]

    def _local_senders(self) -> list[tuple[str, str, str]]:
        return [(p.call, p.session_id, s.label) for p in self.participants
                if p.connected and p.session_id for s in p.senders if s.ready]

    def _flowing(self) -> bool:
        for receiver in self.participants:
            if not receiver.connected or not receiver.probe:
                continue
            have = {receiver.streams.get(ssrc) for ssrc, n in receiver.received.items() if n}
            for sender in self._expected_sources(receiver):
                if (sender.owner.session_id, sender.label) not in have:
                    return False
            for call, session_id, label in self.remote_senders:
                if call == receiver.call and (session_id, label) not in have:
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
        self.window_counts["sent0"] = {id(s): s.sent for p in self.participants
                                        for s in p.senders}
        self.window_counts["recv0"] = {id(p): dict(p.received) for p in self.participants}
        self.window_counts["skipped0"] = sum(s.skipped_frames for p in self.participants
                                              for s in p.all_senders())
        self.delays.clear()
        self.lag_before_window = list(self.loop_lag)  # joining and settling: the busy part
        self.loop_lag.clear()
        self._cpu0 = (time.process_time(), asyncio.get_running_loop().time())
        if self.monitor is not None:
            await self.monitor.mark("start")
        if self.on_window is not None:
            await self.on_window("start")

    async def _close_window(self, opened: float) -> None:
        loop = asyncio.get_running_loop()
        self.window_counts["delays"] = len(self.delays)
        if self.on_window is not None:
            await self.on_window("end")
        if self.monitor is not None:
            await self.monitor.mark("end")
        cpu0, wall0 = self._cpu0
        self.window_counts["loadgen_cpu"] = (time.process_time() - cpu0) / max(
            1e-9, loop.time() - wall0)
        self.window_counts["sent1"] = {id(s): s.sent for p in self.participants
                                        for s in p.senders}
        self.window_counts["recv1"] = {id(p): dict(p.received) for p in self.participants}
        self.window_counts["skipped1"] = sum(s.skipped_frames for p in self.participants
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

    def report_interval(self) -> float:
        """The RTCP interval of this run's receivers: video is received if anyone sends it."""
        video = self.config.video or self.config.screen_sharing
        return VIDEO_REPORT_INTERVAL_S if video else AUDIO_REPORT_INTERVAL_S

    async def _receiver_reports(self, end: float) -> None:
        """Each connected participant's RTCP, on its own randomised schedule.

        The due times are a heap, so a pass touches the participants that are due
        and those not connected yet, not every participant ten times a second: at
        1000 and more that scan was a share of the generator's one event loop of
        its own (docs/performance-saturation.md, "The load generator's own CPU").
        """
        loop = asyncio.get_running_loop()
        interval = self.report_interval()
        due: list[tuple[float, int, LightParticipant]] = []
        order = itertools.count()
        unscheduled: list[LightParticipant] = []  # not connected (yet), or not any more
        seen = 0  # self.participants[:seen] are in `due` or `unscheduled`
        while loop.time() < end:
            now = loop.time()
            unscheduled.extend(self.participants[seen:])
            seen = len(self.participants)
            waiting = []
            for participant in unscheduled:
                if participant.connected:  # its first report at a random point of one interval
                    heapq.heappush(due, (now + interval * random.random(), next(order),
                                         participant))
                elif participant.failure is None:
                    waiting.append(participant)
            unscheduled = waiting
            while due and due[0][0] <= now:
                _at, _order, participant = heapq.heappop(due)
                if not participant.connected:
                    unscheduled.append(participant)
                    continue
                participant.send_receiver_report()
                heapq.heappush(due, (now + interval * random.uniform(0.5, 1.5), next(order),
                                     participant))
            await asyncio.sleep(0.1)

    async def _watch_loop_lag(self, end: float) -> None:
        """How late this process's event loop runs: a loaded generator inflates delays."""
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            before = loop.time()
            await asyncio.sleep(0.05)
            self.loop_lag.append(max(0.0, loop.time() - before - 0.05))
            if len(self.loop_lag) > 100_000:
                del self.loop_lag[:50_000]

    async def _collector_ticks(self, end: float) -> None:
        """Once a second, the collector policy's tick over the participants connected here."""
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            await asyncio.sleep(1.0)
            self.collector.tick(sum(1 for p in self.participants if p.connected))

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
