"""Checks and defaults of the fleet settings, kept apart so config.py stays small.

This module must not import redis: config.py imports it on every start.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

POLICIES = ("least-loaded", "local")
SCHEMES = ("redis", "rediss")


def cluster_url_problem(value: Any) -> str | None:
    """Empty (a single node), or a redis:// or rediss:// URL with a host."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in SCHEMES or not parts.hostname or " " in value:
        return ("must be a Redis URL such as redis://redis.internal:6379/0 or "
                "rediss://:PASSWORD@redis.internal:6380/0")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    return None


def node_id_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > 64 or any(c.isspace() or c in ":*?[]" or ord(c) < 32 for c in value):
        return "must be at most 64 characters without spaces or any of : * ? [ ]"
    return None


def node_url_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return "must be an http:// or https:// base URL such as http://10.0.0.5:8045"
    return None


def default_node_id(api_port: int) -> str:
    """Host name and API port: unique per machine, stable across restarts."""
    host = socket.gethostname().split(".")[0] or "node"
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in host)[:50]
    return f"{cleaned}-{api_port}"


def redacted(url: str) -> str:
    """The cluster URL with its password replaced, for logs and --print-config."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
