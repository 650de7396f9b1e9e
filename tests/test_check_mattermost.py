"""`check rtc`, `check rtcd` and `check webrtc --mattermost` against a pion SFU, as in the field.

The SFU is tests/pionsfu/main.go, built here from Debian's pion packages
(golang-go, golang-github-pion-webrtc.v3-dev; GOPATH mode, offline): one UDP
port and one ICE-TCP port for every session through pion's muxes, as rtcd
serves them, so a bare STUN probe is dropped by pion itself and a real
session works. The signaling in front of it is tests/support/standins.py (rtcd's
API, Mattermost with the Calls plugin). Failure cases: bad credentials or
token, plugin disabled, a live call in the channel, a wrong ICE host
override, and UDP dropped by nftables in a network namespace with TCP open.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import REPO, have, is_root, run_cli

GOPATH = Path("/usr/share/gocode")
PION = GOPATH / "src/github.com/pion/webrtc"
CHANNEL = "c" * 26

pytestmark = pytest.mark.skipif(not (have("go") and PION.is_dir()),
                                reason="needs golang-go and golang-github-pion-webrtc.v3-dev")


@pytest.fixture(scope="session")
def pionsfu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build tests/pionsfu in GOPATH mode (Debian's packages, no network)."""
    root = tmp_path_factory.mktemp("pionsfu")
    src = root / "gopath/src/pionsfu"
    src.mkdir(parents=True)
    shutil.copy(REPO / "tests/pionsfu/main.go", src / "main.go")
    # A go.mod in the package's directory turns on GOPATH mode's "minimal module
    # compatibility", which resolves pion's /v3 import paths to Debian's tree.
    (src / "go.mod").write_text("module pionsfu\n\ngo 1.19\n")
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "GOPROXY": "off",
           "GOPATH": f"{root / 'gopath'}:{GOPATH}", "GOCACHE": str(root / "cache")}
    binary = root / "pionsfu"
    proc = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=src, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return binary


