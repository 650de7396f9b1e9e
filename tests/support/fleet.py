"""Fleet test parts: a real redis-server on a free loopback port, nodes that share secrets.

Each test gets its own redis-server (Debian package; never the system service)
with a temporary dir, and nodes started like tests/support/serve.py starts one
server, with the same join-token secret, admin key and fleet secret in every
data dir (the operator copies these files to each machine, docs/fleet.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from callsctl_sfu.datadir import JWT_SECRET_FILE
from callsctl_sfu.tokens import issue_token
from tests.support.helpers import REPO, free_port, free_udp_tcp_port
from tests.support.serve import ServeProcess

SHARED_FILES = (JWT_SECRET_FILE, "admin_key", "fleet_secret")


class RedisServer:
    """redis-server on 127.0.0.1 (or a given address) with its own dir; no persistence."""

    def __init__(self, tmp_path: Path, bind: str = "127.0.0.1", port: int | None = None,
                 password: str = "", netns: str | None = None, tls: bool = False) -> None:
        self.dir = tmp_path / f"redis-{secrets.token_hex(3)}"
        self.dir.mkdir()
        self.bind = bind
        self.port = port or free_port()
        self.password = password
        self.netns = netns
        self.tls = tls
        self.cert = self.dir / "redis.pem"
        self.key = self.dir / "redis.key"
        if tls:  # self-signed for 127.0.0.1, its own CA
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(self.key), "-out", str(self.cert), "-days", "1",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True, timeout=60)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{self.bind}:{self.port}/0?ssl_ca_certs={self.cert}"
        return f"redis://{auth}{self.bind}:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = ["redis-server", "--bind", self.bind, "--port", str(self.port), "--dir",
               str(self.dir), "--save", "", "--appendonly", "no", "--daemonize", "no",
               "--protected-mode", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.tls:
            cmd[3:5] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                        str(self.cert), "--tls-key-file", str(self.key), "--tls-ca-cert-file",
                        str(self.cert), "--tls-auth-clients", "no"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer in 10 s: {self.log()}")

    def _cli(self) -> list[str]:
        cmd = ["redis-cli", "-h", self.bind, "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", str(self.cert)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def ping(self) -> bool:
        result = subprocess.run([*self._cli(), "ping"], capture_output=True, text=True,
                                timeout=5)
        return result.stdout.strip() == "PONG"

    def cli(self, *args: str) -> str:
        return subprocess.run([*self._cli(), *args], capture_output=True, text=True,
                              timeout=5).stdout.strip()

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def need_redis() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run does)")


def seed_shared(tmp_path: Path) -> Path:
    """One set of the secrets every node of a fleet shares (0600 files)."""
    shared = tmp_path / "shared-secrets"
    if not shared.exists():
        shared.mkdir(mode=0o700)
        for name in SHARED_FILES:
            path = shared / name
            path.write_text(secrets.token_urlsafe(32) + "\n")
            path.chmod(0o600)
    return shared


def start_node(tmp_path: Path, redis_url: str, *args: str, node_id: str = "",
               env: dict[str, str] | None = None, wait: bool = True,
               bind: str = "127.0.0.1", netns: str | None = None,
               host: str = "127.0.0.1") -> ServeProcess:
    """`callsctl serve --cluster URL` with the fleet's shared secrets in its data dir."""
    api_port = free_port()
    udp_port = free_udp_tcp_port(avoid=(api_port,))
    data_dir = tmp_path / f"node-{node_id or api_port}"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    shared = seed_shared(tmp_path)
    for name in SHARED_FILES:
        target = data_dir / name
        shutil.copyfile(shared / name, target)
        target.chmod(0o600)
    log_path = tmp_path / f"node-{node_id or api_port}.log"
    cmd = [sys.executable, "-m", "callsctl", "serve", "--bind", bind,
           "--api-port", str(api_port), "--udp-port", str(udp_port),
           "--data-dir", str(data_dir), "--cluster", redis_url, *args]
    if node_id:
        cmd += ["--node-id", node_id]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    full_env = dict(os.environ)
    full_env["CALLSCTL_STUN_SERVER"] = ""
    full_env.update(env or {})
    log = log_path.open("w")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO, env=full_env)
    server = ServeProcess(process, api_port, udp_port, data_dir, log_path, list(args))
    server.host = host  # type: ignore[attr-defined]
    if not wait:
        return server
    url = f"http://{host}:{api_port}/readyz"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"node exited early ({process.returncode}):\n{server.log()}")
        try:
            if _get(url, netns).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"node did not become ready in 20 s:\n{server.log()}")


def _get(url: str, netns: str | None) -> httpx.Response:
    if netns is None:
        return httpx.get(url, timeout=1)
    result = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null",
                             "-w", "%{http_code}", url], capture_output=True, text=True,
                            timeout=5)
    return httpx.Response(int(result.stdout or 0))


def admin_headers(tmp_path: Path) -> dict[str, str]:
    key = (seed_shared(tmp_path) / "admin_key").read_text().strip()
    return {"Authorization": f"Bearer {key}"}


def no_tracebacks(*nodes: ServeProcess) -> None:
    for node in nodes:
        log = node.log()
        if "Traceback" in log:
            start = max(0, log.index("Traceback") - 300)
            pytest.fail(f"node logged a traceback:\n{log[start:start + 3000]}")


def token(node: ServeProcess, call: str, user: str) -> str:
    return issue_token((node.data_dir / "jwt_secret").read_text().strip().encode(), call,
                       user, 3600)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own on a free loopback port, stopped after."""
    need_redis()
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
