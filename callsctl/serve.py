"""`callsctl serve`: run the SFU, signaling, API and web client in one process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from callsctl.errors import fail
from callsctl_sfu import __version__
from callsctl_sfu.config import ConfigError, ServeConfig, load_config, to_toml
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import issue_token

if TYPE_CHECKING:
    from callsctl_sfu.server import Server

JOIN_LINK_TTL = 24 * 3600


def serve(
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with settings (top level or a [serve] table)."),
    bind: str | None = typer.Option(None, "--bind", help="Listen address. [default: 0.0.0.0]"),
    api_port: int | None = typer.Option(
        None, "--api-port", help="HTTP API, web client and /ws port. [default: 8045]"),
    udp_port: int | None = typer.Option(
        None, "--udp-port", help="The one UDP port for all media. [default: 8443]"),
    ice_host_override: str | None = typer.Option(
        None, "--ice-host-override",
        help="IP or host name to advertise in ICE candidates (the public address of a "
             "NATed server)."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Where secrets and the database live. "
                                 "[default: $XDG_DATA_HOME/callsctl]"),
    max_call_participants: int | None = typer.Option(
        None, "--max-call-participants", help="Most participants per call; 0 = unlimited."),
    log_level: str | None = typer.Option(
        None, "--log-level", help="debug, info, warning or error. [default: info]"),
    log_format: str | None = typer.Option(
        None, "--log-format", help="text or json. [default: text]"),
    default_call: str | None = typer.Option(
        None, "--default-call", help="Call id of the join link printed at startup."),
    session_timeout: float | None = typer.Option(
        None, "--session-timeout",
        help="Seconds without packets before a connected participant is removed. [default: 10]"),
    udp_buffer_size: int | None = typer.Option(
        None, "--udp-buffer-size",
        help="Socket buffer asked for on the media socket, bytes. [default: 16 MiB]"),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the merged configuration as TOML and exit."),
) -> None:
    """Run the SFU: all media on one UDP port, API/web client/signaling on --api-port.

    Settings come from defaults < --config TOML < CALLSCTL_* environment
    (e.g. CALLSCTL_UDP_PORT) < these flags. On start it prints the listening
    addresses and a join link to open in a browser. Stop with Ctrl-C or SIGTERM:
    calls end cleanly and the ports are freed.
    """
    overrides = {
        "bind": bind, "api_port": api_port, "udp_port": udp_port,
        "ice_host_override": ice_host_override, "data_dir": data_dir,
        "max_call_participants": max_call_participants, "log_level": log_level,
        "log_format": log_format, "default_call": default_call,
        "session_timeout": session_timeout, "udp_buffer_size": udp_buffer_size,
    }
    try:
        config = load_config(config_file, overrides=overrides)
    except ConfigError as exc:
        fail(str(exc))
    if print_config:
        typer.echo(to_toml(config), nl=False)
        return
    # The engine (aiortc, aiohttp) is imported only when serving, so every other
    # command starts fast.
    from callsctl_sfu.logsetup import configure_logging
    from callsctl_sfu.server import StartupError

    configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(_run(config))
    except StartupError as exc:
        fail(str(exc))


async def _run(config: ServeConfig) -> None:
    from callsctl_sfu.server import Server

    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    _print_banner(server)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _print_banner(server: Server) -> None:
    """Like Jupyter: where it listens and a link that joins the default call."""
    config = server.config
    host = "127.0.0.1" if config.bind in ("0.0.0.0", "::") else config.bind
    secret = load_or_create_secret(config.data_dir)
    token = issue_token(secret, config.default_call, "guest", JOIN_LINK_TTL)
    advertised = server.advertised
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    console.print(f"[bold]callsctl serve {__version__}[/bold]")
    console.print(f"  API, web client, /ws : http://{config.bind}:{server.api_port}")
    console.print(f"  media (all sessions)  : udp {config.bind}:{server.udp_port}, advertised "
                  f"as {advertised.host}:{advertised.port} ({advertised.source})")
    console.print(f"  data dir              : {config.data_dir}")
    console.print("  join the default call (valid 24 h; mint more with `callsctl token`):")
    console.print(f"    http://{host}:{server.api_port}/?token={token}")
    sys.stdout.flush()
