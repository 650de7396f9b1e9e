"""From API data to what the tables show: text, colours, and the values rows sort by.

Kept apart from the widgets so the thresholds and formats (what counts as a bad
RTT, how a bitrate reads) are tested as plain functions, and `--once` prints
exactly what the TUI shows. Sorting uses the raw numbers, never the formatted
text, so "9.5 kbps" sorts below "12 kbps".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text

# Highlight thresholds: (warn, bad). Chosen from what makes a voice call audibly
# worse (ITU-T G.114: one-way delay past 150 ms is noticed, so RTT 300 ms; Opus
# conceals ~1-2 % loss, past 5 % speech breaks up; jitter buffers cope with ~30 ms).
RTT_MS = (150.0, 300.0)
LOSS = (0.02, 0.05)
JITTER_MS = (30.0, 50.0)
CPU_LOAD = (0.7, 0.9)
BAD_ICE = {"failed", "disconnected", "closed"}
PENDING_ICE = {"new", "checking"}

WARN_STYLE = "yellow"
BAD_STYLE = "bold red"
DIM_STYLE = "dim"
NONE = "–"
# Media waiting this long in the server's socket (p99 over a refresh) is named on the UDP
# line: a 20 ms audio frame's worth, where the reading thread has fallen behind.
QUEUE_P99_WARN_MS = 20.0


@dataclass(frozen=True)
class ColumnSpec:
    """One table column: its key, header, and whether it holds numbers (right-aligned)."""

    key: str
    label: str
    numeric: bool = False


@dataclass
class TableRow:
    """One row: a stable key (call or session id), the cells, and raw values to sort by."""

    key: str
    cells: tuple[Text, ...]
    sort: dict[str, Any]

    def plain(self) -> str:
        return " ".join(cell.plain for cell in self.cells)


# -- formats ------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return NONE
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def fmt_bps(bps: float | None) -> str:
    if bps is None:
        return NONE
    for unit, scale in (("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} bps"


def fmt_kbps(bps: float | None) -> str:
    return NONE if bps is None else f"{bps / 1000:.1f}"


def fmt_rate(value: float | None, unit: str) -> str:
    return NONE if value is None else f"{value:,.0f} {unit}"


def fmt_bytes(count: float | None) -> str:
    if count is None:
        return NONE
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def fmt_ms(value: float | None) -> str:
    return NONE if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def fmt_loss(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f}%"


def level(value: float | None, limits: tuple[float, float]) -> str:
    """The style for a value against (warn, bad) limits: '' when fine or unknown."""
    if value is None:
        return ""
    warn, bad = limits
    return BAD_STYLE if value >= bad else WARN_STYLE if value >= warn else ""


def ice_style(state: str | None) -> str:
    if state in BAD_ICE:
        return BAD_STYLE
    if state in PENDING_ICE:
        return WARN_STYLE
    return ""


def short_id(value: str | None, width: int = 8) -> str:
    if not value:
        return NONE
    return value if len(value) <= width else value[:width]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _cell(text: str, style: str = "", numeric: bool = False) -> Text:
    return Text(text, style=style or "", justify="right" if numeric else "left",
                no_wrap=True)


# -- calls ----------------------------------------------------------------------------------

CALL_COLUMNS = (
    ColumnSpec("id", "call"), ColumnSpec("participants", "participants", numeric=True),
    ColumnSpec("duration", "duration", numeric=True), ColumnSpec("host", "host"),
    ColumnSpec("screen", "screen share"), ColumnSpec("bitrate", "bitrate", numeric=True),
)


def call_total_bps(call: dict[str, Any]) -> float | None:
    values = [v for v in (_num(call.get("in_bps")), _num(call.get("out_bps"))) if v is not None]
    return sum(values) if values else None


def call_rows(calls: list[dict[str, Any]], now: float,
              details: dict[str, dict[str, Any] | None] | None = None) -> list[TableRow]:
    """Rows of the calls table; a known call detail names the screen sharer's user."""
    rows = []
    for call in calls:
        call_id = str(call.get("id", ""))
        started = _num(call.get("started_at"))
        duration = now - started if started is not None else None
        host_user = call.get("host_user") or short_id(call.get("host"))
        sharer = call.get("screen_sharer")
        screen = ""
        if sharer:
            detail = (details or {}).get(call_id) or {}
            who = next((s.get("user") for s in detail.get("sessions") or []
                        if s.get("session_id") == sharer), None)
            screen = who or "yes"  # the list names the session; its user needs the detail
        total = call_total_bps(call)
        participants = _num(call.get("participants"))
        name = _cell(call_id, "bold")
        if call.get("recording"):  # a recording job is in the call (callsctl record)
            name.append(" ●rec", style="bold red")
        rows.append(TableRow(
            key=call_id,
            cells=(name,
                   _cell(NONE if participants is None else f"{participants:.0f}", numeric=True),
                   _cell(fmt_duration(duration), numeric=True), _cell(str(host_user)),
                   _cell(screen, "magenta" if screen else ""),
                   _cell(fmt_bps(total), numeric=True)),
            sort={"id": call_id, "participants": participants, "duration": duration,
                  "host": str(host_user), "screen": screen, "bitrate": total}))
    return rows


