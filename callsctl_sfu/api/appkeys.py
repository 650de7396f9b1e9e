"""The objects the aiohttp application shares with its handlers, under typed keys.

aiohttp's `web.AppKey` (3.9+) gives each shared object one name and one type:
a handler reads `request.app[CONFIG]` as a ServeConfig, mypy checks every
access, and aiohttp stops warning about bare string keys. Server.start puts
the first group in place; the control plane, the jobs service and a fleet node
add theirs when they attach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from callsctl_sfu.calls.manager import CallManager
    from callsctl_sfu.config import ServeConfig
    from callsctl_sfu.control import ControlPlane
    from callsctl_sfu.fleet.node import FleetNode
    from callsctl_sfu.jobs.service import JobService

CONFIG: web.AppKey[ServeConfig] = web.AppKey("config")
MANAGER: web.AppKey[CallManager] = web.AppKey("manager")
JWT_SECRET: web.AppKey[bytes] = web.AppKey("jwt_secret")
SERVER_INFO: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("server_info")
READINESS: web.AppKey[Callable[[], tuple[bool, str]]] = web.AppKey("readiness")
STATS: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("stats")
WS_STATS: web.AppKey[dict[str, int]] = web.AppKey("ws_stats")
CONTROL: web.AppKey[ControlPlane] = web.AppKey("control")
JOBS: web.AppKey[JobService] = web.AppKey("jobs")
FLEET: web.AppKey[FleetNode] = web.AppKey("fleet")
