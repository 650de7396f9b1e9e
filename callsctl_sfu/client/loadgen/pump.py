"""The load generator's receive thread: every participant's socket read in C (rtc/_recvpump.c).

In delivered mode each copy the server forwards is read by one of the
generator's participants, 100,000 datagrams a second at the guide's 1 call x
1000. Read by asyncio, every one costs a wake-up of that participant's socket
and a Python callback, and the generator needed 70-95 % of a core to keep up
on the machine it shares with the server it measures. A connected
participant's socket is therefore read by one C thread per process
(`ReceivePump`), which counts SRTP per SSRC without the GIL and hands up only
what needs Python: STUN and DTLS (to the participant's aioice protocol, as
asyncio would), every Nth packet of a probe for its delay stamp with the time
it was read, SRTCP of video senders (keyframe requests) and receive errors.

Without the C extension, or with CALLSCTL_LOADGEN_PUMP=0, participants read
their sockets through asyncio as before (participant.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callsctl_sfu.rtc import fastpath
from callsctl_sfu.switches import switched_off

ENV = "CALLSCTL_LOADGEN_PUMP"
DATAGRAM, SAMPLE, RTCP, ERROR = 0, 1, 2, 3  # the kinds ReceivePump.take() hands up

log = logging.getLogger(__name__)


def pump_enabled() -> bool:
    """The C extension is built and CALLSCTL_LOADGEN_PUMP is not 0/off."""
    if switched_off(ENV):
        return False
    return fastpath.receive_pump_type() is not None


@dataclass
class Handlers:
    """Where one socket's hand-ups go."""

    datagram: Callable[[bytes, Any], None]     # the socket's protocol (STUN, DTLS)
    sample: Callable[[bytes, float], None]     # a sampled SRTP packet and when it was read
    rtcp: Callable[[bytes], None]              # SRTCP (only when asked for)
    error: Callable[[Exception], None]         # a receive error (a queued ICMP error)


@dataclass(frozen=True)
class Counts:
    """What the thread counted on one socket."""

    received: dict[int, int]   # SRTP packets per SSRC
    rtcp_in: int
    other: int                 # packets of SSRCs beyond the thread's table (32 per socket)
    first_media: float | None  # time.monotonic() of the first SRTP packet


class SharedPump:
    """One ReceivePump for this process's participants, woken into the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        pump_type = fastpath.receive_pump_type()
        if pump_type is None:
            raise RuntimeError("the C extension is not built")
        self._loop = loop
        self._pump = pump_type()
        self._wake_fd: int = self._pump.start()
        self._handlers: dict[int, Handlers] = {}
        loop.add_reader(self._wake_fd, self._on_wake)

    def add(self, transport: Any, every: int, watch_rtcp: bool,
            handlers: Handlers) -> int | None:
        """Read the socket of asyncio's datagram `transport` on the thread; its slot.

        The transport stops reading (`pause_reading`, which asyncio's selector
        transports have); None, and nothing changed, when it cannot.
        """
        sock = transport.get_extra_info("socket")
        pause = getattr(transport, "pause_reading", None)
        if sock is None or pause is None:
            return None
        pause()
        slot: int = self._pump.add(sock.fileno(), every, watch_rtcp)
        self._handlers[slot] = handlers
        return slot

    def remove(self, slot: int) -> Counts:
        """Stop reading the slot's socket (before it is closed); its final counts."""
        counts = self.counts(slot)
        self._pump.remove(slot)
        self._handlers.pop(slot, None)
        return counts

    def counts(self, slot: int) -> Counts:
        received, rtcp_in, other, first_media = self._pump.counts(slot)
        return Counts(received, rtcp_in, other, first_media)

    def stats(self) -> dict[str, int]:
        """{datagrams, dropped, wakes}: read, hand-ups dropped (the queue full), loop wakes."""
        stats: dict[str, int] = self._pump.stats()
        return stats

    def close(self) -> None:
        """Stop the thread (every slot removed first: participants close before this)."""
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._wake_fd)
        self._pump.stop()
        self._handlers.clear()

    def _on_wake(self) -> None:
        for slot, kind, data, addr, arrived, error in self._pump.take():
            handlers = self._handlers.get(slot)
            if handlers is None:
                continue  # queued before its participant left
            try:
                if kind == DATAGRAM:
                    handlers.datagram(data, addr)
                elif kind == SAMPLE:
                    handlers.sample(data, arrived)
                elif kind == RTCP:
                    handlers.rtcp(data)
                else:
                    handlers.error(OSError(error, os.strerror(error)))
            except Exception:  # one participant's failure must not starve the others
                log.exception("load generator: handling a datagram of slot %d failed", slot)
