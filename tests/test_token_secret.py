"""One token-secret behaviour for every command that mints join tokens.

callsctl.localserver.token_secret: a secret given directly (loadtest's
--token-secret / --secret-file) is used as given; else <data dir>/jwt_secret
is read, with the data dir found as `serve` finds it. A missing secret is
never created, by any command, for any data dir (only `serve` creates it):
one error line names the file, how its data dir was chosen, and what to pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callsctl.errors import CliError
from callsctl.localserver import token_secret
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import verify_token
from tests.support.helpers import free_port, run_cli

# Each minting command, run so that the secret is the only thing that can stop it
# before it needs a server (nothing listens on the port: `token` needs none).
COMMANDS = {
    "token": ("token", "--call", "c", "--user", "u"),
    "check webrtc": ("check", "webrtc", "--host", "127.0.0.1", "--timeout", "1"),
    "loadtest": ("loadtest", "--host", "http://127.0.0.1:9", "--duration", "5s",
                 "--join-duration", "1s"),
}


def _no_env(tmp_path: Path) -> dict[str, str]:
    """The default data dir inside the test's tmp dir; no secret from the environment."""
    return {"XDG_DATA_HOME": str(tmp_path / "xdg"), "CALLSCTL_DATA_DIR": "",
            "CALLSCTL_TOKEN_SECRET": ""}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_secret_is_refused_and_never_created(command: str, tmp_path: Path) -> None:
    env = _no_env(tmp_path)
    # 1. An explicit --data-dir without a secret.
    given = tmp_path / "given"
    result = run_cli(*COMMANDS[command], "--data-dir", str(given), env=env, timeout=30)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"no jwt_secret at {given / 'jwt_secret'} (--data-dir)" in result.stderr
    assert "only `callsctl serve` creates it" in result.stderr
    assert not given.exists()
    # 2. The default data dir, the one `serve` would read as this user: still refused.
    default = tmp_path / "xdg" / "callsctl"
    result = run_cli(*COMMANDS[command], env=env, timeout=30)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"no jwt_secret at {default / 'jwt_secret'} (the default data dir)" in result.stderr
    assert not (default / "jwt_secret").exists()
    # 3. CALLSCTL_DATA_DIR, named as such.
    result = run_cli(*COMMANDS[command], env={**env, "CALLSCTL_DATA_DIR": str(given)},
                     timeout=30)
    assert f"{given / 'jwt_secret'} (CALLSCTL_DATA_DIR)" in result.stderr
    assert not given.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_an_existing_secret_is_used(command: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = load_or_create_secret(data)  # what the server's first start does
    args = list(COMMANDS[command])
    if command == "check webrtc":
        args[3:4] = ["127.0.0.1", "--api-port", str(free_port()), "--json"]
    result = run_cli(*args, "--data-dir", str(data), env=_no_env(tmp_path), timeout=60)
    assert "jwt_secret" not in result.stderr, result.stderr
    if command == "token":
        assert result.returncode == 0
        assert verify_token(secret, result.stdout.strip()).call == "c"
    elif command == "check webrtc":  # tokens minted: the call fails at signaling, not before
        first = json.loads(result.stdout)["results"][0]
        assert (first["name"], first["status"]) == ("signaling", "fail")
    else:  # loadtest: admitted, then stopped by the server that is not there
        assert result.returncode == 1 and "cannot reach" in result.stderr


def test_a_secret_given_directly_wins_over_the_data_dir(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSCTL_DATA_DIR", "")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    from_dir = load_or_create_secret(data)
    file = tmp_path / "secret"
    file.write_text("from-file\n")
    assert token_secret(str(data)) == from_dir
    assert token_secret(str(data), secret_file=file) == b"from-file"
    assert token_secret(str(data), secret="given ", secret_file=file) == b"given"
    file.write_text("\n")
    with pytest.raises(CliError, match="is empty"):
        token_secret(str(data), secret_file=file)
    with pytest.raises(CliError, match="cannot read --secret-file"):
        token_secret(None, secret_file=tmp_path / "absent")
    with pytest.raises(CliError, match=r"\(the default data dir\): pass --x"):
        token_secret(None, otherwise="pass --x")
    assert not (tmp_path / "xdg").exists()
