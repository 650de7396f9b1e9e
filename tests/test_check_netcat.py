"""`callsctl check udp | tcp | listen` against real netcat (netcat-openbsd) and real kernels.

Interop runs the CLI as a subprocess, as an operator would; the many error
paths run `callsctl.app.main` in-process (same code path, same exit codes)
to keep the suite fast. Firewalled ("silent", "filtered") cases run inside a
network namespace the test creates and always deletes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from callsctl.check.netcat import tcp_probe, udp_probe
from tests.support.helpers import REPO, free_port, have, is_root, run_cli, run_main

CLI = [sys.executable, "-m", "callsctl"]
needs_nc = pytest.mark.skipif(not have("nc"), reason="needs nc (Debian netcat-openbsd)")
needs_netns = pytest.mark.skipif(not (is_root() and have("ip")),
                                 reason="needs root and iproute2 for a network namespace")


# --- helpers ----------------------------------------------------------------------------------


def read_until(stream, needle: bytes, timeout: float = 10.0) -> bytes:  # noqa: ANN001
    """Read a pipe (unbuffered, by fd) until NEEDLE appears; bounded in time."""
    fd = stream.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle!r} not seen within {timeout} s; got {buf!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"stream closed before {needle!r}; got {buf!r}")
            buf += chunk
    return buf


def wait_bound(port: int, kind: int, timeout: float = 5.0) -> None:
    """Wait until some process has bound PORT (our own bind attempt then fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing bound port {port} within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("callsctl: error: "), err
    assert "Traceback" not in err
    return lines[0]


def result_of(stdout: str) -> dict:
    payload = json.loads(stdout)
    assert len(payload["results"]) == 1
    return payload["results"][0]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with loopback up; deleted afterwards."""
    if not (is_root() and have("ip")):
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"ccnc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10, check=False)


def drop_port(ns: str, port: int) -> None:
    """Silently drop UDP and TCP to PORT inside NS (nftables, else iptables)."""
    if have("nft"):
        rules = (
            "table inet callsctl_test {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    udp dport {port} drop\n"
            f"    tcp dport {port} drop\n"
            "  }\n"
            "}\n"
        )
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                       check=True, timeout=10)
    elif have("iptables"):
        for proto in ("udp", "tcp"):
            subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", proto,
                            "--dport", str(port), "-j", "DROP"], check=True, timeout=10)
    else:
        pytest.skip("needs nft or iptables to drop packets")


def run_in_ns(ns: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *CLI, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


# --- check udp --------------------------------------------------------------------------------


@needs_nc
def test_udp_probe_answered_by_nc_listener() -> None:
    """The guide's recipe: `nc -l -u` on the server, someone types a reply."""
    port = free_port(socket.SOCK_DGRAM)
    nc = subprocess.Popen(["nc", "-l", "-u", "127.0.0.1", str(port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_bound(port, socket.SOCK_DGRAM)
        probe = subprocess.Popen([*CLI, "check", "udp", "--host", "127.0.0.1", "--port",
                                  str(port), "--count", "1", "--timeout", "10", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=REPO)
        try:
            assert b"callsctl udp probe 1/1" in read_until(nc.stdout, b"probe 1/1\n")
            nc.stdin.write(b"pong from nc\n")
            nc.stdin.flush()
            out, err = probe.communicate(timeout=20)
        finally:
            stop(probe)
        assert probe.returncode == 0, err
        result = result_of(out)
        assert result["status"] == "pass"
        assert result["details"]["verdict"] == "answered"
        assert result["details"]["sent"] == 1 and result["details"]["answered"] == 1
        assert "pong from nc" in result["details"]["replies"][0]["preview"]
        assert result["details"]["rtt_ms"]["min"] > 0
    finally:
        stop(nc)


def test_udp_probe_closed_port_is_refused() -> None:
    port = free_port(socket.SOCK_DGRAM)
    result = udp_probe("127.0.0.1", port, count=2, timeout=2.0)
    assert result.status == "fail"
    assert result.details["verdict"] == "refused"
    assert "ICMP port unreachable" in result.summary
    assert result.fix and "check listen" in result.fix


def test_udp_cli_refused_exit_code_and_human_output() -> None:
    port = free_port(socket.SOCK_DGRAM)
    proc = run_cli("check", "udp", "--host", "127.0.0.1", "--port", str(port), "--count", "1",
                   "--timeout", "2", timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "ICMP port unreachable" in proc.stdout
    assert "FAIL" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_udp_probe_stun_against_listen_echo_and_python_echo() -> None:
    """--stun matches replies by transaction id (an echo of the request matches too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        server.settimeout(5)

        import threading

        def echo() -> None:
            for _ in range(2):
                try:
                    data, peer = server.recvfrom(2048)
                except OSError:
                    return
                server.sendto(b"not a stun reply", peer)  # ignored: wrong transaction
                server.sendto(data, peer)

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        result = udp_probe("127.0.0.1", port, count=2, timeout=3.0, stun=True)
        thread.join(5)
    assert result.details["verdict"] == "answered", result
    assert result.details["answered"] == 2
    assert "STUN Binding Request" in result.details["replies"][0]["preview"]


@pytest.mark.skipif(not have("turnserver"), reason="needs coturn (turnserver)")
def test_udp_probe_stun_against_coturn_reports_mapped_address(tmp_path: Path) -> None:
    """A real STUN server answers --stun; XOR-MAPPED-ADDRESS is decoded (RFC 8489 §14.2)."""
    port = free_port(socket.SOCK_DGRAM)
    coturn = subprocess.Popen(
        ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
         "--no-tls", "--no-dtls", "--no-cli", "--log-file=stdout", "--simple-log",
         f"--pidfile={tmp_path / 'turn.pid'}", "--realm=test", "--stun-only"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_bound(port, socket.SOCK_DGRAM)
        result = udp_probe("127.0.0.1", port, count=1, timeout=3.0, stun=True)
    finally:
        stop(coturn)
    assert result.details["verdict"] == "answered", result
    mapped = result.details["replies"][0]["mapped_address"]
    assert mapped and mapped.startswith("127.0.0.1:")
    assert "sees you as 127.0.0.1:" in result.summary


@needs_netns
def test_udp_silent_when_firewall_drops_but_refused_when_open(netns: str) -> None:
    """A DROP rule gives silence (no ICMP); the same closed port without it is refused."""
    dropped, open_port = 5004, 5006
    drop_port(netns, dropped)
    silent = run_in_ns(netns, "check", "udp", "--host", "127.0.0.1", "--port", str(dropped),
                       "--count", "2", "--timeout", "0.3", "--json")
    refused = run_in_ns(netns, "check", "udp", "--host", "127.0.0.1", "--port", str(open_port),
                        "--count", "1", "--timeout", "2", "--json")
    assert silent.returncode == 1, silent.stderr
    result = result_of(silent.stdout)
    assert result["details"]["verdict"] == "silent"
    assert result["details"]["sent"] == 2 and result["details"]["answered"] == 0
    assert "firewall" in result["summary"] and "did not answer" in result["summary"]
    assert "check listen" in result["fix"]
    assert refused.returncode == 1, refused.stderr
    assert result_of(refused.stdout)["details"]["verdict"] == "refused"


# --- check tcp --------------------------------------------------------------------------------


@needs_nc
def test_tcp_probe_connects_to_nc_and_gets_reply() -> None:
    port = free_port()
    nc = subprocess.Popen(["nc", "-l", "127.0.0.1", str(port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_bound(port, socket.SOCK_STREAM)
        probe = subprocess.Popen([*CLI, "check", "tcp", "--host", "127.0.0.1", "--port",
                                  str(port), "--message", "hello over tcp", "--timeout", "10",
                                  "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=REPO)
        try:
            read_until(nc.stdout, b"hello over tcp\n")
            nc.stdin.write(b"world\n")
            nc.stdin.flush()
            out, err = probe.communicate(timeout=20)
        finally:
            stop(probe)
        assert probe.returncode == 0, err
        result = result_of(out)
        assert result["details"]["verdict"] == "connected"
        assert result["details"]["connect_ms"]["avg"] > 0
        assert result["details"]["answered"] == 1
        assert "world" in result["details"]["replies"][0]["preview"]
        assert "connect" in result["figure"] and "reply" in result["figure"]
    finally:
        stop(nc)


@needs_nc
def test_tcp_probe_nc_without_reply_still_passes() -> None:
    port = free_port()
    nc = subprocess.Popen(["nc", "-l", "127.0.0.1", str(port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_bound(port, socket.SOCK_STREAM)
        result = tcp_probe("127.0.0.1", port, message="ping", timeout=0.5)
        assert b"ping" in read_until(nc.stdout, b"ping\n")
    finally:
        stop(nc)
    assert result.status == "pass"
    assert result.details["answered"] == 0
    assert "no reply" in result.summary


def test_tcp_probe_closed_port_is_refused() -> None:
    result = tcp_probe("127.0.0.1", free_port(), timeout=2.0)
    assert result.status == "fail"
    assert result.details["verdict"] == "refused"
    assert "nothing listens on TCP" in result.summary


def test_tcp_probe_stun_framed_against_listen_echo() -> None:
    """--stun on TCP sends an RFC 4571 frame; `check listen --tcp --echo` names it ICE-TCP."""
    port = free_port()
    listen = subprocess.Popen([*CLI, "check", "listen", "--tcp", "--bind", "127.0.0.1",
                               "--port", str(port), "--echo", "--count", "1", "--duration",
                               "20", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=REPO)
    try:
        read_until(listen.stderr, b"listening on tcp")
        result = tcp_probe("127.0.0.1", port, stun=True, timeout=5.0)
        out, _ = listen.communicate(timeout=20)
    finally:
        stop(listen)
    assert result.details["verdict"] == "connected"
    assert result.details["answered"] == 1
    assert "STUN Binding Request" in result.details["replies"][0]["preview"]
    heard = result_of(out.decode())
    previews = [e.get("preview", "") for e in heard["details"]["events"]]
    assert any(p.startswith("ICE-TCP STUN Binding Request") for p in previews), previews


@needs_netns
def test_tcp_timed_out_when_firewall_drops(netns: str) -> None:
    drop_port(netns, 5005)
    proc = run_in_ns(netns, "check", "tcp", "--host", "127.0.0.1", "--port", "5005",
                     "--timeout", "0.5", "--json")
    assert proc.returncode == 1, proc.stderr
    result = result_of(proc.stdout)
    assert result["details"]["verdict"] == "timeout"
    assert "filtered" in result["summary"]


# --- check listen -----------------------------------------------------------------------------


@needs_nc
def test_listen_udp_prints_nc_datagrams_and_echoes() -> None:
    """`nc -u` clients send to `check listen --echo`; they get their text back."""
    port = free_port(socket.SOCK_DGRAM)
    listen = subprocess.Popen([*CLI, "check", "listen", "--udp", "--bind", "127.0.0.1",
                               "--port", str(port), "--echo", "--count", "2", "--duration",
                               "20", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=REPO)
    try:
        read_until(listen.stderr, b"listening on udp")
        clients = [subprocess.Popen(["nc", "-u", "-w1", "127.0.0.1", str(port)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL) for _ in range(2)]
        for i, client in enumerate(clients):  # both send at once: nc -w1 quits when idle
            client.stdin.write(f"hello {i}\n".encode())
            client.stdin.close()
        for client in clients:
            client.wait(timeout=10)
        echoes = [client.stdout.read() for client in clients]
        out, err = listen.communicate(timeout=20)
    finally:
        stop(listen)
    assert listen.returncode == 0, err
    assert echoes == [b"hello 0\n", b"hello 1\n"]
    result = result_of(out.decode())
    details = result["details"]
    assert result["status"] == "pass"
    assert details["stopped_by"] == "count"
    assert details["packets"] == 2 and details["bytes"] == 16
    assert len(details["sources"]) == 2
    assert {s["packets"] for s in details["sources"]} == {1}
    assert sorted(e["preview"] for e in details["events"]) == ["'hello 0\\n'", "'hello 1\\n'"]


@needs_nc
def test_listen_tcp_human_output_from_nc() -> None:
    port = free_port()
    listen = subprocess.Popen([*CLI, "check", "listen", "--tcp", "--bind", "127.0.0.1",
                               "--port", str(port), "--count", "1", "--duration", "20"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        read_until(listen.stderr, b"listening on tcp")
        subprocess.run(["nc", "-N", "127.0.0.1", str(port)], input=b"hi from nc\n",
                       capture_output=True, timeout=10, check=False)
        out, err = listen.communicate(timeout=20)
    finally:
        stop(listen)
    text = out.decode()
    assert listen.returncode == 0, err
    assert "'hi from nc\\n'" in text
    assert "connected" in text
    assert "per source" in text and "PASS" in text


def test_listen_ctrl_c_prints_summary() -> None:
    port = free_port(socket.SOCK_DGRAM)
    listen = subprocess.Popen([*CLI, "check", "listen", "--bind", "127.0.0.1", "--port",
                               str(port), "--duration", "30", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        read_until(listen.stderr, b"listening on udp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(bytes.fromhex("80 6f 00 01") + b"\x00" * 12, ("127.0.0.1", port))
        time.sleep(0.5)
        listen.send_signal(signal.SIGINT)
        out, err = listen.communicate(timeout=10)
    finally:
        stop(listen)
    assert listen.returncode == 0, err
    details = result_of(out.decode())["details"]
    assert details["stopped_by"] == "signal"
    assert details["packets"] == 1
    assert details["events"][0]["preview"].startswith("SRTP/RTP PT 111")


def test_listen_nothing_arrived_fails_with_fix(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port(socket.SOCK_DGRAM)
    code, out, _ = run_main(capsys, "check", "listen", "--bind", "127.0.0.1", "--port",
                            str(port), "--duration", "0.3", "--json")
    assert code == 1
    result = result_of(out)
    assert result["details"]["stopped_by"] == "duration"
    assert "nothing arrived" in result["summary"]
    assert "firewall" in result["fix"]


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_listen_port_in_use_one_line(capsys: pytest.CaptureFixture[str], kind: str) -> None:
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == "tcp":
            holder.listen(1)
        port = holder.getsockname()[1]
        code, _, err = run_main(capsys, "check", "listen", f"--{kind}", "--bind", "127.0.0.1",
                                "--port", str(port), "--duration", "1")
    assert code == 1
    line = one_line_error(err)
    assert "already in use" in line and "--port" in line


def test_listen_bind_address_not_local(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "check", "listen", "--bind", "192.0.2.1", "--port", "5000",
                            "--duration", "1")
    assert code == 1
    assert "not an address of this host" in one_line_error(err)


def nobody_runs_python() -> bool:
    """Whether `setpriv --reuid=nobody` can start this interpreter and import callsctl."""
    probe = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            sys.executable, "-c", "import callsctl"], cwd=REPO,
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@needs_netns
def test_listen_privileged_port_without_permission(netns: str) -> None:
    """As nobody, port 80 needs CAP_NET_BIND_SERVICE (a fresh namespace has the 1024 limit)."""
    if not have("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    if not nobody_runs_python():
        pytest.skip("user nobody cannot run this Python (interpreter under a private dir)")
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "setpriv", "--reuid=nobody", "--regid=nogroup",
         "--clear-groups", *CLI, "check", "listen", "--port", "80", "--duration", "1"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={**os.environ, "HOME": "/tmp"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_line_error(proc.stderr)
    assert "CAP_NET_BIND_SERVICE" in line and "sudo" in line


# --- usage and resolution errors: one line, documented exit codes ------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["check", "udp", "--host", "not a host", "--port", "8443"], 2, "invalid host"),
        (["check", "tcp", "--host", "10.0.0.300"], 2, "not a valid IPv4"),
        (["check", "udp", "--host", "127.0.0.1:8443"], 2, "--port"),
        (["check", "udp", "--host", "127.0.0.1", "--port", "70000"], 2, "invalid port"),
        (["check", "tcp", "--host", "127.0.0.1", "--port", "0"], 2, "invalid port"),
        (["check", "udp", "--host", "127.0.0.1", "--port", "http"], 2, "invalid port"),
        (["check", "udp", "--host", "127.0.0.1", "--count", "0"], 2, "invalid count"),
        (["check", "tcp", "--host", "127.0.0.1", "--timeout", "soon"], 2, "invalid duration"),
        (["check", "udp", "--host", "127.0.0.1", "--stun", "--message", "x"], 2, "--stun"),
        (["check", "listen", "--udp", "--tcp", "--duration", "1"], 2, "--udp or --tcp"),
        (["check", "listen", "--port", "99999"], 2, "invalid port"),
        (["check", "listen", "--bind", "not an ip", "--duration", "1"], 2, "invalid host"),
        # RFC 6761: .invalid never resolves, so no DNS query leaves this machine.
        (["check", "udp", "--host", "calls.example.invalid"], 1, "cannot resolve"),
        (["check", "tcp", "--host", "calls.example.invalid", "--json"], 1, "cannot resolve"),
    ],
)
def test_error_paths_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str],
                                  code: int, needle: str) -> None:
    got, out, err = run_main(capsys, *args)
    assert got == code, (out, err)
    assert needle in one_line_error(err)
    assert out == ""


def test_bad_port_one_line_as_subprocess() -> None:
    """The same through `python -m callsctl`, as an operator runs it."""
    proc = run_cli("check", "udp", "--host", "127.0.0.1", "--port", "65536", timeout=30)
    assert proc.returncode == 2
    assert "invalid port" in one_line_error(proc.stderr)


@needs_netns
def test_unresolvable_name_via_real_resolver(netns: str) -> None:
    """getaddrinfo failing for real (DNS pointed at a dead loopback port inside the namespace)."""
    etc = Path("/etc/netns") / netns
    etc.mkdir(parents=True)
    try:
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        proc = run_in_ns(netns, "check", "udp", "--host", "calls.example.test", "--count", "1")
    finally:
        for child in etc.iterdir():
            child.unlink()
        etc.rmdir()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_line_error(proc.stderr)
    assert "cannot resolve host 'calls.example.test'" in line


def test_probe_function_returns_fail_result_for_unresolvable_name() -> None:
    """`check all` calls the probe directly: a DNS failure is a verdict, not an exception."""
    result = udp_probe("calls.example.invalid", 8443)
    assert result.status == "fail"
    assert result.details["verdict"] == "unresolved"


def test_udp_stun_probe_against_running_server(server) -> None:  # noqa: ANN001
    """The SFU's media port answers a bare Binding Request: --stun turns silence into proof."""
    plain = udp_probe("127.0.0.1", server.udp_port, count=1, timeout=0.3)
    assert plain.details["verdict"] == "silent"  # text is not answered by the SFU
    assert "--stun" in plain.fix
    result = udp_probe("127.0.0.1", server.udp_port, count=2, timeout=3.0, stun=True)
    assert result.status == "pass", result
    assert result.details["answered"] == 2
    assert result.details["replies"][0]["mapped_address"].startswith("127.0.0.1:")
    assert "Binding Success Response" in result.details["replies"][0]["preview"]


@needs_nc
def test_listen_udp_on_every_address_echoes_from_the_one_written_to() -> None:
    """Bound to 0.0.0.0 (the default), `check listen --echo` answers `nc -u 127.0.0.3` from
    127.0.0.3: nc's connected socket takes nothing from another address (a host with
    several would otherwise read as "UDP blocked")."""
    port = free_port(socket.SOCK_DGRAM)
    listen = subprocess.Popen([*CLI, "check", "listen", "--udp", "--port", str(port), "--echo",
                               "--count", "1", "--duration", "20", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        read_until(listen.stderr, b"listening on udp")
        echoed = subprocess.run(["nc", "-u", "-w1", "127.0.0.3", str(port)], input=b"vip?\n",
                                capture_output=True, timeout=10, check=False)
        out, err = listen.communicate(timeout=20)
    finally:
        stop(listen)
    assert listen.returncode == 0, err
    assert echoed.stdout == b"vip?\n"
    assert result_of(out.decode())["details"]["packets"] == 1
