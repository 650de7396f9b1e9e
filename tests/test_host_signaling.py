"""Host controls over signaling: the call's host moderates from its own page.

A real `callsctl serve` and scripted participants (no media needed: the
controls are signaling). What a user would notice: only the host's commands
take effect, everyone else gets an `error` and nothing changes; the target is
told (and told who acted: the host or an administrator); the host can hand
over the role and then loses the controls; invite links minted by the host
join the host's call under the invitee's name.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import verify_token
from tests.support.admin import admin_key


async def joined(server: Any, call: str, user: str) -> Participant:
    person = Participant(server.ws_url, server.token(call, user), call, user.title(),
                         tone=None, send_audio=False)
    try:
        await person.join()
    except BaseException:
        await person.close()
        raise
    return person


async def control(person: Participant, action: str, target: str | None = None
                  ) -> dict[str, Any]:
    """Send host_control; return the answer (host_control_done or error)."""
    mark = len(person.events)
    message: dict[str, Any] = {"type": "host_control", "action": action}
    if target is not None:
        message["session_id"] = target
    await person.send(message)
    return await person.wait_for(
        lambda e: e["type"] in ("host_control_done", "error"), 5, since=mark)


async def test_only_the_host_moderates_and_every_target_is_told(server) -> None:
    alice = await joined(server, "board", "alice")  # first in: the host
    bob = await joined(server, "board", "bob")
    carol = await joined(server, "board", "carol")
    a, b, c = alice.session_id, bob.session_id, carol.session_id
    try:
        assert alice.joined["host"] == a

        # Not the host: refused with an error, and nothing happened to alice.
        for action, target in (("mute", a), ("remove", a), ("end", None),
                               ("make_host", b), ("mute_others", None)):
            answer = await control(bob, action, target)
            assert answer["type"] == "error" and answer["code"] == "not_host", answer
        await asyncio.sleep(0.3)
        assert not any(e["type"] in ("host_mute", "host_removed", "call_end",
                                     "call_host_changed") for e in alice.events + carol.events)

        # The host mutes bob: bob is told, everyone sees user_muted.
        answer = await control(alice, "mute", b)
        assert answer == {"type": "host_control_done", "action": "mute", "session_id": b,
                          "changed": True}
        event = await bob.wait_for(lambda e: e["type"] == "host_mute" and e["session_id"] == b,
                                   5)
        assert event["by"] == "host"
        await carol.wait_for(lambda e: e["type"] == "user_muted" and e["session_id"] == b, 5)
        assert (await control(alice, "mute", b))["changed"] is False

        # Lower a raised hand: carol's own page is told (host_lower_hand) as well.
        await carol.send({"type": "raise_hand"})
        await alice.wait_for(lambda e: e["type"] == "user_raise_hand", 5)
        assert (await control(alice, "lower_hand", c))["changed"] is True
        event = await carol.wait_for(lambda e: e["type"] == "host_lower_hand", 5)
        assert event["by"] == "host"
        await carol.wait_for(lambda e: e["type"] == "user_lower_hand" and e["session_id"] == c,
                             5)

        # Stop a screen share.
        await bob.send({"type": "screen_on"})
        await alice.wait_for(lambda e: e["type"] == "user_screen_on", 5)
        assert (await control(alice, "stop_screen", b))["changed"] is True
        await bob.wait_for(lambda e: e["type"] == "host_screen_off", 5)
        await carol.wait_for(lambda e: e["type"] == "user_screen_off", 5)

        # Mute everyone else: carol (bob already is).
        answer = await control(alice, "mute_others")
        assert answer["muted"] == [c], answer
        await carol.wait_for(lambda e: e["type"] == "host_mute", 5)
        assert not any(e["type"] == "host_mute" for e in alice.events)

        # A target that is not in this call.
        other = await joined(server, "elsewhere", "dave")
        try:
            answer = await control(alice, "mute", other.session_id)
            assert answer["type"] == "error" and answer["code"] == "no_session", answer
        finally:
            await other.close()
        # The host cannot remove itself (leaving is the way out).
        answer = await control(alice, "remove", a)
        assert answer["type"] == "error" and answer["code"] == "bad_message", answer

        # Hand over: carol is host, alice has lost the controls.
        assert (await control(alice, "make_host", c))["changed"] is True
        for person in (alice, bob, carol):
            await person.wait_for(lambda e: e["type"] == "call_host_changed"
                                  and e["host"] == c, 5)
        assert (await control(alice, "mute", b))["code"] == "not_host"

        # Remove: bob learns it was the host (not an administrator).
        assert (await control(carol, "remove", b))["changed"] is True
        event = await bob.wait_for(lambda e: e["type"] == "host_removed", 5)
        assert event["by"] == "host" and event["reason"] == "removed by the host"
        await alice.wait_for(lambda e: e["type"] == "user_left" and e["session_id"] == b, 5)

        # End the call: everyone gets call_end, the call is gone.
        answer = await control(carol, "end")
        assert answer["type"] == "host_control_done" and answer["removed"] == 2, answer
        event = await alice.wait_for(lambda e: e["type"] == "call_end", 5)
        assert event["by"] == "host"
        calls = httpx.get(f"{server.api_url}/api/v1/calls", timeout=5,
                          headers={"Authorization": f"Bearer {admin_key(server)}"}).json()
        assert "board" not in [entry["id"] for entry in calls["calls"]]
    finally:
        for person in (alice, bob, carol):
            await person.close()


async def test_an_admin_removal_says_so(server) -> None:
    alice = await joined(server, "ops", "alice")
    try:
        response = httpx.delete(f"{server.api_url}/api/v1/calls/ops/sessions/"
                                f"{alice.session_id}", timeout=5,
                                headers={"Authorization": f"Bearer {admin_key(server)}"})
        assert response.status_code == 200, response.text
        event = await alice.wait_for(lambda e: e["type"] == "host_removed", 5)
        assert event["by"] == "admin" and "admin" in event["reason"]
    finally:
        await alice.close()


async def test_the_host_mints_invite_links_for_its_own_call(server) -> None:
    alice = await joined(server, "party", "alice")
    bob = await joined(server, "party", "bob")
    try:
        await bob.send({"type": "invite", "name": "Eve"})
        refused = await bob.wait_for(lambda e: e["type"] == "error", 5)
        assert refused["code"] == "not_host"

        links = []
        for _ in range(2):
            mark = len(alice.events)
            await alice.send({"type": "invite", "name": "Ada Lovelace"})
            links.append(await alice.wait_for(lambda e: e["type"] == "invite_created", 5,
                                              since=mark))
        first = links[0]
        assert first["call"] == "party" and first["name"] == "Ada Lovelace"
        # Two people invited under one name are two users.
        assert first["user"].startswith("ada-lovelace-") and first["user"] != links[1]["user"]
        query = parse_qs(urlparse(first["path"]).query)
        assert query["name"] == ["Ada Lovelace"] and query["token"] == [first["token"]]
        grant = verify_token(load_or_create_secret(server.data_dir), first["token"])
        assert (grant.call, grant.user) == ("party", first["user"])

        # The link works: the invitee joins alice's call and everyone sees the name.
        ada = Participant(server.ws_url, first["token"], "party", "Ada Lovelace", tone=None,
                          send_audio=False)
        try:
            await ada.join()
            event = await alice.wait_for(lambda e: e["type"] == "user_joined"
                                         and e["session_id"] == ada.session_id, 5)
            assert event["name"] == "Ada Lovelace" and event["user"] == first["user"]
        finally:
            await ada.close()
    finally:
        await alice.close()
        await bob.close()
