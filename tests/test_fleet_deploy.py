"""deploy/fleet/: the compose file, its Prometheus config and the fleet dashboard fit together."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from callsctl_sfu.config import setting_names
from tests.support.helpers import REPO

FLEET = REPO / "deploy" / "fleet"


def test_compose_runs_redis_and_nodes_that_share_secrets_on_distinct_ports() -> None:
    yaml = pytest.importorskip("yaml", reason="needs PyYAML (test extra)")
    doc = yaml.safe_load((FLEET / "docker-compose.yml").read_text())
    services = doc["services"]
    assert "redis" in services and "--requirepass" in services["redis"]["command"]
    nodes = {name: s for name, s in services.items() if name.startswith("node-")}
    assert len(nodes) >= 3
    ports = set()
    for name, node in nodes.items():
        env = node["environment"]
        assert env["CALLSCTL_CLUSTER"].startswith("redis://:${REDIS_PASSWORD}@")
        assert env["CALLSCTL_NODE_ID"] == name
        for key in env:  # every CALLSCTL_ variable is a real setting
            assert key[len("CALLSCTL_"):].lower() in setting_names(), key
        ports.add((env["CALLSCTL_API_PORT"], env["CALLSCTL_UDP_PORT"]))
        assert "fleet-secrets:/secrets:ro" in node["volumes"]
        assert "fleet_secret" in " ".join(node["entrypoint"])
        for volume in node["volumes"]:
            assert volume.split(":", 1)[0] in doc["volumes"]
    assert len(ports) == len(nodes)
    prometheus_targets = (FLEET / "prometheus.yml").read_text()
    for name, node in nodes.items():
        assert f'127.0.0.1:{node["environment"]["CALLSCTL_API_PORT"]}' in prometheus_targets
        assert f"node: {name}" in prometheus_targets
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (FLEET / source).exists(), source


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian prometheus)")
def test_fleet_prometheus_config() -> None:
    proc = subprocess.run(["promtool", "check", "config", str(FLEET / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fleet_dashboard_queries_name_real_metrics_per_node() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "fleet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all("node" in e for e in exprs)
    source = "".join(p.read_text() for p in (REPO / "callsctl_sfu").rglob("*.py"))
    for expr in exprs:
        for name in re.findall(r"\b((?:callsctl|rtcd)_[a-z_]+)", expr):
            base = re.sub(r"_total$", "", name)
            if base.startswith("rtcd_process_"):  # prometheus_client's ProcessCollector
                continue
            assert f'"{base}' in source, f"{name} is not a metric callsctl exports"


def test_dashboard_provisioning_loads_the_fleet_dashboard() -> None:
    provider = (REPO / "deploy" / "grafana-provisioning" / "dashboards" / "callsctl.yml")
    assert "/var/lib/grafana/dashboards/callsctl" in provider.read_text()
    assert Path(REPO / "deploy" / "grafana" / "fleet.json").exists()
