"""The engine's layers import one way: rtc/ (media) never imports calls/ (membership), and
calls/ and rtc/ have no import cycles.

Read from the source with `ast`, so the check does not depend on which module
happens to be imported first: a cycle among module-level imports is a failure
waiting for the one import order that meets it half-initialised. Imports under
`if TYPE_CHECKING:` and inside functions run late (or never) and cannot form
such a cycle; they are left out of the cycle check, but rtc/ may not import
calls/ even there (the forwarder seam: rtc/rtcp_routing.py works through a
Protocol, not the call layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.helpers import REPO

PACKAGE = "callsctl_sfu"
LAYERS = ("callsctl_sfu.calls", "callsctl_sfu.rtc")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, known: dict[str, Path], eager_only: bool) -> set[str]:
    """Engine modules `module` imports; eager_only: only those run when it is imported."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def target(name: str) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith(PACKAGE) and name != module:
            found.add(name)

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    target(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                if not eager_only:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not eager_only:
                    visit(node.body)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(ast.parse(path.read_text(), str(path)).body)
    return found


def _in_layers(name: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in LAYERS)


def test_rtc_never_imports_the_call_layer() -> None:
    known = _modules()
    offenders = {module: sorted(i for i in _imports(path, module, known, eager_only=False)
                                if i.startswith("callsctl_sfu.calls"))
                 for module, path in known.items() if module.startswith("callsctl_sfu.rtc")}
    assert {m: i for m, i in offenders.items() if i} == {}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in the graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state:
                cycle = walk(imported)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = walk(module)
            if cycle:
                return cycle
    return None


def test_calls_and_rtc_have_no_import_cycle() -> None:
    known = _modules()
    graph = {module: {i for i in _imports(path, module, known, eager_only=True) if _in_layers(i)}
             for module, path in known.items() if _in_layers(module)}
    assert "callsctl_sfu.calls.forwarder" in graph["callsctl_sfu.calls.manager"]
    assert "callsctl_sfu.rtc.mux" in graph["callsctl_sfu.calls.forwarder"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_a_cycle_and_a_layer_breach(tmp_path: Path) -> None:
    """The two checks above can fail: a planted cycle and breach are found."""
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nimport callsctl_sfu.calls.manager\n"
                 "if TYPE_CHECKING:\n    from callsctl_sfu.calls import model\n"
                 "def late():\n    from callsctl_sfu.calls import host\n")
    known = {**_modules(), "callsctl_sfu.rtc.a": a}
    assert _imports(a, "callsctl_sfu.rtc.a", known, eager_only=True) == {
        "callsctl_sfu.calls.manager"}
    assert _imports(a, "callsctl_sfu.rtc.a", known, eager_only=False) == {
        "callsctl_sfu.calls.manager", "callsctl_sfu.calls.model", "callsctl_sfu.calls.host"}
    assert _find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == ["x", "y", "z", "x"]
    assert _find_cycle({"x": {"y"}, "y": {"z"}, "w": {"x", "z"}}) is None
