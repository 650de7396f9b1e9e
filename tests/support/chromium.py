"""Headless Chromium for tests: where it is, how it is started, a local page server.

Debian's chromium with fake media devices; as root it needs --no-sandbox; the
background-networking flags keep it from reaching for hosts this machine cannot
reach. getUserMedia needs a secure context, which http://127.0.0.1 is.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


@contextmanager
def launched(sync_api: Any, *extra_args: str, executable: str = CHROMIUM) -> Iterator[Any]:
    """Headless Chromium with fake devices and sound on (played remote audio has a level).

    `extra_args` add Chromium flags, e.g. `--use-file-for-fake-audio-capture=WAV`
    for a fake microphone that speaks. Playwright gives every launch a fresh
    temporary profile directory. `executable`: a wrapper that starts CHROMIUM
    elsewhere (in a network namespace, `ip netns exec NS` keeps Playwright's pipes).
    """
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=[*CHROMIUM_FLAGS, *extra_args],
                                             ignore_default_args=["--mute-audio"])
        try:
            yield browser
        finally:
            browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@contextmanager
def static_site(root: Path) -> Iterator[str]:
    """Serve `root` on a free loopback port for the duration; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
