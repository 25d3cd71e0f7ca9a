"""``grid top``: a live view of every node, refreshed from the agents each interval.

    grid top [-c FILE] [--interval 1.0] [--once] [--json] [--count N] [--node NAME]...

Each sample asks the membership view for every node's state (NODES, as ``grid agents status``
does) and every alive or suspect agent for its STATS, all at once in one batch bounded by one
timeout, so one silent agent costs one timeout, not one per node. The agents' counters
(``ops`` in a STATS reply: requests, errors, bytes in and out, since the agent started) are
cumulative: rates come from two samples, over the agent's own ``uptime_s`` between the two
replies when it sends one (else this process's clock). A node whose agent restarted between two
samples (a new incarnation) or whose agent sends no ``ops`` (an older agent) has no rates: "-".

States: alive, suspect, dead (heartbeats), down (in the cluster file, no agent has heard of it),
and unreachable (the membership view still counts it but its agent did not answer the STATS
request in time): an unreachable node keeps its last figures, without rates.

Modes: the live table (``rich.live.Live``; on a pipe rich prints the last table only) until
Ctrl-C or ``--count`` samples; ``--json``: one JSON line per sample (JSON Lines); ``--once``:
one sample (two readings one interval apart), as a table or, with ``--json``, one JSON document.
Ctrl-C is the normal way out of the live and JSON Lines modes: exit 0, the terminal restored; it
interrupts ``--once`` like any other command (exit 130).

``rates`` (two readings in, one row out) and ``node_order`` are pure; ``take`` does the I/O.

Not here: the counters themselves (``agents/info.py``), the membership rules
(``mesh/membership.py``), ``grid memory stats`` and ``grid agents status``
(``mesh/cli/memory.py``, ``mesh/cli/agents.py``).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import click
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mesh import protocol as P
from mesh.cli.common import STATE_STYLE, GridError, config_option, echo_json, human, load, out
from mesh.client import MeshClient
from mesh.client.batch import Batch, Call
from mesh.config import ClusterConfig
from mesh.errors import AuthenticationError, Forbidden, NodeUnavailable
from mesh.membership import ALIVE, DOWN, SUSPECT

UNREACHABLE = "unreachable"  # counted by the membership view, silent to our STATS request
STYLES = {**STATE_STYLE, UNREACHABLE: "yellow"}
GB = 1e9  # GB/s as network people count it (decimal)


@dataclass(frozen=True)
class Reading:
    """One node at one moment: its state, and the STATS reply it sent (None: no figures)."""

    name: str
    address: str
    state: str
    stats: dict[str, Any] | None = None
    fresh: bool = False  # ``stats`` came with this sample (not kept from an earlier one)


@dataclass
class Sample:
    wall_s: float  # time.time() when it was taken
    mono_s: float  # time.monotonic()
    nodes: dict[str, Reading] = field(default_factory=dict)


def node_order(cfg: ClusterConfig, names: list[str]) -> list[str]:
    """The cluster file's nodes in its order, then the nodes heard by gossip only, sorted."""
    listed = [n.name for n in cfg.nodes]
    return [n for n in listed if n in names] + sorted(set(names) - set(listed))


def _delta(prev: dict[str, Any], cur: dict[str, Any], name: str) -> int | None:
    a, b = prev.get(name), cur.get(name)
    if not isinstance(a, int) or not isinstance(b, int) or b < a:
        return None
    return b - a


