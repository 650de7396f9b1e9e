"""`callsctl check turn` against a real coturn on loopback.

coturn runs with `use-auth-secret` + `static-auth-secret` and a realm (what
Calls' `turn_static_auth_secret` pairs with), or with a static user; the
command allocates, relays a datagram to its own echo peer and back, over
UDP and TCP, and must give the right verdict for each way this goes wrong.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from callsctl.check import stunclient
from callsctl.check.turn_cmd import parse_turn_url
from callsctl.errors import CliError
from tests.support.coturn import needs_coturn
from tests.support.helpers import free_udp_tcp_port, run_cli


def _run(*args: str, timeout: float = 30) -> tuple[int, dict[str, dict]]:
    proc = run_cli("check", "turn", *args, "--json", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    payload = json.loads(proc.stdout)
    return proc.returncode, {r["name"]: r for r in payload["results"]}


@needs_coturn
def test_good_secret_relays_over_udp_and_tcp(coturn_factory) -> None:  # noqa: F811
    turn = coturn_factory()
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}", "--secret", "s3cret",
                         "--realm", "example.org")
    assert code == 0, results
    assert list(results) == ["turn udp: allocate", "turn udp: relay round trip",
                             "turn tcp: allocate", "turn tcp: relay round trip"]
    assert all(r["status"] == "pass" for r in results.values()), results
    for transport in ("udp", "tcp"):
        allocate = results[f"turn {transport}: allocate"]["details"]
        assert allocate["realm"] == "example.org"
        assert allocate["relayed"].startswith("127.0.0.")
        assert allocate["username"].endswith(":callsctl-check")
        trip = results[f"turn {transport}: relay round trip"]
        assert trip["figure"].endswith(" ms")
        assert trip["details"]["relay_source_seen_by_peer"] == allocate["relayed"]
        assert trip["details"]["round_trip_ms"] >= trip["details"]["outbound_ms"]


@needs_coturn
def test_bad_secret_is_a_401_verdict(coturn_factory) -> None:  # noqa: F811
    turn = coturn_factory()
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=udp",
                         "--secret", "not-the-secret")
    assert code == 1
    (result,) = results.values()
    assert result["name"] == "turn udp: allocate"
    assert result["status"] == "fail"
    assert result["figure"] == "401"
    assert "static-auth-secret" in result["fix"]


@needs_coturn
def test_wrong_realm_warns_and_names_the_servers_realm(coturn_factory) -> None:  # noqa: F811
    turn = coturn_factory()
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=udp",
                         "--secret", "s3cret", "--realm", "calls.example.com")
    assert code == 0  # clients use the server's realm, so relaying works: a warning
    realm = results["turn udp: realm"]
    assert realm["status"] == "warn"
    assert "'example.org'" in realm["summary"] and "calls.example.com" in realm["fix"]
    assert results["turn udp: relay round trip"]["status"] == "pass"
    # With a bad secret as well, the 401 verdict points at the realm mismatch too.
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=udp",
                         "--secret", "wrong", "--realm", "calls.example.com")
    assert code == 1
    assert "realm is 'example.org'" in results["turn udp: allocate"]["fix"]


@needs_coturn
def test_tcp_transport_only(coturn_factory) -> None:  # noqa: F811
    turn = coturn_factory()
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=tcp",
                         "--secret", "s3cret", "--user", "bob")
    assert code == 0, results
    assert list(results) == ["turn tcp: allocate", "turn tcp: relay round trip"]
    assert results["turn tcp: allocate"]["details"]["username"].endswith(":bob")


@needs_coturn
def test_tcp_listener_off_is_only_a_warning_when_udp_works(coturn_factory) -> None:  # noqa: F811
    turn = coturn_factory(extra=("no-tcp",))
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}", "--secret", "s3cret")
    assert code == 0, results
    assert results["turn udp: relay round trip"]["status"] == "pass"
    tcp = results["turn tcp: allocate"]
    assert tcp["status"] == "warn" and tcp["figure"] == "refused"
    assert "UDP works" in tcp["fix"]
    # Asked for TCP explicitly, the same refusal is a failure.
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=tcp",
                         "--secret", "s3cret")
    assert code == 1 and results["turn tcp: allocate"]["status"] == "fail"


@needs_coturn
def test_static_user_and_wrong_password(coturn_factory) -> None:  # noqa: F811
    turn = coturn_factory(secret=None, users=("alice:wonderland",))
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=udp",
                         "--user", "alice", "--password", "wonderland")
    assert code == 0, results
    assert results["turn udp: relay round trip"]["status"] == "pass"
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=udp",
                         "--user", "alice", "--password", "looking-glass")
    assert code == 1
    result = results["turn udp: allocate"]
    assert result["figure"] == "401" and "'alice'" in result["fix"]


@needs_coturn
def test_loopback_peer_forbidden_is_a_403_warning(coturn_factory) -> None:  # noqa: F811
    turn = coturn_factory(allow_loopback_peers=False)
    code, results = _run("--server", f"turn:127.0.0.1:{turn.port}?transport=udp",
                         "--secret", "s3cret")
    assert code == 0  # the allocation works; only our test peer is refused
    assert results["turn udp: allocate"]["status"] == "pass"
    trip = results["turn udp: relay round trip"]
    assert trip["status"] == "warn" and trip["figure"] == "403"
    assert "allow-loopback-peers" in trip["fix"]


@needs_coturn
def test_stale_nonce_is_retried_once(coturn_factory) -> None:  # noqa: F811
    """coturn with a 1 s nonce lifetime (whole seconds) answers 438 after 2 s; one retry."""
    turn = coturn_factory(extra=("stale-nonce=1",))
    server = ("127.0.0.1", turn.port)
    username, password = stunclient.rest_credentials("s3cret", "nonce-test")
    with stunclient.Channel.udp(server, connect=True) as channel:
        client = stunclient.TurnClient(channel, server, username, password, timeout=2)
        client.allocate()
        time.sleep(2.2)
        client.create_permission(("127.0.0.1", 9))
        assert client.stale_nonce_retries == 1
        client.release()


def test_closed_ports_fail_fast() -> None:
    port = free_udp_tcp_port()
    started = time.monotonic()
    code, results = _run("--server", f"turn:127.0.0.1:{port}", "--secret", "x",
                         "--timeout", "2")
    assert code == 1
    assert time.monotonic() - started < 10
    assert results["turn udp: allocate"]["figure"] == "refused"
    assert results["turn tcp: allocate"]["figure"] == "refused"
    assert "no-udp" in results["turn udp: allocate"]["fix"]


def test_silent_server_times_out_on_both_transports() -> None:
    """Something takes the port but never answers: a timeout verdict, bounded in time."""
    port = free_udp_tcp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.create_server(("127.0.0.1", port)):  # accepts, never answers
        udp.bind(("127.0.0.1", port))
        started = time.monotonic()
        code, results = _run("--server", f"turn:127.0.0.1:{port}", "--secret", "x",
                             "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert code == 1
    assert elapsed < 10
    assert results["turn udp: allocate"]["figure"] == "timeout"
    assert "UDP to port" in results["turn udp: allocate"]["fix"]
    assert results["turn tcp: allocate"]["figure"] == "timeout"


@pytest.mark.parametrize(("text", "host", "port", "transports"), [
    ("turn:turn.example.com", "turn.example.com", 3478, ("udp", "tcp")),
    ("turn:10.0.0.1:3479?transport=tcp", "10.0.0.1", 3479, ("tcp",)),
    ("turn:[::1]:3478?transport=UDP", "::1", 3478, ("udp",)),
    ("127.0.0.1:5000", "127.0.0.1", 5000, ("udp", "tcp")),
])
def test_parse_turn_url(text: str, host: str, port: int, transports: tuple[str, ...]) -> None:
    url = parse_turn_url(text)
    assert (url.host, url.port, url.transports) == (host, port, transports)


@pytest.mark.parametrize("text", ["turns:turn.example.com:5349", "turn:host?transport=sctp",
                                  "turn:host:99999", "turn:host?foo=bar", "turn:"])
def test_parse_turn_url_rejects(text: str) -> None:
    with pytest.raises(CliError) as caught:
        parse_turn_url(text)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("args", [
    ("--server", "turn:127.0.0.1"),  # no credentials
    ("--server", "turn:127.0.0.1", "--user", "alice"),  # no password
    ("--server", "turn:127.0.0.1", "--secret", "s", "--password", "p"),  # both kinds
    ("--server", "turn:127.0.0.1", "--secret", "s", "--peer-ip", "nope"),
])
def test_usage_errors(args: tuple[str, ...]) -> None:
    proc = run_cli("check", "turn", *args, timeout=20)
    assert proc.returncode == 2
    assert proc.stderr.startswith("callsctl: error:") and proc.stderr.count("\n") == 1
