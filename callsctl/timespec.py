"""Durations as operators type them: `90`, `30s`, `15m`, `24h`, `7d`."""

from __future__ import annotations

import re

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError naming the accepted forms."""
    match = _PATTERN.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r}: use a positive number with s, m, h or d "
                         "(e.g. 30s, 15m, 24h)")
    return float(match.group(1)) * _UNITS[match.group(2)]
