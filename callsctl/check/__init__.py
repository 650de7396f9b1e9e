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

from callsctl.check import (  # noqa: E402,F401  (each module adds its commands to app)
    capture,
    config_cmd,
    netcat,
    report,
    rtc,
    rtcd_cmd,
    stun_cmd,
    turn_cmd,
    webrtc_cmd,
)
