"""The data directory: generated secrets that must survive restarts.

Secrets are created on first start with mode 0600 (owner read/write only), so a
join token signed yesterday still verifies after a restart, and nobody else on
the host can mint tokens.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from callsctl_sfu.errors import CallsctlError

JWT_SECRET_FILE = "jwt_secret"
SECRET_MODE = 0o600

log = logging.getLogger("callsctl_sfu.datadir")


def tighten_mode(path: str | os.PathLike[str], what: str = "secret") -> None:
    """Make a secret file owner-only (0600) if group or others may read or write it.

    The server reads it anyway (refusing to start over a mode would turn a
    permissions slip into an outage), but never silently: the warning names the
    file, the mode it had and, when the server cannot change it, the command.
    """
    path = Path(path)
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # reading it reports the real problem
    if not current & (stat.S_IRWXG | stat.S_IRWXO):
        return
    try:
        path.chmod(SECRET_MODE)
    except OSError as exc:
        log.warning("%s %s has mode %04o (other users may read it) and could not be changed "
                    "(%s): run chmod 600 %s", what, path, current, exc.strerror, path)
        return
    log.warning("%s %s had mode %04o (other users could read it); changed it to 0600",
                what, path, current)


class DataDirError(CallsctlError, OSError):
    """The data directory cannot be created, read or written; message says which."""
    code = "data_dir_unusable"


def ensure_data_dir(path: str | os.PathLike[str]) -> Path:
    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataDirError(
            f"cannot create data dir {directory}: {exc.strerror}; "
            "choose a writable --data-dir"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {directory} is not writable; choose a writable --data-dir")
    return directory


def load_secret(data_dir: str | os.PathLike[str], name: str = JWT_SECRET_FILE) -> bytes:
    """Return the secret in `data_dir/name`; never create one.

    For tools that sign for a running server (`callsctl token`, `check webrtc`):
    a new secret would sign tokens that no server accepts, so a missing one is
    an error naming the path that was looked for.
    """
    path = Path(data_dir).expanduser() / name
    tighten_mode(path)
    try:
        value = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise DataDirError(f"no {name} at {path}: point --data-dir (or data_dir in --config) "
                           "at the data dir of the running `callsctl serve`; its first "
                           "start creates the secret") from None
    except PermissionError:
        raise DataDirError(f"cannot read {path}: permission denied; run this as the user "
                           "that runs `callsctl serve` (e.g. sudo -u callsctl)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataDirError(f"cannot read secret {path}: {exc}") from None
    if not value:
        raise DataDirError(f"secret {path} is empty: restore it from a backup, or delete it "
                           "and restart `callsctl serve` (old tokens stop working)")
    return value.encode("ascii")


def load_or_create_secret(data_dir: str | os.PathLike[str], name: str = JWT_SECRET_FILE) -> bytes:
    """Return the secret stored in `data_dir/name`, generating it (0600) if absent."""
    directory = ensure_data_dir(data_dir)
    path = directory / name
    tighten_mode(path)
    try:
        value = path.read_text(encoding="ascii").strip()
        if value:
            return value.encode("ascii")
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise DataDirError(f"cannot read secret {path}: {exc}") from None
    value = secrets.token_urlsafe(48)
    try:
        # O_EXCL: two processes starting at once never overwrite each other's secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_secret(data_dir, name)
    except OSError as exc:
        raise DataDirError(f"cannot write secret {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    return value.encode("ascii")
