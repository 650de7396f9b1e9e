"""`callsctl check webrtc`: a real two-party call through a server, stage by stage.

When the port probes pass and people still cannot hear each other, the only
convincing test is a call: two scripted participants (callsctl_sfu.client)
join through the real signaling, do ICE, DTLS and SRTP with the server, and
send Opus to each other. The report names the first stage that failed
(signaling, join, ice, media) and, when everything works, the figures an
operator compares with what users report: connect time, selected candidate
pair, round trip (calls-dc ping/pong, as the Mattermost client measures it),
loss and jitter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import statistics
import time
from dataclasses import dataclass
from typing import Any

import typer

from callsctl.check import app
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.errors import EXIT_USAGE, fail

MEDIA_SECONDS = 3.0
FRAMES_PER_SECOND = 50  # 20 ms Opus frames


@dataclass(frozen=True)
class CallTarget:
    ws_url: str
    call: str
    tokens: tuple[str, str]
    timeout: float


def token_call(token: str) -> str:
    """The `call` claim of a join token, read without verifying (the server verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["call"])
    except (IndexError, ValueError, KeyError, TypeError):
        fail("--token is not a callsctl join token (mint one with `callsctl token`)", EXIT_USAGE)


def mint_tokens(data_dir: str | None) -> tuple[str, tuple[str, str]]:
    """Two tokens for a throw-away call, signed with a local server's secret.

    The data dir is found as `callsctl token` finds it (callsctl.localserver):
    --data-dir, CALLSCTL_DATA_DIR, or the default one.
    """
    from callsctl import localserver
    from callsctl_sfu.tokens import issue_token

    secret = localserver.token_secret(
        data_dir, otherwise="on the server host, point --data-dir at its data dir; "
                            "elsewhere pass --token (from `callsctl token` on the server)")
    call = f"callsctl-check-{secrets.token_hex(4)}"
    return call, (issue_token(secret, call, "check-a", 300), issue_token(secret, call, "check-b",
                                                                          300))


async def run_call(target: CallTarget) -> list[CheckResult]:
    """Join two participants and measure; every await is bounded by target.timeout."""
    from callsctl_sfu.client.participant import Participant, ParticipantError

    people = [Participant(target.ws_url, token, target.call, f"check-{side}", tone=tone)
              for token, side, tone in zip(target.tokens, "ab", (440.0, 660.0), strict=True)]
    results: list[CheckResult] = []
    started = time.monotonic()
    try:
        for person in people:
            try:
                await person.join(target.timeout)
            except ParticipantError as exc:
                results.append(_stage_failure(exc.stage, str(exc)))
                return results
            except TimeoutError:
                results.append(_stage_failure("join", "no answer to join"))
                return results
        results.append(CheckResult("signaling", "pass", f"joined call {target.call!r} over "
                                   f"{target.ws_url}",
                                   figure=f"{(time.monotonic() - started) * 1000:.0f} ms"))
        try:
            connect_times = [await p.wait_connected(target.timeout) for p in people]
        except ParticipantError as exc:
            results.append(_stage_failure("ice", str(exc)))
            return results
        pair = people[0].selected_pair() or {}
        results.append(CheckResult(
            "ice+dtls", "pass" if pair.get("protocol") == "udp" else "warn",
            f"connected over {pair.get('protocol', '?')}: {pair.get('local', '?')} "
            f"({pair.get('local_type', '?')}) -> {pair.get('remote', '?')} "
            f"({pair.get('remote_type', '?')})",
            figure=f"{max(connect_times) * 1000:.0f} ms",
            fix=None if pair.get("protocol") == "udp" else
            "media fell back to TCP: open UDP on the media port for better quality",
            details={"candidate_pair": pair, "connect_ms": [t * 1000 for t in connect_times]}))
        results.append(await _media_result(people))
    finally:
        for person in people:
            await person.leave()
        results.append(CheckResult("duration", "pass", "whole test",
                                   figure=f"{time.monotonic() - started:.1f} s"))
    return results


async def _media_result(people: list[Any]) -> CheckResult:
    a, b = people
    await asyncio.sleep(0.5)
    start = (a.frames_from[b.session_id], b.frames_from[a.session_id])
    before = await _packet_counts(people)
    await asyncio.sleep(MEDIA_SECONDS)
    got = (a.frames_from[b.session_id] - start[0], b.frames_from[a.session_id] - start[1])
    after = await _packet_counts(people)
    received, lost = after[0] - before[0], max(0, after[1] - before[1])
    # Loss is counted from RTP sequence numbers (what never arrived), not from frames
    # decoded in the window: a busy machine running the check decodes late, which is
    # not the network's fault. Without RTP stats, decoded frames against 50/s it is.
    loss = lost / (received + lost) if received + lost else \
        max(0.0, 1 - min(got) / (MEDIA_SECONDS * FRAMES_PER_SECOND))
    rtts = a.dc_rtts + b.dc_rtts
    stats = await a.inbound_audio_stats() + await b.inbound_audio_stats()
    jitter_ms = max((s["jitter"] or 0) * 1000 for s in stats) if stats else None
    figures = {"frames_a_from_b": got[0], "frames_b_from_a": got[1], "loss": round(loss, 3),
               "rtp_packets_received": received, "rtp_packets_lost": lost,
               "rtt_ms": round(statistics.median(rtts) * 1000, 1) if rtts else None,
               "jitter_ms": jitter_ms}
    if min(got) == 0:
        side = "a hears nothing from b" if got[0] == 0 else "b hears nothing from a"
        return CheckResult("media", "fail", f"audio does not flow both ways: {side}",
                           fix="ICE connected but no audio: check that nothing between clients "
                               "and server drops UDP after the handshake (stateful firewall "
                               "timeouts), and the server log for SRTP errors",
                           details=figures)
    status = "pass" if loss < 0.05 else "warn"
    rtt = f", RTT {figures['rtt_ms']} ms" if figures["rtt_ms"] is not None else ""
    return CheckResult("media", status, f"audio both ways: {got[0]} and {got[1]} frames in "
                       f"{MEDIA_SECONDS:g} s{rtt}", figure=f"loss {loss:.1%}",
                       fix=None if status == "pass" else
                       "loss above 5%: check the network path, then `callsctl tune`",
                       details=figures)


