"""Join links the host mints from its page (the `invite` signaling message).

A link is a token for the host's own call and a fresh user id, so two people
invited under the same name never share one (a user's second session in a
call would stand for the first). The name rides in the link as `?name=`, so
the invitee's name prompt starts filled in; they may still change it.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from callsctl_sfu import events
from callsctl_sfu.tokens import DEFAULT_TTL_SECONDS, issue_token

_NOT_ID = re.compile(r"[^a-z0-9]+")


def invite_user_id(name: str) -> str:
    """A readable, unique user id for NAME: `ada-lovelace-3f9c` (`guest-…` if none)."""
    slug = _NOT_ID.sub("-", name.lower()).strip("-")[:24].strip("-") or "guest"
    return f"{slug}-{secrets.token_hex(2)}"


def mint_invite(secret: bytes, call: str, name: str,
                ttl_seconds: float = DEFAULT_TTL_SECONDS) -> dict[str, Any]:
    """The `invite_created` event: token, user, expiry and the link's path and query."""
    name = name.strip()
    user = invite_user_id(name)
    now = time.time()
    token = issue_token(secret, call, user, ttl_seconds, now=now)
    return events.InviteCreated(call=call, user=user, name=name, token=token,
                                expires_at=int(now + ttl_seconds),
                                path="/?" + urlencode({"token": token, "name": name})).wire()