def rates(prev: Reading | None, cur: Reading, elapsed_s: float) -> dict[str, Any]:
    """One JSON row for ``cur``; rates from ``prev`` (the same node one sample earlier).
    ``elapsed_s``: this process's time between the two samples, used when the agent sends
    no ``uptime_s``."""
    s = cur.stats or {}
    ops = s.get("ops") if isinstance(s.get("ops"), dict) else None
    row: dict[str, Any] = {
        "node": cur.name, "address": cur.address, "state": cur.state,
        "used": s.get("used"), "capacity": s.get("capacity"), "blocks": s.get("blocks"),
        "ops_per_s": None, "in_bytes_per_s": None, "out_bytes_per_s": None,
        "errors_per_s": None,
        "errors": ops.get("errors") if ops else None,
        "requests": ops.get("requests") if ops else None,
    }
    p = prev.stats if prev is not None and prev.stats is not None else None
    if not cur.fresh or p is None or ops is None or not isinstance(p.get("ops"), dict) \
            or p.get("incarnation") != s.get("incarnation"):
        return row
    dt = elapsed_s
    up_a, up_b = p.get("uptime_s"), s.get("uptime_s")
    if isinstance(up_a, (int, float)) and isinstance(up_b, (int, float)) and up_b > up_a:
        dt = up_b - up_a
    if dt <= 0:
        return row
    for key, counter in (("ops_per_s", "requests"), ("in_bytes_per_s", "bytes_in"),
                         ("out_bytes_per_s", "bytes_out"), ("errors_per_s", "errors")):
        d = _delta(p["ops"], ops, counter)
        # whole bytes per second; requests and errors to the thousandth
        row[key] = None if d is None else round(d / dt, None if "bytes" in key else 3)
    return row


def take(client: MeshClient, cfg: ClusterConfig, timeout_s: float,
         last: Sample | None) -> Sample:
    """One sample of every node: states from the membership view, figures from STATS."""
    sample = Sample(time.time(), time.monotonic())
    try:
        heard = client.nodes()
    except NodeUnavailable:  # no agent answered: every node we knew is unreachable now
        heard = []
    core = client._core  # one batch of STATS to every agent (the client has no public call)
    asked = [n for n in heard if n.state in (ALIVE, SUSPECT)]
    calls = client._run(core.execute(Batch(
        [Call(n.address, P.STATS, {}) for n in asked], timeout_s=timeout_s, fail_fast=False,
    ))) if asked else []
    refused = next((c.error for c in calls
                    if isinstance(c.error, (AuthenticationError, Forbidden))), None)
    if refused is not None:  # the agent says no to this key: that is the answer
        raise refused
    replies = {c.address: c.result for c in calls if c.result is not None}
    for n in heard:
        rec = replies.get(n.address)
        if rec is not None:
            sample.nodes[n.name] = Reading(n.name, n.address, n.state, rec, fresh=True)
        elif n.state in (ALIVE, SUSPECT):
            before = last.nodes.get(n.name) if last is not None else None
            sample.nodes[n.name] = Reading(n.name, n.address, UNREACHABLE,
                                           before.stats if before is not None else None)
        else:
            sample.nodes[n.name] = Reading(n.name, n.address, n.state)
    for node in cfg.nodes:
        if node.name not in sample.nodes:
            before = last.nodes.get(node.name) if last is not None else None
            if before is not None and before.state != DOWN:
                sample.nodes[node.name] = Reading(node.name, before.address, UNREACHABLE,
                                                  before.stats)
            else:
                sample.nodes[node.name] = Reading(node.name, node.data_address, DOWN)
    return sample


def document(prev: Sample, cur: Sample, cfg: ClusterConfig,
             only: tuple[str, ...]) -> dict[str, Any]:
    """The ``--json`` document of ``cur`` (rates against ``prev``)."""
    elapsed = cur.mono_s - prev.mono_s
    names = [n for n in node_order(cfg, list(cur.nodes)) if not only or n in only]
    return {
        "time": round(cur.wall_s, 3),
        "interval_s": round(elapsed, 3),
        "nodes": [rates(prev.nodes.get(n), cur.nodes[n], elapsed) for n in names],
    }


def _num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _gb(v: float | None) -> str:
    return "-" if v is None else f"{v / GB:.3f}"


