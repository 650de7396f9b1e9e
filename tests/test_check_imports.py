"""callsctl.check's modules import one another without a cycle, counting imports in functions.

`check capture` and `check listen|udp|tcp` share the packet classification
(callsctl/check/classify.py) and the host and argument parsing (addresses.py,
arguments.py); neither imports the other. A cycle hidden in a function-local
import is still a cycle, so those count here too.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.helpers import REPO
from tests.support.imports import find_cycle, import_graph

PACKAGE = "callsctl.check"


def check_graph() -> dict[str, set[str]]:
    """The graph without the package's __init__, which imports every command module to
    register it on `app` (the modules import only `app` from it)."""
    graph = import_graph(REPO, "callsctl/check")
    graph.pop(PACKAGE)
    return {module: targets - {PACKAGE} for module, targets in graph.items()}


def test_no_import_cycle_among_check_modules() -> None:
    graph = check_graph()
    assert len(graph) > 10, sorted(graph)  # the scan found the package's modules
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_netcat_and_capture_share_modules_instead_of_importing_each_other() -> None:
    graph = check_graph()
    netcat, capture = f"{PACKAGE}.netcat", f"{PACKAGE}.capture"
    assert capture not in graph[netcat] and netcat not in graph[capture]
    assert f"{PACKAGE}.classify" in graph[netcat] & graph[capture]
    assert graph[f"{PACKAGE}.classify"] == set()  # pure: imports nothing of the package


def test_the_scan_sees_a_cycle_made_by_a_function_local_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def late():\n    from pkg.a import thing\n    return thing\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == set()
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    (package / "b.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
