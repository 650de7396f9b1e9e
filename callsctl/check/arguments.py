"""Typer `parser=` functions for the check commands: a port, a count, a duration.

Each turns bad input into one line and exit 2 (usage error) before anything
is sent, with bounds so that a typo cannot make a probe or capture run for days.
"""

from __future__ import annotations

from typing import Any

from callsctl.errors import EXIT_USAGE, fail
from callsctl.timespec import parse_duration


def parse_port(text: Any) -> int:
    """A port from 1 to 65535 (typer `parser=`), or a one-line usage error."""
    value = str(text).strip()
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        fail(f"invalid port {text!r}: use a number from 1 to 65535 (the media port is 8443)",
             EXIT_USAGE)
    return int(value)


def parse_count(text: Any) -> int:
    """A positive count, bounded so that a typo cannot make a probe run for days."""
    value = str(text).strip()
    if not value.isdigit() or not 1 <= int(value) <= 1_000_000:
        fail(f"invalid count {text!r}: use a whole number from 1 to 1000000", EXIT_USAGE)
    return int(value)


def parse_seconds(text: Any) -> float:
    """A positive duration: `2`, `0.5`, `30s`, `2m`; at most a day."""
    try:
        seconds = parse_duration(str(text))
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if seconds > 86400:
        fail(f"invalid duration {text!r}: at most 24h", EXIT_USAGE)
    return seconds
