"""The fleet's series on each node's /metrics, every one labelled with the node id.

A Prometheus scraping several nodes can tell them apart by target anyway;
the `node` label lets dashboards name nodes as the fleet does (`fleet list`)
and join with callsctl_fleet_node_info on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from callsctl_sfu.fleet.node import FleetNode


class FleetCollector(Collector):
    def __init__(self, node: FleetNode) -> None:
        self.node = node

    def collect(self) -> Iterable[Metric]:
        node = self.node
        manager = node.server.manager
        info = GaugeMetricFamily("callsctl_fleet_node_info",
                                 "This node in the fleet: 1, labelled with its id and state",
                                 labels=["node", "state", "api_url"])
        info.add_metric([node.node_id, node.state, node.api_url], 1)
        yield info
        up = GaugeMetricFamily("callsctl_fleet_redis_up",
                               "1 while the fleet's Redis answers this node", labels=["node"])
        up.add_metric([node.node_id], 1 if node.redis_up else 0)
        yield up
        nodes = GaugeMetricFamily("callsctl_fleet_nodes",
                                  "Nodes registered in the fleet, as this node last saw",
                                  labels=["node"])
        nodes.add_metric([node.node_id], len(node.nodes))
        yield nodes
        calls = GaugeMetricFamily("callsctl_fleet_hosted_calls", "Calls hosted on this node",
                                  labels=["node"])
        calls.add_metric([node.node_id], len(manager.calls) if manager else 0)
        yield calls
        sessions = GaugeMetricFamily("callsctl_fleet_hosted_sessions",
                                     "Sessions in calls hosted on this node", labels=["node"])
        sessions.add_metric([node.node_id], len(manager.participants) if manager else 0)
        yield sessions
        relayed = CounterMetricFamily("callsctl_fleet_relayed_connections",
                                      "Signaling connections relayed between nodes: out = "
                                      "from this node to a host, in = to this node as host",
                                      labels=["node", "direction"])
        relayed.add_metric([node.node_id, "out"], node.relayed_out)
        relayed.add_metric([node.node_id, "in"], node.relayed_in)
        yield relayed