async def _packet_counts(people: list[Any]) -> tuple[int, int]:
    """Audio RTP packets received and lost so far, over every participant's streams."""
    stats = [s for person in people for s in await person.inbound_audio_stats()]
    return (sum(s["packets"] or 0 for s in stats), sum(s["lost"] or 0 for s in stats))


def _stage_failure(stage: str, message: str) -> CheckResult:
    fixes = {
        "signaling": "the API port is not reachable or not a callsctl server: check "
                     "`callsctl check all`, the --api-port and any reverse proxy for WebSockets",
        "join": "the server refused the join: check the token (expired? another server's?) "
                "and whether calls are enabled for this call id",
        "ice": "signaling works but media cannot connect: run `callsctl check rtc` — usually "
               "the advertised address (ice_host_override) or a firewall on the media port",
    }
    return CheckResult(stage, "fail", message, fix=fixes.get(stage, "see the server log"))


@app.command("webrtc")
def webrtc_command(
    host: str | None = typer.Option(None, "--host", "-H", help="callsctl server host name or IP."),
    api_port: int = typer.Option(8045, "--api-port", min=1, max=65535, help="API port."),
    api_url: str | None = typer.Option(
        None, "--api-url", help="API base URL when not http://HOST:API_PORT (https, proxy)."),
    token: str | None = typer.Option(
        None, "--token", help="A callsctl join token (both test participants use it); with "
        "--mattermost, a personal access token."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="A local server's data dir: mint test tokens with its "
                                 "jwt_secret (read, never created). [default: as `callsctl "
                                 "token`: CALLSCTL_DATA_DIR or $XDG_DATA_HOME/callsctl]"),
    mattermost: str | None = typer.Option(
        None, "--mattermost", help="Test a Mattermost server with the Calls plugin instead: its "
        "site URL (https://chat.example.com)."),
    channel: str | None = typer.Option(
        None, "--channel", help="With --mattermost: id of a test channel to start the call in."),
    config: str | None = typer.Option(
        None, "--config", help="With --mattermost: a TOML file with url, token and channel "
        "(keeps the token off the command line)."),
    force_turn: bool = typer.Option(
        False, "--force-turn", help="With --mattermost: relay candidates only, through the "
        "TURN servers the Calls plugin configures."),
    force_tcp: bool = typer.Option(
        False, "--force-tcp", help="With --mattermost: media over TCP, relayed by a TURN server "
        "the plugin configures with ?transport=tcp (ICE-TCP to the SFU is probed in any case)."),
    timeout: float = typer.Option(15.0, "--timeout", "-t", min=1, max=120,
                                  help="Seconds each stage may take."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Make a real two-party audio call through the server and report each stage.

    callsctl: needs a join token (--token, from `callsctl token`); on the
    server host it mints its own with the server's secret, from the data dir
    `callsctl token` uses (or --data-dir). Mattermost: --mattermost URL --token
    PAT --channel ID (or --config FILE) joins a call as the web app does.
    Exit 0 when audio flowed both ways, 1 when a stage failed, 2 on a usage error.
    """
    if mattermost is not None or config is not None:
        from callsctl.check.mattermost import load_target, run_mattermost

        if host is not None or data_dir is not None:
            fail("--mattermost does not take --host or --data-dir", EXIT_USAGE)
        target = load_target(mattermost, token, channel, config, timeout, force_turn, force_tcp)
        results = asyncio.run(run_mattermost(target))
        raise typer.Exit(emit(results, as_json, title=f"callsctl check webrtc: {target.url}"))
    if channel is not None or force_turn or force_tcp:
        fail("--channel, --force-turn and --force-tcp need --mattermost", EXIT_USAGE)
    if host is None and api_url is None:
        fail("give --host (a callsctl server) or --mattermost URL", EXIT_USAGE)
    if token is not None and data_dir is not None:
        fail("give at most one of --token or --data-dir", EXIT_USAGE)
    base = (api_url or f"http://{host}:{api_port}").rstrip("/")
    if not base.startswith(("http://", "https://")):
        fail(f"--api-url must start with http:// or https://, got {base!r}", EXIT_USAGE)
    ws_url = "ws" + base[4:] + "/ws"
    if token is not None:
        call, tokens = token_call(token), (token, token)
    else:
        call, tokens = mint_tokens(data_dir)
    results = asyncio.run(run_call(CallTarget(ws_url, call, tokens, timeout)))
    raise typer.Exit(emit(results, as_json, title=f"callsctl check webrtc: {base}"))