@dataclass
class Stack:
    udp_port: int
    tcp_port: int
    control: str
    api_port: int
    netns: str | None

    def stats(self) -> dict[str, int]:
        if self.netns:
            out = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c",
                                  f"import httpx; print(httpx.get('{self.control}/stats').text)"],
                                 capture_output=True, text=True, timeout=20)
            return json.loads(out.stdout)
        return httpx.get(f"{self.control}/stats", timeout=5).json()

    def cli(self, *args: str, timeout: float = 90) -> tuple[int, dict[str, dict], str]:
        cmd = ["check", *args, "--json"]
        if self.netns:
            proc = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-m",
                                   "callsctl", *cmd], capture_output=True, text=True,
                                  timeout=timeout, cwd=REPO)
        else:
            proc = run_cli(*cmd, timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout, proc.stderr
        payload = json.loads(proc.stdout)
        assert payload["ok"] == (proc.returncode == 0)
        return proc.returncode, {r["name"]: r for r in payload["results"]}, proc.stdout


def _start(cmd: list[str], netns: str | None) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """Start a process that prints one JSON ready line; its log goes to a file, not a pipe."""
    full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd
    with tempfile.TemporaryFile(mode="w+") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the ready line (bounded: the process prints it or dies)
        if not line:
            log.seek(0)
            raise AssertionError(f"{cmd[0]} did not start: {log.read()}")
    return proc, json.loads(line)


@contextmanager
def stack(binary: Path, kind: str, *extra: str, override: str | None = None,
          netns: str | None = None) -> Iterator[Stack]:
    """The pion SFU and a signaling stand-in (rtcd or mattermost), torn down after."""
    sfu_cmd = [str(binary), "-udp", "127.0.0.1:0", "-tcp", "127.0.0.1:0"]
    if override:
        sfu_cmd += ["-ice-host-override", override]
    procs: list[subprocess.Popen[str]] = []
    try:
        sfu, ports = _start(sfu_cmd, netns)
        procs.append(sfu)
        control = f"http://127.0.0.1:{ports['control_port']}"
        standin, api = _start([sys.executable, "-m", "tests.support.standins", kind,
                               "--sfu", control, *extra], netns)
        procs.append(standin)
        yield Stack(ports["udp_port"], ports["tcp_port"], control, api["port"], netns)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _rtc_args(s: Stack) -> tuple[str, ...]:
    return ("--host", "127.0.0.1", "--udp-port", str(s.udp_port), "--tcp-port", str(s.tcp_port),
            "--api-port", str(s.api_port), "--timeout", "1")


def _rtcd_url(s: Stack, key: str = "secret-key") -> str:
    return f"http://mattermost:{key}@127.0.0.1:{s.api_port}"


def _mm_args(s: Stack, token: str = "pat") -> tuple[str, ...]:
    return ("webrtc", "--mattermost", f"http://127.0.0.1:{s.api_port}", "--token", token,
            "--channel", CHANNEL, "--timeout", "10")


# --- a bare probe of a pion server ---------------------------------------------------------------


def test_silence_from_rtcd_is_inconclusive_not_a_firewall_failure(pionsfu: Path) -> None:
    with stack(pionsfu, "rtcd") as s:
        code, results, raw = s.cli("all", *_rtc_args(s))
    assert results["server"]["status"] == "pass"
    assert results["server"]["details"]["server_kind"] == "rtcd"
    assert "cannot prove UDP reachability" in results["server"]["summary"]
    udp = results["rtc udp"]
    assert udp["status"] == "warn" and udp["figure"] == "inconclusive"
    assert "pion drops STUN whose ufrag names no session" in udp["summary"]
    assert "check rtcd" in udp["fix"]
    assert "firewall" not in raw.lower()
    assert results["rtc tcp"]["status"] == "pass"  # a TCP connect proves the port is open
    assert results["advertised address"]["figure"] == "unknown"
    assert results["api"]["status"] == "pass" and "load 0.07" in results["api"]["summary"]
    assert code == 0


def test_mattermost_is_recognised_and_its_silence_is_inconclusive(pionsfu: Path) -> None:
    with stack(pionsfu, "mattermost") as s:
        code, results, _ = s.cli("rtc", *_rtc_args(s), "--api-url",
                                 f"http://127.0.0.1:{s.api_port}")
    assert results["server"]["details"]["server_kind"] == "mattermost"
    assert "Calls plugin 1.5.0" in results["server"]["summary"]
    assert results["rtc udp"]["figure"] == "inconclusive"
    assert code == 0


def test_mattermost_without_the_calls_plugin_fails_the_server_check(pionsfu: Path) -> None:
    with stack(pionsfu, "mattermost", "--plugin-disabled") as s:
        code, results, _ = s.cli("rtc", *_rtc_args(s), "--api-url",
                                 f"http://127.0.0.1:{s.api_port}")
    assert code == 1
    assert results["server"]["status"] == "fail"
    assert "Enable Plugin" in results["server"]["fix"]


# --- check rtcd ---------------------------------------------------------------------------------


def test_check_rtcd_opens_a_real_session_and_leaves(pionsfu: Path) -> None:
    with stack(pionsfu, "rtcd") as s:
        code, results, _ = s.cli("rtcd", "--url", _rtcd_url(s))
        after = s.stats()
    assert code == 0, results
    for stage in ("api", "load", "auth", "websocket", "join", "offer/answer", "candidates",
                  "ice", "dtls", "media", "rtt", "ice-tcp", "leave"):
        assert results[stage]["status"] == "pass", (stage, results[stage])
    assert results["ice"]["details"]["candidate_pair"]["protocol"] == "udp"
    assert results["ice"]["details"]["candidate_pair"]["remote"] == f"127.0.0.1:{s.udp_port}"
    assert results["ice-tcp"]["summary"].endswith(f"127.0.0.1:{s.tcp_port}")
    assert after["connected"] == 1 and after["rtp_packets"] > 0
    assert after["sessions"] == 0  # the leave closed it on the SFU


def test_check_rtcd_with_a_wrong_key(pionsfu: Path) -> None:
    with stack(pionsfu, "rtcd") as s:
        code, results, _ = s.cli("rtcd", "--url", _rtcd_url(s, "wrong"))
        after = s.stats()
    assert code == 1
    assert results["auth"]["status"] == "fail"
    assert "client ID and auth key" in results["auth"]["fix"]
    assert "websocket" not in results and after["sessions"] == 0


@contextmanager
def netns() -> Iterator[str]:
    """A network namespace with only loopback up, deleted after."""
    ns = f"i22c{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True,
                       timeout=20)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=20)


