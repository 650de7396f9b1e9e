"""`make test`'s type check: mypy with a ratchet, so type errors only ever go down.

    python -m tools.typecheck                    # compare with the baseline; exit 1 if worse
    python -m tools.typecheck --update           # write the baseline, only if nothing rose
    python -m tools.typecheck --update --accept  # write it whatever it is (after a merge)

The code base predates the type checker, so demanding zero errors at once would
mean rewriting modules. Instead tools/typecheck_baseline.json records mypy's
error count per file and the number of `# type: ignore` comments in callsctl/
and callsctl_sfu/. A run fails when any file has more errors than recorded, or
there are more ignores, and names the new errors; fewer is fine and the message
says how to lock the gain in with `--update`. Silencing an error with a new
`type: ignore` does not slip past: the ignore count is part of the ratchet.

mypy's settings are in pyproject.toml ([tool.mypy]); its incremental cache is
.mypy_cache/, so only the first run on a machine pays the full time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tools" / "typecheck_baseline.json"
PACKAGES = ("callsctl", "callsctl_sfu")
# `path:line: error: text  [code]` (mypy's default output, columns off).
ERROR_LINE = re.compile(r"^(?P<path>[^:\s]+\.py):(?P<line>\d+): error: (?P<text>.*)$")
IGNORE = re.compile(r"#\s*type:\s*ignore\b")


@dataclass
class Snapshot:
    """What one mypy run found: errors per file and the ignore comments in the sources."""

    errors: dict[str, int]
    type_ignores: int
    lines: list[str] = field(default_factory=list)  # the error lines, for the report

    @property
    def total(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, object]:
        return {"total_errors": self.total, "type_ignores": self.type_ignores,
                "errors": dict(sorted(self.errors.items()))}


def count_ignores(root: Path = ROOT) -> int:
    """`# type: ignore` comments in the two packages (each one hides an error)."""
    return sum(len(IGNORE.findall(path.read_text(encoding="utf-8")))
               for package in PACKAGES for path in sorted((root / package).rglob("*.py")))


def run_mypy() -> Snapshot:
    """mypy in this process (no second interpreter start), settings from pyproject.toml."""
    from mypy import api

    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--no-error-summary", "--hide-error-context",
                                      "--no-pretty", "--no-color-output"])
    lines = [line for line in stdout.splitlines() if ERROR_LINE.match(line)]
    if status not in (0, 1) or (status == 1 and not lines):
        # 2 = mypy itself failed (bad config, crash): no counts to compare.
        raise SystemExit(f"typecheck: mypy did not run (exit {status}): "
                         f"{(stderr or stdout).strip().splitlines()[-1:] or ['no output']}")
    errors = Counter(line.split(":", 1)[0] for line in lines)
    return Snapshot(dict(errors), count_ignores(), lines)


def load_baseline(path: Path = BASELINE) -> Snapshot:
    data = json.loads(path.read_text(encoding="utf-8"))
    return Snapshot({str(k): int(v) for k, v in data["errors"].items()},
                    int(data["type_ignores"]))


def regressions(now: Snapshot, base: Snapshot) -> list[str]:
    """One line per way `now` is worse than `base`; empty when it is not."""
    problems = []
    for path, count in sorted(now.errors.items()):
        allowed = base.errors.get(path, 0)
        if count > allowed:
            problems.append(f"{path}: {count} mypy errors, the baseline allows {allowed}")
    if now.type_ignores > base.type_ignores:
        problems.append(f"{now.type_ignores} `# type: ignore` comments in "
                        f"{'/, '.join(PACKAGES)}/, the baseline allows {base.type_ignores}: "
                        "fix the type error instead of hiding it")
    return problems


def improved(now: Snapshot, base: Snapshot) -> bool:
    """Some count is below the baseline: worth an `--update` to keep it there."""
    return now.type_ignores < base.type_ignores or any(
        now.errors.get(path, 0) < count for path, count in base.errors.items())


def write_baseline(snapshot: Snapshot, path: Path = BASELINE) -> None:
    path.write_text(json.dumps(snapshot.to_json(), indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.typecheck",
        description="Run mypy and fail if any file has more type errors, or the packages "
                    "more `# type: ignore` comments, than tools/typecheck_baseline.json.")
    parser.add_argument("--update", action="store_true",
                        help="rewrite the baseline with this run's counts (refused if any "
                             "count rose, unless --accept)")
    parser.add_argument("--accept", action="store_true",
                        help="with --update: accept rises too (after merging others' code)")
    args = parser.parse_args(argv)
    if args.accept and not args.update:
        parser.error("--accept only makes sense with --update")

    os.chdir(ROOT)  # mypy's paths, its cache and the baseline's keys are relative to here
    started = time.monotonic()
    now = run_mypy()
    took = time.monotonic() - started
    base = load_baseline() if BASELINE.exists() else None
    worse = regressions(now, base) if base is not None else []
    summary = (f"{now.total} mypy errors in {len(now.errors)} files, {now.type_ignores} "
               f"type: ignore ({took:.1f} s)")

    if args.update:
        if worse and not args.accept:
            print("typecheck: not updating the baseline, these rose (fix them, or "
                  "--update --accept to take them on):", file=sys.stderr)
            for line in worse:
                print(f"  {line}", file=sys.stderr)
            return 1
        write_baseline(now)
        print(f"typecheck: baseline written: {summary}")
        return 0

    if base is None:
        print(f"typecheck: no {BASELINE.relative_to(ROOT)}; create it with "
              "`python -m tools.typecheck --update`", file=sys.stderr)
        return 1
    if worse:
        rose = {line.split(":", 1)[0] for line in worse}
        print(f"typecheck: more type errors than tools/typecheck_baseline.json allows "
              f"({summary}; baseline {base.total} errors, {base.type_ignores} ignores):",
              file=sys.stderr)
        for line in worse:
            print(f"  {line}", file=sys.stderr)
        for line in now.lines:
            if line.split(":", 1)[0] in rose:
                print(f"    {line}", file=sys.stderr)
        print("Fix them (run `.venv/bin/mypy` for the full list), or if this is a merge "
              "that moved code, `python -m tools.typecheck --update --accept`.", file=sys.stderr)
        return 1
    note = ""
    if improved(now, base):
        note = "; lower than the baseline: lock it in with `python -m tools.typecheck --update`"
    print(f"typecheck: ok, {summary}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
