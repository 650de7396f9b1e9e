"""`callsctl check`: diagnostics that replace the deployment guide's nc/tcpdump/STUN recipes.

Each submodule registers its subcommands on `app`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help=(
        "Diagnose connectivity: netcat-style UDP/TCP probes and listeners, STUN/NAT "
        "discovery, TURN allocation, a running server's media ports, packet capture and "
        "a full WebRTC test. Exit code 0 = all passed, 1 = a check failed, 2 = usage error."
    ),
    no_args_is_help=True,
)

# The import order is the order of `callsctl check --help`: netcat's udp, tcp and listen
# first (capture used to pull them in by importing netcat; now it imports neither).
# isort: off
from callsctl.check import netcat  # noqa: E402,F401
from callsctl.check import (  # noqa: E402,F401  (each module adds its commands to app)
    capture,
    config_cmd,
    report,
    rtc,
    rtcd_cmd,
    stun_cmd,
    turn_cmd,
    webrtc_cmd,
)
# isort: on
