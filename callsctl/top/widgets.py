"""The widgets `callsctl top` is built from: a live table, the server panel, the banner.

LiveTable is why updates do not flicker or lose the selection: its DataTable
rows are *positions* ("r0", "r1", ...) that are never cleared; each refresh
writes the sorted, filtered rows into those positions, changing only the cells
whose text changed, adds or drops positions at the end when the count changes,
and moves the cursor to wherever the selected call or session went.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Static

from callsctl.top.model import TopState
from callsctl.top.view import (
    BAD_STYLE,
    CPU_LOAD,
    NONE,
    QUEUE_P99_WARN_MS,
    ColumnSpec,
    TableRow,
    fmt_bps,
    fmt_bytes,
    fmt_duration,
    fmt_rate,
    level,
    order_rows,
)

SORT_MARKS = {False: " ▲", True: " ▼"}


class LiveTable(DataTable[Text]):
    """A DataTable of rows keyed by id, refreshed in place, sortable and filterable."""

    DEFAULT_CSS = """
    LiveTable { height: 1fr; }
    """

    def __init__(self, columns: Sequence[ColumnSpec], sort_column: str | None = None,
                 reverse: bool = False, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.specs = tuple(columns)
        self.sort_column = sort_column
        self.reverse = reverse
        self.query_text = ""
        self._rows: list[TableRow] = []
        self._shown: list[TableRow] = []

    def on_mount(self) -> None:
        for spec in self.specs:
            self.add_column(self._label(spec), key=spec.key)

    # -- what is shown ------------------------------------------------------------------

    @property
    def selected_key(self) -> str | None:
        """The id (call or session) of the highlighted row, if any."""
        if 0 <= self.cursor_row < len(self._shown):
            return self._shown[self.cursor_row].key
        return None

    @property
    def shown_keys(self) -> list[str]:
        return [row.key for row in self._shown]

    def shown_row(self, key: str) -> TableRow | None:
        return next((row for row in self._shown if row.key == key), None)

    def set_rows(self, rows: list[TableRow]) -> None:
        """New data: keep it and redraw with the current sort and filter."""
        self._rows = list(rows)
        self._redraw()

    def set_query(self, text: str) -> None:
        self.query_text = text
        self._redraw()

    def sort_by(self, column: str | None, reverse: bool | None = None) -> None:
        """Sort by a column; choosing the current column again flips the direction."""
        if reverse is None:
            reverse = not self.reverse if column == self.sort_column else False
        self.sort_column, self.reverse = column, reverse
        self._relabel()
        self._redraw()

    def cycle_sort(self) -> None:
        """Next column as the sort key (after the last one: back to the server's order)."""
        keys = [spec.key for spec in self.specs]
        if self.sort_column not in keys:
            self.sort_by(keys[0], False)
        elif self.sort_column == keys[-1]:
            self.sort_by(None, False)
        else:
            self.sort_by(keys[keys.index(self.sort_column) + 1], False)

    def flip_sort(self) -> None:
        if self.sort_column is not None:
            self.sort_by(self.sort_column, not self.reverse)

    def describe_sort(self) -> str:
        spec = next((s for s in self.specs if s.key == self.sort_column), None)
        if spec is None:
            return "in the server's order"
        return f"sorted by {spec.label}{SORT_MARKS[self.reverse]}"

    # -- drawing --------------------------------------------------------------------------

    def _label(self, spec: ColumnSpec) -> Text:
        mark = SORT_MARKS[self.reverse] if spec.key == self.sort_column else ""
        return Text(spec.label + mark, justify="right" if spec.numeric else "left",
                    style="bold" if mark else "")

    def _relabel(self) -> None:
        if not self.columns:
            return
        for spec in self.specs:
            column = self.columns.get(spec.key)  # type: ignore[call-overload]
            if column is not None:
                column.label = self._label(spec)
        self.notify_style_update()  # header labels are cached with the styles

    def _redraw(self) -> None:
        if not self.columns:
            return
        selected = self.selected_key
        old_index = self.cursor_row
        previous = self._shown
        shown = order_rows(self._rows, self.sort_column, self.reverse, self.query_text)
        for index, row in enumerate(shown):
            position = f"r{index}"
            if index >= len(previous):
                self.add_row(*row.cells, key=position)
                continue
            old = previous[index]
            for spec, new_cell, old_cell in zip(self.specs, row.cells, old.cells, strict=True):
                if not _same(new_cell, old_cell):
                    self.update_cell(position, spec.key, new_cell, update_width=True)
        for index in range(len(previous) - 1, len(shown) - 1, -1):
            self.remove_row(f"r{index}")
        self._shown = shown
        if not shown:
            return
        keys = [row.key for row in shown]
        target = keys.index(selected) if selected in keys else min(old_index, len(shown) - 1)
        if target != self.cursor_row:
            self.move_cursor(row=max(target, 0))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        # Not stopped: the screen also hears it and redraws its caption.
        self.sort_by(str(event.column_key.value))


def _same(a: Text, b: Text) -> bool:
    """Text equality that also sees a changed colour (rich's == compares text and spans)."""
    return a == b and a.style == b.style and a.justify == b.justify


class Banner(Static):
    """A one-line alarm over the content: connection lost, key refused, call ended."""

    DEFAULT_CSS = """
    Banner { height: auto; padding: 0 1; display: none; background: $error; color: $text; }
    Banner.-shown { display: block; }
    Banner.-info { background: $warning; color: $background; }
    """

    def show_message(self, message: str | None, info: bool = False) -> None:
        self.set_class(bool(message), "-shown")
        self.set_class(info, "-info")
        self.update(message or "")


BARS = "▁▂▃▄▅▆▇█"


def spark_text(series: Sequence[float], width: int) -> str:
    """Bars for the newest samples, newest on the right, scaled from zero to the maximum.

    Scaling from zero (not from the minimum, as textual's Sparkline does) keeps
    a steady 500 kbps looking steady instead of magnifying 1 % wobble to full
    height. One cell per sample while they fit; beyond that, each cell is the
    mean of a bucket, so the whole history (the last minutes) stays visible.
    """
    values = [max(0.0, float(v)) for v in series]
    if width <= 0 or not values:
        return ""
    if len(values) > width:
        count = len(values)
        chunks = [values[i * count // width:(i + 1) * count // width] for i in range(width)]
        values = [sum(chunk) / len(chunk) for chunk in chunks]
    top = max(values)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))]
                   for v in values)


