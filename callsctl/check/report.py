"""`callsctl check all`: every relevant check against one server, as one report.

An operator asking "why can't people join?" wants one command and one table:
pass / warn / fail, the measured figure, and what to do. The checks run in
the order a connection is made (API, media over UDP, media over TCP, the
advertised address; then, against callsctl, whether the server keeps up with
its media; optionally STUN), sharing one `RtcProbe` so nothing is measured
twice.

Adding a check is one line in `STEPS`: a name, a function from the run's
`Context` to CheckResults and, optionally, a condition for running it. For
example, once netcat.py offers probe functions:

    Step("udp echo", lambda ctx: [netcat.udp_probe_result(ctx.rtc.target.host, ...)]),

A step that raises is reported as a failed check; the remaining steps still run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import typer

from callsctl.check import app
from callsctl.check.fleet_checks import fleet_results, is_fleet_node
from callsctl.check.mattermost import MattermostTarget, load_target, run_mattermost
from callsctl.check.media_load import applies as media_load_applies
from callsctl.check.media_load import media_load_results
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.check.rtc import (
    DEFAULT_API_PORT,
    DEFAULT_MEDIA_PORT,
    RtcProbe,
    RtcTarget,
    advertised_result,
    api_result,
    server_result,
    tcp_result,
    udp_result,
    validate_host,
)
from callsctl.check.rtcd_cmd import RtcdTarget, parse_url, run_rtcd
from callsctl.check.stun_cmd import DEFAULT_STUN_SERVER, parse_stun_server, stun_results
from callsctl.check.webrtc_cmd import CallTarget, mint_tokens, run_call, token_call
from callsctl.errors import EXIT_USAGE, fail


@dataclass
class Context:
    """What one `check all` run knows: the server's probe and the optional STUN server."""

    rtc: RtcProbe
    stun_server: str | None = None
    call: CallTarget | None = None
    rtcd: RtcdTarget | None = None
    mattermost: MattermostTarget | None = None

    @property
    def timeout(self) -> float:
        return self.rtc.target.timeout


@dataclass(frozen=True)
class Step:
    """One entry of the report: `run` returns its results; `when` decides whether it runs."""

    name: str
    run: Callable[[Context], list[CheckResult]]
    when: Callable[[Context], bool] = lambda _ctx: True


STEPS: list[Step] = [
    Step("server", lambda ctx: [server_result(ctx.rtc)]),
    Step("api", lambda ctx: [api_result(ctx.rtc)]),
    Step("rtc udp", lambda ctx: [udp_result(ctx.rtc)]),
    Step("rtc tcp", lambda ctx: [tcp_result(ctx.rtc)]),
    Step("advertised address", lambda ctx: [advertised_result(ctx.rtc)]),
    Step("fleet", lambda ctx: fleet_results(ctx.rtc), when=lambda ctx: is_fleet_node(ctx.rtc)),
    Step("media queue", lambda ctx: media_load_results(ctx.rtc),
         when=lambda ctx: media_load_applies(ctx.rtc)),
    Step("stun", lambda ctx: stun_results(ctx.stun_server or DEFAULT_STUN_SERVER, ctx.timeout),
         when=lambda ctx: ctx.stun_server is not None),
    Step("webrtc", lambda ctx: asyncio.run(run_call(ctx.call)),  # type: ignore[arg-type]
         when=lambda ctx: ctx.call is not None),
    Step("rtcd", lambda ctx: _prefixed("rtcd", asyncio.run(run_rtcd(ctx.rtcd))),  # type: ignore[arg-type]
         when=lambda ctx: ctx.rtcd is not None),
    Step("mattermost", lambda ctx: _prefixed("mattermost", asyncio.run(
        run_mattermost(ctx.mattermost))),  # type: ignore[arg-type]
         when=lambda ctx: ctx.mattermost is not None),
]


def _prefixed(prefix: str, results: list[CheckResult]) -> list[CheckResult]:
    """Session stages share names (api, ice, ...) with the probes: name their origin."""
    for result in results:
        result.name = f"{prefix} {result.name}"
    return results


def run_steps(ctx: Context, steps: list[Step] | None = None) -> list[CheckResult]:
    """Run the enabled steps in order; a crashing step becomes a failed result, not a traceback."""
    results: list[CheckResult] = []
    for step in STEPS if steps is None else steps:
        if not step.when(ctx):
            continue
        try:
            results.extend(step.run(ctx))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            results.append(CheckResult(step.name, "fail",
                                       f"the check itself failed: {type(exc).__name__}: {exc}",
                                       fix="please report this as a callsctl bug"))
    return results


