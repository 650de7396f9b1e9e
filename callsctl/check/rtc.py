"""`callsctl check rtc`: can clients reach a server's media port, and is it advertised right?

Calls fail to connect for two reasons far more often than any other: the
media port (UDP 8443, TCP 8443 as fallback) is not reachable, or the server
advertises an address in its ICE candidates that clients cannot use (a
private or loopback address, or the wrong port behind a port forward). This
check proves both from wherever it runs, before any call exists:

- the server answers a bare STUN Binding Request (no USERNAME) on its media
  port with XOR-MAPPED-ADDRESS (RFC 5389); over TCP the request travels in
  RFC 4571 framing as ICE-TCP does (RFC 6544). So reachability, RTT and the
  address the server sees us from come from one round trip;
- GET /version on the API port says what the server advertises
  (`ice.host`, `ice.udp_port`, `ice.tcp_port`, `ice.source`), which is then
  compared with the address and port that actually answered;
- a UDP probe that hears nothing looks once more from an unconnected socket:
  a server that answers from another of its host's addresses (bound to every
  address of a multi-homed host, probed on a secondary one) is named as such,
  since clients' ICE drops that answer too.

The probing lives in `RtcProbe`, which measures lazily and remembers, so the
steps of `check rtc` and `check all` share one set of measurements.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import typer

from callsctl.check import app
from callsctl.check.kind import ServerKind, detect
from callsctl.check.render import emit
from callsctl.check.result import CheckResult, Status
from callsctl.check.stun_cmd import local_addresses
from callsctl.check.stunclient import (
    Address,
    Channel,
    StunErrorResponse,
    StunProtocolError,
    StunTimeout,
    binding_request,
    fmt_addr,
    mapped_address,
    resolve,
)
from callsctl.errors import EXIT_USAGE, fail

DEFAULT_MEDIA_PORT = 8443
DEFAULT_API_PORT = 8045
ProbeKind = Literal["ok", "refused", "timeout", "error", "disabled"]
_RANK: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class RtcTarget:
    """Where the server is and how long to wait for each answer."""

    host: str
    udp_port: int = DEFAULT_MEDIA_PORT
    tcp_port: int = DEFAULT_MEDIA_PORT
    api_port: int = DEFAULT_API_PORT
    timeout: float = 3.0
    api_url: str | None = None

    @property
    def api_base(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.api_port}"


@dataclass
class ProbeOutcome:
    """One STUN Binding round trip to a media port over UDP or TCP."""

    transport: Literal["udp", "tcp"]
    dest: Address
    kind: ProbeKind
    rtt_ms: float | None = None
    seen_as: Address | None = None
    local: Address | None = None
    error: str | None = None
    # A UDP probe that timed out, but whose request was answered from another address
    # of the server (a multi-homed host: `_answered_from_elsewhere`).
    answered_from: Address | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def as_details(self) -> dict[str, Any]:
        return {"transport": self.transport, "probed": fmt_addr(self.dest), "result": self.kind,
                "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
                "server_saw_us_as": fmt_addr(self.seen_as) if self.seen_as else None,
                "local_address": fmt_addr(self.local) if self.local else None,
                "answered_from": fmt_addr(self.answered_from) if self.answered_from else None,
                "error": self.error}


@dataclass
class ApiOutcome:
    """One GET on the API port."""

    url: str
    status: int | None = None
    body: Any = None
    rtt_ms: float | None = None
    error: str | None = None
    version_header: str | None = None


def probe_udp(dest: Address, timeout: float) -> ProbeOutcome:
    """Bare Binding Request over UDP, on a connected socket so ICMP unreachable shows at once."""
    try:
        channel = Channel.udp(dest, connect=True)
    except OSError as exc:
        return ProbeOutcome("udp", dest, "error", error=exc.strerror or str(exc))
    with channel:
        local = channel.local
        try:
            reply = channel.transact(binding_request(), dest, timeout)
        except ConnectionRefusedError:
            return ProbeOutcome("udp", dest, "refused", local=local,
                                error="ICMP port unreachable: nothing listens there")
        except StunTimeout:
            return ProbeOutcome("udp", dest, "timeout", local=local,
                                error=f"no answer within {timeout:g} s",
                                answered_from=_answered_from_elsewhere(dest, timeout))
        except StunErrorResponse as exc:
            return ProbeOutcome("udp", dest, "error", local=local,
                                error=f"STUN error response {exc}")
        except (StunProtocolError, OSError) as exc:
            return ProbeOutcome("udp", dest, "error", local=local, error=str(exc))
    return ProbeOutcome("udp", dest, "ok", rtt_ms=reply.rtt_ms,
                        seen_as=mapped_address(reply.message), local=local)


ELSEWHERE_TIMEOUT_S = 1.0  # the second look, after a connected probe heard nothing


def _answered_from_elsewhere(dest: Address, timeout: float) -> Address | None:
    """After silence on the connected socket, whether the server answers from another address.

    A connected UDP socket only takes datagrams from the address it sent to. A
    server bound to every address of a host with several (a secondary address, a
    floating VIP) sends its answer from the address the kernel's route prefers,
    not from the one the request reached, and clients' ICE drops that answer as
    well: RFC 8445 §7.2.5.2.1 makes the pair fail when the response's source is
    not the request's destination. One more Binding from an unconnected socket
    sees such an answer; None when nothing, or only `dest` itself, answered.
    """
    try:
        channel = Channel.udp(dest, connect=False)
    except OSError:
        return None
    with channel:
        try:
            reply = channel.transact(binding_request(), dest, min(timeout, ELSEWHERE_TIMEOUT_S))
        except (StunTimeout, StunErrorResponse, StunProtocolError, OSError):
            return None
    return reply.source if reply.source != dest else None


def probe_tcp(dest: Address, timeout: float) -> ProbeOutcome:
    """Bare Binding Request over TCP with RFC 4571 framing, as ICE-TCP carries STUN."""
    started = time.monotonic()
    try:
        channel = Channel.tcp(dest, timeout, framing="rfc4571")
    except ConnectionRefusedError:
        return ProbeOutcome("tcp", dest, "refused", error="connection refused")
    except TimeoutError:
        return ProbeOutcome("tcp", dest, "timeout",
                            error=f"TCP connect timed out after {timeout:g} s")
    except OSError as exc:
        return ProbeOutcome("tcp", dest, "error", error=exc.strerror or str(exc))
    with channel:
        local = channel.local
        left = max(timeout - (time.monotonic() - started), 0.05)
        try:
            reply = channel.transact(binding_request(), dest, left)
        except StunTimeout:
            return ProbeOutcome("tcp", dest, "timeout", local=local,
                                error="TCP connected, but no STUN answer within "
                                f"{timeout:g} s")
        except StunErrorResponse as exc:
            return ProbeOutcome("tcp", dest, "error", local=local,
                                error=f"STUN error response {exc}")
        except (StunProtocolError, OSError) as exc:
            return ProbeOutcome("tcp", dest, "error", local=local,
                                error=f"TCP connected, but {exc}")
    return ProbeOutcome("tcp", dest, "ok", rtt_ms=reply.rtt_ms,
                        seen_as=mapped_address(reply.message), local=local)


@dataclass
class RtcProbe:
    """Measurements of one server, taken on first use and remembered."""

    target: RtcTarget
    _api: dict[str, ApiOutcome] = field(default_factory=dict)
    _udp: dict[Address, ProbeOutcome] = field(default_factory=dict)
    _tcp: dict[Address, ProbeOutcome] = field(default_factory=dict)
    _target_ip: str | None = None
    _resolve_error: str | None = None
    _locals: set[str] | None = None
    _kind: ServerKind | None = None

    def kind(self) -> ServerKind:
        """callsctl, rtcd or Mattermost (see kind.py), asked once."""
        if self._kind is None:
            self._kind = detect(self)
        return self._kind

    @property
    def target_ip(self) -> str | None:
        if self._target_ip is None and self._resolve_error is None:
            try:
                self._target_ip = resolve(self.target.host, self.target.udp_port)[0]
            except StunProtocolError as exc:
                self._resolve_error = str(exc)
        return self._target_ip

    @property
    def resolve_error(self) -> str | None:
        _ = self.target_ip
        return self._resolve_error

    @property
    def local_ips(self) -> set[str]:
        if self._locals is None:
            self._locals = local_addresses()
        return self._locals

    def checker_on_server(self) -> bool:
        """True when this command runs on the server host itself (loopback or own address)."""
        ip = self.target_ip
        return ip is not None and (ipaddress.ip_address(ip).is_loopback or ip in self.local_ips)

    def api(self, path: str, fresh: bool = False) -> ApiOutcome:
        """GET `path` on the API port, asked once (`fresh`: asked again, for counters)."""
        if fresh or path not in self._api:
            url = self.target.api_base + path
            outcome = ApiOutcome(url)
            import httpx  # here: every command, serve too, imports this module

            started = time.monotonic()
            try:
                # Diagnosing reachability, not identity: serve's TLS certificate is often
                # self-signed, so it is not verified here.
                response = httpx.get(url, timeout=self.target.timeout, verify=False)
                outcome.rtt_ms = (time.monotonic() - started) * 1000
                outcome.status = response.status_code
                outcome.version_header = response.headers.get("X-Version-Id")
                try:
                    outcome.body = response.json()
                except ValueError:
                    outcome.body = None
            except httpx.ConnectError as exc:
                outcome.error = f"cannot connect ({_root_cause(exc)})"
            except httpx.TimeoutException:
                outcome.error = f"no answer within {self.target.timeout:g} s"
            except httpx.HTTPError as exc:
                outcome.error = f"{type(exc).__name__}: {_root_cause(exc)}"
            self._api[path] = outcome
        return self._api[path]

    def version(self) -> dict[str, Any] | None:
        outcome = self.api("/version")
        if outcome.status == 200 and isinstance(outcome.body, dict):
            return outcome.body
        return None

    def udp_dest(self) -> Address | None:
        ip = self.target_ip
        return None if ip is None else (ip, self.target.udp_port)

    def tcp_dest(self) -> Address | None:
        ip = self.target_ip
        return None if ip is None else (ip, self.target.tcp_port)

    def udp(self, dest: Address | None = None) -> ProbeOutcome | None:
        dest = dest or self.udp_dest()
        if dest is None:
            return None
        if dest not in self._udp:
            self._udp[dest] = probe_udp(dest, self.target.timeout)
        return self._udp[dest]

    def tcp(self, dest: Address | None = None) -> ProbeOutcome | None:
        dest = dest or self.tcp_dest()
        if dest is None:
            return None
        if dest not in self._tcp:
            self._tcp[dest] = probe_tcp(dest, self.target.timeout)
        return self._tcp[dest]

    def tcp_cached(self) -> ProbeOutcome | None:
        """The TCP probe of the target if one was made (the TCP step may have skipped it)."""
        dest = self.tcp_dest()
        return None if dest is None else self._tcp.get(dest)

    def tcp_enabled(self) -> bool | None:
        """What /version says about the ICE-TCP fallback: True, False or None (unknown)."""
        info = self.version()
        if info is None or "tcp_port" not in info:
            return None
        return bool(info.get("tcp_port"))


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _unresolved(name: str, probe: RtcProbe) -> CheckResult:
    return CheckResult(name, "fail", probe.resolve_error or "cannot resolve host",
                       fix="check the --host name and this machine's DNS")


# --- steps --------------------------------------------------------------------------


PION_SILENCE = ("inconclusive: pion drops STUN whose ufrag names no session, so silence to a "
                "bare probe proves nothing")
PROOF_COMMANDS = ("run `callsctl check rtcd --url http://ID:KEY@HOST:8045` (rtcd) or `callsctl "
                  "check webrtc --mattermost URL --token PAT --channel ID` for proof")

# What a verdict of `check rtc` can and cannot prove, per server kind (docs/check-mattermost.md).
PROVES: dict[str, dict[str, str]] = {
    "callsctl": {"proves": "the media port answers bare STUN over UDP and ICE-TCP, and what the "
                           "server advertises (GET /version) answers too",
                 "cannot_prove": "that DTLS and media pass a middlebox that lets STUN through "
                                 "(check webrtc does)"},
    "rtcd": {"proves": "the API answers (/version, /system); a TCP connect to the media port",
             "cannot_prove": "UDP reachability and the advertised ICE address: rtcd answers STUN "
                             "only for a live session (check rtcd opens one)"},
    "mattermost": {"proves": "Mattermost and the Calls plugin answer; a TCP connect to the media "
                             "port",
                   "cannot_prove": "UDP reachability and the advertised ICE address: the plugin's "
                                   "SFU (or its rtcd) answers STUN only for a live session "
                                   "(check webrtc --mattermost opens one)"},
    "unknown": {"proves": "only what answered",
                "cannot_prove": "what silence means: callsctl answers bare STUN, pion-based "
                                "servers (rtcd, Mattermost Calls) never do"},
}


def _scope(probe: RtcProbe) -> dict[str, str]:
    kind = probe.kind()
    return {"server_kind": kind.kind, **PROVES[kind.kind]}


def server_result(probe: RtcProbe) -> CheckResult:
    """Which server answers on the API port, and therefore what the other verdicts can prove."""
    name = "server"
    if probe.target.api_url is None and probe.target_ip is None:
        return _unresolved(name, probe)
    kind = probe.kind()
    details: dict[str, Any] = {**_scope(probe), **kind.details}
    scope = PROVES[kind.kind]
    if kind.kind == "unknown":
        return CheckResult(name, "warn", f"{probe.target.api_base} is not recognisably callsctl, "
                           "rtcd or Mattermost; " + scope["cannot_prove"], figure="unknown",
                           fix="point --api-port/--api-url at the server's API (callsctl and "
                           "rtcd: port 8045; Mattermost: its site URL)", details=details)
    if kind.kind == "mattermost" and not kind.details.get("calls_plugin"):
        status_code = kind.details.get("calls_plugin_status")
        return CheckResult(name, "fail", f"{kind.label}: GET /plugins/com.mattermost.calls/version "
                           f"answered {status_code or 'nothing'}", figure="no Calls plugin",
                           fix="install and enable the Calls plugin (System Console > Plugins > "
                           "Calls > Enable Plugin)", details=details)
    return CheckResult(name, "pass", f"{kind.label}; this check proves {scope['proves']}; it "
                       f"cannot prove {scope['cannot_prove']}", figure=kind.kind, details=details)


def api_result(probe: RtcProbe) -> CheckResult:
    """Is the API (signaling, web client) reachable and healthy? Asked the way each kind answers."""
    name = "api"
    if probe.target.api_url is None and probe.target_ip is None:
        return _unresolved(name, probe)
    kind = probe.kind()
    if kind.kind == "rtcd":
        outcome = probe.api("/version")
        load = kind.details.get("cpu_load")
        figure = f"{outcome.rtt_ms:.1f} ms" if outcome.rtt_ms is not None else None
        text = f"{outcome.url}: {kind.label}" + (
            f"; load {load:.2f} (GET /system: 1 / idle CPUs)" if isinstance(load, int | float)
            else "")
        return CheckResult(name, "pass", text, figure=figure,
                           details={"url": outcome.url, "version": kind.version, "cpu_load": load})
    if kind.kind == "mattermost":
        outcome = probe.api("/api/v4/system/ping")
        figure = f"{outcome.rtt_ms:.1f} ms" if outcome.rtt_ms is not None else None
        return CheckResult(name, "pass", f"{outcome.url}: status OK ({kind.label})",
                           figure=figure, details={"url": outcome.url, **kind.details})
    outcome = probe.api("/healthz")
    details: dict[str, Any] = {"url": outcome.url, "status": outcome.status}
    if outcome.error:
        return CheckResult(name, "fail", f"{outcome.url}: {outcome.error}", figure="no answer",
                           fix="is the server running, on this --api-port, and is TCP "
                           f"{probe.target.api_port} open in the firewall? (behind a reverse "
                           "proxy or for Mattermost, pass --api-url)", details=details)
    if outcome.status != 200:
        return CheckResult(name, "fail", f"{outcome.url} answered HTTP {outcome.status}",
                           figure=f"HTTP {outcome.status}",
                           fix="the server is up but not healthy: read its log", details=details)
    info = probe.version() or {}
    version = info.get("version")
    details["version"] = version
    assert outcome.rtt_ms is not None
    text = f"{outcome.url} is healthy" + (f" (callsctl {version})" if version else "")
    return CheckResult(name, "pass", text, figure=f"{outcome.rtt_ms:.1f} ms", details=details)


def _seen_as_note(outcome: ProbeOutcome) -> str:
    if outcome.seen_as is None:
        return ""
    note = f"; the server saw us as {fmt_addr(outcome.seen_as)}"
    if outcome.local and outcome.seen_as[0] != outcome.local[0]:
        note += f" (we are behind NAT: local {outcome.local[0]})"
    return note


def udp_result(probe: RtcProbe) -> CheckResult:
    """The media port over UDP: the path every client tries first."""
    name = "rtc udp"
    outcome = probe.udp()
    if outcome is None:
        return _unresolved(name, probe)
    where = f"UDP {fmt_addr(outcome.dest)}"
    details = outcome.as_details()
    if outcome.ok:
        assert outcome.rtt_ms is not None
        return CheckResult(name, "pass",
                           f"STUN Binding answered on {where}{_seen_as_note(outcome)}",
                           figure=f"{outcome.rtt_ms:.1f} ms", details=details)
    details.update(_scope(probe))
    if outcome.answered_from is not None:
        other = fmt_addr(outcome.answered_from)
        return CheckResult(
            name, "fail", f"{where}: the server answered from {other}, not from the address "
            "probed; clients' ICE checks to it fail the same way (RFC 8445 §7.2.5.2.1)",
            figure="wrong source",
            fix=f"the server's host has several addresses and replies from another one (a "
                f"secondary address or a VIP): bind the server to the address clients use "
                f"(callsctl serve --bind {outcome.dest[0]}), or advertise {other}; callsctl "
                f"serve bound to every address answers from the one asked on unless "
                f"CALLSCTL_PKTINFO=0",
            details=details)
    kind = probe.kind()
    if outcome.kind == "timeout" and kind.kind != "callsctl":
        why = (f"{kind.label} is pion-based: {PION_SILENCE}" if kind.is_pion else
               f"silence from {kind.label}: callsctl would have answered, rtcd and Mattermost "
               "Calls never answer a bare probe")
        return CheckResult(name, "warn", f"{where}: {outcome.error}; {why}", figure="inconclusive",
                           fix=PROOF_COMMANDS, details={**details, "verdict": "inconclusive"})
    hints = []
    info = probe.version()
    if info and info.get("udp_port") and info["udp_port"] != outcome.dest[1]:
        hints.append(f"the server says its media port is UDP {info['udp_port']}: "
                     f"try --udp-port {info['udp_port']}")
    if outcome.kind == "refused":
        hints.append("start `callsctl serve` (udp_port) on that port, or check the port number")
        return CheckResult(name, "fail", f"{where}: {outcome.error}", figure="refused",
                           fix="; ".join(hints), details=details)
    tcp = probe.tcp() if probe.tcp_enabled() is not False else None
    if tcp is not None and tcp.ok:
        hints.append(f"UDP is blocked between here and the server but TCP {tcp.dest[1]} works: "
                     f"open UDP {outcome.dest[1]} (firewall, security group, port forward); "
                     "until then clients fall back to TCP with more latency")
        summary = f"{where}: {outcome.error} (UDP blocked, TCP open)"
    else:
        hints.append(f"a firewall drops UDP {outcome.dest[1]} or the server is not running "
                     "there; to tell them apart, stop the server, run `callsctl check listen "
                     f"--udp --echo --port {outcome.dest[1]}` on its host and `callsctl check "
                     f"udp --host HOST --port {outcome.dest[1]}` from here")
        summary = f"{where}: {outcome.error}"
    return CheckResult(name, "fail", summary, figure=outcome.kind, fix="; ".join(hints),
                       details=details)


def tcp_result(probe: RtcProbe) -> CheckResult:
    """The ICE-TCP fallback (RFC 6544) for clients whose firewall blocks UDP; a warning at worst."""
    name = "rtc tcp"
    if probe.tcp_enabled() is False:
        return CheckResult(name, "warn", "the server does not listen for ICE-TCP (tcp_port is "
                           "not set): clients behind UDP-blocking firewalls cannot connect",
                           figure="disabled",
                           fix="enable the TCP fallback (tcp_port, e.g. 8443 or 443) or offer "
                           "a TURN server over TCP in ice_servers",
                           details={"result": "disabled"})
    outcome = probe.tcp()
    if outcome is None:
        return _unresolved(name, probe)
    where = f"TCP {fmt_addr(outcome.dest)}"
    details = outcome.as_details()
    if outcome.ok:
        assert outcome.rtt_ms is not None
        return CheckResult(name, "pass",
                           f"STUN Binding (RFC 4571 framing) answered on {where}"
                           f"{_seen_as_note(outcome)}",
                           figure=f"{outcome.rtt_ms:.1f} ms", details=details)
    details.update(_scope(probe))
    if probe.kind().kind != "callsctl" and outcome.local is not None:
        return CheckResult(name, "pass", f"{where}: TCP connect succeeded, so the port is open; "
                           "a pion-based SFU closes an ICE-TCP connection whose STUN names no "
                           "session, so that the SFU itself answers there is proven only by a "
                           "session", figure="connected", fix=None,
                           details={**details, "verdict": "port open"})
    if outcome.kind in ("refused", "timeout") and outcome.local is None:
        verb = "refused" if outcome.kind == "refused" else "filtered (connect timed out)"
        return CheckResult(name, "warn", f"{where}: {verb}; TCP fallback unavailable from here",
                           figure=outcome.kind,
                           fix=f"enable tcp_port on the server and open TCP {outcome.dest[1]}; "
                           "only clients whose firewall blocks UDP need it",
                           details=details)
    return CheckResult(name, "fail", f"{where}: {outcome.error}", figure=outcome.kind,
                       fix="something that is not the SFU's ICE-TCP listener holds this port "
                       "(another service or a proxy): check --tcp-port and the port forward",
                       details=details)


def classify(adv_ip: str, target_ip: str, checker_on_server: bool,
             local_ips: set[str]) -> tuple[Status | None, str, str | None, bool]:
    """Judge an advertised address before any probing: (status, note, fix, probe it?).

    status None means "decide by probing". Pure, so its table of cases is unit-tested.
    """
    adv = ipaddress.ip_address(adv_ip)
    target = ipaddress.ip_address(target_ip)
    on_this_host = adv.is_loopback or adv_ip in local_ips
    override = (f'set ice_host_override = "{target_ip}" (the address clients reach)'
                if not target.is_loopback else
                "set ice_host_override to the server's public address")
    if adv.is_unspecified or adv.is_multicast:
        return "fail", f"advertises {adv_ip}, which no client can send to", override, False
    if adv.is_loopback:
        if checker_on_server and target.is_loopback:
            return ("pass", f"advertises loopback {adv_ip}: only clients on the server host "
                    "can connect (fine for a local test)", None, True)
        return ("fail", f"advertises loopback {adv_ip}: remote clients would send media to "
                "their own machine", override, False)
    if not adv.is_global:
        if target.is_global:
            return ("fail", f"advertises private {adv_ip}, but clients reach the server at "
                    f"public {target_ip}", override, False)
        if checker_on_server and not on_this_host:
            return ("warn", f"advertises private {adv_ip}, which is not an address of this "
                    "host: clients outside that network cannot reach it, and it cannot be "
                    "proven from here", "set ice_host_override to the address clients reach, "
                    "and re-run this check from a client machine", False)
        return (None, f"advertises private {adv_ip}: only clients in that network (or VPN) "
                "can connect", None, True)
    if adv_ip == target_ip:
        return None, f"advertises {adv_ip}, the address probed", None, True
    if checker_on_server and not on_this_host:
        return ("warn", f"advertises {adv_ip}, not an address of this host (the public side "
                "of a NAT?); reachability cannot be proven from here",
                f"run `callsctl check rtc --host {adv_ip}` from a client machine", False)
    return None, f"advertises {adv_ip}, not the address probed ({target_ip})", None, True


def _port_or_none(value: Any) -> int | None:
    """A port from the server's JSON; anything else (null, 0, junk) counts as not given."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        return None
    return value


