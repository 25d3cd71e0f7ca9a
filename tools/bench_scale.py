"""The ``scale`` mode of tools/bench.py: many agents on this machine (issue 14, item 6).

    python tools/bench.py scale [--agents 100] [--steady-s 300] [--blocks 100000] [--settle-s 20]
                                [--heartbeat-interval S] [--intake PER_S]
                                [--host-intake PER_S] [--json]

``--heartbeat-interval S`` sets the cluster's ``heartbeat_interval_s`` to S, ``suspect_after_s`` to
3S and ``dead_after_s`` to 6S (the defaults' ratios); ``--intake`` sets
``heartbeat_intake_per_s`` (0: no stretch), ``--host-intake`` ``heartbeat_host_intake_per_s``
(what all the agents of this machine take in together; 0: no such bound);
``heartbeat_interval_s``, ``heartbeat_intake_per_s`` and ``heartbeat_host_intake_per_s`` in the
result say which ran.

Writes a cluster file of ``--agents`` nodes on 127.0.1.1, .2, ... (memory_gb 0.05, a 16 MiB host
reserve), starts them as ``grid agents start`` does (``mesh/nodes/local.py``: ``start_s``), then:

- ``converge_s``: from the moment every agent has answered a ping (``start`` returned) until
  every agent's NODES table lists all ``--agents`` nodes alive, with the same incarnation of each
  in every table (polled every 50 ms over one DEALER per agent);
- ``false_suspects``: for ``--steady-s`` seconds the tables are polled every second; every
  (observer, node) pair seen suspect or dead is counted (no agent stops meanwhile, so every one
  is false). ``agent_cpu_percent`` is the agents' mean CPU use over that time (psutil);
  ``beat_s`` the median interval the agents announced in the last poll (past
  ``mesh.heartbeat_intake_per_s`` they stretch it: ``mesh/membership.py`` ``stretched_interval``);
- gossip bytes: once the records learned at start are no longer recent (``CHANGE_RELAY_S``,
  ``mesh/membership.py``), this process subscribes to every agent's gossip PUB for
  ``GOSSIP_WINDOW_S`` (at most half of ``--steady-s``) and counts the heartbeat bytes each publishes per second (``heartbeat_bytes``: their mean size).
  A PUB sends each heartbeat once to each of the other ``N - 1`` agents, which each take it in:
  ``gossip_bytes_per_agent_s`` = bytes published per agent per second x (N - 1), what one agent
  sends (and, symmetrically, receives) per second;
- ``stats_s``: ``MeshClient.stats()`` (STATS to every live agent in one batch), the median of 3;
  ``stats_cli_s``: ``grid memory stats --json`` as a subprocess (Python start-up included),
  the median of 3;
  ``place_s``: the median of 5 ``allocate`` calls with default placement (the client picks the
  node with the most room) and their frees;
- ``list_100k_s``: ``--blocks`` lazy 1-byte blocks spread over the agents (made with one
  client; ``--settle-s`` (20) later, once the agents are done with them), then
  ``grid memory list-blocks --json`` as a subprocess, the median of
  ``LIST_RUNS`` (3) one after another (``list_runs_s`` each; ``list_rows`` the fewest rows of
  one), and ``list_table_s``: the same listing rendered as the table, the median of 3
  (``load_listing``: the 1-minute load average as the listings begin).

Stops every agent it started at the end (``stop_s``: ``mesh/nodes/local.py`` ``stop``). Other
benchmarks and tests on the machine change every figure: quote the load (``load_1m``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import psutil
import yaml
import zmq

from mesh import protocol as P
from mesh.client import MeshClient
from mesh.config import load_cluster_config
from mesh.membership import CHANGE_RELAY_S
from mesh.nodes import local
from bench_ports import free_port as _free_port

GOSSIP_WINDOW_S = 5.0
POLL_S = 0.05
CONVERGE_TIMEOUT_S = 60.0
LIST_RUNS = 3  # listings timed, one after another: the median is reported


def add_parser(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser("scale", help="many agents on this machine: membership convergence, "
                        "false suspects, gossip bytes, stats and a large listing")
    sc.add_argument("--agents", type=int, default=100)
    sc.add_argument("--steady-s", type=float, default=300.0,
                    help="how long the membership must stay converged (seconds)")
    sc.add_argument("--blocks", type=int, default=100_000, help="blocks listed (list_100k_s)")
    sc.add_argument("--settle-s", type=float, default=20.0,
                    help="seconds between making the blocks and listing them")
    sc.add_argument("--heartbeat-interval", type=float, default=None, metavar="S",
                    help="mesh.heartbeat_interval_s of the cluster (suspect after 3x, dead "
                    "after 6x, as the defaults 0.5/1.5/3.0); default: the cluster defaults")
    sc.add_argument("--intake", type=float, default=None, metavar="PER_S",
                    help="mesh.heartbeat_intake_per_s of the cluster (0: agents never stretch "
                    "their heartbeat interval); default: the cluster default")
    sc.add_argument("--host-intake", type=float, default=None, metavar="PER_S",
                    help="mesh.heartbeat_host_intake_per_s of the cluster (0: no bound for the "
                    "agents of one machine together); default: the cluster default")
    sc.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def write_cluster(tmp: Path, n: int, heartbeat_s: float | None = None,
                  intake_per_s: float | None = None, host_intake_per_s: float | None = None
                  ) -> Path:
    hosts = [f"127.0.1.{i + 1}" for i in range(n)]
    cfg = {
        "name": f"scale-{os.getpid()}-{n}",
        "nodes": [{"name": f"s{i + 1}", "host": h, "mesh_port": _free_port(h), "memory_gb": 0.05}
                  for i, h in enumerate(hosts)],
        "mesh": {"host_reserve_bytes": "16MiB", "state_dir": str(tmp / "state")},
    }
    if heartbeat_s is not None:
        cfg["mesh"].update(heartbeat_interval_s=heartbeat_s, suspect_after_s=3 * heartbeat_s,
                           dead_after_s=6 * heartbeat_s)
    if intake_per_s is not None:
        cfg["mesh"]["heartbeat_intake_per_s"] = intake_per_s
    if host_intake_per_s is not None:
        cfg["mesh"]["heartbeat_host_intake_per_s"] = host_intake_per_s
    path = tmp / "scale.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Tables:
    """One DEALER per agent asking NODES; ``poll`` returns {agent: its table rows} for those
    that answered within ``timeout_s``."""

    def __init__(self, addresses: list[str]):
        self.ctx = zmq.Context.instance()
        self.socks = {}
        for address in addresses:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            self.socks[sock] = address
        self.request_id = 0

    def poll(self, timeout_s: float = 2.0) -> dict[str, list[dict]]:
        self.request_id += 1
        for sock in self.socks:
            sock.send_multipart([msgpack.packb([P.VERSION, P.NODES, self.request_id, {}])])
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        out: dict[str, list[dict]] = {}
        deadline = time.monotonic() + timeout_s
        while len(out) < len(self.socks) and time.monotonic() < deadline:
            for sock, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                while True:
                    try:
                        reply = P.parse_reply(sock.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    if reply.request_id == self.request_id and reply.ok:
                        out[self.socks[sock]] = reply.body["nodes"]
        return out

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)


def converged(tables: dict[str, list[dict]], n: int) -> bool:
    if len(tables) < n:
        return False
    views = set()
    for rows in tables.values():
        view = frozenset((r["node"], r["incarnation"]) for r in rows if r["state"] == "alive")
        if len(view) != n:
            return False
        views.add(view)
    return len(views) == 1


def gossip_rates(gossip_addresses: list[str], window_s: float) -> tuple[float, float]:
    """(heartbeat bytes published per agent per second, mean heartbeat bytes)."""
    ctx = zmq.Context.instance()
    socks = []
    for address in gossip_addresses:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, P.HEARTBEAT_TOPIC)
        sock.connect(address)
        socks.append(sock)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    time.sleep(1.0)  # links up, then drop what came meanwhile
    for sock in socks:
        while sock.poll(0):
            sock.recv_multipart()
    total = beats = 0
    deadline = time.monotonic() + window_s
    while (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(max(1, int(left * 1000))):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                total += sum(len(f) for f in frames)
                beats += 1
    for sock in socks:
        sock.close(0)
    return total / len(socks) / window_s, total / max(1, beats)


def _say(what: str, result: dict) -> None:
    """Progress on stderr (a run at 100 agents takes minutes)."""
    print(f"scale: {what}: {json.dumps(result)}", file=sys.stderr, flush=True)


def _median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _grid(*args: str, config: Path, timeout_s: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mesh.cli", *args, "-c", str(config)],
                         capture_output=True, text=True, timeout=timeout_s)
    return time.perf_counter() - t0, run


def scale(args: argparse.Namespace) -> dict:
    n = args.agents
    with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
        path = write_cluster(Path(tmp), n, args.heartbeat_interval, args.intake, args.host_intake)
        cfg = load_cluster_config(path)
        agents, _ = local.local_agents(cfg)
        result: dict = {"bench": "scale", "agents": n,
                        "heartbeat_interval_s": cfg.mesh.heartbeat_interval_s,
                        "heartbeat_intake_per_s": cfg.mesh.heartbeat_intake_per_s,
                        "heartbeat_host_intake_per_s": cfg.mesh.heartbeat_host_intake_per_s}
        tables = Tables([node.data_address for node in cfg.nodes])
        try:
            t0 = time.perf_counter()
            outcomes = local.start(cfg, agents, timeout_s=max(60.0, n * 1.5))
            started = time.perf_counter()
            result.update(start_s=round(started - t0, 2), started=sum(o.ok for o in outcomes))
            if result["started"] != n:
                result["error"] = [o.message for o in outcomes if not o.ok][:3]
                return result
            result["converge_s"] = None  # not within CONVERGE_TIMEOUT_S
            while time.perf_counter() - started < CONVERGE_TIMEOUT_S:
                if converged(tables.poll(), n):
                    result["converge_s"] = round(time.perf_counter() - started, 2)
                    break
                time.sleep(POLL_S)
            _say("converged", result)
            result.update(_steady(cfg, agents, tables, n, args.steady_s))
            _say("steady", result)
            result.update(_client_side(path, n, args.blocks, args.settle_s))
        finally:
            tables.close()
            t1 = time.perf_counter()
            local.stop(agents)
            result["stop_s"] = round(time.perf_counter() - t1, 2)
    result["load_1m"] = round(os.getloadavg()[0], 2)
    return result


def _steady(cfg, agents, tables: Tables, n: int, steady_s: float) -> dict:
    procs = [psutil.Process(a.pid()) for a in agents]
    cpu0 = [p.cpu_times() for p in procs]
    t0 = time.perf_counter()
    window_s = min(GOSSIP_WINDOW_S, max(1.0, steady_s / 2))
    # gossip is counted once the records every agent learned at start are no longer "recent"
    gossip_at = min(steady_s - window_s, CHANGE_RELAY_S + 1.0)
    per_agent_s = beat_bytes = None
    suspects: set[tuple[str, str]] = set()
    polls = unanswered = 0
    announced: list[int] = []  # beat_ms of every row of the last poll (0: not stretched)
    while time.perf_counter() - t0 < steady_s or per_agent_s is None:
        if per_agent_s is None and time.perf_counter() - t0 >= gossip_at:
            per_agent_s, beat_bytes = gossip_rates([node.gossip_address for node in cfg.nodes],
                                                   window_s)
        got = tables.poll()
        polls += 1
        unanswered += n - len(got)
        announced = [r.get("beat_ms") or 0 for rows in got.values() for r in rows] or announced
        for observer, rows in got.items():
            suspects.update((observer, r["node"]) for r in rows if r["state"] != "alive")
            if len(rows) != n:
                suspects.add((observer, "<missing>"))
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - t0) % 1.0))
    wall = time.perf_counter() - t0
    cpu = [sum(p.cpu_times()[:2]) - sum(c[:2]) for p, c in zip(procs, cpu0)]
    return {"false_suspects": len(suspects), "steady_s": round(wall, 1), "table_polls": polls,
            "unanswered_polls": unanswered,
            "beat_s": round(statistics.median(announced) / 1000 or cfg.mesh.heartbeat_interval_s,
                            3) if announced else None,
            "agent_cpu_percent": round(100 * statistics.mean(cpu) / wall, 2),
            "heartbeat_bytes": round(beat_bytes),
            "published_bytes_per_agent_s": round(per_agent_s),
            "gossip_bytes_per_agent_s": round(per_agent_s * (n - 1))}


def make_blocks(addresses: list[str], blocks: int, window: int = 64,
                timeout_s: float = 600.0) -> int:
    """``blocks`` lazy 1-byte blocks spread evenly over ``addresses``: raw ALLOCs, ``window``
    in flight per agent (the client's allocate asks one at a time); the count made."""
    ctx = zmq.Context.instance()
    todo = {}
    poller = zmq.Poller()
    for i, address in enumerate(addresses):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        todo[sock] = [blocks // len(addresses) + (i < blocks % len(addresses)), 0]  # to send, out
        poller.register(sock, zmq.POLLIN)
    made, deadline = 0, time.monotonic() + timeout_s
    try:
        while any(left or out for left, out in todo.values()) and time.monotonic() < deadline:
            for sock, state in todo.items():
                while state[0] and state[1] < window:
                    sock.send(msgpack.packb([P.VERSION, P.ALLOC, 1, {"size": 1, "lazy": True}]))
                    state[0] -= 1
                    state[1] += 1
            for sock, _ in poller.poll(1000):
                while True:
                    try:
                        reply = P.parse_reply(sock.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    todo[sock][1] -= 1
                    made += reply.ok
    finally:
        for sock in todo:
            sock.close(0)
    return made


def _client_side(config: Path, n: int, blocks: int, settle_s: float) -> dict:
    out: dict = {}
    with MeshClient(config) as client:
        stats = client.stats()
        out["stats_nodes"] = len(stats.get("nodes", stats)) if isinstance(stats, dict) else 0
        out["stats_s"] = round(_median_s(client.stats, 3), 3)

        def place() -> None:
            client.free(client.allocate(1024))

        out["place_s"] = round(_median_s(place, 5), 3)
        addresses = [node.address for node in client.nodes()]
    out["stats_cli_s"] = round(statistics.median(
        _grid("memory", "stats", "--json", config=config)[0] for _ in range(3)), 2)
    t0 = time.perf_counter()
    out["blocks_made"] = make_blocks(addresses, blocks)
    out["allocate_s"] = round(time.perf_counter() - t0, 1)
    time.sleep(settle_s)  # the agents are done with the allocations' aftermath
    out["load_listing"] = round(os.getloadavg()[0], 2)
    runs = [_grid("memory", "list-blocks", "--json", config=config) for _ in range(LIST_RUNS)]
    out["list_100k_s"] = round(statistics.median(s for s, _ in runs), 2)
    out["list_runs_s"] = [round(s, 2) for s, _ in runs]
    out["list_rows"] = min(len(json.loads(run.stdout)["blocks"]) if run.returncode == 0 else -1
                           for _, run in runs)
    runs = [_grid("memory", "list-blocks", config=config) for _ in range(LIST_RUNS)]
    out["list_table_s"] = round(statistics.median(s for s, _ in runs), 2)
    out["list_table_exit"] = max(run.returncode for _, run in runs)
    return out
