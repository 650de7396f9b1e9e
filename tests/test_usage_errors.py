"""Usage errors: one line on stderr, exit code 2, naming the option, for every command.

The README promises it ("Errors are one line on stderr; … 2 usage error").
A handful of cases run `python -m callsctl` as a separate process, exactly as
an operator's shell does; the walk over every command runs the same entry
point (callsctl.app.main) in-process, because thirty interpreter starts would
cost more than they prove.
"""

from __future__ import annotations

from typing import Any

import pytest

from callsctl.errors import EXIT_USAGE
from tests.support.helpers import run_cli, run_main
from tools.clitree import Command, load_tree

COMMANDS = load_tree().walk()


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("callsctl: error: "), stderr
    return lines[0]


# (argv, words the one line must contain)
CASES = [
    (["serve", "--api-port", "70000"], ["--api-port", "70000", "65535"]),
    (["serve", "--api-port", "abc"], ["--api-port"]),
    (["serve", "--log-level", "loud"], ["--log-level", "debug"]),
    (["token", "--call", "c", "--user", "u", "--ttl", "5x"], ["--ttl", "5x"]),
    (["token", "--user", "u"], ["--call"]),
    (["token", "--call"], ["--call"]),
    (["token", "--call", "", "--user", "u"], ["--call", "empty"]),
    (["check", "udp", "--host", "127.0.0.1", "--port", "99999"], ["99999"]),
    (["check", "rtc", "--hst", "x"], ["--hst", "check rtc"]),
    (["top", "--refresh", "0"], ["--refresh"]),
    (["loadtest", "--host", "127.0.0.1:1", "--duration", "soon"], ["--duration", "soon"]),
    (["nosuch"], ["nosuch"]),
    (["check", "nosuch"], ["nosuch"]),
]


@pytest.mark.parametrize(("argv", "words"), CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) and v and isinstance(v[0], str) else "")
def test_usage_error_is_one_line_exit_2_naming_the_problem(argv: list[str],
                                                           words: list[str]) -> None:
    result = run_cli(*argv, timeout=30)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    for word in words:
        assert word in line
    assert "Traceback" not in line and "╭" not in line


# (argv, the option, where it belongs, the corrected order shown)
MISPLACED = [
    (["calls", "list", "--server", "http://h:1"], "--server", "callsctl calls",
     "callsctl calls --server http://h:1 list"),
    (["calls", "--json", "list"], "--json", "callsctl calls list", "callsctl calls list --json"),
    (["check", "--host", "h1", "rtc"], "--host", "callsctl check rtc",
     "callsctl check rtc --host h1"),
    (["--json", "token", "--call", "c", "--user", "u"], "--json", "callsctl token",
     "callsctl token --json"),
    (["token", "--version"], "--version", "callsctl", "callsctl --version"),
]


@pytest.mark.parametrize(("argv", "option", "owner", "fixed"), MISPLACED,
                         ids=[" ".join(c[0]) for c in MISPLACED])
def test_an_option_at_the_wrong_level_gets_a_hint(argv: list[str], option: str, owner: str,
                                                 fixed: str) -> None:
    result = run_cli(*argv, timeout=30)
    assert result.returncode == EXIT_USAGE
    line = one_line(result.stderr)
    assert f"{option} is an option of `{owner}`" in line
    assert fixed in line


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_every_command_reports_an_unknown_option_in_one_line(cmd: Command,
                                                             capsys: Any) -> None:
    code, out, err = run_main(capsys, *cmd.path[1:], "--no-such-option")
    assert code == EXIT_USAGE
    assert out == ""
    line = one_line(err)
    assert "--no-such-option" in line
    assert cmd.name in line  # which command's --help to read


def test_a_bare_group_prints_its_help(capsys: Any) -> None:
    code, out, err = run_main(capsys, "check")
    assert code == EXIT_USAGE
    assert "callsctl check" in out + err and "rtc" in out + err


def test_a_bad_value_from_a_config_file_is_a_failure_not_a_usage_error(tmp_path: Any) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("api_port = 70000\n")
    result = run_cli("serve", "--config", str(config), "--print-config", timeout=30)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "api_port" in line and str(config) in line
