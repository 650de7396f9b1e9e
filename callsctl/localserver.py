"""The data dir of a `callsctl serve` on this host, and the secret that signs join tokens.

`token`, `check webrtc`, `check all`, `loadtest` and `calls`/`top` (for the
admin key) read files a local server keeps in its data dir. They all resolve
it like the server itself does: --data-dir, else CALLSCTL_DATA_DIR, else
`data_dir` from --config, else the default ($XDG_DATA_HOME/callsctl). So on
the server host, as the user running `callsctl serve`, no flag is needed.

Every command that mints join tokens gets its secret from `token_secret`, with
one behaviour: a secret given directly (loadtest's --token-secret or
--secret-file) is used as it is, else <data dir>/jwt_secret is read, and a
missing one is never created, whichever data dir it is: only `callsctl serve`
creates it (at its first start). A secret made by another command could only
be right if that very data dir is the one the server reads, which a command
cannot know (the server may run as another user, or with --data-dir); when it
is wrong, every token it signs is refused at join time with no hint why. So a
missing secret is one error line naming the file, how its data dir was chosen,
and the flag to give instead.
"""

from __future__ import annotations

import os
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


def where(flag: str | None, config: Path | None = None) -> str:
    """How the data dir was chosen (flag > CALLSCTL_DATA_DIR > --config > default)."""
    if flag:
        return "--data-dir"
    if os.environ.get("CALLSCTL_DATA_DIR"):
        return "CALLSCTL_DATA_DIR"
    if config is not None:
        return "data_dir of --config, else the default data dir"
    return "the default data dir"


def token_secret(data_dir_flag: str | None = None, config: Path | None = None, *,
                 secret: str | None = None, secret_file: Path | None = None,
                 otherwise: str = "point --data-dir at the server's data dir") -> bytes:
    """The JWT secret that signs join tokens, the one way every command finds it (module doc).

    `otherwise` completes the error for a missing secret: what this command
    takes instead (e.g. loadtest's --secret-file, check webrtc's --token).
    """
    if secret:
        return secret.strip().encode()
    if secret_file is not None:
        try:
            value = secret_file.expanduser().read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read --secret-file {secret_file}: "
                 f"{getattr(exc, 'strerror', None) or exc}")
        if not value:
            fail(f"--secret-file {secret_file} is empty")
        return value.encode()
    directory = data_dir(data_dir_flag, config)
    path = directory / JWT_SECRET_FILE
    try:
        path.stat()
    except FileNotFoundError:
        fail(f"no {JWT_SECRET_FILE} at {path} ({where(data_dir_flag, config)}): {otherwise}; "
             "only `callsctl serve` creates it, at its first start (one made here would sign "
             "tokens the server refuses)")
    except OSError:
        pass  # load_secret names the real problem (permission denied, ...)
    try:
        return load_secret(directory)
    except DataDirError as exc:
        fail(str(exc))

