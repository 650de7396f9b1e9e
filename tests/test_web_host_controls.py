"""Host controls in the browser, end to end: the host's page acts, the target's page shows it.

Real Chromium pages on a real `callsctl serve`. The host uses the participant
list's menu (signaling `host_control`, checked by the server); each affected
participant's own page must reflect what happened to it: muted, hand lowered,
screen share stopped, made host, removed ("by the host", or "by an
administrator" when the admin API did it), the call ended. Also: invite
links minted from the host's page, and the keyboard shortcuts M and H.
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.support.admin import admin_key
from tests.support.browser import (
    CANVAS_SCREEN_JS,
    UI_TIMEOUT_MS,
    BrowserParticipant,
    browser_people,
    failure,
)
from tests.support.chromium import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]


def host_action(host: BrowserParticipant, target: str, action: str) -> None:
    """Open the target's menu in the host's participant list and pick an action."""
    host.row(target).locator("button.more").click(timeout=UI_TIMEOUT_MS)
    host.page.click(f"#host-menu [data-action='{action}']", timeout=UI_TIMEOUT_MS)
    host.page.locator("#host-menu").wait_for(state="hidden", timeout=UI_TIMEOUT_MS)


def notice(person: BrowserParticipant, text: str) -> None:
    person.page.locator("#notice").filter(has_text=text).wait_for(timeout=UI_TIMEOUT_MS)


def test_the_host_moderates_from_the_page(browser, server, shots) -> None:  # noqa: F811
    with browser_people(server) as people:
        alice = BrowserParticipant(browser, "alice")
        bob = BrowserParticipant(browser, "bob")
        people += [alice, bob]
        bob.page.add_init_script(CANVAS_SCREEN_JS)
        alice.join(server.join_url("board", "alice"), "Alice")
        bob.join(server.join_url("board", "bob"), "Bob")
        for person in people:
            person.wait_media_connected()
        assert alice.page.evaluate("window.callsctl.isHost") is True
        # Only the host sees the controls.
        assert alice.row(bob.session_id).locator("button.more").count() == 1
        assert bob.page.locator("#participants button.more").count() == 0
        assert bob.page.locator("#videos button.tile-more:visible").count() == 0
        assert alice.page.locator(f'#videos .tile[data-session-id="{alice.session_id}"]'
                                  ' button.tile-more').is_hidden()
        assert bob.page.locator("#end-call").is_hidden()
        assert bob.page.locator("#host-tools").is_hidden()

        # Keyboard: M unmutes (the microphone is added), H raises the hand.
        bob.page.locator("body").press("m")
        bob.page.wait_for_function("window.callsctl.muted === false", timeout=UI_TIMEOUT_MS)
        bob.page.locator("body").press("h")
        assert bob.page.locator("#hand").get_attribute("aria-pressed") == "true"
        alice.row(bob.session_id).locator(".hand").wait_for(timeout=UI_TIMEOUT_MS)
        bob.page.click("#react", timeout=UI_TIMEOUT_MS)
        bob.page.locator("#reaction-buttons").wait_for(timeout=UI_TIMEOUT_MS)
        shots(bob, "reactions-desktop")
        bob.page.click("#reaction-buttons [data-emoji='❤️']", timeout=UI_TIMEOUT_MS)
        alice.page.locator(f"#reactions [data-session-id='{bob.session_id}']"
                           "[data-emoji='❤️'] svg").wait_for(timeout=UI_TIMEOUT_MS)
        shots(alice, "reaction-received-desktop")
        alice.row(bob.session_id).locator(".muted").wait_for(state="detached",
                                                             timeout=UI_TIMEOUT_MS)
        # With a dialog open (its selects take keys) letters are not shortcuts.
        bob.page.click("#settings", timeout=UI_TIMEOUT_MS)
        bob.page.locator("#settings-dialog").wait_for(timeout=UI_TIMEOUT_MS)
        bob.page.keyboard.press("m")
        assert bob.page.evaluate("window.callsctl.muted") is False
        bob.page.click("#settings-close", timeout=UI_TIMEOUT_MS)
        bob.page.click("#screen", timeout=UI_TIMEOUT_MS)
        bob.page.wait_for_function("window.callsctl.screenSharing === true",
                                   timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_function(f"window.callsctl.screenSharer === {bob.session_id!r}",
                                     timeout=UI_TIMEOUT_MS)

        # Lower hand: bob's own button and state follow.
        host_action(alice, bob.session_id, "lower_hand")
        bob.page.wait_for_function("window.callsctl.hand === false", timeout=UI_TIMEOUT_MS)
        assert bob.page.locator("#hand").get_attribute("aria-pressed") == "false"
        notice(bob, "lowered your hand")
        alice.row(bob.session_id).locator(".hand").wait_for(state="detached",
                                                            timeout=UI_TIMEOUT_MS)

        # Stop screen share: bob's capture stops, everyone's view clears.
        host_action(alice, bob.session_id, "stop_screen")
        bob.page.wait_for_function("window.callsctl.screenSharing === false",
                                   timeout=UI_TIMEOUT_MS)
        bob.page.wait_for_function("window.__screenTracks[0].readyState === 'ended'",
                                   timeout=UI_TIMEOUT_MS)
        notice(bob, "stopped your screen share")
        alice.page.locator("#screen-view").wait_for(state="hidden", timeout=UI_TIMEOUT_MS)

        # Mute, this time from bob's tile: bob's page is muted (his microphone no longer sent).
        tile = alice.page.locator(f'#videos .tile[data-session-id="{bob.session_id}"]')
        tile.hover()
        tile.locator("button.tile-more").click(timeout=UI_TIMEOUT_MS)
        alice.page.click("#host-menu [data-action='mute']", timeout=UI_TIMEOUT_MS)
        bob.page.wait_for_function("window.callsctl.muted === true", timeout=UI_TIMEOUT_MS)
        assert bob.page.locator("#mute").get_attribute("aria-pressed") == "true"
        assert bob.page.evaluate(
            "window.callsctl.pc.getSenders().filter((s) => s.track"
            " && s.track.kind === 'audio').length") == 0
        notice(bob, "The host muted you")
        alice.row(bob.session_id).locator(".muted").wait_for(timeout=UI_TIMEOUT_MS)
        # He may unmute again himself.
        bob.page.click("#mute", timeout=UI_TIMEOUT_MS)
        bob.page.wait_for_function("window.callsctl.muted === false", timeout=UI_TIMEOUT_MS)

        # Make host: the controls move to bob's page.
        host_action(alice, bob.session_id, "make_host")
        bob.page.wait_for_function("window.callsctl.isHost === true", timeout=UI_TIMEOUT_MS)
        notice(bob, "You are the host now")
        bob.page.locator("#end-call").wait_for(timeout=UI_TIMEOUT_MS)
        bob.row(alice.session_id).locator("button.more").wait_for(timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_function("window.callsctl.isHost === false", timeout=UI_TIMEOUT_MS)
        assert alice.page.locator("#participants button.more").count() == 0
        assert alice.page.locator("#end-call").is_hidden()

        # Invite: bob mints a link for Dora, who joins with her name filled in.
        bob.page.click("#invite", timeout=UI_TIMEOUT_MS)
        bob.page.fill("#invite-name", "Dora Example", timeout=UI_TIMEOUT_MS)
        bob.page.click("#invite-create", timeout=UI_TIMEOUT_MS)
        bob.page.wait_for_function("document.querySelector('#invite-link').value !== ''",
                                   timeout=UI_TIMEOUT_MS)
        link = bob.page.input_value("#invite-link")
        assert link.startswith(server.api_url + "/?token="), link
        shots(bob, "invite-desktop")
        bob.page.click("#invite-close", timeout=UI_TIMEOUT_MS)
        dora = BrowserParticipant(browser, "dora")
        people.append(dora)
        dora.open(link)
        assert dora.page.input_value("#name") == "Dora Example"
        dora.page.click("#join", timeout=UI_TIMEOUT_MS)
        dora.page.wait_for_function("window.callsctl.state === 'joined'",
                                    timeout=UI_TIMEOUT_MS * 3)
        dora.session_id = dora.page.evaluate("window.callsctl.sessionId")
        bob.row(dora.session_id).locator(".name").filter(has_text="Dora Example").wait_for(
            timeout=UI_TIMEOUT_MS)

        # Remove: Dora's page says the host did it.
        host_action(bob, dora.session_id, "remove")
        dora.page.wait_for_function("window.callsctl.state === 'removed'",
                                    timeout=UI_TIMEOUT_MS)
        assert "removed from the call by the host" in dora.page.locator("#ended-text").inner_text()
        bob.row(dora.session_id).wait_for(state="detached", timeout=UI_TIMEOUT_MS)

        # Mute all: alice (unmuted) is muted, bob himself is not.
        alice.unmute()
        bob.page.click("#mute-all", timeout=UI_TIMEOUT_MS)
        alice.page.wait_for_function("window.callsctl.muted === true", timeout=UI_TIMEOUT_MS)
        assert bob.page.evaluate("window.callsctl.muted") is False

        # End the call: the first click asks again, the second ends it for everyone.
        bob.page.click("#end-call", timeout=UI_TIMEOUT_MS)
        assert bob.page.evaluate("window.callsctl.state") == "joined"
        assert "again" in bob.page.locator("#end-call").inner_text()
        bob.page.click("#end-call", timeout=UI_TIMEOUT_MS)
        for person in (alice, bob):
            person.page.wait_for_function("window.callsctl.state === 'ended'",
                                          timeout=UI_TIMEOUT_MS)
        assert "ended by the host" in alice.page.locator("#ended-text").inner_text()
        for person in people:
            assert not person.page_errors(), person.diagnostics()


def test_admin_actions_show_on_the_participants_page(browser, server) -> None:  # noqa: F811
    """What an operator does with `callsctl calls` is reflected on the page, truthfully."""
    person = BrowserParticipant(browser, "erin")
    admin = httpx.Client(base_url=server.api_url, timeout=10,
                         headers={"Authorization": f"Bearer {admin_key(server)}"})
    try:
        sid = person.join(server.join_url("ops", "erin"), "Erin")
        person.wait_media_connected()
        base = f"/api/v1/calls/ops/sessions/{sid}"
        person.page.click("#hand", timeout=UI_TIMEOUT_MS)
        person.page.wait_for_function(
            f"window.callsctl.participants[{sid!r}].hand === true", timeout=UI_TIMEOUT_MS)
        response = admin.post(f"{base}/lower-hand")
        assert response.status_code == 200 and response.json()["changed"] is True, response.text
        person.page.wait_for_function("window.callsctl.hand === false", timeout=UI_TIMEOUT_MS)
        assert person.page.locator("#hand").get_attribute("aria-pressed") == "false"
        notice(person, "An administrator lowered your hand")
        person.unmute()
        response = admin.post(f"{base}/mute")
        assert response.status_code == 200 and response.json()["changed"] is True, response.text
        person.page.wait_for_function("window.callsctl.muted === true", timeout=UI_TIMEOUT_MS)
        notice(person, "An administrator muted you")

        response = admin.delete(base)
        assert response.status_code == 200, response.text
        person.page.wait_for_function("window.callsctl.state === 'removed'",
                                      timeout=UI_TIMEOUT_MS)
        text = person.page.locator("#ended-text").inner_text()
        assert "by an administrator" in text and "host" not in text, text
        assert not person.page_errors(), person.diagnostics()
    except Exception as exc:
        raise failure([person], exc, server) from exc
    finally:
        admin.close()
        person.close()


def test_a_page_whose_session_the_server_ends_says_why(browser, serve_factory) -> None:  # noqa: F811
    """The same user joins again elsewhere: the first page ends the call and says why."""
    server = serve_factory(env={"CALLSCTL_MAX_SESSIONS_PER_USER": "1"})
    first, second = BrowserParticipant(browser, "laptop"), BrowserParticipant(browser, "phone")
    try:
        url = server.join_url("desk", "frank")
        first.join(url, "Frank")
        first.wait_media_connected()
        second.join(url, "Frank")
        first.page.wait_for_function("window.callsctl.state === 'removed'",
                                     timeout=UI_TIMEOUT_MS)
        assert first.page.evaluate("window.callsctl.error.code") == "session_removed"
        text = first.page.locator("#ended-text").inner_text()
        assert "no longer in the call" in text and "again" in text, text
        assert second.page.evaluate("window.callsctl.state") == "joined"
        for person in (first, second):
            assert not person.page_errors(), person.diagnostics()
    except Exception as exc:
        raise failure([first, second], exc, server) from exc
    finally:
        first.close()
        second.close()
