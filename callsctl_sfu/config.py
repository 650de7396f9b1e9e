"""One typed configuration for `callsctl serve`.

Four sources, later ones win: built-in defaults < TOML file (`--config`) <
`CALLSCTL_*` environment variables < command-line flags. Every value is
validated in one place so that a bad setting stops startup with a single line
naming the key, the value it got and what is allowed, whichever source it came
from. Names follow the seed deployment guide's vocabulary
(`ice_host_override`, `max_call_participants`, ...).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.fleet.settings import (
    POLICIES,
    cluster_url_problem,
    node_id_problem,
    node_url_problem,
    redacted,
)
from callsctl_sfu.iceconfig import (
    MAX_TURN_EXPIRATION_MINUTES,
    IceSettingError,
    parse_host_port,
    parse_ice_servers,
    parse_port_override,
)
from callsctl_sfu.udpbuffer import DEFAULT_UDP_BUFFER_SIZE

ENV_PREFIX = "CALLSCTL_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
METRICS_AUTH = ("none", "admin_key")

# How a setting appears on `callsctl serve`'s command line. A field's `flag` is one of
# these, or None for a setting read only from TOML and the environment.
VALUE = "value"    # --api-port 8045 (a bool field takes on|off, true|false, ...)
SWITCH = "switch"  # --enable-ipv6: can only turn the setting on
PAIR = "pair"      # --default-enabled/--no-default-enabled
FLAG_KINDS = (VALUE, SWITCH, PAIR)

SECTIONS: dict[str, str] = {
    "server": "the process: listen address, data directory, logs",
    "rtc": "media: the UDP and ICE-TCP sockets, ICE candidates, STUN and TURN",
    "calls": "calls and sessions: limits, timeouts, features",
    "api": "the HTTP API port: signaling websocket, limits, TLS, join links",
    "admin": "the admin API key and /metrics",
    "jobs": "jobs beside the SFU: recordings",
    "fleet": "a fleet of nodes over Redis",
}
"""The sections `--print-config`, `check config`, the README and the man page group
settings under. A section is presentation only: TOML keys and CALLSCTL_* names stay
flat (`udp_port`, not `rtc.udp_port`), so existing files and environments keep working."""


class ConfigError(CallsctlError, ValueError):
    """A setting was rejected; the message is a complete one-line explanation."""
    code = "bad_config"

    def __init__(self, key: str, value: object, allowed: str, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid {key}={value!r}{where}: {allowed}")
        self.key = key
        self.value = value
        self.allowed = allowed
        self.source = source
        # Every problem found in the same pass, this one first (`check config` shows all).
        self.all: list[ConfigError] = [self]


def default_data_dir() -> str:
    """XDG data home, so a plain `callsctl serve` keeps state across restarts."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "callsctl")


def _port(allow_zero: bool = False) -> Callable[[Any], str | None]:
    low = 0 if allow_zero else 1

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
            return f"must be a port number from {low} to 65535"
        return None

    return check


def _non_negative_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "must be a whole number, 0 or more"
    return None


MAX_MEDIA_THREADS = 64  # rtc/_fanout.c's MAX_THREADS


