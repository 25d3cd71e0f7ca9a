"""The ``grid`` command line.

    grid agents start|status|stop [--node NAME]... [-c FILE]
    grid demo [-c FILE] [--size 64MiB] [--keep]

Every command takes ``--config/-c`` (else ``$GRID_CONFIG``, ``config/my-cluster-enhanced.yaml``,
then the embedded local default). A ``MeshError`` (bad config, unknown node, unreachable agents,
...) ends the command with one red line on stderr and exit code 1; click's usage errors exit 2.
No user mistake prints a traceback.

Rendering lives here; the work is in ``mesh/local.py`` (local agent processes) and the client.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mesh import __version__
from mesh.client import MeshClient
from mesh.config import ClusterConfig, resolve_config
from mesh.errors import MeshError, NodeUnavailable
from mesh.units import format_bytes, parse_size

# Wide enough for the tables when output goes to a file or a pipe.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class GridError(click.ClickException):
    """One red line, exit 1."""

    def show(self, file: Any = None) -> None:
        err.print(f"[red]✗[/red] {self.message}", highlight=False)


def config_option(f):
    return click.option(
        "--config", "-c", "config_path", type=click.Path(dir_okay=False),
        help="cluster file (default: $GRID_CONFIG, config/my-cluster-enhanced.yaml, "
        "then the embedded local mesh)",
    )(f)


def load(config_path: str | None) -> ClusterConfig:
    return resolve_config(config_path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grid")
def cli() -> None:
    """The memory mesh: use the RAM of worker machines as if it were your own."""


# --- agents -------------------------------------------------------------------------------------


@cli.group()
def agents() -> None:
    """Start, watch and stop the mesh agents."""


def _remote_note(remote) -> None:
    for node in remote:
        out.print(
            f"[yellow]•[/yellow] {node.name}: remote node ({node.host}), not started: remote "
            "agents are deployed over SSH by `grid agents deploy`, which is not available yet",
            highlight=False,
        )


@agents.command("start")
@config_option
@click.option("--node", "-n", "nodes", multiple=True, help="only these nodes (repeatable)")
@click.option("--insecure", is_flag=True, help="allow non-loopback binds without cluster keys")
def agents_start(config_path: str | None, nodes: tuple[str, ...], insecure: bool) -> None:
    """Start the agents of every node whose host is this machine."""
    from mesh import local

    cfg = load(config_path)
    mine, remote = local.local_agents(cfg, nodes)
    failed = False
    for o in local.start(cfg, mine, insecure=insecure):
        if o.ok:
            out.print(f"[green]✓[/green] {o.node}: {o.message} (pid {o.pid})", highlight=False)
        else:
            failed = True
            err.print(f"[red]✗[/red] {o.node}: {o.message}", highlight=False)
    _remote_note(remote)
    if mine:
        out.print(f"state and logs: {local.state_dir(cfg)}", highlight=False)
    if failed or (remote and not mine):
        sys.exit(1)


@agents.command("stop")
@config_option
@click.option("--node", "-n", "nodes", multiple=True, help="only these nodes (repeatable)")
def agents_stop(config_path: str | None, nodes: tuple[str, ...]) -> None:
    """Stop the agents this machine started (SIGTERM, then SIGKILL after 10 s)."""
    from mesh import local

    cfg = load(config_path)
    mine, remote = local.local_agents(cfg, nodes)
    for o in local.stop(mine):
        pid = f" (pid {o.pid})" if o.pid else ""
        out.print(f"[green]✓[/green] {o.node}: {o.message}{pid}", highlight=False)
    _remote_note(remote)


def _status_rows(cfg: ClusterConfig) -> list[dict[str, Any]]:
    from mesh import local

    mine, _ = local.local_agents(cfg)
    pids = {a.node.name: a.pid() for a in mine}
    try:
        with MeshClient(cfg) as client:
            seen = {n.name: n for n in client.nodes()}
    except NodeUnavailable:
        seen = {}
    rows = []
    for node in cfg.nodes:
        n = seen.get(node.name)
        rows.append({
            "node": node.name,
            "address": node.data_address,
            "local": node.name in pids,
            "pid": pids.get(node.name),
            "state": n.state if n else "down",
            "incarnation": n.incarnation if n else None,
            "capacity": n.capacity if n and n.state != "down" else None,
            "used": n.used if n and n.state != "down" else None,
            "blocks": n.blocks if n and n.state != "down" else None,
            "host_available": n.host_available if n and n.state != "down" else None,
            "last_heard_s": round(n.age_s, 2) if n and n.state != "down" else None,
            "version": n.version if n else None,
        })
    for name, n in seen.items():  # agents heard by gossip that the file does not list
        if name not in {r["node"] for r in rows}:
            rows.append({
                "node": name, "address": n.address, "local": False, "pid": None,
                "state": n.state, "incarnation": n.incarnation, "capacity": n.capacity,
                "used": n.used, "blocks": n.blocks, "host_available": n.host_available,
                "last_heard_s": round(n.age_s, 2), "version": n.version,
            })
    return rows


_STATE_STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "down": "red"}


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
                      ("Host free", "right"), ("Heard", "right")]:
        table.add_column(col, justify=just)
    for r in rows:
        style = _STATE_STYLE.get(r["state"], "")
        table.add_row(
            r["node"], r["address"], f"[{style}]{r['state']}[/{style}]",
            str(r["pid"]) if r["pid"] else "-", _size(r["capacity"]), _size(r["used"]),
            "-" if r["blocks"] is None else str(r["blocks"]), _size(r["host_available"]),
            "-" if r["last_heard_s"] is None else f"{r['last_heard_s']:.1f}s ago",
        )
    out.print(table)


# --- demo ---------------------------------------------------------------------------------------


@cli.command()
@config_option
@click.option("--size", default="64MiB", show_default=True, help="bytes to write to each node")
@click.option("--keep", is_flag=True, help="leave the agents running afterwards")
def demo(config_path: str | None, size: str, keep: bool) -> None:
    """Start the local agents, write and read back data on every node, show the mesh."""
    from mesh import local

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


from mesh.cli_memory import memory  # noqa: E402
cli.add_command(memory)


def main() -> None:
    try:
        cli.main(prog_name="grid", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MeshError as exc:
        err.print(f"[red]✗[/red] {exc}", highlight=False)
        sys.exit(1)
    except BrokenPipeError:
        # The reader of our output went away (`grid memory retrieve K -o - | head`).
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        sys.exit(141)  # 128 + SIGPIPE, as shell tools do
    except OSError as exc:  # a file we were told to read or write
        err.print(f"[red]✗[/red] {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                  highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
