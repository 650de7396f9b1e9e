"""`callsctl check turn`: prove a TURN server relays media for the credentials Calls hands out.

Clients that cannot reach the SFU's UDP port get media through TURN. What
breaks in practice is exactly what this check walks through, in order:
reaching the server (UDP or TCP 3478), authenticating (the REST credentials
derived from `turn_static_auth_secret`, or a static user), getting a relayed
address that clients can reach, and relaying data both ways. Each step gets a
verdict that names the likely cause.

Protocol: RFC 5766 (TURN): Allocate with the long-term credential mechanism
(RFC 5389 10.2), 438 Stale Nonce retried once, 437 Allocation Mismatch
retried once on a fresh 5-tuple, CreatePermission, a Send indication to an
echo peer this command opens itself, the echo coming back in a Data
indication, and finally a Refresh with LIFETIME 0 to free the relay. Over TCP
the messages are framed back to back (RFC 5389 7.2.2).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

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
    TurnClient,
    fmt_addr,
    parse_host_port,
    random_payload,
    resolve,
    rest_credentials,
    route_local_ip,
)
from callsctl.errors import EXIT_USAGE, fail
from callsctl_sfu.errors import CallsctlError

Transport = Literal["udp", "tcp"]
TURN_PORT = 3478
DEFAULT_REST_USER = "callsctl-check"
REST_TTL_SECONDS = 3600


@dataclass(frozen=True)
class TurnUrl:
    """A parsed turn: URI (RFC 7065); transports is what the check will exercise."""

    host: str
    port: int
    transports: tuple[Transport, ...]
    explicit_transport: bool


def parse_turn_url(text: str) -> TurnUrl:
    """'turn:HOST[:PORT][?transport=udp|tcp]' (or a bare HOST[:PORT]); usage error otherwise."""
    value = text.strip()
    lowered = value.lower()
    if lowered.startswith("turns:"):
        fail("turns: (TURN over TLS) is not supported by this check; test the plain "
             "turn: listener of the same server", EXIT_USAGE)
    if lowered.startswith("turn:"):
        value = value[len("turn:"):]
    value, _, query = value.partition("?")
    transports: tuple[Transport, ...] = ("udp", "tcp")
    explicit = False
    if query:
        params = parse_qs(query, keep_blank_values=True)
        unknown = set(params) - {"transport"}
        if unknown:
            fail(f"invalid --server {text!r}: unknown parameter {sorted(unknown)[0]!r}",
                 EXIT_USAGE)
        choice = params.get("transport", [""])[-1].lower()
        if choice not in ("udp", "tcp"):
            fail(f"invalid --server {text!r}: transport must be udp or tcp", EXIT_USAGE)
        transports = (choice,)  # type: ignore[assignment]
        explicit = True
    try:
        host, port = parse_host_port(value, TURN_PORT)
    except ValueError as exc:
        fail(f"invalid --server {text!r}: {exc} (expected turn:HOST:PORT[?transport=tcp])",
             EXIT_USAGE)
    return TurnUrl(host, port, transports, explicit)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    kind: Literal["rest", "static"]


def make_credentials(secret: str | None, user: str | None, password: str | None) -> Credentials:
    """REST credentials from --secret, or the static --user/--password; usage error otherwise."""
    if secret is not None:
        if password is not None:
            fail("give either --secret (with an optional --user) or --user and --password",
                 EXIT_USAGE)
        if not secret:
            fail("--secret must not be empty", EXIT_USAGE)
        username, derived = rest_credentials(secret, user or DEFAULT_REST_USER, REST_TTL_SECONDS)
        return Credentials(username, derived, "rest")
    if not user or password is None:
        fail("credentials needed: --secret S (turn_static_auth_secret) or --user U --password P",
             EXIT_USAGE)
    return Credentials(user, password, "static")


def _credential_fix(creds: Credentials, realm: str | None, expected_realm: str | None) -> str:
    if creds.kind == "rest":
        text = ("the secret differs from coturn's static-auth-secret (it must equal "
                "turn_static_auth_secret), coturn lacks use-auth-secret, or the two hosts' "
                "clocks differ by more than the credential lifetime")
    else:
        text = (f"user {creds.username!r} is unknown or has another password in realm "
                f"{realm!r} (turnadmin -a -u USER -r REALM -p PASSWORD, or user= in "
                "turnserver.conf with lt-cred-mech)")
    if expected_realm and realm and expected_realm != realm:
        text += (f"; note the server's realm is {realm!r}, not {expected_realm!r}: "
                 "set realm= in turnserver.conf")
    return text


class AllocateRejected(CallsctlError):
    """An error response to Allocate, with the realm the server announced before it."""
    code = "turn_allocate_rejected"

    def __init__(self, error: StunErrorResponse, realm: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.realm = realm


def _error_result(name: str, exc: StunErrorResponse, creds: Credentials, realm: str | None,
                  expected_realm: str | None, where: str) -> CheckResult:
    """Map a TURN error response to a verdict that says what to change."""
    details = {"error_code": exc.error_code, "reason": exc.reason, "realm": realm,
               "username": creds.username}
    if exc.error_code in (401, 441):
        return CheckResult(name, "fail",
                           f"{exc.error_code} {exc.reason or 'Unauthorized'}: {where} rejected the "
                           "credentials", figure=str(exc.error_code),
                           fix=_credential_fix(creds, realm, expected_realm),
                           details=details)
    if exc.error_code == 403:
        return CheckResult(name, "fail", f"403 Forbidden from {where}: authenticated, but "
                           "the server refuses to relay for this client", figure="403",
                           fix="check coturn's allowed/denied-peer-ip, user quotas and "
                           "no-udp-relay settings", details=details)
    if exc.error_code == 438:
        return CheckResult(name, "fail", f"438 Stale Nonce twice in a row from {where}",
                           figure="438", fix="the server's nonces expire immediately: check "
                           "stale-nonce in turnserver.conf", details=details)
    if exc.error_code == 437:
        return CheckResult(name, "fail", f"437 Allocation Mismatch twice from {where}",
                           figure="437", fix="another allocation holds this 5-tuple; retry "
                           "in a minute", details=details)
    if exc.error_code == 442:
        return CheckResult(name, "fail", f"442 Unsupported Transport Protocol from {where}",
                           figure="442", fix="the server does not relay UDP: remove "
                           "no-udp-relay from turnserver.conf", details=details)
    if exc.error_code in (486, 508):
        return CheckResult(name, "fail", f"{exc.error_code} {exc.reason} from {where}",
                           figure=str(exc.error_code),
                           fix="the server is out of allocations: raise "
                           "user-quota/total-quota or its relay port range", details=details)
    if exc.error_code == 300:
        return CheckResult(name, "fail", f"300 Try Alternate from {where}", figure="300",
                           fix="the server redirects to another TURN server (alternate-server); "
                           "check that one", details=details)
    return CheckResult(name, "fail", f"{where} answered {exc.error_code} {exc.reason}",
                       figure=str(exc.error_code), details=details)


def _open_channel(transport: Transport, server: Address, timeout: float) -> Channel:
    if transport == "udp":
        # Connected, so an ICMP port unreachable shows up at once as ConnectionRefusedError.
        return Channel.udp(server, connect=True)
    return Channel.tcp(server, timeout)


def _allocate(transport: Transport, server: Address, creds: Credentials,
              timeout: float) -> TurnClient:
    """Allocate, retrying once on a new 5-tuple after 437 Allocation Mismatch (RFC 5766 6.4)."""
    for attempt in range(2):
        channel = _open_channel(transport, server, timeout)
        client = TurnClient(channel, server, creds.username, creds.password, timeout)
        try:
            client.allocate()
            return client
        except StunErrorResponse as exc:
            channel.close()
            if exc.error_code == 437 and attempt == 0:
                continue
            raise AllocateRejected(exc, client.realm) from None
        except BaseException:
            channel.close()
            raise
    raise AssertionError("unreachable")


def _is_public_path(server_ip: str, relayed_ip: str) -> bool:
    """True when the relayed address is private although the server is reached publicly."""
    server = ipaddress.ip_address(server_ip)
    relayed = ipaddress.ip_address(relayed_ip)
    return server.is_global and not relayed.is_global


def _round_trip(client: TurnClient, creds: Credentials, peer_ip: str, timeout: float,
                name: str) -> CheckResult:
    """CreatePermission, Send indication to our echo peer, echo, Data indication back."""
    assert client.relayed is not None
    family = socket.AF_INET6 if ":" in peer_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as echo:
        echo.bind((peer_ip, 0))
        peer: Address = (peer_ip, echo.getsockname()[1])
        details: dict[str, Any] = {"peer": fmt_addr(peer), "relayed": fmt_addr(client.relayed)}
        try:
            client.create_permission(peer)
        except StunErrorResponse as exc:
            if exc.error_code == 403:
                return CheckResult(
                    name, "warn",
                    f"403 Forbidden for a permission to our test peer {peer_ip}: the relay "
                    "works, but not towards this address", figure="403",
                    fix="coturn's denied-peer-ip covers it (loopback needs allow-loopback-peers);"
                    " fine if the SFU's address is allowed, or re-run from the SFU host",
                    details=details)
            return _error_result(name, exc, creds, client.realm, None, "CreatePermission")
        except StunTimeout:
            return CheckResult(name, "fail", "no answer to CreatePermission",
                               fix="the server stopped answering after the allocation",
                               details=details)
        payload = random_payload()
        started = time.monotonic()
        deadline = started + timeout
        source: Address | None = None
        # Indications are not retransmitted by TURN; resend a few times within the deadline.
        while time.monotonic() < deadline and source is None:
            client.send_indication(peer, payload)
            resend_at = min(deadline, time.monotonic() + 0.5)
            try:
                while source is None and time.monotonic() < resend_at:
                    echo.settimeout(max(resend_at - time.monotonic(), 0.01))
                    data, raw_source = echo.recvfrom(2048)
                    if data == payload:  # anything else is a stray datagram: ignore it
                        source = (str(raw_source[0]), int(raw_source[1]))
            except TimeoutError:
                continue
        if source is None:
            return CheckResult(
                name, "fail", f"the relay never delivered our data to the peer {fmt_addr(peer)} "
                f"within {timeout:g} s", figure="timeout",
                fix=f"the relay host cannot reach {peer_ip} (firewall, NAT, or a private "
                "address unreachable from the TURN server): run the check from a host the "
                "TURN server can reach, e.g. the SFU host, with --peer-ip", details=details)
        outbound_ms = (time.monotonic() - started) * 1000
        details["relay_source_seen_by_peer"] = fmt_addr(source)
        answer = b"echo:" + payload
        back: tuple[Address, bytes] | None = None
        while time.monotonic() < deadline and back is None:
            echo.sendto(answer, source)
            try:
                while True:
                    got = client.wait_data(min(deadline, time.monotonic() + 0.5))
                    if got[1] == answer:
                        back = got
                        break
            except StunTimeout:
                continue
        if back is None:
            return CheckResult(
                name, "fail", f"data reached the peer, but the answer from {fmt_addr(source)} "
                "never came back through the relay", figure="timeout",
                fix="the relay dropped inbound data: a firewall in front of the relay port "
                "range (min-port..max-port) blocks UDP towards the TURN server",
                details=details)
        total_ms = (time.monotonic() - started) * 1000
        details.update(outbound_ms=round(outbound_ms, 2), round_trip_ms=round(total_ms, 2))
        return CheckResult(
            name, "pass",
            f"client → relay {fmt_addr(client.relayed)} → peer {fmt_addr(peer)} and back",
            figure=f"{total_ms:.1f} ms", details=details)


def check_transport(url: TurnUrl, transport: Transport, creds: Credentials, timeout: float,
                    expected_realm: str | None, peer_ip: str | None) -> list[CheckResult]:
    """All verdicts for one transport: allocation, realm, relay round trip."""
    name = f"turn {transport}"
    where = f"turn:{fmt_addr((url.host, url.port))}?transport={transport}"
    try:
        server = resolve(url.host, url.port,
                         socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    except StunProtocolError as exc:
        return [CheckResult(name, "fail", str(exc), fix="check the TURN server's DNS name")]
    try:
        client = _allocate(transport, server, creds, timeout)
    except AllocateRejected as exc:
        return [_error_result(f"{name}: allocate", exc.error, creds, exc.realm, expected_realm,
                              where)]
    except StunTimeout:
        hint = ("UDP to port {p} is blocked (firewall, security group) or coturn does not "
                "listen on UDP (no-udp, listening-ip)" if transport == "udp" else
                "the server accepted TCP but never answered: not a TURN server on that port?")
        return [CheckResult(f"{name}: allocate", "fail",
                            f"no answer from {where} within {timeout:g} s", figure="timeout",
                            fix=hint.format(p=url.port))]
    except ConnectionRefusedError:
        return [CheckResult(f"{name}: allocate", "fail",
                            f"{where}: connection refused (nothing listens on "
                            f"{transport.upper()} {url.port})", figure="refused",
                            fix=f"start coturn's {transport.upper()} listener (remove no-"
                            f"{transport}, check listening-port) or open the port")]
    except TimeoutError:
        return [CheckResult(f"{name}: allocate", "fail",
                            f"TCP connect to {fmt_addr(server)} timed out after {timeout:g} s",
                            figure="timeout",
                            fix=f"a firewall drops TCP {url.port}; open it for clients")]
    except (StunProtocolError, OSError) as exc:
        return [CheckResult(f"{name}: allocate", "fail", f"{where}: {exc}")]

    results: list[CheckResult] = []
    try:
        assert client.relayed is not None
        details = {"relayed": fmt_addr(client.relayed), "mapped": fmt_addr(client.mapped),
                   "realm": client.realm, "username": creds.username,
                   "lifetime": client.lifetime, "software": client.software,
                   "rtt_ms": round(client.allocate_rtt_ms or 0, 2),
                   "stale_nonce_retries": client.stale_nonce_retries}
        summary = (f"relayed address {fmt_addr(client.relayed)} in realm "
                   f"{client.realm!r}; the server sees us as {fmt_addr(client.mapped)}")
        if client.unauthenticated_ok:
            results.append(CheckResult(
                f"{name}: allocate", "warn", "the server allocated a relay WITHOUT "
                "authentication: anyone can relay traffic through it",
                figure=fmt_addr(client.relayed), fix="enable use-auth-secret (or lt-cred-mech) "
                "in turnserver.conf", details=details))
        elif _is_public_path(server[0], client.relayed[0]):
            results.append(CheckResult(
                f"{name}: allocate", "warn",
                summary + f"; {client.relayed[0]} is private although the server is "
                "reached at a public address", figure=fmt_addr(client.relayed),
                fix="coturn runs behind NAT: set external-ip=PUBLIC/PRIVATE in turnserver.conf",
                details=details))
        else:
            results.append(CheckResult(f"{name}: allocate", "pass", summary,
                                       figure=fmt_addr(client.relayed), details=details))
        if expected_realm and client.realm != expected_realm:
            results.append(CheckResult(
                f"{name}: realm", "warn",
                f"the server's realm is {client.realm!r}, not {expected_realm!r}; clients "
                "authenticate in the server's realm, so this works, but not where you expect",
                figure=str(client.realm),
                fix=f"set realm={expected_realm} in turnserver.conf, or drop --realm"))
        try:
            local_ip = peer_ip or route_local_ip(server)
            results.append(
                _round_trip(client, creds, local_ip, timeout, f"{name}: relay round trip"))
        except (StunProtocolError, OSError) as exc:
            results.append(CheckResult(f"{name}: relay round trip", "fail", str(exc)))
    finally:
        client.release()
        client.channel.close()
    return results


def _soften(results: dict[Transport, list[CheckResult]]) -> None:
    """When both transports were tried and one works, the other's failure is a warning."""
    ok = {t: all(r.status == "pass" for r in rs) for t, rs in results.items()}
    for transport, items in results.items():
        other: Transport = "tcp" if transport == "udp" else "udp"
        if other not in ok or not ok[other]:
            continue
        for r in items:
            if r.status != "fail":
                continue
            r.status = "warn"
            if transport == "udp":
                r.fix = ((r.fix + "; ") if r.fix else "") + (
                    "TURN over TCP works, so clients still connect (with more latency); "
                    "list turn:HOST:PORT?transport=tcp in ice_servers")
            else:
                r.fix = ((r.fix + "; ") if r.fix else "") + (
                    "UDP works; TCP only matters for clients whose firewall blocks UDP")


