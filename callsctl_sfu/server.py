"""Start and stop everything `callsctl serve` runs, in one event loop.

Order matters for operators: the data dir and secret first (a bad data dir
should fail before any port is taken), then the media socket, then HTTP. Any
failure is a StartupError with one line naming the problem and the fix.
Shutdown ends every call with call_end, closes peers and frees the ports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import logging
import os
from typing import Any, cast

from aiohttp import web

from callsctl_sfu.api.appkeys import (
    CONFIG,
    JWT_SECRET,
    MANAGER,
    READINESS,
    SERVER_INFO,
    STATS,
    WS_STATS,
)
from callsctl_sfu.api.conncap import ConnectionCap, auto_cap
from callsctl_sfu.api.routes import add_routes, json_errors
from callsctl_sfu.calls.manager import CallManager
from callsctl_sfu.config import ServeConfig
from callsctl_sfu.control import ControlError, ControlPlane
from callsctl_sfu.datadir import DataDirError, ensure_data_dir, load_or_create_secret
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.jobs.service import attach_jobs
from callsctl_sfu.rtc import fastpath, medialoader, sealing
from callsctl_sfu.rtc.connectivity import (
    Advertised,
    Connectivity,
    ConnectivityError,
    size_udp_buffers,
)
from callsctl_sfu.rtc.mux import UdpMux, socket_buffer_sizes
from callsctl_sfu.tasks import install_exception_handler
from callsctl_sfu.udpbuffer import udp_buffer_warning

log = logging.getLogger("callsctl_sfu.server")


class StartupError(CallsctlError, RuntimeError):
    """serve cannot start; the message is one line with the fix."""
    code = "startup_failed"


def _bind_error(kind: str, host: str, port: int, exc: OSError, flag: str) -> StartupError:
    where = f"{kind} port {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{where} is already in use (another callsctl serve?): stop that "
                            f"process or choose another {flag}", code="port_in_use")
    if exc.errno == errno.EACCES:
        return StartupError(f"no permission to bind {where}: use a port above 1023 or grant "
                            "CAP_NET_BIND_SERVICE", code="bind_not_permitted")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
        return StartupError(f"cannot bind {where}: {host} is not an address of this host; "
                            "use --bind 0.0.0.0 or one of this host's addresses",
                            code="address_not_local")
    return StartupError(f"cannot bind {where}: {exc.strerror or exc}", code="bind_failed")


class Server:
    """The running SFU: media mux, call manager and HTTP app."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.mux: UdpMux | None = None
        self.manager: CallManager | None = None
        self.runner: web.AppRunner | None = None
        self.metrics_runner: web.AppRunner | None = None  # the metrics_port listener
        self.metrics_port = 0
        self.http_server: asyncio.Server | None = None
        self.connection_cap: ConnectionCap | None = None
        self.advertised: Advertised | None = None
        self.connectivity: Connectivity | None = None
        self.control: ControlPlane | None = None  # admin API, store, metrics, TLS
        self.udp_port = 0
        self.api_port = 0
        self.buffer_sizes = (0, 0)  # what the kernel granted the media socket (rcv, snd)
        self.udp_buffer_size = config.udp_buffer_size  # read here only; passed on from here
        self.stopping = False
        self.started_at = 0.0
        self.fleet: Any = None  # fleet/node.py FleetNode when config.cluster is set
        self.fanout_threads = 1  # threads a big fan-out runs on (media_threads, resolved)
        # aiortc, PyAV, pyOpenSSL, pylibsrtp: loaded at the first call, in a worker thread
        # (rtc/medialoader.py), or here at start with preload_media.
        self.media = medialoader.MediaLoader()

    async def start(self) -> None:
        config = self.config
        try:  # the media libraries' versions, from their metadata: a wrong install stops here
            medialoader.check_versions()
        except medialoader.BridgeError as exc:
            raise StartupError(str(exc), code=exc.code) from None
        # And their internals, by loading them now (as it was): with preload_media, and
        # always on a fleet node, which exists to host calls and whose CPU placement
        # compares: its first call's load (about a second of CPU) must not read as load.
        if config.preload_media or config.cluster:
            try:
                await self.media.preload()
            except medialoader.MediaUnavailable as exc:
                raise StartupError(exc.message, code=exc.code) from None
        try:
            ensure_data_dir(config.data_dir)
            secret = load_or_create_secret(config.data_dir)
        except DataDirError as exc:
            raise StartupError(str(exc), code=exc.code) from None
        try:  # admin key, database, TLS files: checked before any port is taken
            self.control = await ControlPlane.open(
                config, [config.bind, config.ice_host_override])
        except ControlError as exc:
            raise StartupError(str(exc), code=exc.code) from None
        loop = asyncio.get_running_loop()
        install_exception_handler(loop)  # library tasks' failures: one line each
        # What start() has opened so far, undone in reverse order if a later step fails;
        # once everything is up, stop() owns it (pop_all below).
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(self.control.close)
            try:
                transport, mux = await loop.create_datagram_endpoint(
                    UdpMux, local_addr=(config.bind, config.udp_port))
            except OSError as exc:
                raise _bind_error("UDP", config.bind, config.udp_port, exc,
                                  "--udp-port") from None
            undo.callback(transport.close)
            self.mux = mux
            if mux.ingress is not None:
                mux.ingress.late_drop = config.media_late_drop_ms / 1000
            self.udp_port = transport.get_extra_info("sockname")[1]
            self._size_socket(transport)
            try:
                # ICE-TCP, IPv6, STUN discovery, overrides: rtc/connectivity.py.
                self.connectivity = await Connectivity.open(config, mux, self.udp_port,
                                                            self.udp_buffer_size)
            except ConnectivityError as exc:
                raise StartupError(str(exc), code=exc.code) from None
            undo.callback(self.connectivity.close)
            self.advertised = self.connectivity.advertised
            self.manager = CallManager(config, mux, media=self.media)

            app = web.Application(middlewares=[json_errors])
            app[CONFIG] = config
            app[MANAGER] = self.manager
            app[JWT_SECRET] = secret
            app[SERVER_INFO] = self.info
            app[READINESS] = self.readiness
            app[STATS] = self.stats
            app[WS_STATS] = {"connections": 0}
            add_routes(app)
            self.control.attach(app, self.manager, mux)
            # The forwarder reports its sampled write costs to the Prometheus registry.
            if self.control.metrics is not None:
                self.manager.forwarder.metrics = self.control.metrics
            attach_jobs(app, self.control)  # recording jobs: routes, startup, shutdown
            if config.cluster:  # imported only here: a single node never loads redis
                from callsctl_sfu.fleet.node import FleetError, FleetNode
                try:
                    self.fleet = FleetNode(self)
                except FleetError as exc:
                    raise StartupError(str(exc), code=exc.code) from None
                self.fleet.attach(app)
            # keepalive_timeout is armed when a connection opens and after each response:
            # a client that does not complete a request within it is closed.
            self.runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                        shutdown_timeout=2,
                                        keepalive_timeout=config.http_idle_timeout)
            await self.runner.setup()
            undo.push_async_callback(self.runner.cleanup)
            handler_factory = self.runner.server
            assert handler_factory is not None
            self.connection_cap = ConnectionCap(
                handler_factory, lambda: len(handler_factory.connections),
                config.max_http_connections or auto_cap())
            try:
                self.http_server = await loop.create_server(
                    self.connection_cap, config.bind, config.api_port, reuse_address=True,
                    ssl=self.control.ssl_context, backlog=128,
                    ssl_handshake_timeout=config.http_idle_timeout
                    if self.control.ssl_context else None)
            except OSError as exc:
                raise _bind_error("TCP", config.bind, config.api_port, exc,
                                  "--api-port") from None
            undo.callback(self.http_server.close)
            self.api_port = self.http_server.sockets[0].getsockname()[1]
            if config.metrics_port:
                await self._start_metrics_listener()
            if self.fleet is not None:
                try:
                    await self.fleet.start()
                except FleetError as exc:
                    raise StartupError(str(exc), code=exc.code) from None
            undo.pop_all()
        self.started_at = loop.time()
        log.info("media on udp %s:%d, advertised %s:%d (%s)", config.bind, self.udp_port,
                 self.advertised.host, self.advertised.port, self.advertised.source)
        if fastpath.AVAILABLE:
            # Started last: no start-up failure after this point has workers to stop.
            threads = fastpath.start_pool(config.media_threads or fastpath.usable_cpus())
            self.fanout_threads = threads
            log.info("forwarding engine: C fan-out (rewrite, SRTP protect, sendmmsg) on %d "
                     "thread%s for fan-outs of %d+ receivers; outgoing RTP protected by %s",
                     threads, "" if threads == 1 else "s", fastpath.PARALLEL_MIN_TARGETS,
                     "the server's own sender (AES-NI)" if sealing.wanted() else "libsrtp")
        else:
            log.warning("forwarding engine: Python, up to 2.4x the CPU per packet: %s",
                        fastpath.REASON)

    async def _start_metrics_listener(self) -> None:
        """/metrics alone on metrics_port (metrics_bind), with the API port's TLS settings."""
        from callsctl_sfu.api.admin import metrics_app

        config = self.config
        assert self.control is not None
        host = config.metrics_bind or config.bind
        self.metrics_runner = web.AppRunner(metrics_app(self.control), handle_signals=False,
                                            access_log=None, shutdown_timeout=1)
        await self.metrics_runner.setup()
        site = web.TCPSite(self.metrics_runner, host, config.metrics_port, reuse_address=True,
                           ssl_context=self.control.ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self.metrics_runner.cleanup()
            self.metrics_runner = None
            raise _bind_error("TCP", host, config.metrics_port, exc, "--metrics-port") from None
        server = cast("asyncio.Server | None", site._server)  # a TCPSite listens on a Server
        self.metrics_port = server.sockets[0].getsockname()[1] if server else config.metrics_port
        log.info("metrics on %s:%d/metrics", host, self.metrics_port)

    def _size_socket(self, transport: asyncio.DatagramTransport) -> None:
        wanted = self.udp_buffer_size
        for exc in size_udp_buffers(transport.get_extra_info("socket"), wanted):
            log.warning("could not size the media socket buffer: %s", exc)
        self.buffer_sizes = socket_buffer_sizes(transport)
        warning = udp_buffer_warning(wanted, *self.buffer_sizes)
        if warning:
            log.warning("%s", warning)

    def readiness(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        if self.mux is None or self.mux.transport is None:
            return False, "media socket not open"
        if self.fleet is not None and not self.fleet.joined:
            return False, "not registered in the fleet yet"
        if self.media.error:  # no call can start here: a balancer should send them elsewhere
            return False, f"calls unavailable: {self.media.error}"
        return True, "ok"

    def info(self) -> dict[str, Any]:
        assert self.advertised is not None
        return {
            "udp_port": self.udp_port,
            "tcp_port": self.connectivity.tcp_port if self.connectivity else None,
            "api_port": self.api_port,
            "ice": self.connectivity.info() if self.connectivity else {
                "host": self.advertised.host, "udp_port": self.advertised.port,
                "tcp_port": None, "source": self.advertised.source},
            "udp_socket": {"requested_bytes": self.udp_buffer_size,
                           "rcvbuf_bytes": self.buffer_sizes[0],
                           "sndbuf_bytes": self.buffer_sizes[1]},
            "calls": len(self.manager.calls) if self.manager else 0,
            "sessions": len(self.manager.participants) if self.manager else 0,
            "forwarding_engine": {"engine": fastpath.ENGINE, "reason": fastpath.REASON,
                                  "fanout_threads": fastpath.pool_threads(),
                                  # who protects sessions' outgoing RTP (rtc/sealing.py)
                                  "srtp_sender": "sealer" if sealing.wanted() else "libsrtp"},
            # idle (no call yet), loading, loaded or failed (with the one-line error)
            "media_stack": {"state": self.media.state, "error": self.media.error},
            **({"node": self.fleet.node_id} if self.fleet is not None else {}),
        }

    def stats(self) -> dict[str, Any]:
        assert self.mux is not None and self.manager is not None
        self.manager.forwarder.collect_ingress()  # the reader thread's counters, exact
        return {"media_socket": self.mux.stats.as_dict(),
                "consent": self.mux.consent_stats(),
                "ingress": self.mux.ingress_stats(),
                "forwarding": dataclasses.asdict(self.manager.forwarder.stats),
                # how long forwarded RTP waited in the media socket (calls/queuedelay.py)
                "media_queue_delay": self.manager.forwarder.queue_delay.as_dict(),
                # --media-threads in effect, and how many fan-outs used more than one
                "fanout_pool": {"threads": fastpath.pool_threads(),
                                "parallel_fanouts": fastpath.parallel_fanouts(),
                                "parallel_batches": fastpath.parallel_batches()},
                "control": {**dataclasses.asdict(self.manager.control_stats),
                            **dataclasses.asdict(self.manager.forwarder.routing_stats)},
                "calls": len(self.manager.calls), "sessions": len(self.manager.participants),
                **(self.connectivity.stats() if self.connectivity else {}),
                "negotiating": sum(p.peer.negotiating
                                   for p in self.manager.participants.values()),
                "offers_sent": sum(p.peer.offers_sent
                                   for p in self.manager.participants.values()),
                # sessions whose finished DTLS is carried by rtc/dtlsrecord.py, not OpenSSL
                "dtls_records": sum(p.peer.dtls_released
                                    for p in self.manager.participants.values()),
                # sessions whose outgoing RTP the server's own SRTP sender protects
                # (rtc/sealing.py), by negotiated profile, and the packets it protected
                "srtp_sealer": self._sealer_stats(),
                "simulcast": self.manager.forwarder.simulcast_snapshot(),
                # the collector's pauses per generation and its freezing (gcpolicy.py)
                "gc": self.control.collector.stats() if self.control is not None else {},
                "pid": os.getpid()}

    def _sealer_stats(self) -> dict[str, Any]:
        assert self.manager is not None
        sealers = [p.peer.sealer for p in self.manager.participants.values()
                   if p.peer.sealer is not None]
        return {"sessions": len(sealers), "packets": sum(s.packets for s in sealers),
                "profiles": dict(collections.Counter(s.profile for s in sealers))}

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.fleet is not None:  # leave the fleet first: no new joins are sent here
            await self.fleet.stop()
        if self.manager is not None:
            await self.manager.shutdown()
        if self.http_server is not None:
            self.http_server.close()  # no new connections; the runner ends the open ones
        if self.runner is not None:
            await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        if self.control is not None:  # after the calls ended: their history is written
            await self.control.close()
        if self.connectivity is not None:
            self.connectivity.close()
        if self.mux is not None and self.mux.transport is not None:
            self.mux.transport.close()
        fastpath.shutdown_pool()  # after the last fan-out: the media socket is closed
        log.info("stopped")
