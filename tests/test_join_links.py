"""Join links start where participants reach the server: public_url, --url, TLS, port.

`callsctl token` used to print http://127.0.0.1:8045/?token=… whatever the
server's configuration; links now follow the server's `public_url` (config
file or CALLSCTL_PUBLIC_URL), `--url` overrides it, and without either the
scheme and port follow the server's TLS and api_port settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import verify_token
from tests.support.helpers import run_cli


def token_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("token", "--call", "standup", "--user", "bob", "--json", *args,
                     env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_link_follows_the_configured_public_url(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(f'[serve]\npublic_url = "https://calls.example.com/"\n'
                      f'data_dir = "{tmp_path / "data"}"\napi_port = 9000\n')
    load_or_create_secret(tmp_path / "data")  # as the server's first start does
    payload = token_json("--config", str(config))
    assert payload["link"] == f"https://calls.example.com/?token={payload['token']}"
    env = {"CALLSCTL_PUBLIC_URL": "https://meet.example.org:8443"}
    payload = token_json("--data-dir", str(tmp_path / "data"), env=env)
    assert payload["link"].startswith("https://meet.example.org:8443/?token=")
    # --url wins over the configuration.
    payload = token_json("--config", str(config), "--url", "http://10.0.0.5:8045")
    assert payload["link"].startswith("http://10.0.0.5:8045/?token=")


def test_without_public_url_the_link_follows_port_and_tls(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(f'api_port = 9123\ntls_self_signed = true\n'
                      f'data_dir = "{tmp_path / "data"}"\n')
    load_or_create_secret(tmp_path / "data")
    payload = token_json("--config", str(config))
    assert payload["link"].startswith("https://127.0.0.1:9123/?token=")


def test_a_bad_url_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("token", "--call", "c", "--user", "u", "--data-dir", str(tmp_path),
                     "--url", "calls.example.com", timeout=30)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--url" in result.stderr and "https://" in result.stderr
    result = run_cli("serve", "--public-url", "https://x/?a=1", "--print-config", timeout=30)
    assert result.returncode == 2 and "--public-url" in result.stderr


def test_serve_banner_link_uses_public_url_and_the_token_works(serve_factory: Any) -> None:
    server = serve_factory("--public-url", "https://calls.example.com")
    line = next(line for line in server.log().splitlines()
                if "https://calls.example.com/?token=" in line)
    token = line.split("?token=", 1)[1].strip()
    # The link's token is one this server signed, for its default call.
    grant = verify_token(load_or_create_secret(server.data_dir), token)
    assert grant.call == "default"
    assert "public URL" in server.log()
