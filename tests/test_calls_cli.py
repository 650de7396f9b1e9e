"""`callsctl calls …` against a real server with participants in a call.

Most commands run in-process (typer's CliRunner, in a worker thread so the
participants' event loop keeps running); the error cases run as a separate
process, as an operator would, to see the one-line error and the exit code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from callsctl.app import app
from callsctl.errors import CliError
from tests.support.admin import join
from tests.support.helpers import run_cli
from tests.support.serve import start_serve


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_serve(tmp_path_factory.mktemp("cli"))
    yield server
    server.stop()


def env_for(server: Any) -> dict[str, str]:
    return {"CALLSCTL_SERVER": server.api_url,
            "CALLSCTL_ADMIN_KEY_FILE": str(server.data_dir / "admin_key"),
            "CALLSCTL_ADMIN_KEY": "", "CALLSCTL_CLIENT_CONFIG": "", "COLUMNS": "200"}


async def calls(server: Any, *args: str, env: dict[str, str] | None = None) -> Any:
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, app, ["calls", *args],
                                     env=env if env is not None else env_for(server))
    return result


def ok(result: Any) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


async def test_list_show_and_every_control_through_the_cli(cli_server, tmp_path: Path):
    server = cli_server
    alice = await join(server, "cli-call", "alice")
    bob = await join(server, "cli-call", "bob", tone=660)
    a, b = alice.session_id, bob.session_id
    try:
        listing = json.loads(ok(await calls(server, "list", "--json")))
        entry = next(c for c in listing["calls"] if c["id"] == "cli-call")
        assert entry["participants"] == 2 and entry["host_user"] == "alice"
        human = ok(await calls(server, "list"))
        assert "cli-call" in human and "alice" in human

        # The same, configured through a client config file instead of the environment.
        config = tmp_path / "client.toml"
        config.write_text(f'[client]\nserver = "{server.api_url}"\n'
                          f'admin_key_file = "{server.data_dir / "admin_key"}"\n')
        shown = json.loads(ok(await calls(server, "--client-config", str(config), "show",
                                          "cli-call", "--json"),))
        assert [s["user"] for s in shown["sessions"]] == ["alice", "bob"]
        human = ok(await calls(server, "show", "cli-call"))
        assert a in human and "bob" in human and "(host)" in human

        ok(await calls(server, "host", "cli-call", b))
        await alice.wait_for(lambda e: e["type"] == "call_host_changed" and e["host"] == b, 5)
        assert "muted" in ok(await calls(server, "mute", "cli-call", a))
        await alice.wait_for(lambda e: e["type"] == "host_mute", 5)
        await bob.send({"type": "raise_hand"})
        await alice.wait_for(lambda e: e["type"] == "user_raise_hand", 5)
        assert "lowered" in ok(await calls(server, "lower-hand", "cli-call", b))
        await bob.wait_for(lambda e: e["type"] == "host_lower_hand", 5)
        muted = json.loads(ok(await calls(server, "mute-others", "cli-call", a, "--json")))
        assert muted["muted"] == [b]
        assert "not sharing" in ok(await calls(server, "stop-screen", "cli-call", b))

        assert "disabled" in ok(await calls(server, "disable", "other-call"))
        settings = json.loads(ok(await calls(server, "enable", "other-call",
                                             "--max-participants", "4", "--json")))
        assert settings["effective"] == {"enabled": True, "max_participants": 4}
        assert "max participants 4" in ok(await calls(server, "settings", "other-call"))
        assert "unlimited" in ok(await calls(server, "settings", "other-call", "--reset"))

        ok(await calls(server, "remove", "cli-call", b))
        await bob.wait_for(lambda e: e["type"] == "host_removed", 5)
        assert "1 participant" in ok(await calls(server, "end", "cli-call", "--reason", "bye"))
        event = await alice.wait_for(lambda e: e["type"] == "call_end", 5)
        assert event["reason"] == "bye"
        history = json.loads(ok(await calls(server, "history", "--call", "cli-call",
                                            "--json")))
        assert history["calls"][0]["end_reason"] == "bye"
        assert "cli-call" in ok(await calls(server, "history"))

        missing = await calls(server, "show", "cli-call")
        assert isinstance(missing.exception, CliError)
        assert "no live call 'cli-call'" in missing.exception.message
        nowhere = await calls(server, "list", env={**env_for(server),
                                                   "CALLSCTL_SERVER": "http://127.0.0.1:9"})
        assert isinstance(nowhere.exception, CliError)
        assert "cannot reach callsctl serve at http://127.0.0.1:9" in nowhere.exception.message
    finally:
        await alice.close()
        await bob.close()


def test_errors_are_one_line_with_exit_code_1(cli_server):
    env = {**env_for(cli_server), "CALLSCTL_ADMIN_KEY": "not-the-key"}
    rejected = run_cli("calls", "list", env=env)
    assert rejected.returncode == 1
    # One wording for every admin-API command (callsctl.adminclient): who refused
    # which key, and where the right one is.
    assert rejected.stderr.count("\n") == 1 and "refused the admin key" in rejected.stderr
    assert "CALLSCTL_ADMIN_KEY" in rejected.stderr and "<data dir>/admin_key" in rejected.stderr
    assert "Traceback" not in rejected.stderr
    unknown = run_cli("calls", "end", "no-such-call", env=env_for(cli_server))
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "callsctl: error: no live call 'no-such-call'"
