"""Two aiortc participants in a call, run where a test puts it (a network namespace).

    python -m tests.support.netns_call WS_URL DATA_DIR

aiortc's ICE agent (aioice) is strict the way browsers are: an answer to a
check must come from the address the check went to (RFC 8445 §7.2.5.2.1),
so this is the client that notices a server answering from the wrong one.
Prints one JSON line: whether each connected (True, or the error) and the
audio frames each received from the other.
"""

from __future__ import annotations

import asyncio
import json
import sys

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.tokens import issue_token


async def call(ws_url: str, data_dir: str, seconds: float = 3.0) -> dict:
    secret = load_or_create_secret(data_dir)
    people = [Participant(ws_url, issue_token(secret, "netns", f"user{i}"), "netns", f"User {i}",
                          tone=300 + 100 * i) for i in range(2)]
    connected: list[object] = []
    try:
        for person in people:
            await person.join()
        for person in people:
            try:
                await person.wait_connected(10)
                connected.append(True)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                connected.append(str(exc))
        await asyncio.sleep(seconds)
        return {"connected": connected,
                "frames": [sum(person.frames_from.values()) for person in people]}
    finally:
        for person in people:
            await person.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(call(sys.argv[1], sys.argv[2]))))
