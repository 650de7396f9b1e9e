"""Where /metrics is served and who may read it (metrics_port, metrics_bind, metrics_auth).

Operators who expose the API port to the internet move /metrics to a separate
listener (as Mattermost's metrics port 8067) or put it behind the admin key;
the default stays an unauthenticated /metrics on the API port, which is what
the Prometheus example in deploy/ scrapes. Every answer is parsed with
prometheus_client's own parser, as in tests/test_metrics.py.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import free_port, run_cli

PROCESS_CPU = "rtcd_process_cpu_seconds_total"


def names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


def admin_key(server: Any) -> str:
    return (server.data_dir / "admin_key").read_text().strip()


def test_default_metrics_on_the_api_port_without_credentials(server: Any) -> None:
    response = httpx.get(f"{server.api_url}/metrics", timeout=5)
    assert response.status_code == 200
    assert PROCESS_CPU in names(response.text)


def test_separate_metrics_listener_takes_metrics_off_the_api_port(serve_factory: Any) -> None:
    port = free_port()
    server = serve_factory("--metrics-port", str(port), "--metrics-bind", "127.0.0.1")
    moved = httpx.get(f"{server.api_url}/metrics", timeout=5)
    assert moved.status_code == 404
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert PROCESS_CPU in names(response.text)
    # The metrics port serves nothing else: no admin API, no web client.
    for path in ("/api/v1/calls", "/system", "/"):
        assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 404
    # The API port keeps everything else.
    assert httpx.get(f"{server.api_url}/system", timeout=5).status_code == 200
    assert f"127.0.0.1:{port}/metrics" in server.log()


def test_metrics_behind_the_admin_key(serve_factory: Any) -> None:
    server = serve_factory(env={"CALLSCTL_METRICS_AUTH": "admin_key"})
    url = f"{server.api_url}/metrics"
    anonymous = httpx.get(url, timeout=5)
    assert anonymous.status_code == 401
    assert "admin key" in anonymous.json()["error"]
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-key"}, timeout=5)
    assert wrong.status_code == 401
    right = httpx.get(url, headers={"Authorization": f"Bearer {admin_key(server)}"}, timeout=5)
    assert right.status_code == 200
    assert PROCESS_CPU in names(right.text)
    assert "admin key required" in server.log()  # the banner says so


def test_separate_listener_with_the_admin_key(serve_factory: Any) -> None:
    port = free_port()
    server = serve_factory("--metrics-port", str(port), "--metrics-auth", "admin_key")
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url, timeout=5).status_code == 401
    right = httpx.get(url, headers={"Authorization": f"Bearer {admin_key(server)}"}, timeout=5)
    assert right.status_code == 200 and PROCESS_CPU in names(right.text)


def test_metrics_port_in_use_is_one_line_naming_the_flag(serve_factory: Any) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = serve_factory("--metrics-port", str(port), wait=False)
        code = server.process.wait(timeout=30)
    assert code == 1
    line = server.log().strip().splitlines()[-1]
    assert line.startswith("callsctl: error: ") and "--metrics-port" in line
    assert "already in use" in line


def test_bad_metrics_settings_are_usage_errors() -> None:
    result = run_cli("serve", "--metrics-auth", "password", "--print-config", timeout=30)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--metrics-auth" in result.stderr and "admin_key" in result.stderr
    result = run_cli("serve", "--metrics-port", "70000", "--print-config", timeout=30)
    assert result.returncode == 2 and "--metrics-port" in result.stderr