def _worst(statuses: list[Status]) -> Status:
    return max(statuses, key=lambda s: _RANK[s]) if statuses else "pass"


def advertised_result(probe: RtcProbe) -> CheckResult:
    """Is the address/port the server puts in ICE candidates usable by clients?"""
    name = "advertised address"
    if probe.target_ip is None:
        return _unresolved(name, probe)
    kind = probe.kind()
    if kind.is_pion:
        return CheckResult(name, "warn", f"unknown: {kind.label} tells its ICE address (ICE host "
                           "override) only in a session's candidates", figure="unknown",
                           fix=PROOF_COMMANDS, details={**_scope(probe), "verdict": "inconclusive"})
    info = probe.version()
    if info is None:
        outcome = probe.api("/version")
        why = outcome.error or f"HTTP {outcome.status}"
        return CheckResult(name, "warn", f"could not read {outcome.url}: {why}; the "
                           "advertised address is unknown", figure="unknown",
                           fix="make the API reachable from here (or pass --api-url) to "
                           "compare the advertised address with what answers")
    ice = info.get("ice")
    if not isinstance(ice, dict) or not ice.get("host"):
        return CheckResult(name, "warn", "the server's /version has no `ice` section: it does "
                           "not say what it advertises (older callsctl?)", figure="unknown",
                           details={"version": info})
    adv_host = str(ice["host"])
    source = ice.get("source")
    adv_udp = _port_or_none(ice.get("udp_port")) or probe.target.udp_port
    adv_tcp = _port_or_none(ice.get("tcp_port"))
    details: dict[str, Any] = {"advertised": ice, "probed_host": probe.target_ip}
    figure = f"{fmt_addr((adv_host, adv_udp))}" + (f" ({source})" if source else "")
    try:
        adv_ip = resolve(adv_host, adv_udp)[0]
    except StunProtocolError as exc:
        return CheckResult(name, "fail", f"advertised host {adv_host!r} does not resolve: {exc}",
                           figure=figure, fix="set ice_host_override to an IP address",
                           details=details)
    status, note, fix, may_probe = classify(adv_ip, probe.target_ip, probe.checker_on_server(),
                                            probe.local_ips)
    statuses: list[Status] = [status] if status else []
    notes = [note]
    fixes = [fix] if fix else []
    suggested: dict[str, Any] = {}
    if fix and fix.startswith("set ice_host_override = "):
        suggested["ice_host_override"] = probe.target_ip

    probed_udp = probe.udp()
    if may_probe:
        adv_udp_out = probe.udp((adv_ip, adv_udp))
        assert adv_udp_out is not None
        details["advertised_udp_probe"] = adv_udp_out.as_details()
        if adv_udp_out.ok:
            statuses.append("pass")
        elif adv_udp != probe.target.udp_port and probed_udp is not None and probed_udp.ok:
            statuses.append("fail")
            notes.append(f"advertises UDP port {adv_udp}, which does not answer, while "
                         f"{probe.target.udp_port} does")
            fixes.append(f"set ice_host_port_override = {probe.target.udp_port} (the port "
                         "clients reach, e.g. the public side of a port forward)")
            suggested["ice_host_port_override"] = probe.target.udp_port
        else:
            statuses.append("fail")
            notes.append(f"clients are told to use UDP {fmt_addr((adv_ip, adv_udp))}, "
                         f"which does not answer from here ({adv_udp_out.kind})")
            if adv_ip != probe.target_ip and probed_udp is not None and probed_udp.ok:
                fixes.append(f'set ice_host_override = "{probe.target_ip}"')
                suggested["ice_host_override"] = probe.target_ip
            else:
                fixes.append("open the media port to clients (see rtc udp)")
        if adv_udp_out.ok and adv_udp != probe.target.udp_port:
            statuses.append("warn")
            notes.append(f"advertises UDP port {adv_udp}, not the probed {probe.target.udp_port}"
                         " (both answer; clients use the advertised one)")
        tcp_probed = probe.tcp_cached()
        if adv_tcp and tcp_probed is not None and tcp_probed.ok and (
                adv_tcp != probe.target.tcp_port or adv_ip != probe.target_ip):
            adv_tcp_out = probe.tcp((adv_ip, adv_tcp))
            assert adv_tcp_out is not None
            details["advertised_tcp_probe"] = adv_tcp_out.as_details()
            if not adv_tcp_out.ok:
                statuses.append("warn")
                notes.append(f"advertises TCP port {adv_tcp}, which does not answer, while "
                             f"{probe.target.tcp_port} does")
                fixes.append("make the advertised ICE-TCP port match the one clients reach "
                             "(ice_host_port_override / port forward)")
    elif adv_udp != probe.target.udp_port:
        statuses.append("warn")
        notes.append(f"advertises UDP port {adv_udp}, but you probed {probe.target.udp_port}")
        fixes.append(f"if clients reach port {probe.target.udp_port}, set "
                     f"ice_host_port_override = {probe.target.udp_port}")
    if suggested:
        details["suggested_config"] = suggested
    return CheckResult(name, _worst(statuses), "; ".join(notes), figure=figure,
                       fix="; ".join(fixes) or None, details=details)


