"""The data directory: generated secrets that must survive restarts.

Secrets are created on first start with mode 0600 (owner read/write only), so a
join token signed yesterday still verifies after a restart, and nobody else on
the host can mint tokens.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

JWT_SECRET_FILE = "jwt_secret"


class DataDirError(OSError):
    """The data directory cannot be created, read or written; message says which."""


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
