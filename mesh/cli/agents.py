"""``grid agents``: deploy, start, watch and stop the mesh agents (rendering only).

    grid agents deploy [--node NAME]... [--wheelhouse DIR] [--json] [-c FILE]
    grid agents start|restart [--node NAME]... [--insecure] [--systemd] [--json] [-c FILE]
    grid agents stop [--node NAME]... [--json] [-c FILE]
    grid agents logs [--node NAME]... [--lines N] [-c FILE]
    grid agents status [--json] [-c FILE]
    grid agents drain NODE [--json]            (mesh/cli/rebalance.py, imported when it runs)

Nodes of this machine are local processes (``mesh/nodes/local.py``); the others are driven over
SSH (``mesh/nodes/deploy.py``, the ``deploy`` extra: without Fabric, a command that would reach
such a node stops with one line naming the extra). One line per node says how it went; any
failed node makes the exit code 1. With ``--json``: one document, ``{"action", "nodes": [{"node",
"ok", "message", "pid"}], "ok"}`` (``restart`` adds ``"stopped"``, the rows of its stop), and
when a node failed, the one JSON error line naming the failures on stderr (``_finish``).

Not here: the work (``mesh/nodes/``: ``local``, ``deploy``, ``status``), ``grid demo``
(``mesh/cli/demo.py``), the shared helpers (``mesh/cli/common.py``).
"""

from __future__ import annotations

import sys
from typing import Iterable

import click
from rich.table import Table

from mesh.cli.common import (
    STATE_STYLE,
    GridError,
    LazyGroup,
    config_option,
    echo_json,
    err,
    human,
    load,
    out,
)
from mesh.config import ClusterConfig
from mesh.nodes import deploy, local
from mesh.nodes.deploy import NodeResult
from mesh.nodes.status import node_statuses


@click.group(cls=LazyGroup, lazy={
    "drain": ("mesh.cli.rebalance:drain",
              "Move every block off NODE (for maintenance), keeping block ids and keys."),
})
def agents() -> None:
    """Start, watch and stop the mesh agents."""


node_option = click.option("--node", "-n", "nodes", multiple=True,
                           help="only these nodes (repeatable)")


def _report(results: Iterable[NodeResult], rows: list[dict] | None = None) -> bool:
    """Print one line per node, or with ``rows`` (``--json``) add one row per node to it; True
    when every node succeeded."""
    all_ok = True
    for r in results:
        if rows is not None:
            all_ok = all_ok and r.ok
            rows.append({"node": r.node, "ok": r.ok, "message": r.message,
                         "pid": r.detail.get("pid")})
        elif r.ok:
            out.print(f"[green]✓[/green] {r.node}: {r.message}", highlight=False)
        else:
            all_ok = False
            err.print(f"[red]✗[/red] {r.node}: {r.message}", highlight=False)
    return all_ok


def _local_results(outcomes: list[local.Outcome]) -> list[NodeResult]:
    return [NodeResult(o.node, o.ok, o.message + (f" (pid {o.pid})" if o.pid else ""),
                       {"pid": o.pid})
            for o in outcomes]


def _finish(action: str, rows: list[dict] | None, all_ok: bool,
            stopped: list[dict] | None = None, **doc: object) -> None:
    """The end of a command that reports per node: with ``--json`` (``rows``) the document,
    then, if a node failed, one error naming the failures; exit 1 when a node failed."""
    if rows is None:
        if not all_ok:
            sys.exit(1)
        return
    if stopped is not None:
        doc["stopped"] = stopped
    echo_json({"action": action, **doc, "nodes": rows, "ok": all_ok})
    failed = [r for r in (stopped or []) + rows if not r["ok"]]
    if failed:
        raise GridError(f"{action} failed on {len(failed)} node(s): "
                        + "; ".join(f"{r['node']}: {r['message']}" for r in failed),
                        node=failed[0]["node"] if len(failed) == 1 else None)


json_option = click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")


