"""TLS on the API port: certificate handling, and the web client joining over https.

Browsers only allow the microphone in a secure context, so off localhost the
web client must be served over https. The browser test opens the join link of
a server started with --tls-self-signed in headless Chromium (certificate
errors ignored, as a user who accepted the warning would) and checks that
audio from an aiortc participant arrives and is decoded.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

import httpx
import pytest

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.tls import (
    TlsError,
    ensure_self_signed,
    fingerprint,
    resolve_tls,
    server_context,
)
from tests.support.browser import INBOUND_AUDIO_JS
from tests.support.helpers import run_cli
from tests.support.serve import start_serve

CHROMIUM = "/usr/bin/chromium"


def test_self_signed_certificate_is_generated_once_and_reused(tmp_path: Path):
    cert, key = ensure_self_signed(tmp_path, ["10.9.8.7", "calls.example.org"])
    assert key.stat().st_mode & 0o777 == 0o600
    stamp = fingerprint(cert)
    again = resolve_tls("", "", True, str(tmp_path), [])
    assert again is not None and again.fingerprint_sha256 == stamp and again.self_signed
    server_context(again)  # loads
    text = os.popen(f"openssl x509 -in {cert} -noout -text").read()
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "IP Address:10.9.8.7",
                 "DNS:calls.example.org"):
        assert name in text, text
    key.write_text("not a key")  # damaged: replaced by a new pair, not served broken
    cert2, _ = ensure_self_signed(tmp_path, [])
    assert fingerprint(cert2) != stamp


def test_bad_tls_settings_are_one_clear_error(tmp_path: Path):
    cert, key = ensure_self_signed(tmp_path / "a", [])
    other_cert, _ = ensure_self_signed(tmp_path / "b", [])
    with pytest.raises(TlsError, match="tls_key"):
        resolve_tls(str(cert), "", False, str(tmp_path), [])
    with pytest.raises(TlsError, match="exclude each other"):
        resolve_tls(str(cert), str(key), True, str(tmp_path), [])
    with pytest.raises(TlsError, match="not a PEM certificate"):
        resolve_tls(str(key), str(key), False, str(tmp_path), [])
    material = resolve_tls(str(other_cert), str(key), False, str(tmp_path), [])
    assert material is not None
    with pytest.raises(TlsError, match="belong together"):
        server_context(material)
    result = run_cli("serve", "--bind", "127.0.0.1", "--api-port", "0", "--udp-port", "0",
                     "--data-dir", str(tmp_path / "d"), "--tls-cert", str(tmp_path / "none.pem"),
                     "--tls-key", str(key), timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "none.pem" in result.stderr, result.stderr


async def _wait_https_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(verify=False, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not ready in {timeout:g} s")


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
async def test_chromium_joins_over_https_with_the_self_signed_cert_and_hears_audio(
        tmp_path: Path):
    async_api = pytest.importorskip("playwright.async_api")
    server = start_serve(tmp_path, "--tls-self-signed", wait=False)
    speaker = None
    try:
        https = f"https://127.0.0.1:{server.api_port}"
        await _wait_https_ready(f"{https}/readyz")
        cert = server.data_dir / "tls" / "self-signed.crt"
        # The certificate verifies for 127.0.0.1 when trusted explicitly (callsctl calls --ca-cert).
        trust = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=trust) as client:
            assert (await client.get(f"{https}/healthz")).status_code == 200
        # Plain http on the TLS port is not served.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.api_port}/healthz", timeout=3)

        speaker = Participant(f"wss://127.0.0.1:{server.api_port}/ws",
                              server.token("secure", "speaker"), "secure", "Speaker", tone=440,
                              ssl=False)
        await speaker.join()
        await speaker.wait_connected(15)
        async with async_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
                      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                      "--autoplay-policy=no-user-gesture-required"],
                ignore_default_args=["--mute-audio"])
            try:
                context = await browser.new_context(ignore_https_errors=True)
                page = await context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{https}/?token={server.token('secure', 'browser')}",
                                timeout=15_000)
                assert await page.evaluate("window.isSecureContext") is True
                assert page.url.startswith("https://")
                await page.fill("#name", "Browser TLS", timeout=5_000)
                await page.click("#join", timeout=5_000)
                await page.wait_for_function("window.callsctl.state === 'joined'",
                                             timeout=15_000)
                await page.wait_for_function("window.callsctl.media === 'connected'",
                                             timeout=15_000)
                heard: dict = {}
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    heard = await page.evaluate(INBOUND_AUDIO_JS)
                    got = heard.get(speaker.session_id, {})
                    if got.get("packetsReceived", 0) > 50 and got.get("totalAudioEnergy", 0) > 0:
                        break
                    await page.wait_for_timeout(250)
                got = heard.get(speaker.session_id, {})
                assert got.get("packetsReceived", 0) > 50 and got.get("totalAudioEnergy", 0) > 0, (
                    heard, await page.evaluate("window.callsctl.log.slice(-30)"))
                # And the browser's microphone, once unmuted, reaches the aiortc participant.
                await page.click("#mute", timeout=5_000)
                await page.wait_for_function("window.callsctl.muted === false", timeout=5_000)
                browser_sid = await page.evaluate("window.callsctl.sessionId")
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and speaker.frames_from[browser_sid] < 25:
                    await asyncio.sleep(0.2)
                assert speaker.frames_from[browser_sid] >= 25, dict(speaker.frames_from)
                assert not errors, errors
            finally:
                await browser.close()
    finally:
        if speaker is not None:
            await speaker.close()
        server.stop()
