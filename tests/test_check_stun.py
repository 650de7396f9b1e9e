"""`callsctl check stun` and the shared STUN client.

Parsing is checked against the RFC 5769 test vectors (typed from the RFC);
the command runs against a real coturn that the tests start on loopback, with
two listening addresses so that RFC 5780 NAT behaviour discovery works, and,
as root, from behind a real NAT built with network namespaces and nftables.
Nothing here talks to a public STUN server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callsctl.check import stunclient
from callsctl.check.stun_cmd import parse_stun_server
from callsctl.errors import CliError
from tests.support.coturn import needs_coturn, start_coturn
from tests.support.helpers import REPO, have, is_root, run_cli

# --- RFC 5769 test vectors -------------------------------------------------------------

PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# 2.1 Sample Request: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY, FINGERPRINT
SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "80220010" "5354554e" "20746573" "7420636c" "69656e74"
    "00240004" "6e0001ff"
    "80290008" "932ff9b1" "51263b36"
    "00060009" "6576746a" "3a683676" "59202020"
    "00080014" "9aeaa70c" "bfd8cb56" "781ef2b5" "b2d3f249" "c1b571a2"
    "80280004" "e57a3bcf"
)
# 2.2 Sample IPv4 Response: XOR-MAPPED-ADDRESS 192.0.2.1:32853
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200008" "0001a147" "e112a643"
    "00080014" "2b91f599" "fd9e90c3" "8c7489f9" "2af9ba53" "f06be7d7"
    "80280004" "c07d4c96"
)
# 2.3 Sample IPv6 Response: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200014" "0002a147" "0113a9fa" "a5d3f179" "bc25f4b5" "bed2b9d9"
    "00080014" "a382954e" "4be67bf1" "1784c97c" "8292c275" "bfe3ed41"
    "80280004" "c8fb0b4c"
)
# 2.4 Sample Request with Long-Term Authentication (username in katakana, SASLprep'd password)
SAMPLE_LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012" "e3839ee3" "8388e383" "aae38383" "e382afe3" "82b90000"
    "0015001c" "662f2f34" "39396b39" "35346436" "4f4c3334" "6f4c3946" "53547679" "36347341"
    "0014000b" "6578616d" "706c652e" "6f726700"
    "00080014" "f6702465" "6dd64a3e" "02b8e071" "2e85c9a2" "8ca89666"
)


def test_rfc5769_sample_request() -> None:
    message = stunclient.parse(SAMPLE_REQUEST)
    assert message.message_class == stunclient.Class.REQUEST
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.attributes["SOFTWARE"] == "STUN test client"
    assert message.attributes["USERNAME"] == "evtj:h6vY"
    assert message.attributes["PRIORITY"] == 0x6E0001FF
    assert message.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert message.check_message_integrity(PASSWORD)
    assert not message.check_message_integrity(b"wrong password")


def test_rfc5769_ipv4_response() -> None:
    message = stunclient.parse(SAMPLE_IPV4_RESPONSE)
    assert message.message_class == stunclient.Class.RESPONSE
    assert message.attributes["SOFTWARE"] == "test vector"
    assert stunclient.mapped_address(message) == ("192.0.2.1", 32853)
    assert message.check_message_integrity(PASSWORD)


def test_rfc5769_ipv6_response() -> None:
    message = stunclient.parse(SAMPLE_IPV6_RESPONSE)
    assert stunclient.mapped_address(message) == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert message.check_message_integrity(PASSWORD)


def test_rfc5769_long_term_request_key() -> None:
    message = stunclient.parse(SAMPLE_LONG_TERM_REQUEST)
    username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert message.attributes["USERNAME"] == username
    assert message.attributes["REALM"] == "example.org"
    assert message.attributes["NONCE"] == b"f//499k954d6OL34oL9FSTvy64sA"
    # "The<U+00AD>M<U+00AA>trIX" after SASLprep is "TheMatrIX" (RFC 5769 2.4).
    key = stunclient.long_term_key(username, "example.org", "TheMatrIX")
    assert message.check_message_integrity(key)


def test_corrupted_vectors_are_rejected() -> None:
    flipped = bytearray(SAMPLE_IPV4_RESPONSE)
    flipped[30] ^= 0x01  # inside XOR-MAPPED-ADDRESS: FINGERPRINT no longer matches
    with pytest.raises(stunclient.StunProtocolError):
        stunclient.parse(bytes(flipped))
    no_cookie = bytearray(SAMPLE_IPV4_RESPONSE)
    no_cookie[4:8] = b"\x00\x00\x00\x00"
    with pytest.raises(stunclient.StunProtocolError):
        stunclient.parse(bytes(no_cookie))
    with pytest.raises(stunclient.StunProtocolError):
        stunclient.parse(SAMPLE_IPV4_RESPONSE[:-4])
    with pytest.raises(stunclient.StunProtocolError):
        stunclient.parse(b"\x80" + SAMPLE_REQUEST[1:])  # top bits set: RTP/DTLS, not STUN


def test_built_messages_round_trip_through_the_parser() -> None:
    request = stunclient.binding_request(**{"CHANGE-REQUEST": 6})
    request.add_message_integrity(PASSWORD)
    parsed = stunclient.parse(bytes(request))
    assert parsed.transaction_id == request.transaction_id
    assert parsed.attributes["CHANGE-REQUEST"] == 6
    assert parsed.check_message_integrity(PASSWORD)


def test_rest_credentials_follow_the_turn_rest_scheme() -> None:
    import base64
    import hashlib
    import hmac

    username, password = stunclient.rest_credentials("s3cret", "alice", 600, now=1_000_000)
    assert username == "1000600:alice"
    expected = hmac.new(b"s3cret", b"1000600:alice", hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("stun.example.org", ("stun.example.org", 3478)),
    ("stun.example.org:19302", ("stun.example.org", 19302)),
    ("stun:127.0.0.1:3479", ("127.0.0.1", 3479)),
    ("[::1]:3478", ("::1", 3478)),
    ("::1", ("::1", 3478)),
])
def test_parse_stun_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_stun_server(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:70000", "host:abc", "[::1",
                                  "stuns:host:5349"])
def test_parse_stun_server_rejects(text: str) -> None:
    with pytest.raises(CliError) as caught:
        parse_stun_server(text)
    assert caught.value.exit_code == 2


def test_stream_framing_rfc4571_and_stun() -> None:
    """Framed reads over a real TCP pair: RFC 4571 prefix and back-to-back STUN messages."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        for framing in ("rfc4571", "stun"):
            channel = stunclient.Channel.tcp(("127.0.0.1", port), 2, framing=framing)  # type: ignore[arg-type]
            peer, _ = listener.accept()
            with channel, peer:
                frames = [SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE]
                wire = b"".join(
                    (len(f).to_bytes(2, "big") + f) if framing == "rfc4571" else f for f in frames)
                peer.sendall(wire[:7])  # split mid-frame: the reader must reassemble
                time.sleep(0.05)
                peer.sendall(wire[7:])
                deadline = time.monotonic() + 2
                assert channel.recv(deadline)[0] == SAMPLE_IPV4_RESPONSE
                assert channel.recv(deadline)[0] == SAMPLE_IPV6_RESPONSE
                with pytest.raises(stunclient.StunTimeout):
                    channel.recv(time.monotonic() + 0.1)