def table(doc: dict[str, Any], title: str, live: bool = True) -> Table:
    over = f"rates over {doc['interval_s']:.1f} s" if doc["interval_s"] else "rates next sample"
    t = Table(title=title, caption=time.strftime("%H:%M:%S", time.localtime(doc["time"]))
              + f", {over}" + ("; Ctrl-C quits" if live else ""))
    for col in ("Node", "State", "Used/Capacity", "Used %", "Blocks", "ops/s", "GB/s in",
                "GB/s out", "errors/s", "errors total"):
        t.add_column(col, justify="left" if col in ("Node", "State") else "right")
    for r in doc["nodes"]:
        used, cap = r["used"], r["capacity"]
        t.add_row(
            Text(r["node"]), Text(r["state"], style=STYLES.get(r["state"], "")),
            "-" if used is None else f"{human(used)} / {human(cap)}",
            "-" if used is None or not cap else f"{100 * used / cap:.1f}%",
            "-" if r["blocks"] is None else str(r["blocks"]),
            _num(r["ops_per_s"], 1), _gb(r["in_bytes_per_s"]), _gb(r["out_bytes_per_s"]),
            _num(r["errors_per_s"], 1), "-" if r["errors"] is None else str(r["errors"]),
        )
    return t


def _check_nodes(cfg: ClusterConfig, sample: Sample, only: tuple[str, ...]) -> None:
    unknown = [n for n in only if n not in sample.nodes]
    if unknown:
        known = ", ".join(node_order(cfg, list(sample.nodes))) or "none"
        raise GridError(f"unknown node {', '.join(map(repr, unknown))} (known: {known})")


@click.command("top")
@config_option
@click.option("--interval", "-i", "interval_s", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, help="seconds between samples")
@click.option("--once", is_flag=True, help="one sample (two readings one interval apart), then exit")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: one document with --once, else one line per sample (JSON Lines)")
@click.option("--count", type=click.IntRange(min=1), help="stop after N samples")
@click.option("--node", "-n", "only", multiple=True, help="only these nodes (repeatable)")
def top(config_path: str | None, interval_s: float, once: bool, as_json: bool,
        count: int | None, only: tuple[str, ...]) -> None:
    """A live view of every node: state, used memory, ops/s, GB/s in and out, errors."""
    cfg = load(config_path)
    if once:
        count = 1
    # a STATS is milliseconds of work: an agent silent for this long is shown unreachable
    timeout_s = min(cfg.mesh.connect_timeout_s, max(1.0, interval_s))
    with MeshClient(cfg) as client:
        if once:  # Ctrl-C interrupts it like any command
            _run(client, cfg, interval_s, timeout_s, 1, as_json, only, once=True)
            return
        with _ctrl_c_ends():
            _run(client, cfg, interval_s, timeout_s, count, as_json, only, once=False)


@contextmanager
def _ctrl_c_ends() -> Iterator[None]:
    """Ctrl-C is the normal way out of a live view: it ends the block quietly (exit 0). SIGINT
    raises ``KeyboardInterrupt`` inside, whatever handler ``mesh.cli.main`` set for other
    commands (which end with 130 on Ctrl-C)."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main_thread else None
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(client: MeshClient, cfg: ClusterConfig, interval_s: float, timeout_s: float,
         count: int | None, as_json: bool, only: tuple[str, ...], once: bool) -> None:
    prev = take(client, cfg, timeout_s, None)
    _check_nodes(cfg, prev, only)
    title = f"grid top: {cfg.name}"

    def samples():
        nonlocal prev
        n = 0
        due = prev.mono_s + interval_s
        while count is None or n < count:
            time.sleep(max(0.0, due - time.monotonic()))
            cur = take(client, cfg, timeout_s, prev)
            # a sample that took longer than the interval (a silent agent's timeout) is
            # followed by the next one at once, not by a burst that catches up
            due = max(due + interval_s, time.monotonic())
            yield document(prev, cur, cfg, only)
            prev, n = cur, n + 1

    if as_json:
        for doc in samples():
            if once:
                echo_json(doc)
            else:
                click.echo(json.dumps(doc, separators=(",", ":")))
        return
    if once:
        for doc in samples():
            out.print(table(doc, title, live=False))
        return
    first = document(prev, prev, cfg, only)
    with Live(table(first, title), console=out, auto_refresh=False,
              redirect_stdout=False, redirect_stderr=False) as live:
        for doc in samples():
            live.update(table(doc, title), refresh=True)
    if not out.is_terminal:  # on a terminal, Live ends its last frame with a new line itself
        out.line()
