"""Per-connection token bucket for signaling messages.

The Calls plugin allows each WebSocket 10 messages per second with a burst of
100: enough for a client trickling ICE candidates at join, too little for a
buggy or hostile client to keep the event loop busy. A message over the limit
is dropped and answered with one `rate_limited` error per second at most, so a
flood never turns into a flood of replies or a disconnect/reconnect storm.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one token per message."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "_clock", "dropped", "_last_notice")

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()
        self.dropped = 0
        self._last_notice = float("-inf")

    def take(self) -> bool:
        """Spend one token if there is one; False means "over the limit, drop it"."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False

    def should_notify(self, interval: float = 1.0) -> bool:
        """Whether a dropped message deserves an error event now (at most one per interval)."""
        now = self._clock()
        if now - self._last_notice >= interval:
            self._last_notice = now
            return True
        return False
