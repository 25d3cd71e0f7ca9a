"""The ``grid`` command line.

    grid agents start|status|stop [--node NAME]... [-c FILE]
    grid demo [-c FILE] [--size 64MiB] [--keep]

Every command takes ``--config/-c`` (else ``$GRID_CONFIG``, ``config/my-cluster-enhanced.yaml``,
then the embedded local default). A ``MeshError`` (bad config, unknown node, unreachable agents,
...) ends the command with one red line on stderr and exit code 1; click's usage errors exit 2.
No user mistake prints a traceback.

Rendering lives here; the work is in ``mesh/nodes/local.py`` (local agent processes) and the client.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
from rich.table import Table

from mesh import __version__
from mesh.cli.common import STATE_STYLE, GridError, config_option, err, load, out
from mesh.client import MeshClient
from mesh.config import ClusterConfig
from mesh.errors import NodeUnavailable
from mesh.units import format_bytes, parse_size

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grid")
def cli() -> None:
    """The memory mesh: use the RAM of worker machines as if it were your own."""


# --- agents -------------------------------------------------------------------------------------


@cli.group()
def agents() -> None:
    """Start, watch and stop the mesh agents."""


def _report(results, verb_ok: str = "") -> bool:
    """Print one line per node; True when every node succeeded."""
    all_ok = True
    for r in results:
        if r.ok:
            out.print(f"[green]✓[/green] {r.node}: {r.message}", highlight=False)
        else:
            all_ok = False
            err.print(f"[red]✗[/red] {r.node}: {r.message}", highlight=False)
    return all_ok


def _local_results(outcomes):
    from mesh.nodes.deploy import NodeResult

    return [NodeResult(o.node, o.ok, o.message + (f" (pid {o.pid})" if o.pid else ""))
            for o in outcomes]


node_option = click.option("--node", "-n", "nodes", multiple=True,
                           help="only these nodes (repeatable)")


@agents.command("deploy")
@config_option
@node_option
@click.option("--wheelhouse", type=click.Path(file_okay=False),
              help="install from these wheels only, without any package index")
def agents_deploy(config_path: str | None, nodes: tuple[str, ...], wheelhouse: str | None) -> None:
    """Install this version on the nodes over SSH and write their agent config."""
    from mesh.nodes import deploy

    cfg = load(config_path)
    targets = deploy.ssh_nodes(cfg, nodes)
    if not targets:
        raise GridError("no node of this cluster file is managed over SSH (managed_by: ssh, or "
                        "a host that is not this machine)")
    if not _report(deploy.deploy(cfg, targets, wheelhouse)):
        sys.exit(1)


def _start(cfg: ClusterConfig, nodes: tuple[str, ...], insecure: bool, systemd: bool) -> bool:
    from mesh.nodes import deploy, local

    mine, _ = local.local_agents(cfg, nodes)
    ok = _report(_local_results(local.start(cfg, mine, insecure=insecure)))
    args = (["--insecure"] if insecure else []) + (["--systemd"] if systemd else [])
    ok = _report(deploy.remote(cfg, deploy.ssh_nodes(cfg, nodes), "start", *args)) and ok
    if mine:
        out.print(f"state and logs of local agents: {local.state_dir(cfg)}", highlight=False)
    return ok


def _stop(cfg: ClusterConfig, nodes: tuple[str, ...]) -> bool:
    from mesh.nodes import deploy, local

    mine, _ = local.local_agents(cfg, nodes)
    ok = _report(_local_results(local.stop(mine)))
    return _report(deploy.remote(cfg, deploy.ssh_nodes(cfg, nodes), "stop")) and ok


@agents.command("start")
@config_option
@node_option
@click.option("--insecure", is_flag=True, help="allow non-loopback binds without cluster keys")
@click.option("--systemd", is_flag=True, help="run remote agents as systemd units")
def agents_start(config_path: str | None, nodes: tuple[str, ...], insecure: bool,
                 systemd: bool) -> None:
    """Start the agents: local processes here, over SSH on the other nodes."""
    if not _start(load(config_path), nodes, insecure, systemd):
        sys.exit(1)


@agents.command("stop")
@config_option
@node_option
def agents_stop(config_path: str | None, nodes: tuple[str, ...]) -> None:
    """Stop the agents (SIGTERM, then SIGKILL after 10 s)."""
    if not _stop(load(config_path), nodes):
        sys.exit(1)


@agents.command("restart")
@config_option
@node_option
@click.option("--insecure", is_flag=True, help="allow non-loopback binds without cluster keys")
@click.option("--systemd", is_flag=True, help="run remote agents as systemd units")
def agents_restart(config_path: str | None, nodes: tuple[str, ...], insecure: bool,
                   systemd: bool) -> None:
    """Stop, then start the agents (their blocks are lost: memory is not persisted)."""
    cfg = load(config_path)
    ok = _stop(cfg, nodes)
    if not (_start(cfg, nodes, insecure, systemd) and ok):
        sys.exit(1)


@agents.command("logs")
@config_option
@node_option
@click.option("--lines", "-l", default=30, show_default=True, help="how many lines")
def agents_logs(config_path: str | None, nodes: tuple[str, ...], lines: int) -> None:
    """Show the tail of each node's agent log."""
    from mesh.nodes import deploy, local

    cfg = load(config_path)
    mine, _ = local.local_agents(cfg, nodes)
    ok = True
    for agent in mine:
        out.rule(f"{agent.node.name} ({agent.log_file})")
        click.echo(agent.log_tail(lines))
    for r in deploy.remote(cfg, deploy.ssh_nodes(cfg, nodes), "logs", "--lines", str(lines)):
        out.rule(f"{r.node} ({r.detail.get('log_file', 'over ssh')})")
        if r.ok:
            click.echo(r.message)
        else:
            ok = False
            err.print(f"[red]✗[/red] {r.node}: {r.message}", highlight=False)
    if not ok:
        sys.exit(1)


