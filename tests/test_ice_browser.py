"""Real Chromium through the web client when UDP to the media port is blocked, and via TURN.

- UDP blocked: an nftables table (unique name, scoped to this test's server
  port, removed in teardown) drops UDP to and from the media port on this host.
  Chromium then has only the server's passive ICE-TCP candidate; both
  participants must connect over TCP (RFC 6544) and hear each other.
- TURN: a real coturn on loopback with `use-auth-secret`; Chromium is forced to
  `iceTransportPolicy: "relay"` with the ICE servers served by GET
  /turn-credentials, so every packet goes through the relay. Credentials whose
  expiry has passed are refused by coturn with 401, which Chromium reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from callsctl_sfu.iceconfig import turn_rest_credentials
from tests.support.browser import BrowserParticipant, wait_for_audio
from tests.support.chromium import CHROMIUM
from tests.support.coturn import start_coturn
from tests.support.helpers import have, is_root

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]

# The candidate pair the browser's ICE transport selected, with both candidates.
SELECTED_PAIR_JS = """
async () => {
  const pc = window.callsctl && window.callsctl.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  const byId = {};
  let pairId = null;
  stats.forEach((r) => {
    byId[r.id] = r;
    if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
  });
  if (!pairId) stats.forEach((r) => {
    if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") pairId = r.id;
  });
  const pair = byId[pairId];
  if (!pair) return null;
  const pick = (c) => c && ({protocol: c.protocol, type: c.candidateType, address: c.address,
                             port: c.port, tcpType: c.tcpType || null,
                             relayProtocol: c.relayProtocol || null});
  return {state: pair.state, local: pick(byId[pair.localCandidateId]),
          remote: pick(byId[pair.remoteCandidateId])};
}
"""

# Force relay-only ICE with the given servers, and record candidate errors.
RELAY_ONLY_JS = """
((servers) => {
  window.__iceErrors = [];
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config) {
    const pc = new Native({...(config || {}), iceServers: servers, iceTransportPolicy: "relay"});
    pc.addEventListener("icecandidateerror", (e) => window.__iceErrors.push(
      {code: e.errorCode, text: e.errorText, url: e.url}));
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
})(%s);
"""


def selected_pair(person: BrowserParticipant, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pair = None
    while time.monotonic() < deadline:
        pair = person.page.evaluate(SELECTED_PAIR_JS)
        if pair and pair.get("local") and pair.get("remote"):
            return pair
        person.page.wait_for_timeout(200)
    raise AssertionError(f"no selected candidate pair: {pair}\n{person.diagnostics()}")


@pytest.fixture
def udp_blocked() -> Iterator:
    """Drop UDP to/from one port on this host with a uniquely named nftables table."""
    if not is_root() or not have("nft"):
        pytest.skip("needs root and nftables (nft) to block UDP")
    tables: list[str] = []

    def block(port: int) -> str:
        name = f"callsctl_test_{uuid.uuid4().hex[:10]}"
        rules = (f"table inet {name} {{\n chain out {{\n  type filter hook output priority 0;"
                 f" policy accept;\n  udp dport {port} drop\n  udp sport {port} drop\n }}\n"
                 f" chain in {{\n  type filter hook input priority 0; policy accept;\n"
                 f"  udp dport {port} drop\n }}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)
        tables.append(name)
        return name

    yield block
    for name in tables:
        subprocess.run(["nft", "delete", "table", "inet", name], capture_output=True, timeout=10)


def test_udp_blocked_browser_connects_over_ice_tcp(browser, serve_factory,  # noqa: F811
                                                    udp_blocked) -> None:
    server = serve_factory("--stun-server", "")
    udp_blocked(server.udp_port)
    people = [BrowserParticipant(browser, label) for label in ("tina", "tom")]
    try:
        for person in people:
            person.join(server.join_url("tcp-call", person.label), person.label.title())
        for person in people:
            person.wait_media_connected()
            person.unmute()
        for person, other in (people, people[::-1]):
            pair = selected_pair(person)
            assert pair["local"]["protocol"] == "tcp", pair
            assert pair["remote"]["protocol"] == "tcp", pair
            assert pair["remote"]["port"] == server.udp_port  # TCP listens on the same number
            assert pair["remote"]["tcpType"] == "passive", pair
            wait_for_audio(person, [other.session_id])
        stats = httpx.get(f"{server.api_url}/stats", timeout=5).json()
        assert stats["ice_tcp"]["connections_bound"] >= 2, stats
        assert stats["media_socket"]["datagrams_in"] == 0, stats  # nothing came over UDP
        assert stats["forwarding"]["rtp_forwarded"] > 0, stats
    except Exception as exc:
        details = "\n".join(p.diagnostics() for p in people)
        raise AssertionError(f"{exc}\n{details}\n--- server log ---\n{server.log()[-3000:]}") \
            from exc
    finally:
        for person in people:
            person.close()


needs_coturn = pytest.mark.skipif(not shutil.which("turnserver"),
                                  reason="coturn (turnserver) not installed")


@needs_coturn
def test_turn_relay_only_browser_gets_media_through_coturn(browser, serve_factory,  # noqa: F811
                                                           tmp_path) -> None:
    turn = start_coturn(tmp_path, two_addresses=False, secret="relay-secret",
                        realm="calls.test")
    people: list[BrowserParticipant] = []
    try:
        server = serve_factory(
            "--stun-server", "", "--ice-tcp", "off",
            "--ice-servers", f"turn:127.0.0.1:{turn.port}?transport=udp",
            "--turn-static-auth-secret", "relay-secret",
            "--turn-credentials-expiration-minutes", "30")
        refused = httpx.get(f"{server.api_url}/turn-credentials", timeout=5)
        assert refused.status_code == 401 and refused.json()["status"] == 401
        version = httpx.get(f"{server.api_url}/version", timeout=5).json()
        assert version["tcp_port"] is None and version["ice"]["tcp_port"] is None  # --ice-tcp off
        assert all(c.startswith("udp ") for c in version["ice"]["candidates"])
        for label in ("rita", "rob"):
            token = server.token("turn-call", label)
            servers = httpx.get(f"{server.api_url}/turn-credentials",
                                headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
            assert servers[0]["username"].endswith(f":{label}")
            person = BrowserParticipant(browser, label)
            people.append(person)
            person.page.add_init_script(RELAY_ONLY_JS % json.dumps(servers))
            person.join(f"{server.api_url}/?token={token}", label.title())
        for person in people:
            person.wait_media_connected()
            person.unmute()
        for person, other in (people, people[::-1]):
            pair = selected_pair(person)
            assert pair["local"]["type"] == "relay", pair
            assert pair["local"]["relayProtocol"] == "udp", pair
            wait_for_audio(person, [other.session_id])
            # The server saw this participant at coturn's relayed address, nothing else.
            relayed = f"media connected from ('127.0.0.1', {pair['local']['port']})"
            assert relayed in server.log(), server.log()[-2000:]
    except Exception as exc:
        details = "\n".join(p.diagnostics() for p in people)
        raise AssertionError(f"{exc}\n{details}\n--- coturn log ---\n{turn.log()[-3000:]}") \
            from exc
    finally:
        for person in people:
            person.close()
        turn.stop()


@needs_coturn
def test_expired_turn_credentials_are_refused_with_401(browser, serve_factory,  # noqa: F811
                                                      tmp_path) -> None:
    turn = start_coturn(tmp_path, two_addresses=False, secret="relay-secret",
                        realm="calls.test")
    person = BrowserParticipant(browser, "eve")
    try:
        server = serve_factory("--stun-server", "", "--ice-tcp", "off")
        username, password, _expiry = turn_rest_credentials("relay-secret", "eve", -60)
        servers = [{"urls": [f"turn:127.0.0.1:{turn.port}?transport=udp"],
                    "username": username, "credential": password}]
        person.page.add_init_script(RELAY_ONLY_JS % json.dumps(servers))
        person.join(server.join_url("expired-call", "eve"), "Eve")
        person.page.wait_for_function("window.__iceErrors.length > 0", timeout=10_000)
        errors = person.page.evaluate("window.__iceErrors")
        assert any(e["code"] == 401 for e in errors), errors
        assert person.page.evaluate("window.callsctl.media") != "connected"
    finally:
        person.close()
        turn.stop()
