"""docs/signaling.md's table of server -> client events, generated from callsctl_sfu/events.py.

The events module declares each event's fields once; this renders them as the
"Server → client" table between the markers
`<!-- BEGIN generated:events ... -->` and `<!-- END generated:events -->`,
so the protocol document cannot drift from what the server sends. `make docs`
writes it (via tools/gen_docs.py); tests/test_events_contract.py and
tests/test_docs_fresh.py check it is current.
"""

from __future__ import annotations

import re

from callsctl_sfu.events import EVENTS, Field

PATH = "docs/signaling.md"
NAME = "events"
BEGIN = f"<!-- BEGIN generated:{NAME} (run `make docs` to update; do not edit) -->"
END = f"<!-- END generated:{NAME} -->"
_BLOCK = re.compile(re.escape(f"<!-- BEGIN generated:{NAME}") + r"[^\n]*-->\n.*?"
                    + re.escape(END), re.DOTALL)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _field(f: Field) -> str:
    kind = f.json_type + (" or null" if f.nullable else "")
    notes = [kind] + ([] if f.required else ["optional"])
    text = f"`{f.name}` ({', '.join(notes)}"
    return text + (f": {f.doc})" if f.doc else ")")


def events_table() -> str:
    """One row per group of event types that share their fields and their 'when'."""
    lines = ["| event | fields | when |", "|---|---|---|"]
    done: set[str] = set()
    for spec in EVENTS.values():
        if spec.name in done:
            continue
        done.update(spec.row)
        names = " / ".join(f"`{name}`" for name in spec.row)
        fields = ", ".join(_field(f) for f in spec.fields) or "—"
        lines.append(f"| {names} | {_cell(fields)} | {_cell(spec.when)} |")
    return "\n".join(lines)


def fill(text: str) -> str:
    """`text` (docs/signaling.md) with its generated events block brought up to date."""
    return _BLOCK.sub(lambda _m: f"{BEGIN}\n{events_table()}\n{END}", text)
