"""Join tokens: HS256 JWTs carrying the call, the user and an expiry.

RFC 7519 claims: `sub` is the user id, `exp` the expiry; `call` is ours. The
secret lives in the data dir (see datadir.py). A token is the only thing a
participant needs to join, so every check failure gives a reason the web
client can show.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from types import ModuleType

from callsctl_sfu.errors import CallsctlError

ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 24 * 3600


class TokenError(CallsctlError, ValueError):
    """The token is missing, malformed, forged or expired; message says which."""
    code = "unauthorized"


@dataclass(frozen=True)
class JoinGrant:
    call: str
    user: str
    expires_at: int
    # "recorder" for a recording job's participant (jobs/), else None: a person.
    role: str | None = None


def _jwt() -> ModuleType:
    """PyJWT, imported at the first token minted or checked, not with this module.

    PyJWT imports cryptography whenever it is installed (for its RSA and EC
    algorithms; about 9 MB of RSS and 80 ms), though join tokens are HS256 only:
    an idle server, which has checked no token yet, does without it.
    """
    import jwt

    return jwt


def _printable(value: str) -> bool:
    """No lone surrogates (SQLite stores UTF-8) and no control characters (log lines)."""
    return not any(unicodedata.category(c) in ("Cs", "Cc") for c in value)


def issue_token(secret: bytes, call: str, user: str, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                now: float | None = None, role: str | None = None) -> str:
    if not call or not user:
        raise TokenError("a token needs a call id and a user id")
    if not _printable(call) or not _printable(user):
        raise TokenError("call and user ids must be text without control characters or "
                         "invalid Unicode")
    if ttl_seconds <= 0:
        raise TokenError("a token's lifetime must be positive")
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {"call": call, "sub": user, "iat": issued,
                                 "exp": issued + int(ttl_seconds)}
    if role:
        claims["role"] = role
    return _jwt().encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: bytes, token: str | None) -> JoinGrant:
    if not token:
        raise TokenError("no token: open the join link printed by `callsctl serve` "
                         "or mint one with `callsctl token`")
    jwt = _jwt()
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"require": ["exp", "sub", "call"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired: mint a new one with `callsctl token`") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid (signed by another server?)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"token is malformed: {exc}") from None
    call, user = claims.get("call"), claims.get("sub")
    if not isinstance(call, str) or not isinstance(user, str) or not call or not user:
        raise TokenError("token's call and sub claims must be non-empty strings")
    if not _printable(call) or not _printable(user):
        raise TokenError("token's call and sub claims must be text without control "
                         "characters or invalid Unicode")
    role = claims.get("role")
    return JoinGrant(call=call, user=user, expires_at=int(claims["exp"]),
                     role=role if isinstance(role, str) else None)