def _nft(ns: str, chain: str) -> None:
    rules = (f"table inet i22 {{\n chain input {{\n  type filter hook input priority 0;\n"
             f"  {chain}\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, timeout=20)


needs_netns = pytest.mark.skipif(not (is_root() and have("ip") and have("nft")),
                                 reason="needs root, iproute2 and nftables")


@needs_netns
def test_check_rtcd_names_a_wrong_ice_host_override(pionsfu: Path) -> None:
    """The SFU listens on 127.0.0.1 but advertises 127.0.0.2, where nothing listens.

    As behind a NAT or stateful firewall on the client's side, new inbound UDP
    to anything but the media port is dropped, so the server's own checks
    cannot reach the client and rescue ICE (peer-reflexive) from the wrong address.
    """
    with netns() as ns, stack(pionsfu, "rtcd", override="127.0.0.2", netns=ns) as s:
        _nft(ns, f"udp dport != {s.udp_port} ct state new drop")
        code, results, _ = s.cli("rtcd", "--url", _rtcd_url(s), "--timeout", "8")
    assert code == 1
    ice = results["ice"]
    assert ice["status"] == "fail" and ice["details"]["verdict"] == "wrong ice host override"
    assert f"127.0.0.2:{s.udp_port}" in ice["summary"]
    assert "rtc.ice_host_override" in ice["fix"] and "127.0.0.1" in ice["fix"]
    assert results["leave"]["status"] == "pass"


@needs_netns
def test_check_rtcd_udp_dropped_tcp_open(pionsfu: Path) -> None:
    """nftables in the namespace drops UDP to the media port; ICE-TCP still answers."""
    with netns() as ns, stack(pionsfu, "rtcd", netns=ns) as s:
        _nft(ns, f"udp dport {s.udp_port} drop")
        code, results, _ = s.cli("rtcd", "--url", _rtcd_url(s), "--timeout", "8")
        _, rtc, raw = s.cli("rtc", *_rtc_args(s))
    assert code == 1
    ice = results["ice"]
    assert ice["status"] == "fail" and ice["details"]["verdict"] == "udp blocked"
    assert "open UDP" in ice["fix"]
    assert results["ice-tcp"]["status"] == "pass"
    # the bare probe cannot tell this from a healthy rtcd, and says so
    assert rtc["rtc udp"]["figure"] == "inconclusive" and "firewall" not in raw.lower()


# --- check webrtc --mattermost ------------------------------------------------------------------


def test_webrtc_mattermost_call_with_audio_both_ways(pionsfu: Path) -> None:
    with stack(pionsfu, "mattermost") as s:
        code, results, _ = s.cli(*_mm_args(s))
        deadline = time.monotonic() + 5
        while s.stats()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.1)
        after = s.stats()
    assert code == 0, results
    for stage in ("api", "auth", "plugin", "channel", "websocket", "join", "offer/answer",
                  "candidates", "ice", "dtls", "media", "rtt", "ice-tcp", "leave"):
        assert results[stage]["status"] == "pass", (stage, results[stage])
    frames = results["media"]["details"]["frames_received"]
    assert len(frames) == 2 and min(frames) > 0
    assert after["connected"] == 2 and after["sessions"] == 0


def test_webrtc_mattermost_config_file(pionsfu: Path, tmp_path: Path) -> None:
    with stack(pionsfu, "mattermost", "--token", "secret-pat") as s:
        config = tmp_path / "mm.toml"
        config.write_text(f'url = "http://127.0.0.1:{s.api_port}"\ntoken = "wrong"\n'
                          f'channel = "{CHANNEL}"\n')
        code, results, _ = s.cli("webrtc", "--config", str(config), "--timeout", "5")
        assert code == 1 and results["auth"]["status"] == "fail"  # bad token
        assert "personal access token" in results["auth"]["fix"]
        code, results, _ = s.cli("webrtc", "--config", str(config), "--token", "secret-pat",
                                 "--timeout", "10")
    assert code == 0, results


def test_webrtc_mattermost_plugin_disabled(pionsfu: Path) -> None:
    with stack(pionsfu, "mattermost", "--plugin-disabled") as s:
        code, results, _ = s.cli(*_mm_args(s))
    assert code == 1
    assert results["plugin"]["status"] == "fail" and "Enable Plugin" in results["plugin"]["fix"]
    assert "join" not in results


