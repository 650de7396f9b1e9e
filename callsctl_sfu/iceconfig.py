"""ICE settings that are plain text in the config: port overrides, ICE servers, TURN credentials.

Kept free of aiortc/aioice imports on purpose: config.py validates these
settings for every CLI command (`callsctl check config` included), which must
stay fast and must not need the media engine.

- `ice_host_port_override` follows the seed deployment's RTCD_RTC_ICEHOSTPORTOVERRIDE:
  either one port, or a map `localIP/port,...` so one configuration can be
  shared by several servers behind one public address, each finding its own
  entry by its local address (EXT_IP:8443 -> A:8443, EXT_IP:8444 -> B:8443).
- `ice_servers` are STUN/TURN URIs handed to clients (RFC 7064 stun:/stuns:,
  RFC 7065 turn:/turns:), comma-separated, or a JSON list of RTCIceServer
  objects for servers with static credentials.
- TURN credentials use the TURN REST API convention that coturn implements
  with `use-auth-secret` / `static-auth-secret`
  (draft-uberti-behave-turn-rest-00 §2.2): username `<expiry unix time>:<user>`,
  password base64(HMAC-SHA1(secret, username)). coturn recomputes the password
  itself, so the secret never leaves the server, and refuses the username once
  the expiry time has passed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from callsctl_sfu.errors import CallsctlError

ICE_URL_SCHEMES = ("stun", "stuns", "turn", "turns")
MAX_TURN_EXPIRATION_MINUTES = 7 * 24 * 60  # one week, as the Calls plugin allows
DEFAULT_STUN_PORT = 3478


class IceSettingError(CallsctlError, ValueError):
    """A setting could not be parsed; the message names the bad part in one line."""
    code = "bad_ice_setting"


# -- ice_host_port_override ---------------------------------------------------------


@dataclass(frozen=True)
class PortOverride:
    """The port to advertise: one for every host (`single`) or one per local IP (`by_ip`)."""

    single: int | None = None
    by_ip: tuple[tuple[str, int], ...] = ()

    def __bool__(self) -> bool:
        return self.single is not None or bool(self.by_ip)

    def port_for(self, local_ips: list[str]) -> int | None:
        """The override for the first of local_ips the map names (None: no entry applies)."""
        if self.single is not None:
            return self.single
        table = dict(self.by_ip)
        for address in local_ips:
            try:
                key = str(ipaddress.ip_address(address))
            except ValueError:
                continue
            if key in table:
                return table[key]
        return None


def _port_number(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise IceSettingError(f"entry {entry!r}: {text!r} is not a port from 1 to 65535")
    return int(text)


def parse_port_override(text: str) -> PortOverride:
    """Parse `8443` or `10.0.0.1/8443,10.0.0.2/8444`; empty means no override."""
    text = text.strip()
    if not text:
        return PortOverride()
    entries = [e.strip() for e in text.split(",")]
    if len(entries) == 1 and "/" not in entries[0]:
        return PortOverride(single=_port_number(entries[0], entries[0]))
    table: dict[str, int] = {}
    for entry in entries:
        if not entry:
            raise IceSettingError("empty entry (two commas in a row, or a trailing comma)")
        address, slash, port = entry.rpartition("/")
        if not slash:
            raise IceSettingError(f"entry {entry!r} has no local IP: use one port for every "
                                  "host, or only LOCAL_IP/PORT entries")
        try:
            key = str(ipaddress.ip_address(address.strip()))
        except ValueError:
            raise IceSettingError(f"entry {entry!r}: {address!r} is not an IP address") from None
        if key in table:
            raise IceSettingError(f"entry {entry!r}: {key} appears more than once")
        table[key] = _port_number(port.strip(), entry)
    return PortOverride(by_ip=tuple(table.items()))


# -- stun_server --------------------------------------------------------------------


def parse_host_port(text: str, default_port: int = DEFAULT_STUN_PORT) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or `stun:host:port` -> (host, port)."""
    value = text.strip()
    if value.lower().startswith("stun:"):
        value = value[5:]
    if not value:
        raise IceSettingError("no host given")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise IceSettingError(f"{text!r} is not [IPv6]:PORT")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not host or any(c in host for c in " /?#@"):
        raise IceSettingError(f"{text!r} has no usable host name")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise IceSettingError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


# -- ice_servers ----------------------------------------------------------------------


