"""/metrics as Prometheus and Grafana consume it, against a real server with a live call.

- the exposition parses (prometheus_client's parser) and `promtool check
  metrics` finds no problem, with rtcd's names and meanings;
- a real Prometheus, started here, scrapes serve and answers a query for
  rtcd_rtc_sessions_total with the live call's sessions;
- the Grafana dashboard is valid JSON and every metric a panel queries is
  in the exposition.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.admin import join
from tests.support.helpers import REPO, free_port, wait_until
from tests.support.prometheus import samples, value
from tests.support.serve import start_serve

DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
RTCD_NAMES = [
    "rtcd_rtc_sessions_total", "rtcd_rtc_conn_states_total", "rtcd_rtc_errors_total",
    "rtcd_rtc_rtp_tracks_total", "rtcd_rtc_rtp_tracks_writes_time_bucket",
    "rtcd_ws_connections_total", "rtcd_ws_messages_total", "rtcd_rtc_connection_time_bucket",
    "rtcd_rtc_dc_open_time_bucket", "rtcd_rtc_client_loss_rate_bucket",
    "rtcd_rtc_client_rtt_bucket", "rtcd_rtc_client_jitter_bucket",
    "rtcd_process_cpu_seconds_total", "rtcd_process_resident_memory_bytes",
    "rtcd_process_open_fds", "rtcd_plugin_calls_process_open_fds",
    "rtcd_rtc_rtp_packets_total", "rtcd_rtc_rtp_bytes_total",
]
OWN_NAMES = [
    "callsctl_forwarded_packets_total", "callsctl_forwarded_bytes_total",
    "callsctl_nacks_answered_total", "callsctl_plis_sent_total", "callsctl_plis_received_total",
    "callsctl_active_calls", "callsctl_udp_rcvbuf_errors_total",
    "callsctl_media_queue_delay_seconds_bucket",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started = start_serve(tmp_path_factory.mktemp("metrics"))
    yield started
    started.stop()


def scrape(server) -> str:
    response = httpx.get(f"{server.api_url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


@pytest.mark.skipif(not shutil.which("promtool") or not shutil.which("prometheus"),
                    reason="promtool/prometheus are not installed (Debian: prometheus)")
async def test_metrics_with_a_live_call_parse_lint_and_are_scraped(server, tmp_path: Path):
    alice = await join(server, "metrics", "alice")
    bob = await join(server, "metrics", "bob", tone=660)
    prometheus = None
    try:
        # Written-time samples and the quality histograms need a sampling tick or two.
        assert await wait_until(lambda: value(samples(scrape(server)),
                                              "rtcd_rtc_rtp_tracks_writes_time_count") > 0, 10)
        text = scrape(server)
        found = samples(text)
        for name in RTCD_NAMES + OWN_NAMES:
            assert name in found, f"{name} missing from /metrics"
        assert value(found, "rtcd_rtc_sessions_total") == 2
        assert value(found, "rtcd_ws_connections_total") == 2
        assert value(found, "callsctl_active_calls") == 1
        assert value(found, "rtcd_rtc_conn_states_total", type="connected") >= 2
        assert value(found, "rtcd_rtc_connection_time_count") >= 2
        assert value(found, "rtcd_rtc_dc_open_time_count") >= 2
        assert value(found, "rtcd_rtc_rtp_tracks_total", direction="in", type="audio") == 2
        assert value(found, "rtcd_rtc_rtp_tracks_total", direction="out", type="audio") == 2
        assert value(found, "rtcd_ws_messages_total", direction="in", type="join") >= 2
        assert value(found, "rtcd_ws_messages_total", direction="out", type="joined") >= 2
        assert value(found, "callsctl_forwarded_packets_total") > 50
        # The forwarded audio's wait in the media socket: counted, and short on an idle host.
        queued = value(found, "callsctl_media_queue_delay_seconds_count")
        assert queued > 50
        assert value(found, "callsctl_media_queue_delay_seconds_bucket", le="0.05") > 0.9 * queued
        assert value(found, "rtcd_rtc_rtp_packets_total", direction="in") > 50
        assert value(found, "rtcd_process_resident_memory_bytes") > 10_000_000

        lint = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                              capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr

        # A real Prometheus scrapes serve every second and answers a query.
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: callsctl\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{server.api_port}']\n")
        log = (tmp_path / "prometheus.log").open("w")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        result: list = []
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline and prometheus.poll() is None:
                try:
                    answer = (await client.get(f"http://127.0.0.1:{port}/api/v1/query",
                                               params={"query": "rtcd_rtc_sessions_total"})).json()
                    result = answer.get("data", {}).get("result", [])
                    if result:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(result[0]["value"][1]) == 2
        assert result[0]["metric"]["job"] == "callsctl"
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
        await alice.close()
        await bob.close()


def test_dashboard_queries_only_metrics_that_serve_exposes(server):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    exposed = set(samples(scrape(server)))
    exprs = [(panel["title"], target["expr"]) for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    assert len(exprs) >= 20
    used: set[str] = set()
    for title, expr in exprs:
        names = set(re.findall(r"\b((?:rtcd|callsctl)_[a-z0-9_]+)", expr))
        assert names, f"panel {title!r} queries no callsctl/rtcd metric: {expr}"
        missing = names - exposed
        assert not missing, f"panel {title!r} uses {missing}, not in /metrics"
        used |= names
    # What an operator looks at first is all there.
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("sessions", "calls", "packets per second", "bitrate", "cpu", "memory",
                  "loss", "round trip", "jitter", "errors"):
        assert topic in titles, topic
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
