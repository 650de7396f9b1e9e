"""A server bound to every address answers from the address it was asked on.

A host with a secondary address (a floating VIP, a second address in a subnet)
and a server bound to every address: unless the server names its source
(IP_PKTINFO, rtc/pktinfo.py), its answer to a request sent to the secondary
address leaves from the primary one, the address the kernel's route prefers,
and a client's ICE drops it (RFC 8445 §7.2.5.2.1), so a call advertised on
that address never connects. The test builds it: a server namespace with
10.79.0.1/24 and the secondary 10.79.0.9/24 on one veth, a client namespace
with 10.79.0.2/24 on its peer, a real `callsctl serve` in the first and
`callsctl check rtc` or two aiortc participants in the second.

- `callsctl serve` itself: `check rtc` passes on both addresses, and a call
  advertised on the secondary address only connects and carries audio.
- A server that lets the kernel choose (this one with CALLSCTL_PKTINFO=0, as
  other servers do): probing the secondary fails as "wrong source", naming
  the address that answered and the `--bind` that fixes it; bound to the
  secondary, it passes; and the same call never connects.
- Headless Chromium in the client namespace, where the primary address is
  unreachable (a blackhole route: only the VIP is), joins the web client on
  the secondary address and hears the other page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import issue_token
from tests.support.browser import BrowserParticipant, wait_for_audio
from tests.support.chromium import CHROMIUM, launched
from tests.support.helpers import REPO, have, is_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not is_root(), reason="needs root for network namespaces"),
    pytest.mark.skipif(not have("ip"), reason="needs iproute2"),
]

PRIMARY, SECONDARY, CLIENT = "10.79.0.1", "10.79.0.9", "10.79.0.2"
API_PORT, MEDIA_PORT = 18045, 18443


def sh(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    if done.returncode not in (0, 1):
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}")
    return done


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """(server namespace, client namespace), joined by a veth pair; removed after."""
    server, client = f"cs-mh-s-{os.getpid()}", f"cs-mh-c-{os.getpid()}"
    for ns in (server, client):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", "mhs0", "netns", server, "type", "veth", "peer", "name", "mhc0",
           "netns", client)
        sh("ip", "addr", "add", f"{PRIMARY}/24", "dev", "mhs0", ns=server)
        sh("ip", "addr", "add", f"{SECONDARY}/24", "dev", "mhs0", ns=server)  # secondary
        sh("ip", "addr", "add", f"{CLIENT}/24", "dev", "mhc0", ns=client)
        for ns, link in ((server, "mhs0"), (client, "mhc0")):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "link", "set", link, "up", ns=ns)
        yield server, client
    finally:
        for ns in (server, client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def serve_in(ns: str, tmp_path: Path, bind: str, *extra: str, pktinfo: bool = True,
             env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = tmp_path / f"serve-{bind}.log"
    env = {**os.environ, "CALLSCTL_STUN_SERVER": "", "CALLSCTL_PKTINFO": "1" if pktinfo else "0",
           **(env or {})}
    with log.open("w") as out:
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "callsctl", "serve", "--bind", bind,
             "--api-port", str(API_PORT), "--udp-port", str(MEDIA_PORT),
             "--data-dir", str(tmp_path / f"data-{bind}"), *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 30
    while "advertising" not in log.read_text() and time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        time.sleep(0.2)
    assert "advertising" in log.read_text(), log.read_text()
    return server


def check_udp(client: str, host: str) -> dict:
    done = sh(sys.executable, "-m", "callsctl", "check", "rtc", "--host", host, "--udp-port",
              str(MEDIA_PORT), "--tcp-port", str(MEDIA_PORT), "--api-port", str(API_PORT),
              "--timeout", "1", "--json", ns=client)
    assert "Traceback" not in done.stderr, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)["results"]}["rtc udp"]


def call_on(client: str, host: str, tmp_path: Path) -> dict:
    """A 2-person call of aiortc participants from the client namespace to `host`."""
    done = sh(sys.executable, "-m", "tests.support.netns_call", f"ws://{host}:{API_PORT}/ws",
              str(tmp_path / "data-0.0.0.0"), ns=client)
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.browser
def test_browsers_reach_a_call_on_the_secondary_address_only(
        hosts: tuple[str, str], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    server_ns, client_ns = hosts
    sh("ip", "route", "add", "blackhole", f"{PRIMARY}/32", ns=client_ns)  # only the VIP answers
    wrapper = tmp_path / "chromium-in-namespace"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {client_ns} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    origin = f"http://{SECONDARY}:{API_PORT}"
    # UDP only: over ICE-TCP the connection has its address, and a browser falls back to it.
    server = serve_in(server_ns, tmp_path, "0.0.0.0", "--ice-host-override", SECONDARY,
                      "--ice-tcp", "off")
    secret = load_or_create_secret(tmp_path / "data-0.0.0.0")
    try:
        # The page is served from the VIP, not localhost: let it use the (fake) microphone.
        with launched(sync_api, f"--unsafely-treat-insecure-origin-as-secure={origin}",
                      executable=str(wrapper)) as chromium:
            people: list[BrowserParticipant] = []
            try:
                for label in ("ann", "bob"):
                    person = BrowserParticipant(chromium, label)
                    people.append(person)
                    person.join(f"{origin}/?token={issue_token(secret, 'vip', label)}",
                                label.title())
                for person in people:
                    person.wait_media_connected()
                people[0].unmute()
                wait_for_audio(people[1], [people[0].session_id])
            except Exception as exc:
                raise AssertionError("\n".join(p.diagnostics() for p in people)) from exc
            finally:
                for person in people:
                    person.close()
    finally:
        server.terminate()
        server.wait(15)


@pytest.mark.parametrize("engine", ["c", "python"])
def test_serve_bound_to_every_address_answers_from_the_one_asked(
        hosts: tuple[str, str], tmp_path: Path, engine: str) -> None:
    """Both engines: the C paths (ingress, fan-out, consent) and the Python ones (the
    recvmsg reader, the mux's sends) that CALLSCTL_FAST_PATH=0 runs instead."""
    server_ns, client_ns = hosts
    # Advertised on the secondary address only, as a VIP would be.
    server = serve_in(server_ns, tmp_path, "0.0.0.0", "--ice-host-override", SECONDARY,
                      env={"CALLSCTL_FAST_PATH": "0"} if engine == "python" else None)
    try:
        assert check_udp(client_ns, PRIMARY)["status"] == "pass"
        assert check_udp(client_ns, SECONDARY)["status"] == "pass"
        report = call_on(client_ns, SECONDARY, tmp_path)
    finally:
        server.terminate()
        server.wait(15)
    assert report["connected"] == [True, True], report
    assert min(report["frames"]) > 25, report  # each heard the other


def test_a_server_answering_from_another_address_is_named_with_the_bind_that_fixes_it(
        hosts: tuple[str, str], tmp_path: Path) -> None:
    server_ns, client_ns = hosts
    server = serve_in(server_ns, tmp_path, "0.0.0.0", pktinfo=False)
    try:
        assert check_udp(client_ns, PRIMARY)["status"] == "pass"
        wrong = check_udp(client_ns, SECONDARY)
    finally:
        server.terminate()
        server.wait(15)
    assert wrong["status"] == "fail" and wrong["figure"] == "wrong source", wrong
    assert f"answered from {PRIMARY}:{MEDIA_PORT}" in wrong["summary"]
    assert wrong["details"]["answered_from"] == f"{PRIMARY}:{MEDIA_PORT}"
    assert f"--bind {SECONDARY}" in wrong["fix"]

    # The fix: bound to the address clients use, the answer leaves from it.
    server = serve_in(server_ns, tmp_path, SECONDARY)
    try:
        fixed = check_udp(client_ns, SECONDARY)
    finally:
        server.terminate()
        server.wait(15)
    assert fixed["status"] == "pass", fixed
