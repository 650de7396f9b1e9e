"""The one admin-API client (callsctl/adminclient.py) against a real server on loopback.

What an operator meets when something is wrong: a wrong key (the message says
where the right one is and which key was sent), no server at the address, an
unknown call or job, a path the server does not have, a server error, an
answer that is not JSON. Each is one line, from the library and from every
command that uses it. Also: every path the client builds is one the server
routes (callsctl_sfu/api/paths.py is the only place they are written).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from callsctl.adminclient import (
    AdminApiError,
    AdminAuthError,
    AdminClient,
    AdminConfigError,
    AdminUnreachable,
    AsyncAdminClient,
    resolve,
)
from callsctl.errors import CliError
from callsctl_sfu.api import paths
from tests.support.admin import admin_key
from tests.support.helpers import free_port, run_cli
from tests.support.serve import start_serve


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_serve(tmp_path_factory.mktemp("adminclient"))
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def _env(**extra: str) -> dict[str, str]:
    """No key or server from the developer's own environment leaks into a test."""
    return {"CALLSCTL_ADMIN_KEY": "", "CALLSCTL_ADMIN_KEY_FILE": "", "CALLSCTL_SERVER": "",
            "CALLSCTL_CLIENT_CONFIG": "", **extra}


def _one_line(result: Any) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_the_right_key_works_and_the_answer_is_the_servers(live: Any) -> None:
    conn = resolve(live.api_url, admin_key_file=str(live.data_dir / "admin_key"))
    with AdminClient(conn) as api:
        assert api.list_calls() == {"calls": []}
        assert api.history(5)["calls"] == []
        assert api.list_jobs(5)["jobs"] == []
        assert api.readyz()["ready"] is True


def test_a_wrong_key_says_which_key_was_sent_and_where_the_right_one_is(live: Any,
                                                                      tmp_path: Path) -> None:
    wrong = tmp_path / "old_admin_key"
    wrong.write_text("a-key-from-another-server\n")
    with AdminClient(resolve(live.api_url, admin_key_file=str(wrong))) as api, \
            pytest.raises(AdminAuthError) as caught:
        api.list_calls()
    message = caught.value.message
    assert caught.value.status == 401
    assert f"{live.api_url} refused the admin key from {wrong}" in message
    assert "<data dir>/admin_key" in message and "--admin-key-file" in message

    # Every command that uses the client says the same, in one line.
    for args in (("calls", "list"), ("record", "list"), ("top", "--once")):
        line = _one_line(run_cli(*args, env=_env(CALLSCTL_SERVER=live.api_url,
                                                CALLSCTL_ADMIN_KEY_FILE=str(wrong)),
                                 timeout=30))
        assert f"refused the admin key from {wrong}" in line, (args, line)
    # top's --data-dir: the message names that file and the option.
    other = tmp_path / "other-data"
    other.mkdir()
    (other / "admin_key").write_text("not-this-servers-key\n")
    line = _one_line(run_cli("top", "--once", "--host", live.api_url, "--data-dir", str(other),
                             env=_env(), timeout=30))
    assert f"{other / 'admin_key'} (--data-dir)" in line and "--data-dir of that server" in line


async def test_a_wrong_key_from_the_async_client_and_its_event_stream(live: Any) -> None:
    client = AsyncAdminClient(live.api_url, "not-the-key", timeout=5)
    try:
        with pytest.raises(AdminAuthError, match="refused the admin key"):
            await client.list_calls()
        with pytest.raises(AdminAuthError, match="refused the admin key"):
            async for _event in client.events():
                break
    finally:
        await client.aclose()


