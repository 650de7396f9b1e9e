"""A real `callsctl serve` on loopback as a subprocess: its own ports, data dir and log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import issue_token
from tests.support.helpers import REPO, free_port, free_udp_tcp_port


@dataclass
class ServeProcess:
    """A running `callsctl serve` bound to 127.0.0.1 with its own ports and data dir."""

    process: subprocess.Popen[str]
    api_port: int
    udp_port: int
    data_dir: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.api_port}/ws"

    def token(self, call: str = "test-call", user: str = "alice", ttl: float = 3600) -> str:
        return issue_token(load_or_create_secret(self.data_dir), call, user, ttl)

    def join_url(self, call: str = "test-call", user: str = "alice") -> str:
        return f"{self.api_url}/?token={self.token(call, user)}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


def start_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                wait: bool = True) -> ServeProcess:
    """Start `python -m callsctl serve` on loopback and wait until /readyz answers 200."""
    api_port = free_port()
    udp_port = free_udp_tcp_port(avoid=(api_port,))  # its TCP side must not be the API's
    data_dir = tmp_path / f"data-{api_port}"
    log_path = tmp_path / f"serve-{api_port}.log"
    cmd = [sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1",
           "--api-port", str(api_port), "--udp-port", str(udp_port),
           "--data-dir", str(data_dir), *args]
    full_env = dict(os.environ)
    # Tests never ask a public STUN server for the address to advertise.
    full_env["CALLSCTL_STUN_SERVER"] = ""
    full_env.update(env or {})
    log = log_path.open("w")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO, env=full_env)
    server = ServeProcess(process, api_port, udp_port, data_dir, log_path, list(args))
    if wait:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited early ({process.returncode}):\n{server.log()}")
            try:
                if httpx.get(f"{server.api_url}/readyz", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"serve did not become ready in 20 s:\n{server.log()}")
    return server
