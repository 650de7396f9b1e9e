"""`callsctl check rtc` and `check all` against real servers on loopback.

A live `callsctl serve` (the conftest fixtures), closed ports, and a fake
server this file runs itself (a tiny aiohttp /version plus STUN responders
on UDP and RFC 4571-framed TCP) that advertises what a misconfigured
deployment would: a private address, the wrong port, UDP blocked.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import web
from aioice import stun

from callsctl.check.report import Context, Step, run_steps
from callsctl.check.result import CheckResult
from callsctl.check.rtc import RtcProbe, RtcTarget, classify
from tests.support.clients import close_all, join_all
from tests.support.helpers import free_port, free_udp_tcp_port, run_cli


def _run(*args: str, timeout: float = 30) -> tuple[int, dict[str, dict]]:
    proc = run_cli("check", *args, "--json", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["ok"] == (proc.returncode == 0)
    return proc.returncode, {r["name"]: r for r in payload["results"]}


def _ports(server: Any) -> tuple[str, ...]:
    return ("--host", "127.0.0.1", "--udp-port", str(server.udp_port), "--tcp-port",
            str(server.udp_port), "--api-port", str(server.api_port))


# --- a fake server -----------------------------------------------------------------------


def _binding_response(data: bytes, addr: tuple[str, int]) -> bytes | None:
    try:
        request = stun.parse_message(data)
    except ValueError:
        return None
    if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
        return None
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                            transaction_id=request.transaction_id,
                            attributes={"XOR-MAPPED-ADDRESS": (addr[0], addr[1])})
    response.add_fingerprint()
    return bytes(response)


class _StunUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = _binding_response(data, addr)
        if answer:
            self.transport.sendto(answer, addr)  # type: ignore[attr-defined]


async def _stun_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RFC 4571: every message behind a two-byte length."""
    peer = writer.get_extra_info("peername")
    try:
        while True:
            length = int.from_bytes(await reader.readexactly(2), "big")
            answer = _binding_response(await reader.readexactly(length), peer)
            if answer:
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


@contextmanager
def fake_server(make_version: Callable[[dict[str, int]], dict[str, Any]], *, udp: bool = True,
                silent_udp: bool = False, tcp: bool = False) -> Iterator[dict[str, int]]:
    """Run /healthz + /version and optional STUN responders in a background event loop.

    make_version gets the ports picked for the fake ({"api": .., "media": ..}).
    """
    api = free_port()
    ports = {"api": api, "media": free_udp_tcp_port(avoid=(api,))}
    version = make_version(ports)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    closers: list[Any] = []

    async def start() -> None:
        app = web.Application()

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def version_route(_: web.Request) -> web.Response:
            return web.json_response(version)

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/version", version_route)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", ports["api"]).start()
        closers.append(runner.cleanup)
        if udp or silent_udp:
            protocol = asyncio.DatagramProtocol if silent_udp else _StunUdp
            transport, _ = await loop.create_datagram_endpoint(
                protocol, local_addr=("127.0.0.1", ports["media"]))
            closers.append(transport.close)
        if tcp:
            server = await asyncio.start_server(_stun_tcp, "127.0.0.1", ports["media"])
            closers.append(server.close)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "fake server did not start"
    try:
        yield ports
    finally:
        async def stop() -> None:
            for close in reversed(closers):
                result = close()
                if asyncio.iscoroutine(result):
                    await result

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _fake_args(ports: dict[str, int]) -> tuple[str, ...]:
    return ("--host", "127.0.0.1", "--udp-port", str(ports["media"]), "--tcp-port",
            str(ports["media"]), "--api-port", str(ports["api"]), "--timeout", "1")


def _version(host: str, udp_port: int | None, tcp_port: int | None = None,
             source: str = "interface") -> dict[str, Any]:
    return {"version": "fake", "udp_port": udp_port, "tcp_port": tcp_port,
            "ice": {"host": host, "udp_port": udp_port, "tcp_port": tcp_port, "source": source}}


# --- against the live server ---------------------------------------------------------------


