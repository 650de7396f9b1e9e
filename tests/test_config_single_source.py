"""Every serve setting is declared once, on its ServeConfig field, and every
interface shows it: a flag (or a deliberate TOML/env-only mark), the CALLSCTL_*
name, the TOML key in --print-config, `check config`, the man page, the README
table and `callsctl serve --help` with its default."""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from callsctl_sfu.config import (
    FLAG_KINDS,
    SECTIONS,
    ConfigError,
    ServeConfig,
    load_config,
    setting_specs,
    specs_by_section,
    to_toml,
)
from callsctl_sfu.tuning import DEFAULT_UDP_BUFFER_SIZE
from tests.support.helpers import run_cli
from tools.clitree import Command, load_tree

REPO = Path(__file__).resolve().parent.parent
SPECS = setting_specs()


@pytest.fixture(scope="module")
def serve_cmd() -> Command:
    cmd = load_tree().find(["serve"])
    assert cmd is not None
    return cmd


def _readme_rows() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- BEGIN generated:config", 1)[1].split("<!-- END generated:config")[0]
    rows: dict[str, list[str]] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells and re.fullmatch(r"`\w+`", cells[0]):
            rows.setdefault(cells[0].strip("`"), []).append(line)
    return rows


def test_every_field_declares_a_section_and_how_serve_takes_it() -> None:
    assert [spec.name for spec in SPECS] == [f.name for f in fields(ServeConfig)]
    for spec in SPECS:
        assert spec.section in SECTIONS, spec.name
        assert spec.flag_kind in (*FLAG_KINDS, None), spec.name
    assert {spec.section for spec in SPECS} == set(SECTIONS)  # no empty section


def test_each_flagged_setting_has_exactly_one_serve_option_and_others_none(
        serve_cmd: Command) -> None:
    names = Counter(name for opt in serve_cmd.options
                    for name in (*opt.names, *opt.secondary))
    for spec in SPECS:
        flag = "--" + spec.name.replace("_", "-")
        if spec.flag_kind is None:  # TOML/env only, on purpose
            assert names[flag] == 0, f"{spec.name} is config-only but serve has {flag}"
        else:
            assert spec.flag == flag and names[flag] == 1, spec.name
            opt = serve_cmd.option(flag)
            assert opt is not None and f"[default: {spec.default_text}]" in opt.help
    own = {"--config", "--print-config", "--help", "-h"}
    setting_flags = {spec.flag for spec in SPECS if spec.flag}
    for opt in serve_cmd.options:  # no option outside the declaration
        assert opt.long in setting_flags | own, opt.long


def test_each_setting_has_one_env_name_that_load_config_reads() -> None:
    envs = [spec.env for spec in SPECS]
    assert len(set(envs)) == len(envs)
    # one value per setting, taken from the environment: the name is the one read
    values = {"int": "7", "float": "7.5", "bool": "false"}
    env = {}
    for spec in SPECS:
        kind = type(spec.default).__name__
        if kind in values:
            env[spec.env] = values[kind]
    for spec in SPECS:
        if spec.env in env:
            try:
                got = load_config(env={spec.env: env[spec.env]})
            except ConfigError as exc:  # a check rejected 7 (e.g. a port range): still read
                assert spec.name in str(exc) and spec.env in str(exc), exc
            else:
                assert str(getattr(got, spec.name)).lower() in ("7", "7.5", "false"), spec.name


def test_print_config_has_every_key_grouped_by_section(tmp_path: Path) -> None:
    config = load_config(env={}, overrides={"data_dir": str(tmp_path)})
    text = to_toml(config)
    assert set(tomllib.loads(text)["serve"]) == {s.name for s in SPECS}  # flat keys
    headers = [m.group(1) for m in re.finditer(r"^# == (\w+):", text, re.M)]
    assert headers == list(SECTIONS)
    positions = [text.index(f"\n{spec.name} = ") for spec in specs_by_section()]
    assert positions == sorted(positions)


def test_man_page_and_readme_table_list_every_setting_once() -> None:
    man = (REPO / "man" / "callsctl.1").read_text(encoding="utf-8")
    configuration = man.split(".SH CONFIGURATION", 1)[1].split(".SH ", 1)[0]
    rows = _readme_rows()
    for spec in SPECS:
        esc = spec.name.replace("-", "\\-")
        assert configuration.count(f"\\fB{esc}\\fR (") == 1, spec.name
        assert len(rows.get(spec.name, [])) == 1, spec.name
        row = rows[spec.name][0]
        assert f"`{spec.env}`" in row and spec.default_text in row
        assert (f"`{spec.flag}`" in row) if spec.flag else ("| — |" in row)
    for section in SECTIONS:
        assert f"| **{section}** |" in (REPO / "README.md").read_text(encoding="utf-8")
        assert f".SS {section}\n" in configuration


def test_serve_help_lists_every_flag_with_its_default() -> None:
    result = run_cli("serve", "--help", env={"COLUMNS": "2000", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines()
             if line.startswith("│ --")}
    for spec in SPECS:
        if spec.flag:
            assert spec.flag in lines, spec.flag
            assert f"[default: {spec.default_text}]" in lines[spec.flag], lines[spec.flag]
    assert "[default: 16777216 (16 MiB)]" in lines["--udp-buffer-size"]
    assert ServeConfig().udp_buffer_size == DEFAULT_UDP_BUFFER_SIZE


def test_check_config_json_names_every_setting(tmp_path: Path) -> None:
    result = run_cli("check", "config", "--json", env={"CALLSCTL_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)["results"][0]["details"]
    assert set(details["config"]) == set(details["sources"]) == {s.name for s in SPECS}


def test_each_kind_of_generated_flag_overrides_the_environment(tmp_path: Path) -> None:
    env = {"CALLSCTL_ENABLE_IPV6": "false", "CALLSCTL_DEFAULT_ENABLED": "true",
           "CALLSCTL_ICE_TCP": "on", "CALLSCTL_SESSION_TIMEOUT": "9"}
    result = run_cli("serve", "--data-dir", str(tmp_path), "--enable-ipv6",
                     "--no-default-enabled", "--ice-tcp", "off", "--session-timeout", "3.5",
                     "--print-config", env=env)
    assert result.returncode == 0, result.stderr
    merged = tomllib.loads(result.stdout)["serve"]
    assert (merged["enable_ipv6"], merged["default_enabled"], merged["ice_tcp"],
            merged["session_timeout"]) == (True, False, False, 3.5)
    # an unset switch does not override the environment
    result = run_cli("serve", "--data-dir", str(tmp_path), "--print-config",
                     env={"CALLSCTL_ENABLE_IPV6": "true"})
    assert tomllib.loads(result.stdout)["serve"]["enable_ipv6"] is True
