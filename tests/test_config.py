"""Config precedence (defaults < TOML < env < flags) and validation, as operators meet it."""

from __future__ import annotations

import tomllib

import pytest

from callsctl_sfu.config import ConfigError, ServeConfig, load_config, to_toml
from tests.support.helpers import run_cli


def test_defaults_match_the_deployment_guide(tmp_path):
    config = load_config(env={}, overrides={"data_dir": str(tmp_path)})
    assert (config.api_port, config.udp_port, config.bind) == (8045, 8443, "0.0.0.0")
    assert config.max_call_participants == 0
    assert config.ice_host_override == ""


def test_precedence_toml_env_flag(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('[serve]\nudp_port = 9000\napi_port = 9001\nlog_level = "debug"\n')
    env = {"CALLSCTL_UDP_PORT": "9100", "CALLSCTL_ICE_HOST_OVERRIDE": "203.0.113.7"}
    config = load_config(toml, env=env, overrides={"udp_port": 9200, "bind": None})
    assert config.udp_port == 9200  # flag beats env and file
    assert config.ice_host_override == "203.0.113.7"  # env beats default
    assert config.api_port == 9001  # file beats default
    assert config.log_level == "debug"


def test_top_level_toml_without_section(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text("max_call_participants = 8\n")
    assert load_config(toml, env={}).max_call_participants == 8


@pytest.mark.parametrize(
    ("source", "key", "value", "fragment"),
    [
        ("flag", "udp_port", 70000, "port number from 0 to 65535"),
        ("flag", "log_level", "loud", "one of debug, info, warning, error"),
        ("flag", "bind", "not-an-ip", "IPv4 or IPv6 address"),
        ("env", "max_call_participants", "-3", "0 or more"),
        ("env", "api_port", "eighty", "whole number"),
        ("flag", "log_format", "xml", "one of text, json"),
    ],
)
def test_invalid_values_name_key_value_and_rule(source, key, value, fragment):
    env, overrides = {}, {}
    if source == "env":
        env[f"CALLSCTL_{key.upper()}"] = value
    else:
        overrides[key] = value
    with pytest.raises(ConfigError) as info:
        load_config(env=env, overrides=overrides)
    message = str(info.value)
    assert key in message and str(value) in message and fragment in message
    assert "\n" not in message


def test_unknown_key_in_file_is_rejected(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text("udp_prot = 8443\n")
    with pytest.raises(ConfigError, match="udp_prot.*unknown setting"):
        load_config(toml, env={})


def test_broken_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("udp_port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})


def test_to_toml_round_trips(tmp_path):
    config = load_config(env={}, overrides={"udp_port": 9443, "data_dir": str(tmp_path)})
    text = to_toml(config)
    path = tmp_path / "out.toml"
    path.write_text(text)
    assert load_config(path, env={}) == config
    assert tomllib.loads(text)["serve"]["udp_port"] == 9443


def test_cli_print_config_merges_all_sources(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text("api_port = 9001\n")
    result = run_cli("serve", "--config", str(toml), "--udp-port", "9443", "--print-config",
                     env={"CALLSCTL_MAX_CALL_PARTICIPANTS": "12"})
    assert result.returncode == 0, result.stderr
    merged = tomllib.loads(result.stdout)["serve"]
    assert (merged["api_port"], merged["udp_port"], merged["max_call_participants"]) == (
        9001, 9443, 12)


def test_cli_invalid_flag_value_is_one_line_usage_error(tmp_path):
    result = run_cli("serve", "--udp-port", "99999", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--udp-port" in result.stderr and "99999" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_config_is_immutable():
    with pytest.raises(AttributeError):
        ServeConfig().udp_port = 1  # type: ignore[misc]


def test_print_config_never_shows_a_secret(tmp_path):
    config = load_config(env={"CALLSCTL_TURN_STATIC_AUTH_SECRET": "hunter2"},
                         overrides={"data_dir": str(tmp_path)})
    text = to_toml(config)
    assert "hunter2" not in text and "turn_static_auth_secret = (set; not shown)" in text
    assert "hunter2" in to_toml(config, show_secrets=True)
