"""How the serving pass imports aiohttp: without what an idle server never reads.

aiohttp (with asyncio and OpenSSL, the floor of this server) does three things at
import that cost an idle `callsctl serve` RSS for nothing it uses while idle
(docs/performance-memory.md, "Seventh step" and "Eighth step"): it loads
frozenlist's C++ build, parses the host's MIME table, and builds two client TLS
contexts that each read the system's whole CA bundle. Each is switched off here
by a documented setting, only around aiohttp's own import, so nothing else in the
process, and no child process, sees a difference. Only the serving pass
(callsctl/serving.py) calls this; every other command imports aiohttp plainly.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from typing import Any


def import_web_stack() -> None:
    """Import aiohttp the way an idle server needs it (see the module doc); idempotent."""
    _import_frozenlist_without_its_extension()
    _leave_out_the_system_mime_table()
    _import_aiohttp_reading_ca_certificates_on_first_use()


def _leave_out_the_system_mime_table() -> None:
    """Keep the host's /etc/mime.types out of the server: nothing in it reads that table.

    aiohttp builds its FileResponse type table at import with `mimetypes.MimeTypes()`,
    which holds only Python's built-in types, but which first runs `mimetypes.init()`
    once, and that parses every file in `mimetypes.knownfiles` into the module's
    global table (0.4 MB of an idle server's RSS with Debian's /etc/mime.types).
    Only `mimetypes.guess_type` reads that table, and the server never calls it: the
    web client's files and the jobs' recordings are typed by aiohttp's table, which
    is the same with or without the host's file. The documented list is emptied
    before aiohttp is imported.
    """
    import mimetypes

    if not mimetypes.inited:
        mimetypes.knownfiles = []


def _import_frozenlist_without_its_extension() -> None:
    """Load frozenlist (aiohttp's signals and middleware lists) as its pure-Python build.

    Its compiled build is C++ and maps libstdc++: 1.0 MB of an idle server's RSS
    (bench/RESULTS.md) for lists read a few times per HTTP request and never by the
    media path. frozenlist documents the switch, FROZENLIST_NO_EXTENSIONS, and reads
    it once, at import; it is taken back at once, so child processes do not inherit
    it. An operator's own setting of the variable is left as it is.
    """
    if "frozenlist" in sys.modules or "FROZENLIST_NO_EXTENSIONS" in os.environ:
        return
    os.environ["FROZENLIST_NO_EXTENSIONS"] = "1"
    try:
        import frozenlist  # noqa: F401
    finally:
        del os.environ["FROZENLIST_NO_EXTENSIONS"]


def _import_aiohttp_reading_ca_certificates_on_first_use() -> None:
    """Import aiohttp without its two client TLS contexts reading the CA bundle at import.

    aiohttp.connector builds its default client contexts when it is imported, one
    verifying (`ssl.create_default_context()`) and one not, and both read the
    system's CA file (`set_default_verify_paths`): 2.0 MB of an idle server's RSS
    with Debian's bundle of about 150 certificates, held for an HTTPS request the
    server makes only as a fleet node or a recorder, if ever. OpenSSL reads the
    file's name from SSL_CERT_FILE when a context is made (openssl-env(7)), so for
    aiohttp's import alone it names an empty file; it is restored at once. Then:

    - the verifying context is replaced by one with the same settings that reads
      the CA certificates at its first handshake (`_CertificatesOnFirstHandshake`),
      from the file the environment names then, as the original would have;
    - the other one verifies nothing (CERT_NONE), so it needs no certificates;
    - any other verifying context aiohttp made at import (a version laid out
      differently) reads its certificates at once: it costs the memory back, never
      a check.
    """
    if "aiohttp" in sys.modules:
        return
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = os.devnull
    try:
        import aiohttp.connector as connector
    finally:
        if saved is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = saved
    for name, value in list(vars(connector).items()):
        if not isinstance(value, ssl.SSLContext) or value.verify_mode == ssl.CERT_NONE:
            continue
        if name == "_SSL_CONTEXT_VERIFIED":
            setattr(connector, name, _CertificatesOnFirstHandshake.like(value, ("http/1.1",)))
        else:
            value.load_default_certs(ssl.Purpose.SERVER_AUTH)


class _CertificatesOnFirstHandshake(ssl.SSLContext):
    """A verifying client context that reads the system's CA certificates when first used.

    Every TLS connection asyncio or the `ssl` module opens with a context starts in
    `wrap_bio` or `wrap_socket`; the first of them loads the default certificates
    (`load_default_certs`, what `ssl.create_default_context()` does at once), under
    a lock so two threads cannot both start before they are in.
    """

    _certificates_lock: threading.Lock
    _certificates_loaded: bool

    @classmethod
    def like(cls, model: ssl.SSLContext, alpn: tuple[str, ...]) -> _CertificatesOnFirstHandshake:
        """A context with `model`'s settings (ALPN cannot be read back: `alpn` is set)."""
        context = cls(ssl.PROTOCOL_TLS_CLIENT)
        context._certificates_lock = threading.Lock()
        context._certificates_loaded = False
        context.options = model.options
        context.minimum_version = model.minimum_version
        context.maximum_version = model.maximum_version
        context.verify_flags = model.verify_flags
        context.verify_mode = model.verify_mode
        context.check_hostname = model.check_hostname
        if model.keylog_filename:
            context.keylog_filename = model.keylog_filename
        context.set_alpn_protocols(list(alpn))
        return context

    def _load_certificates_once(self) -> None:
        with self._certificates_lock:
            if not self._certificates_loaded:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                self._certificates_loaded = True

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_certificates_once()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_certificates_once()
        return super().wrap_socket(*args, **kwargs)
