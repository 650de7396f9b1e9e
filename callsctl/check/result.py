"""The shape every `callsctl check` subcommand reports in.

One result per check: a verdict (pass / warn / fail), the measured figure, a
one-line summary and, when it is not a pass, what the operator should do.
`check all` collects these into one report; `--json` prints them as-is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail"]


@dataclass
class CheckResult:
    name: str
    status: Status
    summary: str
    figure: str | None = None
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
