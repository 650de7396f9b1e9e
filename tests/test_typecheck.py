"""The type-check ratchet (tools/typecheck.py): worse fails, better passes, ignores count.

mypy itself runs in `make test` before pytest; these tests hold the comparison
to what the README promises, without a second mypy run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tools import typecheck
from tools.typecheck import Snapshot, count_ignores, improved, regressions

BASE = Snapshot({"callsctl/a.py": 2, "callsctl_sfu/b.py": 1}, type_ignores=5)


def test_same_or_fewer_errors_pass() -> None:
    assert regressions(Snapshot({"callsctl/a.py": 2, "callsctl_sfu/b.py": 1}, 5), BASE) == []
    fewer = Snapshot({"callsctl/a.py": 1}, 4)
    assert regressions(fewer, BASE) == []
    assert improved(fewer, BASE)
    assert not improved(Snapshot(dict(BASE.errors), 5), BASE)


def test_a_file_with_more_errors_fails_and_is_named() -> None:
    worse = Snapshot({"callsctl/a.py": 3, "callsctl_sfu/b.py": 1}, 5)
    assert regressions(worse, BASE) == ["callsctl/a.py: 3 mypy errors, the baseline allows 2"]


def test_errors_moved_to_a_new_file_fail_even_when_the_total_is_lower() -> None:
    moved = Snapshot({"callsctl/new.py": 1}, 5)
    assert regressions(moved, BASE) == ["callsctl/new.py: 1 mypy errors, the baseline allows 0"]


def test_a_new_type_ignore_fails() -> None:
    hidden = Snapshot({"callsctl/a.py": 1, "callsctl_sfu/b.py": 1}, 6)
    [problem] = regressions(hidden, BASE)
    assert "6 `# type: ignore`" in problem and "allows 5" in problem


def test_ignores_are_counted_in_both_packages(tmp_path: Path) -> None:
    (tmp_path / "callsctl").mkdir()
    (tmp_path / "callsctl_sfu" / "sub").mkdir(parents=True)
    (tmp_path / "callsctl" / "x.py").write_text("a = f()  # type: ignore[misc]\n")
    (tmp_path / "callsctl_sfu" / "sub" / "y.py").write_text(
        "b = g()  #type:ignore\nc = 1  # a type is fine here\n")
    (tmp_path / "other.py").write_text("d = h()  # type: ignore\n")  # outside the packages
    assert count_ignores(tmp_path) == 2


def test_the_committed_baseline_round_trips(tmp_path: Path) -> None:
    committed = typecheck.load_baseline()
    assert committed.total > 0 and committed.type_ignores > 0
    path = tmp_path / "baseline.json"
    typecheck.write_baseline(committed, path)
    again = typecheck.load_baseline(path)
    assert (again.errors, again.type_ignores) == (committed.errors, committed.type_ignores)
    assert json.loads(path.read_text())["total_errors"] == committed.total
