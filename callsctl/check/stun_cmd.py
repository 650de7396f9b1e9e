"""`callsctl check stun`: public address, RTT and NAT behaviour as a STUN server sees them.

The SFU needs to know the address clients can reach it at. Without an ICE
host override it asks a STUN server (the seed deployment's default is
stun.global.calls.mattermost.com:3478), so this check answers the operator's
questions directly: does outgoing UDP to the STUN server work, what is our
public address, is this host behind NAT (then `ice_host_override` and port
forwarding are needed) and how does that NAT behave.

Protocols: a Binding transaction (RFC 5389/8489); NAT behaviour discovery
(RFC 5780 sections 4.3 and 4.4) when the server offers OTHER-ADDRESS, i.e.
listens on two addresses and ports (coturn does with two --listening-ip); the
classic RFC 3489 NAT type from pystun3 for operators used to those names.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import stun as pystun
import typer

from callsctl.check import app
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.check.stunclient import (
    Address,
    Channel,
    StunErrorResponse,
    StunProtocolError,
    StunTimeout,
    binding,
    fmt_addr,
    mapped_address,
    parse_host_port,
    resolve,
    route_local_ip,
)
from callsctl.errors import EXIT_USAGE, fail
from callsctl_sfu.rtc.hostaddrs import interface_addresses

DEFAULT_STUN_SERVER = "stun.global.calls.mattermost.com:3478"
STUN_PORT = 3478
CHANGE_IP = 0x04  # CHANGE-REQUEST flags (RFC 5780 7.2)
CHANGE_PORT = 0x02

MAPPING_TEXT = {
    "endpoint-independent": "endpoint-independent mapping (the same public port for every "
    "destination: STUN-discovered addresses are usable)",
    "address-dependent": "address-dependent mapping (a new public port per destination "
    "address: symmetric NAT)",
    "address-and-port-dependent": "address-and-port-dependent mapping (a new public port "
    "per destination address and port: symmetric NAT)",
}
FILTERING_TEXT = {
    "endpoint-independent": "endpoint-independent filtering (anyone may send to a mapped port)",
    "address-dependent": "address-dependent filtering (only hosts we sent to may answer)",
    "address-and-port-dependent": "address-and-port-dependent filtering (only the exact "
    "address and port we sent to may answer)",
}
ABBREVIATION = {"endpoint-independent": "EI", "address-dependent": "AD",
                "address-and-port-dependent": "APD"}  # RFC 5780 / RFC 4787 shorthand
CLASSIC_NAMES = {
    pystun.OpenInternet: "open internet (no NAT, no firewall)",
    pystun.FullCone: "full cone NAT",
    pystun.RestricNAT: "restricted cone NAT",
    pystun.RestricPortNAT: "port restricted cone NAT",
    pystun.SymmetricNAT: "symmetric NAT",
    pystun.SymmetricUDPFirewall: "symmetric UDP firewall (no NAT, inbound filtered)",
    pystun.Blocked: "UDP blocked",
    pystun.ChangedAddressError: "not determined (no answer from the server's other address)",
}


def parse_stun_server(text: str) -> tuple[str, int]:
    """'host', 'host:port' or a 'stun:host:port' URI (RFC 7064); usage error when malformed."""
    value = text.strip()
    for scheme in ("stun:", "stuns:"):
        if value.lower().startswith(scheme):
            if scheme == "stuns:":
                fail("stuns: (STUN over TLS) is not supported; use stun:HOST:PORT", EXIT_USAGE)
            value = value[len(scheme):]
    try:
        return parse_host_port(value, STUN_PORT)
    except ValueError as exc:
        fail(f"invalid --server {text!r}: {exc} (expected HOST:PORT)", EXIT_USAGE)


def local_addresses() -> set[str]:
    """Every address configured on this host's interfaces (rtc/hostaddrs.py)."""
    return {address for _family, address in interface_addresses()}


@dataclass
class StunFindings:
    """Everything one run learnt; the CheckResults are derived from it."""

    server: str
    server_addr: Address | None = None
    local: Address | None = None
    mapped: Address | None = None
    rtt_ms: float | None = None
    other_address: Address | None = None
    response_origin: Address | None = None
    software: str | None = None
    mapping: str | None = None
    filtering: str | None = None
    classic_type: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_details(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "server_address": fmt_addr(self.server_addr) if self.server_addr else None,
            "local_address": fmt_addr(self.local) if self.local else None,
            "mapped_address": fmt_addr(self.mapped) if self.mapped else None,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "other_address": fmt_addr(self.other_address) if self.other_address else None,
            "software": self.software,
            "mapping": self.mapping,
            "filtering": self.filtering,
            "classic_nat_type": self.classic_type,
            "notes": self.notes,
        }