def test_rtc_against_live_server(server) -> None:
    code, results = _run("rtc", *_ports(server))
    assert code == 0, results
    assert list(results) == ["server", "rtc udp", "rtc tcp", "advertised address"]
    assert results["server"]["details"]["server_kind"] == "callsctl"
    udp = results["rtc udp"]
    assert udp["status"] == "pass"
    assert udp["figure"].endswith(" ms")
    assert udp["details"]["server_saw_us_as"] == udp["details"]["local_address"]
    tcp = results["rtc tcp"]
    assert tcp["status"] in ("pass", "warn")  # warn while serve has no ICE-TCP listener
    if tcp["status"] == "pass":
        assert tcp["details"]["server_saw_us_as"].startswith("127.0.0.1:")
    advertised = results["advertised address"]
    assert advertised["status"] == "pass"
    assert advertised["figure"].startswith(f"127.0.0.1:{server.udp_port}")


def test_rtc_flags_an_advertised_address_that_does_not_answer(serve_factory) -> None:
    server = serve_factory("--ice-host-override", "127.0.0.2")
    code, results = _run("rtc", *_ports(server))
    assert code == 1
    assert results["rtc udp"]["status"] == "pass"
    advertised = results["advertised address"]
    assert advertised["status"] == "fail"
    assert "127.0.0.2" in advertised["summary"]
    assert advertised["details"]["suggested_config"] == {"ice_host_override": "127.0.0.1"}


