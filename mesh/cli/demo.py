"""``grid demo [-c FILE] [--size 64MiB] [--keep] [--json]``: the mesh at work on this machine.

Starts the cluster file's local agents (those not running yet), writes ``--size`` random bytes
to a block on every live node and reads them back, prints the speeds, shows ``grid agents
status``, and stops the agents it started unless told ``--keep``. With ``--json`` all of it is
one document: ``agents``, ``started``, one row per node (``write_gbps``, ``read_gbps``,
``match``), the ``status`` rows of ``grid agents status --json``, and ``stopped``.

Not here: starting and stopping agents (``mesh/nodes/local.py``), the status table
(``mesh/cli/agents.py``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from mesh.cli.agents import show_status
from mesh.cli.common import GridError, config_option, echo_json, load, out
from mesh.client import MeshClient
from mesh.nodes import local
from mesh.units import parse_size


@click.command()
@config_option
@click.option("--size", default="64MiB", show_default=True, help="bytes to write to each node")
@click.option("--keep", is_flag=True, help="leave the agents running afterwards")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
def demo(config_path: str | None, size: str, keep: bool, as_json: bool) -> None:
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
            raise GridError(f"{o.node}: {o.message}", node=o.node)
        if o.node not in already:
            started.append(o.node)
    doc: dict[str, Any] = {"agents": [a.node.name for a in mine], "started": started,
                           "size": nbytes, "nodes": [], "stopped": []}
    if not as_json:
        out.print(f"[green]✓[/green] agents up: {', '.join(doc['agents'])}"
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
                row = {"node": node.name, "block": block, "write_gbps": nbytes / (t1 - t0) / 1e9,
                       "read_gbps": nbytes / (t2 - t1) / 1e9, "match": ok}
                doc["nodes"].append(row)
                if not as_json:
                    out.print(
                        f"{'[green]✓[/green]' if ok else '[red]✗[/red]'} {node.name}: {block}  "
                        f"write {row['write_gbps']:.2f} GB/s, read {row['read_gbps']:.2f} GB/s, "
                        f"{'bytes match' if ok else 'MISMATCH'}",
                        highlight=False,
                    )
                client.free(block)
                if not ok:
                    raise GridError(f"data read back from {node.name} differs from what was "
                                    "written", node=node.name)
        if as_json:
            from mesh.nodes.status import node_statuses

            doc["status"] = [s.row() for s in node_statuses(cfg)]
        else:
            out.print()
            show_status(cfg)
    finally:
        if not keep and started:
            local.stop([a for a in mine if a.node.name in started])
            doc["stopped"] = started
            if not as_json:
                out.print(f"stopped the agents the demo started: {', '.join(started)}",
                          highlight=False)
    if as_json:
        echo_json(doc)
