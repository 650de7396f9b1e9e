"""Secret files readable by others are tightened to 0600 with a warning.

The policy (docs/reliability.md): a secret the server reads (jwt_secret,
admin_key, --admin-key-file, the TLS key) with any group/other permission bit
is chmod-ed to 0600 at start and a warning names the file and its old mode;
when the server cannot change it (not the owner) the warning says the command
to run. A regenerated self-signed key is 0600 even if the old file was 0644.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from callsctl_sfu.config import ServeConfig
from callsctl_sfu.server import Server
from callsctl_sfu.tls import ensure_self_signed


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loosened(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


async def test_loose_secrets_are_fixed_and_named_at_start(tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    jwt = loosened(data / "jwt_secret", "s" * 64 + "\n")
    generated_key = loosened(data / "admin_key", "k" * 40 + "\n")
    outside_key = loosened(tmp_path / "etc" / "admin.key", "a" * 40 + "\n")
    tls_dir = data / "tls"
    ensure_self_signed(data, [])
    (tls_dir / "self-signed.key").chmod(0o644)
    config = ServeConfig(bind="127.0.0.1", api_port=0, udp_port=0, data_dir=str(data),
                         stun_server="", ice_tcp=False, tls_self_signed=True,
                         admin_key_file=str(outside_key))
    server = Server(config)
    with caplog.at_level(logging.WARNING):
        await server.start()
        await server.stop()
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for path in (jwt, outside_key, tls_dir / "self-signed.key"):
        assert mode(path) == 0o600, path
        assert str(path) in warnings and "0644" in warnings, warnings
    assert mode(generated_key) == 0o644  # not used: --admin-key-file points elsewhere


async def test_generated_admin_key_in_the_data_dir_is_fixed_too(tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    key = loosened(data / "admin_key", "k" * 40 + "\n")
    config = ServeConfig(bind="127.0.0.1", api_port=0, udp_port=0, data_dir=str(data),
                         stun_server="", ice_tcp=False)
    server = Server(config)
    with caplog.at_level(logging.WARNING):
        await server.start()
        await server.stop()
    assert mode(key) == 0o600
    assert any(str(key) in r.getMessage() for r in caplog.records)


def test_a_regenerated_tls_key_is_0600(tmp_path: Path) -> None:
    key = loosened(tmp_path / "tls" / "self-signed.key", "not a key")
    loosened(tmp_path / "tls" / "self-signed.crt", "not a certificate")
    ensure_self_signed(tmp_path, [])
    assert mode(key) == 0o600