# --- a real coturn on loopback ----------------------------------------------------------


def _by_name(payload: dict) -> dict[str, dict]:
    return {r["name"]: r for r in payload["results"]}


@needs_coturn
def test_check_stun_against_coturn_with_rfc5780(coturn_factory) -> None:
    turn = coturn_factory()
    proc = run_cli("check", "stun", "--server", f"127.0.0.1:{turn.port}", "--json", timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _by_name(json.loads(proc.stdout))
    binding = results["stun binding"]
    assert binding["status"] == "pass"
    details = binding["details"]
    assert details["mapped_address"] == details["local_address"]
    assert details["mapped_address"].startswith("127.0.0.1:")
    assert details["other_address"] == f"127.0.0.2:{turn.alt_port}"
    assert details["rtt_ms"] is not None and details["rtt_ms"] >= 0
    assert binding["figure"].endswith(" ms")
    public = results["public address"]
    assert public["status"] == "pass"
    assert public["details"]["nat"] is False
    assert public["details"]["suggested_config"] == {"ice_host_override": ""}
    behaviour = results["nat behaviour"]
    assert behaviour["status"] == "pass"
    assert behaviour["details"]["mapping"] == "endpoint-independent"
    assert behaviour["details"]["filtering"] == "endpoint-independent"
    assert behaviour["details"]["classic_nat_type"].startswith("open internet")
    assert behaviour["figure"] == "EIM/EIF"


@needs_coturn
def test_check_stun_without_rfc5780_and_human_output(coturn_factory) -> None:
    turn = coturn_factory(two_addresses=False)
    proc = run_cli("check", "stun", "--server", f"stun:127.0.0.1:{turn.port}", timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stun binding" in proc.stdout and "PASS" in proc.stdout
    assert "OTHER-ADDRESS" in proc.stdout  # explains why behaviour was not tested
    assert "Traceback" not in proc.stderr


def test_check_stun_silent_server_fails_without_hanging() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives, never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        proc = run_cli("check", "stun", "--server", f"127.0.0.1:{port}", "--timeout", "0.5",
                       "--json", timeout=20)
        elapsed = time.monotonic() - started
    assert proc.returncode == 1
    (result,) = json.loads(proc.stdout)["results"]
    assert result["status"] == "fail"
    assert "no STUN answer" in result["summary"]
    assert "ice_host_override" in result["fix"]
    assert elapsed < 10


def test_check_stun_usage_errors_are_one_line() -> None:
    proc = run_cli("check", "stun", "--server", "host:notaport", timeout=20)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "invalid --server" in proc.stderr
    proc = run_cli("check", "stun", "--server", "no-such-host.invalid:3478", "--json", timeout=30)
    assert proc.returncode == 1
    assert "cannot resolve" in json.loads(proc.stdout)["results"][0]["summary"]


# --- behind a real NAT (root: network namespaces + nftables masquerade) ----------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def nat_topology() -> Iterator[dict[str, str]]:
    """client ns 10.77.1.2 -> nat ns (masquerade to 10.77.2.1) -> server ns 10.77.2.2/.3."""
    if not is_root():
        pytest.skip("needs root for network namespaces")
    if not (have("ip") and have("nft") and have("turnserver")):
        pytest.skip("needs ip, nft and turnserver")
    tag = f"{os.getpid() % 10000}"
    names = {"cli": f"cs-cli-{tag}", "nat": f"cs-nat-{tag}", "srv": f"cs-srv-{tag}"}
    try:
        for ns in names.values():
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"csc{tag}", "netns", names["cli"], "type", "veth",
            "peer", "name", f"csn{tag}", "netns", names["nat"])
        _ip("link", "add", f"cso{tag}", "netns", names["nat"], "type", "veth",
            "peer", "name", f"css{tag}", "netns", names["srv"])
        _ip("-n", names["cli"], "addr", "add", "10.77.1.2/24", "dev", f"csc{tag}")
        _ip("-n", names["nat"], "addr", "add", "10.77.1.1/24", "dev", f"csn{tag}")
        _ip("-n", names["nat"], "addr", "add", "10.77.2.1/24", "dev", f"cso{tag}")
        _ip("-n", names["srv"], "addr", "add", "10.77.2.2/24", "dev", f"css{tag}")
        _ip("-n", names["srv"], "addr", "add", "10.77.2.3/24", "dev", f"css{tag}")
        for ns, dev in ((names["cli"], f"csc{tag}"), (names["nat"], f"csn{tag}"),
                        (names["nat"], f"cso{tag}"), (names["srv"], f"css{tag}")):
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", names["cli"], "route", "add", "default", "via", "10.77.1.1")
        subprocess.run(["ip", "netns", "exec", names["nat"], "sysctl", "-qw",
                        "net.ipv4.ip_forward=1"], check=True, timeout=10)
        rules = (f"table ip csnat {{\n chain post {{\n  type nat hook postrouting priority 100;\n"
                 f"  oifname \"cso{tag}\" masquerade\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", names["nat"], "nft", "-f", "-"], input=rules,
                       text=True, check=True, timeout=10)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        pytest.skip(f"cannot build the NAT topology here: {exc}")
    yield names
    for ns in names.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.mark.root