# -- sessions -------------------------------------------------------------------------------

# Eight narrow columns so a call stays readable in an 80-column terminal: the ICE
# column shows the candidate pair once connected (how media flows) and the ICE
# state otherwise (why it does not); rates are kbps (the caption says so).
SESSION_COLUMNS = (
    ColumnSpec("user", "user"), ColumnSpec("state", "state"), ColumnSpec("ice", "ICE"),
    ColumnSpec("rtt", "RTT", numeric=True), ColumnSpec("loss", "loss", numeric=True),
    ColumnSpec("jitter", "jitter", numeric=True), ColumnSpec("in", "in", numeric=True),
    ColumnSpec("out", "out", numeric=True),
)
CONNECTED_ICE = {"connected", "completed"}


def connection_text(session: dict[str, Any]) -> tuple[str, str]:
    """('srflx/udp', style) once ICE is up, else the ICE state ('checking', 'failed')."""
    ice = session.get("ice_state")
    pair = session.get("candidate_pair")
    if ice in CONNECTED_ICE and isinstance(pair, dict):
        return candidate_text(pair)
    return str(ice or NONE), ice_style(ice)

STATE_STYLES = (("muted", DIM_STYLE), ("voice", "bold green"), ("hand", "bold yellow"),
                ("screen", "magenta"), ("video", "cyan"))
STATE_WORDS = {"muted": "muted", "voice": "speaking", "hand": "hand", "screen": "screen",
               "video": "video"}


def session_state(session: dict[str, Any]) -> Text:
    """The participant's visible state as words, e.g. 'speaking hand video'."""
    text = Text(no_wrap=True)
    for name, style in STATE_STYLES:
        if session.get(name) is True:
            if text:
                text.append(" ")
            text.append(STATE_WORDS[name], style=style)
    if not text:
        text.append("unmuted", style=DIM_STYLE)
    return text


def candidate_text(pair: Any) -> tuple[str, str]:
    """('host/udp', style): relayed or TCP media works but costs latency, so it is flagged."""
    if not isinstance(pair, dict):
        return NONE, ""
    kind = str(pair.get("type") or "?")
    protocol = str(pair.get("protocol") or "?")
    style = WARN_STYLE if kind == "relay" or protocol == "tcp" else ""
    return f"{kind}/{protocol}", style


def who(session: dict[str, Any]) -> str:
    """How an operator recognises a session: user, plus the display name if it differs."""
    user = str(session.get("user") or short_id(session.get("session_id")))
    name = session.get("name")
    return f"{user} ({name})" if name and name != user else user


def session_rows(detail: dict[str, Any] | None) -> list[TableRow]:
    rows: list[TableRow] = []
    if not detail:
        return rows
    host = detail.get("host")
    for session in detail.get("sessions") or []:
        sid = str(session.get("session_id", ""))
        rtt, loss = _num(session.get("rtt_ms")), _num(session.get("loss"))
        jitter = _num(session.get("jitter_ms"))
        in_bps, out_bps = _num(session.get("in_bps")), _num(session.get("out_bps"))
        connection, connection_style = connection_text(session)
        label = who(session)
        user_cell = Text(no_wrap=True)
        user_cell.append("★ " if sid == host else "  ", style="bold yellow")
        user_cell.append(label)
        state = session_state(session)
        rows.append(TableRow(
            key=sid,
            cells=(user_cell, state, _cell(connection, connection_style),
                   _cell(fmt_ms(rtt), level(rtt, RTT_MS), numeric=True),
                   _cell(fmt_loss(loss), level(loss, LOSS), numeric=True),
                   _cell(fmt_ms(jitter), level(jitter, JITTER_MS), numeric=True),
                   _cell(fmt_kbps(in_bps), numeric=True), _cell(fmt_kbps(out_bps), numeric=True)),
            sort={"user": label.casefold(), "state": state.plain, "ice": connection,
                  "rtt": rtt, "loss": loss, "jitter": jitter,
                  "in": in_bps, "out": out_bps}))
    return rows


