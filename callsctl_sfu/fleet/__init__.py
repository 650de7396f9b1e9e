"""A fleet of `callsctl serve` nodes sharing one Redis (`serve --cluster redis://…`).

Nothing here is imported by a node without a cluster URL: the single node
stays exactly what it was. With a cluster URL, nodes are equal peers and Redis
holds the only shared state:

- registry.py   each node's registration (address, load, calls), with a TTL
- placement.py  the atomic call -> node claim, the policies, the reaper of calls
                whose host vanished
- routing.py    at a client's join: host the call here, or relay it to its host
- relay.py      a /ws client whose call lives on another node is proxied to it
- bus.py        admin requests for a call hosted elsewhere go to its host
- drain.py      SIGTERM or `callsctl fleet drain`: no new calls, then exit
- metrics.py    the node-labelled series on /metrics
- node.py       the one object server.py attaches, tying the above together
- settings.py   the config checks (imported by config.py, free of redis)

docs/fleet.md explains the design and how to run it.
"""
