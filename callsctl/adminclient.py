"""The one client of `callsctl serve`'s admin API: where it is, its key, its answers.

`calls`, `record`, `top` and `loadtest` all talk to the server through this
module, so they find the server and key the same way and fail the same way.

Where the server and key come from (`resolve`), first match wins:
  server: --server/--host / CALLSCTL_SERVER / `server` in the client config /
          http://127.0.0.1:8045
  key:    --admin-key / CALLSCTL_ADMIN_KEY / --admin-key-file / CALLSCTL_ADMIN_KEY_FILE /
          <--data-dir>/admin_key (top) / `admin_key` or `admin_key_file` in the client
          config / <the local server's data dir>/admin_key (callsctl.localserver)
The client config is TOML at --client-config, CALLSCTL_CLIENT_CONFIG or
$XDG_CONFIG_HOME/callsctl/client.toml, keys at the top level or under [client]:
server, admin_key, admin_key_file, ca_cert, insecure. The last fallback means
that on the server host, as the user running `callsctl serve` with its default
data dir, no configuration is needed at all.

Every failure is an AdminError whose `message` is one line an operator can act
on (the CLI prints it as the error line, `top` shows it in its banner); the
subclass says what kind: the server cannot be reached (AdminUnreachable), it
refuses the key (AdminAuthError), it answered with an error (AdminApiError),
or the connection settings themselves are wrong (AdminConfigError).

The endpoints are written once (_Endpoints) over the paths the server routes
(callsctl_sfu.api.paths); AdminClient sends them with httpx's blocking client,
AsyncAdminClient with its asyncio one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import ssl
import tomllib
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from callsctl_sfu.api import paths
from callsctl_sfu.errors import CallsctlError

if TYPE_CHECKING:  # httpx (~4 MB) is imported where a request is made: every command
    import httpx  # module, `callsctl serve`'s process too, imports this one

DEFAULT_SERVER = "http://127.0.0.1:8045"
DEFAULT_TIMEOUT_S = 10.0
CLIENT_KEYS = {"server", "admin_key", "admin_key_file", "ca_cert", "insecure"}
ADMIN_KEY_FILE = "admin_key"
SERVER_FLAGS = "--server / CALLSCTL_SERVER"
KEY_FLAGS = "--admin-key-file or CALLSCTL_ADMIN_KEY"


# -- errors ------------------------------------------------------------------------------------


class AdminError(CallsctlError):
    """Base of everything this client raises; `message` is one line for a human."""

    code = "admin_error"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class AdminUnreachable(AdminError):
    """No HTTP answer at all: refused, timed out, reset, TLS failure."""

    code = "unreachable"


class AdminAuthError(AdminError):
    """401/403: the key is missing or wrong. Retrying will not help until it changes."""

    code = "admin_unauthorized"


class AdminApiError(AdminError):
    """The server answered with an error status other than 401/403, or not with JSON."""

    code = "admin_api_error"


class AdminConfigError(AdminError):
    """The connection settings are unusable (no key, bad client config); `usage`: exit 2."""

    code = "admin_config"

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn an AdminError into the CLI's one error line (exit 2 for usage, else 1)."""
    from callsctl.errors import EXIT_FAIL, EXIT_USAGE, fail

    try:
        yield
    except AdminError as exc:
        usage = isinstance(exc, AdminConfigError) and exc.usage
        fail(exc.message, EXIT_USAGE if usage else EXIT_FAIL)


# -- where to connect --------------------------------------------------------------------------


@dataclass
class Connection:
    """A resolved server: base URL, key (and where it came from, for error messages)."""

    server: str
    key: str | None
    verify: bool | ssl.SSLContext = True
    timeout: float = DEFAULT_TIMEOUT_S
    key_source: str | None = None  # e.g. "/var/lib/callsctl/admin_key (--data-dir)"
    server_flags: str = SERVER_FLAGS  # how this command names its server option
    key_flags: str = KEY_FLAGS  # how this command takes a key