@agents.command("deploy")
@config_option
@node_option
@click.option("--wheelhouse", type=click.Path(file_okay=False),
              help="install from these wheels only, without any package index")
@json_option
def agents_deploy(config_path: str | None, nodes: tuple[str, ...], wheelhouse: str | None,
                  as_json: bool) -> None:
    """Install this version on the nodes over SSH and write their agent config."""
    cfg = load(config_path)
    targets = deploy.ssh_nodes(cfg, nodes)
    if not targets:
        raise GridError("no node of this cluster file is managed over SSH (managed_by: ssh, or "
                        "a host that is not this machine)")
    rows: list[dict] | None = [] if as_json else None
    _finish("deploy", rows, _report(deploy.deploy(cfg, targets, wheelhouse), rows))


def _start(cfg: ClusterConfig, nodes: tuple[str, ...], insecure: bool, systemd: bool,
           rows: list[dict] | None = None) -> bool:
    remote = deploy.ssh_nodes(cfg, nodes)  # first: without Fabric, stop before starting any
    mine, _ = local.local_agents(cfg, nodes)
    ok = _report(_local_results(local.start(cfg, mine, insecure=insecure, systemd=systemd)),
                 rows)
    args = (["--insecure"] if insecure else []) + (["--systemd"] if systemd else [])
    ok = _report(deploy.remote(cfg, remote, "start", *args), rows) and ok
    if mine and rows is None:
        out.print(f"state and logs of local agents: {local.state_dir(cfg)}", highlight=False)
    return ok


def _stop(cfg: ClusterConfig, nodes: tuple[str, ...], rows: list[dict] | None = None) -> bool:
    remote = deploy.ssh_nodes(cfg, nodes)
    mine, _ = local.local_agents(cfg, nodes)
    ok = _report(_local_results(local.stop(mine)), rows)
    return _report(deploy.remote(cfg, remote, "stop"), rows) and ok


def start_options(f):
    """What ``start`` and ``restart`` share: which nodes, and how their agents run."""
    for option in reversed([
        config_option,
        node_option,
        click.option("--insecure", is_flag=True,
                     help="allow non-loopback binds without cluster keys"),
        click.option("--systemd", is_flag=True, help="run the agents as systemd units"),
        json_option,
    ]):
        f = option(f)
    return f


@agents.command("start")
@start_options
def agents_start(config_path: str | None, nodes: tuple[str, ...], insecure: bool,
                 systemd: bool, as_json: bool) -> None:
    """Start the agents: local processes here, over SSH on the other nodes."""
    cfg = load(config_path)
    rows: list[dict] | None = [] if as_json else None
    _finish("start", rows, _start(cfg, nodes, insecure, systemd, rows),
            state_dir=str(local.state_dir(cfg)))


@agents.command("stop")
@config_option
@node_option
@json_option
def agents_stop(config_path: str | None, nodes: tuple[str, ...], as_json: bool) -> None:
    """Stop the agents (SIGTERM, then SIGKILL after 10 s)."""
    rows: list[dict] | None = [] if as_json else None
    _finish("stop", rows, _stop(load(config_path), nodes, rows))


@agents.command("restart")
@start_options
def agents_restart(config_path: str | None, nodes: tuple[str, ...], insecure: bool,
                   systemd: bool, as_json: bool) -> None:
    """Stop, then start the agents (their blocks are lost: memory is not persisted)."""
    cfg = load(config_path)
    stopped: list[dict] | None = [] if as_json else None
    rows: list[dict] | None = [] if as_json else None
    ok = _stop(cfg, nodes, stopped)
    ok = _start(cfg, nodes, insecure, systemd, rows) and ok
    _finish("restart", rows, ok, stopped, state_dir=str(local.state_dir(cfg)))


