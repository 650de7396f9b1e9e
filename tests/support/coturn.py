"""A real coturn (turnserver) on loopback with a private config, for STUN/TURN tests."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callsctl.check import stunclient
from tests.support.helpers import have

needs_coturn = pytest.mark.skipif(not have("turnserver"),
                                  reason="coturn (turnserver) not installed")


@dataclass
class Coturn:
    """A turnserver process on 127.0.0.1 (and 127.0.0.2 for RFC 5780), killed at teardown."""

    process: subprocess.Popen[bytes]
    port: int
    alt_port: int
    log_path: Path
    realm: str
    secret: str | None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _port_pair_free(port: int, hosts: tuple[str, ...]) -> bool:
    """port and port+1 (coturn's default alternate port) free for UDP and TCP on every host."""
    for host in hosts:
        for candidate in (port, port + 1):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as sock:
                    try:
                        sock.bind((host, candidate))
                    except OSError:
                        return False
    return True


def _wait_for_binding(port: int, process: subprocess.Popen[bytes], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with stunclient.Channel.udp(("127.0.0.1", port)) as channel:
            try:
                stunclient.binding(channel, ("127.0.0.1", port), 0.2)
                return True
            except (stunclient.StunTimeout, OSError):
                time.sleep(0.05)
    return False


def start_coturn(tmp_path: Path, *, two_addresses: bool = True, realm: str = "example.org",
                 secret: str | None = "s3cret", users: tuple[str, ...] = (),
                 allow_loopback_peers: bool = True, extra: tuple[str, ...] = (),
                 netns: str | None = None, listen: tuple[str, ...] | None = None) -> Coturn:
    """Start coturn with a private config (never /etc/turnserver.conf), no CLI, no daemon."""
    hosts = listen or (("127.0.0.1", "127.0.0.2") if two_addresses else ("127.0.0.1",))
    port = 0
    for _ in range(50):
        candidate = random.randint(20000, 29000)
        if netns or _port_pair_free(candidate, hosts):
            port = candidate
            break
    assert port, "no free port pair for coturn"
    relay_low = random.randint(30000, 32000)
    workdir = tmp_path / f"coturn-{port}"
    workdir.mkdir()
    lines = [f"listening-ip={host}" for host in hosts]
    lines += [
        f"listening-port={port}", f"alt-listening-port={port + 1}",
        f"relay-ip={hosts[0]}", f"min-port={relay_low}", f"max-port={relay_low + 200}",
        f"realm={realm}", "fingerprint", "no-cli", "no-tls", "no-dtls", "simple-log",
        f"log-file={workdir / 'turn.log'}", f"pidfile={workdir / 'turn.pid'}",
        f"userdb={workdir / 'turndb'}", "no-multicast-peers",
    ]
    if secret is not None:
        lines += ["use-auth-secret", f"static-auth-secret={secret}"]
    if users:
        lines += ["lt-cred-mech"] + [f"user={user}" for user in users]
    if allow_loopback_peers:
        lines.append("allow-loopback-peers")
    lines += list(extra)
    config = workdir / "turnserver.conf"
    config.write_text("\n".join(lines) + "\n")
    cmd = ["turnserver", "-c", str(config)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    console = workdir / "console.log"
    with console.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Coturn(process, port, port + 1, workdir / "turn.log", realm, secret)
    if netns is None and not _wait_for_binding(port, process):
        server.stop()
        pytest.fail(f"coturn did not answer on {port}:\n{console.read_text()}\n{server.log()}")
    return server


@pytest.fixture
def coturn_factory(tmp_path: Path) -> Iterator:
    started: list[Coturn] = []

    def factory(**kwargs: object) -> Coturn:
        server = start_coturn(tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
