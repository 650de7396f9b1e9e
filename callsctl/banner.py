"""`callsctl serve`'s start-up banner: where it listens and a link that joins, like Jupyter.

Plain `print`, no rich: the banner is printed by the serving pass, which
imports neither typer nor rich nor click (callsctl/serving.py), and values
(paths, fingerprints, tokens) must come out exactly as they are, with no
markup or emoji codes read into them.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

from callsctl_sfu import __version__, links
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import issue_token

if TYPE_CHECKING:
    from callsctl_sfu.server import Server

JOIN_LINK_TTL = 24 * 3600


def print_banner(server: Server, token: str | None = None) -> None:
    """Like Jupyter: where it listens and a link that joins the default call."""
    config = server.config
    if token is None:  # serving in the process that parsed the command line
        token = issue_token(load_or_create_secret(config.data_dir), config.default_call,
                            "guest", JOIN_LINK_TTL)
    advertised = server.advertised
    assert advertised is not None, "the banner is printed after Server.start()"
    lines = [f"callsctl serve {__version__}"]
    control = server.control
    tls = control is not None and control.tls is not None
    scheme = "https" if tls else "http"
    local = links.base_url(dataclasses.replace(config, public_url=""), server.api_port, tls)
    public = links.base_url(config, server.api_port, tls)
    lines.append(f"  API, web client, /ws : {scheme}://{config.bind}:{server.api_port}")
    if config.public_url:
        lines.append(f"  public URL            : {public}")
    lines.append(f"  media (all sessions)  : udp {config.bind}:{server.udp_port}, advertised "
                  f"as {advertised.host}:{advertised.port} ({advertised.source})")
    from callsctl_sfu.rtc.fastpath import PARALLEL_MIN_TARGETS  # loaded with the server

    lines.append(f"  media fan-out threads : {server.fanout_threads} (--media-threads; for "
                  f"packets to {PARALLEL_MIN_TARGETS}+ receivers)")
    if server.connectivity is not None and server.connectivity.tcp_port:
        lines.append(f"  ICE-TCP fallback      : tcp {config.bind}:"
                 f"{server.connectivity.tcp_port}, advertised as {advertised.host}:"
                 f"{advertised.tcp_port}")
    lines.append(f"  data dir              : {config.data_dir}")
    if control is not None:
        lines.append(f"  admin API             : {local}/api/v1 "
                 f"(key in {control.admin_key_path}; `callsctl calls list`)")
        where = (f"{scheme}://{config.metrics_bind or config.bind}:{server.metrics_port}"
                 if server.metrics_port else local)
        guard = " (admin key required)" if config.metrics_auth == "admin_key" else ""
        lines.append(f"  Prometheus metrics    : {where}/metrics{guard}")
        if control.tls is not None:
            kind = "self-signed" if control.tls.self_signed else "certificate"
            lines.append(f"  TLS {kind:<18}: {control.tls.cert_path} (SHA-256 "
                          f"{control.tls.fingerprint_sha256})")
        if not config.default_enabled:
            lines.append("  test mode             : only call ids enabled with `callsctl "
                          "calls enable ID` can start")
    if server.fleet is not None:
        lines.append(f"  fleet                 : node {server.fleet.node_id} in "
                 f"{server.fleet.url} (policy {config.cluster_policy}); SIGTERM drains")
    lines.append("  join the default call (valid 24 h; mint more with `callsctl token`):")
    lines.append(f"    {links.join_link(public, token)}")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