def _discover_mapping(channel: Channel, found: StunFindings, timeout: float) -> None:
    """RFC 5780 4.3: compare mapped addresses towards the primary and the alternate addresses."""
    assert found.server_addr and found.other_address and found.mapped
    primary_port = found.server_addr[1]
    alt_ip, alt_port = found.other_address
    if found.mapped == found.local:  # test I already shows there is no NAT
        found.mapping = "endpoint-independent"
        return
    try:
        second = mapped_address(binding(channel, (alt_ip, primary_port), timeout).message)
        if second == found.mapped:
            found.mapping = "endpoint-independent"
            return
        third = mapped_address(binding(channel, (alt_ip, alt_port), timeout).message)
    except (StunTimeout, StunErrorResponse, StunProtocolError, OSError) as exc:
        found.notes.append(f"mapping test towards the other address failed: {exc or 'timeout'}")
        return
    found.mapping = "address-dependent" if third == second else "address-and-port-dependent"


def _discover_filtering(channel: Channel, found: StunFindings, timeout: float) -> None:
    """RFC 5780 4.4: ask the server to answer from another IP and port, then another port."""
    assert found.server_addr
    for flags, verdict in ((CHANGE_IP | CHANGE_PORT, "endpoint-independent"),
                           (CHANGE_PORT, "address-dependent")):
        try:
            binding(channel, found.server_addr, timeout, **{"CHANGE-REQUEST": flags})
        except StunTimeout:
            continue
        except StunErrorResponse as exc:
            found.notes.append(f"server refused CHANGE-REQUEST ({exc}); filtering not tested")
            return
        except (StunProtocolError, OSError) as exc:
            found.notes.append(f"filtering test failed: {exc}")
            return
        found.filtering = verdict
        return
    found.filtering = "address-and-port-dependent"


def _classic_nat_type(found: StunFindings, timeout: float) -> None:
    """pystun3's RFC 3489 test sequence, in a thread so that a misbehaving server cannot hang us.

    pystun3 retries each test up to four times on the socket timeout we set,
    and loops while it receives unrelated datagrams; the join timeout is the
    hard bound.
    """
    assert found.server_addr and found.local
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((found.local[0], 0))
    sock.settimeout(min(0.3, max(timeout / 4, 0.05)))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["type"] = pystun.get_nat_type(
                sock, found.local[0], sock.getsockname()[1],
                stun_host=found.server_addr[0], stun_port=found.server_addr[1])[0]
        except Exception as exc:  # noqa: BLE001 - third-party parser; any failure = unknown
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=run, name="pystun3", daemon=True)
    worker.start()
    worker.join(timeout=max(4 * timeout, 3.0))
    sock.close()
    if "type" in outcome:
        found.classic_type = CLASSIC_NAMES.get(outcome["type"], str(outcome["type"]))
    else:
        found.notes.append(
            "classic NAT type not determined: " + outcome.get("error", "pystun3 did not finish"))


def probe(server_text: str, timeout: float) -> tuple[StunFindings, CheckResult | None]:
    """Run the Binding and NAT tests; a CheckResult is returned when the Binding failed."""
    host, port = parse_stun_server(server_text)
    found = StunFindings(server=f"{host}:{port}")
    name = "stun binding"
    try:
        found.server_addr = resolve(host, port)
        local_ip = route_local_ip(found.server_addr)
    except StunProtocolError as exc:
        return found, CheckResult(name, "fail", str(exc),
                                  fix="check the STUN server name and this host's DNS/routes",
                                  details=found.as_details())
    with Channel.udp(found.server_addr, bind=(local_ip, 0)) as channel:
        found.local = channel.local
        try:
            reply = binding(channel, found.server_addr, timeout)
        except StunTimeout:
            return found, CheckResult(
                name, "fail",
                f"no STUN answer from {found.server} ({fmt_addr(found.server_addr)}) "
                f"within {timeout:g} s",
                fix="allow outgoing UDP to port "
                f"{port} (firewall, security group), or check the server; without STUN the "
                "SFU cannot discover its public address, so set ice_host_override",
                details=found.as_details())
        except StunErrorResponse as exc:
            return found, CheckResult(name, "fail", f"{found.server} answered with error {exc}",
                                      fix="use a STUN server that answers Binding requests",
                                      details=found.as_details())
        except (StunProtocolError, OSError) as exc:
            return found, CheckResult(name, "fail", f"STUN to {found.server} failed: {exc}",
                                      details=found.as_details())
        attrs = reply.message.attributes
        found.rtt_ms = reply.rtt_ms
        found.mapped = mapped_address(reply.message)
        found.software = attrs.get("SOFTWARE")
        if "OTHER-ADDRESS" in attrs:
            found.other_address = (str(attrs["OTHER-ADDRESS"][0]), int(attrs["OTHER-ADDRESS"][1]))
        if found.mapped is None:
            return found, CheckResult(name, "fail",
                                      f"{found.server} answered without a mapped address",
                                      fix="use an RFC 5389 STUN server",
                                      details=found.as_details())
        behaviour_timeout = min(timeout, 1.5)
        if found.other_address is not None:
            _discover_mapping(channel, found, behaviour_timeout)
            _discover_filtering(channel, found, behaviour_timeout)
    if found.other_address is not None and found.local and ":" not in found.local[0]:
        _classic_nat_type(found, behaviour_timeout)
    return found, None


