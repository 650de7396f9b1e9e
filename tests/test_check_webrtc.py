"""`callsctl check webrtc`: a real call through a live server, and the stage that fails."""

from __future__ import annotations

import json

from callsctl_sfu.datadir import load_or_create_secret
from tests.support.helpers import free_port, run_cli


def test_webrtc_passes_against_a_live_server(server, tmp_path):
    # No --data-dir: the server's data dir is found where `callsctl token` looks, here
    # the default one under XDG_DATA_HOME (a link to the test server's data dir).
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / "callsctl").symlink_to(server.data_dir)
    env = {"XDG_DATA_HOME": str(xdg)}
    result = run_cli("check", "webrtc", "--host", "127.0.0.1", "--api-port",
                     str(server.api_port), "--json", timeout=90, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = {r["name"]: r for r in json.loads(result.stdout)["results"]}
    assert report["ice+dtls"]["status"] == "pass"
    assert report["ice+dtls"]["details"]["candidate_pair"]["protocol"] == "udp"
    media = report["media"]
    assert media["status"] == "pass"
    assert media["details"]["frames_a_from_b"] > 50 and media["details"]["frames_b_from_a"] > 50
    assert media["details"]["rtt_ms"] is not None


def test_webrtc_with_a_token_from_callsctl_token(server):
    token = run_cli("token", "--call", "probe", "--user", "ops", "--data-dir",
                    str(server.data_dir)).stdout.strip()
    result = run_cli("check", "webrtc", "--host", "127.0.0.1", "--api-port",
                     str(server.api_port), "--token", token, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audio both ways" in result.stdout


def test_webrtc_names_the_failing_stage(serve_factory, tmp_path):
    load_or_create_secret(tmp_path)  # a data dir with a secret, but no server on the port
    closed = free_port()
    result = run_cli("check", "webrtc", "--host", "127.0.0.1", "--api-port", str(closed),
                     "--data-dir", str(tmp_path), "--json", "--timeout", "5", timeout=60)
    assert result.returncode == 1
    first = json.loads(result.stdout)["results"][0]
    assert first["name"] == "signaling" and first["status"] == "fail"
    # A server that advertises an address where nothing listens (another loopback
    # address; the server is bound to 127.0.0.1): ICE fails, not signaling.
    server = serve_factory("--ice-host-override", "127.0.0.2")
    result = run_cli("check", "webrtc", "--host", "127.0.0.1", "--api-port",
                     str(server.api_port), "--data-dir", str(server.data_dir), "--json",
                     "--timeout", "6", timeout=90)
    assert result.returncode == 1
    names = {r["name"]: r["status"] for r in json.loads(result.stdout)["results"]}
    assert names.get("signaling") == "pass" and names.get("ice") == "fail"


def test_webrtc_with_a_data_dir_without_a_secret_names_the_path(tmp_path):
    result = run_cli("check", "webrtc", "--host", "127.0.0.1", "--data-dir", str(tmp_path))
    assert result.returncode == 1 and str(tmp_path / "jwt_secret") in result.stderr
    assert not (tmp_path / "jwt_secret").exists()


def test_webrtc_usage_errors(tmp_path):
    # Neither --token nor a local server's data dir: one line saying what to pass.
    result = run_cli("check", "webrtc", "--host", "127.0.0.1",
                     env={"XDG_DATA_HOME": str(tmp_path), "CALLSCTL_DATA_DIR": ""})
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "jwt_secret" in result.stderr and "--token" in result.stderr
    result = run_cli("check", "webrtc", "--host", "127.0.0.1", "--token", "t", "--data-dir",
                     str(tmp_path))
    assert result.returncode == 2 and "at most one of --token or --data-dir" in result.stderr
    result = run_cli("check", "webrtc", "--host", "127.0.0.1", "--token", "garbage")
    assert result.returncode == 2 and "not a callsctl join token" in result.stderr


def test_check_all_includes_a_real_call_when_given_a_data_dir(server):
    result = run_cli("check", "all", "--host", "127.0.0.1", "--api-port", str(server.api_port),
                     "--udp-port", str(server.udp_port), "--tcp-port", str(server.udp_port),
                     "--data-dir", str(server.data_dir), "--json", timeout=120)
    names = {r["name"]: r["status"] for r in json.loads(result.stdout)["results"]}
    assert names.get("media") == "pass", result.stdout
