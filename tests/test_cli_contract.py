"""The promises the docs make about every command: exit codes and `--json` shapes.

The man page (EXIT STATUS, JSON OUTPUT) and README ("Exit codes and JSON
output") are generated from tools/reference.py; these tests hold the commands
to what it says, walking the command tree so that new commands are covered
without anyone listing them here.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callsctl.app import app
from callsctl.check.result import CheckResult
from callsctl.errors import EXIT_USAGE
from tools import reference
from tools.clitree import Command, load_tree

TREE = load_tree()
COMMANDS = TREE.walk()


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def documented_keys(command: str) -> set[str]:
    """Top-level keys named in the first `{...}` of the documented shape."""
    shape = reference.JSON_SHAPES[command]
    inner = re.search(r"\{([^}]*)\}", shape)
    assert inner, shape
    return {k.strip().rstrip("[]") for k in inner.group(1).split(",") if k.strip() != "…"}


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_unknown_option_is_a_usage_error(cmd: Command) -> None:
    code, out, _ = invoke(*cmd.path[1:], "--no-such-option")
    assert code == EXIT_USAGE
    assert out == ""


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_help_exits_zero(cmd: Command) -> None:
    code, out, _ = invoke(*cmd.path[1:], "--help")
    assert code == 0
    assert "Usage" in out


def test_every_json_command_is_documented() -> None:
    documented = dict(reference.json_commands(TREE))
    for cmd in COMMANDS:
        if cmd.option("--json") is not None:
            assert cmd.name in documented


def assert_check_envelope(out: str) -> dict:
    report = json.loads(out)
    assert set(report) == {"ok", "results"}
    assert report["ok"] == all(r["status"] != "fail" for r in report["results"])
    for result in report["results"]:
        assert set(result) == {f.name for f in fields(CheckResult)}
        assert result["status"] in ("pass", "warn", "fail")
    return report


def test_check_json_envelope_on_success_and_failure(udp_echo: int) -> None:
    code, out, _ = invoke("check", "udp", "--host", "127.0.0.1", "--port", str(udp_echo),
                          "--count", "1", "--timeout", "2", "--json")
    assert code == 0
    assert assert_check_envelope(out)["ok"] is True

    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    code, out, _ = invoke("check", "udp", "--host", "127.0.0.1", "--port", str(port),
                          "--count", "1", "--timeout", "1", "--json")
    assert code == 1
    assert assert_check_envelope(out)["ok"] is False


def test_check_config_json_envelope_for_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "serve.toml"
    bad.write_text("udp_port = 70000\n")
    code, out, _ = invoke("check", "config", "--config", str(bad), "--json")
    assert code == 1
    assert assert_check_envelope(out)["ok"] is False


def test_token_json_has_the_documented_keys(tmp_path: Path) -> None:
    from callsctl_sfu.datadir import load_or_create_secret

    load_or_create_secret(tmp_path)  # a server's data dir
    code, out, _ = invoke("token", "--call", "standup", "--user", "alice",
                          "--data-dir", str(tmp_path), "--json")
    assert code == 0
    assert set(json.loads(out)) == documented_keys("callsctl token")


def test_tune_json_has_the_documented_keys(tmp_path: Path) -> None:
    for name in ("sys", "proc", "sysctl.d"):
        (tmp_path / name).mkdir()
    with socket.socket() as sock:  # a loopback port where no server answers
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, _ = invoke("tune", "--json", "--sysctl-root", str(tmp_path / "sys"),
                          "--proc-root", str(tmp_path / "proc"),
                          "--sysctl-d", str(tmp_path / "sysctl.d"),
                          "--data-dir", str(tmp_path / "data"),
                          "--server", f"http://127.0.0.1:{port}")
    assert code == 0
    assert set(json.loads(out)) == documented_keys("callsctl tune")
