"""Regenerate (or check) every file that is derived from the CLI: `make docs`.

    python -m tools.gen_docs            write completions/, man/callsctl.1 and the
                                        generated blocks of README.md and
                                        docs/signaling.md (tools/gen_signaling.py)
    python -m tools.gen_docs --check    write nothing; exit 1 naming each stale file

Other engineers add commands, options and settings all the time; a generated
file that no test compares with the CLI is wrong within a week. So the CLI and
the config schema are the only sources, this module is the only writer, and
tests/test_docs_fresh.py runs the --check comparison.

README.md is hand-written except for blocks between markers
`<!-- BEGIN generated:NAME ... -->` and `<!-- END generated:NAME -->`; only
those are replaced, so prose edits and generated tables never fight.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tools import gen_completions, gen_man, gen_signaling, reference
from tools.clitree import Command, load_tree

ROOT = Path(__file__).resolve().parent.parent
README = "README.md"
STALE_HINT = "run `make docs` (python -m tools.gen_docs) and commit the result"


# --- README blocks ---------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`"


def config_block(tree: Command) -> str:
    lines = [
        "| setting | flag | environment | default | meaning |",
        "|---|---|---|---|---|",
    ]
    titles = reference.sections()
    section = ""
    for row in reference.settings(tree):
        if row.section != section:  # a row naming the section, then its settings
            section = row.section
            lines.append(f"| **{section}** | | | | {_cell(titles[section])} |")
        lines.append("| " + " | ".join([
            _code(row.name),
            _code(row.flag) if row.flag else "—",
            _code(row.env),
            _cell(row.default),
            _cell(row.meaning),
        ]) + " |")
    return "\n".join(lines)


def commands_block(tree: Command) -> str:
    lines = ["| command | what it does |", "|---|---|"]
    for cmd in tree.walk()[1:]:
        words = [cmd.name] + [f"{o.long} {o.metavar}" for o in cmd.options if o.required]
        words += [a.metavar + ("..." if a.variadic else "") if a.required
                  else f"[{a.metavar}]" for a in cmd.arguments]
        usage = " ".join(words)
        lines.append(f"| {_code(usage)} | {_cell(cmd.short_help)} |")
    return "\n".join(lines)


def exit_json_block(tree: Command) -> str:
    lines = ["| exit code | meaning |", "|---|---|"]
    for code, meaning in reference.exit_codes():
        lines.append(f"| {code} | {_cell(meaning)} |")
    lines.append("")
    lines += [f"- {rule}" for rule in reference.JSON_RULES]
    lines += ["", "Each entry of `results`:", "", "| field | type | meaning |", "|---|---|---|"]
    for name, type_name, meaning in reference.check_result_fields():
        lines.append(f"| {_code(name)} | {_cell(type_name)} | {_cell(meaning)} |")
    lines += ["", "| command | with `--json` it prints |", "|---|---|"]
    for name, shape in reference.json_commands(tree):
        lines.append(f"| {_code(name)} | {_cell(shape)} |")
    return "\n".join(lines)


README_BLOCKS: dict[str, Callable[[Command], str]] = {
    "commands": commands_block,
    "config": config_block,
    "exit-codes-json": exit_json_block,
}


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN generated:{name} (run `make docs` to update; do not edit) -->",
            f"<!-- END generated:{name} -->")


def fill_readme(text: str, tree: Command) -> str:
    """`text` with every generated block replaced; blocks absent from the README are skipped."""
    for name, render in README_BLOCKS.items():
        begin, end = _markers(name)
        pattern = re.compile(
            re.escape(f"<!-- BEGIN generated:{name}") + r"[^\n]*-->\n.*?" + re.escape(end),
            re.DOTALL,
        )
        replacement = f"{begin}\n{render(tree)}\n{end}"
        text = pattern.sub(lambda _m, r=replacement: r, text)
    return text


# --- orchestration ---------------------------------------------------------------------------


def render_all(root: Path = ROOT) -> dict[str, str]:
    """Every generated file's wanted content, by path relative to the repository root."""
    tree = load_tree()
    wanted = gen_completions.render_all(tree)
    for path, render in gen_man.FILES.items():
        wanted[path] = render(tree)
    readme = root / README
    if readme.exists():
        wanted[README] = fill_readme(readme.read_text(encoding="utf-8"), tree)
    signaling = root / gen_signaling.PATH  # its events table, from callsctl_sfu/events.py
    if signaling.exists():
        wanted[gen_signaling.PATH] = gen_signaling.fill(signaling.read_text(encoding="utf-8"))
    return wanted


def stale_files(root: Path = ROOT) -> list[str]:
    stale = []
    for path, content in render_all(root).items():
        target = root / path
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != content:
            stale.append(path)
    return stale


def write_all(root: Path = ROOT) -> list[str]:
    written = []
    for path, content in render_all(root).items():
        target = root / path
        if target.exists() and target.read_text(encoding="utf-8") == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gen_docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any generated file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        if stale:
            print(STALE_HINT, file=sys.stderr)
        return 1 if stale else 0
    for path in write_all():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
