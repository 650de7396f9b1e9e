"""The media stack is loaded by the first call, off the event loop, not at start.

What an operator notices: an idle `callsctl serve` has not mapped PyAV's FFmpeg
libraries or libsrtp (read from the server's own /proc/<pid>/maps) and still
serves its API and /metrics; the first participant's join loads them and media
flows; `--preload-media` loads them at start as before; joins racing the load
all succeed; and a broken install (an `av` that cannot be imported) costs one
clear line in the log and a clear error to every join, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import httpx
import pytest

from callsctl_sfu.client.participant import Participant, ParticipantError
from callsctl_sfu.rtc.medialoader import MAPPED_MARKERS, mapped_media_libraries
from tests.support.clients import close_all
from tests.support.helpers import run_cli, wait_until


def media_mapped(server) -> list[str]:
    return mapped_media_libraries(server.process.pid)


def media_state(server) -> dict:
    return httpx.get(f"{server.api_url}/version", timeout=5).json()["media_stack"]


def admin_get(server, path: str) -> httpx.Response:
    key = (server.data_dir / "admin_key").read_text().strip()
    return httpx.get(f"{server.api_url}{path}", timeout=5,
                     headers={"Authorization": f"Bearer {key}"})


def participant(server, user: str, tone: float | None = 440.0, call: str = "room") -> Participant:
    return Participant(server.ws_url, server.token(call, user), call, user, tone=tone)


async def hear_each_other(people: list[Participant], frames: int, racing: bool = False) -> None:
    """Alice and bob join (one after the other, or at once), connect, and hear each other."""
    if racing:
        await asyncio.gather(*(person.join() for person in people))
    else:
        for person in people:
            await person.join()
    await asyncio.gather(*(person.wait_connected(15) for person in people))
    alice, bob = people
    assert await wait_until(lambda: bob.frames_from[alice.session_id] > frames
                            and alice.frames_from[bob.session_id] > frames, 10), \
        f"bob got {dict(bob.frames_from)}, alice got {dict(alice.frames_from)}"


async def test_idle_server_has_not_loaded_the_media_stack_and_serves_its_api(server):
    assert media_mapped(server) == []
    assert media_state(server) == {"state": "idle", "error": ""}
    metrics = httpx.get(f"{server.api_url}/metrics", timeout=5)
    assert metrics.status_code == 200 and "rtcd_" in metrics.text
    assert admin_get(server, "/api/v1/calls").status_code == 200
    assert httpx.get(f"{server.api_url}/readyz", timeout=5).json()["ready"] is True
    # Serving all that loaded nothing either, nor cryptography (PyJWT's import of it
    # waits for the first token checked; the banner's token was minted before).
    assert media_mapped(server) == []
    with open(f"/proc/{server.process.pid}/maps") as maps:
        assert "cryptography" not in maps.read()


async def test_the_banner_join_link_admits_a_participant(server):
    """The link's token is minted before the server starts over; it still joins."""
    match = re.search(r"\?token=(\S+)", server.log())
    assert match, server.log()[-2000:]
    person = Participant(server.ws_url, match.group(1), "default", "guest", tone=None)
    try:
        await person.join()
        await person.wait_connected(15)
        with open(f"/proc/{server.process.pid}/maps") as maps:
            assert "cryptography" in maps.read()  # checking the token imported PyJWT
    finally:
        await close_all([person])


async def test_first_join_loads_the_media_stack_and_media_flows(server):
    assert media_mapped(server) == []
    people = [participant(server, "alice", 440.0), participant(server, "bob", 660.0)]
    try:
        await hear_each_other(people, 25)
        mapped = media_mapped(server)
        for marker in MAPPED_MARKERS:
            assert any(marker in path for path in mapped), f"{marker} not mapped: {mapped}"
        assert media_state(server) == {"state": "loaded", "error": ""}
    finally:
        await close_all(people)


async def test_preload_media_maps_the_stack_at_start(serve_factory):
    server = serve_factory("--preload-media")
    mapped = media_mapped(server)
    for marker in MAPPED_MARKERS:
        assert any(marker in path for path in mapped), f"{marker} not mapped: {mapped}"
    assert media_state(server)["state"] == "loaded"
    person = participant(server, "alice")
    try:
        await person.join()
        await person.wait_connected(15)
    finally:
        await person.close()


async def test_two_joins_racing_the_load_both_succeed(server):
    people = [participant(server, "alice", 440.0), participant(server, "bob", 660.0)]
    try:
        # Both /ws connections and joins arrive while nothing is loaded yet.
        await hear_each_other(people, 10, racing=True)
        assert "media stack loaded" in server.log()
        assert server.log().count("loading the media stack") == 1  # one load for both
    finally:
        await close_all(people)


def _broken_av(tmp_path: Path) -> dict[str, str]:
    """An environment whose `av` fails to import, as a broken install's would."""
    shadow = tmp_path / "shadow"
    (shadow / "av").mkdir(parents=True)
    (shadow / "av" / "__init__.py").write_text(
        "raise ImportError('libavcodec.so.61: cannot open shared object file')\n")
    return {"PYTHONPATH": str(shadow)}


