"""`callsctl tune`: show, apply, persist and revert the kernel UDP buffer settings.

The engine (`callsctl_sfu.tuning`) owns the settings list and every safety rule
(never lower, all or none, exact revert); this module only gathers evidence,
asks for confirmation and prints, so the rules hold for any other caller too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from callsctl.errors import EXIT_USAGE, fail
from callsctl_sfu import tuning
from callsctl_sfu.config import default_data_dir
from callsctl_sfu.tuning import (
    DEFAULT_PROC_ROOT,
    DEFAULT_SYSCTL_D,
    DEFAULT_SYSCTL_ROOT,
    DEFAULT_UDP_BUFFER_SIZE,
    Change,
    SettingStatus,
    TuneError,
    format_bytes,
)

DEFAULT_SERVER = "http://127.0.0.1:8045"
SERVER_TIMEOUT = 1.0
_STATUS_STYLE = {"OK": "bold green", "LOW": "bold yellow", "MISSING": "bold red"}


def tune(
    apply_: bool = typer.Option(
        False, "--apply", help="Raise LOW settings to the recommendation now (needs root)."
    ),
    persist: bool = typer.Option(
        False,
        "--persist",
        help=f"Write {tuning.persist_path(DEFAULT_SYSCTL_D)} so the values survive reboot.",
    ),
    revert: bool = typer.Option(
        False,
        "--revert",
        help="Restore the values saved by --apply and remove the --persist file.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Only print what would change (alone: what --apply would do)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print the report or result as JSON."),
    data_dir: str | None = typer.Option(
        None,
        "--data-dir",
        help="Where --apply saves the previous values for --revert "
        "(default: $XDG_DATA_HOME/callsctl).",
    ),
    server: str = typer.Option(
        DEFAULT_SERVER,
        "--server",
        help="URL of a running `callsctl serve`, asked which socket buffer it got.",
    ),
    sysctl_root: Path = typer.Option(DEFAULT_SYSCTL_ROOT, "--sysctl-root", hidden=True),
    proc_root: Path = typer.Option(DEFAULT_PROC_ROOT, "--proc-root", hidden=True),
    sysctl_d: Path = typer.Option(DEFAULT_SYSCTL_D, "--sysctl-d", hidden=True),
) -> None:
    """Show and set the kernel UDP buffer limits a busy SFU needs.

    Without flags: each setting's current and recommended value (OK/LOW), and
    the evidence that matters: UDP buffer errors and per-socket drops, the
    open-files limit, and whether a running serve got the buffer it asked for.
    --apply raises LOW values (never lowers one) and saves the old ones;
    --persist makes them survive reboot; --revert undoes both exactly.
    """
    if revert and (apply_ or persist):
        fail("--revert cannot be combined with --apply or --persist", EXIT_USAGE)
    directory = Path(data_dir or default_data_dir()).expanduser()
    # A TuneError is one line and exit 1, from app.main.
    if revert:
        _run_revert(directory, sysctl_root, sysctl_d, dry_run, yes, as_json)
    elif apply_ or persist or dry_run:
        _run_apply(apply_ or not persist, persist, directory, sysctl_root, sysctl_d,
                   dry_run, yes, as_json)
    else:
        _run_show(directory, sysctl_root, proc_root, sysctl_d, server, as_json)


# --------------------------------------------------------------------------- show


def _run_show(data_dir: Path, sysctl_root: Path, proc_root: Path, sysctl_d: Path,
              server: str, as_json: bool) -> None:
    statuses = tuning.read_settings(sysctl_root)
    report = {
        "ok": all(st.status == "OK" for st in statuses),
        "settings": [st.to_json() for st in statuses],
        "evidence": _evidence(proc_root, server),
        "persist_file": {"path": str(tuning.persist_path(sysctl_d)),
                         "exists": tuning.persist_path(sysctl_d).exists()},
        "saved_values": _saved_values(data_dir),
    }
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    console = Console()
    table = Table(title="Kernel UDP buffer settings")
    table.add_column("setting", no_wrap=True)
    table.add_column("current", justify="right")
    table.add_column("recommended", justify="right")
    table.add_column("status", no_wrap=True)
    for st in statuses:
        current = "missing" if st.current is None else _size(st.current)
        table.add_row(st.setting.name, current, _size(st.setting.recommended),
                      f"[{_STATUS_STYLE[st.status]}]{st.status}[/]")
    console.print(table)
    for st in statuses:
        console.print(f"[dim]{st.setting.name}:[/] {escape(st.setting.reason)}")
    console.print()
    console.print(_evidence_table(report))
    for line in _advice(statuses, report):
        console.print(line)


def _saved_values(data_dir: Path) -> dict[str, Any]:
    path = tuning.state_path(data_dir)
    try:
        state = tuning.load_state(data_dir)
    except TuneError as exc:
        return {"path": str(path), "exists": path.exists(), "error": exc.message}
    return {"path": str(path), "exists": state is not None, "settings": state or {}}


def _evidence(proc_root: Path, server: str) -> dict[str, Any]:
    sockets = tuning.read_udp_sockets(proc_root)
    soft, hard = tuning.nofile_limit()
    try:
        rcv, snd = tuning.probe_udp_buffer(DEFAULT_UDP_BUFFER_SIZE)
        probe: dict[str, Any] = {
            "requested_bytes": DEFAULT_UDP_BUFFER_SIZE,
            "rcvbuf_bytes": rcv,
            "sndbuf_bytes": snd,
            "capped": tuning.kernel_caps_udp_buffer(DEFAULT_UDP_BUFFER_SIZE, rcv)
            or tuning.kernel_caps_udp_buffer(DEFAULT_UDP_BUFFER_SIZE, snd),
        }
    except OSError as exc:
        probe = {"error": str(exc)}
    return {
        "snmp": tuning.read_snmp_udp(proc_root),
        "socket_drops": {
            "total": sum(s.drops for s in sockets),
            "sockets": [s.to_json() for s in sockets if s.drops],
        },
        "nofile": {"soft": soft, "hard": hard, "recommended_min": tuning.NOFILE_RECOMMENDED_MIN,
                   "low": 0 <= soft < tuning.NOFILE_RECOMMENDED_MIN},
        "new_socket": probe,
        "server": _ask_server(server),
    }


def _ask_server(server: str) -> dict[str, Any]:
    """What a running serve says its media socket got; absence is evidence, not an error."""
    url = server.rstrip("/") + "/version"
    result: dict[str, Any] = {"url": url, "reachable": False}
    import httpx  # here, not at the top: `callsctl serve` registers this command too

    try:
        response = httpx.get(url, timeout=SERVER_TIMEOUT)
        response.raise_for_status()
        body = response.json()
    except httpx.HTTPStatusError as exc:
        result["note"] = f"{url} answered HTTP {exc.response.status_code}"
        return result
    except (httpx.HTTPError, ValueError):
        result["note"] = f"no server answered at {url} within {SERVER_TIMEOUT:g} s"
        return result
    result["reachable"] = True
    sock = body.get("udp_socket") if isinstance(body, dict) else None
    needed = ("requested_bytes", "rcvbuf_bytes", "sndbuf_bytes")
    if not isinstance(sock, dict) or not all(isinstance(sock.get(k), int) for k in needed):
        result["note"] = "the server did not report its media socket buffer (older version?)"
        return result
    requested = sock["requested_bytes"]
    result.update({k: sock[k] for k in needed})
    result["rcvbuf_capped"] = tuning.kernel_caps_udp_buffer(requested, sock["rcvbuf_bytes"])
    result["sndbuf_capped"] = tuning.kernel_caps_udp_buffer(requested, sock["sndbuf_bytes"])
    return result


def _evidence_table(report: dict[str, Any]) -> Table:
    ev = report["evidence"]
    table = Table(title="Evidence")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_column("what it means", overflow="fold")
    for family, label in (("udp", "UDP (IPv4)"), ("udp6", "UDP (IPv6)")):
        counters = ev["snmp"].get(family)
        if counters:
            value = ", ".join(f"{k} {v}" for k, v in counters.items())
            bad = counters.get("RcvbufErrors", 0) or counters.get("SndbufErrors", 0)
            table.add_row(f"{label} errors since boot", _flag(value, bool(bad)),
                          "RcvbufErrors/SndbufErrors: datagrams dropped because a socket "
                          "buffer was full; rising during calls means the buffers are too "
                          "small")
    drops = ev["socket_drops"]
    listed = ", ".join(f"{s['local']} {s['drops']}" for s in drops["sockets"][:5])
    table.add_row("UDP socket drops now", _flag(f"{drops['total']}"
                                                 + (f" ({listed})" if listed else ""),
                                                 bool(drops["total"])),
                  "per-socket drops of open sockets (/proc/net/udp, udp6); the media port "
                  "(8443) should stay at 0")
    nofile = ev["nofile"]
    soft = "unlimited" if nofile["soft"] < 0 else str(nofile["soft"])
    hard = "unlimited" if nofile["hard"] < 0 else str(nofile["hard"])
    table.add_row("open-files limit (this shell)", _flag(f"soft {soft} / hard {hard}",
                                                          nofile["low"]),
                  f"each participant holds a signaling connection; below "
                  f"{nofile['recommended_min']} a busy server runs out (a systemd unit sets "
                  "its own LimitNOFILE)")
    probe = ev["new_socket"]
    if "error" in probe:
        table.add_row(f"new socket asking for {format_bytes(DEFAULT_UDP_BUFFER_SIZE)}",
                      escape(probe["error"]), "")
    else:
        table.add_row(
            f"new socket asking for {_size(probe['requested_bytes'])}",
            _flag(f"receive {_size(tuning.effective_buffer(probe['rcvbuf_bytes']))}, "
                  f"send {_size(tuning.effective_buffer(probe['sndbuf_bytes']))}",
                  probe["capped"]),
            "what `serve` would get if started now (capped by rmem_max/wmem_max)",
        )
    srv = ev["server"]
    if "rcvbuf_bytes" in srv:
        capped = srv["rcvbuf_capped"] or srv["sndbuf_capped"]
        table.add_row(
            "running serve media socket",
            _flag(f"asked {_size(srv['requested_bytes'])}, got receive "
                  f"{_size(tuning.effective_buffer(srv['rcvbuf_bytes']))}, send "
                  f"{_size(tuning.effective_buffer(srv['sndbuf_bytes']))}", capped),
            "capped by the kernel: run `callsctl tune --apply`, then restart serve"
            if capped else "the server got the buffer it asked for",
        )
    else:
        table.add_row("running serve media socket", escape(srv.get("note", "")), "")
    persist = report["persist_file"]
    table.add_row("boot-time file", escape(persist["path"]) + (" present" if persist["exists"]
                                                               else " absent"),
                  "settings survive reboot" if persist["exists"]
                  else "values set now are lost at reboot (use --persist)")
    saved = report["saved_values"]
    table.add_row("saved previous values", escape(saved["path"]) + (
        " present" if saved["exists"] else " absent"),
        escape(saved.get("error", "")) or ("`callsctl tune --revert` restores them"
                                           if saved["exists"] else "nothing to revert"))
    return table


def _advice(statuses: list[SettingStatus], report: dict[str, Any]) -> list[str]:
    lines = []
    if any(st.status == "MISSING" for st in statuses):
        lines.append("[bold red]Some settings are not visible here[/] (a container with its "
                     "own network namespace?): set them on the host.")
    if any(st.status == "LOW" for st in statuses):
        lines.append("To raise the LOW values now: [bold]sudo callsctl tune --apply[/] "
                     "(add --persist to keep them after reboot).")
    elif report["ok"] and not report["persist_file"]["exists"]:
        lines.append("All settings are OK; to keep them after reboot: "
                     "[bold]sudo callsctl tune --persist[/].")
    return lines


def _flag(text: str, bad: bool) -> str:
    return f"[bold yellow]{escape(text)}[/]" if bad else escape(text)


def _size(value: int) -> str:
    return f"{value} ({format_bytes(value)})" if value >= 1024 else str(value)


# --------------------------------------------------------------------------- apply / persist


def _run_apply(do_apply: bool, persist: bool, data_dir: Path, sysctl_root: Path,
               sysctl_d: Path, dry_run: bool, yes: bool, as_json: bool) -> None:
    statuses = tuning.read_settings(sysctl_root)
    changes = tuning.plan_apply(statuses) if do_apply else []
    kept = [st for st in statuses
            if st.current is not None and st.current > st.setting.recommended]
    notes: list[str] = []
    missing = tuning.missing_settings(statuses) if do_apply else []
    for name in missing:
        message = tuning.missing_message(tuning.sysctl_path(sysctl_root, name), name)
        if not dry_run:
            raise TuneError(message)
        notes.append(message)
    persist_file = tuning.persist_path(sysctl_d)
    persist_text = tuning.render_persist(tuning.persist_values(statuses)) if persist else None
    persist_needed = persist and tuning.read_persist(sysctl_d) != persist_text
    result: dict[str, Any] = {
        "action": "apply" if do_apply else "persist",
        "dry_run": dry_run,
        "changes": [c.to_json() for c in changes],
        "kept_higher": [st.to_json() for st in kept],
        "persist": {"path": str(persist_file), "requested": persist, "write": persist_needed,
                    "values": tuning.persist_values(statuses) if persist else {}},
        "state_file": str(tuning.state_path(data_dir)) if changes else None,
        "notes": notes,
        "done": False,
    }
    human = not as_json
    console = Console(stderr=as_json)
    if human:
        _print_plan(console, changes, kept, persist_file if persist_needed else None,
                    persist_text, persist and not persist_needed)
    if not changes and not persist_needed:
        if human:
            console.print("Nothing to change.")
        _finish(result, as_json)
        return
    try:
        if changes:
            tuning.preflight_write(sysctl_root, [c.name for c in changes])
        if persist_needed:
            tuning.preflight_persist(sysctl_d)
    except TuneError as exc:
        if not dry_run:
            raise
        notes.append(f"doing it now would fail: {exc.message}")
    if dry_run:
        if human:
            for note in notes:
                console.print(f"[yellow]note:[/] {escape(note)}")
            console.print("Dry run: nothing changed.")
        _finish(result, as_json)
        return
    _confirm(yes, "Apply these changes" if changes else f"Write {persist_file}")
    outcome = tuning.apply(changes, data_dir, sysctl_root,
                           persist_text if persist_needed else None, sysctl_d)
    result["done"] = True
    if human:
        if changes:
            console.print(f"Applied {len(changes)} setting(s). Previous values saved in "
                          f"{escape(str(outcome.state_file))}; `callsctl tune --revert` "
                          "restores them.")
            console.print("Restart `callsctl serve` so its media socket gets the larger "
                          "buffers (open sockets keep theirs).")
            if not persist:
                console.print("These last until reboot; add --persist to keep them.")
        if outcome.persist_written:
            console.print(f"Wrote {escape(str(persist_file))}: applied at every boot.")
            if not do_apply and any(st.status == "LOW" for st in statuses):
                console.print("The running kernel still has the LOW values; add --apply to "
                              "raise them now.")
    _finish(result, as_json)


def _print_plan(console: Console, changes: list[Change], kept: list[SettingStatus],
                persist_file: Path | None, persist_text: str | None,
                persist_current: bool) -> None:
    for change in changes:
        console.print(f"{change.name}: {_size(change.current)} -> {_size(change.target)}")
    for st in kept:
        console.print(f"{st.setting.name}: {_size(st.current or 0)} is already above "
                      f"{_size(st.setting.recommended)}; left as is (never lowered)")
    if persist_file is not None and persist_text is not None:
        values = tuning.parse_sysctl_conf(persist_text)
        console.print(f"write {escape(str(persist_file))}: "
                      + ", ".join(f"{k} = {v}" for k, v in values.items()))
    elif persist_current:
        console.print("boot-time file is already up to date.")


def _confirm(yes: bool, question: str) -> None:
    """Ask before touching the kernel; never wait on a stdin nobody can answer."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail("refusing to change kernel settings without confirmation: stdin is not a "
             "terminal; pass --yes (or --dry-run to only look)")
    if not typer.confirm(f"{question}?", default=False, err=True):
        fail("aborted; nothing was changed")


