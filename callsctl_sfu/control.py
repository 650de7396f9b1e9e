"""The admin plane of `callsctl serve`: admin key, store, settings, events, metrics, TLS.

server.py stays about sockets and ordering; everything the admin plane adds hangs off
one ControlPlane:

- open() runs before any port is taken, so a bad admin key file, a corrupt or
  unwritable database, or unusable TLS files stop startup with one line;
- attach() wires it to the CallManager: an observer (history, SSE, metrics),
  a join check (per-call enabled / max participants), the admin routes, and a
  once-a-second ticker that samples per-session rates for the API and metrics;
- close() flushes the history writer and closes the database after the calls
  have ended, so the last leave and call end are recorded.

Database writes never happen on the call path: events are queued and written
by one task in order, each write committed on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import stat
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callsctl_sfu.api.appkeys import CONTROL, WS_STATS
from callsctl_sfu.api.events import EventHub
from callsctl_sfu.api.protocol import MESSAGES
from callsctl_sfu.calls.host import HostControls
from callsctl_sfu.calls.manager import JoinRefused
from callsctl_sfu.calls.sessionstats import SessionSampler
from callsctl_sfu.config import ServeConfig
from callsctl_sfu.datadir import DataDirError, load_or_create_secret, tighten_mode
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.gcpolicy import CollectorPolicy
from callsctl_sfu.metrics import Metrics, read_udp_snmp
from callsctl_sfu.store import CallSettings, Store, StoreError
from callsctl_sfu.tasks import spawn
from callsctl_sfu.tls import TlsError, TlsMaterial, resolve_tls, server_context

if TYPE_CHECKING:
    from aiohttp import web

    from callsctl_sfu.calls.manager import CallManager
    from callsctl_sfu.calls.model import Call
    from callsctl_sfu.rtc.mux import UdpMux

log = logging.getLogger("callsctl_sfu.control")

ADMIN_KEY_FILE = "admin_key"
MIN_ADMIN_KEY = 16
TICK_S = 1.0
STATS_EVENT_EVERY = 2  # ticks
FLUSH_TIMEOUT_S = 5.0


class ControlError(CallsctlError, RuntimeError):
    """The admin plane cannot start; one line naming the problem and the fix."""
    code = "admin_plane_failed"


def load_admin_key(config: ServeConfig) -> tuple[str, Path]:
    """The admin API key: from --admin-key-file, else generated into the data dir (0600)."""
    if config.admin_key_file:
        path = Path(config.admin_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ControlError(f"admin key file {path} does not exist (--admin-key-file)"
                               ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ControlError(f"cannot read admin key file {path}: {exc}") from None
        if len(key) < MIN_ADMIN_KEY or any(c.isspace() for c in key):
            raise ControlError(f"admin key in {path} must be one line of at least "
                               f"{MIN_ADMIN_KEY} characters without spaces")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            tighten_mode(path, "admin key file")
        return key, path
    try:
        key = load_or_create_secret(config.data_dir, ADMIN_KEY_FILE).decode("ascii")
    except DataDirError as exc:
        raise ControlError(str(exc)) from None
    return key, Path(config.data_dir).expanduser() / ADMIN_KEY_FILE


class ControlPlane:
    """Admin API state for one server."""

    def __init__(self, config: ServeConfig, store: Store, admin_key: str, admin_key_path: Path,
                 settings: dict[str, CallSettings], tls: TlsMaterial | None,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.store = store
        self.admin_key = admin_key
        self.admin_key_path = admin_key_path
        self.settings = settings
        self.tls = tls
        self.ssl_context = ssl_context
        self.hub = EventHub()
        # Full collections kept short while a big call fills (gcpolicy.py); GET /stats `gc`.
        self.collector = CollectorPolicy()
        self.manager: CallManager | None = None
        self.host: HostControls | None = None
        self.sampler: SessionSampler | None = None
        self.metrics: Metrics | None = None
        self.started = time.monotonic()
        # The host-wide UDP drop counter when this server started: `callsctl top` shows the
        # drops since then, not since the machine booted.
        self.rcvbuf_errors_at_start = read_udp_snmp().get("RcvbufErrors")
        self.write_errors = 0
        self._writes: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        # call id -> [history instance id, ended already?] for live (and just-ended) calls.
        self._instances: dict[str, list[Any]] = {}

    # -- startup -------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: ServeConfig, tls_hosts: list[str] | None = None
                   ) -> ControlPlane:
        admin_key, admin_key_path = load_admin_key(config)
        try:
            tls = resolve_tls(config.tls_cert, config.tls_key, config.tls_self_signed,
                              config.data_dir, tls_hosts or [])
            context = server_context(tls) if tls else None
        except TlsError as exc:
            raise ControlError(str(exc)) from None
        try:
            store = await Store.open(config.data_dir)
        except StoreError as exc:
            raise ControlError(str(exc)) from None
        try:
            dangling = await store.close_dangling(time.time(),
                                                  "server stopped without ending the call")
            if dangling:
                log.warning("%d call(s) from the previous run were still open (crash or "
                            "kill); recorded them as ended now", dangling)
            settings = await store.all_settings()
        except Exception as exc:
            await store.close()
            raise ControlError(f"cannot read database {store.path}: {exc}") from None
        plane = cls(config, store, admin_key, admin_key_path, settings, tls, context)
        plane._writer = spawn(plane._write_loop(), "history-writer")
        return plane

    def attach(self, app: web.Application, manager: CallManager, mux: UdpMux) -> None:
        """Hook into the manager and add the admin routes (before the app starts)."""
        from callsctl_sfu.api.admin import add_admin_routes

        self.manager = manager
        self.host = HostControls(manager)
        self.sampler = SessionSampler(manager)
        ws_stats = app.setdefault(WS_STATS, {"connections": 0})
        ws_stats.setdefault("active", 0)
        # Every client message type starts at 0, so rate() works from the first scrape.
        ws_stats.setdefault("messages_in", Counter({kind: 0 for kind in
                                                    [*MESSAGES, "invalid"]}))
        ws_stats.setdefault("messages_out", Counter({"error": 0, "pong": 0}))
        ws_stats.setdefault("rate_limited", 0)
        self.metrics = Metrics(manager, mux, ws_stats, {"events": self.hub})
        manager.observers.append(self._on_event)
        self.collector.install()
        manager.join_checks.append(self._check_join)
        app[CONTROL] = self
        add_admin_routes(app)

        async def end_streams(_app: web.Application) -> None:
            self.hub.close()

        app.on_shutdown.append(end_streams)
        self._ticker = spawn(self._tick_loop(), "admin-ticker")

    async def close(self) -> None:
        """After the calls ended: stop sampling, write what is queued, close the database."""
        self.collector.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.hub.close()
        if self._writer is not None:
            self._writes.put_nowait(None)
            try:
                await asyncio.wait_for(self._writer, FLUSH_TIMEOUT_S)
            except TimeoutError:
                log.error("history writes did not finish in %g s; some may be lost",
                          FLUSH_TIMEOUT_S)
        await self.store.close()

    # -- call events -------------------------------------------------------------------------

    def _on_event(self, call: Call, event: dict[str, Any]) -> None:
        """CallManager observer: history, the SSE stream and event-driven metrics."""
        kind = event.get("type")
        call_id = call.call_id
        if kind == "call_start":
            instance = uuid.uuid4().hex
            self._instances[call_id] = [instance, False]
            self._queue(self.store.call_started, instance, call_id, call.started_at)
        elif kind == "call_end":
            entry = self._instances.get(call_id)
            finished = call_id not in (self.manager.calls if self.manager else {})
            if finished:
                self._instances.pop(call_id, None)
            if entry is None or entry[1]:
                return  # already ended (host end or shutdown, then the last one left)
            entry[1] = True
            self._queue(self.store.call_ended, entry[0], time.time(),
                        str(event.get("reason") or "ended"))
        elif kind == "user_joined":
            self.collector.joined()
            entry = self._instances.get(call_id)
            session = call.sessions.get(event.get("session_id", ""))
            if entry is not None and session is not None:
                self._queue(self.store.participant_joined, entry[0], session.session_id,
                            session.user, session.name, session.joined_at)
        elif kind == "user_left":
            entry = self._instances.get(call_id)
            if entry is not None:
                self._queue(self.store.participant_left, entry[0], event.get("session_id"),
                            time.time(), str(event.get("reason") or "left"))
        if self.metrics is not None:
            self.metrics.observe(call, event)
        self.hub.publish({**event, "call": call_id})

    def publish(self, event: dict[str, Any]) -> None:
        """A server-wide event for the SSE stream (not tied to a call)."""
        self.hub.publish({"call": None, **event})

    def _queue(self, method: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._writes.put_nowait(lambda: method(*args))

    async def _write_loop(self) -> None:
        while True:
            job = await self._writes.get()
            if job is None:
                return
            try:
                await job()
            except Exception as exc:  # the call goes on; the operator sees it in the log
                self.write_errors += 1
                log.error("history write failed (%s): %s", self.store.path, exc)

    async def flush(self) -> None:
        """Wait until every queued history write is done (tests, shutdown)."""
        done = asyncio.get_running_loop().create_future()

        async def mark() -> None:
            done.set_result(None)

        self._writes.put_nowait(mark)
        await asyncio.wait_for(done, FLUSH_TIMEOUT_S)

    # -- per-call settings -------------------------------------------------------------------

    def effective(self, call_id: str) -> dict[str, Any]:
        """What applies to a call id: its override or the server default, and why."""
        settings = self.settings.get(call_id, CallSettings())
        enabled = settings.enabled if settings.enabled is not None else \
            self.config.default_enabled
        limits = [x for x in (settings.max_participants, self.config.max_call_participants)
                  if x]
        return {"enabled": enabled, "max_participants": min(limits) if limits else None}

    def _check_join(self, call_id: str, call: Call | None) -> None:
        settings = self.settings.get(call_id, CallSettings())
        if not self.effective(call_id)["enabled"]:
            why = ("calls are disabled for this call id" if settings.enabled is False else
                   "the server is in test mode (default_enabled=false): only call ids an "
                   "admin enabled can start")
            raise JoinRefused("call_disabled", f"call {call_id!r} is not enabled: {why}")
        limit = settings.max_participants
        if limit and call is not None and len(call.sessions) >= limit:
            raise JoinRefused("call_full", f"call {call_id!r} is full: {limit} participants "
                                           "is this call's max_participants")

    async def put_settings(self, call_id: str, settings: CallSettings) -> None:
        await self.store.put_settings(call_id, settings)
        if settings.is_default:
            self.settings.pop(call_id, None)
        else:
            self.settings[call_id] = settings
        self.publish({"type": "call_settings", "call": call_id, **settings.as_dict()})

    # -- periodic work ------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            ticks += 1
            try:
                self._tick(ticks)
            except Exception:  # sampling must never stop; log and go on
                log.exception("admin sampling failed")

    def _tick(self, ticks: int) -> None:
        assert self.sampler is not None and self.manager is not None
        self.manager.forwarder.collect_ingress()  # the C reader thread's counters and samples
        self.sampler.sample()
        self.collector.tick(len(self.manager.participants))
        if self.metrics is not None:
            self.metrics.tick(self.sampler)
        if self.hub.subscribers and ticks % STATS_EVENT_EVERY == 0:
            rates = list(self.sampler.rates.values())
            self.publish({"type": "stats", "calls": len(self.manager.calls),
                          "sessions": len(self.manager.participants),
                          "in_bps": round(sum(r.in_bps for r in rates)),
                          "out_bps": round(sum(r.out_bps for r in rates))})

    def uptime(self) -> float:
        return time.monotonic() - self.started

