"""`callsctl check listen | udp | tcp`: the deployment guide's netcat test, with a verdict.

The guide's recipe is `nc -l -u -p 8443` on the server and `nc -v -u HOST 8443`
on a client, then typing to see whether text gets through. That works, but UDP
gives no feedback: when nothing arrives the operator cannot tell a firewall
from a typo. These commands do the same exchange and say what happened:

- `check udp` sends datagrams on a *connected* UDP socket, so an ICMP port
  unreachable coming back (RFC 792; reported to connected sockets per
  RFC 1122 §4.1.3.3) surfaces as ECONNREFUSED: "refused" proves the host is
  reachable and nothing listens. Silence is ambiguous (a firewall dropping the
  datagrams, or a listener that does not answer) and the result says so.
- `check tcp` tells connected / refused (a TCP reset, RFC 9293 §3.10.7.1) /
  timed out (SYN dropped: filtered) apart.
- `check listen` is the server side: it prints what arrives with its source
  and can echo it back, so a probe from the client gets an answer.

The probes are plain functions returning CheckResult so `check all` can run
them; the typer commands only parse arguments and print.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from callsctl.check import app
from callsctl.check.addresses import hostport, resolve
from callsctl.check.arguments import parse_count, parse_port, parse_seconds
from callsctl.check.classify import OTHER, classify_payload, classify_tcp_payload
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.check.signalstop import SignalStop
from callsctl.errors import EXIT_USAGE, CliError, fail
from callsctl_sfu.rtc import pktinfo
from callsctl_sfu.rtc.hostaddrs import interface_addresses

EventSink = Callable[[str], None]
StopCheck = Callable[[], bool]

MAX_UDP_PAYLOAD = 65507  # 65535 - 8 (UDP header) - 20 (IPv4 header)
_MAX_SOURCES = 1024  # per-source counters kept by the listener; the rest are pooled
_MAX_RECORDS = 1000  # packets kept for --json
_MAX_TCP_CLIENTS = 64


# --- payload helpers ---------------------------------------------------------------------


def stun_binding_request() -> tuple[bytes, bytes]:
    """A bare STUN Binding Request (RFC 8489 §5, §6): type 0x0001, no attributes.

    The callsctl SFU (like any STUN server) answers it on the media port, so
    `--stun` turns "silent" into a definite answer when the SFU is running.
    """
    transaction_id = secrets.token_bytes(12)
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction_id, transaction_id


def _stun_reply_matches(data: bytes, transaction_id: bytes) -> bool:
    return len(data) >= 20 and data[0] <= 3 and data[8:20] == transaction_id


def describe_bytes(data: bytes, tcp: bool = False, limit: int = 60) -> str:
    """Printable text as text, anything else as its protocol (RFC 7983 rules) plus hex."""
    try:
        text = data.decode("utf-8")
        if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
            return repr(text if len(text) <= limit else text[:limit] + "…")
    except UnicodeDecodeError:
        pass
    label = ""
    if tcp:
        transport, items = classify_tcp_payload(data)
        if transport == "ice-tcp":
            label = "ICE-TCP " + "; ".join(item.describe() for item in items[:3])
    else:
        item = classify_payload(data)
        if item.kind != OTHER:
            label = item.describe()
    shown = data[:16].hex(" ") + (" …" if len(data) > 16 else "")
    return f"{label} · hex {shown}" if label else f"hex {shown}"


def _payload(message: str | None, seq: int, count: int, proto: str,
             stun: bool) -> tuple[bytes, bytes | None]:
    """What probe number SEQ sends, and the STUN transaction id to match a reply to."""
    if stun:
        request, transaction_id = stun_binding_request()
        if proto == "tcp":  # ICE-TCP: RFC 4571 two-byte length framing (RFC 6544 §2)
            request = struct.pack("!H", len(request)) + request
        return request, transaction_id
    text = message if message is not None else f"callsctl {proto} probe {seq}/{count}"
    if not text.endswith("\n"):
        text += "\n"  # as nc sends a typed line
    return text.encode("utf-8"), None


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 3), "avg": round(sum(values) / len(values), 3),
            "max": round(max(values), 3)}


def _fmt_stats(label: str, values: list[float]) -> str:
    stats = _stats(values)
    if stats is None:
        return ""
    if len(values) == 1:
        return f"{label} {stats['avg']:.2f} ms"
    return f"{label} min/avg/max {stats['min']:.2f}/{stats['avg']:.2f}/{stats['max']:.2f} ms"


def _resolve_for_probe(name: str, host: str, port: int,
                       socktype: int) -> tuple[int, tuple[Any, ...]] | CheckResult:
    try:
        return resolve(host, port, socktype)[0]
    except CliError as exc:
        if exc.exit_code == EXIT_USAGE:
            raise
        return CheckResult(name, "fail", exc.message,
                           fix="check the host name and DNS, or probe the IP address",
                           details={"verdict": "unresolved", "host": host, "port": port})


def _unreachable(exc: OSError) -> bool:
    return exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                         errno.EADDRNOTAVAIL)


# --- UDP probe ---------------------------------------------------------------------------


def _udp_wait(sock: socket.socket, deadline: float, transaction_id: bytes | None,
              stopped: StopCheck) -> bytes | None:
    """The first datagram answering this probe before DEADLINE, or None.

    The socket is connected, so only the target's datagrams arrive; with
    --stun, replies to earlier requests are skipped by transaction id.
    ConnectionRefusedError (ICMP port unreachable) propagates to the caller.
    Waits in slices of 0.2 s so that Ctrl-C ends a long wait promptly.
    """
    for _ in range(10_000):  # bounded: stray datagrams and 0.2 s slices, within the deadline
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stopped():
            return None
        ready, _, _ = select.select([sock], [], [], min(remaining, 0.2))
        if not ready:
            continue
        data = sock.recv(65535)
        if transaction_id is None or _stun_reply_matches(data, transaction_id):
            return data
    return None


def udp_probe(host: str, port: int, *, message: str | None = None, count: int = 3,
              timeout: float = 2.0, stun: bool = False, on_event: EventSink | None = None,
              stopped: StopCheck | None = None) -> CheckResult:
    """Send COUNT datagrams to HOST:PORT and report answered / refused / silent.

    Raises CliError(exit 2) only for a malformed host; everything that can go
    wrong on the network is a verdict in the returned CheckResult. STOPPED
    (e.g. Ctrl-C seen) ends the probe early with a verdict on what was sent.
    """
    say = on_event or (lambda _line: None)
    stopped = stopped or (lambda: False)
    name = f"udp {host}:{port}"
    target = _resolve_for_probe(name, host, port, socket.SOCK_DGRAM)
    if isinstance(target, CheckResult):
        return target
    family, sockaddr = target
    addr = hostport(sockaddr[0], port)
    rtts: list[float] = []
    replies: list[dict[str, Any]] = []
    sent = 0
    outcome = ""
    error_text = ""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            # Connected, so the kernel reports ICMP errors for this peer (RFC 1122 §4.1.3.3).
            sock.connect(sockaddr)
            for seq in range(1, count + 1):
                if stopped():
                    break
                payload, transaction_id = _payload(message, seq, count, "udp", stun)
                started = time.monotonic()
                sock.send(payload)
                sent += 1
                say(f"→ {len(payload)} B to {addr}: {describe_bytes(payload)}")
                data = _udp_wait(sock, started + timeout, transaction_id, stopped)
                if data is None:
                    if not stopped():
                        say(f"  no reply within {timeout:g} s")
                    continue
                rtt = (time.monotonic() - started) * 1000
                rtts.append(rtt)
                reply: dict[str, Any] = {"seq": seq, "size": len(data), "rtt_ms": round(rtt, 3),
                                         "preview": describe_bytes(data)}
                if stun:
                    reply["mapped_address"] = classify_payload(data).mapped_address
                replies.append(reply)
                say(f"← {len(data)} B from {addr} in {rtt:.2f} ms: {reply['preview']}")
        except ConnectionRefusedError:
            outcome = "refused"
            say(f"← ICMP port unreachable from {addr}")
        except OSError as exc:
            outcome = "unreachable" if _unreachable(exc) else "error"
            error_text = exc.strerror or str(exc)
            say(f"✗ {error_text}")
    answered = len(rtts)
    if not outcome and sent == 0:
        outcome, error_text = "error", "interrupted before anything was sent"
    elif not outcome:
        outcome = "answered" if answered == sent else ("partial" if answered else "silent")
    elif answered:
        outcome = "partial"
    details: dict[str, Any] = {
        "verdict": outcome, "host": host, "address": addr, "port": port, "sent": sent,
        "answered": answered, "timeout_s": timeout, "stun": stun, "rtt_ms": _stats(rtts),
        "replies": replies[:20],
    }
    rtt_text = _fmt_stats("rtt", rtts)
    figure = f"{answered}/{sent} answered" + (f", {rtt_text}" if rtt_text else "")
    result = _udp_verdict(name, outcome, addr, port, sent, answered, timeout, stun, error_text,
                          figure)
    result.details = details
    if stun and replies and replies[0].get("mapped_address"):
        result.summary += f"; the server sees you as {replies[0]['mapped_address']}"
    return result


def _udp_verdict(name: str, outcome: str, addr: str, port: int, sent: int, answered: int,
                 timeout: float, stun: bool, error_text: str, figure: str) -> CheckResult:
    if outcome == "answered":
        return CheckResult(name, "pass", f"answered: {addr} replied to every datagram — UDP "
                           f"{port} is open both ways", figure)
    if outcome == "partial":
        lost = sent - answered
        return CheckResult(name, "warn", f"partly answered: {lost} of {sent} datagrams got no "
                           "reply", figure,
                           fix="some loss on the path (or the listener stopped); probe again "
                               "with a larger --count to measure it")
    if outcome == "refused":
        return CheckResult(
            name, "fail", f"refused: {addr} answered with ICMP port unreachable — the host is "
            f"reachable but nothing listens on UDP {port} (or a firewall REJECT rule, which "
            "sends the same ICMP)", figure,
            fix=f"start the server (`callsctl serve`, udp_port {port}) or, to test only the "
                f"path, `callsctl check listen --udp --port {port} --echo` on the host; behind "
                "NAT, check the forward points at the right internal port")
    if outcome == "silent":
        plural = "s" if sent != 1 else ""
        head = (f"silent: {sent} datagram{plural} sent, no reply and no ICMP error within "
                f"{timeout:g} s each — either a firewall drops UDP {port} (on the way or on "
                "the host), or ")
        if stun:
            return CheckResult(
                name, "fail", head + "what listens there does not answer STUN (the SFU "
                "does; nc does not)", figure,
                fix=f"check that the SFU runs with udp_port {port}; if it does, open/forward "
                    f"UDP {port} in the host and cloud firewall")
        return CheckResult(
            name, "fail", head + "the listener received them and did not answer (`nc -l -u` "
            "answers only when you type; the SFU answers only STUN)", figure,
            fix=f"if the SFU is running, probe with --stun, which it answers; otherwise run "
                f"`callsctl check listen --udp --port {port} --echo` on the host and probe "
                f"again: if it prints nothing, open/forward UDP {port} in the host and cloud "
                "firewall")
    if outcome == "unreachable":
        return CheckResult(name, "fail", f"unreachable: {error_text} ({addr})", figure,
                           fix="check the address and this machine's routing; the host may "
                               "be down or a router rejects the traffic")
    return CheckResult(name, "fail", f"error: {error_text} ({addr})", figure)


# --- TCP probe ---------------------------------------------------------------------------


def _tcp_read_reply(sock: socket.socket, deadline: float, framed: bool) -> bytes | None:
    """The first reply chunk (or, framed, the first RFC 4571 frame); b"" if the peer closed."""
    buffer = b""
    for _ in range(64):  # bounded number of reads; each waits at most until the deadline
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return buffer or None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65535)
        except TimeoutError:
            return buffer or None
        if not chunk:
            return buffer
        buffer += chunk
        if not framed:
            return buffer
        if len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack_from("!H", buffer)[0]:
            length = struct.unpack_from("!H", buffer)[0]
            return buffer[2 : 2 + length]
    return buffer or None


@dataclass
class _TcpTally:
    connects: list[float] = field(default_factory=list)
    reply_rtts: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    replies: list[dict[str, Any]] = field(default_factory=list)
    closed_without_reply: int = 0
    no_reply: int = 0
    error_text: str = ""
    attempts: int = 0

    def failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


def tcp_probe(host: str, port: int, *, message: str | None = None, count: int = 1,
              timeout: float = 3.0, stun: bool = False, on_event: EventSink | None = None,
              stopped: StopCheck | None = None) -> CheckResult:
    """Open COUNT TCP connections to HOST:PORT; with a message, send it and wait for a reply.

    Connected / refused (RST) / timed out (filtered) / unreachable, with the
    connect time (one round trip: the SYN/SYN-ACK exchange).
    """
    say = on_event or (lambda _line: None)
    stopped = stopped or (lambda: False)
    name = f"tcp {host}:{port}"
    target = _resolve_for_probe(name, host, port, socket.SOCK_STREAM)
    if isinstance(target, CheckResult):
        return target
    family, sockaddr = target
    addr = hostport(sockaddr[0], port)
    send = stun or message is not None
    tally = _TcpTally()
    for seq in range(1, count + 1):
        if stopped():
            break
        tally.attempts += 1
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            started = time.monotonic()
            try:
                sock.connect(sockaddr)
            except ConnectionRefusedError:
                tally.failed("refused")
                say(f"✗ {addr}: connection refused (TCP reset)")
                continue
            except TimeoutError:
                tally.failed("timeout")
                say(f"✗ {addr}: no answer to the connection attempt within {timeout:g} s")
                continue
            except OSError as exc:
                tally.failed("unreachable" if _unreachable(exc) else "error")
                tally.error_text = exc.strerror or str(exc)
                say(f"✗ {addr}: {tally.error_text}")
                continue
            connect_ms = (time.monotonic() - started) * 1000
            tally.connects.append(connect_ms)
            say(f"connected to {addr} in {connect_ms:.2f} ms")
            if send:
                _tcp_exchange(sock, tally, message, seq, count, stun, timeout, addr, say)
    return _tcp_result(name, host, addr, port, timeout, send, stun, tally)


def _tcp_exchange(sock: socket.socket, tally: _TcpTally, message: str | None, seq: int,
                  count: int, stun: bool, timeout: float, addr: str, say: EventSink) -> None:
    payload, _ = _payload(message, seq, count, "tcp", stun)
    started = time.monotonic()
    try:
        sock.sendall(payload)
        say(f"→ {len(payload)} B: {describe_bytes(payload, tcp=True)}")
        data = _tcp_read_reply(sock, started + timeout, framed=stun)
    except OSError as exc:  # reset by peer, broken pipe
        tally.closed_without_reply += 1
        say(f"✗ {exc.strerror or exc}")
        return
    if data is None:
        tally.no_reply += 1
        say(f"  no reply within {timeout:g} s")
    elif data == b"":
        tally.closed_without_reply += 1
        say(f"  {addr} closed the connection without replying")
    else:
        rtt = (time.monotonic() - started) * 1000
        tally.reply_rtts.append(rtt)
        reply: dict[str, Any] = {"seq": seq, "size": len(data), "rtt_ms": round(rtt, 3),
                                 "preview": describe_bytes(data)}
        if stun:
            reply["mapped_address"] = classify_payload(data).mapped_address
        tally.replies.append(reply)
        say(f"← {len(data)} B in {rtt:.2f} ms: {reply['preview']}")


def _tcp_result(name: str, host: str, addr: str, port: int, timeout: float,
                send: bool, stun: bool, tally: _TcpTally) -> CheckResult:
    connected = len(tally.connects)
    count = tally.attempts  # fewer than asked when Ctrl-C ended the probe
    if count == 0:
        tally.error_text = "interrupted before any connection attempt"
    figure = _fmt_stats("connect", tally.connects)
    if tally.reply_rtts:
        figure += ", " + _fmt_stats("reply", tally.reply_rtts)
    main_failure = max(tally.failures, key=lambda k: tally.failures[k]) if tally.failures \
        else "error"
    verdict = "connected" if connected == count > 0 else (
        "partial" if connected else main_failure)
    details: dict[str, Any] = {
        "verdict": verdict, "host": host, "address": addr, "port": port, "attempts": count,
        "connected": connected, "failures": tally.failures, "timeout_s": timeout,
        "connect_ms": _stats(tally.connects), "sent": connected if send else 0,
        "answered": len(tally.reply_rtts), "reply_rtt_ms": _stats(tally.reply_rtts),
        "closed_without_reply": tally.closed_without_reply, "replies": tally.replies[:20],
    }
    if connected:
        summary = f"connected to {addr}" + (f" ({connected}/{count} attempts)"
                                            if connected != count else "")
        if send and tally.reply_rtts:
            # The reply's content stays in details (and the live lines): it is remote text
            # and the table renders markup.
            summary += f"; {len(tally.reply_rtts)} of {connected} messages answered " \
                       f"({tally.replies[0]['size']} B)"
            if stun and tally.replies[0].get("mapped_address"):
                summary += f" (the server sees you as {tally.replies[0]['mapped_address']})"
        elif send and tally.closed_without_reply:
            summary += "; the server closed the connection without replying"
        elif send:
            summary += f"; no reply within {timeout:g} s (nc -l prints the message but does " \
                       "not answer; the SFU answers --stun)"
        status = "pass" if connected == count else "warn"
        fix = None if status == "pass" else (
            f"some attempts failed ({', '.join(tally.failures)}): the listener may accept one "
            "connection only (nc -l), or the path is flaky")
        return CheckResult(name, status, summary, figure or None, fix, details)
    if verdict == "refused":
        result = CheckResult(
            name, "fail", f"refused: {addr} refused the connection — the host is reachable "
            f"but nothing listens on TCP {port} (or a firewall REJECT rule)", None,
            fix=f"start the server (`callsctl serve` listens for ICE-TCP on TCP {port}) or "
                f"`callsctl check listen --tcp --port {port}` to test the path; behind NAT, "
                "check the forward")
    elif verdict == "timeout":
        result = CheckResult(
            name, "fail", f"timed out: no answer to the connection attempt within {timeout:g} s "
            f"— a firewall drops TCP {port} (filtered), or the host is down", None,
            fix=f"open/forward TCP {port} in the host and cloud firewall; a firewall that "
                "rejects instead of dropping would show 'refused'")
    elif verdict == "unreachable":
        result = CheckResult(name, "fail", f"unreachable: {tally.error_text} ({addr})", None,
                             fix="check the address and this machine's routing")
    else:
        result = CheckResult(name, "fail", f"error: {tally.error_text} ({addr})", None)
    result.details = details
    return result


# --- commands: udp, tcp ------------------------------------------------------------------


def _probe_command(proto: str, host: str, port: int, message: str | None, count: int,
                   timeout: float, stun: bool, as_json: bool) -> None:
    if message is not None and len(message.encode("utf-8")) + 1 > MAX_UDP_PAYLOAD:
        fail(f"--message is too long: at most {MAX_UDP_PAYLOAD - 1} bytes", EXIT_USAGE)
    if message is not None and stun:
        fail("--message and --stun exclude each other: --stun sends a STUN Binding Request",
             EXIT_USAGE)
    socktype = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    resolve(host, port, socktype)  # fail early, in one line, on a bad or unknown host
    console = Console(highlight=False, soft_wrap=True)

    def sink(line: str) -> None:
        console.print(line, markup=False)  # replies are remote text: never markup

    probe = udp_probe if proto == "udp" else tcp_probe
    with SignalStop() as stop:  # Ctrl-C ends the probe with a verdict on what was sent
        result = probe(host, port, message=message, count=count, timeout=timeout, stun=stun,
                       on_event=None if as_json else sink, stopped=lambda: stop.requested)
    if stop.requested:
        result.details["interrupted"] = True
    raise typer.Exit(emit([result], as_json, title=f"check {proto}"))


_HOST = typer.Option(..., "--host", "-H", help="Server address or name (the ICE host "
                     "override / public IP clients use).")
_PORT = typer.Option(8443, "--port", "-p", parser=parse_port, metavar="PORT",
                     help="Port to probe.")
_MESSAGE = typer.Option(None, "--message", "-m",
                        help="Text to send (a newline is added, as nc sends a typed line).")
_STUN = typer.Option(False, "--stun", help="Send a STUN Binding Request instead of text: the "
                     "callsctl SFU answers it, so a running server gives a definite answer.")
_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


@app.command("udp")
def udp_cmd(
    host: str = _HOST,
    port: int = _PORT,
    message: str | None = _MESSAGE,
    count: int = typer.Option(3, "--count", "-c", parser=parse_count, metavar="N",
                              help="Datagrams to send."),
    timeout: float = typer.Option(2.0, "--timeout", "-t", parser=parse_seconds,
                                  metavar="SECONDS", help="How long to wait for each reply."),
    stun: bool = _STUN,
    as_json: bool = _JSON,
) -> None:
    """Probe a UDP port like `nc -v -u HOST 8443`: answered, refused or silent.

    Refused means an ICMP port unreachable came back: the host is reachable but
    nothing listens. Silent is ambiguous (firewall, or a listener that does not
    answer); run `callsctl check listen --udp --echo` on the host, or use --stun
    against a running SFU. Exit 0 = answered, 1 = not, 2 = usage error.
    """
    _probe_command("udp", host, port, message, count, timeout, stun, as_json)


@app.command("tcp")
def tcp_cmd(
    host: str = _HOST,
    port: int = _PORT,
    message: str | None = _MESSAGE,
    count: int = typer.Option(1, "--count", "-c", parser=parse_count, metavar="N",
                              help="Connections to open (each sends the message once)."),
    timeout: float = typer.Option(3.0, "--timeout", "-t", parser=parse_seconds,
                                  metavar="SECONDS",
                                  help="How long to wait for the connection and the reply."),
    stun: bool = _STUN,
    as_json: bool = _JSON,
) -> None:
    """Probe a TCP port like `nc -v HOST 8443`: connected, refused or timed out (filtered).

    The TCP media port is the ICE-TCP fallback for clients whose UDP is
    blocked. With --message the text is sent and any reply shown; --stun sends
    an RFC 4571-framed STUN Binding Request, as an ICE-TCP client would.
    Exit 0 = connected, 1 = not, 2 = usage error.
    """
    _probe_command("tcp", host, port, message, count, timeout, stun, as_json)


# --- command: listen ---------------------------------------------------------------------


def _port_owner(proto: str, port: int) -> str:
    """' (PID 123, nc)' for the process holding PROTO PORT, when the system tells us."""
    try:
        import psutil

        for conn in psutil.net_connections(kind=proto):
            if conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "?"
                return f" (PID {conn.pid}, {name})"
    except Exception:  # best effort only: other users' sockets need root to see
        return ""
    return ""


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 1024


def _local_addresses() -> list[str]:
    try:
        return sorted({address for _family, address in interface_addresses()})
    except Exception:
        return []


def bind_listener(proto: str, bind: str, port: int) -> socket.socket:
    """A bound (and for TCP listening) socket, or a one-line error naming the fix."""
    socktype = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    family, sockaddr = resolve(bind, port, socktype, passive=True)[0]
    sock = socket.socket(family, socktype)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if proto == "tcp":
            # Lets a restarted listener rebind while old connections sit in TIME_WAIT;
            # Linux still refuses when another socket listens on the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        if proto == "tcp":
            sock.listen(16)
    except OSError as exc:
        sock.close()
        where = f"{proto.upper()} {hostport(sockaddr[0], port)}"
        if exc.errno == errno.EADDRINUSE:
            fail(f"{where} is already in use{_port_owner(proto, port)}: stop that program "
                 "(a running `callsctl serve`, another nc) or choose another --port")
        if exc.errno == errno.EACCES:
            start = _unprivileged_port_start()
            fail(f"no permission to listen on {where}: ports below {start} need root or the "
                 f"CAP_NET_BIND_SERVICE capability; run with sudo or use a port ≥ {start}")
        if exc.errno == errno.EADDRNOTAVAIL:
            addrs = ", ".join(_local_addresses()) or "see `ip addr`"
            fail(f"cannot listen on {where}: {bind} is not an address of this host; use "
                 f"0.0.0.0 (all addresses) or one of: {addrs}")
        fail(f"cannot listen on {where}: {exc.strerror or exc}")
    return sock


@dataclass
class _SourceStats:
    packets: int = 0
    bytes: int = 0
    first: float = 0.0
    last: float = 0.0


class _Listener:
    """Counts, prints and records what a listener receives."""

    def __init__(self, proto: str, echo: bool, as_json: bool) -> None:
        self.proto = proto
        self.echo = echo
        self.as_json = as_json
        self.console = Console(highlight=False, soft_wrap=True)
        self.start = time.time()
        self.packets = 0
        self.bytes = 0
        self.connections = 0
        self.sources: dict[str, _SourceStats] = {}
        self.records: list[dict[str, Any]] = []

    def _print(self, line: str) -> None:
        if not self.as_json:
            self.console.print(line, markup=False)
            self.console.file.flush()

    def event(self, source: str, what: str) -> None:
        now = time.time()
        if len(self.records) < _MAX_RECORDS:
            self.records.append({"t": round(now - self.start, 3), "source": source,
                                 "event": what})
        self._print(f"{time.strftime('%H:%M:%S', time.localtime(now))}  {source}  {what}")

    def packet(self, source: str, data: bytes) -> None:
        now = time.time()
        self.packets += 1
        self.bytes += len(data)
        key = source if (source in self.sources or len(self.sources) < _MAX_SOURCES) \
            else "(other sources)"
        stats = self.sources.setdefault(key, _SourceStats(first=now))
        stats.packets += 1
        stats.bytes += len(data)
        stats.last = now
        preview = describe_bytes(data, tcp=self.proto == "tcp")
        if len(self.records) < _MAX_RECORDS:
            self.records.append({"t": round(now - self.start, 3), "source": source,
                                 "size": len(data), "preview": preview})
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        echoed = "  (echoed)" if self.echo else ""
        self._print(f"{stamp}  {source:<22} {len(data):>6} B  {preview}{echoed}")

    def result(self, where: str, port: int, stopped_by: str) -> CheckResult:
        seconds = time.time() - self.start
        name = f"listen {where}"
        details: dict[str, Any] = {
            "protocol": self.proto, "listen": where, "port": port, "echo": self.echo,
            "seconds": round(seconds, 3), "stopped_by": stopped_by, "packets": self.packets,
            "bytes": self.bytes, "connections": self.connections,
            "sources": [{"source": s, "packets": st.packets, "bytes": st.bytes,
                         "first": round(st.first - self.start, 3),
                         "last": round(st.last - self.start, 3)}
                        for s, st in self.sources.items()],
            "events": self.records,
        }
        figure = f"{self.packets} pkts, {self.bytes} B"
        if self.packets or self.connections:
            summary = (f"received {self.packets} packets ({self.bytes} B) from "
                       f"{len(self.sources)} sources")
            if self.proto == "tcp":
                summary += f" over {self.connections} connections"
            return CheckResult(name, "pass", summary + f" in {seconds:.1f} s", figure,
                               details=details)
        return CheckResult(
            name, "fail", f"nothing arrived on {self.proto.upper()} {where} in {seconds:.1f} s",
            figure,
            fix=f"no client reached {self.proto.upper()} {port} here: open it in the host and "
                f"cloud firewall (e.g. `ufw allow {port}/{self.proto}`), check port forwarding "
                f"to this host, and probe from a client: `callsctl check {self.proto} --host "
                f"PUBLIC_IP --port {port}`",
            details=details)

    def print_sources(self) -> None:
        if self.as_json or not self.sources:
            return
        table = Table(title="per source", title_justify="left")
        for col in ("source", "packets", "bytes", "first (s)", "last (s)"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for source, st in sorted(self.sources.items(), key=lambda kv: -kv[1].packets):
            table.add_row(source, str(st.packets), str(st.bytes),
                          f"{st.first - self.start:.2f}", f"{st.last - self.start:.2f}")
        self.console.print(table)


def _should_stop(stop: SignalStop, deadline: float | None, count: int | None,
                 listener: _Listener) -> str:
    if stop.requested:
        return "signal"
    if count is not None and listener.packets >= count:
        return "count"
    if deadline is not None and time.monotonic() >= deadline:
        return "duration"
    return ""


def _wait_time(deadline: float | None) -> float:
    if deadline is None:
        return 0.2
    return max(0.0, min(0.2, deadline - time.monotonic()))


def _serve_udp(sock: socket.socket, listener: _Listener, stop: SignalStop,
               deadline: float | None, count: int | None) -> str:
    # Runs until a signal, --count or --duration; each turn waits at most 0.2 s so
    # the stop conditions are seen promptly. Bound to every address, an echo leaves
    # from the address the datagram came to (IP_PKTINFO, as `serve` does): on a host
    # with several, the kernel's choice is another, and a client's connected socket
    # (`nc -u`) drops it, which would read as UDP blocked.
    to_each_address = listener.echo and pktinfo.enable(sock)
    destination = None
    while not (reason := _should_stop(stop, deadline, count, listener)):
        ready, _, _ = select.select([sock], [], [], _wait_time(deadline))
        if not ready:
            continue
        try:
            if to_each_address:
                data, ancdata, _flags, peer = sock.recvmsg(65535, pktinfo.CONTROL_SPACE)
                destination = pktinfo.destination(ancdata)
            else:
                data, peer = sock.recvfrom(65535)
        except OSError:
            continue
        listener.packet(hostport(peer[0], peer[1]), data)
        if listener.echo:
            with contextlib.suppress(OSError):
                if destination is not None:
                    sock.sendmsg([data], pktinfo.source_control(destination), 0, peer)
                else:
                    sock.sendto(data, peer)
    return reason


def _serve_tcp(server: socket.socket, listener: _Listener, stop: SignalStop,
               deadline: float | None, count: int | None) -> str:
    clients: dict[socket.socket, str] = {}
    try:
        while not (reason := _should_stop(stop, deadline, count, listener)):
            ready, _, _ = select.select([server, *clients], [], [], _wait_time(deadline))
            for sock in ready:
                if sock is server:
                    _accept(server, clients, listener)
                    continue
                source = clients[sock]
                try:
                    data = sock.recv(65535)
                except OSError as exc:
                    data = b""
                    listener.event(source, f"connection error: {exc.strerror or exc}")
                if not data:
                    listener.event(source, "closed the connection")
                    del clients[sock]
                    sock.close()
                    continue
                listener.packet(source, data)
                if listener.echo:
                    with contextlib.suppress(OSError):
                        sock.sendall(data)
                if count is not None and listener.packets >= count:
                    break
    finally:
        for sock in clients:
            sock.close()
    return reason


def _accept(server: socket.socket, clients: dict[socket.socket, str],
            listener: _Listener) -> None:
    try:
        conn, peer = server.accept()
    except OSError:
        return
    source = hostport(peer[0], peer[1])
    listener.connections += 1
    if len(clients) >= _MAX_TCP_CLIENTS:
        conn.close()
        listener.event(source, f"connected; closed at once ({_MAX_TCP_CLIENTS} clients open)")
        return
    conn.settimeout(1.0)  # bounds a blocking echo to a client that does not read
    clients[conn] = source
    listener.event(source, "connected")


@app.command("listen")
def listen_cmd(
    udp: bool = typer.Option(False, "--udp", "-u", help="Listen on UDP (the default)."),
    tcp: bool = typer.Option(False, "--tcp", help="Listen on TCP (the ICE-TCP fallback)."),
    port: int = typer.Option(8443, "--port", "-p", parser=parse_port, metavar="PORT",
                             help="Port to listen on."),
    bind: str = typer.Option("0.0.0.0", "--bind", "-b",
                             help="Local address to listen on (0.0.0.0 = all IPv4, :: = all)."),
    echo: bool = typer.Option(False, "--echo", "-e",
                              help="Send every packet back, so `check udp` gets an answer."),
    count: int | None = typer.Option(None, "--count", "-c", parser=parse_count, metavar="N",
                                     help="Stop after N packets."),
    duration: float | None = typer.Option(None, "--duration", "-d", parser=parse_seconds,
                                          metavar="SECONDS",
                                          help="Stop after this long (default: until Ctrl-C)."),
    as_json: bool = _JSON,
) -> None:
    """Listen like `nc -l -u -p 8443` and print what arrives, with its source.

    Run it on the server (with the SFU stopped, since it needs the port) while
    a client runs `callsctl check udp --host PUBLIC_IP` or `nc -u PUBLIC_IP 8443`.
    Ctrl-C, --count or --duration end it with a per-source summary. Exit 0 when
    something arrived, 1 when nothing did.
    """
    if udp and tcp:
        fail("choose one of --udp or --tcp (run two listeners to watch both)", EXIT_USAGE)
    proto = "tcp" if tcp else "udp"
    sock = bind_listener(proto, bind, port)
    bound = sock.getsockname()
    where = hostport(bound[0], bound[1])
    listener = _Listener(proto, echo, as_json)
    limit = [f"{count} packets"] if count else []
    limit += [f"{duration:g} s"] if duration else []
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"callsctl: listening on {proto} {where}{' (echo on)' if echo else ''}; "
        f"stops after {' or '.join(limit) or 'Ctrl-C'}")
    deadline = time.monotonic() + duration if duration else None
    with sock, SignalStop() as stop:
        serve = _serve_udp if proto == "udp" else _serve_tcp
        stopped_by = serve(sock, listener, stop, deadline, count)
    listener.print_sources()
    result = listener.result(where, port, stopped_by)
    raise typer.Exit(emit([result], as_json, title=f"check listen ({stopped_by})"))

