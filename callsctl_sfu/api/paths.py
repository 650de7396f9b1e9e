"""Every HTTP path of `callsctl serve`'s API port, written down once.

The server registers its routes with these templates (aiohttp's `{name}`
placeholders) and the CLI's admin client (callsctl/adminclient.py) fills the
same templates with `fill`, so a path cannot drift between the two sides.
tests/test_adminclient.py checks that every template here is routed by a
running server.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

API: Final = "/api/v1"

# -- admin API (Bearer admin key) --------------------------------------------------------
CALLS: Final = f"{API}/calls"
CALL: Final = f"{API}/calls/{{call_id}}"
CALL_HOST: Final = f"{API}/calls/{{call_id}}/host"
CALL_MUTE_OTHERS: Final = f"{API}/calls/{{call_id}}/mute-others"
SESSION: Final = f"{API}/calls/{{call_id}}/sessions/{{session_id}}"
SESSION_MUTE: Final = f"{SESSION}/mute"
SESSION_STOP_SCREEN: Final = f"{SESSION}/stop-screen"
SESSION_LOWER_HAND: Final = f"{SESSION}/lower-hand"
SETTINGS: Final = f"{API}/settings/calls"
CALL_SETTINGS: Final = f"{API}/settings/calls/{{call_id}}"
HISTORY: Final = f"{API}/history"
EVENTS: Final = f"{API}/events"
JOBS: Final = f"{API}/jobs"
JOB: Final = f"{API}/jobs/{{job_id}}"
JOB_LOGS: Final = f"{JOB}/logs"
JOB_FILE: Final = f"{JOB}/files/{{name}}"
JOB_STOP: Final = f"{JOB}/stop"
FLEET_NODES: Final = f"{API}/fleet/nodes"
FLEET_LOST: Final = f"{API}/fleet/lost"

# The session controls that are a POST to SESSION/<action>, by the action's name.
SESSION_ACTIONS: Final = {"mute": SESSION_MUTE, "stop-screen": SESSION_STOP_SCREEN,
                          "lower-hand": SESSION_LOWER_HAND}

# -- public (no key): health, counts, version, metrics -----------------------------------------
VERSION: Final = "/version"
STATS: Final = "/stats"
SYSTEM: Final = "/system"
METRICS: Final = "/metrics"
HEALTHZ: Final = "/healthz"
READYZ: Final = "/readyz"


def fill(template: str, **ids: str) -> str:
    """A template with each `{name}` replaced by its id, percent-encoded as one path segment.

    Ids come from operators and participants (`calls show 'a/b'`), so a `/`
    or `?` in one must stay inside its segment rather than change the route.
    """
    return template.format(**{name: quote(value, safe="") for name, value in ids.items()})