class Spark(Widget):
    """A one-line bar chart of a series (see spark_text)."""

    DEFAULT_CSS = """
    Spark { height: 1; color: $accent; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.series: list[float] = []

    def set_series(self, series: Sequence[float]) -> None:
        self.series = list(series)
        self.refresh()

    def render(self) -> Text:
        # Right-aligned: the newest sample sits at the right edge and history grows leftwards.
        bars = spark_text(self.series, self.size.width)
        return Text(bars.rjust(self.size.width), no_wrap=True)


class MetricLine(Horizontal):
    """A label with its current value, followed by a sparkline of its recent history."""

    DEFAULT_CSS = """
    MetricLine { height: 1; }
    MetricLine > .metric-text { width: 46; }
    MetricLine > Spark { width: 1fr; margin-right: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(classes="metric-text")
        yield Spark()

    def show(self, text: Text | str, series: Sequence[float]) -> None:
        self.query_one(".metric-text", Static).update(text)
        self.query_one(Spark).set_series(series)


def cpu_text(state: TopState) -> Text:
    """The server process's own CPU (cores busy, like top's %CPU) and its memory."""
    system = (state.overview.system if state.overview else None) or {}
    cpu = state.rates.cpu
    text = Text(no_wrap=True)
    text.append("server CPU ")
    text.append(NONE if cpu is None else f"{cpu * 100:4.0f}%", style=level(cpu, CPU_LOAD))
    text.append(f"  RSS {fmt_bytes(system.get('process_rss_bytes'))}")
    return text


def host_text(state: TopState) -> Text:
    """The whole machine: load average per core and memory in use (not only the server's)."""
    system = (state.overview.system if state.overview else None) or {}
    load = system.get("cpu_load")
    text = Text(no_wrap=True)
    text.append("host load ")
    text.append(NONE if load is None else f"{load:4.2f}", style=level(load, CPU_LOAD))
    text.append("/core")
    text.append(f"  mem {fmt_bytes(system.get('memory_bytes'))}"
                f"/{fmt_bytes(system.get('memory_total'))}")
    return text


def udp_text(state: TopState) -> Text:
    """UDP receive-buffer drops: the rate now, and the count since the server started.

    The kernel counter is host-wide and counts from boot, so the raw number says
    little; what matters is whether it rises now, and how much since this server ran.
    Audio the server skipped as stale (`media_late_drop_ms`: it is short of CPU, not
    of buffer) is named first when it happens, as it is the more urgent of the two.
    """
    overview = state.overview
    per_s = state.rates.rcvbuf_errors_per_s
    since = overview.rcvbuf_errors_since_start() if overview else None
    total = overview.host_rcvbuf_errors() if overview else None
    style = BAD_STYLE if per_s else ""
    text = Text(no_wrap=True)
    queued = state.rates.queue_p99_ms
    if queued is not None and queued >= QUEUE_P99_WARN_MS:
        text.append(f"queue p99 {queued:,.0f} ms  ", style=BAD_STYLE)
    late = state.rates.late_per_s
    if late:
        text.append(f"late {late:,.0f}/s  ", style=BAD_STYLE)
    text.append("UDP drops ")
    text.append(NONE if per_s is None else f"{per_s:,.0f}/s", style=style)
    if since is not None:
        text.append(f"  {since:,.0f} since start", style=BAD_STYLE if since else "")
    elif total is not None:
        text.append(f"  {total:,.0f} since boot")
    if per_s and len(text) <= 46 - len("  run tune"):
        text.append("  run tune", style=BAD_STYLE)
    return text


class ServerPanel(Vertical):
    """Version, uptime, counts; server CPU; host load; media rates; UDP drops."""

    DEFAULT_CSS = """
    ServerPanel { height: auto; border: round $primary; padding: 0 1; }
    ServerPanel > #server-line { height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="server-line")
        yield MetricLine(id="metric-cpu")
        yield MetricLine(id="metric-host")
        yield MetricLine(id="metric-in")
        yield MetricLine(id="metric-out")
        yield MetricLine(id="metric-udp")

    def show(self, state: TopState, base_url: str) -> None:
        overview = state.overview
        system = (overview.system if overview else None) or {}
        version = (overview.version if overview else None) or {}
        self.border_title = f"server {base_url}"
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"callsctl {version.get('version', '?')}", style="bold")
        line.append(f"  up {fmt_duration(system.get('uptime_s'))}")
        calls = system.get("calls", len(state.calls) if overview else None)
        line.append(f"  calls {calls if calls is not None else NONE}")
        line.append(f"  sessions {system.get('sessions', NONE)}")
        engine = (version.get("forwarding_engine") or {}).get("engine")
        if engine == "python":  # the slower engine: say so, with the reason on /version
            line.append("  forwarding in Python", style=BAD_STYLE)
        elif engine:
            line.append(f"  forwarding {engine.upper()}")
        self.query_one("#server-line", Static).update(line)

        self.query_one("#metric-cpu", MetricLine).show(cpu_text(state), state.history["cpu"])
        self.query_one("#metric-host", MetricLine).show(host_text(state),
                                                        state.history["load"])
        rates = state.rates
        self.query_one("#metric-in", MetricLine).show(
            f"in  {fmt_bps(rates.in_bps):>11} {fmt_rate(rates.in_pps, 'pkt/s'):>12}",
            state.history["in_bps"])
        self.query_one("#metric-out", MetricLine).show(
            f"out {fmt_bps(rates.out_bps):>11} {fmt_rate(rates.out_pps, 'pkt/s'):>12}",
            state.history["out_bps"])
        self.query_one("#metric-udp", MetricLine).show(udp_text(state), state.history["rcvbuf"])
