"""A cap on open connections to the API port, in front of aiohttp's protocol factory.

aiohttp's keepalive_timeout closes a connection that has not completed a
request in time (it is armed when the connection opens and after each
response), which ends slow or silent clients; what it does not do is bound how
many connections are open at once, each a file descriptor. Beyond the cap a
new connection gets a short 503 and is closed, and one log line per interval
says so, so the operator learns the cause instead of seeing EMFILE errors.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable

from callsctl_sfu.ratelog import RateLimitedLog

log = logging.getLogger("callsctl_sfu.api.conncap")
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
           b"Content-Type: text/plain\r\nContent-Length: 38\r\nRetry-After: 5\r\n\r\n"
           b"too many connections; try again later\n")
MIN_AUTO_CAP = 64


def auto_cap() -> int:
    """Three quarters of the open-files limit: the rest stays for sockets, the database, logs."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(MIN_AUTO_CAP, soft * 3 // 4)


class _Refused(asyncio.Protocol):
    """Answers 503 and closes: the connection costs one write, not a handler."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(REFUSAL)  # type: ignore[attr-defined]
        transport.close()


class ConnectionCap:
    """Protocol factory: aiohttp's handler while below `limit` open connections."""

    def __init__(self, inner: Callable[[], asyncio.BaseProtocol], open_count: Callable[[], int],
                 limit: int) -> None:
        self.inner = inner
        self.open_count = open_count
        self.limit = limit
        self.refused = 0
        self._log = RateLimitedLog(log)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open_count() >= self.limit:
            self.refused += 1
            self._log.warning("api", "API port at its connection cap (%d open): refusing new "
                                     "connections with 503; raise max_http_connections (and "
                                     "the open-files limit) if these are real clients",
                              self.limit)
            return _Refused()
        return self.inner()
