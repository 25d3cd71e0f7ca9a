"""``grid demo [-c FILE] [--size 64MiB] [--keep]``: the mesh at work on this machine.

Starts the cluster file's local agents (those not running yet), writes ``--size`` random bytes
to a block on every live node and reads them back, prints the speeds, shows ``grid agents
status``, and stops the agents it started unless told ``--keep``.

Not here: starting and stopping agents (``mesh/nodes/local.py``), the status table
(``mesh/cli/agents.py``).
"""

from __future__ import annotations

import os
import time

import click

from mesh.cli.agents import show_status
from mesh.cli.common import GridError, config_option, load, out
from mesh.client import MeshClient
from mesh.nodes import local
from mesh.units import parse_size


@click.command()
@config_option
@click.option("--size", default="64MiB", show_default=True, help="bytes to write to each node")
@click.option("--keep", is_flag=True, help="leave the agents running afterwards")
def demo(config_path: str | None, size: str, keep: bool) -> None:
    """Start the local agents, write and read back data on every node, show the mesh."""
    cfg = load(config_path)
    nbytes = parse_size(size)
    mine, remote = local.local_agents(cfg)
    if not mine:
        raise GridError("no node of this cluster file is on this machine; nothing to demo")
    already = {a.node.name for a in mine if a.pid() is not None}
    started = []
    for o in local.start(cfg, mine):
        if not o.ok:
            local.stop([a for a in mine if a.node.name not in already])
            raise GridError(f"{o.node}: {o.message}")
        if o.node not in already:
            started.append(o.node)
    out.print(f"[green]✓[/green] agents up: {', '.join(a.node.name for a in mine)}"
              + (f" (started {', '.join(started)})" if started else ""), highlight=False)
    try:
        with MeshClient(cfg) as client:
            deadline = time.monotonic() + 10
            while True:  # wait until every local agent has heard the others
                alive = [n for n in client.nodes() if n.state == "alive"]
                if len(alive) >= len(mine) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            payload = os.urandom(nbytes)
            for node in alive:
                block = client.allocate(nbytes, node=node.name)
                t0 = time.perf_counter()
                client.write(block, payload)
                t1 = time.perf_counter()
                back = client.read(block)
                t2 = time.perf_counter()
                ok = back == payload
                out.print(
                    f"{'[green]✓[/green]' if ok else '[red]✗[/red]'} {node.name}: {block}  "
                    f"write {nbytes / (t1 - t0) / 1e9:.2f} GB/s, read {nbytes / (t2 - t1) / 1e9:.2f} GB/s, "
                    f"{'bytes match' if ok else 'MISMATCH'}",
                    highlight=False,
                )
                client.free(block)
                if not ok:
                    raise GridError(f"data read back from {node.name} differs from what was written")
        out.print()
        show_status(cfg)
    finally:
        if not keep and started:
            local.stop([a for a in mine if a.node.name in started])
            out.print(f"stopped the agents the demo started: {', '.join(started)}", highlight=False)
