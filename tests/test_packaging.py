"""Installing callsctl prints no setuptools deprecation warnings.

The first `make serve` used to print ~45 lines of them (the `license` table in
pyproject.toml, deprecated since setuptools 77 in favour of an SPDX string,
PEP 639). This builds the wheel the way pip install does (isolated build
environment, the [build-system] requirements from the index) from a copy of
the tree and reads everything the build printed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import REPO
from tools.build_dist import _OFFLINE_SIGNS

SOURCES = ("pyproject.toml", "setup.py", "README.md", "callsctl", "callsctl_sfu")


def test_building_the_wheel_prints_no_deprecation_warning(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    tree.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(source, tree / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
         "-w", str(tmp_path / "wheel"), str(tree)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    if proc.returncode and any(sign in output for sign in _OFFLINE_SIGNS):
        pytest.skip("the package index (for the build requirements) is unreachable")
    assert proc.returncode == 0, output[-3000:]
    assert list((tmp_path / "wheel").glob("callsctl-*.whl"))
    for word in ("Deprecat", "deprecated", "BuildBackendWarning"):
        assert word not in output, output