def test_check_stun_behind_nat_suggests_ice_host_override(nat_topology, tmp_path: Path) -> None:
    turn = start_coturn(tmp_path, netns=nat_topology["srv"], listen=("10.77.2.2", "10.77.2.3"))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and turn.process.poll() is None:
            listening = subprocess.run(["ip", "netns", "exec", nat_topology["srv"], "ss", "-uln"],
                                       capture_output=True, text=True, timeout=10).stdout
            if f"10.77.2.3:{turn.alt_port}" in listening:
                break
            time.sleep(0.1)
        proc = subprocess.run(
            ["ip", "netns", "exec", nat_topology["cli"], sys.executable, "-m", "callsctl",
             "check", "stun", "--server", f"10.77.2.2:{turn.port}", "--timeout", "0.5",
             "--json"], capture_output=True, text=True, timeout=40, cwd=REPO)
    finally:
        turn.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr + turn.log()
    results = _by_name(json.loads(proc.stdout))
    assert results["stun binding"]["details"]["mapped_address"].startswith("10.77.2.1:")
    public = results["public address"]
    assert public["status"] == "warn"
    assert public["details"]["nat"] is True
    assert public["details"]["suggested_config"] == {"ice_host_override": "10.77.2.1"}
    assert 'ice_host_override = "10.77.2.1"' in public["fix"]
    behaviour = results["nat behaviour"]["details"]
    assert behaviour["other_address"] == f"10.77.2.3:{turn.alt_port}"
    # Linux conntrack NAT keeps the source port and admits only replies from the exact
    # address and port a packet went to.
    assert behaviour["mapping"] == "endpoint-independent"
    assert behaviour["filtering"] == "address-and-port-dependent"
    # pystun3's RFC 3489 order (filtering first) leaves conntrack entries that make Linux
    # pick a new port for the next destination, so it may call the same NAT symmetric.
    assert behaviour["classic_nat_type"] in ("port restricted cone NAT", "symmetric NAT")
    assert results["nat behaviour"]["figure"] == "EIM/APDF"

