"""The data dir of a `callsctl serve` on this host, found one way by every command.

`token`, `check webrtc`, `check all`, `loadtest` and `calls`/`top` (for the
admin key) read files a local server keeps in its data dir. They all resolve
it like the server itself does: --data-dir, else `data_dir` from --config,
else CALLSCTL_DATA_DIR, else the default ($XDG_DATA_HOME/callsctl). So on the
server host, as the user running `callsctl serve`, no flag is needed.
"""

from __future__ import annotations

from pathlib import Path

from callsctl.errors import fail
from callsctl_sfu.config import ConfigError, load_config
from callsctl_sfu.datadir import JWT_SECRET_FILE, DataDirError, load_secret


def data_dir(flag: str | None, config: Path | None = None) -> Path:
    """The server's data dir from --data-dir, --config, CALLSCTL_DATA_DIR or the default."""
    try:
        return Path(load_config(config, overrides={"data_dir": flag}).data_dir).expanduser()
    except ConfigError as exc:
        fail(str(exc))


def where(flag: str | None) -> str:
    """How the data dir was chosen, for messages."""
    return "--data-dir" if flag else "the default data dir"


def read_secret(flag: str | None, config: Path | None = None,
                missing_hint: str = "point --data-dir at the server's data dir") -> bytes:
    """The local server's JWT secret; never created (a new one signs tokens nobody accepts)."""
    directory = data_dir(flag, config)
    if not (directory / JWT_SECRET_FILE).is_file():
        fail(f"no {JWT_SECRET_FILE} at {directory / JWT_SECRET_FILE} ({where(flag)}): "
             f"{missing_hint}")
    try:
        return load_secret(directory)
    except DataDirError as exc:
        fail(str(exc))
