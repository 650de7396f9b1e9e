"""The serving pass's lean import of aiohttp still verifies every HTTPS request it makes.

callsctl/leanimports.py keeps aiohttp's default client TLS contexts from reading
the system's CA bundle at import (2 MB of an idle server) and has the verifying
one read it at its first handshake instead. What a user would notice if that went
wrong is an HTTPS request from a fleet node or a recorder that fails against a
server the system trusts, or one that succeeds against a server it does not. A
fresh interpreter (the test process has aiohttp imported already) imports the
web stack as `callsctl serve` does, with SSL_CERT_FILE naming one test
certificate, and makes real requests to two HTTPS servers on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from callsctl_sfu.tls import generate_self_signed
from tests.support.helpers import REPO

PROBE = textwrap.dedent(r"""
    import asyncio, json, os, ssl, sys
    from callsctl.leanimports import import_web_stack

    trusted, untrusted = sys.argv[1], sys.argv[2]
    import_web_stack()
    import aiohttp
    import aiohttp.connector as connector
    from aiohttp import web

    out = {"cert_file_after_import": os.environ.get("SSL_CERT_FILE"),
           "frozenlist_switch_left": "FROZENLIST_NO_EXTENSIONS" in os.environ,
           "cas_at_import": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509"]}

    async def serve(directory):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(f"{directory}/cert.pem", f"{directory}/key.pem")
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="hello"))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    async def fetch(http, port, **kwargs):
        try:
            async with http.get(f"https://127.0.0.1:{port}/", **kwargs) as response:
                return await response.text()
        except aiohttp.ClientConnectorCertificateError:
            return "certificate refused"

    async def main():
        (a, port_a), (b, port_b) = await serve(trusted), await serve(untrusted)
        async with aiohttp.ClientSession() as http:
            out["trusted"] = await fetch(http, port_a)
            out["untrusted"] = await fetch(http, port_b)
            out["untrusted_unverified"] = await fetch(http, port_b, ssl=False)
        out["cas_after"] = connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509"]
        await a.cleanup()
        await b.cleanup()

    asyncio.run(main())
    print(json.dumps(out))
""")


def test_lean_import_still_verifies_https_against_the_trusted_certificates(tmp_path: Path):
    for name in ("trusted", "untrusted"):
        generate_self_signed(tmp_path / name / "cert.pem", tmp_path / name / "key.pem",
                             ["127.0.0.1"])
    trusted_file = str(tmp_path / "trusted" / "cert.pem")
    env = {**os.environ, "SSL_CERT_FILE": trusted_file}
    env.pop("FROZENLIST_NO_EXTENSIONS", None)
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "trusted"),
                           str(tmp_path / "untrusted")], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # aiohttp's import read no certificate, and left the environment as it found it.
    assert out["cas_at_import"] == 0
    assert out["cert_file_after_import"] == trusted_file
    assert out["frozenlist_switch_left"] is False
    # The first handshake read the file SSL_CERT_FILE names, and verification holds.
    assert out["trusted"] == "hello"
    assert out["untrusted"] == "certificate refused"
    assert out["untrusted_unverified"] == "hello"
    assert out["cas_after"] >= 1
