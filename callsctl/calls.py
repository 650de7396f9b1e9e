"""`callsctl calls …`: list, inspect and moderate live calls through the admin API.

The options here are the admin client's (callsctl.adminclient, which `record`
and `top` share): --server / CALLSCTL_SERVER, the admin key from a flag, the
environment, a file, the client config or the local server's data dir.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from callsctl.adminclient import (
    DEFAULT_SERVER,
    AdminClient,
    Connection,
    exit_on_error,
    resolve,
)

app = typer.Typer(
    name="calls",
    help="List, inspect and moderate live calls (the admin API of `callsctl serve`).\n\n"
         "Server and admin key come from flags, CALLSCTL_SERVER / CALLSCTL_ADMIN_KEY, a client "
         "config (~/.config/callsctl/client.toml) or, on the server host, its data dir.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class ClientOptions:
    server: str | None
    admin_key: str | None
    admin_key_file: str | None
    ca_cert: str | None
    insecure: bool
    client_config: str | None
    timeout: float


@app.callback()
def calls_root(
    ctx: typer.Context,
    server: str | None = typer.Option(
        None, "--server", "-s", envvar="CALLSCTL_SERVER",
        help=f"Base URL of callsctl serve's API port. [default: {DEFAULT_SERVER}]"),
    admin_key: str | None = typer.Option(
        None, "--admin-key", envvar="CALLSCTL_ADMIN_KEY",
        help="Admin API key (prefer the env var or a file: flags show in ps)."),
    admin_key_file: str | None = typer.Option(
        None, "--admin-key-file", envvar="CALLSCTL_ADMIN_KEY_FILE",
        help="File holding the admin API key (the server's <data dir>/admin_key)."),
    ca_cert: str | None = typer.Option(
        None, "--ca-cert", envvar="CALLSCTL_CA_CERT",
        help="PEM certificate to trust for https (e.g. the server's self-signed one)."),
    insecure: bool = typer.Option(
        False, "--insecure", "-k", help="Do not verify the server's TLS certificate."),
    client_config: str | None = typer.Option(
        None, "--client-config", envvar="CALLSCTL_CLIENT_CONFIG",
        help="Client config TOML. [default: $XDG_CONFIG_HOME/callsctl/client.toml]"),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the server."),
) -> None:
    """List, inspect and moderate live calls."""
    ctx.obj = ClientOptions(server, admin_key, admin_key_file, ca_cert, insecure,
                            client_config, timeout)


# -- where to connect ----------------------------------------------------------------------------


def connection_for(ctx: typer.Context) -> Connection:
    """The server and key this command talks to (callsctl.adminclient.resolve)."""
    options: ClientOptions = ctx.obj
    with exit_on_error():
        return resolve(options.server, options.admin_key, options.admin_key_file,
                       options.ca_cert, options.insecure, options.client_config,
                       options.timeout)


@contextmanager
def admin_api(ctx: typer.Context) -> Iterator[AdminClient]:
    """The admin client for this command; its failures become one error line."""
    with exit_on_error(), AdminClient(connection_for(ctx)) as client:
        yield client


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# -- formatting ---------------------------------------------------------------------------------


def _age(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, int(time.time() - timestamp))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    if bps >= 1_000_000:
        return f"{bps / 1_000_000:.1f} Mb/s"
    return f"{bps / 1000:.0f} kb/s"


def _num(value: float | None, fmt: str = "{:.0f}", suffix: str = "") -> str:
    return "-" if value is None else fmt.format(value) + suffix


def _flags(session: dict[str, Any]) -> str:
    names = [("muted", "muted"), ("hand", "hand"), ("voice", "speaking"),
             ("screen", "screen"), ("video", "video")]
    return ", ".join(label for key, label in names if session.get(key)) or "-"


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


# -- commands -----------------------------------------------------------------------------------

JSON_OPTION = typer.Option(False, "--json", help="Print the server's JSON answer.")


@app.command("list")
def list_calls(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Live calls: participants, age, host, screen sharer, bitrates."""
    with admin_api(ctx) as api:
        data = api.list_calls()
    if as_json:
        _emit_json(data)
        return
    calls = data.get("calls", [])
    console = _console()
    if not calls:
        console.print("no live calls")
        return
    fleet = any("node" in call for call in calls)  # a fleet node lists every node's calls
    table = _narrow_table(f"{len(calls)} live call(s)",
                          ("call", "participants", "age", "host", "screen", "in", "out",
                           *(("node",) if fleet else ())),
                          numeric=("participants", "in", "out"))
    for call in calls:
        table.add_row(call["id"], str(call["participants"]), _age(call.get("started_at")),
                      call.get("host_user") or "-", call.get("screen_sharer") or "-",
                      _rate(call.get("in_bps")), _rate(call.get("out_bps")),
                      *((call.get("node") or "-",) if fleet else ()))
    console.print(table)


