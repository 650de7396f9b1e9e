"""Kernel UDP buffer settings an SFU needs: read, plan, apply, persist, revert.

Every participant's media arrives on ONE UDP socket (port 8443). When that
socket's receive buffer fills faster than the event loop drains it, the kernel
drops packets silently (counted as `RcvbufErrors`), and the call stutters. A
process can only ask for a buffer up to `net.core.rmem_max` / `wmem_max`, and
the distribution defaults (a few hundred KiB to a few MiB) are far below what a
busy SFU needs, which is why the deployment guide recommends 16 MiB.

This module is the engine side of `callsctl tune` and is shared with the
server (`kernel_caps_udp_buffer`, `udp_buffer_warning`). It never imports the
CLI. Every filesystem root is a parameter (sysctl root, proc root, sysctl.d
directory, data directory) so tests run against a temporary tree and the real
`/proc/sys` is only touched when a caller asks for it.

Safety rules, enforced here rather than in the CLI so any caller gets them:
- values already higher than recommended are never lowered;
- applying is all or none: every file is opened for writing before anything
  is written, and a failure part-way rolls back what was already written;
- the values found before the first apply are saved in the data directory so
  a revert restores exactly those, and only where nobody changed them since.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import socket
import struct
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callsctl_sfu import __version__
from callsctl_sfu.errors import CallsctlError

# The media socket's own buffer check is udpbuffer.py, which a serving process imports
# without this module's sysctl machinery; `callsctl tune` and the tests name it from here.
from callsctl_sfu.udpbuffer import (  # noqa: F401 (re-exported)
    DEFAULT_UDP_BUFFER_SIZE,
    MIB,
    effective_buffer,
    format_bytes,
    kernel_caps_udp_buffer,
    probe_udp_buffer,
    udp_buffer_warning,
)

DEFAULT_SYSCTL_ROOT = Path("/proc/sys")
DEFAULT_PROC_ROOT = Path("/proc")
DEFAULT_SYSCTL_D = Path("/etc/sysctl.d")
PERSIST_FILE_NAME = "99-callsctl.conf"
STATE_FILE_NAME = "tune-previous.json"
STATE_VERSION = 1

NOFILE_RECOMMENDED_MIN = 4096
"""Below this many open files a busy server runs out of descriptors: every
participant holds a signaling WebSocket, plus an ICE-TCP connection when UDP is
blocked, on top of the database, log and listening sockets."""


@dataclass(frozen=True)
class Setting:
    """One kernel setting `callsctl tune` manages, with the reason an operator reads."""

    name: str
    recommended: int
    reason: str

    @property
    def relpath(self) -> str:
        """Path below the sysctl root (`net.core.rmem_max` -> `net/core/rmem_max`)."""
        return self.name.replace(".", "/")


# The one list of settings. Values and wording follow the deployment guide's
# "System tunings" section; the reasons say what goes wrong without them.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "net.core.rmem_max",
        16 * MIB,
        "largest receive buffer a socket may ask for; the SFU receives every "
        "participant's media on one UDP socket, and a small buffer drops packets "
        "in bursts (RcvbufErrors)",
    ),
    Setting(
        "net.core.wmem_max",
        16 * MIB,
        "largest send buffer a socket may ask for; the SFU sends each packet once "
        "per receiver on the same socket, so sends fan out and queue up",
    ),
    Setting(
        "net.core.optmem_max",
        16 * MIB,
        "per-socket memory for ancillary data and control messages, which grows "
        "with the number of peers served over one socket",
    ),
)


def setting_by_name(name: str) -> Setting:
    for setting in SETTINGS:
        if setting.name == name:
            return setting
    raise KeyError(name)


class TuneError(CallsctlError):
    """A tuning step failed; the message is one line an operator can act on."""
    code = "tune_failed"

    def __init__(self, message: str, partial: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # True only when a rollback failed and the kernel is left part-changed.
        self.partial = partial


# --------------------------------------------------------------------------- reading


def sysctl_path(sysctl_root: Path, name: str) -> Path:
    return Path(sysctl_root) / name.replace(".", "/")


def read_sysctl(sysctl_root: Path, name: str) -> int | None:
    """Current integer value of `name`, or None when the kernel does not expose it here.

    A missing file is normal in a container with its own network namespace:
    `net.core.rmem_max` and friends belong to the host and are not visible.
    """
    path = sysctl_path(sysctl_root, name)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        raise TuneError(f"{path} holds {text!r}, not a whole number") from None


@dataclass(frozen=True)
class SettingStatus:
    """A setting with its value now; `status` is what the table shows."""

    setting: Setting
    current: int | None

    @property
    def status(self) -> str:
        if self.current is None:
            return "MISSING"
        return "OK" if self.current >= self.setting.recommended else "LOW"

    @property
    def target(self) -> int:
        """The value to run with: the recommendation, or the current one if higher."""
        if self.current is None:
            return self.setting.recommended
        return max(self.current, self.setting.recommended)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.setting.name,
            "current": self.current,
            "recommended": self.setting.recommended,
            "status": self.status,
            "reason": self.setting.reason,
        }


def read_settings(
    sysctl_root: Path = DEFAULT_SYSCTL_ROOT, settings: Iterable[Setting] = SETTINGS
) -> list[SettingStatus]:
    return [SettingStatus(s, read_sysctl(sysctl_root, s.name)) for s in settings]


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Change:
    """One value to write: `name` goes from `current` to `target`."""

    name: str
    current: int
    target: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "from": self.current, "to": self.target}


def plan_apply(statuses: Iterable[SettingStatus]) -> list[Change]:
    """Changes that raise LOW settings to the recommendation; never lowers anything.

    A MISSING setting cannot be planned; `preflight_write` reports it when the
    caller actually tries to apply.
    """
    changes = []
    for st in statuses:
        if st.current is not None and st.current < st.setting.recommended:
            changes.append(Change(st.setting.name, st.current, st.setting.recommended))
    return changes


def missing_settings(statuses: Iterable[SettingStatus]) -> list[str]:
    return [st.setting.name for st in statuses if st.current is None]


# --------------------------------------------------------------------------- writing


def _explain_write_error(path: Path, name: str, exc: OSError) -> str:
    """Turn an errno from /proc/sys into the privilege or place the operator needs."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM) and os.geteuid() == 0:
        return (
            f"cannot write {name} ({path}): permission denied although running as root: "
            "this process is not in the host's network namespace (a container?) or lacks "
            f"CAP_NET_ADMIN; {name} belongs to the host: set it there (run `callsctl tune "
            "--apply` on the host)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"cannot write {name} ({path}): permission denied; changing kernel settings "
            "needs root (uid 0, or CAP_NET_ADMIN in the host network namespace): "
            "run it with sudo"
        )
    if code == errno.EROFS:
        return (
            f"cannot write {name} ({path}): read-only file system, as in a container; "
            f"{name} is not per-container, so set it on the host (run `callsctl tune "
            "--apply` there) or run the container privileged"
        )
    if code == errno.ENOENT:
        return missing_message(path, name)
    if code == errno.EINVAL:
        return f"the kernel rejected the value for {name} ({path}): invalid argument"
    return f"cannot write {name} ({path}): {exc.strerror or exc}"


