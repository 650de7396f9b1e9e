"""Log lines an attacker can trigger, at most once per source per interval.

Anything an unauthenticated sender can provoke (a malformed datagram, a
refused connection) must not turn into one log line per packet: at 10,000
packets/s that is tens of megabytes of log a minute and most of a core. The
first event from a source is logged; later ones within `interval` seconds are
only counted, and the next line for that source says how many were held back.
The number of sources remembered is bounded too (spoofed UDP sources are free),
so beyond `max_sources` new sources are counted in one "other sources" tally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_INTERVAL = 30.0
DEFAULT_MAX_SOURCES = 256


class RateLimitedLog:
    """A logger wrapper: one line per source per interval, with the count held back."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL,
                 max_sources: int = DEFAULT_MAX_SOURCES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.max_sources = max_sources
        self.clock = clock
        # source -> [time of its last line, events held back since]
        self._sources: dict[str, list[float]] = {}
        self._overflow = 0
        self._overflow_logged = float("-inf")

    def log(self, level: int, source: str, message: str, *args: object) -> bool:
        """Log `message % args` unless `source` had a line in the last interval; True if logged."""
        now = self.clock()
        entry = self._sources.get(source)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if entry is None and len(self._sources) >= self.max_sources:
            self._forget_quiet(now)
            if len(self._sources) >= self.max_sources:
                self._overflow += 1
                if now - self._overflow_logged >= self.interval:
                    self._overflow_logged = now
                    self.logger.log(level, "%d similar events from other sources in the last "
                                           "%g s (not logged one by one)",
                                    self._overflow, self.interval)
                    self._overflow = 0
                return False
        held = int(entry[1]) if entry is not None else 0
        self._sources[source] = [now, 0]
        if held:
            self.logger.log(level, message + " (%d more from %s since the last such line)",
                            *args, held, source)
        else:
            self.logger.log(level, message, *args)
        return True

    def warning(self, source: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, source, message, *args)

    def info(self, source: str, message: str, *args: object) -> bool:
        return self.log(logging.INFO, source, message, *args)

    def _forget_quiet(self, now: float) -> None:
        """Drop sources whose interval has passed (their held-back count is lost)."""
        for source in [s for s, e in self._sources.items() if now - e[0] >= self.interval]:
            del self._sources[source]
