"""Test modules share code through tests/support/, never by importing one another.

A test module importing another runs (and collects) the other's module-level
code and couples two files that change for different reasons; shared helpers
and fixtures live in tests/support/ (fixtures registered in conftest.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.helpers import REPO
from tests.support.imports import import_graph


def cross_test_imports(root: Path) -> list[str]:
    """'importer -> imported' for every tests/test_*.py or tests/support module that imports
    a test module (tests.test_*) or conftest, function-local imports included."""
    graph = import_graph(root, "tests")

    def is_test_module(name: str) -> bool:
        last = name.rpartition(".")[2]
        return last.startswith("test_") or last == "conftest"

    return sorted(f"{module} -> {target}" for module, targets in graph.items()
                  if is_test_module(module) or module.startswith("tests.support")
                  for target in targets if is_test_module(target))


def test_no_test_module_imports_another_test_module() -> None:
    assert (REPO / "tests/support/__init__.py").exists()
    assert cross_test_imports(REPO) == []


def test_the_check_finds_imports_between_test_modules(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    (tests / "support").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "support/__init__.py", "support/x.py"):
        (tests / name).write_text("")
    (tests / "test_a.py").write_text("from tests.support.x import y\n")
    (tests / "test_b.py").write_text("def f():\n    from tests.test_a import z\n")
    (tests / "test_c.py").write_text("from tests import test_a\nfrom tests.conftest import s\n")
    assert cross_test_imports(tmp_path) == [
        "tests.test_b -> tests.test_a", "tests.test_c -> tests.conftest",
        "tests.test_c -> tests.test_a"]