def missing_message(path: Path, name: str) -> str:
    return (
        f"{name} does not exist here ({path} missing): in a container with its own "
        "network namespace it belongs to the host; set it on the host (run "
        "`callsctl tune --apply` there)"
    )


def preflight_write(sysctl_root: Path, names: Iterable[str]) -> None:
    """Prove every file can be written before writing any of them.

    Opening a /proc/sys file for writing runs the kernel's permission check
    without changing the value, so a non-root user, a read-only /proc/sys or a
    missing setting is reported before anything is touched.
    """
    for name in names:
        path = sysctl_path(sysctl_root, name)
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise TuneError(_explain_write_error(path, name, exc)) from None
        os.close(fd)


def _write_int(path: Path, value: int) -> None:
    """Write one integer to a sysctl file (a seam tests replace to simulate failures)."""
    with open(path, "w", encoding="ascii") as handle:
        handle.write(f"{value}\n")


def _write_verified(sysctl_root: Path, name: str, value: int) -> None:
    path = sysctl_path(sysctl_root, name)
    try:
        _write_int(path, value)
    except OSError as exc:
        raise TuneError(_explain_write_error(path, name, exc)) from None
    now = read_sysctl(sysctl_root, name)
    if now != value:
        raise TuneError(
            f"the kernel did not take {name}={value} (it reads {now}); a sandboxed "
            "kernel or a security policy may be ignoring writes to /proc/sys"
        )