@app.command("show")
def show_call(ctx: typer.Context, call_id: str = typer.Argument(..., metavar="CALL"),
              as_json: bool = JSON_OPTION) -> None:
    """One call: every session with its state, ICE pair, quality and tracks."""
    with admin_api(ctx) as api:
        data = api.show_call(call_id)
    if as_json:
        _emit_json(data)
        return
    render_call(data, _console())


def render_call(data: dict[str, Any], console: Console) -> None:
    """`calls show` as three narrow tables, so it reads in an 80-column terminal.

    Full session ids stay in every table (`calls mute CALL SESSION` needs them);
    the rest is split by what an operator asks: who is there, how each one is
    connected, and what media flows.
    """
    console.print(f"[bold]call {escape(str(data['id']))}[/bold]: {data['participants']} "
                  f"participant(s), host {escape(str(data.get('host') or '-'))}, "
                  f"screen {escape(str(data.get('screen_sharer') or '-'))}")
    console.print(f"started {_when(data.get('started_at'))} ({_age(data.get('started_at'))} "
                  "ago)")
    people = _narrow_table("participants", ("session", "user", "name", "in call", "state"))
    network = _narrow_table("connection (RTT and jitter in ms)",
                            ("session", "ICE", "path", "remote", "RTT", "loss", "jitter"),
                            numeric=("RTT", "loss", "jitter"))
    media = _narrow_table("media (kbps)", ("session", "in", "out", "tracks"),
                          numeric=("in", "out"))
    for s in data.get("sessions", []):
        pair = s.get("candidate_pair")
        host_mark = " (host)" if s["session_id"] == data.get("host") else ""
        loss = s.get("loss")
        tracks = s.get("tracks") or []
        ins = sum(1 for t in tracks if t.get("direction") == "in")
        people.add_row(s["session_id"] + host_mark, s["user"], s["name"],
                       _age(s["joined_at"]), _flags(s))
        network.add_row(s["session_id"], s.get("ice_state") or "-",
                        f"{pair['type']}/{pair['protocol']}" if pair else "-",
                        str(pair.get("remote") or "-") if pair else "-",
                        _num(s.get("rtt_ms"), "{:.1f}"),
                        "-" if loss is None else f"{loss * 100:.1f}%",
                        _num(s.get("jitter_ms"), "{:.1f}"))
        media.add_row(s["session_id"], _kbps(s.get("in_bps")), _kbps(s.get("out_bps")),
                      f"{ins} in / {len(tracks) - ins} out")
    console.print(people)
    console.print(network)
    console.print(media)


def _narrow_table(title: str, columns: tuple[str, ...], numeric: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left",
                         no_wrap=True)
    return table


def _kbps(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / 1000:,.1f}"


def _done(data: dict[str, Any], as_json: bool, message: str) -> None:
    if as_json:
        _emit_json(data)
    else:
        _console().print(message)


SESSION_ARG = typer.Argument(..., metavar="SESSION", help="Session id (see `calls show`).")
CALL_ARG = typer.Argument(..., metavar="CALL", help="Call id.")


@app.command("mute")
def mute(ctx: typer.Context, call_id: str = CALL_ARG, session_id: str = SESSION_ARG,
         as_json: bool = JSON_OPTION) -> None:
    """Mute a participant (the server stops forwarding its audio; its client is told)."""
    with admin_api(ctx) as api:
        data = api.session_action(call_id, session_id, "mute")
    _done(data, as_json, f"muted {session_id}" if data.get("changed")
          else f"{session_id} was already muted")


@app.command("mute-others")
def mute_others(ctx: typer.Context, call_id: str = CALL_ARG,
                session_id: str = typer.Argument(..., metavar="SESSION",
                                                 help="The one session left unmuted."),
                as_json: bool = JSON_OPTION) -> None:
    """Mute everyone in the call except SESSION."""
    with admin_api(ctx) as api:
        data = api.mute_others(call_id, session_id)
    _done(data, as_json, f"muted {len(data.get('muted', []))} participant(s)")


@app.command("stop-screen")
def stop_screen(ctx: typer.Context, call_id: str = CALL_ARG, session_id: str = SESSION_ARG,
                as_json: bool = JSON_OPTION) -> None:
    """Stop a participant's screen share."""
    with admin_api(ctx) as api:
        data = api.session_action(call_id, session_id, "stop-screen")
    _done(data, as_json, f"stopped the screen share of {session_id}" if data.get("changed")
          else f"{session_id} was not sharing a screen")


