"""``grid resource-sharing``: reserve worker memory, CPUs or GPUs through Ray placement groups.

    grid resource-sharing request --node NODE --type memory|cpu|gpu --amount AMOUNT
                                  [--priority low|normal|high|critical]
    grid resource-sharing status
    grid resource-sharing release ALLOCATION_ID

Every command takes ``--config/-c`` and ``--json``. ``request`` spreads the amount over the
nodes with the most room (memory: what the live agents report, within each node's
``resource_sharing`` limits and Ray's own accounting; cpu/gpu: what Ray has free on the Ray nodes
that stand for mesh nodes), never on NODE itself, and the reservation expires after
``execution.resource_sharing.allocation_timeout_minutes``. ``status`` first releases expired
reservations, then lists the others and each node's utilisation. Memory amounts are GB when
plain numbers ("10.0" = 10 GiB), or sizes ("512MiB"); they print as every command prints sizes,
"512.00 MiB" (``mesh/units.py``).

Errors follow ``mesh/cli/``: one red line on stderr and exit code 1, no traceback; without
Ray running that line says so.

Not here: reservations themselves (``mesh/balance/placement.py``, docs/placement.md), the pressure
score (``mesh/balance/pressure.py``), the mesh's stats (``mesh/client/drivers.py``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from mesh.balance.reservations import (
    PRIORITIES,
    RESOURCES,
    describe,
    reserved_on,
    show_amount,
)
from mesh.cli.common import (
    STATE_STYLE,
    GridError,
    InOrder,
    config_option,
    echo_json,
    human,
    line,
    load,
    ok,
    out,
)
from mesh.client import MeshClient
from mesh.config import ClusterConfig
from mesh.errors import MeshError
from mesh.units import parse_size


@click.group("resource-sharing", cls=InOrder)
def resource_sharing() -> None:
    """Reserve worker resources with Ray placement groups, watch and release them."""


TYPES = RESOURCES  # what --type takes


# --- helpers ------------------------------------------------------------------------------------


show = show_amount  # "1.50 GiB", "2"
what = describe  # "1.50 GiB of memory", "1 CPU", "2.5 CPUs"


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def _enabled(cfg: ClusterConfig) -> bool:
    return cfg.execution.resource_sharing.get("enabled", True) is not False


def _check_node(cfg: ClusterConfig, node: str) -> None:
    names = [n.name for n in cfg.nodes]
    if node in names or node == cfg.master_name():
        return
    raise GridError(f"unknown node {node!r} (known: {', '.join(names)}; see {cfg.source})",
                    node=node)


def _parse_amount(resource: str, value: str) -> float:
    if resource == "memory":
        nbytes = parse_size(value, default_unit="GB")
        if nbytes <= 0:
            raise GridError(f"--amount: the memory to reserve must be more than 0, got {value!r}")
        return nbytes
    try:
        amount = float(value)
    except ValueError:
        raise GridError(f"--amount: expected a number of {resource.upper()}s, got {value!r}") from None
    if not math.isfinite(amount) or amount <= 0:
        raise GridError(f"--amount: expected a number of {resource.upper()}s > 0, got {value!r}")
    return amount


def _placement(cfg: ClusterConfig) -> Any:
    from mesh.balance.placement import Placement

    return Placement(cfg)


# --- request ------------------------------------------------------------------------------------


@resource_sharing.command("request")
@config_option
@click.option("--node", "-n", required=True, help="the node to reserve resources for")
@click.option("--type", "-t", "resource", required=True, type=click.Choice(TYPES),
              help="what to reserve")
@click.option("--amount", "-a", required=True,
              help="memory: GB (10.0) or a size (512MiB); cpu/gpu: a number of units")
@click.option("--priority", "-p", default="normal", show_default=True,
              type=click.Choice(PRIORITIES))
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
def request(config_path: str | None, node: str, resource: str, amount: str, priority: str,
            as_json: bool) -> None:
    """Reserve AMOUNT of memory, CPUs or GPUs on the workers for NODE."""
    from mesh.balance.placement import reserve_for

    cfg = load(config_path)
    if not _enabled(cfg):
        raise GridError(f"resource sharing is disabled in {cfg.source} "
                        "(execution.resource_sharing.enabled: false)")
    _check_node(cfg, node)
    need = _parse_amount(resource, amount)
    with _placement(cfg) as placement:
        stats_nodes = None
        if resource == "memory":
            with MeshClient(cfg) as client:
                stats_nodes = client.stats()["nodes"]
        res = reserve_for(placement, cfg, node, resource, need, stats_nodes, priority)
    if as_json:
        echo_json(_as_dict(res, time.time()))
        return
    ok(f"Reserved {what(resource, res.amount)} for {node} (priority {priority})")
    line(f"Allocation ID: {res.id}")
    for (target, part), ray_node in zip(res.targets, res.bundle_nodes or ("",) * len(res.targets)):
        line(f"Target: {target}  {show(resource, part)}"
              + (f"  (Ray node {ray_node[:8]})" if ray_node else ""))
    if res.expires is not None:
        line(f"Expires: in {duration(res.expires - time.time())} "
              f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(res.expires))})")


def _as_dict(r: Any, now: float) -> dict[str, Any]:
    return {
        "id": r.id, "source": r.source, "targets": [[t, a] for t, a in r.targets],
        "resource": r.resource, "amount": r.amount, "priority": r.priority, "kind": r.kind,
        "block": r.block, "created": r.created, "expires": r.expires,
        "age_s": round(r.age_s(now), 3),
        "expires_in_s": None if r.expires is None else round(r.expires - now, 3),
        "pg_id": r.pg_id, "state": r.state, "ray_nodes": list(r.bundle_nodes),
    }


# --- status -------------------------------------------------------------------------------------


def _node_rows(cfg: ClusterConfig, stats_nodes: list[dict], ray_nodes: dict[str, dict],
               reservations: list[Any]) -> list[dict[str, Any]]:
    from mesh.balance.pressure import NodeLoad

    held = reserved_on(reservations, "memory", ("request", "block"))
    rows = []
    names = [n.name for n in cfg.nodes]
    names += [n["node"] for n in stats_nodes if n["node"] not in names]
    by_name = {n["node"]: n for n in stats_nodes}
    for name in names:
        n = by_name.get(name)
        up = n is not None and n["state"] != "down"
        # the worse of the agent's share and the host, as `grid rebalance` judges a node
        load = NodeLoad.from_stats(n) if up else None
        host_total = load.host_total if load else 0
        host_used = load.host_used if host_total else None
        pressure = load.pressure if load else None
        rows.append({
            "node": name,
            "state": n["state"] if n is not None else "down",
            "used": n["used"] if up else None,
            "capacity": n["capacity"] if up else None,
            "pressure": None if pressure is None else round(pressure, 3),
            "room": n["room"] if up else None,
            "host_used": host_used,
            "host_total": host_total or None,
            "reserved": held.get(name, 0),
            "ray_node": ray_nodes[name]["node_id"] if name in ray_nodes else None,
        })
    return rows


@resource_sharing.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
def status(config_path: str | None, as_json: bool) -> None:
    """Release expired reservations, then show the others and each node's utilisation."""
    cfg = load(config_path)
    with _placement(cfg) as placement:
        released = placement.sweep_expired()
        reservations = placement.reservations()
        ray_nodes = placement.ray_nodes()
        ray_address = placement.gcs_address or cfg.ray_address
    now = time.time()
    stats_nodes = None
    unavailable = ""
    try:
        with MeshClient(cfg) as client:
            stats_nodes = client.stats()["nodes"]
    except MeshError as exc:
        unavailable = str(exc)
    rows = _node_rows(cfg, stats_nodes, ray_nodes, reservations) if stats_nodes is not None else []

    if as_json:
        echo_json({
            "cluster": cfg.name, "sharing_enabled": _enabled(cfg), "ray_address": ray_address,
            "released": [r.id for r in released],
            "reservations": [_as_dict(r, now) for r in reservations],
            "nodes": rows if stats_nodes is not None else None,
            "nodes_unavailable": unavailable or None,
        })
        return

    line("Resource Sharing Status")
    line(f"Sharing Enabled: {'Yes' if _enabled(cfg) else 'No'}")
    line(f"Ray: {ray_address} ({len(ray_nodes)} of {len(cfg.nodes)} mesh nodes have a Ray node)")
    if released:
        line(f"Released {len(released)} expired reservation{'s' if len(released) != 1 else ''}: "
              + ", ".join(r.id for r in released))
    out.print()

    if reservations:
        table = Table(title="Active Allocations")
        for col, just in [("ID", "left"), ("Source", "left"), ("Target", "left"),
                          ("Resource", "left"), ("Amount", "right"), ("Priority", "left"),
                          ("Age", "right"), ("Expires in", "right")]:
            table.add_column(col, justify=just, no_wrap=col == "ID")
        for r in reservations:
            if len(r.targets) == 1:
                target = r.targets[0][0]
            else:
                target = ", ".join(f"{t} ({show(r.resource, a)})" for t, a in r.targets)
            label = r.resource.upper() + (f" (block {r.block})" if r.kind == "block" else "")
            left = r.expires_in_s(now)
            table.add_row(escape(r.id), escape(r.source), escape(target), escape(label),
                          show(r.resource, r.amount), r.priority, duration(r.age_s(now)),
                          "never" if left is None else duration(left))
        out.print(table)
    else:
        line("No active allocations")
    out.print()

    if stats_nodes is None:
        line(f"Node utilisation unavailable: {unavailable}")
        return
    table = Table(title="Node Utilization")
    for col, just in [("Node", "left"), ("State", "left"), ("Used / Capacity", "right"),
                      ("Pressure", "right"), ("Room", "right"), ("Host memory", "right"),
                      ("Reserved here", "right"), ("Ray node", "left")]:
        table.add_column(col, justify=just)
    for row in rows:
        style = STATE_STYLE.get(row["state"], "")
        used = ("-" if row["used"] is None
                else f"{human(row['used'])} / {human(row['capacity'])}")
        host = ("-" if row["host_total"] is None
                else f"{human(row['host_used'])} / {human(row['host_total'])}")
        table.add_row(
            escape(row["node"]), f"[{style}]{row['state']}[/{style}]", used,
            "-" if row["pressure"] is None else f"{row['pressure']:.2f}",
            human(row["room"]), host, human(row["reserved"]) if row["reserved"] else "-",
            "yes" if row["ray_node"] else "no",
        )
    out.print(table)


# --- release ------------------------------------------------------------------------------------


@resource_sharing.command("release")
@config_option
@click.argument("allocation_id")
@click.option("--json", "as_json", is_flag=True, help="one JSON document for scripts")
def release(config_path: str | None, allocation_id: str, as_json: bool) -> None:
    """Release a reservation (its id is in `grid resource-sharing status`)."""
    cfg = load(config_path)
    with _placement(cfg) as placement:
        res = placement.release(allocation_id)
    if as_json:
        echo_json({"id": res.id, "released": True})
        return
    ok(f"Released {res.id}: {what(res.resource, res.amount)} on "
        + ", ".join(t for t, _ in res.targets))
