"""`make dist`: the wheel, and `dist/callsctl`, one executable file that needs only Python.

    python -m tools.build_dist [--out dist] [--wheel-cache build/wheels]

The single file is a shiv zipapp. shiv rather than a plain `python -m zipapp`
because aiortc, av, cryptography, cffi and aiohttp ship compiled extension
modules, which Python cannot import from inside a zip: shiv unpacks the bundled
site-packages once into ~/.shiv (or $SHIV_ROOT) on first run and starts from
there afterwards. PyInstaller would also bundle the interpreter, but takes
minutes per build and fights aiortc's and scapy's dynamic imports.

Every wheel is kept in a cache directory (build/wheels) and tried offline
first, so a rebuild after a code change only rebuilds callsctl's own wheel:
that is what keeps tests/test_dist.py, which builds once per test session,
well under a minute. The bundled wheels are CPython-3.11/Linux-specific, so the
file runs on machines with the same Python minor version and platform.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "dist"
DEFAULT_CACHE = ROOT / "build" / "wheels"
ARTIFACT_NAME = "callsctl"
SHEBANG = "/usr/bin/env python3"
# The build backend's own wheels, cached too so the offline attempt can build ours.
_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
BUILD_REQUIREMENTS = tuple(_PYPROJECT["build-system"]["requires"])

# pip output that means "the index could not be reached", not "the project is broken".
_OFFLINE_SIGNS = (
    "No matching distribution found",
    "Could not find a version",
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "ConnectTimeout",
    "ReadTimeout",
)


class DistUnavailable(RuntimeError):
    """Dependencies are neither cached nor downloadable (no index reachable)."""


class BuildError(RuntimeError):
    """The build itself failed; the message carries the tool's output."""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])


def _pip(python: str, *args: str) -> list[str]:
    return [python, "-m", "pip", "--disable-pip-version-check", "-q", *args]


# Not part of a source tree worth copying: VCS data, caches, build output, virtualenvs.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".ruff_cache",
                                     ".hypothesis", "node_modules", "*.pcap")


def _wheel(python: str, requirement: str, dest: Path, cache: Path, timeout: float,
           *extra: str) -> None:
    """`pip wheel` from the cache alone first; from the index (filling the cache) if needed."""
    offline = _run(_pip(python, "wheel", "-w", str(dest), "--no-index", "--find-links",
                        str(cache), *extra, requirement), timeout)
    if offline.returncode == 0:
        return
    fetch = _run(_pip(python, "download", "-d", str(cache), "--find-links", str(cache),
                      *BUILD_REQUIREMENTS), timeout)
    online = fetch if fetch.returncode else _run(
        _pip(python, "wheel", "-w", str(dest), "--find-links", str(cache), *extra,
             requirement), timeout)
    if online.returncode == 0:
        return
    output = _tail(offline) + "\n" + _tail(online)
    if any(sign in output for sign in _OFFLINE_SIGNS):
        raise DistUnavailable(f"wheels are not cached in {cache} and the package index is "
                              f"unreachable:\n{output}")
    raise BuildError(f"pip wheel {requirement} failed:\n{output}")


def collect_wheels(cache: Path, python: str = sys.executable, timeout: float = 600,
                   workdir: Path | None = None) -> Path:
    """Build callsctl's wheel into `workdir` and fill `cache` with its dependencies' wheels.

    The wheel is built from a copy of the tree, so setuptools leaves no build/lib
    behind (where a deleted module would live on in the next wheel) and two test
    runs sharing this working tree cannot trip over each other's files.
    """
    cache.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="callsctl-dist-")) if workdir is None else workdir
    source = workdir / "src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    own = workdir / "wheel"
    shutil.rmtree(own, ignore_errors=True)
    _wheel(python, str(source), own, cache, timeout, "--no-deps")
    built = sorted(own.glob("callsctl-*.whl"))
    if not built:
        raise BuildError(f"pip wheel produced no callsctl wheel in {own}")
    _wheel(python, str(built[-1]), cache, cache, timeout)
    return built[-1]


def build_zipapp(wheel: Path, cache: Path, output: Path, python: str = sys.executable,
                 timeout: float = 600) -> Path:
    """Bundle `wheel` and its dependencies (all from `cache`, no index) into `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = _run([python, "-m", "shiv", "--reproducible", "-p", SHEBANG, "-c", ARTIFACT_NAME,
                 "-o", str(output), "--no-index", "--find-links", str(wheel.parent),
                 "--find-links", str(cache), str(wheel)], timeout)
    if proc.returncode != 0:
        if "No module named shiv" in proc.stderr:
            raise BuildError("shiv is not installed: pip install -e '.[test]'")
        raise BuildError(f"shiv failed:\n{_tail(proc)}")
    output.chmod(0o755)
    return output


def build(out_dir: Path = DEFAULT_OUT, cache: Path = DEFAULT_CACHE,
          python: str = sys.executable) -> tuple[Path, Path]:
    """Build (wheel in out_dir, executable out_dir/callsctl)."""
    with tempfile.TemporaryDirectory(prefix="callsctl-dist-") as tmp:
        wheel = collect_wheels(cache, python, workdir=Path(tmp))
        out_dir.mkdir(parents=True, exist_ok=True)
        dist_wheel = out_dir / wheel.name
        shutil.copy2(wheel, dist_wheel)
        return dist_wheel, build_zipapp(wheel, cache, out_dir / ARTIFACT_NAME, python)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.build_dist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--wheel-cache", type=Path, default=DEFAULT_CACHE,
                        help="where dependency wheels are kept between builds")
    args = parser.parse_args(argv)
    try:
        wheel, app = build(args.out, args.wheel_cache)
    except (DistUnavailable, BuildError) as exc:
        print(f"build_dist: {exc}", file=sys.stderr)
        return 1
    size = app.stat().st_size / (1024 * 1024)
    print(f"wrote {wheel}\nwrote {app} ({size:.0f} MiB; runs with any CPython "
          f"{sys.version_info.major}.{sys.version_info.minor} on this platform)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
