"""The `callsctl loadtest` command: admission, tokens, then one bounded run.

Admission exists because a load test is a denial of service when pointed at
the wrong host: targets must resolve to loopback unless --allow-remote, sizes
and durations have hard upper bounds (the engine's), and the run ends by
itself after --duration. Tokens are minted locally with the server's JWT
secret, so the run needs no admin access to the server.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import ssl as ssl_module
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import typer

from callsctl.errors import EXIT_USAGE, fail
from callsctl.timespec import parse_duration

FDS_PER_PARTICIPANT = 3  # UDP socket, signaling TCP connection, slack for aiortc
FD_RESERVE = 64
MAX_DEFAULT_JOIN_S = 30.0


def _duration(text: str, flag: str, allow_zero: bool = False) -> float:
    if allow_zero and text.strip() in ("0", "0s", "0m"):
        return 0.0
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{flag}: {exc}", EXIT_USAGE)


def default_join_duration(duration: float) -> float:
    """Half the run, at most 30 s: a short --duration alone must still leave a steady window."""
    return min(MAX_DEFAULT_JOIN_S, duration / 2)


def _endpoints(host: str) -> tuple[str, str, str, int]:
    """(HTTP base URL, /ws URL, host name, port) from what the operator typed."""
    text = host.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = {"http": "http", "ws": "http", "https": "https", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        fail(f"--host {host!r}: give a URL such as http://127.0.0.1:8045", EXIT_USAGE)
    try:
        port = parts.port or (443 if scheme == "https" else 8045)
    except ValueError:
        fail(f"--host {host!r}: the port is not a number in 1..65535", EXIT_USAGE)
    netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    base = f"{scheme}://{netloc}:{port}"
    ws = ("wss" if scheme == "https" else "ws") + f"://{netloc}:{port}/ws"
    return base, ws, parts.hostname, port


def _secret(token_secret: str | None, secret_file: Path | None, data_dir: str | None) -> bytes:
    """The server's JWT secret (callsctl.localserver.token_secret: read, never created)."""
    from callsctl import localserver

    return localserver.token_secret(
        data_dir, secret=token_secret, secret_file=secret_file,
        otherwise="point --data-dir at the server's data dir, or pass --secret-file / "
                  "--token-secret")


