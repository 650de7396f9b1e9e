"""Print check results for humans (rich table) or scripts (`--json`), and pick the exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from callsctl.check.result import CheckResult
from callsctl.errors import EXIT_FAIL, EXIT_OK

_STYLE = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red"}


def exit_code(results: Iterable[CheckResult]) -> int:
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAIL


def emit(results: list[CheckResult], as_json: bool, title: str | None = None) -> int:
    """Print `results` and return the exit code the command should end with."""
    if as_json:
        payload = {"ok": all(r.ok for r in results), "results": [r.to_json() for r in results]}
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return exit_code(results)
    console = Console()
    table = Table(title=title, show_lines=False)
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("figure")
    table.add_column("what it means / what to do", overflow="fold")
    for r in results:
        text = r.summary if not r.fix else f"{r.summary}\n[dim]fix:[/dim] {r.fix}"
        table.add_row(r.name, f"[{_STYLE[r.status]}]{r.status.upper()}[/]", r.figure or "", text)
    console.print(table)
    return exit_code(results)
