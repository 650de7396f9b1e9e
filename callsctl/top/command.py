"""`callsctl top`: the typer command, where server and key come from, and `--once`.

This module is imported whenever the CLI starts, so it imports nothing heavy:
textual and the TUI are imported inside the command.

Server, admin key and TLS trust are resolved exactly as `callsctl calls` does
(callsctl.adminclient.resolve: flags, CALLSCTL_SERVER / CALLSCTL_ADMIN_KEY /
CALLSCTL_ADMIN_KEY_FILE, the client config, then the default data dir's
admin_key), so an operator configures the admin API once for both. `top`
adds --data-dir: the admin_key file of a server on this host that runs with
a non-default data dir.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import typer

from callsctl.errors import fail

if TYPE_CHECKING:
    from callsctl.adminclient import Connection
    from callsctl.top.client import AdminClient
    from callsctl.top.model import TopState

DEFAULT_HOST = "http://127.0.0.1:8045"


def top(
    host: str | None = typer.Option(
        None, "--host", "--server", metavar="URL", envvar="CALLSCTL_SERVER",
        help=f"Base URL of the server's API port. [default: {DEFAULT_HOST}]"),
    admin_key: str | None = typer.Option(
        None, "--admin-key", metavar="KEY", envvar="CALLSCTL_ADMIN_KEY",
        help="Admin API key (prefer the env var or a file: flags show in ps)."),
    admin_key_file: str | None = typer.Option(
        None, "--admin-key-file", metavar="FILE", envvar="CALLSCTL_ADMIN_KEY_FILE",
        help="File holding the admin API key (the server's <data dir>/admin_key)."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", metavar="DIR",
        help="Data dir of a server on this host: its admin_key file is read. "
             "[default: $XDG_DATA_HOME/callsctl]"),
    ca_cert: str | None = typer.Option(
        None, "--ca-cert", metavar="FILE", envvar="CALLSCTL_CA_CERT",
        help="PEM certificate to trust for https (e.g. the server's self-signed one)."),
    insecure: bool = typer.Option(
        False, "--insecure", "-k", help="Do not verify the server's TLS certificate."),
    client_config: str | None = typer.Option(
        None, "--client-config", metavar="FILE", envvar="CALLSCTL_CLIENT_CONFIG",
        help="Client config TOML. [default: $XDG_CONFIG_HOME/callsctl/client.toml]"),
    refresh: float = typer.Option(
        1.0, "--refresh", min=0.2, max=60.0,
        help="Seconds between updates (with --once: the interval rates are measured over)."),
    read_only: bool = typer.Option(
        False, "--read-only", help="Only watch: no mute, remove, end call or other control."),
    once: bool = typer.Option(
        False, "--once", help="Print one snapshot (server, calls, sessions) and exit."),
    as_json: bool = typer.Option(
        False, "--json", help="With --once: the snapshot as one JSON object (implies --once)."),
) -> None:
    """Live view of calls, sessions and server health, with host controls (a TUI).

    Shows the server process's CPU and memory, the host's load, media rates
    and UDP receive-buffer drops (per second, and since the server started),
    every call, and each participant's connection and quality; Enter drills down, Esc goes back,
    ? lists the keys. Mute, lower hand, stop screen share, remove, make host
    and end call each ask first; --read-only turns them off. Without a
    terminal, --once --json prints the same data for scripts.
    """
    conn = resolve_connection(host, admin_key, admin_key_file, data_dir, ca_cert, insecure,
                              client_config, timeout=max(2.0, min(refresh * 3, 10.0)))
    from callsctl.top.client import AdminClient

    client = AdminClient(conn)
    if once or as_json:
        snapshot = asyncio.run(_snapshot(client, refresh))
        if as_json:
            typer.echo(json.dumps(snapshot, indent=2, default=str))
        else:
            print_snapshot(snapshot)
        return
    # textual draws on stderr and reads stdin; both must be the terminal.
    if not sys.stdin.isatty() or not sys.__stderr__ or not sys.__stderr__.isatty():
        fail("callsctl top needs a terminal; use --once or --once --json for scripts")
    from callsctl.top.app import TopApp

    TopApp(client, refresh=refresh, read_only=read_only).run()


def normalize_url(value: str) -> str:
    """'host:port' → 'http://host:port'; only http(s) makes sense for the admin API."""
    from callsctl.adminclient import exit_on_error, normalize_server

    with exit_on_error():
        return normalize_server(value, "--host")


def resolve_connection(host: str | None, admin_key: str | None, admin_key_file: str | None,
                       data_dir: str | None, ca_cert: str | None, insecure: bool,
                       client_config: str | None, timeout: float) -> Connection:
    """Server, key and TLS trust, the way `callsctl calls` finds them (see module doc)."""
    from callsctl.adminclient import exit_on_error, resolve

    with exit_on_error():
        return resolve(host, admin_key, admin_key_file, ca_cert, insecure, client_config,
                       timeout, data_dir=data_dir, server_flag="--host")


# -- --once ------------------------------------------------------------------------------


async def _snapshot(client: AdminClient, interval: float) -> dict[str, Any]:
    """Two overviews `interval` apart (for rates), then the detail of every call."""
    from callsctl.top.client import AdminError
    from callsctl.top.model import TopState

    state = TopState()
    try:
        state.apply_overview(await client.overview(), time.time())
        await asyncio.sleep(interval)
        state.apply_overview(await client.overview(), time.time())
        ids = [str(c.get("id")) for c in state.calls]
        details = await asyncio.gather(*(client.call_detail(i) for i in ids))
    except AdminError as exc:
        fail(exc.message)
    finally:
        await client.aclose()
    for call_id, detail in zip(ids, details, strict=True):
        state.apply_detail(call_id, detail)
    return snapshot_json(state, client.base_url)


def snapshot_json(state: TopState, base_url: str) -> dict[str, Any]:
    """The --once --json object: what the TUI shows, as numbers a script can use."""
    overview = state.overview
    assert overview is not None
    rates = state.rates
    calls = []
    for call in state.calls:
        detail = state.details.get(str(call.get("id")))
        calls.append({**call, "sessions": (detail or {}).get("sessions", [])})
    return {
        "host": base_url,
        "time": (state.updated_at or 0.0) + state.clock_offset,  # the server's clock
        "server": {
            "version": (overview.version or {}).get("version"),
            "node": (overview.version or {}).get("node"),
            "forwarding_engine": ((overview.version or {}).get("forwarding_engine")
                                  or {}).get("engine"),
            "uptime_s": (overview.system or {}).get("uptime_s"),
            # The server process's CPU in cores (1.0 = one core busy), over --refresh.
            "process_cpu": _round(rates.cpu, 3),
            "process_rss_bytes": (overview.system or {}).get("process_rss_bytes"),
            # The whole machine's 1-minute load average per core.
            "cpu_load": (overview.system or {}).get("cpu_load"),
            "memory_bytes": (overview.system or {}).get("memory_bytes"),
            "memory_total": (overview.system or {}).get("memory_total"),
            "calls": (overview.system or {}).get("calls", len(state.calls)),
            "sessions": (overview.system or {}).get("sessions"),
            "in_pps": _round(rates.in_pps), "out_pps": _round(rates.out_pps),
            "in_bps": _round(rates.in_bps), "out_bps": _round(rates.out_bps),
            "udp_rcvbuf_errors": _int(overview.host_rcvbuf_errors()),  # host, since boot
            "udp_rcvbuf_errors_since_start": _int(overview.rcvbuf_errors_since_start()),
            "udp_rcvbuf_errors_per_s": _round(rates.rcvbuf_errors_per_s),
            # Audio skipped as stale (media_late_drop_ms): the server is short of CPU.
            "late_audio_per_s": _round(rates.late_per_s),
            # How long media waited in the server's socket, 99th percentile over --refresh.
            "media_queue_p99_ms": _round(rates.queue_p99_ms, 2),
        },
        "calls": calls,
        # The fleet's nodes when this server is one of a fleet (serve --cluster), else null.
        "nodes": overview.nodes,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def snapshot_lines(snapshot: dict[str, Any]) -> list[str]:
    """The server's state in four lines of at most 80 columns (as the TUI's panel)."""
    from rich.markup import escape

    from callsctl.top import view

    server = snapshot["server"]
    cpu, load = server.get("process_cpu"), server.get("cpu_load")
    since = server.get("udp_rcvbuf_errors_since_start")
    per_s = server.get("udp_rcvbuf_errors_per_s")
    drops = f"UDP drops {view.NONE if per_s is None else f'{per_s:,.0f}/s'}"
    if since is not None:
        drops += f", {since:,} since start"
    elif server.get("udp_rcvbuf_errors") is not None:
        drops += f", {server['udp_rcvbuf_errors']:,} since boot"
    if per_s:
        drops += ": run `callsctl tune`"
    late = server.get("late_audio_per_s")
    if late:  # the server skips stale audio: it is short of CPU (media_late_drop_ms)
        drops = f"late {late:,.0f}/s  " + drops
    queued = server.get("media_queue_p99_ms")
    if queued is not None and queued >= view.QUEUE_P99_WARN_MS:  # its reader falls behind
        drops = f"queue p99 {queued:,.0f} ms  " + drops
    return [
        f"[bold]{escape(str(snapshot['host']))}[/]  callsctl {server.get('version') or '?'}  "
        f"up {view.fmt_duration(server.get('uptime_s'))}  calls {server.get('calls')}  "
        f"sessions {server.get('sessions')}",
        f"server CPU {view.NONE if cpu is None else f'{cpu * 100:.0f}%'}  "
        f"RSS {view.fmt_bytes(server.get('process_rss_bytes'))}  "
        f"host load {view.NONE if load is None else f'{load:.2f}'}/core  "
        f"mem {view.fmt_bytes(server.get('memory_bytes'))}/"
        f"{view.fmt_bytes(server.get('memory_total'))}",
        f"in {view.fmt_bps(server.get('in_bps'))} {view.fmt_rate(server.get('in_pps'), 'pkt/s')}"
        f"  out {view.fmt_bps(server.get('out_bps'))} "
        f"{view.fmt_rate(server.get('out_pps'), 'pkt/s')}",
        drops,
    ]


def print_snapshot(snapshot: dict[str, Any]) -> None:
    """--once without --json: the server line, then each call and its sessions as tables."""
    from rich.console import Console
    from rich.table import Table

    from callsctl.top import view

    # Piped output gets room for the session table instead of rich's 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    for line in snapshot_lines(snapshot):
        console.print(line, highlight=False)
    now = snapshot.get("time") or time.time()
    calls = Table(title="calls", title_justify="left")
    for spec in view.CALL_COLUMNS:
        calls.add_column(spec.label, justify="right" if spec.numeric else "left")
    details = {str(call.get("id")): call for call in snapshot["calls"]}  # names the sharer
    for row in view.call_rows(snapshot["calls"], now, details):
        calls.add_row(*row.cells)
    console.print(calls)
    for call in snapshot["calls"]:
        sessions = Table(title=f"call {call.get('id')} (in/out: kbps)", title_justify="left")
        for spec in view.SESSION_COLUMNS:
            sessions.add_column(spec.label, justify="right" if spec.numeric else "left")
        for row in view.session_rows(call):
            sessions.add_row(*row.cells)
        console.print(sessions)