def _status_rows(cfg: ClusterConfig) -> list[dict[str, Any]]:
    from mesh.nodes import local

    from mesh.nodes import deploy

    mine, _ = local.local_agents(cfg)
    pids = {a.node.name: a.pid() for a in mine}
    remote = {r.node: r for r in deploy.remote(cfg, deploy.ssh_nodes(cfg), "status")}
    try:
        with MeshClient(cfg) as client:
            seen = {n.name: n for n in client.nodes()}
    except NodeUnavailable:
        seen = {}
    rows = []
    for node in cfg.nodes:
        n = seen.get(node.name)
        r = remote.get(node.name)
        pid = pids.get(node.name) if r is None else r.detail.get("pid")
        state = n.state if n else "down"
        reason = None
        if state != "alive":
            if r is not None and not r.ok:
                reason = r.message
            elif r is not None or node.name in pids:
                reason = "agent not running" if not pid else "agent running but not heard"
            else:
                reason = "no agent has heard from it"
        rows.append({
            "node": node.name,
            "address": node.data_address,
            "local": node.name in pids,
            "managed_by": "local" if node.name in pids or r is None else "ssh",
            "pid": pid,
            "uptime_s": r.detail.get("uptime_s") if r is not None else None,
            "reason": reason,
            "state": state,
            "incarnation": n.incarnation if n else None,
            "capacity": n.capacity if n and n.state != "down" else None,
            "used": n.used if n and n.state != "down" else None,
            "blocks": n.blocks if n and n.state != "down" else None,
            "host_available": n.host_available if n and n.state != "down" else None,
            "last_heard_s": round(n.age_s, 2) if n and n.state != "down" else None,
            "version": (n.version if n else None) or (r.detail.get("version") if r else None),
        })
    for name, n in seen.items():  # agents heard by gossip that the file does not list
        if name not in {r["node"] for r in rows}:
            rows.append({
                "node": name, "address": n.address, "local": False, "managed_by": None,
                "pid": None, "uptime_s": None, "reason": None,
                "state": n.state, "incarnation": n.incarnation, "capacity": n.capacity,
                "used": n.used, "blocks": n.blocks, "host_available": n.host_available,
                "last_heard_s": round(n.age_s, 2), "version": n.version,
            })
    return rows


def _size(v: int | None) -> str:
    return "-" if v is None else format_bytes(v)


@agents.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
def agents_status(config_path: str | None, as_json: bool) -> None:
    """Each node's address, state from heartbeats, capacity, used, blocks and host free RAM."""
    cfg = load(config_path)
    rows = _status_rows(cfg)
    if as_json:
        click.echo(json.dumps({"cluster": cfg.name, "nodes": rows}, indent=2))
        return
    table = Table(title=f"Mesh agents of {cfg.name}")
    for col, just in [("Node", "left"), ("Address", "left"), ("State", "left"), ("PID", "right"),
                      ("Capacity", "right"), ("Used", "right"), ("Blocks", "right"),
                      ("Host free", "right"), ("Heard", "right"), ("Note", "left")]:
        table.add_column(col, justify=just)
    for r in rows:
        style = STATE_STYLE.get(r["state"], "")
        table.add_row(
            r["node"], r["address"], f"[{style}]{r['state']}[/{style}]",
            str(r["pid"]) if r["pid"] else "-", _size(r["capacity"]), _size(r["used"]),
            "-" if r["blocks"] is None else str(r["blocks"]), _size(r["host_available"]),
            "-" if r["last_heard_s"] is None else f"{r['last_heard_s']:.1f}s ago",
            r["reason"] or "",
        )
    out.print(table)


# --- demo ---------------------------------------------------------------------------------------


@cli.command()
@config_option
@click.option("--size", default="64MiB", show_default=True, help="bytes to write to each node")
@click.option("--keep", is_flag=True, help="leave the agents running afterwards")
def demo(config_path: str | None, size: str, keep: bool) -> None:
    """Start the local agents, write and read back data on every node, show the mesh."""
    from mesh.nodes import local

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
        agents_status.callback(config_path, False)
    finally:
        if not keep and started:
            local.stop([a for a in mine if a.node.name in started])
            out.print(f"stopped the agents the demo started: {', '.join(started)}", highlight=False)


from mesh.cli.memory import memory  # noqa: E402
from mesh.cli.rebalance import drain, rebalance  # noqa: E402
from mesh.cli.sharing import resource_sharing  # noqa: E402

cli.add_command(memory)
cli.add_command(resource_sharing)
cli.add_command(rebalance)
agents.add_command(drain)
