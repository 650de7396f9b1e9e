"""The serving pass of `callsctl serve`: settings from a pipe, then the server; no CLI libraries.

`callsctl serve` parses its command line with typer, then starts over as the
same command line with the parsed settings on an inherited pipe
(callsctl/serve.py). The process that starts over enters here (callsctl/entry.py)
before anything imports typer, rich or click: the long-running server holds
none of them (about 2 MB of RSS, docs/performance-memory.md), and prints its
banner as plain text (callsctl/banner.py). Errors are still one line and an
exit code, as callsctl.app.main gives them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

from callsctl.errors import exit_reporting_errors, fail
from callsctl.leanimports import import_web_stack
from callsctl_sfu.config import ServeConfig

if TYPE_CHECKING:
    from callsctl_sfu.server import Server

# The inherited pipe the parsed settings arrive on after the re-exec (not CALLSCTL_*:
# it is not a setting, and load_config reads every CALLSCTL_* variable as one).
CONFIG_FD_ENV = "_CALLSCTL_SERVE_CONFIG_FD"


def started_over() -> bool:
    """This process is `callsctl serve` started over with its settings on a pipe."""
    return sys.argv[1:2] == ["serve"] and bool(os.environ.get(CONFIG_FD_ENV))


def main() -> None:
    """Serve with the piped settings; every error is one line and an exit code."""
    exit_reporting_errors(_serve_parsed)


def _serve_parsed() -> int:
    run_parsed()
    return 0


def run_parsed() -> bool:
    """Serve with settings a parent `callsctl serve` parsed (see the module doc).

    False when this process was not started that way. The variable and the pipe
    are gone before anything else runs, so child processes inherit neither.
    """
    import json

    fd_text = os.environ.pop(CONFIG_FD_ENV, None)
    if fd_text is None:
        return False
    try:
        fd = int(fd_text)
        with os.fdopen(fd, "rb") as pipe:
            values = json.loads(pipe.read())
        config = ServeConfig(**values["config"])
        banner_token = values["banner_token"]
        if banner_token is not None and not isinstance(banner_token, str):
            raise TypeError("banner_token is not text")
    except (OSError, ValueError, TypeError) as exc:
        fail(f"serve could not read the settings it parsed before starting over ({exc}); "
             "run it again")
    serve(config, banner_token)
    return True


def serve(config: ServeConfig, banner_token: str | None = None) -> None:
    """Run the server until SIGINT/SIGTERM (a StartupError is one line and exit 1)."""
    # The engine (aiohttp...) is imported only when serving, so every other command
    # starts fast.
    from callsctl_sfu.logsetup import configure_logging

    configure_logging(config.log_level, config.log_format)
    import_web_stack()
    asyncio.run(_run(config, banner_token))


async def _run(config: ServeConfig, banner_token: str | None = None) -> None:
    from callsctl.banner import print_banner
    from callsctl_sfu.server import Server

    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if server.fleet is not None:  # a fleet node drains on SIGTERM (a second one stops it)
        server.fleet.stopped = stop.set
        loop.add_signal_handler(signal.SIGTERM, lambda: _drain_or_stop(server, stop))
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    print_banner(server, banner_token)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _drain_or_stop(server: Server, stop: asyncio.Event) -> None:
    if server.fleet.state == "draining":
        stop.set()
    else:
        server.fleet.drain("SIGTERM")