def test_webrtc_mattermost_does_not_join_a_live_call(pionsfu: Path) -> None:
    with stack(pionsfu, "mattermost", "--live-call") as s:
        code, results, _ = s.cli(*_mm_args(s))
        after = s.stats()
    assert code == 1
    assert results["channel"]["figure"] == "busy"
    assert "websocket" not in results and after["connected"] == 0


def test_usage_errors() -> None:
    for args, needle in [
        (("rtcd", "--url", "http://127.0.0.1:8045"), "no credentials"),
        (("rtcd", "--url", "ftp://a:b@x"), "invalid --url"),
        (("webrtc", "--mattermost", "http://127.0.0.1:1", "--token", "x"), "--channel"),
        (("webrtc", "--mattermost", "chat.example.com", "--token", "x", "--channel", CHANNEL),
         "site URL"),
        (("webrtc", "--channel", CHANNEL, "--host", "x", "--token", "y"), "need --mattermost"),
        (("webrtc", "--config", "/nonexistent.toml"), "cannot read --config"),
    ]:
        proc = run_cli("check", *args, timeout=30)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)


def test_check_all_runs_the_sessions_when_given(pionsfu: Path) -> None:
    with stack(pionsfu, "rtcd") as s:
        code, results, _ = s.cli("all", *_rtc_args(s), "--rtcd-url", _rtcd_url(s))
    assert code == 0, results
    assert results["rtc udp"]["figure"] == "inconclusive"
    assert results["rtcd ice"]["status"] == "pass" and results["rtcd leave"]["status"] == "pass"
    with stack(pionsfu, "mattermost") as s:
        code, results, _ = s.cli("all", "--host", "127.0.0.1", "--udp-port", str(s.udp_port),
                                 "--tcp-port", str(s.tcp_port), "--timeout", "1",
                                 "--mattermost", f"http://127.0.0.1:{s.api_port}",
                                 "--token", "pat", "--channel", CHANNEL)
    assert code == 0, results
    assert results["server"]["details"]["server_kind"] == "mattermost"
    assert results["mattermost media"]["status"] == "pass"


def test_webrtc_mattermost_force_turn_without_turn_configured(pionsfu: Path) -> None:
    with stack(pionsfu, "mattermost") as s:
        code, results, _ = s.cli(*_mm_args(s), "--force-turn")
    assert code == 1
    assert results["turn"]["status"] == "fail" and "ICE Servers" in results["turn"]["fix"]


@pytest.mark.skipif(not have("turnserver"), reason="needs coturn")
def test_webrtc_mattermost_force_turn_and_tcp_relay_through_the_plugins_turn(
        pionsfu: Path, tmp_path: Path) -> None:
    from tests.support.coturn import start_coturn

    coturn = start_coturn(tmp_path, two_addresses=False, secret=None, users=("calls:pw",))
    turn = ("--turn-user", "calls", "--turn-pass", "pw")
    try:
        with stack(pionsfu, "mattermost", "--turn", f"turn:127.0.0.1:{coturn.port}", *turn) as s:
            relayed = s.cli(*_mm_args(s), "--force-turn")
            no_tcp = s.cli(*_mm_args(s), "--force-tcp")  # this TURN URL is UDP only
        with stack(pionsfu, "mattermost", "--turn",
                   f"turn:127.0.0.1:{coturn.port}?transport=tcp", *turn) as s:
            over_tcp = s.cli(*_mm_args(s), "--force-tcp")
    finally:
        coturn.stop()
    for code, results, _ in (relayed, over_tcp):
        assert code == 0, results
        assert results["ice"]["details"]["candidate_pair"]["local_type"] == "relay"
        assert results["media"]["status"] == "pass"
    code, results, _ = no_tcp
    assert code == 1 and "?transport=tcp" in results["turn"]["fix"]


def test_check_rtcd_against_nothing_fails_at_the_api() -> None:
    from tests.support.helpers import free_port

    proc = run_cli("check", "rtcd", "--url", f"http://id:key@127.0.0.1:{free_port()}", "--json",
                   "--timeout", "3", timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    results = {r["name"]: r for r in json.loads(proc.stdout)["results"]}
    assert list(results) == ["api"] and "is rtcd running" in results["api"]["fix"]