def _ensure_fds(participants: int) -> None:
    """Raise the soft open-files limit if the run needs it; refuse if the hard one is too low."""
    needed = FD_RESERVE + FDS_PER_PARTICIPANT * participants
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            fail(f"{participants} participants need about {needed} open files but the limit "
                 f"is {hard}: raise it (ulimit -n) or run fewer participants")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def loadtest(
    host: str = typer.Option(..., "--host", help="Server URL, e.g. http://127.0.0.1:8045."),
    calls: int = typer.Option(1, "--calls", help="Number of calls."),
    users_per_call: int = typer.Option(10, "--users-per-call", help="Participants per call."),
    unmuted: int = typer.Option(2, "--unmuted",
                                help="Participants per call who send audio (Opus, 50 pkt/s)."),
    screen_sharing: bool = typer.Option(
        False, "--screen-sharing", help="The first participant of each call shares a screen "
                                        "(VP8, 1280x720, ~1.6 Mbit/s)."),
    video: bool = typer.Option(
        False, "--video", help="Unmuted participants also send camera video (VP8, 640x360)."),
    duration: str = typer.Option("60s", "--duration",
                                 help="Whole run, joins included; it then stops by itself."),
    join_duration: str | None = typer.Option(
        None, "--join-duration",
        help="Joins are spread evenly over this time. [default: half of --duration, at "
             "most 30s]"),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="The server's data dir: its jwt_secret (read, never created) "
                                 "signs the join tokens. [default: CALLSCTL_DATA_DIR or "
                                 "$XDG_DATA_HOME/callsctl]"),
    secret_file: Path | None = typer.Option(
        None, "--secret-file",
        help="File holding the server's JWT secret (<data dir>/jwt_secret)."),
    token_secret: str | None = typer.Option(
        None, "--token-secret", envvar="CALLSCTL_TOKEN_SECRET",
        help="The server's JWT secret itself (prefer the environment variable)."),
    call_prefix: str = typer.Option("loadtest", "--call-prefix",
                                    help="Call ids are PREFIX-1 .. PREFIX-N."),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a target that is not loopback (a server you run)."),
    insecure: bool = typer.Option(
        False, "--insecure", help="Accept any TLS certificate (a self-signed one)."),
    processes: int = typer.Option(
        1, "--processes", help="Load-generator processes sharing the participants (whole "
                               "calls each, or one call's participants dealt out); 0: one "
                               "per usable CPU. More than 1 keeps a big run from measuring "
                               "the generator's own event loop."),
    data_channel: bool = typer.Option(
        False, "--data-channel/--no-data-channel",
        help="Each participant also opens the calls-dc data channel (SCTP over DTLS) like "
             "the web and Mattermost clients, and pings once on it. Off by default so runs "
             "compare with recorded figures, which were measured without it; on, a session "
             "costs what a real client's does (more server memory)."),
    srtp_profile: str | None = typer.Option(
        None, "--srtp-profile",
        help="The one SRTP profile participants accept: SRTP_AES128_CM_SHA1_80 (what "
             "Chromium, and so Mattermost's clients, pick), SRTP_AEAD_AES_128_GCM or "
             "SRTP_AEAD_AES_256_GCM. [default: aiortc's choice, SRTP_AEAD_AES_256_GCM]"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Load-test a server: synthetic participants join, talk, and measure what comes back.

    Every participant does the real signaling, ICE, DTLS and SRTP; unmuted ones
    replay a pre-encoded Opus recording every 20 ms (VP8 too with --video or
    --screen-sharing). The report gives joins, join time percentiles, loss per
    receiver, forwarding delay and the server's CPU and memory. Only loopback
    targets unless --allow-remote. Exit code 1 when a participant failed to join
    or loss exceeded 5 %.
    """
    from callsctl_sfu.client.loadgen import (
        MAX_OK_LOSS,
        LoadConfig,
        LoadConfigError,
        ServerMonitor,
        is_loopback_host,
        make_load_test,
    )

    base, ws_url, hostname, _port = _endpoints(host)
    seconds = _duration(duration, "--duration")
    join_seconds = (default_join_duration(seconds) if join_duration is None
                    else _duration(join_duration, "--join-duration", allow_zero=True))
    local = is_loopback_host(hostname)
    if not local and not allow_remote:
        fail(f"refusing to load-test {hostname}: it is not a loopback address; pass "
             "--allow-remote if you operate that server", EXIT_USAGE)
    tls: Any = None
    if base.startswith("https://") and insecure:
        tls = ssl_module.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl_module.CERT_NONE
    secret = _secret(token_secret, secret_file, data_dir)

    from callsctl_sfu.tokens import issue_token

    token_ttl = seconds + 3600

    def token_for(call: str, user: str) -> str:
        return issue_token(secret, call, user, token_ttl)

    config = LoadConfig(ws_url=ws_url, token_for=token_for, calls=calls,
                        users_per_call=users_per_call, unmuted=unmuted,
                        screen_sharing=screen_sharing, video=video, duration=seconds,
                        join_duration=join_seconds, call_prefix=call_prefix, ssl=tls,
                        processes=processes, data_channel=data_channel,
                        srtp_profile=srtp_profile)
    try:
        config.validate()
    except LoadConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    _ensure_fds(config.participants)

    from callsctl.loadtest.render import Reporter

    reporter = Reporter(as_json=as_json)
    monitor = ServerMonitor(base, local=local, ssl=tls)
    report = asyncio.run(_run(make_load_test(config, monitor=monitor), monitor, base, tls,
                              reporter))
    data = report.to_dict()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        reporter.print_report(data)
    if not report.ok:
        participants = data["participants"]
        media = data["media"] or {}
        if participants["failed"] or participants["joined"] < participants["requested"]:
            fail(f"{participants['requested'] - participants['joined']} of "
                 f"{participants['requested']} participants did not join")
        dc_open = participants.get("data_channels_open")
        if dc_open is not None and dc_open < participants["joined"]:
            fail(f"the calls-dc data channel of {participants['joined'] - dc_open} of "
                 f"{participants['joined']} joined participants did not open")
        if media.get("loss") is None:
            fail("no steady window was measured (raise --duration)")
        fail(f"loss {100 * media['loss']:.2f} % is above {100 * MAX_OK_LOSS:g} %")


async def _run(test: Any, monitor: Any, base: str, tls: Any, reporter: Any) -> Any:
    """Reachability first (one clear error), then the run with live progress and Ctrl-C."""
    from callsctl.adminclient import AdminApiError, AdminError, AsyncAdminClient, Connection

    # No admin key: /readyz is public, and a load test needs no admin access.
    client = AsyncAdminClient(Connection(base, None, True if tls is None else tls, 5.0,
                                         server_flags="--host"))
    try:
        await client.readyz()
    except AdminApiError as exc:
        if (exc.status or 0) >= 500:
            fail(f"{base} is not ready ({exc.status}): {exc.message[:120]}")
    except AdminError as exc:
        fail(exc.message)
    finally:
        await client.aclose()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        test.request_stop()
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C ends at once

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        async with reporter.live(test):
            return await test.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await monitor.close()
