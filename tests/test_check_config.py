"""`callsctl check config`: the serve config is validated without starting anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callsctl.check.config_cmd import config_sources
from tests.support.helpers import run_cli, run_main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CALLSCTL_* from the developer's shell; a private data home."""
    import os

    for key in list(os.environ):
        if key.startswith("CALLSCTL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def test_valid_file_prints_merged_config_with_sources(tmp_path: Path) -> None:
    """As a subprocess: file values, env on top, defaults elsewhere."""
    path = write(tmp_path, '[serve]\nudp_port = 9443\nlog_level = "debug"\n')
    proc = run_cli("check", "config", "--config", str(path), "--json",
                   env={"CALLSCTL_LOG_LEVEL": "warning", "XDG_DATA_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["ok"] is True
    result = payload["results"][0]
    assert result["status"] == "pass"
    config, sources = result["details"]["config"], result["details"]["sources"]
    assert config["udp_port"] == 9443 and sources["udp_port"] == str(path)
    assert config["log_level"] == "warning" and sources["log_level"] == "CALLSCTL_LOG_LEVEL"
    assert config["api_port"] == 8045 and sources["api_port"] == "default"
    assert "CALLSCTL_LOG_LEVEL" in result["summary"]


def test_human_output_shows_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "udp_port = 9443\n")
    code, out, err = run_main(capsys, "check", "config", "--config", str(path))
    assert code == 0, err
    assert "merged serve configuration" in out
    assert "udp_port" in out and "9443" in out and "PASS" in out


def test_defaults_alone_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "check", "config", "--json")
    assert code == 0
    result = json.loads(out)["results"][0]
    assert result["summary"] == "valid: defaults"
    assert set(result["details"]["sources"].values()) == {"default"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("udp_port = 70000\n", "invalid udp_port=70000"),
        ('log_level = "loud"\n', "invalid log_level='loud'"),
        ("no_such_setting = 1\n", "unknown setting"),
        ("udp_port = \n", "is not valid TOML"),
        ('bind = "not-an-ip"\n', "invalid bind='not-an-ip'"),
    ],
)
def test_invalid_file_is_one_line_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         text: str, needle: str) -> None:
    path = write(tmp_path, text)
    code, out, err = run_main(capsys, "check", "config", "--config", str(path))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("callsctl: error: "), err
    assert needle in lines[0]
    assert out == ""


def test_invalid_env_value_named(capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSCTL_UDP_PORT", "eighty")
    code, _, err = run_main(capsys, "check", "config")
    assert code == 1
    assert "CALLSCTL_UDP_PORT" in err and "udp_port" in err


def test_missing_file_as_subprocess(tmp_path: Path) -> None:
    proc = run_cli("check", "config", "--config", str(tmp_path / "absent.toml"))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "file does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_invalid_with_json_reports_fail(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    path = write(tmp_path, "api_port = -1\n")
    code, out, _ = run_main(capsys, "check", "config", "--config", str(path), "--json")
    assert code == 1
    payload = json.loads(out)
    assert payload["ok"] is False
    result = payload["results"][0]
    assert result["status"] == "fail" and result["details"]["key"] == "api_port"


def test_risky_but_valid_settings_warn(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    path = write(tmp_path, "api_port = 443\nudp_port = 443\n")
    code, out, _ = run_main(capsys, "check", "config", "--config", str(path), "--json")
    assert code == 0  # serve would start; the warnings say what will hurt
    names = {r["name"]: r for r in json.loads(out)["results"]}
    assert names["config"]["status"] == "pass"
    assert names["config ports"]["status"] == "warn"
    assert "CAP_NET_BIND_SERVICE" in names["config privileged port"]["summary"]
    path = write(tmp_path, "udp_port = 0\n")
    code, out, _ = run_main(capsys, "check", "config", "--config", str(path), "--json")
    assert "random media port" in json.dumps(json.loads(out))


def test_config_sources_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "udp_port = 1\napi_port = 2\n")
    sources = config_sources(path, env={"CALLSCTL_API_PORT": "3"})
    assert sources["udp_port"] == str(path)
    assert sources["api_port"] == "CALLSCTL_API_PORT"
    assert sources["bind"] == "default"


def test_top_level_keys_beside_a_serve_table_are_an_error(tmp_path: Path) -> None:
    """They used to be dropped silently."""
    path = write(tmp_path, 'udp_port = 9443\n[serve]\nlog_level = "debug"\n')
    proc = run_cli("check", "config", "--config", str(path))
    assert proc.returncode == 1
    assert "udp_port" in proc.stderr and "[serve]" in proc.stderr, proc.stderr
    serve = run_cli("serve", "--config", str(path), "--print-config")
    assert serve.returncode == 1 and "[serve]" in serve.stderr, serve.stderr


def test_every_error_at_once_with_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, '[serve]\nudp_prot = 9443\nlog_level = "loud"\napi_port = -1\n'
                           'ice_host_overide = "1.2.3.4"\n')
    proc = run_cli("check", "config", "--config", str(path), "--json")
    assert proc.returncode == 1
    results = [r for r in json.loads(proc.stdout)["results"] if r["status"] == "fail"]
    text = json.dumps(results)
    assert len(results) == 4, results
    assert "did you mean 'udp_port'" in text and "did you mean 'ice_host_override'" in text
    assert "log_level" in text and "api_port" in text
    human = run_cli("check", "config", "--config", str(path))
    assert human.returncode == 1
    lines = human.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("callsctl: error: ") for line in lines), lines
    assert "Traceback" not in human.stderr


def test_a_misspelt_table_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nudp_port = 9443\n")
    proc = run_cli("check", "config", "--config", str(path))
    assert proc.returncode == 1 and "did you mean [serve]" in proc.stderr, proc.stderr
