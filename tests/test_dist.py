"""The single-file build (`make dist` -> dist/callsctl) runs on a machine with only Python.

Built once per test session (about 20 s with the wheel cache in build/wheels,
about 30 s on a fresh checkout that downloads the wheels), then run with the
*base* interpreter, not this virtualenv's, with an empty environment and a
fresh SHIV_ROOT: nothing installed here can leak in, so what works is what
is inside the file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tools import build_dist

BUILD_TIMEOUT = 600  # generous: a cold build downloads ~50 wheels
# The first test also pays for the build (module fixture); pytest-timeout counts setup.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 120)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    try:
        wheel = build_dist.collect_wheels(build_dist.DEFAULT_CACHE, timeout=BUILD_TIMEOUT,
                                          workdir=out / "work")
    except build_dist.DistUnavailable as exc:
        pytest.skip(f"cannot build the zipapp offline without cached wheels: {exc}")
    return build_dist.build_zipapp(wheel, build_dist.DEFAULT_CACHE, out / "callsctl",
                                   timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="module")
def shiv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Empty at first: the first run unpacks the file here, as on a new machine."""
    return tmp_path_factory.mktemp("shiv-root")


@pytest.fixture(scope="module")
def bare_python() -> str:
    """An interpreter with nothing of ours installed: the base of this virtualenv."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    probe = subprocess.run([base, "-I", "-c", "import callsctl"], capture_output=True,
                           timeout=30)
    if probe.returncode == 0:
        pytest.skip(f"{base} has callsctl installed itself; cannot prove self-containment")
    return base


def run_artifact(python: str, artifact: Path, shiv_root: Path, *args: str,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(shiv_root), "SHIV_ROOT": str(shiv_root),
           "LANG": "C.UTF-8"}
    return subprocess.run([python, "-I", str(artifact), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_artifact_is_one_executable_file(artifact: Path) -> None:
    assert artifact.is_file()
    assert os.access(artifact, os.X_OK)
    assert artifact.read_bytes()[:2] == b"#!"


def test_version_from_the_artifact(artifact: Path, bare_python: str, shiv_root: Path) -> None:
    from callsctl_sfu import __version__

    proc = run_artifact(bare_python, artifact, shiv_root, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"callsctl {__version__}"


def test_check_udp_from_the_artifact(artifact: Path, bare_python: str, shiv_root: Path,
                                     udp_echo: int) -> None:
    proc = run_artifact(bare_python, artifact, shiv_root, "check", "udp", "--host", "127.0.0.1",
                        "--port", str(udp_echo), "--count", "1", "--timeout", "2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert [r["status"] for r in report["results"]] == ["pass"]


def test_check_udp_failure_exit_code_from_the_artifact(artifact: Path, bare_python: str,
                                                       shiv_root: Path) -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: the kernel answers ICMP port unreachable
    proc = run_artifact(bare_python, artifact, shiv_root, "check", "udp", "--host", "127.0.0.1",
                        "--port", str(port), "--count", "1", "--timeout", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