@agents.command("logs")
@config_option
@node_option
@click.option("--lines", "-l", default=30, show_default=True, help="how many lines")
@json_option
def agents_logs(config_path: str | None, nodes: tuple[str, ...], lines: int,
                as_json: bool) -> None:
    """Show the tail of each node's agent log (and of its stdout/stderr, when not empty)."""
    cfg = load(config_path)
    remote = deploy.ssh_nodes(cfg, nodes)
    mine, _ = local.local_agents(cfg, nodes)
    rows: list[dict] = []  # node, ok, message, log_file, log, out_file, out
    for agent in mine:
        rows.append({"node": agent.node.name, "ok": True, "message": "",
                     "log_file": str(agent.log_file), "log": agent.log_tail(lines),
                     "out_file": str(agent.out_file), "out": agent.out_tail(lines)})
    for r in deploy.remote(cfg, remote, "logs", "--lines", str(lines)):
        rows.append({"node": r.node, "ok": r.ok, "message": "" if r.ok else r.message,
                     "log_file": r.detail.get("log_file"), "log": r.message if r.ok else "",
                     "out_file": r.detail.get("out_file"), "out": r.detail.get("out") or ""})
    if as_json:
        _finish("logs", rows, all(r["ok"] for r in rows))
        return
    for row in rows:
        if not row["ok"]:
            err.print(f"[red]✗[/red] {row['node']}: {row['message']}", highlight=False)
            continue
        out.rule(f"{row['node']} ({row['log_file'] or 'over ssh'})")
        click.echo(row["log"])
        if row["out"]:
            out.rule(f"{row['node']} ({row['out_file']})")
            click.echo(row["out"])
    if not all(r["ok"] for r in rows):
        sys.exit(1)


def show_status(cfg: ClusterConfig, as_json: bool = False) -> None:
    """Each node's row (``mesh/nodes/status.py``), as one JSON document or as a table."""
    rows = [s.row() for s in node_statuses(cfg)]
    if as_json:
        echo_json({"cluster": cfg.name, "nodes": rows})
        return
    table = Table(title=f"Mesh agents of {cfg.name}")
    for col, just in [("Node", "left"), ("Address", "left"), ("State", "left"), ("PID", "right"),
                      ("Capacity", "right"), ("Used", "right"), ("Blocks", "right"),
                      ("Host free", "right"), ("Heard", "right"), ("Security", "left"),
                      ("Metrics", "left"), ("Note", "left")]:
        table.add_column(col, justify=just)
    for r in rows:
        style = STATE_STYLE.get(r["state"], "")
        table.add_row(
            r["node"], r["address"], f"[{style}]{r['state']}[/{style}]",
            str(r["pid"]) if r["pid"] else "-", human(r["capacity"]), human(r["used"]),
            "-" if r["blocks"] is None else str(r["blocks"]), human(r["host_available"]),
            _heard(r["last_heard_s"], r["beat_s"]),
            _security(r["security"]), _port(r["metrics_url"]), r["reason"] or "",
        )
    out.print(table)


def _heard(ago_s: float | None, beat_s: float | None) -> str:
    """"0.3s ago", and ", every 0.99s" for a node that stretches its heartbeats."""
    if ago_s is None:
        return "-"
    return f"{ago_s:.1f}s ago" + (f", every {beat_s:g}s" if beat_s else "")


def _port(url: str | None) -> str:
    """``:7702`` of a node's metrics URL (its host is the Address's; --json has the URL)."""
    return "-" if not url else ":" + url.rsplit(":", 1)[1].split("/", 1)[0]


def _security(security: str | None) -> str:
    if security == "insecure":
        return "[bold red]INSECURE[/bold red]"
    return security or "-"


@agents.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
def agents_status(config_path: str | None, as_json: bool) -> None:
    """Each node's address, state from heartbeats, capacity, used, blocks and host free RAM."""
    show_status(load(config_path), as_json)


@agents.command("scrape-config")
@config_option
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML")
def agents_scrape_config(config_path: str | None, as_json: bool) -> None:
    """Print a Prometheus scrape config for every node's metrics endpoint."""
    import yaml

    from mesh.nodes.monitoring import scrape_config

    doc = scrape_config(load(config_path))
    if as_json:
        echo_json(doc)
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
