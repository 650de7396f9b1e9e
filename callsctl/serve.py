"""`callsctl serve`: run the SFU, signaling, API and web client in one process.

Once the command line is parsed and the settings are merged and checked, the
process starts over as the very same command line (`os.execv` of
`sys.orig_argv`: same PID, same `ps` line, same interpreter options, a zipapp
or a wrapper script runs again as itself) and is handed the parsed settings
through an inherited pipe (`_CALLSCTL_SERVE_CONFIG_FD`), so it runs the server
without parsing anything (callsctl/serving.py, entered from callsctl/entry.py
before typer, rich or click is imported). Why: typer 0.29 converts every option
value with pydantic, which stays imported for the life of the process: about
7.4 MB of a server's idle RSS (bench/RESULTS.md, docs/performance-memory.md).
The settings go through a pipe, not the environment or the command line, so
secrets appear in neither. The banner's join-link token travels with them: it
is minted before starting over, so the server does not import PyJWT (and,
through it, cryptography) until it checks a participant's token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from callsctl.banner import JOIN_LINK_TTL
from callsctl.errors import bad_option, fail
from callsctl.serve_options import overrides, with_setting_flags
from callsctl.serving import CONFIG_FD_ENV
from callsctl.serving import serve as run_server
from callsctl_sfu.config import ConfigError, ServeConfig, flag_name, load_config, to_toml
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.tokens import issue_token


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
    run_server(config, banner_token)


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
