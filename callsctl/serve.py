"""`callsctl serve`: run the SFU, signaling, API and web client in one process.

Once the command line is parsed and the settings are merged and checked, the
process starts over as the very same command line (`os.execv` of
`sys.orig_argv`: same PID, same `ps` line, same interpreter options, a zipapp
or a wrapper script runs again as itself) and is handed the parsed settings
through an inherited pipe (`_CALLSCTL_SERVE_CONFIG_FD`), so it runs the server
without parsing anything (`run_parsed`). Why: typer 0.29 converts every option
value with pydantic, which stays imported for the life of the process: about
7.4 MB of a server's idle RSS (bench/RESULTS.md, docs/performance-memory.md).
The settings go through a pipe, not the environment or the command line, so
secrets appear in neither. The banner's join-link token travels with them: it
is minted before starting over, so the server does not import PyJWT (and,
through it, cryptography) until it checks a participant's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from callsctl.errors import bad_option, fail
from callsctl.serve_options import overrides, with_setting_flags
from callsctl_sfu import __version__, links
from callsctl_sfu.config import ConfigError, ServeConfig, flag_name, load_config, to_toml
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.tokens import issue_token

if TYPE_CHECKING:
    from callsctl_sfu.server import Server

JOIN_LINK_TTL = 24 * 3600
# The inherited pipe the parsed settings arrive on after the re-exec (not CALLSCTL_*:
# it is not a setting, and load_config reads every CALLSCTL_* variable as one).
CONFIG_FD_ENV = "_CALLSCTL_SERVE_CONFIG_FD"


@with_setting_flags(before="print_config")
def serve(
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with settings (top level or a \\[serve] table)."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the merged configuration as TOML and exit."),
    **settings: Any,
) -> None:
    """Run the SFU: all media on one UDP port, API/web client/signaling on --api-port.

    Settings come from defaults < --config TOML < CALLSCTL_* environment
    (e.g. CALLSCTL_UDP_PORT) < these flags. On start it prints the listening
    addresses and a join link to open in a browser. Stop with Ctrl-C or SIGTERM:
    calls end cleanly and the ports are freed.
    """
    try:
        config = load_config(config_file, overrides=overrides(settings))
    except ConfigError as exc:
        if getattr(exc, "source", "") == "flag":  # a bad flag is a usage error (exit 2)
            bad_option(flag_name(exc.key), f"{exc.value!r} {exc.allowed}")
        more = len(exc.all) - 1
        fail(str(exc) + (f" (and {more} more: `callsctl check config` lists every one)"
                         if more else ""))
    if print_config:
        typer.echo(to_toml(config), nl=False)
        return
    banner_token = _banner_token(config)
    _start_over(config, banner_token)  # returns only if this process cannot re-execute itself
    _serve(config, banner_token)


def _banner_token(config: ServeConfig) -> str | None:
    """The banner's join-link token, minted here, before the server starts over.

    Minting imports PyJWT, and PyJWT imports cryptography (about 9 MB): done in
    the process that is about to be replaced, the running server keeps neither
    until a participant's token is checked. None when the data dir cannot hold
    the secret: the server then says what is wrong with it, in one line.
    """
    try:
        secret = load_or_create_secret(config.data_dir)
        return issue_token(secret, config.default_call, "guest", JOIN_LINK_TTL)
    except CallsctlError:
        return None


def _serve(config: ServeConfig, banner_token: str | None = None) -> None:
    # The engine (aiohttp...) is imported only when serving, so every other command
    # starts fast.
    from callsctl_sfu.logsetup import configure_logging

    configure_logging(config.log_level, config.log_format)
    asyncio.run(_run(config, banner_token))  # a StartupError is one line and exit 1, from app.main


def _start_over(config: ServeConfig, banner_token: str | None) -> None:
    """Execute this same command line again, the parsed settings on a pipe (module doc)."""
    data = json.dumps({"config": dataclasses.asdict(config),
                       "banner_token": banner_token}).encode()
    if len(data) >= 60000 or not sys.orig_argv:  # a pipe's buffer holds it without a reader
        return
    read, write = os.pipe()
    try:
        os.write(write, data)
        os.close(write)
        os.set_inheritable(read, True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, {**os.environ, CONFIG_FD_ENV: str(read)})
    except OSError:  # no exec here (a sandbox): serve in this process, with what it holds
        for fd in (read, write):
            with contextlib.suppress(OSError):  # the write end may be closed already
                os.close(fd)


def run_parsed() -> bool:
    """Serve with settings a parent `callsctl serve` parsed (see the module doc).

    False when this process was not started that way. The variable and the pipe
    are gone before anything else runs, so child processes inherit neither.
    """
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
    _serve(config, banner_token)
    return True


async def _run(config: ServeConfig, banner_token: str | None = None) -> None:
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
    _print_banner(server, banner_token)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _drain_or_stop(server: Server, stop: asyncio.Event) -> None:
    if server.fleet.state == "draining":
        stop.set()
    else:
        server.fleet.drain("SIGTERM")


def _print_banner(server: Server, token: str | None = None) -> None:
    """Like Jupyter: where it listens and a link that joins the default call."""
    config = server.config
    if token is None:  # serving in the process that parsed the command line
        token = issue_token(load_or_create_secret(config.data_dir), config.default_call,
                            "guest", JOIN_LINK_TTL)
    advertised = server.advertised
    assert advertised is not None, "the banner is printed after Server.start()"
    # Values (paths, fingerprints, tokens) are printed as they are: with markup or
    # emoji codes on, `[red]` in a path vanishes and `:cd:` in a fingerprint is an emoji.
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True, markup=False,
                      emoji=False)
    console.print(f"callsctl serve {__version__}", style="bold")
    control = server.control
    tls = control is not None and control.tls is not None
    scheme = "https" if tls else "http"
    local = links.base_url(dataclasses.replace(config, public_url=""), server.api_port, tls)
    public = links.base_url(config, server.api_port, tls)
    console.print(f"  API, web client, /ws : {scheme}://{config.bind}:{server.api_port}")
    if config.public_url:
        console.print(f"  public URL            : {public}")
    console.print(f"  media (all sessions)  : udp {config.bind}:{server.udp_port}, advertised "
                  f"as {advertised.host}:{advertised.port} ({advertised.source})")
    from callsctl_sfu.rtc.fastpath import PARALLEL_MIN_TARGETS  # loaded with the server

    console.print(f"  media fan-out threads : {server.fanout_threads} (--media-threads; for "
                  f"packets to {PARALLEL_MIN_TARGETS}+ receivers)")
    if server.connectivity is not None and server.connectivity.tcp_port:
        console.print(f"  ICE-TCP fallback      : tcp {config.bind}:"
                      f"{server.connectivity.tcp_port}, advertised as {advertised.host}:"
                      f"{advertised.tcp_port}")
    console.print(f"  data dir              : {config.data_dir}")
    if control is not None:
        console.print(f"  admin API             : {local}/api/v1 "
                      f"(key in {control.admin_key_path}; `callsctl calls list`)")
        where = (f"{scheme}://{config.metrics_bind or config.bind}:{server.metrics_port}"
                 if server.metrics_port else local)
        guard = " (admin key required)" if config.metrics_auth == "admin_key" else ""
        console.print(f"  Prometheus metrics    : {where}/metrics{guard}")
        if control.tls is not None:
            kind = "self-signed" if control.tls.self_signed else "certificate"
            console.print(f"  TLS {kind:<18}: {control.tls.cert_path} (SHA-256 "
                          f"{control.tls.fingerprint_sha256})")
        if not config.default_enabled:
            console.print("  test mode             : only call ids enabled with `callsctl "
                          "calls enable ID` can start")
    if server.fleet is not None:
        console.print(f"  fleet                 : node {server.fleet.node_id} in "
                      f"{server.fleet.url} (policy {config.cluster_policy}); SIGTERM drains")
    console.print("  join the default call (valid 24 h; mint more with `callsctl token`):")
    console.print(f"    {links.join_link(public, token)}")
    sys.stdout.flush()