async def test_a_broken_media_install_is_one_line_and_a_clear_join_error(serve_factory,
                                                                           tmp_path):
    server = serve_factory(env=_broken_av(tmp_path))  # starts: nothing imports av at start
    assert httpx.get(f"{server.api_url}/readyz", timeout=5).status_code == 200
    for user in ("alice", "bob"):  # the first join and a later one: the same clear error
        person = participant(server, user)
        try:
            with pytest.raises(ParticipantError) as error:
                await person.join()
        finally:
            await person.close()
        message = str(error.value)
        assert "media_unavailable" in message and "libavcodec" in message, message
        assert "reinstall" in message
    state = media_state(server)
    assert state["state"] == "failed" and "libavcodec" in state["error"]
    ready = httpx.get(f"{server.api_url}/readyz", timeout=5)
    assert ready.status_code == 503 and "calls unavailable" in ready.json()["reason"]
    assert httpx.get(f"{server.api_url}/metrics", timeout=5).status_code == 200
    assert server.log().count("calls cannot start") == 1  # logged once, no traceback
    assert media_mapped(server) == []


def test_a_broken_media_install_stops_preload_media_with_one_line(tmp_path):
    env = {**_broken_av(tmp_path), "CALLSCTL_STUN_SERVER": ""}
    done = run_cli("serve", "--bind", "127.0.0.1", "--api-port", "0", "--udp-port", "0",
                   "--data-dir", str(tmp_path / "data"), "--preload-media", env=env,
                   timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if "libavcodec" in line]
    assert len(lines) == 1 and "reinstall" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_an_unverified_aiortc_version_stops_the_start_with_one_line(tmp_path):
    """The static check: installed metadata against the verified range, nothing imported."""
    shadow = tmp_path / "shadow"
    info = shadow / "aiortc-1.17.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aiortc\nVersion: 1.17.0\n")
    env = {"PYTHONPATH": str(shadow), "CALLSCTL_STUN_SERVER": ""}
    done = run_cli("serve", "--bind", "127.0.0.1", "--api-port", "0", "--udp-port", "0",
                   "--data-dir", str(tmp_path / "data"), env=env, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "aiortc 1.17.0 is installed" in done.stderr and ">=1.16,<1.17" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_server_runs_without_the_cli_parsers_memory_and_keeps_no_settings_pipe(server):
    """serve starts over as the same command line with its parsed settings on a pipe:
    the same process and `ps` line, no pydantic (typer's value conversion) mapped, the
    banner printed once, and the pipe closed once read."""
    pid = server.process.pid  # the PID the test started: exec keeps it
    with open(f"/proc/{pid}/maps") as maps:
        assert "pydantic_core" not in maps.read()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline and b"--api-port" in cmdline
    # The environment the process was executed with names the pipe; it is closed now.
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    fds = [line.split(b"=", 1)[1] for line in environ
           if line.startswith(b"_CALLSCTL_SERVE_CONFIG_FD=")]
    assert len(fds) == 1, "serve did not start over with its parsed settings"
    fd = Path(f"/proc/{pid}/fd/{int(fds[0])}")  # closed, or reused by something else
    assert not fd.exists() or not os.readlink(fd).startswith("pipe:")
    assert httpx.get(f"{server.api_url}/readyz", timeout=5).status_code == 200
    assert server.log().count("callsctl serve ") == 1  # the banner, once


def serving_pass_imports(server) -> set[str]:
    """The modules the server's serving pass imported (PYTHONPROFILEIMPORTTIME=1's log).

    Each interpreter start prints its own header: the last part of the log is
    the pass that serves (after `callsctl serve` started over).
    """
    serving = server.log().split("import time: self [us]")[-1]
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", serving, re.M))


async def test_idle_server_answers_stun_without_importing_aioice(serve_factory):
    """`callsctl check rtc` (a real STUN client, UDP and ICE-TCP) gets its answers from a
    server that has not imported aioice; the first join imports it and media flows."""
    server = serve_factory(env={"PYTHONPROFILEIMPORTTIME": "1"})
    check = run_cli("check", "rtc", "--host", "127.0.0.1", "--udp-port", str(server.udp_port),
                    "--tcp-port", str(server.udp_port), "--api-port", str(server.api_port),
                    "--json", timeout=30)
    results = {r["name"]: r for r in json.loads(check.stdout)["results"]}
    for name in ("rtc udp", "rtc tcp"):
        assert results[name]["status"] == "pass", results[name]
        assert results[name]["details"]["server_saw_us_as"].startswith("127.0.0.1:")
    idle = serving_pass_imports(server)
    assert "aiohttp.web" in idle  # the log is read right
    assert not {name for name in idle if name.split(".")[0] in ("aioice", "dns", "ifaddr")}
    # Nor the CLI's libraries: the serving pass reads its settings from a pipe.
    assert not {name for name in idle if name.split(".")[0] in ("typer", "click", "rich")}
    # Nor what only a config file, an error, /system or a legacy install needs, nor
    # frozenlist's C++ build (libstdc++): an idle server's RSS (docs/performance-memory.md).
    assert not idle & {"psutil", "importlib.metadata", "tomllib", "difflib",
                       "frozenlist._frozenlist"}
    assert "frozenlist" in idle
    with open(f"/proc/{server.process.pid}/maps") as maps:
        assert "libstdc++" not in maps.read()
    # Without the host's MIME table the web client's files keep their types.
    for path, wanted in (("/", "text/html"), ("/web/app.js", "javascript"),
                         ("/web/style.css", "text/css")):
        answer = httpx.get(f"{server.api_url}{path}", timeout=5)
        assert answer.status_code == 200 and wanted in answer.headers["content-type"], path
    people = [participant(server, "alice", 440.0), participant(server, "bob", 660.0)]
    try:
        await hear_each_other(people, 10)
        assert "aioice.ice" in serving_pass_imports(server)
    finally:
        await close_all(people)
