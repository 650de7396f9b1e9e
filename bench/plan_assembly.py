"""What one receiver's change costs a track's fan-out plan: incremental against from scratch.

Every join and leave changes each speaker's track's receivers (calls/forwarding.py,
TrackRoutes) and the forwarder re-assembles that track's plan at once for the C
ingress. This measures the event loop's cost of one change (`refresh` + `plan`)
at the guide's call sizes, side by side in one run: the plan made from the last
one (the changed receiver taken out and put back), this checkout's assembly from
every entry (what a change of more than a quarter of the receivers takes), and,
with --before DIR, another checkout's TrackRoutes (e.g. the commit before the
incremental assembly, which assembled every change from scratch). The
receivers are stand-ins whose fan-out
target is a tuple, so the figures are the plan's own bookkeeping; working out the
changed receiver's target (MediaPeer.fanout_target) is the same both ways and is
included once per change.

    python bench/plan_assembly.py                       # N = 10 50 200 500 1000, printed
    python bench/plan_assembly.py --before /tmp/base    # and another checkout's
    python bench/plan_assembly.py --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callsctl_sfu.calls.forwarding import TrackRoutes  # noqa: E402

CHANGES = 2000  # changes timed per size and way (bounded)


class _Down:
    negotiated = True


class _Receiver:
    connected = True

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id

    def fanout_target(self, down: _Down) -> tuple[str]:
        return (self.session_id,)


def other_track_routes(checkout: Path) -> type:
    """TrackRoutes as another checkout's calls/forwarding.py defines it."""
    spec = importlib.util.spec_from_file_location(
        "before_forwarding", checkout / "callsctl_sfu" / "calls" / "forwarding.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no callsctl_sfu/calls/forwarding.py in {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks its module up while it is made
    spec.loader.exec_module(module)
    return module.TrackRoutes


def per_change_us(size: int, from_scratch: bool, kind: type = TrackRoutes) -> float:
    """Mean µs of refresh + plan over CHANGES changes, each to one receiver."""
    routes = kind({f"s{i}": (_Receiver(f"s{i}"), _Down()) for i in range(size)})
    routes.plan()
    started = time.perf_counter()
    for change in range(CHANGES):
        routes.refresh(f"s{change % size}")
        if from_scratch:
            routes._base = None  # noqa: SLF001 (the way every change was assembled before)
        routes.plan()
    return (time.perf_counter() - started) * 1e6 / CHANGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200, 500, 1000])
    parser.add_argument("--before", type=Path, help="another checkout: its TrackRoutes too")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args()
    before = other_track_routes(args.before) if args.before else None
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        # Each way three times, interleaved, and each way's best kept: the figure is the
        # bookkeeping, not whatever else the machine did meanwhile.
        runs: dict[str, list[float]] = {"incremental_us": [], "from_scratch_us": [],
                                        "before_us": []}
        for _ in range(3):
            runs["incremental_us"].append(per_change_us(size, False))
            runs["from_scratch_us"].append(per_change_us(size, True))
            if before is not None:
                runs["before_us"].append(per_change_us(size, False, before))
        row: dict[str, Any] = {"receivers": size}
        row.update({k: round(min(v), 2) for k, v in runs.items() if v})
        rows.append(row)
    if args.json:
        print(json.dumps({"changes": CHANGES, "rows": rows}, indent=2))
        return
    head = "| receivers | incremental, µs per change | from scratch (this checkout) |"
    print(head + (" before (--before) | before / incremental |" if before else ""))
    print("|---:|---:|---:|" + ("---:|---:|" if before else ""))
    for row in rows:
        line = f"| {row['receivers']} | {row['incremental_us']} | {row['from_scratch_us']} |"
        if before is not None:
            line += f" {row['before_us']} | {row['before_us'] / row['incremental_us']:.1f}x |"
        print(line)


if __name__ == "__main__":
    main()