def _finish(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


# --------------------------------------------------------------------------- revert


def _run_revert(data_dir: Path, sysctl_root: Path, sysctl_d: Path, dry_run: bool, yes: bool,
                as_json: bool) -> None:
    plan = tuning.plan_revert(data_dir, sysctl_root, sysctl_d)
    persist_file = tuning.persist_path(sysctl_d)
    result: dict[str, Any] = {
        "action": "revert",
        "dry_run": dry_run,
        "changes": [c.to_json() for c in plan.changes],
        "already_previous": plan.unchanged,
        "skipped": plan.skipped,
        "remove_persist": str(persist_file) if plan.persist_exists else None,
        "state_file": str(tuning.state_path(data_dir)),
        "notes": [],
        "done": False,
    }
    human = not as_json
    console = Console(stderr=as_json)
    if plan.empty:
        if human:
            console.print(f"Nothing to revert: no saved values in "
                          f"{escape(str(tuning.state_path(data_dir)))} and no "
                          f"{escape(str(persist_file))}.")
        _finish(result, as_json)
        return
    if human:
        for change in plan.changes:
            console.print(f"{change.name}: {_size(change.current)} -> {_size(change.target)} "
                          "(saved value)")
        for name in plan.unchanged:
            console.print(f"{name}: already at its saved value")
        for item in plan.skipped:
            console.print(f"{item['name']}: now {item['current']}, not the {item['applied']} "
                          "callsctl wrote; changed by something else since, left alone")
        if plan.persist_exists:
            console.print(f"remove {escape(str(persist_file))}")
    touches = bool(plan.changes) or plan.persist_exists
    try:
        if plan.changes:
            tuning.preflight_write(sysctl_root, [c.name for c in plan.changes])
        if plan.persist_exists:
            tuning.preflight_persist(sysctl_d)
    except TuneError as exc:
        if not dry_run:
            raise
        result["notes"].append(f"doing it now would fail: {exc.message}")
    if dry_run:
        if human:
            for note in result["notes"]:
                console.print(f"[yellow]note:[/] {escape(note)}")
            console.print("Dry run: nothing changed.")
        _finish(result, as_json)
        return
    if touches:
        _confirm(yes, "Revert these changes")
    tuning.revert(plan, data_dir, sysctl_root, sysctl_d)
    result["done"] = True
    if human:
        console.print("Reverted." if touches else "Removed the saved record; nothing else "
                      "to change.")
    _finish(result, as_json)
