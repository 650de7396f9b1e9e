"""Draining: a node leaving the fleet without cutting anyone off.

Like an rtcd host that leaves DNS (the Calls plugin stops giving it new calls
while its calls go on), a draining node advertises state "draining": placement
skips it, joins of new calls that reach it are placed elsewhere (relayed),
joins of the calls it hosts are still accepted. When its last call ends, or
drain_timeout passes (then its calls end with call_end), the node stops and
its process exits. Triggered by SIGTERM (serve.py) or `callsctl fleet drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callsctl_sfu.fleet.node import FleetNode

log = logging.getLogger("callsctl_sfu.fleet.drain")


class Drainer:
    """Waits for the node's calls to end, then asks serve to stop."""

    def __init__(self, node: FleetNode) -> None:
        self.node = node
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleet-drain")

    def poke(self) -> None:
        """A call ended: look again."""
        self._changed.set()

    def _remaining(self) -> int:
        manager = self.node.server.manager
        return len(manager.calls) if manager is not None else 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.node.config.drain_timeout
        while self._remaining() and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(),
                                       min(1.0, max(0.0, deadline - loop.time())))
        left = self._remaining()
        if left:
            log.warning("fleet: drain deadline (%g s) passed with %d call(s) left; ending "
                        "them", self.node.config.drain_timeout, left)
        else:
            log.warning("fleet: node %s drained: no calls left; stopping", self.node.node_id)
        if self.node.stopped is not None:
            self.node.stopped()