TRACK_COLUMNS = (
    ColumnSpec("kind", "kind"), ColumnSpec("label", "label"),
    ColumnSpec("direction", "direction"), ColumnSpec("ssrc", "SSRC", numeric=True),
    ColumnSpec("packets", "packets", numeric=True), ColumnSpec("nacks", "NACKs", numeric=True),
    ColumnSpec("plis", "PLIs", numeric=True), ColumnSpec("from", "from"),
)


def track_rows(session: dict[str, Any] | None,
               name_of: Callable[[str], str] | None = None) -> list[TableRow]:
    rows: list[TableRow] = []
    for index, track in enumerate((session or {}).get("tracks") or []):
        ssrc, packets = _num(track.get("ssrc")), _num(track.get("packets"))
        nacks, plis = _num(track.get("nacks")), _num(track.get("plis"))
        source = track.get("from")
        source_text = (name_of(source) if name_of and source else source) or ""
        direction = str(track.get("direction") or "")
        rows.append(TableRow(
            key=f"{direction}-{track.get('ssrc')}-{index}",
            cells=(_cell(str(track.get("kind") or NONE)), _cell(str(track.get("label") or "")),
                   _cell({"in": "in (published)", "out": "out (received)"}.get(direction,
                                                                              direction)),
                   _cell(NONE if ssrc is None else f"{ssrc:.0f}", numeric=True),
                   _cell(NONE if packets is None else f"{packets:,.0f}", numeric=True),
                   _cell(NONE if nacks is None else f"{nacks:,.0f}",
                         WARN_STYLE if nacks else "", numeric=True),
                   _cell(NONE if plis is None else f"{plis:,.0f}", numeric=True),
                   _cell(str(source_text))),
            sort={"kind": str(track.get("kind") or ""), "label": str(track.get("label") or ""),
                  "direction": direction, "ssrc": ssrc, "packets": packets, "nacks": nacks,
                  "plis": plis, "from": str(source_text)}))
    return rows


# -- sorting and filtering --------------------------------------------------------------------


def order_rows(rows: list[TableRow], column: str | None, reverse: bool,
               query: str = "") -> list[TableRow]:
    """Filter by a case-insensitive substring, then sort by a column; unknowns sort last.

    Ties keep a stable order by key, so equal rows do not swap places between
    refreshes (which would look like flicker and move the selection). Without
    a column the server's order stands (sessions come in join order).
    """
    needle = query.strip().casefold()
    kept = [r for r in rows if not needle or needle in r.plain().casefold()
            or needle in r.key.casefold()]
    if column is None:  # the server's order (sessions: join order)
        return kept
    kept.sort(key=lambda r: r.key)
    known = [r for r in kept if r.sort.get(column) is not None]
    unknown = [r for r in kept if r.sort.get(column) is None]

    def value(row: TableRow) -> Any:
        v = row.sort[column]
        return v.casefold() if isinstance(v, str) else v

    known.sort(key=value, reverse=reverse)
    return known + unknown


def nodes_text(nodes: list[dict[str, Any]] | None, now: float, here: str | None = None) -> Text:
    """The fleet's nodes, one line each: id, state, load, calls, sessions, media address.

    A draining node is marked so an operator sees why it gets no new calls; a
    node whose registration is getting old (its refreshes stopped) is flagged.
    """
    text = Text()
    for node in sorted(nodes or [], key=lambda n: str(n.get("node_id", ""))):
        node_id = str(node.get("node_id", "?"))
        state = str(node.get("state", "?"))
        updated = _num(node.get("updated_at"))
        stale = updated is not None and now - updated > NODE_STALE_S
        if text:
            text.append("\n")
        text.append(("* " if node_id == here else "  ") + f"{node_id:<18.18} ", "bold")
        text.append(f"{state:<9.9}", "yellow" if state != "active" else "green")
        load = _num(node.get("cpu_load"))
        text.append(f" cpu {fmt_rate(load, '%'):>6}")
        text.append(f"  calls {int(_num(node.get('calls')) or 0):>3}")
        text.append(f"  sessions {int(_num(node.get('sessions')) or 0):>4}")
        text.append(f"  {node.get('media_host', '?')}:{node.get('media_port', '?')}", "dim")
        if stale and updated is not None:
            text.append(f"  no update for {fmt_duration(now - updated)}", "red")
    return text


NODE_STALE_S = 5.0  # the fleet registry's TTL: older than this, the node is going away
