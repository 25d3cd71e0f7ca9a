"""``grid rebalance [--watch] [--json]`` and ``grid agents drain NODE [--json]``: rendering only.

The work is in ``mesh/balance/rebalance.py`` (planning, moves, reservations) and ``mesh/balance/placement.py``
(Ray). Both commands reserve the target's memory through Ray before each move unless told
``--no-ray``; without Ray running they stop with one line saying so.

With ``--json`` a pass is one JSON document (``pass_doc``: ``pressure`` before and after per
node, the ``moves`` carried out, the ``planned`` ones of a dry run, ``unplaced`` blocks,
``released`` reservations, ``master``); ``drain`` adds ``node`` and ``moved``. ``--watch
--json`` prints one document per pass, each on one line (JSON Lines), and a pass that failed as
``{"pass": N, "error": {...}}``. What still fails at the end (moves, blocks left on a drained
node) is the one error line of ``mesh/cli/``, after the document.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import click
from rich.markup import escape
from rich.table import Table

from mesh.cli.common import GridError, config_option, echo_json, err, load, out
from mesh.client import MeshClient
from mesh.config import ClusterConfig
from mesh.errors import MeshError
from mesh.balance.rebalance import MoveResult, PassReport, Rebalancer
from mesh.units import format_bytes


@contextmanager
def _placement(config: ClusterConfig, use_ray: bool) -> Iterator[Any]:
    if not use_ray:
        yield None
        return
    from mesh.balance.placement import Placement

    with Placement(config) as placement:
        yield placement


def _print_move(result: MoveResult) -> None:
    m = result.move
    what = f"{m.block} ({format_bytes(m.size)}) {m.source} → {m.target}"
    if result.ok:
        extra = f", reserved as {result.reservation}" if result.reservation else ""
        out.print(f"[green]✓[/green] moved {what} in {result.seconds:.2f} s{extra}",
                  highlight=False)
    else:
        err.print(f"[red]✗[/red] {escape(what)}: {escape(result.error)}", highlight=False,
                  soft_wrap=True)


def _pressure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"  # "-": not alive, no figures


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _print_plan(report: PassReport, dry_run: bool) -> None:
    plan = report.plan
    table = Table(title="Memory pressure" + (" (planned)" if dry_run else ""))
    for col in ("Node", "Before", "After"):
        table.add_column(col, justify="left" if col == "Node" else "right")
    for node in sorted(plan.before):
        table.add_row(node, _pressure(plan.before[node]), _pressure(plan.after[node]))
    out.print(table)
    if dry_run:
        for m in plan.moves:
            out.print(f"would move {m.block} ({format_bytes(m.size)}) {m.source} → {m.target}",
                      highlight=False)
    for block, size, source in plan.unplaced:
        err.print(f"[yellow]![/yellow] no node has room for {block} ({format_bytes(size)}) "
                  f"from {source}", highlight=False, soft_wrap=True)
    for rid in report.released:
        out.print(f"released reservation {rid} (its block is gone or it expired)",
                  highlight=False)
    master = report.master
    if master:
        line = f"master {master['node']}: pressure {master['pressure']:.2f}"
        if master.get("request") not in (None, ""):
            line += f", memory reserved on workers: {master['request']}"
        out.print(line, highlight=False)
    if not plan.moves and not dry_run:
        out.print("nothing to move: no node is over its threshold" if not plan.unplaced
                  else "nothing could be moved", highlight=False)


def _one_pass(rebalancer: Rebalancer, drain: str | None, dry_run: bool,
              as_json: bool = False) -> PassReport:
    report = rebalancer.run_once(drain=drain, dry_run=dry_run)
    if not as_json:
        _print_plan(report, dry_run)
    return report


def pass_doc(report: PassReport, dry_run: bool) -> dict[str, Any]:
    """A pass for ``--json``: sizes in bytes, times in seconds."""
    plan = report.plan
    return {
        "dry_run": dry_run,
        "pressure": {node: {"before": _rounded(plan.before[node]),
                            "after": _rounded(plan.after[node])} for node in sorted(plan.before)},
        "moves": [{"block": r.move.block, "size": r.move.size, "source": r.move.source,
                   "target": r.move.target, "ok": r.ok, "seconds": round(r.seconds, 3),
                   "reservation": r.reservation or None, "error": r.error or None}
                  for r in report.results],
        "planned": [{"block": m.block, "size": m.size, "source": m.source, "target": m.target}
                    for m in plan.moves] if dry_run else [],
        "unplaced": [{"block": block, "size": size, "source": source}
                     for block, size, source in plan.unplaced],
        "released": list(report.released),
        "master": report.master or None,
    }


json_option = click.option("--json", "as_json", is_flag=True,
                           help="one JSON document for scripts (with --watch: one line a pass)")


@click.command()
@config_option
@click.option("--watch", is_flag=True, help="keep rebalancing every rebalance_interval_seconds")
@click.option("--interval", type=float, default=None,
              help="seconds between passes with --watch (default: the config's "
              "execution.resource_sharing.rebalance_interval_seconds)")
@click.option("--passes", type=click.IntRange(min=1), default=None,
              help="with --watch: stop after this many passes")
@click.option("--dry-run", is_flag=True, help="show what would move, move nothing")
@click.option("--no-ray", "no_ray", is_flag=True,
              help="move without reserving the memory through Ray")
@json_option
def rebalance(config_path: str | None, watch: bool, interval: float | None,
              passes: int | None, dry_run: bool, no_ray: bool, as_json: bool) -> None:
    """Move blocks off nodes over memory_pressure_high until they are under
    memory_pressure_low; reserve room on the master's behalf when the master is over."""
    config = load(config_path)
    every = interval if interval is not None else config.execution.rebalance_interval_s
    if every <= 0:
        raise GridError(f"--interval must be > 0, got {every}")
    stop = threading.Event()
    if watch:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    failed = 0
    with MeshClient(config) as client, _placement(config, not (no_ray or dry_run)) as placement:
        rebalancer = Rebalancer(client, config, placement,
                                on_move=None if as_json else _print_move)
        done = 0
        while True:
            try:
                report = _one_pass(rebalancer, None, dry_run, as_json)
                failed += len(report.failed)
                if as_json:
                    doc = pass_doc(report, dry_run)
                    echo_json({"pass": done + 1, **doc} if watch else doc, lines=watch)
            except MeshError as exc:
                if not watch:
                    raise
                # a watch outlives a bad moment (agents restarting, Ray busy): say so, go on
                if as_json:
                    echo_json({"pass": done + 1, "error": {
                        "type": type(exc).__name__, "message": str(exc), "node": exc.node}},
                        lines=True)
                else:
                    err.print(f"[yellow]![/yellow] pass {done + 1} stopped: {escape(str(exc))}",
                              highlight=False, soft_wrap=True)
            done += 1
            if not watch or (passes is not None and done >= passes) or stop.wait(every):
                break
    if failed:
        raise GridError(f"{failed} move(s) failed; their blocks are intact where they were")


@click.command()
@config_option
@click.argument("node")
@click.option("--no-ray", "no_ray", is_flag=True,
              help="move without reserving the memory through Ray")
@json_option
def drain(config_path: str | None, node: str, no_ray: bool, as_json: bool) -> None:
    """Move every block off NODE (for maintenance), keeping block ids and keys."""
    config = load(config_path)
    with MeshClient(config) as client, _placement(config, not no_ray) as placement:
        rebalancer = Rebalancer(client, config, placement,
                                on_move=None if as_json else _print_move)
        report = _one_pass(rebalancer, node, False, as_json)
    left = len(report.failed) + len(report.plan.unplaced)
    if as_json:
        echo_json({"node": node, "moved": len(report.results) - len(report.failed),
                   **pass_doc(report, False)})
    if left:
        raise GridError(f"{left} block(s) are still on {node}", node=node)
    if as_json:
        return
    out.print(f"{node} holds no blocks now ({len(report.results)} moved)", highlight=False)
