"""What the forwarding engine reports to a metrics system, and a no-op for tests and benches.

The engine (calls/forwarder.py) is handed an object with these methods at
wiring time (server.py gives it the Prometheus one in metrics.py); it never
imports a metrics library. Only what exists as a measurement crosses here:
the cost of writing a sample of forwarded datagrams. Counters (packets in,
forwarded, dropped by reason, NACKs, PLIs) stay plain integers the engine
keeps in `ForwardingStats` and a metrics system reads when scraped, so the
per-packet path makes no extra call for them.
"""

from __future__ import annotations

from typing import Protocol


class ForwardMetrics(Protocol):
    """Measurements the forwarder pushes (a sample of packets, never every one)."""

    def on_send_cost(self, kind: str, seconds: float) -> None:
        """One forwarded datagram's SRTP protect + send took `seconds` (kind: audio|video)."""


class NoMetrics:
    """Discards every measurement: for tests, benches and embedding without Prometheus."""

    def on_send_cost(self, kind: str, seconds: float) -> None:
        """Nothing to record."""