def test_all_against_live_server(server) -> None:
    code, results = _run("all", *_ports(server))
    assert code == 0, results
    assert list(results) == ["server", "api", "rtc udp", "rtc tcp", "advertised address",
                             "media queue"]
    assert results["api"]["status"] == "pass"
    assert results["api"]["details"]["version"]
    assert results["media queue"]["status"] == "pass"  # no call: nothing waited
    assert results["media queue"]["figure"] == "idle"
    # STUN runs only when asked; a dead STUN server fails the report.
    code, results = _run("all", *_ports(server), "--stun-server",
                         f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert code == 1
    assert list(results)[-1] == "stun binding"
    assert results["stun binding"]["status"] == "fail"


async def test_all_reports_how_long_a_live_calls_media_waits_in_the_server(server) -> None:
    """With audio flowing, `check all` reads the server's own queue-delay histogram twice
    and reports the p99 of the packets forwarded in between (a healthy server: a few ms)."""
    people = await join_all(server, 2, call="queue-check")
    try:
        # The check blocks for its two readings: run it beside the participants' loop.
        code, results = await asyncio.to_thread(_run, "all", *_ports(server))
    finally:
        await close_all(people)
    queue = results["media queue"]
    assert queue["details"]["window_packets"] > 100, queue  # 2 speakers x 50/s x 2 s
    assert queue["figure"].startswith("p99 ") and "since it started" in queue["summary"]
    # The verdict is the server's load: a few ms on an idle machine (pass), more on a busy
    # one (a warning with its fix, never a failure); test_check_media_load pins each verdict.
    assert code == 0 and queue["status"] in ("pass", "warn"), queue
    assert (queue["status"] == "pass") == (queue["details"]["window_p99_ms"] < 20), queue
    assert (queue["status"] == "warn") == (queue["fix"] is not None), queue


# --- closed ports and fake servers ----------------------------------------------------------


def test_closed_ports_fail_fast() -> None:
    media, api = free_udp_tcp_port(), free_port()
    code, results = _run("all", "--host", "127.0.0.1", "--udp-port", str(media), "--tcp-port",
                         str(media), "--api-port", str(api), "--timeout", "2", timeout=20)
    assert code == 1
    assert results["api"]["status"] == "fail"
    assert results["rtc udp"]["status"] == "fail"
    assert results["rtc udp"]["figure"] == "refused"
    assert results["rtc tcp"]["status"] == "warn"  # TCP is a fallback: never a failure alone
    assert results["rtc tcp"]["figure"] == "refused"
    assert results["advertised address"]["status"] == "warn"
    assert results["advertised address"]["figure"] == "unknown"


def test_fake_server_advertising_a_private_address_elsewhere() -> None:
    with fake_server(lambda ports: _version("10.255.255.1", ports["media"])) as ports:
        code, results = _run("rtc", *_fake_args(ports))
    assert code == 0  # warnings only
    assert results["rtc udp"]["status"] == "pass"
    advertised = results["advertised address"]
    assert advertised["status"] == "warn"
    assert "private 10.255.255.1" in advertised["summary"]
    assert "ice_host_override" in advertised["fix"]


def test_fake_server_advertising_the_wrong_port() -> None:
    closed = free_udp_tcp_port()
    with fake_server(lambda _ports: _version("127.0.0.1", closed, source="bind")) as ports:
        code, results = _run("rtc", *_fake_args(ports))
    assert code == 1
    advertised = results["advertised address"]
    assert advertised["status"] == "fail"
    assert f"ice_host_port_override = {ports['media']}" in advertised["fix"]
    assert advertised["details"]["suggested_config"] == {"ice_host_port_override": ports["media"]}


def test_fake_server_with_udp_blocked_but_tcp_open() -> None:
    def version(ports: dict[str, int]) -> dict[str, Any]:
        return _version("127.0.0.1", ports["media"], ports["media"])

    with fake_server(version, udp=False, silent_udp=True, tcp=True) as ports:
        code, results = _run("rtc", *_fake_args(ports))
    assert code == 1
    udp = results["rtc udp"]
    # callsctl answers bare probes, so its silence is a failure (pion's would be inconclusive)
    assert results["server"]["details"]["server_kind"] == "callsctl"
    assert udp["status"] == "fail" and udp["figure"] == "timeout"
    assert "UDP blocked, TCP open" in udp["summary"]
    assert results["rtc tcp"]["status"] == "pass"
    assert results["rtc tcp"]["details"]["server_saw_us_as"].startswith("127.0.0.1:")


def test_usage_errors() -> None:
    proc = run_cli("check", "rtc", "--host", " ", timeout=20)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    proc = run_cli("check", "all", "--host", "127.0.0.1", "--stun-server", "x:y", timeout=20)
    assert proc.returncode == 2 and "invalid --server" in proc.stderr


# --- pure logic ---------------------------------------------------------------------------


@pytest.mark.parametrize(("adv", "target", "on_server", "locals_", "status", "probe"), [
    ("127.0.0.1", "127.0.0.1", True, set(), "pass", True),        # local test setup
    ("127.0.0.1", "203.0.113.9", False, set(), "fail", False),    # loopback, remote checker
    ("10.0.0.5", "8.8.8.8", False, set(), "fail", False),         # private, reached publicly
    ("10.0.0.5", "10.0.0.5", False, set(), None, True),           # LAN: probe it
    ("10.9.9.9", "127.0.0.1", True, {"127.0.0.1"}, "warn", False),  # not on this host
    ("10.9.9.9", "127.0.0.1", True, {"10.9.9.9"}, None, True),    # our own LAN address
    ("8.8.8.8", "8.8.8.8", False, set(), None, True),             # the address probed
    ("8.8.4.4", "8.8.8.8", False, set(), None, True),             # another public: probe
    ("8.8.4.4", "127.0.0.1", True, set(), "warn", False),         # NAT's public side
    ("0.0.0.0", "127.0.0.1", True, set(), "fail", False),
])
def test_classify_advertised(adv: str, target: str, on_server: bool, locals_: set[str],
                             status: str | None, probe: bool) -> None:
    got_status, note, fix, may_probe = classify(adv, target, on_server, locals_)
    assert (got_status, may_probe) == (status, probe)
    assert adv in note
    if status == "fail" and not target.startswith("127."):
        assert fix == f'set ice_host_override = "{target}" (the address clients reach)'


def test_a_crashing_step_becomes_a_failed_result() -> None:
    def boom(_ctx: Context) -> list[CheckResult]:
        raise RuntimeError("kaput")

    steps = [Step("boom", boom), Step("fine", lambda _ctx: [CheckResult("fine", "pass", "ok")]),
             Step("skipped", boom, when=lambda _ctx: False)]
    results = run_steps(Context(RtcProbe(RtcTarget("127.0.0.1"))), steps)
    assert [(r.name, r.status) for r in results] == [("boom", "fail"), ("fine", "pass")]
    assert "kaput" in results[0].summary