def normalize_server(value: str, flag: str = "--server") -> str:
    """'host:port' → 'http://host:port'; only http(s) makes sense for the admin API."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = f"http://{value}"
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("http", "https") or not rest:
        raise AdminConfigError(f"{flag} {value!r}: expected an http:// or https:// URL such "
                               f"as {DEFAULT_SERVER}", usage=True)
    return value


def client_config(explicit: str | None) -> dict[str, Any]:
    """The client config's settings ({} when the default file does not exist)."""
    if explicit:
        path = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        path = Path(base) / "callsctl" / "client.toml"
        if not path.exists():
            return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdminConfigError(f"client config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminConfigError(f"cannot read client config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AdminConfigError(f"client config {path} is not valid TOML ({exc})") from None
    section = data.get("client", data)
    unknown = set(section) - CLIENT_KEYS - {"client"}
    if unknown:
        raise AdminConfigError(f"client config {path}: unknown key(s) "
                               f"{', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(CLIENT_KEYS))}")
    return section


def read_key(path: str, what: str) -> str:
    """An admin key file's content; `what` says which setting named the file."""
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AdminConfigError(f"cannot read the admin key from {path} ({what}): "
                               f"{exc.strerror or exc}") from None
    if not key:
        raise AdminConfigError(f"admin key file {path} ({what}) is empty")
    return key


def resolve(server: str | None = None, admin_key: str | None = None,
            admin_key_file: str | None = None, ca_cert: str | None = None,
            insecure: bool = False, config_file: str | None = None,
            timeout: float = DEFAULT_TIMEOUT_S, data_dir: str | None = None,
            server_flag: str = "--server") -> Connection:
    """Server, key and TLS trust from flags, env, client config and data dir (module doc)."""
    config = client_config(config_file)
    server_flags = f"{server_flag} / CALLSCTL_SERVER"
    url = normalize_server(server or str(config.get("server") or DEFAULT_SERVER),
                           server_flag if server else "the client config's server")
    key_flags = KEY_FLAGS + (" (or --data-dir of that server)" if server_flag == "--host"
                             else "")
    if admin_key:
        key, source = admin_key.strip(), "--admin-key / CALLSCTL_ADMIN_KEY"
    elif admin_key_file:
        key, source = read_key(admin_key_file, "--admin-key-file"), admin_key_file
    elif data_dir:
        path = Path(data_dir).expanduser() / ADMIN_KEY_FILE
        if not path.is_file():
            raise AdminConfigError(f"no admin key in --data-dir {data_dir} (no {path}): point "
                                   "it at the data dir of callsctl serve, or pass "
                                   "--admin-key-file / CALLSCTL_ADMIN_KEY")
        key, source = read_key(str(path), "--data-dir"), f"{path} (--data-dir)"
    elif config.get("admin_key"):
        key, source = str(config["admin_key"]).strip(), "the client config's admin_key"
    elif config.get("admin_key_file"):
        file = str(config["admin_key_file"])
        key, source = read_key(file, "client config admin_key_file"), file
    else:
        from callsctl import localserver

        fallback = localserver.data_dir(None) / ADMIN_KEY_FILE
        if not fallback.exists():
            raise AdminConfigError(
                "no admin key: pass --admin-key-file <server data dir>/admin_key, set "
                "CALLSCTL_ADMIN_KEY, or put admin_key_file in ~/.config/callsctl/client.toml")
        key = read_key(str(fallback), "the default data dir")
        source = f"{fallback} (the default data dir)"
    verify: bool | ssl.SSLContext = True
    if insecure or config.get("insecure") is True:
        verify = False
    elif ca_cert or config.get("ca_cert"):
        path = Path(str(ca_cert or config.get("ca_cert"))).expanduser()
        try:
            verify = ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise AdminConfigError(f"cannot use --ca-cert {path}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
    return Connection(url, key, verify, timeout, source, server_flags, key_flags)


# -- answers -----------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The innermost cause, which is what says 'connection refused' or 'no such host'."""
    cause: BaseException = exc
    for _ in range(10):  # exception chains are short; never loop on a cycle
        if isinstance(cause, ConnectionRefusedError) or \
                getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        nxt = cause.__cause__ or cause.__context__
        if nxt is None:
            break
        cause = nxt
    text = str(cause) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _error_text(response: httpx.Response) -> str:
    """The `error` sentence of the API's JSON error body (/readyz: its `reason`), else ''."""
    try:
        data = response.json()
    except ValueError:
        return ""
    if isinstance(data, dict):
        said = data.get("error") or data.get("reason")
        if said:
            return str(said).splitlines()[0][:300]
    return ""


class _Transport:
    """What both clients share: the connection, and turning failures into AdminError."""

    def __init__(self, base_url: str | Connection, admin_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, verify: bool | str | ssl.SSLContext = True
                 ) -> None:
        if isinstance(base_url, Connection):
            self.conn = base_url
        else:
            self.conn = Connection(base_url.rstrip("/"), admin_key, verify,  # type: ignore[arg-type]
                                   timeout)

    @property
    def base_url(self) -> str:
        return self.conn.server

    @property
    def timeout(self) -> float:
        return self.conn.timeout

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.conn.key:
            headers["Authorization"] = f"Bearer {self.conn.key}"
        return headers

    def _unreachable(self, exc: httpx.HTTPError) -> AdminUnreachable:
        import httpx

        server = self.conn.server
        if isinstance(exc, httpx.TimeoutException):
            return AdminUnreachable(f"callsctl serve at {server} did not answer within "
                                    f"{self.conn.timeout:g} s")
        if isinstance(exc, httpx.ConnectError) and "certificate" in str(exc).lower():
            return AdminUnreachable(f"the TLS certificate of {server} is not trusted: pass "
                                    "--ca-cert <server data dir>/tls/self-signed.crt, or "
                                    "--insecure")
        return AdminUnreachable(f"cannot reach callsctl serve at {server}: {_reason(exc)}; is "
                                f"it running there, and is {self.conn.server_flags} right?")

    def _check(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        """The response if it is a success, else the AdminError that explains it."""
        status, server = response.status_code, self.conn.server
        if status in (401, 403):
            source = f" from {self.conn.key_source}" if self.conn.key_source else ""
            said = _error_text(response)
            raise AdminAuthError(
                f"{server} refused the admin key{source} (HTTP {status}"
                f"{': ' + said if said else ''}); use the key in that server's <data dir>/"
                f"admin_key, via {self.conn.key_flags}", status)
        if status < 400:
            return response
        said = _error_text(response)
        if said and said != response.reason_phrase:  # aiohttp's bare "Not Found" says less
            raise AdminApiError(said, status)  # the API's own sentence: "no live call 'x'"
        if status == 404:
            raise AdminApiError(f"{server} has no {path} (HTTP 404): is it a callsctl server "
                                "as new as this callsctl?", status)
        if status >= 500:
            raise AdminApiError(f"{server} failed on {method} {path} (HTTP {status}); its log "
                                "says why", status)
        raise AdminApiError(f"{server} answered {method} {path} with HTTP {status}", status)

    def _decode(self, method: str, path: str, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AdminApiError(f"{self.conn.server} did not answer {method} {path} with a "
                                "JSON object: is this a callsctl server?", response.status_code)
        return data


J = TypeVar("J")  # what a JSON endpoint returns: a dict, or an awaitable of one
T = TypeVar("T")  # what a text endpoint returns: a str, or an awaitable of one


class _Endpoints(Generic[J, T]):
    """Every endpoint the CLI uses, once; the subclass decides blocking or async."""

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None) -> J:
        raise NotImplementedError

    def _text(self, path: str) -> T:
        raise NotImplementedError

    # -- calls -------------------------------------------------------------------------
    def list_calls(self) -> J:
        """GET /api/v1/calls: {"calls": [...]} (a fleet node lists every node's calls)."""
        return self._json("GET", paths.CALLS)

    def show_call(self, call_id: str) -> J:
        return self._json("GET", paths.fill(paths.CALL, call_id=call_id))

    def end_call(self, call_id: str, reason: str | None = None) -> J:
        return self._json("DELETE", paths.fill(paths.CALL, call_id=call_id),
                          {"reason": reason} if reason is not None else None)

    def make_host(self, call_id: str, session_id: str) -> J:
        return self._json("POST", paths.fill(paths.CALL_HOST, call_id=call_id),
                          {"session_id": session_id})

    def mute_others(self, call_id: str, session_id: str) -> J:
        return self._json("POST", paths.fill(paths.CALL_MUTE_OTHERS, call_id=call_id),
                          {"session_id": session_id})

    def session_action(self, call_id: str, session_id: str, action: str) -> J:
        """POST .../sessions/{id}/<action>: mute, stop-screen or lower-hand."""
        return self._json("POST", paths.fill(paths.SESSION_ACTIONS[action], call_id=call_id,
                                             session_id=session_id))

    def remove_session(self, call_id: str, session_id: str) -> J:
        return self._json("DELETE", paths.fill(paths.SESSION, call_id=call_id,
                                               session_id=session_id))

    def control(self, kind: str, call_id: str, session_id: str | None) -> J:
        """A host control by top's name for it (callsctl.top.model.ActionKind)."""
        session = session_id or ""
        if kind in ("mute", "lower_hand", "stop_screen"):
            return self.session_action(call_id, session, kind.replace("_", "-"))
        if kind == "remove":
            return self.remove_session(call_id, session)
        if kind == "mute_others":
            return self.mute_others(call_id, session)
        if kind == "make_host":
            return self.make_host(call_id, session)
        if kind == "end_call":
            return self.end_call(call_id)
        raise ValueError(f"unknown host control {kind!r}")

    # -- settings and history -----------------------------------------------------------
    def call_settings(self, call_id: str) -> J:
        return self._json("GET", paths.fill(paths.CALL_SETTINGS, call_id=call_id))

    def put_call_settings(self, call_id: str, body: dict[str, Any]) -> J:
        return self._json("PUT", paths.fill(paths.CALL_SETTINGS, call_id=call_id), body)

    def history(self, limit: int, call_id: str | None = None) -> J:
        return self._json("GET", paths.HISTORY, params={
            "limit": limit, **({"call": call_id} if call_id else {})})

    # -- jobs (recordings, transcriptions, captions) -------------------------------------
    def list_jobs(self, limit: int, call_id: str | None = None) -> J:
        return self._json("GET", paths.JOBS, params={
            "limit": limit, **({"call": call_id} if call_id else {})})

    def create_job(self, body: dict[str, Any]) -> J:
        return self._json("POST", paths.JOBS, body)

    def job(self, job_id: str) -> J:
        return self._json("GET", paths.fill(paths.JOB, job_id=job_id))

    def stop_job(self, job_id: str) -> J:
        return self._json("POST", paths.fill(paths.JOB_STOP, job_id=job_id))

    def delete_job(self, job_id: str) -> J:
        return self._json("DELETE", paths.fill(paths.JOB, job_id=job_id))

    def job_logs(self, job_id: str) -> T:
        return self._text(paths.fill(paths.JOB_LOGS, job_id=job_id))

    def job_file(self, job_id: str, name: str) -> T:
        return self._text(paths.fill(paths.JOB_FILE, job_id=job_id, name=name))

    # -- server state ------------------------------------------------------------------
    def fleet_nodes(self) -> J:
        return self._json("GET", paths.FLEET_NODES)

    def system(self) -> J:
        return self._json("GET", paths.SYSTEM)

    def version(self) -> J:
        return self._json("GET", paths.VERSION)

    def stats(self) -> J:
        return self._json("GET", paths.STATS)

    def readyz(self) -> J:
        """GET /readyz (no key needed): 503 with the reason while the server is not ready."""
        return self._json("GET", paths.READYZ)

    def metrics_text(self) -> T:
        return self._text(paths.METRICS)


class AdminClient(_Transport, _Endpoints[dict[str, Any], str]):
    """The blocking client (`calls`, `record`): one connection pool per `with` block."""

    def __init__(self, base_url: str | Connection, admin_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, verify: bool | str | ssl.SSLContext = True
                 ) -> None:
        super().__init__(base_url, admin_key, timeout=timeout, verify=verify)
        self._http: httpx.Client | None = None

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    @property
    def http(self) -> httpx.Client:
        import httpx

        if self._http is None:
            self._http = httpx.Client(base_url=self.conn.server, timeout=self.conn.timeout,
                                      verify=self.conn.verify, headers=self._headers())
        return self._http

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None) -> httpx.Response:
        import httpx

        try:
            response = self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._check(method, path, response)

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._decode(method, path, self.request(method, path, body, params))

    def _text(self, path: str) -> str:
        return self.request("GET", path).text


class AsyncAdminClient(_Transport, _Endpoints[Awaitable[dict[str, Any]], Awaitable[str]]):
    """The asyncio client (`top`, `loadtest`); close it with `aclose`."""

    def __init__(self, base_url: str | Connection, admin_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, verify: bool | str | ssl.SSLContext = True
                 ) -> None:
        super().__init__(base_url, admin_key, timeout=timeout, verify=verify)
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.conn.server, timeout=self.conn.timeout,
                                           verify=self.conn.verify, headers=self._headers())
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      params: dict[str, Any] | None = None) -> httpx.Response:
        import httpx

        try:
            response = await self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._check(method, path, response)

    async def _json(self, method: str, path: str,
                    body: dict[str, Any] | None = None,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._decode(method, path, await self.request(method, path, body, params))

    async def _text(self, path: str) -> str:
        return (await self.request("GET", path)).text

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """GET /api/v1/events as parsed SSE messages; ends when the stream ends."""
        import httpx

        timeout = httpx.Timeout(self.conn.timeout, read=None)
        try:
            async with self.http.stream("GET", paths.EVENTS, timeout=timeout,
                                        headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._check("GET", paths.EVENTS, response)
                parser = SseParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None


class SseParser:
    """Server-Sent Events, line by line: `event:` and `data:` fields, blank line ends one."""

    def __init__(self) -> None:
        self.kind = ""
        self.data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        line = line.rstrip("\r")
        if not line:
            if not self.data:
                self.kind = ""
                return None
            text = "\n".join(self.data)
            kind, self.kind, self.data = self.kind, "", []
            try:
                payload = json.loads(text)
            except ValueError:
                payload = {"data": text}
            if not isinstance(payload, dict):
                payload = {"data": payload}
            payload.setdefault("type", kind or "message")
            return payload
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        return None
