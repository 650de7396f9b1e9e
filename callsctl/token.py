"""`callsctl token`: mint a join token (and link) for a call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from callsctl import localserver
from callsctl.errors import bad_option, fail
from callsctl.timespec import parse_duration
from callsctl_sfu import links
from callsctl_sfu.config import ConfigError, load_config, public_url_problem
from callsctl_sfu.links import join_link
from callsctl_sfu.tokens import TokenError, issue_token


def token(
    call: str = typer.Option(..., "--call", "-c", help="Call id the token admits to."),
    user: str = typer.Option(..., "--user", "-u", help="User id (the JWT `sub`)."),
    ttl: str = typer.Option("24h", "--ttl", help="Lifetime: seconds or 30s/15m/24h/7d."),
    data_dir: str | None = typer.Option(
        None, "--data-dir",
        help="Data dir of the server whose jwt_secret signs the token (read, never created). "
             "[default: CALLSCTL_DATA_DIR, else data_dir of --config, else "
             "$XDG_DATA_HOME/callsctl]"
    ),
    config: Path | None = typer.Option(None, "--config", help="Serve config file (TOML)."),
    url: str = typer.Option(
        "", "--url", metavar="URL",
        help="Base URL participants open, e.g. https://calls.example.com. [default: the "
             "server's public_url setting (--config / CALLSCTL_PUBLIC_URL), else "
             "http(s)://127.0.0.1:<api_port>]"),
    as_json: bool = typer.Option(False, "--json", help="Print token, link and expiry as JSON."),
) -> None:
    """Print a join token for CALL and USER, signed with the server's secret.

    The secret is read from the server's data dir (never created: a new one would
    sign links the server rejects), so run this on the server host with the same
    --data-dir/--config as `callsctl serve`, after its first start.
    The link starts with the server's public_url when it has one (or --url).
    """
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        bad_option("--ttl", str(exc))
    for option, value in (("--call", call), ("--user", user)):
        if not value.strip():
            bad_option(option, "must not be empty")
    problem = public_url_problem(url)
    if problem:
        bad_option("--url", f"{url!r} {problem}")
    secret = localserver.token_secret(
        data_dir, config, otherwise="run this on the server host with the --data-dir (or "
                                    "--config) of `callsctl serve`")
    try:
        cfg = load_config(config, overrides={"data_dir": data_dir})
        value = issue_token(secret, call, user, seconds)
    except (ConfigError, TokenError, ValueError) as exc:
        fail(str(exc))
    link = join_link(url or links.base_url(cfg), value)
    if as_json:
        typer.echo(json.dumps({"token": value, "link": link, "call": call, "user": user,
                               "expires_at": int(time.time() + seconds)}))
    else:
        typer.echo(value)
        typer.echo(f"join link: {link}", err=True)
