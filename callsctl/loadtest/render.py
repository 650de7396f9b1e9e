"""Live progress (stderr) and the final report (stdout) of `callsctl loadtest`.

Progress always goes to stderr so that `--json` keeps stdout to one JSON
object; on a terminal it is a live panel, elsewhere rich prints only its
last state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

REFRESH_S = 0.5
WORST_RECEIVERS = 5


def _pct(values: dict[str, float] | None, unit: str, scale: float = 1.0,
         points: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    if not values:
        return "-"
    return "  ".join(f"{p} {values[p] * scale:.{_digits(values[p] * scale)}f} {unit}"
                     for p in points if p in values)


def _digits(value: float) -> int:
    return 0 if value >= 100 else 1 if value >= 10 else 2


class Reporter:
    """Owns the consoles: progress on stderr, the human report on stdout."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.err = Console(stderr=True, highlight=False)
        self.out = Console(highlight=False, soft_wrap=False)

    def _panel(self, test: Any) -> Group:
        progress = test.progress()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        elapsed = min(progress.elapsed, progress.duration)
        grid.add_row("phase", f"{progress.phase}  {elapsed:.0f}/{progress.duration:.0f} s")
        grid.add_row("participants", f"{progress.joined} joined, {progress.connected} "
                                     f"connected, {progress.failed} failed of "
                                     f"{progress.requested}")
        grid.add_row("packets", f"{progress.packets_sent} sent, {progress.packets_received} "
                                f"received, {progress.delay_samples} delay samples")
        if progress.server_cpu_percent is not None:
            grid.add_row("server CPU", f"{progress.server_cpu_percent:.0f} %")
        bar = ProgressBar(total=max(progress.duration, 1e-9), completed=elapsed, width=40)
        return Group(bar, grid)

    @contextlib.asynccontextmanager
    async def live(self, test: Any) -> AsyncIterator[None]:
        """Show progress while the run goes on (a task, cancelled when the run ends).

        On a terminal: a live panel, removed at the end. Elsewhere (CI logs,
        pipes): one line per phase change, nothing that needs a cursor.
        """
        if not self.err.is_terminal:
            task = asyncio.create_task(self._phase_lines(test))
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return
        with Live(console=self.err, auto_refresh=False, transient=True) as view:

            async def refresh() -> None:
                while True:
                    view.update(self._panel(test), refresh=True)
                    await asyncio.sleep(REFRESH_S)

            task = asyncio.create_task(refresh())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _phase_lines(self, test: Any) -> None:
        phase = None
        while True:
            progress = test.progress()
            if progress.phase != phase:
                phase = progress.phase
                self.err.print(f"loadtest: {phase} at {progress.elapsed:.1f} s: "
                               f"{progress.joined}/{progress.requested} joined, "
                               f"{progress.failed} failed, {progress.packets_received} "
                               "packets received")
            await asyncio.sleep(REFRESH_S / 5)

    def print_report(self, data: dict[str, Any]) -> None:
        console = self.out
        settings = data["settings"]
        console.print(
            f"[bold]Load test[/bold] {escape(data['target'])}: {settings['calls']} call(s) x "
            f"{settings['users_per_call']} users, {settings['unmuted']} unmuted"
            + (", screen sharing" if settings["screen_sharing"] else "")
            + (", video" if settings["video"] else "")
            + (", data channel" if settings.get("data_channel") else "")
            + f"; {settings['duration_s']:g} s, joins over {settings['join_duration_s']:g} s")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        people = data["participants"]
        joined = f"{people['joined']}/{people['requested']} joined, {people['failed']} failed"
        for reason, example in people["failure_examples"].items():
            joined += f"\n{people['failures'][reason]} x {escape(example)}"
        grid.add_row("participants", joined)
        if people.get("data_channels_open") is not None:
            grid.add_row("data channel", f"{people['data_channels_open']}/{people['joined']} "
                                         f"open, {people['data_channel_pongs']} answered a ping")
        grid.add_row("join time", _pct(data["join_s"], "s"))
        grid.add_row("first packet", _pct(data["first_media_s"], "s"))
        window = data["window"]
        grid.add_row("steady window", "-" if window is None else
                     f"{window['seconds']:g} s from t={window['starts_at_s']:g} s")
        media = data["media"]
        if media is not None:
            loss = "-" if media["loss"] is None else f"{100 * media['loss']:.2f} %"
            grid.add_row("media", f"{media['packets_sent']} packets sent by {media['senders']} "
                                  f"streams; received {media['received']} of "
                                  f"{media['expected']} expected")
            grid.add_row("loss", f"{loss}; {media['pairs_over_1pct_loss']} of {media['pairs']} "
                                 f"sender->receiver pairs over 1 %, worst "
                                 f"{100 * media['worst_pair_loss']:.2f} %")
        delay = data["delay_ms"]
        grid.add_row("forwarding delay", "-" if delay is None else
                     f"{_pct(delay, 'ms')}  ({delay['samples']} samples)")
        server = data["server"] or {}
        grid.add_row("server", self._server_line(server))
        loadgen = data["loadgen"]
        lag = loadgen.get("loop_lag_ms") or {}
        processes = loadgen.get("processes", 1)
        joining = (loadgen.get("loop_lag_joining_ms") or {}).get("p99", 0)
        full = loadgen.get("gc_full_collections") or {}
        grid.add_row("load generator", f"CPU {loadgen['cpu_percent']:g} %, event-loop lag "
                                       f"p99 {lag.get('p99', 0):g} ms (joining {joining:g} ms), "
                                       f"{full.get('count', 0)} full collections "
                                       f"(longest {full.get('max_ms', 0):g} ms)"
                     + (f" (worst of {processes} processes, CPU summed)"
                        if processes > 1 else ""))
        samples = ", ".join(f"{name} {s['bitrate_kbps']:g} kbit/s "
                            f"({s['packets_per_second']:g} pkt/s)"
                            for name, s in data["samples"].items())
        grid.add_row("samples", samples or "-")
        console.print(grid)
        if media is not None:
            self._worst(media["per_receiver"])
        for note in data["notes"]:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")
        if lag.get("p99", 0) > 50:
            console.print("[yellow]note:[/yellow] the load generator's event loop lagged; "
                          "delay figures include that lag (a busy machine? more --processes?)")

    @staticmethod
    def _server_line(server: dict[str, Any]) -> str:
        if not server or server.get("source") is None:
            return "no CPU/memory source (not local, no /metrics or /system)"
        parts = [f"via {server['source']}" + (f" (pid {server['pid']})" if server["pid"] else "")]
        cpu, rss, window = server.get("cpu_percent"), server.get("rss_mb"), server.get("window")
        if cpu:
            parts.append(f"CPU avg {cpu['avg']:g} % max {cpu['max']:g} %")
        if rss:
            parts.append(f"RSS {rss['first']:g} -> max {rss['max']:g} MB")
        if window and "forwarded_pps" in window:
            text = f"{window['forwarded_pps']:g} forwarded pkt/s"
            if "cpu_us_per_forwarded_packet" in window:
                text += f", {window['cpu_us_per_forwarded_packet']:g} us CPU per packet"
            parts.append(text)
        return "; ".join(parts)

    def _worst(self, receivers: list[dict[str, Any]]) -> None:
        lossy = sorted((r for r in receivers if r["loss"]), key=lambda r: -r["loss"])
        if not lossy:
            return
        table = Table(title=f"receivers with loss (worst {WORST_RECEIVERS})", title_justify="left")
        for column in ("user", "call", "expected", "received", "loss"):
            table.add_column(column, justify="right" if column != "user" else "left")
        for row in lossy[:WORST_RECEIVERS]:
            table.add_row(escape(row["user"]), escape(row["call"]), str(row["expected"]),
                          str(row["received"]), f"{100 * row['loss']:.2f} %")
        self.out.print(table)