def write_all_or_none(sysctl_root: Path, changes: list[Change]) -> None:
    """Write every change, or, if one fails, put back the ones already written.

    If even the rollback fails, the error names what is left changed, so the
    operator is never left guessing at a half-applied state.
    """
    preflight_write(sysctl_root, [c.name for c in changes])
    done: list[Change] = []
    for change in changes:
        try:
            _write_verified(sysctl_root, change.name, change.target)
        except TuneError as exc:
            stuck = _rollback(sysctl_root, [*done, change])
            if stuck:
                raise TuneError(
                    f"{exc.message}; rollback FAILED, still changed: {', '.join(stuck)}",
                    partial=True,
                ) from None
            raise TuneError(f"{exc.message}; nothing was changed") from None
        done.append(change)


def _rollback(sysctl_root: Path, changes: list[Change]) -> list[str]:
    """Put back `current` for each change (latest first); names that could not be restored."""
    stuck = []
    for change in reversed(changes):
        try:
            if read_sysctl(sysctl_root, change.name) == change.current:
                continue
            _write_int(sysctl_path(sysctl_root, change.name), change.current)
            if read_sysctl(sysctl_root, change.name) != change.current:
                stuck.append(change.name)
        except (OSError, TuneError):
            stuck.append(change.name)
    return stuck


# --------------------------------------------------------------------------- saved state