def rtc_results(target: RtcTarget) -> list[CheckResult]:
    """`check rtc`: media reachability over UDP and TCP, then the advertised address."""
    probe = RtcProbe(target)
    return [server_result(probe), udp_result(probe), tcp_result(probe), advertised_result(probe)]


def validate_host(host: str) -> str:
    """Strip brackets from an IPv6 literal; refuse empty hosts (a usage error)."""
    value = host.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if not value or "/" in value or " " in value:
        fail(f"invalid --host {host!r}: give a host name or IP address (no port)", EXIT_USAGE)
    return value


@app.command("rtc")
def rtc_command(
    host: str = typer.Option(..., "--host", "-H", help="Server host name or IP, as clients "
                             "reach it (the ice_host_override, if set)."),
    udp_port: int = typer.Option(DEFAULT_MEDIA_PORT, "--udp-port", min=1, max=65535,
                                 help="Media port over UDP."),
    tcp_port: int = typer.Option(DEFAULT_MEDIA_PORT, "--tcp-port", min=1, max=65535,
                                 help="ICE-TCP fallback port."),
    api_port: int = typer.Option(DEFAULT_API_PORT, "--api-port", min=1, max=65535,
                                 help="HTTP API port (for GET /version)."),
    api_url: str | None = typer.Option(None, "--api-url", help="API base URL when it is not "
                                       "http://HOST:API_PORT (TLS, reverse proxy)."),
    timeout: float = typer.Option(3.0, "--timeout", "-t", min=0.1, max=60,
                                  help="Seconds to wait for each answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Probe a running server's media ports with STUN and check its advertised ICE address.

    UDP and ICE-TCP (RFC 4571 framing) each get a bare Binding Request; GET
    /version tells what the server advertises, which is compared with what answered.
    """
    target = RtcTarget(validate_host(host), udp_port, tcp_port, api_port, timeout, api_url)
    raise typer.Exit(emit(rtc_results(target), as_json, title=f"RTC media ports of {host}"))
