"""`callsctl serve`: run the SFU, signaling, API and web client in one process."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from callsctl.errors import bad_option, fail
from callsctl_sfu import __version__, links
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
    tcp_port: int | None = typer.Option(
        None, "--tcp-port", help="TCP port for ICE-TCP, the fallback of clients whose UDP is "
                                 "blocked. [default: the --udp-port number, 8443]"),
    ice_tcp: str | None = typer.Option(
        None, "--ice-tcp", metavar="on|off", help="Listen for ICE-TCP. [default: on]"),
    ice_host_port_override: str | None = typer.Option(
        None, "--ice-host-port-override", metavar="PORT|IP/PORT,...",
        help="Port to advertise instead of the real one (port forwarding, Docker, load "
             "balancers): one port, or LOCAL_IP/PORT entries like 10.0.0.1/8443,10.0.0.2/8444."),
    stun_server: str | None = typer.Option(
        None, "--stun-server", metavar="HOST:PORT",
        help="STUN server asked once at startup for the public address when there is no "
             "--ice-host-override; \"\" = do not ask. "
             "[default: stun.global.calls.mattermost.com:3478]"),
    ice_servers: str | None = typer.Option(
        None, "--ice-servers", metavar="URI,...",
        help="STUN/TURN URIs handed to clients, e.g. stun:stun.example.com:3478,"
             "turn:turn.example.com:3478?transport=udp"),
    turn_static_auth_secret: str | None = typer.Option(
        None, "--turn-static-auth-secret",
        help="coturn's static-auth-secret: clients get TURN REST credentials. Prefer "
             "CALLSCTL_TURN_STATIC_AUTH_SECRET (flags show in ps)."),
    turn_credentials_expiration_minutes: int | None = typer.Option(
        None, "--turn-credentials-expiration-minutes",
        help="How long TURN credentials stay valid (max 10080, one week). [default: 1440]"),
    enable_ipv6: bool = typer.Option(
        False, "--enable-ipv6", help="Also listen on IPv6 (same ports) and advertise IPv6 "
                                     "host candidates."),
    admin_key_file: str | None = typer.Option(
        None, "--admin-key-file", help="File with the admin API key. [default: generated "
                                       "into <data dir>/admin_key on first start]"),
    default_enabled: bool | None = typer.Option(
        None, "--default-enabled/--no-default-enabled",
        help="Whether any call id may start a call; --no-default-enabled is test mode: only "
             "call ids enabled with `callsctl calls enable` can. [default: enabled]"),
    tls_cert: str | None = typer.Option(
        None, "--tls-cert", help="PEM certificate for HTTPS/WSS on the API port."),
    tls_key: str | None = typer.Option(None, "--tls-key", help="PEM key of --tls-cert."),
    tls_self_signed: bool = typer.Option(
        False, "--tls-self-signed", help="Serve HTTPS with a self-signed certificate "
                                         "generated once into the data dir and reused."),
    public_url: str | None = typer.Option(
        None, "--public-url", metavar="URL",
        help="Base URL participants open (e.g. https://calls.example.com behind a TLS "
             "proxy); join links start with it. [default: http(s)://<bind>:<api port>]"),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", metavar="PORT",
        help="Serve /metrics on this separate port instead of the API port (Mattermost "
             "uses 8067). [default: 0 = on the API port]"),
    metrics_bind: str | None = typer.Option(
        None, "--metrics-bind", metavar="IP",
        help="Address of the --metrics-port listener, e.g. 127.0.0.1. [default: --bind]"),
    metrics_auth: str | None = typer.Option(
        None, "--metrics-auth", metavar="none|admin_key",
        help="admin_key: /metrics answers only with 'Authorization: Bearer <admin key>'. "
             "[default: none]"),
    cluster: str | None = typer.Option(
        None, "--cluster", metavar="redis://…",
        help="Join a fleet of nodes through this Redis (rediss:// for TLS, password in the "
             "URL; prefer CALLSCTL_CLUSTER). [default: a single node, no Redis]"),
    cluster_policy: str | None = typer.Option(
        None, "--cluster-policy", metavar="least-loaded|local",
        help="Where new calls go: the least-loaded active node, or the node the first "
             "participant connects to. [default: least-loaded]"),
    node_id: str | None = typer.Option(
        None, "--node-id", help="This node's name in the fleet. [default: <host name>-<api "
                                "port>]"),
    node_url: str | None = typer.Option(
        None, "--node-url", metavar="URL",
        help="Base URL other nodes reach this node's API at, e.g. http://10.0.0.5:8045. "
             "[default: http(s)://<advertised address>:<api port>]"),
    drain_timeout: float | None = typer.Option(
        None, "--drain-timeout", metavar="SECONDS",
        help="In a fleet, SIGTERM drains: no new calls, exit when the calls ended or after "
             "this long. [default: 600]"),
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
        "tcp_port": tcp_port, "ice_tcp": ice_tcp, "ice_host_port_override":
        ice_host_port_override, "stun_server": stun_server, "ice_servers": ice_servers,
        "turn_static_auth_secret": turn_static_auth_secret,
        "turn_credentials_expiration_minutes": turn_credentials_expiration_minutes,
        "enable_ipv6": True if enable_ipv6 else None,
        "admin_key_file": admin_key_file, "default_enabled": default_enabled,
        "tls_cert": tls_cert, "tls_key": tls_key,
        "tls_self_signed": True if tls_self_signed else None,
        "public_url": public_url, "metrics_port": metrics_port, "metrics_bind": metrics_bind,
        "metrics_auth": metrics_auth, "cluster": cluster, "cluster_policy": cluster_policy,
        "node_id": node_id, "node_url": node_url, "drain_timeout": drain_timeout,
    }
    try:
        config = load_config(config_file, overrides=overrides)
    except ConfigError as exc:
        if getattr(exc, "source", "") == "flag":  # a bad flag is a usage error (exit 2)
            bad_option("--" + exc.key.replace("_", "-"), f"{exc.value!r} {exc.allowed}")
        more = len(exc.all) - 1
        fail(str(exc) + (f" (and {more} more: `callsctl check config` lists every one)"
                         if more else ""))
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
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if server.fleet is not None:  # a fleet node drains on SIGTERM (a second one stops it)
        server.fleet.stopped = stop.set
        loop.add_signal_handler(signal.SIGTERM, lambda: _drain_or_stop(server, stop))
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    _print_banner(server)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _drain_or_stop(server: Server, stop: asyncio.Event) -> None:
    if server.fleet.state == "draining":
        stop.set()
    else:
        server.fleet.drain("SIGTERM")


def _print_banner(server: Server) -> None:
    """Like Jupyter: where it listens and a link that joins the default call."""
    config = server.config
    secret = load_or_create_secret(config.data_dir)
    token = issue_token(secret, config.default_call, "guest", JOIN_LINK_TTL)
    advertised = server.advertised
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
