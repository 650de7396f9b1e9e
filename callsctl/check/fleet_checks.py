"""`check all` against a fleet node: every node's media port, as clients would reach it.

A client's media goes to the node that hosts its call, which may not be the
node whose API it reached. So when the probed server says it is a fleet node
(`/version` has `node`), its public `/fleet` list (node ids, states and the
media addresses they advertise: what clients see in ICE candidates anyway)
is read and each other node's advertised UDP media port gets the same STUN
probe `rtc udp` sends.
"""

from __future__ import annotations

import ipaddress
import socket

from callsctl.check.result import CheckResult
from callsctl.check.rtc import RtcProbe, probe_udp


def is_fleet_node(probe: RtcProbe) -> bool:
    info = probe.version()
    return bool(info and info.get("node"))


def _resolve(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        try:
            return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
        except OSError:
            return None


def fleet_results(probe: RtcProbe) -> list[CheckResult]:
    info = probe.version() or {}
    here = info.get("node")
    listing = probe.api("/fleet")
    if listing.status != 200 or not isinstance(listing.body, dict):
        return [CheckResult("fleet", "warn", f"node {here} did not list its fleet at "
                            f"{listing.url} ({listing.error or listing.status})",
                            fix="upgrade the node, or run `check all` against each node")]
    nodes = [n for n in listing.body.get("nodes", []) if isinstance(n, dict)]
    results = [CheckResult("fleet", "pass", f"node {here} is one of {len(nodes)} node(s): "
                           + ", ".join(f"{n.get('node_id')} ({n.get('state')})" for n in nodes),
                           figure=f"{len(nodes)} nodes",
                           details={"node": here, "nodes": nodes})]
    for node in nodes:
        if node.get("node_id") == here:
            continue  # `rtc udp` and `advertised address` covered it
        name = f"fleet {node.get('node_id')} udp"
        host, port = str(node.get("media_host") or ""), node.get("media_port")
        ip = _resolve(host)
        if ip is None or not isinstance(port, int):
            results.append(CheckResult(name, "fail", f"advertises media at {host}:{port}, "
                                       "which does not resolve",
                                       fix="set that node's ice_host_override to an address "
                                           "clients reach"))
            continue
        outcome = probe_udp((ip, port), probe.target.timeout)
        where = f"UDP {host}:{port}"
        if outcome.ok and outcome.rtt_ms is not None:
            results.append(CheckResult(name, "pass", f"STUN Binding answered on {where}",
                                       figure=f"{outcome.rtt_ms:.1f} ms",
                                       details=outcome.as_details()))
        else:
            results.append(CheckResult(
                name, "fail", f"{where}: {outcome.error}", figure=outcome.kind,
                fix="clients whose call that node hosts cannot send it media: open UDP "
                    f"{port} to {host} in the firewall, or correct that node's "
                    "ice_host_override / ice_host_port_override",
                details=outcome.as_details()))
    return results
