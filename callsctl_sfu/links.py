"""Join links: where participants open the web client, one rule for every command.

`callsctl serve` prints a link at startup and `callsctl token` mints more; both
must point where participants actually reach the server. Behind a TLS proxy or
on a public name that is the `public_url` setting; without it, the API port on
the bind address (127.0.0.1 for a wildcard bind), https when TLS is configured.
"""

from __future__ import annotations

from callsctl_sfu.config import ServeConfig

WILDCARDS = ("0.0.0.0", "::")


def base_url(config: ServeConfig, api_port: int | None = None, tls: bool | None = None) -> str:
    """The web client's base URL, without a trailing slash.

    `api_port` is the port actually bound (differs from the config's with port 0);
    `tls` whether the API port serves HTTPS, when known better than the config says.
    """
    if config.public_url:
        return config.public_url.rstrip("/")
    host = "127.0.0.1" if config.bind in WILDCARDS else config.bind
    if ":" in host:
        host = f"[{host}]"
    if tls is None:
        tls = bool(config.tls_cert or config.tls_self_signed)
    scheme = "https" if tls else "http"
    return f"{scheme}://{host}:{api_port or config.api_port}"


def join_link(base: str, token: str) -> str:
    return f"{base.rstrip('/')}/?token={token}"