@app.command("lower-hand")
def lower_hand(ctx: typer.Context, call_id: str = CALL_ARG, session_id: str = SESSION_ARG,
               as_json: bool = JSON_OPTION) -> None:
    """Lower a participant's raised hand."""
    with admin_api(ctx) as api:
        data = api.session_action(call_id, session_id, "lower-hand")
    _done(data, as_json, f"lowered the hand of {session_id}" if data.get("changed")
          else f"{session_id} had no hand raised")


@app.command("remove")
def remove(ctx: typer.Context, call_id: str = CALL_ARG, session_id: str = SESSION_ARG,
           as_json: bool = JSON_OPTION) -> None:
    """Remove a participant from the call."""
    with admin_api(ctx) as api:
        data = api.remove_session(call_id, session_id)
    _done(data, as_json, f"removed {session_id} from {call_id}")


@app.command("end")
def end(ctx: typer.Context, call_id: str = CALL_ARG,
        reason: str = typer.Option("ended by an admin", "--reason",
                                   help="Shown to the participants."),
        as_json: bool = JSON_OPTION) -> None:
    """End the call for everyone."""
    with admin_api(ctx) as api:
        data = api.end_call(call_id, reason)
    _done(data, as_json, f"ended {call_id} ({data.get('removed', 0)} participant(s) removed)")


@app.command("host")
def make_host(ctx: typer.Context, call_id: str = CALL_ARG, session_id: str = SESSION_ARG,
              as_json: bool = JSON_OPTION) -> None:
    """Make SESSION the host of the call."""
    with admin_api(ctx) as api:
        data = api.make_host(call_id, session_id)
    _done(data, as_json, f"{session_id} is now the host of {call_id}")


def _settings_line(data: dict[str, Any]) -> str:
    effective = data.get("effective", {})
    limit = effective.get("max_participants")
    state = "enabled" if effective.get("enabled") else "disabled"
    return (f"{data['call']}: calls {state}, max participants "
            f"{limit if limit else 'unlimited'}"
            f"{'' if data.get('default_enabled', True) else ' (server in test mode)'}")


def _put_settings(ctx: typer.Context, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
    with admin_api(ctx) as api:
        return api.put_call_settings(call_id, body)


@app.command("enable")
def enable(ctx: typer.Context, call_id: str = CALL_ARG,
           max_participants: int | None = typer.Option(
               None, "--max-participants", min=1, help="Also limit this call's size."),
           as_json: bool = JSON_OPTION) -> None:
    """Allow calls in CALL (needed in test mode, --no-default-enabled)."""
    body: dict[str, Any] = {"enabled": True}
    if max_participants is not None:
        body["max_participants"] = max_participants
    data = _put_settings(ctx, call_id, body)
    _done(data, as_json, _settings_line(data))


@app.command("disable")
def disable(ctx: typer.Context, call_id: str = CALL_ARG, as_json: bool = JSON_OPTION) -> None:
    """Refuse new joins in CALL (participants already in it stay)."""
    data = _put_settings(ctx, call_id, {"enabled": False})
    _done(data, as_json, _settings_line(data))


@app.command("settings")
def settings(ctx: typer.Context, call_id: str = CALL_ARG,
             max_participants: int | None = typer.Option(
                 None, "--max-participants", min=1, help="Set this call's size limit."),
             reset: bool = typer.Option(
                 False, "--reset", help="Forget this call's overrides (server defaults apply)."),
             as_json: bool = JSON_OPTION) -> None:
    """Show (or change) CALL's settings: enabled and max participants."""
    if reset:
        data = _put_settings(ctx, call_id, {"enabled": None, "max_participants": None})
    elif max_participants is not None:
        data = _put_settings(ctx, call_id, {"max_participants": max_participants})
    else:
        with admin_api(ctx) as api:
            data = api.call_settings(call_id)
    _done(data, as_json, _settings_line(data))


@app.command("history")
def history(ctx: typer.Context,
            limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000,
                                      help="How many calls, newest first."),
            call_id: str | None = typer.Option(None, "--call", help="Only this call id."),
            as_json: bool = JSON_OPTION) -> None:
    """Past and live calls with who was in them (kept across restarts)."""
    with admin_api(ctx) as api:
        data = api.history(limit, call_id)
    if as_json:
        _emit_json(data)
        return
    if not data.get("calls"):
        _console().print("no calls recorded yet")
        return
    table = Table(title="call history")
    for column in ("call", "started", "ended", "participants", "end reason"):
        table.add_column(column)
    for call in data.get("calls", []):
        people = ", ".join(p["user"] for p in call.get("participants", []))
        table.add_row(call["id"], _when(call.get("started_at")),
                      _when(call.get("ended_at")) if call.get("ended_at") else "live",
                      people or "-", call.get("end_reason") or "-")
    _console().print(table)