@app.command("all")
def all_command(
    host: str = typer.Option(..., "--host", "-H", help="Server host name or IP, as clients "
                             "reach it."),
    udp_port: int = typer.Option(DEFAULT_MEDIA_PORT, "--udp-port", min=1, max=65535,
                                 help="Media port over UDP."),
    tcp_port: int = typer.Option(DEFAULT_MEDIA_PORT, "--tcp-port", min=1, max=65535,
                                 help="ICE-TCP fallback port."),
    api_port: int = typer.Option(DEFAULT_API_PORT, "--api-port", min=1, max=65535,
                                 help="HTTP API port."),
    api_url: str | None = typer.Option(None, "--api-url", help="API base URL when it is not "
                                       "http://HOST:API_PORT (TLS, reverse proxy)."),
    stun_server: str | None = typer.Option(
        None, "--stun-server", help="Also run the STUN/NAT check against this server."),
    with_stun: bool = typer.Option(
        False, "--with-stun", help=f"Also run the STUN/NAT check against {DEFAULT_STUN_SERVER}."),
    timeout: float = typer.Option(3.0, "--timeout", "-t", min=0.1, max=60,
                                  help="Seconds to wait for each answer."),
    token: str | None = typer.Option(
        None, "--token", help="A join token: also make a real test call (check webrtc); with "
        "--mattermost, a personal access token."),
    rtcd_url: str | None = typer.Option(
        None, "--rtcd-url", help="Also open a real session on this rtcd (check rtcd): "
        "http://CLIENT_ID:AUTH_KEY@HOST:8045."),
    mattermost: str | None = typer.Option(
        None, "--mattermost", help="Also make a real call through this Mattermost site "
        "(check webrtc --mattermost); needs --token PAT and --channel."),
    channel: str | None = typer.Option(
        None, "--channel", help="With --mattermost: id of a test channel."),
    mm_config: str | None = typer.Option(
        None, "--mattermost-config", help="With --mattermost: TOML with url, token, channel."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="A local server's data dir: also make a real test call, with "
                                 "tokens signed by its jwt_secret (read, never created)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run every relevant check against one server and print one report.

    Order: the server's kind (callsctl, rtcd, Mattermost: what the probes can
    prove against it), API, media over UDP, media over TCP, the advertised ICE
    address; against callsctl, how long its media waits in its socket (GET /stats
    twice, 2 s apart); STUN only with --stun-server or --with-stun; a real session with
    --token/--data-dir (callsctl), --rtcd-url (rtcd) or --mattermost. Exit 0 when nothing
    failed (warnings allowed), 1 when a check failed, 2 on a usage error.
    """
    target = RtcTarget(validate_host(host), udp_port, tcp_port, api_port, timeout, api_url)
    if stun_server is not None:
        parse_stun_server(stun_server)  # a malformed server is a usage error before any probe
    elif with_stun:
        stun_server = DEFAULT_STUN_SERVER
    mm_target = None
    if mattermost is not None or mm_config is not None:
        if data_dir is not None:
            fail("--mattermost does not take --data-dir", EXIT_USAGE)
        mm_target = load_target(mattermost, token, channel, mm_config, max(timeout, 10.0), False)
        token = None
        if api_url is None:  # the probes then recognise Mattermost and the Calls plugin
            api_url = mm_target.url
            target = RtcTarget(target.host, udp_port, tcp_port, api_port, timeout, api_url)
    elif channel is not None:
        fail("--channel needs --mattermost", EXIT_USAGE)
    rtcd = parse_url(rtcd_url, max(timeout, 10.0)) if rtcd_url is not None else None
    call = None
    if token is not None or data_dir is not None:
        if token is not None and data_dir is not None:
            fail("give at most one of --token or --data-dir", EXIT_USAGE)
        base = (api_url or f"http://{host}:{api_port}").rstrip("/")
        name, tokens = ((token_call(token), (token, token)) if token is not None
                        else mint_tokens(data_dir))
        call = CallTarget("ws" + base[4:] + "/ws", name, tokens, max(timeout, 10.0))
    ctx = Context(RtcProbe(target), stun_server, call, rtcd, mm_target)
    raise typer.Exit(emit(run_steps(ctx), as_json, title=f"callsctl check all: {host}"))
