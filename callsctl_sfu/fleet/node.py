"""This server as one node of a fleet: registration, placement, relay, drain, reaping.

server.py creates one FleetNode when `cluster` is set and calls start() after
the API port is bound (the node must know its own address before it tells
the fleet) and stop() before the calls end. Everything else hooks in through
the objects the server already has: the CallManager's observers (a call that
ends here releases its claim), the /ws connection's router (routing.py, set
through the hook in api/signaling.py) and the admin API's middleware (bus.py).

When Redis cannot be reached, calls hosted here go on untouched: the node
keeps retrying every REFRESH_S, refuses only the joins that need the fleet
(a call not hosted here), and on reconnect registers again and re-claims
the calls it hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from redis.asyncio import Redis

from callsctl_sfu import __version__
from callsctl_sfu.api.appkeys import FLEET
from callsctl_sfu.calls.sessionstats import summarize_call
from callsctl_sfu.datadir import DataDirError, load_or_create_secret
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.fleet import placement, registry
from callsctl_sfu.fleet.drain import Drainer
from callsctl_sfu.fleet.registry import ACTIVE, DRAINING, REDIS_ERRORS, NodeInfo
from callsctl_sfu.fleet.routing import JoinRouter
from callsctl_sfu.fleet.settings import default_node_id, redacted

if TYPE_CHECKING:
    from aiohttp import web

    from callsctl_sfu.api.signaling import SignalingConnection
    from callsctl_sfu.calls.model import Call
    from callsctl_sfu.server import Server

log = logging.getLogger("callsctl_sfu.fleet")

FLEET_SECRET_FILE = "fleet_secret"
REAP_EVERY = 2  # refreshes
REDIS_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 3.0  # leaving the fleet never holds up a shutdown for longer


class FleetError(CallsctlError, RuntimeError):
    """The node cannot join the fleet; one line naming the problem and the fix."""
    code = "fleet_unavailable"


def load_fleet_secret(fleet_secret: str, data_dir: str) -> str:
    """The configured secret, else <data_dir>/fleet_secret (generated 0600 once)."""
    if fleet_secret:
        if len(fleet_secret) < 16:
            raise FleetError("fleet_secret must be at least 16 characters; every node of "
                             "the fleet needs the same one")
        return fleet_secret
    try:
        value = load_or_create_secret(data_dir, FLEET_SECRET_FILE).decode("ascii")
    except DataDirError as exc:
        raise FleetError(str(exc)) from None
    path = Path(data_dir).expanduser() / FLEET_SECRET_FILE
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("fleet secret file %s is readable by other users; chmod 600 it", path)
    return value


def connect(url: str) -> Redis:
    """A redis-py asyncio client with short timeouts: a dead Redis must not stall a join."""
    return Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                          socket_connect_timeout=REDIS_TIMEOUT_S, health_check_interval=10)


class FleetNode:
    """One node's membership of the fleet."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self.node_id = self.config.node_id  # default needs the bound API port: start()
        self.secret = load_fleet_secret(self.config.fleet_secret, self.config.data_dir)
        self.url = redacted(self.config.cluster)
        try:
            self.redis = connect(self.config.cluster)
        except ValueError as exc:  # redis-py's own URL checks (a bad ?option=)
            raise FleetError(f"cannot use cluster URL {self.url}: {exc}") from None
        self.state = ACTIVE
        self.redis_up = False
        self.joined = False  # /readyz says not ready until the node is registered
        self.started_at = time.time()
        self.api_url = ""
        self.nodes: dict[str, NodeInfo] = {}  # the fleet as of the last refresh
        self.drainer = Drainer(self)
        self.router = JoinRouter(self)
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[Any]] = set()
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)
        self._cpu = 0.0
        self._system_cpu = 0.0
        self.relayed_out = 0
        self.relayed_in = 0
        self.stopped: Callable[[], None] | None = None  # serve.py: stop the process

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, app: web.Application) -> None:
        """Before the app is frozen: the admin routing middleware, routes, the /ws hook."""
        from callsctl_sfu.fleet.bus import add_fleet_routes
        from callsctl_sfu.fleet.metrics import FleetCollector

        add_fleet_routes(app, self)
        app[FLEET] = self
        control = self.server.control
        if control is not None and control.metrics is not None:
            control.metrics.registry.register(FleetCollector(self))

    async def start(self) -> None:
        """Register (Redis must answer now: a node that cannot join the fleet does not start)."""
        self.node_id = self.node_id or default_node_id(self.server.api_port)
        self.api_url = self._api_url()
        try:
            await self.redis.ping()
            await self._refresh()
        except REDIS_ERRORS as exc:
            await self.redis.aclose()
            raise FleetError(f"cannot reach the fleet's Redis at {self.url}: {exc}; start "
                             "Redis or correct --cluster") from None
        except (TypeError, ValueError) as exc:  # an option redis-py does not know
            await self.redis.aclose()
            raise FleetError(f"cannot use cluster URL {self.url}: {exc}") from None
        self.redis_up = True
        self.joined = True
        manager = self.server.manager
        assert manager is not None
        manager.observers.append(self._on_event)
        self._task = asyncio.create_task(self._loop(), name="fleet-registry")
        log.info("fleet: node %s joined %s (policy %s), API for other nodes at %s",
                 self.node_id, self.url, self.config.cluster_policy, self.api_url)

    async def stop(self) -> None:
        """Leave the fleet: release this node's claims, delete its registration."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._releases):
            with contextlib.suppress(Exception):
                await task
        if self.redis_up:  # else the registration expires and the reaper releases
            with contextlib.suppress(*REDIS_ERRORS):
                await asyncio.wait_for(self._leave(), STOP_TIMEOUT_S)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def _leave(self) -> None:
        manager = self.server.manager
        if manager is not None:
            for call_id in list(manager.calls):
                await placement.release(self.redis, call_id, self.node_id)
        await registry.unregister(self.redis, self.node_id)

    def _api_url(self) -> str:
        if self.config.node_url:
            return self.config.node_url.rstrip("/")
        control = self.server.control
        scheme = "https" if control is not None and control.tls is not None else "http"
        host = self.config.bind
        if host in ("0.0.0.0", "::") and self.server.advertised is not None:
            host = self.server.advertised.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.server.api_port}"

    # -- registration loop ------------------------------------------------------------------

    def info(self) -> NodeInfo:
        server = self.server
        manager = server.manager
        advertised = server.advertised
        control = server.control
        sampler = control.sampler if control is not None else None
        calls = []
        if manager is not None:
            for call in manager.calls.values():
                summary = summarize_call(manager, call, sampler)
                summary["node"] = self.node_id
                calls.append(summary)
        return NodeInfo(
            node_id=self.node_id, api_url=self.api_url,
            media_host=advertised.host if advertised else self.config.bind,
            media_port=advertised.port if advertised else server.udp_port,
            media_tcp_port=advertised.tcp_port if advertised else None,
            version=__version__, state=self.state, cpu_load=self._cpu,
            system_cpu=self._system_cpu,
            sessions=len(manager.participants) if manager else 0, calls=calls,
            started_at=self.started_at)

    async def _refresh(self) -> None:
        self._cpu = round(self._process.cpu_percent(None), 1)
        self._system_cpu = round(psutil.cpu_percent(None), 1)
        await registry.register(self.redis, self.info())
        self.nodes = {n.node_id: n for n in await registry.list_nodes(self.redis)}

    async def _loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(registry.REFRESH_S)
            ticks += 1
            try:
                await self._refresh()
                if not self.redis_up:
                    self.redis_up = True
                    log.warning("fleet: Redis at %s is back; registered again", self.url)
                    await self._reconcile()
                if self.state == ACTIVE and await registry.drain_requested(self.redis,
                                                                            self.node_id):
                    self.drain("requested with `callsctl fleet drain`")
                if ticks % REAP_EVERY == 0:
                    for call_id, node_id in await placement.reap(self.redis, set(self.nodes)):
                        log.warning("fleet: call %s ended: its host node %s was lost",
                                    call_id, node_id)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if self.redis_up:
                    self.redis_up = False
                    log.warning("fleet: Redis at %s is unreachable (%s): calls hosted here "
                                "go on; new calls elsewhere wait until it is back", self.url,
                                exc.__class__.__name__)
            except Exception:  # keep the node in the fleet whatever one pass hits
                log.exception("fleet registry pass failed")

    async def _reconcile(self) -> None:
        """After Redis came back (maybe empty): claim again every call hosted here."""
        manager = self.server.manager
        if manager is None:
            return
        for call_id in list(manager.calls):
            host = await placement.claim(self.redis, call_id, self.node_id)
            if host != self.node_id:
                log.warning("fleet: call %s is hosted here but node %s claimed it while Redis "
                            "was away; new joins go there", call_id, host)

    # -- calls ending here --------------------------------------------------------------------

    def _on_event(self, call: Call, event: dict[str, Any]) -> None:
        if event.get("type") == "call_end":
            task = asyncio.ensure_future(self._release(call.call_id))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
            self.drainer.poke()

    async def _release(self, call_id: str) -> None:
        manager = self.server.manager
        if manager is not None and call_id in manager.calls:
            return  # ended and started again meanwhile
        # Redis away: the claim stays until reconcile or the reaper; the call is gone anyway.
        with contextlib.suppress(*REDIS_ERRORS):
            await placement.release(self.redis, call_id, self.node_id)

    async def node(self, node_id: str) -> NodeInfo | None:
        """A registered node: from the last refresh, else asked of Redis (it may be new)."""
        known = self.nodes.get(node_id)
        if known is not None:
            return known
        raw = await self.redis.get(registry.node_key(node_id))
        info = NodeInfo.from_json(raw) if raw is not None else None
        if info is not None:
            self.nodes[node_id] = info
        return info

    def redis_down_message(self, exc: BaseException) -> str:
        return (f"the fleet's Redis at {self.url} is unreachable ({exc.__class__.__name__}): "
                "calls on other nodes cannot be joined now; try again shortly")

    async def accept_ws(self, request: web.Request, connection: SignalingConnection) -> bool:
        """The /ws hook (api/signaling.py): joins go through the router (routing.py)."""
        return await self.router.accept_ws(request, connection)

    # -- draining -----------------------------------------------------------------------------

    def drain(self, why: str) -> None:
        """Stop taking new calls; stop the node once its calls ended (or the deadline)."""
        if self.state == DRAINING:
            return
        self.state = DRAINING
        log.warning("fleet: node %s draining (%s): no new calls; stopping when its %d "
                    "call(s) end or in %g s", self.node_id, why,
                    len(self.server.manager.calls) if self.server.manager else 0,
                    self.config.drain_timeout)
        self.drainer.start()