def test_no_server_at_the_address(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    expected = (f"cannot reach callsctl serve at {url}: connection refused; is it running "
                "there, and is --server / CALLSCTL_SERVER right?")
    with AdminClient(resolve(url, admin_key="k")) as api, \
            pytest.raises(AdminUnreachable) as caught:
        api.list_calls()
    assert caught.value.message == expected

    async def from_async() -> str:
        client = AsyncAdminClient(resolve(url, admin_key="k", server_flag="--host"))
        try:
            await client.system()
        except AdminUnreachable as exc:
            return exc.message
        finally:
            await client.aclose()
        raise AssertionError("no error")

    assert asyncio.run(from_async()) == expected.replace("--server", "--host")
    assert _one_line(run_cli("record", "list", env=_env(CALLSCTL_SERVER=url,
                                                        CALLSCTL_ADMIN_KEY="k"))).endswith(
        f"{expected}\n")
    line = _one_line(run_cli("loadtest", "--host", url, "--token-secret", "s", "--duration",
                             "5s", timeout=30))
    assert f"cannot reach callsctl serve at {url}: connection refused" in line
    assert "is --host right?" in line


def test_unknown_call_job_and_path(live: Any) -> None:
    with AdminClient(resolve(live.api_url, admin_key=admin_key(live))) as api:
        with pytest.raises(AdminApiError) as caught:
            api.show_call("no-such-call")
        assert (caught.value.status, caught.value.message) == (404, "no live call 'no-such-call'")
        # An id with / and ? stays one path segment: still "that call", not another route.
        with pytest.raises(AdminApiError, match=r"^no live call 'a/b\?c'$"):
            api.show_call("a/b?c")
        with pytest.raises(AdminApiError) as caught:
            api.job("no-such-job")
        assert caught.value.status == 404 and "no-such-job" in caught.value.message
        with pytest.raises(AdminApiError) as caught:
            api.request("GET", "/no-such-page")
        assert caught.value.status == 404
        assert caught.value.message == (f"{live.api_url} has no /no-such-page (HTTP 404): is "
                                        "it a callsctl server as new as this callsctl?")
    env = _env(CALLSCTL_SERVER=live.api_url, CALLSCTL_ADMIN_KEY=admin_key(live))
    assert _one_line(run_cli("calls", "show", "no-such-call", env=env)) == \
        "callsctl: error: no live call 'no-such-call'\n"
    assert "no-such-job" in _one_line(run_cli("record", "get", "no-such-job", "--logs", env=env))


def test_bad_connection_settings_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(AdminConfigError) as caught:
        resolve("ftp://example.org", admin_key="k")
    assert caught.value.usage and "--server 'ftp://example.org'" in caught.value.message
    result = run_cli("calls", "--server", "ftp://example.org", "list", env=_env(
        CALLSCTL_ADMIN_KEY="k"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    empty = tmp_path / "empty_key"
    empty.write_text("\n")
    with pytest.raises(AdminConfigError, match="is empty"):
        resolve("127.0.0.1:1", admin_key_file=str(empty))
    with pytest.raises(CliError, match="no admin key in --data-dir"):
        from callsctl.top.command import resolve_connection
        resolve_connection(None, None, None, str(tmp_path / "nowhere"), None, False, None, 5)


@pytest.fixture
async def broken() -> AsyncIterator[str]:
    """A stand-in on loopback that answers like a broken proxy and a non-callsctl server."""

    async def server_error(_request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html><body>Bad Gateway</body></html>",
                            content_type="text/html")

    async def not_json(_request: web.Request) -> web.Response:
        return web.Response(text="hello from some other web server")

    app = web.Application()
    app.router.add_get(paths.CALLS, server_error)
    app.router.add_get(paths.HISTORY, not_json)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_server_errors_and_answers_that_are_not_json(broken: str) -> None:
    client = AsyncAdminClient(broken, "k", timeout=5)
    try:
        with pytest.raises(AdminApiError) as caught:
            await client.list_calls()
        assert caught.value.status == 502
        assert caught.value.message == (f"{broken} failed on GET {paths.CALLS} (HTTP 502); "
                                        "its log says why")
        with pytest.raises(AdminApiError) as caught:
            await client.history(5)
        assert caught.value.message == (f"{broken} did not answer GET {paths.HISTORY} with a "
                                        "JSON object: is this a callsctl server?")
    finally:
        await client.aclose()
    # The CLI, as a separate process (the stand-in runs on this test's event loop).
    result = await asyncio.to_thread(run_cli, "calls", "list",
                                     env=_env(CALLSCTL_SERVER=broken, CALLSCTL_ADMIN_KEY="k"))
    assert _one_line(result) == f"callsctl: error: {broken} failed on GET {paths.CALLS} " \
                                "(HTTP 502); its log says why\n"


# Only routed with --cluster (callsctl_sfu/fleet/bus.py), which needs Redis.
FLEET_ONLY = {paths.FLEET_NODES, paths.FLEET_LOST}


def test_every_path_the_client_builds_is_routed_by_the_server(live: Any) -> None:
    templates = [value for name, value in vars(paths).items()
                 if name.isupper() and isinstance(value, str) and value.startswith("/")
                 and value != paths.API]
    assert len(templates) > 20
    headers = {"Authorization": f"Bearer {admin_key(live)}"}
    for template in templates:
        if template in FLEET_ONLY:
            continue
        path = paths.fill(template, **{name: "x" for name in
                                       ("call_id", "session_id", "job_id", "name")
                                       if f"{{{name}}}" in template})
        if template == paths.EVENTS:  # a stream: its status line is enough
            with httpx.stream("GET", live.api_url + path, headers=headers, timeout=5) as r:
                assert r.status_code == 200
            continue
        response = httpx.get(live.api_url + path, headers=headers, timeout=5)
        said = response.json().get("error", "") if response.status_code >= 400 else ""
        # Unknown ids give 404 with a sentence about the id; a missing route would say
        # "no API route" (under /api/) or aiohttp's bare "Not Found".
        assert not said.startswith("no API route") and said != "Not Found", (template, said)


def test_a_stopped_server_is_unreachable_not_a_crash(tmp_path: Path) -> None:
    server = start_serve(tmp_path)
    key = admin_key(server)
    with AdminClient(resolve(server.api_url, admin_key=key)) as api:
        assert api.list_calls() == {"calls": []}
        server.stop(signal.SIGKILL)
        with pytest.raises(AdminUnreachable, match="connection refused"):
            api.list_calls()


def test_https_with_a_self_signed_certificate(serve_factory: Any) -> None:
    """Untrusted: one line naming --ca-cert and --insecure; trusted or --insecure: it works."""
    server = serve_factory("--tls-self-signed", wait=False)
    url = f"https://127.0.0.1:{server.api_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the fixture polls plain http, which TLS refuses
        try:
            if httpx.get(f"{url}/readyz", verify=False, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    cert = server.data_dir / "tls" / "self-signed.crt"
    key = admin_key(server)
    with AdminClient(resolve(url, admin_key=key)) as api, \
            pytest.raises(AdminUnreachable) as caught:
        api.list_calls()
    assert caught.value.message == (f"the TLS certificate of {url} is not trusted: pass "
                                    "--ca-cert <server data dir>/tls/self-signed.crt, or "
                                    "--insecure")
    with AdminClient(resolve(url, admin_key=key, ca_cert=str(cert))) as api:
        assert api.list_calls() == {"calls": []}
    result = run_cli("calls", "--server", url, "--insecure", "list", "--json",
                     env=_env(CALLSCTL_ADMIN_KEY=key))
    assert result.returncode == 0 and json.loads(result.stdout) == {"calls": []}
    with pytest.raises(AdminConfigError, match="cannot use --ca-cert"):
        resolve(url, admin_key=key, ca_cert=str(server.data_dir / "no-such.crt"))
