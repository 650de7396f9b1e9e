"""`callsctl check config`: validate a serve configuration without starting the server.

A bad value found at startup means a failed restart during a maintenance
window; this runs the same merge and validation as `callsctl serve`
(defaults < TOML file < CALLSCTL_* environment, `callsctl_sfu.config.load_config`)
and shows where each value came from, so an operator can check a change first.
On top of the schema's per-key checks it flags settings that are valid alone
but likely to break calls (a shared TCP port, a random media port).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from callsctl.check import app
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.errors import EXIT_FAIL, fail
from callsctl_sfu.config import (
    ConfigError,
    ServeConfig,
    env_name,
    load_config,
    read_toml,
    setting_names,
    specs_by_section,
)


def config_sources(config_file: Path | None,
                   env: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """Where each setting's value comes from, by the same precedence as load_config."""
    env = os.environ if env is None else env
    from_file = set(read_toml(config_file)) if config_file is not None else set()
    sources = {}
    for key in setting_names():
        if env_name(key) in env:
            sources[key] = env_name(key)
        elif key in from_file:
            sources[key] = str(config_file)
        else:
            sources[key] = "default"
    return sources


def config_warnings(cfg: ServeConfig) -> list[CheckResult]:
    """Valid-but-risky combinations the per-key validation cannot see."""
    notes: list[CheckResult] = []
    if cfg.udp_port == 0:
        notes.append(CheckResult(
            "config udp_port", "warn", "udp_port = 0 picks a random media port at each start",
            fix="set a fixed udp_port (8443): firewalls and port forwards need to know it"))
    elif cfg.api_port != 0 and cfg.api_port == cfg.udp_port:
        notes.append(CheckResult(
            "config ports", "warn",
            f"api_port equals udp_port ({cfg.udp_port}): the HTTP API and the ICE-TCP "
            f"fallback would both need TCP {cfg.udp_port}",
            fix="use different ports, e.g. api_port 8045 and udp_port 8443"))
    low = [f"{name} {value}" for name, value in (("udp_port", cfg.udp_port),
                                                 ("api_port", cfg.api_port))
           if 0 < value < 1024]
    if low:
        notes.append(CheckResult(
            "config privileged port", "warn",
            f"{', '.join(low)} below 1024 needs root or CAP_NET_BIND_SERVICE",
            fix="run serve with that capability (systemd AmbientCapabilities="
                "CAP_NET_BIND_SERVICE) or use ports ≥ 1024"))
    return notes


def _print_settings(cfg: ServeConfig, sources: dict[str, str]) -> None:
    console = Console()
    wide = console.width >= 120  # the meanings only help when they fit beside the values
    table = Table(title="merged serve configuration", title_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from")
    if wide:
        table.add_column("meaning", overflow="fold", style="dim")
    values = cfg.as_dict()
    specs = specs_by_section()
    for i, spec in enumerate(specs):
        value = values[spec.name]
        row = [spec.name, repr(value) if isinstance(value, str) else str(value),
               sources.get(spec.name, "default")]
        last = i + 1 == len(specs) or specs[i + 1].section != spec.section
        table.add_row(*row, *([spec.help] if wide else []), end_section=last)
    console.print(table)


@app.command("config")
def config_cmd(
    config: Path | None = typer.Option(None, "--config", "-f", metavar="FILE",
                                       help="Serve config file (TOML) to validate; the "
                                            "CALLSCTL_* environment is applied on top."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Validate a `callsctl serve` config without starting; print the merged result.

    Exit 0 when serve would accept it, 1 (with the one-line reason) when not.
    """
    try:
        cfg = load_config(config)
        sources = config_sources(config)
    except ConfigError as exc:
        if as_json:
            emit([CheckResult("config", "fail", str(error),
                              fix=f"fix {error.key}: {error.allowed}",
                              details={"file": str(config) if config else None,
                                       "key": error.key, "value": error.value})
                  for error in exc.all], True)
            raise typer.Exit(EXIT_FAIL) from None
        for error in exc.all[:-1]:  # every problem at once, one line each
            typer.echo(f"callsctl: error: {error}", err=True)
        fail(str(exc.all[-1]))
    origin = str(config) if config is not None else "defaults"
    env_keys = sorted(v for v in sources.values() if v.startswith("CALLSCTL_"))
    summary = f"valid: {origin}" + (f" + {', '.join(env_keys)}" if env_keys else "")
    details: dict[str, Any] = {"file": str(config) if config else None,
                               "config": cfg.as_dict(), "sources": sources}
    results = [CheckResult("config", "pass", summary, details=details),
               *config_warnings(cfg)]
    if not as_json:
        _print_settings(cfg, sources)
    raise typer.Exit(emit(results, as_json, title="check config"))