@dataclass(frozen=True)
class IceServer:
    """One RTCIceServer entry (W3C webrtc-pc §4.2.2), static credentials optional."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    @property
    def is_turn(self) -> bool:
        return any(u.lower().startswith(("turn:", "turns:")) for u in self.urls)


def check_ice_url(url: str) -> str:
    """Validate one stun:/stuns:/turn:/turns: URI (RFC 7064, RFC 7065); returns it stripped."""
    url = url.strip()
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() not in ICE_URL_SCHEMES:
        raise IceSettingError(f"{url!r} must start with stun:, stuns:, turn: or turns:")
    if rest.startswith("//"):
        raise IceSettingError(f"{url!r}: write {scheme}:HOST[:PORT] without //")
    hostport, question, query = rest.partition("?")
    if question:
        if scheme.lower() in ("stun", "stuns"):
            raise IceSettingError(f"{url!r}: STUN URIs take no ?parameters")
        key, _, value = query.partition("=")
        if key != "transport" or value.lower() not in ("udp", "tcp"):
            raise IceSettingError(f"{url!r}: the only parameter is ?transport=udp or tcp")
    try:
        parse_host_port(hostport)
    except IceSettingError as exc:
        raise IceSettingError(f"{url!r}: {exc}") from None
    return url


def parse_ice_servers(text: str) -> tuple[IceServer, ...]:
    """Comma-separated URIs, or a JSON list of {"urls", "username", "credential"} objects.

    Comma-separated STUN URIs become one entry and TURN URIs another, which is
    the entry the TURN REST credentials are attached to.
    """
    text = text.strip()
    if not text:
        return ()
    if text.startswith("["):
        return _parse_ice_servers_json(text)
    urls = [check_ice_url(u) for u in text.split(",") if u.strip()]
    stun = tuple(u for u in urls if u.lower().startswith(("stun:", "stuns:")))
    turn = tuple(u for u in urls if u.lower().startswith(("turn:", "turns:")))
    return tuple(IceServer(group) for group in (stun, turn) if group)


def _parse_ice_servers_json(text: str) -> tuple[IceServer, ...]:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IceSettingError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, list):
        raise IceSettingError("the JSON form must be a list of {\"urls\": [...]} objects")
    servers = []
    for index, item in enumerate(data):
        where = f"entry {index}"
        if not isinstance(item, dict) or "urls" not in item:
            raise IceSettingError(f"{where} must be an object with \"urls\"")
        unknown = set(item) - {"urls", "username", "credential"}
        if unknown:
            raise IceSettingError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        raw = item["urls"]
        raw_urls = [raw] if isinstance(raw, str) else raw
        if not isinstance(raw_urls, list) or not raw_urls or \
                not all(isinstance(u, str) for u in raw_urls):
            raise IceSettingError(f"{where}: \"urls\" must be a URI or a list of URIs")
        username, credential = item.get("username"), item.get("credential")
        for name, value in (("username", username), ("credential", credential)):
            if value is not None and not isinstance(value, str):
                raise IceSettingError(f"{where}: {name} must be a string")
        servers.append(IceServer(tuple(check_ice_url(u) for u in raw_urls), username,
                                 credential))
    return tuple(servers)


# -- TURN REST credentials ------------------------------------------------------------


def turn_rest_credentials(secret: str, user: str, ttl_seconds: int,
                          now: float | None = None) -> tuple[str, str, int]:
    """(username, password, expiry) valid for ttl_seconds from now.

    coturn checks the expiry in the username against its own clock and the
    password against HMAC-SHA1 of the username under the shared secret.
    """
    expiry = int(time.time() if now is None else now) + int(ttl_seconds)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii"), expiry


def ice_servers_for(servers: tuple[IceServer, ...], turn_secret: str, expiration_minutes: int,
                    user: str, now: float | None = None) -> list[dict[str, Any]]:
    """RTCIceServer dictionaries for one user, as `joined.ice_servers` and /turn-credentials.

    TURN entries without static credentials get fresh REST credentials when a
    secret is configured; entries that carry their own credentials keep them.
    """
    out: list[dict[str, Any]] = []
    credentials: tuple[str, str, int] | None = None
    for server in servers:
        entry: dict[str, Any] = {"urls": list(server.urls)}
        if server.username is not None or server.credential is not None:
            entry["username"] = server.username or ""
            entry["credential"] = server.credential or ""
        elif server.is_turn and turn_secret:
            if credentials is None:
                credentials = turn_rest_credentials(turn_secret, user, expiration_minutes * 60,
                                                    now)
            entry["username"], entry["credential"] = credentials[0], credentials[1]
        out.append(entry)
    return out


class IceServerSettings(Protocol):
    """The part of ServeConfig that decides what clients get as ICE servers.

    Read-only properties, so a frozen ServeConfig matches the protocol.
    """

    @property
    def ice_servers(self) -> str: ...
    @property
    def turn_static_auth_secret(self) -> str: ...
    @property
    def turn_credentials_expiration_minutes(self) -> int: ...


def client_ice_servers(settings: IceServerSettings, user: str,
                       now: float | None = None) -> list[dict[str, Any]]:
    """`joined.ice_servers` / GET /turn-credentials for one user, from the server's settings."""
    return ice_servers_for(parse_ice_servers(settings.ice_servers),
                           settings.turn_static_auth_secret,
                           settings.turn_credentials_expiration_minutes, user, now)