def _public_address_result(found: StunFindings, locals_: set[str]) -> CheckResult:
    """What the mapped address says about NAT and the `ice_host_override` setting."""
    assert found.mapped and found.local
    public_ip, public_port = found.mapped
    details = found.as_details()
    on_host = public_ip in locals_ or public_ip == found.local[0]
    ip = ipaddress.ip_address(public_ip)
    if on_host and public_port == found.local[1]:
        details["nat"] = False
        details["suggested_config"] = {"ice_host_override": ""}
        return CheckResult(
            "public address", "pass",
            f"no NAT: {found.server} sees this host's own address {public_ip}; "
            "ice_host_override can stay empty (the interface address is advertised)",
            figure=public_ip, details=details)
    details["nat"] = True
    details["suggested_config"] = {"ice_host_override": public_ip}
    if on_host:
        return CheckResult(
            "public address", "warn",
            f"own address {public_ip} but port {found.local[1]} was rewritten to {public_port}: "
            "a port-translating firewall sits in the path",
            figure=fmt_addr(found.mapped),
            fix="make sure the media port (UDP/TCP 8443) is forwarded 1:1, or set "
            "ice_host_port_override to the port clients reach",
            details=details)
    scope = "" if ip.is_global else (
        f" ({public_ip} is not a public address: the STUN server is inside your network or "
        "behind carrier-grade NAT, so clients on the internet may not reach it)")
    return CheckResult(
        "public address", "warn",
        f"behind NAT: local {found.local[0]}, public {public_ip}{scope}",
        figure=public_ip,
        fix=f'set ice_host_override = "{public_ip}" (CALLSCTL_ICE_HOST_OVERRIDE={public_ip}) '
        f"and forward UDP 8443 and TCP 8443 from {public_ip} to {found.local[0]}",
        details=details)


def _behaviour_result(found: StunFindings) -> CheckResult:
    details = found.as_details()
    if found.other_address is None:
        return CheckResult(
            "nat behaviour", "pass",
            f"not tested: {found.server} does not offer OTHER-ADDRESS (RFC 5780); use a "
            "STUN server with two addresses (e.g. coturn with two --listening-ip) to test it",
            figure="n/a", details=details)
    parts = []
    if found.mapping:
        parts.append(MAPPING_TEXT[found.mapping])
    if found.filtering:
        parts.append(FILTERING_TEXT[found.filtering])
    if found.classic_type:
        parts.append(f"classic type: {found.classic_type}")
        if found.classic_type == CLASSIC_NAMES[pystun.SymmetricNAT] and (
                found.mapping == "endpoint-independent"):
            # RFC 3489's order tests filtering before mapping; the filtered replies can leave
            # state in a stateful NAT (Linux conntrack) that moves the next mapping's port.
            parts.append("the classic sequence disturbs stateful NATs; trust the RFC 5780 "
                         "mapping result")
    parts.extend(found.notes)
    figure = "/".join(
        ABBREVIATION[value] + suffix
        for value, suffix in ((found.mapping, "M"), (found.filtering, "F")) if value
    ) or "unknown"
    summary = "; ".join(parts) or "not determined"
    if found.mapping in ("address-dependent", "address-and-port-dependent"):
        return CheckResult(
            "nat behaviour", "warn", summary, figure=figure,
            fix="symmetric NAT: the port a STUN server sees is not the port clients would "
            "reach, so an SFU behind it needs ice_host_override plus a static port forward "
            "of UDP/TCP 8443; clients behind it need the server's port open (or TURN)",
            details=details)
    return CheckResult("nat behaviour", "pass", summary, figure=figure, details=details)


def stun_results(server_text: str, timeout: float) -> list[CheckResult]:
    """The `check stun` results; also used by `check all`."""
    found, failure = probe(server_text, timeout)
    if failure is not None:
        return [failure]
    assert found.mapped is not None and found.rtt_ms is not None
    via = f" ({found.software})" if found.software else ""
    results = [CheckResult(
        "stun binding", "pass",
        f"{found.server}{via} answered from {fmt_addr(found.server_addr)}; it sees us as "
        f"{fmt_addr(found.mapped)}",
        figure=f"{found.rtt_ms:.1f} ms", details=found.as_details())]
    results.append(_public_address_result(found, local_addresses()))
    results.append(_behaviour_result(found))
    return results


@app.command("stun")
def stun_command(
    server: str = typer.Option(
        DEFAULT_STUN_SERVER, "--server", "-s",
        help="STUN server as HOST:PORT or stun:HOST:PORT (the seed deployment's default)."),
    timeout: float = typer.Option(
        3.0, "--timeout", "-t", min=0.1, max=60,
        help="Seconds to wait for each STUN answer (retransmitting meanwhile)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Find this host's public address, the RTT to a STUN server and the NAT behaviour.

    Prints the ice_host_override to set when the host is behind NAT.
    """
    results = stun_results(server, timeout)
    raise typer.Exit(emit(results, as_json, title=f"STUN via {server}"))
