"""Join tokens: what verifies, what is refused and why; `callsctl token`."""

from __future__ import annotations

import json
import os
import stat

import jwt
import pytest

from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import TokenError, issue_token, verify_token
from tests.support.helpers import run_cli

SECRET = b"s" * 32


def test_round_trip():
    grant = verify_token(SECRET, issue_token(SECRET, "standup", "alice", 60))
    assert (grant.call, grant.user) == ("standup", "alice")


def test_expired_token_is_refused():
    token = issue_token(SECRET, "c", "u", 10, now=1_000_000)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token)


def test_forged_and_malformed_tokens_are_refused():
    with pytest.raises(TokenError, match="signature"):
        verify_token(SECRET, issue_token(b"x" * 32, "c", "u"))
    with pytest.raises(TokenError, match="malformed"):
        verify_token(SECRET, "not.a.jwt")
    with pytest.raises(TokenError, match="no token"):
        verify_token(SECRET, None)


def test_token_without_call_claim_is_refused():
    token = jwt.encode({"sub": "u", "exp": 4_000_000_000}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="call"):
        verify_token(SECRET, token)


def test_none_algorithm_is_refused():
    token = jwt.encode({"sub": "u", "call": "c", "exp": 4_000_000_000}, None, algorithm="none")
    with pytest.raises(TokenError):
        verify_token(SECRET, token)


def test_secret_is_generated_once_with_mode_0600(tmp_path):
    first = load_or_create_secret(tmp_path)
    assert load_or_create_secret(tmp_path) == first
    mode = stat.S_IMODE(os.stat(tmp_path / "jwt_secret").st_mode)
    assert mode == 0o600


def test_cli_token_verifies_with_the_server_secret(tmp_path):
    load_or_create_secret(tmp_path)  # what the server's first start does
    result = run_cli("token", "--call", "standup", "--user", "bob", "--ttl", "15m",
                     "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    grant = verify_token(load_or_create_secret(tmp_path), payload["token"])
    assert (grant.call, grant.user) == ("standup", "bob")
    assert payload["link"].endswith(f"/?token={payload['token']}")


def test_cli_token_bad_ttl_is_one_line(tmp_path):
    result = run_cli("token", "--call", "c", "--user", "u", "--ttl", "soon",
                     "--data-dir", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--ttl" in result.stderr
    assert "invalid duration" in result.stderr and "Traceback" not in result.stderr


def test_cli_token_never_creates_a_secret(tmp_path):
    """A secret no server uses would sign links every server rejects."""
    missing = tmp_path / "no-such-dir"
    result = run_cli("token", "--call", "c", "--user", "u", "--data-dir", str(missing))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing / "jwt_secret") in lines[0], result.stderr
    assert result.stdout == "" and not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("token", "--call", "c", "--user", "u", "--data-dir", str(empty))
    assert result.returncode == 1 and str(empty / "jwt_secret") in result.stderr
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("user", ["\udcff", "eve\nadmin", "\x00"])
def test_claims_that_cannot_be_stored_or_logged_are_refused(user):
    """A user id reaches the history database and the log."""
    with pytest.raises(TokenError, match="text"):
        issue_token(SECRET, "c", user, 60)
    forged = jwt.encode({"sub": user, "call": "c", "exp": 4_000_000_000}, SECRET,
                        algorithm="HS256")
    with pytest.raises(TokenError, match="text"):
        verify_token(SECRET, forged)
