"""Scripted aiortc participants (the engine's client) joined to a test server."""

from __future__ import annotations

from callsctl_sfu.client.participant import Participant


async def join_all(server, count: int, call: str = "room") -> list[Participant]:
    participants = []
    for index in range(count):
        participant = Participant(server.ws_url, server.token(call, f"user{index}"), call,
                                  f"User {index}", tone=300 + 100 * index)
        await participant.join()
        participants.append(participant)
    for participant in participants:
        await participant.wait_connected(15)
    return participants


async def close_all(participants: list[Participant]) -> None:
    for participant in participants:
        await participant.close()
