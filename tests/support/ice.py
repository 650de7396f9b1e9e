"""ICE agents (aioice) connected through callsctl's shared media socket, for mux tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aioice import Candidate, Connection

from callsctl_sfu.rtc.mux import UdpMux


async def connect_pairs(mux: UdpMux, count: int, servers: list[Connection] | None = None,
                        clients: list[Connection] | None = None, timeout: float = 20.0
                        ) -> tuple[list[Connection], list[Connection]]:
    """`count` server agents on the mux, each connected to a client agent of its own.

    Agents are appended to `servers` / `clients` (given by a caller that closes
    them in its own `finally`) as soon as they exist, so a failure halfway still
    leaves every agent in the caller's hands.
    """
    servers = [] if servers is None else servers
    clients = [] if clients is None else clients
    for _ in range(count):
        server = Connection(ice_controlling=False, use_ipv6=False)
        servers.append(server)
        mux.attach(server)
        await server.gather_candidates()
        client = Connection(ice_controlling=True, use_ipv4=True, use_ipv6=False)
        clients.append(client)
        await client.gather_candidates()
        await introduce(server, client)
    await asyncio.wait_for(asyncio.gather(*(c.connect() for c in clients),
                                          *(s.connect() for s in servers)), timeout)
    return servers, clients


async def introduce(server: Connection, client: Connection,
                    accept: Callable[[Candidate], bool] = lambda _candidate: True) -> None:
    """What signaling does between two gathered agents: each learns the other's ICE
    credentials, and the client the server's candidates that `accept` keeps, then the
    end of them (the server learns the client's from its checks)."""
    server.remote_username, server.remote_password = (client.local_username,
                                                      client.local_password)
    client.remote_username, client.remote_password = (server.local_username,
                                                      server.local_password)
    for candidate in server.local_candidates:
        if accept(candidate):
            await client.add_remote_candidate(candidate)
    await client.add_remote_candidate(None)


async def connect_agents(server: Connection, client: Connection, timeout: float = 20.0,
                         accept: Callable[[Candidate], bool] = lambda _candidate: True) -> None:
    """Introduce two gathered agents and connect them (checks, nomination), within `timeout`."""
    await introduce(server, client, accept)
    await asyncio.wait_for(asyncio.gather(client.connect(), server.connect()), timeout)