def state_path(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / STATE_FILE_NAME


def load_state(data_dir: Path) -> dict[str, dict[str, int]] | None:
    """The saved `{name: {"previous": v, "applied": v}}`, or None when nothing was applied."""
    path = state_path(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TuneError(f"cannot read saved values {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise TuneError(f"saved values {path} are not valid JSON; fix or delete it") from None
    settings = raw.get("settings") if isinstance(raw, dict) else None
    if not isinstance(settings, dict) or not all(
        isinstance(v, dict)
        and isinstance(v.get("previous"), int)
        and isinstance(v.get("applied"), int)
        for v in settings.values()
    ):
        raise TuneError(f"saved values {path} are not in the expected format; fix or delete it")
    return {k: {"previous": v["previous"], "applied": v["applied"]} for k, v in settings.items()}


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ensure_dir(directory: Path) -> Path:
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise TuneError(
            f"cannot create data dir {directory}: {exc.strerror or exc}; choose a writable "
            "--data-dir"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise TuneError(
            f"data dir {directory} is not writable (the previous values are saved there); "
            "choose a writable --data-dir"
        )
    return directory


def _save_state(data_dir: Path, settings: Mapping[str, Mapping[str, int]]) -> None:
    path = state_path(_ensure_dir(data_dir))
    body = {
        "version": STATE_VERSION,
        "written_by": f"callsctl tune --apply ({__version__})",
        "why": "values found before callsctl raised them; `callsctl tune --revert` restores them",
        "settings": {k: dict(v) for k, v in settings.items()},
    }
    try:
        _atomic_write(path, json.dumps(body, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise TuneError(f"cannot save previous values to {path}: {exc.strerror or exc}") from None


def _restore_state_file(data_dir: Path, previous_text: str | None) -> None:
    path = state_path(data_dir)
    try:
        if previous_text is None:
            path.unlink(missing_ok=True)
        else:
            _atomic_write(path, previous_text)
    except OSError:
        pass  # the values themselves were rolled back; a stale record is only cosmetic


def _read_text_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TuneError(f"cannot read {path}: {exc.strerror or exc}") from None


def merged_state(
    existing: Mapping[str, Mapping[str, int]] | None, changes: Iterable[Change]
) -> dict[str, dict[str, int]]:
    """Record `changes`, keeping the earliest `previous` of a setting already recorded.

    Applying twice must not make the second apply's "previous" (already our
    value) the one a revert goes back to.
    """
    state = {k: dict(v) for k, v in (existing or {}).items()}
    for change in changes:
        entry = state.get(change.name)
        previous = entry["previous"] if entry else change.current
        state[change.name] = {"previous": previous, "applied": change.target}
    return state


# --------------------------------------------------------------------------- persist file


def persist_path(sysctl_d: Path = DEFAULT_SYSCTL_D) -> Path:
    return Path(sysctl_d) / PERSIST_FILE_NAME


def persist_values(statuses: Iterable[SettingStatus]) -> dict[str, int]:
    """Values for the boot-time file: the recommendation, or today's value if higher.

    Writing today's higher value keeps a reboot from lowering something an
    operator had raised by hand.
    """
    return {st.setting.name: st.target for st in statuses}


def render_persist(values: Mapping[str, int]) -> str:
    """The sysctl.d file: what wrote it, why, and each setting with its reason."""
    lines = [
        f"# Written by `callsctl tune --persist` (callsctl {__version__}).",
        "# Why: a self-hosted calls SFU receives and sends every participant's media on one",
        "# UDP socket; with the kernel's default buffer limits a busy server drops packets",
        "# (see `callsctl tune`). These raise the limits at boot; nothing here lowers a value.",
        "# Remove with `callsctl tune --revert` (or delete this file).",
    ]
    for name, value in values.items():
        try:
            reason = setting_by_name(name).reason
        except KeyError:
            reason = ""
        lines.append("")
        lines.extend(f"# {part}" for part in textwrap.wrap(reason, 86))
        lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


_SYSCTL_LINE = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-/]+)\s*=\s*(\S+)\s*$")


def parse_sysctl_conf(text: str) -> dict[str, str]:
    """Settings in a sysctl.d file (`name = value`, comments with # or ;)."""
    values = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        match = _SYSCTL_LINE.match(line)
        if match:
            values[match.group(1).replace("/", ".")] = match.group(2)
    return values


def read_persist(sysctl_d: Path = DEFAULT_SYSCTL_D) -> str | None:
    return _read_text_or_none(persist_path(sysctl_d))


def preflight_persist(sysctl_d: Path) -> None:
    """Check the sysctl.d directory can take our file before anything is changed."""
    directory = Path(sysctl_d)
    if not directory.is_dir():
        raise TuneError(
            f"{directory} does not exist, so settings cannot be made to survive reboot here "
            "(no systemd-sysctl/procps?)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        if _is_read_only(directory):
            raise TuneError(f"cannot write {persist_path(directory)}: read-only file system")
        raise TuneError(
            f"cannot write {persist_path(directory)}: permission denied; making settings "
            "survive reboot needs root: run it with sudo"
        )


def _is_read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_persist(sysctl_d: Path, text: str) -> Path:
    preflight_persist(sysctl_d)
    path = persist_path(sysctl_d)
    try:
        _atomic_write(path, text)
    except OSError as exc:
        raise TuneError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def remove_persist(sysctl_d: Path) -> bool:
    """Delete our sysctl.d file; False when there was none."""
    path = persist_path(sysctl_d)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise TuneError(
                f"cannot remove {path}: permission denied; needs root: run it with sudo"
            ) from None
        raise TuneError(f"cannot remove {path}: {exc.strerror or exc}") from None
    return True


# --------------------------------------------------------------------------- operations


@dataclass
class ApplyResult:
    changes: list[Change]
    state_file: Path | None = None
    persist_file: Path | None = None
    persist_written: bool = False


def apply(
    changes: list[Change],
    data_dir: Path,
    sysctl_root: Path = DEFAULT_SYSCTL_ROOT,
    persist_text: str | None = None,
    sysctl_d: Path = DEFAULT_SYSCTL_D,
) -> ApplyResult:
    """Write `changes` (and the persist file if `persist_text`), all or none.

    Order: check every target first (sysctl files, data dir, sysctl.d); save the
    previous values (so a crash mid-way can still be reverted); write values;
    write the persist file. A failure at any step undoes the earlier ones.
    """
    result = ApplyResult(changes=list(changes))
    old_state_text: str | None = None
    if changes:
        preflight_write(sysctl_root, [c.name for c in changes])
    if persist_text is not None:
        preflight_persist(sysctl_d)
    if changes:
        _ensure_dir(data_dir)
        old_state_text = _read_text_or_none(state_path(data_dir))
        _save_state(data_dir, merged_state(load_state(data_dir), changes))
        result.state_file = state_path(data_dir)
        try:
            write_all_or_none(sysctl_root, changes)
        except TuneError as exc:
            if not exc.partial:
                _restore_state_file(data_dir, old_state_text)
            raise
    if persist_text is not None:
        path = persist_path(sysctl_d)
        old_persist = read_persist(sysctl_d)
        if old_persist != persist_text:
            try:
                write_persist(sysctl_d, persist_text)
            except TuneError as exc:
                if changes:
                    stuck = _rollback(sysctl_root, changes)
                    if stuck:
                        raise TuneError(
                            f"{exc.message}; rollback FAILED, still changed: {', '.join(stuck)}",
                            partial=True,
                        ) from None
                    _restore_state_file(data_dir, old_state_text)
                raise TuneError(f"{exc.message}; nothing was changed") from None
            result.persist_written = True
        result.persist_file = path
    return result


@dataclass
class RevertPlan:
    """What a revert would do: restore these, leave those (changed by someone else)."""

    changes: list[Change] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    has_state: bool = False
    persist_exists: bool = False

    @property
    def empty(self) -> bool:
        return not self.changes and not self.persist_exists and not self.has_state


def plan_revert(
    data_dir: Path, sysctl_root: Path = DEFAULT_SYSCTL_ROOT, sysctl_d: Path = DEFAULT_SYSCTL_D
) -> RevertPlan:
    """Restore saved values only where the kernel still holds what callsctl wrote.

    If something else changed a setting after our apply, putting back the old
    value would silently undo that change, so it is left alone and reported.
    """
    state = load_state(data_dir)
    plan = RevertPlan(has_state=state is not None,
                      persist_exists=persist_path(sysctl_d).exists())
    for name, entry in (state or {}).items():
        current = read_sysctl(sysctl_root, name)
        if current == entry["previous"]:
            plan.unchanged.append(name)
        elif current == entry["applied"]:
            plan.changes.append(Change(name, current, entry["previous"]))
        else:
            plan.skipped.append({"name": name, "current": current, **entry})
    return plan


def revert(
    plan: RevertPlan,
    data_dir: Path,
    sysctl_root: Path = DEFAULT_SYSCTL_ROOT,
    sysctl_d: Path = DEFAULT_SYSCTL_D,
) -> None:
    """Carry out `plan`: restore values (all or none), remove the persist file and the record."""
    if plan.changes:
        preflight_write(sysctl_root, [c.name for c in plan.changes])
    if plan.persist_exists:
        preflight_persist(sysctl_d)
    if plan.changes:
        write_all_or_none(sysctl_root, plan.changes)
    if plan.persist_exists:
        try:
            remove_persist(sysctl_d)
        except TuneError as exc:
            stuck = _rollback(sysctl_root, plan.changes)
            if stuck:
                raise TuneError(
                    f"{exc.message}; rollback FAILED, still changed: {', '.join(stuck)}",
                    partial=True,
                ) from None
            raise TuneError(f"{exc.message}; nothing was changed") from None
    if plan.has_state:
        try:
            state_path(data_dir).unlink(missing_ok=True)
        except OSError as exc:
            raise TuneError(
                f"values restored, but the record {state_path(data_dir)} could not be "
                f"removed: {exc.strerror or exc}"
            ) from None


# --------------------------------------------------------------------------- evidence

SNMP_UDP_FIELDS = ("InErrors", "RcvbufErrors", "SndbufErrors")


def read_snmp_udp(proc_root: Path = DEFAULT_PROC_ROOT) -> dict[str, dict[str, int]]:
    """UDP error counters since boot from /proc/net/snmp (IPv4) and snmp6 (IPv6).

    RcvbufErrors counts datagrams dropped because a socket's receive buffer was
    full: the direct symptom of a too-small rmem_max on an SFU.
    """
    result: dict[str, dict[str, int]] = {}
    text = _read_text_or_none_quiet(Path(proc_root) / "net" / "snmp")
    if text:
        rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
        if len(rows) >= 2:
            header, values = rows[0][1:], rows[1][1:]
            counters = dict(zip(header, values, strict=False))
            result["udp"] = {k: int(counters[k]) for k in SNMP_UDP_FIELDS if k in counters}
    text6 = _read_text_or_none_quiet(Path(proc_root) / "net" / "snmp6")
    if text6:
        counters6 = {}
        for line in text6.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith("Udp6"):
                counters6[parts[0][4:]] = parts[1]
        if counters6:
            result["udp6"] = {k: int(counters6[k]) for k in SNMP_UDP_FIELDS if k in counters6}
    return result


def _read_text_or_none_quiet(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


@dataclass(frozen=True)
class SocketDrops:
    """One UDP socket from /proc/net/udp{,6} with its drop counter and queue sizes."""

    local: str
    port: int
    drops: int
    rx_queue: int
    tx_queue: int
    inode: int

    def to_json(self) -> dict[str, Any]:
        return {"local": self.local, "port": self.port, "drops": self.drops,
                "rx_queue": self.rx_queue, "tx_queue": self.tx_queue, "inode": self.inode}


def _decode_address(hex_addr: str) -> tuple[str, int]:
    """`0100007F:1F90` -> ("127.0.0.1", 8080); the kernel prints 32-bit words in host order."""
    addr_hex, port_hex = hex_addr.split(":")
    words = [int(addr_hex[i:i + 8], 16) for i in range(0, len(addr_hex), 8)]
    packed = b"".join(struct.pack("=I", w) for w in words)
    if len(packed) == 4:
        host = socket.inet_ntop(socket.AF_INET, packed)
    else:
        host = f"[{socket.inet_ntop(socket.AF_INET6, packed)}]"
    return host, int(port_hex, 16)


def read_udp_sockets(proc_root: Path = DEFAULT_PROC_ROOT) -> list[SocketDrops]:
    """Every UDP socket with its `drops` column (packets lost to a full buffer, per socket)."""
    sockets = []
    for name in ("udp", "udp6"):
        text = _read_text_or_none_quiet(Path(proc_root) / "net" / name)
        if not text:
            continue
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 13:
                continue
            try:
                host, port = _decode_address(parts[1])
                tx_hex, rx_hex = parts[4].split(":")
                sockets.append(SocketDrops(f"{host}:{port}", port, int(parts[12]),
                                           int(rx_hex, 16), int(tx_hex, 16), int(parts[9])))
            except (ValueError, OSError):
                continue
    return sockets


def nofile_limit() -> tuple[int, int]:
    """(soft, hard) open-files limit of this process; -1 means unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (int(soft), int(hard))