def _media_threads(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MEDIA_THREADS:
        return (f"must be a whole number from 1 to {MAX_MEDIA_THREADS}, or 0 for one per "
                "usable CPU")
    return None


def _late_drop_ms(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 60_000:
        return "must be a whole number of milliseconds from 0 (never) to 60000"
    return None


def _positive_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return "must be a number greater than 0"
    return None


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in options:
            return "must be one of " + ", ".join(options)
        return None

    return check


def _ip_address(value: Any) -> str | None:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return "must be an IPv4 or IPv6 address such as 0.0.0.0 or 127.0.0.1"
    return None


def _host_or_empty(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be an IP address or host name"
    if value and (" " in value or "/" in value):
        return "must be an IP address or host name (no spaces, no port)"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _call_id(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 64:
        return "must be a call id of 1 to 64 characters"
    return None


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _parsed_by(parser: Callable[[str], Any]) -> Callable[[Any], str | None]:
    """A check that runs one of iceconfig's parsers and reports its one-line complaint."""

    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        try:
            parser(value)
        except IceSettingError as exc:
            return str(exc)
        return None

    return check


def _stun_server_or_empty(value: str) -> None:
    if value.strip():
        parse_host_port(value)


def _turn_minutes(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 1 <= value <= MAX_TURN_EXPIRATION_MINUTES:
        return f"must be a whole number of minutes from 1 to {MAX_TURN_EXPIRATION_MINUTES} " \
               "(one week)"
    return None


def public_url_problem(value: Any) -> str | None:
    """Empty, or an http(s) base URL without query or fragment (links append /?token=)."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        return "must be an http:// or https:// URL such as https://calls.example.com"
    if parts.query or parts.fragment:
        return "must not have a query (?...) or fragment (#...)"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    return None


def redis_url_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if value and (urlsplit(value).scheme not in ("redis", "rediss") or " " in value):
        return "must be a redis:// or rediss:// URL such as redis://10.0.0.5:6379/0, or empty"
    return None


def _ip_or_empty(value: Any) -> str | None:
    return None if value == "" else _ip_address(value)


def _setting(
    default: Any,
    help: str,
    check: Callable[[Any], str | None],
    *,
    section: str,
    flag: str | None = VALUE,
    metavar: str | None = None,
    shown: str | None = None,
    sensitive: bool = False,
) -> Any:
    """Declare one setting: everything its flag, env name, TOML key and docs need.

    `flag` says how `callsctl serve` takes it (VALUE, SWITCH, PAIR, or None for
    TOML/env only), `metavar` what --help shows for its value, `shown` the default as
    a person reads it when the value itself says little ("" for the data dir), and
    `sensitive` that the environment is the better place for it (flags show in ps).
    """
    if section not in SECTIONS or flag not in (*FLAG_KINDS, None):
        raise ValueError(f"bad setting declaration: section={section!r} flag={flag!r}")
    return field(default=default, metadata={
        "help": help, "check": check, "section": section, "flag": flag,
        "metavar": metavar, "shown": shown, "sensitive": sensitive})


@dataclass(frozen=True)
class ServeConfig:
    """Every setting `callsctl serve` understands, with its default and meaning."""

    bind: str = _setting("0.0.0.0", "address the API and media sockets listen on", _ip_address,
        section="server",
    )
    api_port: int = _setting(
        8045, "TCP port of the HTTP API, web client, /ws signaling and /metrics", _port(True),
        section="api",
    )
    udp_port: int = _setting(
        8443, "the one UDP port carrying every session's ICE, DTLS and SRTP", _port(True),
        section="rtc",
    )
    ice_host_override: str = _setting(
        "",
        "address advertised in ICE candidates (public IP of a NATed server); "
        "empty = the bind address, or the first non-loopback interface address",
        _host_or_empty,
        section="rtc",
    )
    data_dir: str = _setting(
        "", "directory for the database and generated secrets", _string,
        section="server", shown="$XDG_DATA_HOME/callsctl",
    )
    max_call_participants: int = _setting(
        0, "most participants one call accepts; 0 = unlimited", _non_negative_int,
        section="calls",
    )
    log_level: str = _setting(
        "info", "log verbosity", _choice(LOG_LEVELS),
        section="server", metavar="|".join(LOG_LEVELS),
    )
    log_format: str = _setting(
        "text", "log line format", _choice(LOG_FORMATS),
        section="server", metavar="|".join(LOG_FORMATS),
    )
    default_call: str = _setting(
        "default", "call id used for the join link printed at startup", _call_id,
        section="calls",
    )
    session_timeout: float = _setting(
        10.0,
        "seconds without any packet from a connected participant before it is removed",
        _positive_number,
        section="calls",
    )
    reconnect_grace: float = _setting(
        5.0,
        "seconds a participant whose signaling connection dropped may reconnect "
        "before it is removed",
        _positive_number,
        section="calls", flag=None,
    )
    media_connect_timeout: float = _setting(
        20.0,
        "seconds a joined session may take to connect media (ICE + DTLS) before it is "
        "removed; clients give up after 15 s",
        _positive_number,
        section="calls", flag=None,
    )
    max_sessions_per_user: int = _setting(
        2,
        "sessions one user (token subject) may hold in one call; a join beyond that "
        "replaces the user's oldest session (one whose signaling dropped goes first); "
        "0 = unlimited",
        _non_negative_int,
        section="calls", flag=None,
    )
    http_idle_timeout: float = _setting(
        15.0,
        "seconds an API connection may take to send a complete request, and may stay idle "
        "between requests, before it is closed (slow or silent clients)",
        _positive_number,
        section="api", flag=None,
    )
    max_http_connections: int = _setting(
        0,
        "most connections open on the API port at once (websockets included); beyond it "
        "new ones get 503; 0 = three quarters of the open-files limit",
        _non_negative_int,
        section="api", flag=None,
    )
    max_message_size: int = _setting(
        65536, "largest signaling message accepted, in bytes", _positive_number,
        section="api", flag=None,
    )
    udp_buffer_size: int = _setting(
        DEFAULT_UDP_BUFFER_SIZE,
        "SO_RCVBUF/SO_SNDBUF asked for on the media socket (see `callsctl tune`)",
        _positive_number,
        section="rtc",
    )

    media_threads: int = _setting(
        0, "threads one packet's fan-out to many receivers may use (fan-outs of 64 or more "
        "receivers are split across them, on the one UDP port); 1 = the event loop's thread "
        "only; 0 = one per usable CPU (the process's affinity mask)", _media_threads,
        section="rtc",
    )
    media_late_drop_ms: int = _setting(
        250, "an audio packet that waited longer than this in the media socket's receive "
        "queue (the server behind: a full core) is counted but not forwarded, so the server "
        "catches up and the ICE/DTLS of joining sessions queued behind it is not held up; "
        "0 = forward however late (C engine only)", _late_drop_ms,
        section="rtc", metavar="MS",
    )

    allow_screen_sharing: bool = _setting(
        True, "whether participants may share their screen (one share per call)", _boolean,
        section="calls", flag=None,
    )
    enable_simulcast: bool = _setting(
        False, "accept simulcast layers from clients and send each receiver the layer its "
        "bandwidth allows", _boolean,
        section="calls", flag=None,
    )
    nack_buffer_size: int = _setting(
        256, "video packets kept per published stream to answer NACKs (RFC 4585); "
        "0 disables NACK handling", _non_negative_int,
        section="rtc", flag=None,
    )

    # -- connectivity: ICE-TCP, NAT, STUN, TURN, IPv6 --
    tcp_port: int = _setting(
        0, "TCP port for ICE-TCP (RFC 6544), the fallback of clients whose UDP is blocked; "
        "0 = the same number as udp_port", _port(True),
        section="rtc",
    )
    ice_tcp: bool = _setting(True, "listen for ICE-TCP and advertise TCP candidates", _boolean,
        section="rtc", metavar="on|off",
    )
    ice_host_port_override: str = _setting(
        "", "port advertised in ICE candidates instead of the real one (port forwarding, "
        "Docker, load balancers): one port, or LOCAL_IP/PORT entries such as "
        "10.0.0.1/8443,10.0.0.2/8444", _parsed_by(parse_port_override),
        section="rtc", metavar="PORT|IP/PORT,...",
    )
    stun_server: str = _setting(
        "stun.global.calls.mattermost.com:3478",
        "STUN server (host:port) asked once at startup for the public address when "
        "ice_host_override is empty; empty = do not ask", _parsed_by(_stun_server_or_empty),
        section="rtc", metavar="HOST:PORT",
    )
    ice_servers: str = _setting(
        "", "STUN/TURN URIs handed to clients, comma-separated (stun:, turn:, turns:), or a "
        "JSON list of {urls, username, credential}", _parsed_by(parse_ice_servers),
        section="rtc", metavar="URI,...",
    )
    turn_static_auth_secret: str = _setting(
        "", "the static-auth-secret of coturn: clients get TURN REST credentials for the TURN "
        "URIs in ice_servers", _string,
        section="rtc", sensitive=True,
    )
    turn_credentials_expiration_minutes: int = _setting(
        1440, "how long TURN credentials stay valid, in minutes (at most one week)",
        _turn_minutes,
        section="rtc",
    )
    enable_ipv6: bool = _setting(
        False, "also listen on IPv6 (same port numbers) and advertise IPv6 host candidates",
        _boolean,
        section="rtc", flag=SWITCH,
    )
    preload_media: bool = _setting(
        False, "load the media stack (aiortc, PyAV, pyOpenSSL, pylibsrtp: about 33 MB) and "
        "check aiortc's internals at start, before any port is taken, instead of in the "
        "background at the first call (a fleet node, with cluster set, always does)", _boolean,
        section="rtc", flag=SWITCH,
    )

    # -- admin API, call settings, TLS --
    admin_key_file: str = _setting(
        "", "file holding the admin API key (sent as Authorization: Bearer); "
        "empty = generate one into <data_dir>/admin_key (0600) on first start", _string,
        section="admin",
    )
    default_enabled: bool = _setting(
        True, "whether calls may start in any call id; false = test mode: only call ids "
        "enabled through the admin API can start", _boolean,
        section="calls", flag=PAIR,
    )
    tls_cert: str = _setting(
        "", "PEM certificate (chain) for HTTPS/WSS on the API port; needs tls_key", _string,
        section="api",
    )
    tls_key: str = _setting("", "PEM private key of tls_cert", _string,
        section="api",
    )
    tls_self_signed: bool = _setting(
        False, "serve HTTPS with a self-signed certificate generated (and reused) in the "
        "data dir", _boolean,
        section="api", flag=SWITCH,
    )
    ws_rate_limit: float = _setting(
        10.0, "signaling messages per second one connection may send on average",
        _positive_number,
        section="api", flag=None,
    )
    ws_rate_burst: int = _setting(
        100, "signaling messages one connection may send in a burst", _positive_number,
        section="api", flag=None,
    )

    # -- join links and /metrics exposure --
    public_url: str = _setting(
        "", "base URL participants open (e.g. https://calls.example.com behind a TLS proxy); "
        "join links from serve and `callsctl token` start with it; empty = "
        "http(s)://<bind address, or 127.0.0.1>:<api_port>", public_url_problem,
        section="api", metavar="URL",
    )
    metrics_port: int = _setting(
        0, "TCP port of a separate listener that serves only /metrics (like Mattermost's "
        "metrics port 8067), which then leaves the API port; 0 = /metrics on the API port",
        _port(True),
        section="admin", metavar="PORT",
    )
    metrics_bind: str = _setting(
        "", "address the metrics listener binds (e.g. 127.0.0.1 or a private address); "
        "empty = bind", _ip_or_empty,
        section="admin", metavar="IP",
    )
    metrics_auth: str = _setting(
        "none", "who may read /metrics: none = anyone (Prometheus without credentials); "
        "admin_key = only requests with Authorization: Bearer <admin key>",
        _choice(METRICS_AUTH),
        section="admin", metavar="none|admin_key",
    )

    # -- jobs beside the SFU: recording (callsctl_sfu/jobs/) --
    max_concurrent_jobs: int = _setting(
        2, "jobs (recordings) this server runs at once in local worker processes; more "
        "wait in the queue", _positive_number,
        section="jobs", flag=None,
    )
    recording_max_duration: float = _setting(
        4 * 3600.0, "longest a recording runs, in seconds, unless the request asks for "
        "less; it is then stopped and finished like a manual stop", _positive_number,
        section="jobs", flag=None,
    )
    job_queue_url: str = _setting(
        "", "redis://host:port/db of a job queue: jobs go to `callsctl worker` processes on "
        "any machine instead of local worker processes; empty = local", redis_url_problem,
        section="jobs", flag=None,
    )
    recording_retention_days: int = _setting(
        0, "delete finished recordings (files and job) older than this many days; "
        "0 = keep them", _non_negative_int,
        section="jobs", flag=None,
    )
    # -- a fleet of nodes over Redis (callsctl_sfu/fleet/, docs/fleet.md) --
    cluster: str = _setting(
        "", "Redis URL of the fleet (redis:// or rediss://, password in the URL); empty = "
        "a single node without Redis", cluster_url_problem,
        section="fleet", metavar="redis://…", sensitive=True,
    )
    cluster_policy: str = _setting(
        "least-loaded", "where a new call goes: least-loaded = the active node with the "
        "lowest load; local = the node the first participant connected to",
        _choice(POLICIES),
        section="fleet", metavar="least-loaded|local",
    )
    node_id: str = _setting(
        "", "this node's name in the fleet; empty = <host name>-<api_port>", node_id_problem,
        section="fleet",
    )
    node_url: str = _setting(
        "", "base URL other nodes use to reach this node's API (relayed signaling, routed "
        "admin requests); empty = http(s)://<advertised address>:<api_port>", node_url_problem,
        section="fleet", metavar="URL",
    )
    fleet_secret: str = _setting(
        "", "shared secret that authenticates node-to-node requests; empty = the "
        "fleet_secret file in the data dir (generated 0600 on first start)", _string,
        section="fleet", flag=None, sensitive=True,
    )
    drain_timeout: float = _setting(
        600.0, "seconds a draining node (SIGTERM, `callsctl fleet drain`) waits for its calls "
        "to end before it stops anyway", _positive_number,
        section="fleet", metavar="SECONDS",
    )

    # -- transcription and live captions (callsctl_sfu/jobs/transcribe/) --
    transcription_enabled: bool = _setting(
        False, "transcribe every finished recording (WebVTT + text beside it); a recording "
        "request can override it (\"transcribe\": true or false)", _boolean,
        section="jobs", flag=None,
    )
    live_captions_enabled: bool = _setting(
        False, "let hosts (and the admin API) turn on live captions in a call", _boolean,
        section="jobs", flag=None,
    )
    transcription_engine: str = _setting(
        "pocketsphinx", "speech-to-text engine of transcriptions and captions",
        _choice(("pocketsphinx",)),
        section="jobs", flag=None,
    )
    transcription_model: str = _setting(
        "", "model directory of the engine; empty = the model bundled with it (en-US)",
        _string,
        section="jobs", flag=None,
    )
    transcription_language: str = _setting(
        "en-US", "language spoken in calls (the bundled model is en-US; others need "
        "transcription_model)", _string,
        section="jobs", flag=None,
    )

    def __post_init__(self) -> None:
        if not self.data_dir:
            object.__setattr__(self, "data_dir", default_data_dir())

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SettingSpec:
    """One ServeConfig field as every interface sees it, derived from its declaration."""

    name: str
    section: str
    help: str
    default: Any
    flag_kind: str | None
    metavar: str | None
    shown: str | None
    sensitive: bool

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def flag(self) -> str | None:
        """The flag's name (`--api-port`), or None for a TOML/env-only setting."""
        return flag_name(self.name) if self.flag_kind else None

    @property
    def flag_decls(self) -> str | None:
        """What click declares: `--default-enabled/--no-default-enabled` for a pair."""
        if self.flag_kind == PAIR and self.flag:
            return f"{self.flag}/--no-{self.flag[2:]}"
        return self.flag

    @property
    def default_text(self) -> str:
        """The default as the README, man page and --help print it."""
        if self.shown is not None:
            return self.shown
        value = self.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if value == "":
            return "(empty)"
        mib = 1024 * 1024
        if isinstance(value, int) and value >= mib and value % mib == 0:
            return f"{value} ({value // mib} MiB)"
        return str(value)


def setting_specs() -> list[SettingSpec]:
    """Every setting, in declaration order."""
    return [SettingSpec(
        name=f.name, section=f.metadata["section"], help=f.metadata["help"],
        default=f.default, flag_kind=f.metadata["flag"], metavar=f.metadata["metavar"],
        shown=f.metadata["shown"], sensitive=f.metadata["sensitive"],
    ) for f in fields(ServeConfig)]


def specs_by_section() -> list[SettingSpec]:
    """Every setting grouped by section (SECTIONS order), declaration order within one."""
    order = list(SECTIONS)
    return sorted(setting_specs(), key=lambda spec: order.index(spec.section))


def setting_names() -> list[str]:
    return [f.name for f in fields(ServeConfig)]


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _coerce(key: str, raw: Any, source: str) -> Any:
    """Turn a TOML/env/flag value into the field's type, or reject it."""
    target = {f.name: f for f in fields(ServeConfig)}[key]
    kind = target.type
    if kind == "int":
        if isinstance(raw, bool):
            raise ConfigError(key, raw, "must be a whole number", source)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                raise ConfigError(key, raw, "must be a whole number", source) from None
        return raw
    if kind == "float":
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                raise ConfigError(key, raw, "must be a number", source) from None
        if isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return raw
    if kind == "bool" and isinstance(raw, str):
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, raw, "must be true or false", source)
    if kind == "str" and isinstance(raw, str):
        return raw.strip()
    return raw


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config; settings may sit at the top level or under [serve]."""
    import tomllib  # only a server started with a config file pays for the parser (idle RSS)

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file does not exist") from None
    except OSError as exc:
        raise ConfigError("config", str(path), f"cannot be read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"is not valid TOML ({exc})") from None
    if "serve" not in data:
        return dict(data)
    section = data["serve"]
    if not isinstance(section, dict):
        raise ConfigError("config", str(path), "[serve] must be a table")
    outside = [key for key in data if key != "serve"]
    if outside:
        raise ConfigError("config", str(path),
                          f"has settings both at the top level ({', '.join(outside)}) and in "
                          "a [serve] table, and the top-level ones would be ignored: move them "
                          "into [serve] (or drop the [serve] line)")
    return dict(section)


def _unknown(key: str, value: Any, where: str, names: list[str]) -> ConfigError:
    """An unknown key, with the setting (or table) it most likely meant."""
    import difflib  # an error path: not in an idle server's memory

    if isinstance(value, dict):
        if difflib.get_close_matches(key, ["serve"], n=1, cutoff=0.6):
            hint = "did you mean [serve]?"
        else:
            hint = "the only table is [serve]"
        return ConfigError(f"[{key}]", "(table)", f"unknown table in {where}; {hint}")
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"did you mean {match[0]!r}?" if match else "known: " + ", ".join(names)
    return ConfigError(key, value, f"unknown setting in {where}; {hint}")


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServeConfig:
    """Merge defaults < TOML < environment < overrides and validate the result."""
    env = os.environ if env is None else env
    names = setting_names()
    merged: dict[str, Any] = {}
    errors: list[ConfigError] = []

    def take(key: str, raw: Any, source: str) -> None:
        try:
            merged[key] = (_coerce(key, raw, source), source)
        except ConfigError as exc:
            errors.append(exc)
            merged.pop(key, None)

    if config_file is not None:
        for key, value in read_toml(Path(config_file)).items():
            if key not in names:
                errors.append(_unknown(key, value, str(config_file), names))
                continue
            take(key, value, str(config_file))
    for key in names:
        if env_name(key) in env:
            take(key, env[env_name(key)], env_name(key))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            errors.append(ConfigError(key, value, "unknown setting"))
            continue
        take(key, value, "flag")

    checks = {f.name: f.metadata["check"] for f in fields(ServeConfig)}
    for key, (value, source) in merged.items():
        problem = checks[key](value)
        if problem:
            errors.append(ConfigError(key, value, problem, source))
    if errors:
        first = errors[0]
        first.all = errors
        raise first
    return ServeConfig(**{k: v for k, (v, _) in merged.items()})


def to_toml(config: ServeConfig, show_secrets: bool = False) -> str:
    """Render the merged config as TOML that `--config` reads back unchanged.

    A secret that is set is left out (as a comment saying so) unless asked for, so
    `--print-config` output can be pasted into a ticket without leaking it.
    """
    lines = ["[serve]"]
    section = ""
    for spec in specs_by_section():
        if spec.section != section:  # a comment, so the keys stay flat under [serve]
            section = spec.section
            lines += ["", f"# == {section}: {SECTIONS[section]} =="]
        value = getattr(config, spec.name)
        if "secret" in spec.name and value and not show_secrets:
            lines.append(f"# {spec.help}")
            lines.append(f"# {spec.name} = (set; not shown)")
            continue
        if spec.name == "cluster" and not show_secrets:
            value = redacted(value)
        if isinstance(value, str):
            rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, bool):
            rendered = "true" if value else "false"
        else:
            rendered = repr(value)
        lines.append(f"# {spec.help}")
        lines.append(f"{spec.name} = {rendered}")
    return "\n".join(lines) + "\n"
