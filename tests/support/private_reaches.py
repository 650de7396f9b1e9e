"""Find reaches into aiortc's, aioice's and pylibsrtp's private internals in callsctl's code.

The code is callsctl/, callsctl_sfu/ and also tests/, bench/ and tools/.

Used by tests/test_aiortc_bridge.py (the count outside rtc/aiortc_bridge.py must be 0)
and runnable on its own to list them: `python -m tests.support.private_reaches [ROOT]`.

A reach is an attribute read or write, or a getattr/setattr/hasattr with a
constant name, of a `_name` that the three libraries use themselves, on anything
but `self`; a name-mangled `_Class__name` string; or an import from a private
module (`pylibsrtp._binding`). Names callsctl assigns on its own objects
(`self._send = ...`) are left out unless the bridge reaches them too, so that
`peer._send` does not count but `dtls._rx_srtp` does.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

LIBRARIES = ("aiortc", "aioice", "pylibsrtp")
BRIDGE = Path("callsctl_sfu/rtc/aiortc_bridge.py")
# Private names of other libraries that happen to match one of the three's.
NOT_THESE_LIBRARIES = {
    "_server",  # aiohttp TCPSite._server (server.py)
    "_reader",  # aiohttp WebSocketResponse._reader (api/wsrelease.py)
}
MANGLED = re.compile(r"_[A-Za-z]\w*__\w+")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def library_names() -> set[str]:
    """Every private attribute or method name the three libraries' sources use."""
    import importlib

    names: set[str] = set()
    for library in LIBRARIES:
        root = Path(importlib.import_module(library).__file__ or "").parent
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and _is_private(node.attr):
                    names.add(node.attr)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and \
                        _is_private(node.name):
                    names.add(node.name)
    return names


# The bridge's own tests reach one more internal to observe a PLI arrive.
EXEMPT = {BRIDGE, Path("tests/test_aiortc_bridge.py"),
          Path("tests/support/private_reaches.py")}


def _code_files(root: Path) -> list[Path]:
    return sorted(path for folder in ("callsctl_sfu", "callsctl", "tests", "bench", "tools")
                  for path in root.glob(f"{folder}/**/*.py"))


def _own_names(files: list[Path]) -> set[str]:
    own: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self":
                own.add(node.attr)
    return own


def _reached(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                and _is_private(node.args[1].value):
            found.append((node.lineno, node.args[1].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                MANGLED.fullmatch(node.value):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in LIBRARIES and \
                any(part.startswith("_") for part in node.module.split(".")):
            found.append((node.lineno, f"import {node.module}"))
    return found


def private_reaches(root: Path) -> list[str]:
    """'path:line: name' for every reach outside the bridge, in file order."""
    files = _code_files(root)
    names = library_names() - NOT_THESE_LIBRARIES
    bridged = {name for _, name in _reached(ast.parse((root / BRIDGE).read_text()))}
    suspicious = (names - _own_names(files)) | (bridged & names)
    out = []
    for path in files:
        if path.relative_to(root) in EXEMPT:
            continue
        for line, name in _reached(ast.parse(path.read_text())):
            if name in suspicious or MANGLED.fullmatch(name) or name.startswith("import "):
                out.append(f"{path.relative_to(root)}:{line}: {name}")
    return out


if __name__ == "__main__":
    found = private_reaches(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print("\n".join(found))
    print(f"{len(found)} private reaches outside {BRIDGE}", file=sys.stderr)
