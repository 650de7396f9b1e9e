"""Every callsctl exception has one base with a stable code and a one-line message.

The CLI prints any CallsctlError as one line from one place (callsctl.app.main)
and scripts and clients branch on `code`; a new exception class that skips the
base, or reuses another's code for a different error, fails here.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import callsctl
import callsctl_sfu
from callsctl.errors import EXIT_FAIL, EXIT_USAGE, CliError, exit_code_of
from callsctl_sfu.errors import CallsctlError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (callsctl, callsctl_sfu)
SKIP_MODULES = {"callsctl.__main__"}  # runs the CLI when imported
CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name not in SKIP_MODULES:
                names.append(info.name)
    return sorted(names)


def exception_classes() -> list[type[BaseException]]:
    """Every exception class defined (not imported) in a module of the two packages."""
    found: dict[str, type[BaseException]] = {}
    for name in project_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__ == name):
                found[f"{name}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CLASSES = exception_classes()


def test_the_walk_finds_the_known_classes() -> None:
    """Guards the discovery itself: an empty or partial walk would pass everything below."""
    names = {c.__name__ for c in CLASSES}
    assert {"CallsctlError", "CliError", "ConfigError", "StartupError", "StunTimeout",
            "AdminUnreachable", "JoinRefused", "NoNodeAvailable"} <= names
    assert len(CLASSES) >= 38


def test_no_exception_class_is_defined_where_the_import_walk_cannot_see_it() -> None:
    """Classes nested in functions or under `if` are invisible to the walk: none exist."""
    top_level = {c.__name__ for c in CLASSES}
    for package in PACKAGES:
        for path in Path(package.__path__[0]).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(
                        re.search(r"(Error|Exception|Refused|Timeout|Unreachable|Available"
                                  r"|Response|Rejected)$", ast.unparse(b)) for b in node.bases):
                    assert node.name in top_level, f"{path}: class {node.name}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_exception_derives_from_the_base_with_its_own_code(cls: type) -> None:
    assert issubclass(cls, CallsctlError), f"{cls.__module__}.{cls.__name__}"
    code = cls.__dict__.get("code")
    assert isinstance(code, str) and CODE.match(code), \
        f"{cls.__name__} needs its own `code = \"lower_snake\"`"


def test_codes_are_unique() -> None:
    """Two classes with one code would be two errors a script cannot tell apart."""
    owners: dict[str, str] = {}
    for cls in CLASSES:
        code = cls.__dict__["code"]
        assert code not in owners, f"{cls.__name__} and {owners[code]} share code {code!r}"
        owners[code] = cls.__name__


def test_message_is_the_one_line_and_builtin_bases_are_kept() -> None:
    from callsctl_sfu.config import ConfigError
    from callsctl_sfu.datadir import DataDirError
    from callsctl_sfu.server import StartupError

    err = ConfigError("udp_port", 70000, "must be 1 to 65535")
    assert isinstance(err, ValueError)  # old `except ValueError` sites still catch it
    assert err.code == "bad_config"
    assert err.message == str(err) == "invalid udp_port=70000: must be 1 to 65535"
    assert isinstance(DataDirError("x"), OSError)
    started = StartupError("udp port 1 on 0.0.0.0 is already in use", code="port_in_use")
    assert (started.code, StartupError("other").code) == ("port_in_use", "startup_failed")


def test_cli_exit_codes() -> None:
    from callsctl_sfu.tls import TlsError

    assert exit_code_of(TlsError("no cert")) == EXIT_FAIL
    assert exit_code_of(CliError("bad --count", EXIT_USAGE)) == EXIT_USAGE
    assert CliError("bad --count", EXIT_USAGE).code == "usage"
    assert CliError("failed").code == "failed"


def test_an_engine_error_reaching_the_cli_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """`serve` with a certificate file that does not exist: TlsError -> StartupError -> main."""
    run = subprocess.run(
        [sys.executable, "-m", "callsctl", "serve", "--data-dir", str(tmp_path),
         "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "k.pem"),
         "--api-port", "0", "--udp-port", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == EXIT_FAIL, run.stderr
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("callsctl: error: "), run.stderr
    assert "missing.pem" in lines[0] and "Traceback" not in run.stderr