def turn_results(server: str, secret: str | None, user: str | None, password: str | None,
                 realm: str | None, timeout: float, peer_ip: str | None) -> list[CheckResult]:
    """The `check turn` results, one transport after the other."""
    url = parse_turn_url(server)
    creds = make_credentials(secret, user, password)
    if peer_ip is not None:
        try:
            ipaddress.ip_address(peer_ip)
        except ValueError:
            fail(f"invalid --peer-ip {peer_ip!r}: must be an IP address of this host", EXIT_USAGE)
    per_transport: dict[Transport, list[CheckResult]] = {}
    for transport in url.transports:
        per_transport[transport] = check_transport(url, transport, creds, timeout, realm,
                                                   peer_ip)
    if not url.explicit_transport:
        _soften(per_transport)
    return [r for items in per_transport.values() for r in items]


@app.command("turn")
def turn_command(
    server: str = typer.Option(
        ..., "--server", "-s",
        help="TURN server URI: turn:HOST[:PORT][?transport=udp|tcp]; without ?transport "
        "both UDP and TCP are tested."),
    secret: str | None = typer.Option(
        None, "--secret", help="Static auth secret (coturn static-auth-secret, Calls "
        "turn_static_auth_secret): REST credentials are derived from it."),
    user: str | None = typer.Option(
        None, "--user", "-u", help="Static TURN user; with --secret, the name part of the "
        f"REST username (default {DEFAULT_REST_USER})."),
    password: str | None = typer.Option(None, "--password", "-p",
                                        help="Password of the static --user."),
    realm: str | None = typer.Option(
        None, "--realm", help="The realm you expect the server to announce (warns if not)."),
    peer_ip: str | None = typer.Option(
        None, "--peer-ip", help="Local address for the echo peer the relay sends to "
        "(default: the address this host uses to reach the TURN server)."),
    timeout: float = typer.Option(3.0, "--timeout", "-t", min=0.1, max=60,
                                  help="Seconds to wait for each answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Allocate a relay on a TURN server and send data through it and back.

    Verdicts name the cause: bad secret or password (401), refused (403),
    blocked port (timeout/refused), private relay address, UDP vs TCP.
    """
    results = turn_results(server, secret, user, password, realm, timeout, peer_ip)
    raise typer.Exit(emit(results, as_json, title=f"TURN {server}"))
