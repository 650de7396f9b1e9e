"""`callsctl fleet …`: the nodes of a fleet (`serve --cluster`), read from its Redis.

The commands talk to Redis directly, not to a node: `fleet list` works while
every node is down, and shows what placement sees. The Redis URL comes from
--cluster, CALLSCTL_CLUSTER, or `cluster` in a serve config (--config).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from callsctl.errors import bad_option, fail

app = typer.Typer(
    name="fleet",
    help="List and drain the nodes of a fleet (serve --cluster redis://…).\n\n"
         "Reads the fleet's Redis: --cluster, CALLSCTL_CLUSTER or `cluster` in --config.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

CLUSTER_OPTION = typer.Option(
    None, "--cluster", envvar="CALLSCTL_CLUSTER", metavar="redis://…",
    help="The fleet's Redis URL (the nodes' --cluster).")
CONFIG_OPTION = typer.Option(None, "--config", help="A serve config whose `cluster` to use.")


def _cluster_url(cluster: str | None, config_file: Path | None) -> str:
    from callsctl_sfu.config import ConfigError, load_config
    from callsctl_sfu.fleet.settings import cluster_url_problem

    if cluster is not None:
        problem = cluster_url_problem(cluster)
        if problem or not cluster:
            bad_option("--cluster", f"{cluster!r} {problem or 'must not be empty'}")
        return cluster
    if config_file is not None:
        try:
            url = load_config(config_file, env={}).cluster
        except ConfigError as exc:
            fail(str(exc))
        if url:
            return url
        fail(f"{config_file} sets no `cluster`; give --cluster redis://…")
    fail("no fleet given: pass --cluster redis://HOST:6379/0, set CALLSCTL_CLUSTER, or "
         "--config a serve config with `cluster`", 2)


async def _with_redis(url: str, work: Any) -> Any:
    from redis.exceptions import RedisError

    from callsctl_sfu.fleet.node import connect
    from callsctl_sfu.fleet.settings import redacted

    redis = connect(url)
    try:
        return await work(redis)
    except (RedisError, OSError, TimeoutError) as exc:
        fail(f"cannot reach the fleet's Redis at {redacted(url)}: {exc}")
    finally:
        await redis.aclose()


@app.command("list")
def list_nodes(
    cluster: str | None = CLUSTER_OPTION,
    config_file: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print {nodes: [...]} as JSON."),
) -> None:
    """Every registered node: state, load, calls, sessions, addresses."""
    from callsctl_sfu.fleet import placement, registry

    url = _cluster_url(cluster, config_file)

    async def read(redis: Any) -> tuple[list[Any], dict[str, str]]:
        return await registry.list_nodes(redis), await placement.placements(redis)

    nodes, placed = asyncio.run(_with_redis(url, read))
    now = time.time()
    rows = [{**n.public(), "age_s": round(now - n.updated_at, 1),
             "placed_calls": sum(1 for host in placed.values() if host == n.node_id)}
            for n in nodes]
    if as_json:
        typer.echo(json.dumps({"nodes": rows}, indent=2))
        return
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    if not rows:
        console.print("no nodes registered (is any `callsctl serve --cluster` running?)")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("node", "state", "cpu %", "calls", "sessions", "API", "media", "version",
                   "seen"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["node_id"], row["state"], f"{row['cpu_load']:.0f}",
                      str(row["calls"]), str(row["sessions"]), row["api_url"],
                      f"{row['media_host']}:{row['media_port']}", row["version"],
                      f"{row['age_s']:.0f}s ago")
    console.print(table)


@app.command("drain")
def drain(
    node: str = typer.Argument(..., help="The node id, as `fleet list` shows it."),
    cluster: str | None = CLUSTER_OPTION,
    config_file: Path | None = CONFIG_OPTION,
    wait: bool = typer.Option(False, "--wait", help="Wait until the node has left the fleet."),
    timeout: float = typer.Option(
        900.0, "--timeout", metavar="SECONDS", help="With --wait: give up after this long."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Stop new calls on NODE; its calls go on, then it exits (as on SIGTERM)."""
    from callsctl_sfu.fleet import registry

    url = _cluster_url(cluster, config_file)
    if timeout <= 0:
        bad_option("--timeout", f"{timeout!r} must be greater than 0")

    async def run(redis: Any) -> dict[str, Any]:
        if not await registry.request_drain(redis, node):
            known = ", ".join(n.node_id for n in await registry.list_nodes(redis)) or "none"
            fail(f"no node {node!r} in the fleet (registered: {known})")
        if not wait:
            return {"node": node, "drain_requested": True, "left": False}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await redis.exists(registry.node_key(node)):
                return {"node": node, "drain_requested": True, "left": True}
            await asyncio.sleep(0.5)
        fail(f"node {node!r} still in the fleet after {timeout:g} s (its calls go on; "
             "see `callsctl fleet list`)")

    outcome = asyncio.run(_with_redis(url, run))
    if as_json:
        typer.echo(json.dumps(outcome))
    elif outcome["left"]:
        typer.echo(f"node {node} drained and left the fleet")
    else:
        typer.echo(f"node {node} is draining: no new calls; it stops when its calls end "
                   "(`callsctl fleet list` shows it until then)")
