#!/usr/bin/env python3
"""Benchmarks of the mesh, each against a baseline measured in the same run.

    python tools/bench.py transfer [--size 1GiB] [--runs 5] [--chunk 2MiB] [--window 8]
                                   [--secure] [--replicas N] [--stripe N] [--local] [--json]
    python tools/bench.py concurrent [--reads 16] [--size 64MiB] [--agents 4] [--runs 3] [--json]
    python tools/bench.py cli-memory [--size 2GiB] [--chunk 2MiB] [--window 8] [--json]
    python tools/bench.py move [--size 1GiB] [--runs 4] [--json]
    python tools/bench.py startup [--baseline-ref 65b4786] [--runs 15] [--json]
    python tools/bench.py key-race [--pairs 1000] [--json]
    python tools/bench.py listing [--blocks 100000] [--block-size 4KiB] [--json]
    python tools/bench.py read-rss [--reads 1000000] [--size 64KiB] [--window 64] [--json]
    python tools/bench.py checksum [--size 1GiB] [--runs 5] [--chunk 2MiB] [--json]
    python tools/bench.py small [--ops 20000] [--size 4KiB] [--batch 4096] [--runs 3] [--json]
    python tools/bench.py scale [--agents 100] [--steady-s 300] [--blocks 100000] [--json]
    python tools/bench.py report [--out docs/performance] [--quick] [--only NAME]... [--json]

``transfer`` starts one real ``mesh-agent`` on loopback, allocates one block of ``--size``, then
for each run writes the whole block from a warm client buffer and reads it back into another
warm buffer (``read_into``), over TCP (the agents serve no same-host path; ``--local``: they
do, and the client reads and writes the block in shared memory, ``mesh/localwire.py``, and
reports ``local_ops``). In the same process it measures the baseline: plain Python
``sendall`` of the same bytes in 4 MiB pieces over a loopback TCP socket to a second process that
``recv_into``s a warm buffer. Figures are medians over the runs, in GB/s (10**9 bytes/s), and
ratios against that baseline. With ``--json`` the last line printed is one JSON object.

``transfer --replicas N`` (N >= 2) starts N agents instead (127.0.0.1, .2, ...; all on this
machine, so with ``mesh.replica_spread: node``) and, in the same runs, writes and reads a second
block of the same size made with N copies (the primary, where the client writes and reads, on
the same agent as the one-copy block: it forwards every write to the other copies and answers
only once they have applied it). It adds ``replicated_write_gbps`` / ``replicated_read_gbps``
and ``replicated_write_ratio`` / ``replicated_read_ratio`` (N copies over one copy, medians of
the same runs), ``replica_nodes`` (the nodes ``stat`` says hold a current copy) and checks the
last read of each block byte for byte.

``cli-memory`` measures the memory of the ``grid`` client process itself: it writes a file of
``--size`` random bytes, starts one real agent with room for it, then runs ``grid memory store``
and ``grid memory retrieve -o FILE`` as subprocesses, sampling each one's RSS (with its children,
psutil) and the kernel's peak (VmHWM) every 20 ms until it exits. Baseline, in the same run:
the peak RSS of ``python -c "import mesh.cli"`` (what ``grid`` loads before it does anything).
GB/s are over each command's whole wall time, start-up included (``startup_s``: the wall time of
``grid --version``). The retrieved file is compared with the original by a streaming SHA-256.

``move`` starts two real agents (127.0.0.1 and 127.0.0.2), writes one block of ``--size`` on the
first, then moves it back and forth (``MeshClient.move``: agent to agent, xxh3 on both sides,
keys handed over, the source freed) ``--runs`` times, and reads it back once at the end to check
every byte. Baselines in the same run: the raw-socket ``sendall`` of ``transfer`` and the
client's own write of the same block over the network (the client never takes the same-host
path here). Every move lands in fresh memory on its target, page faults included; the first
one (``first_move_seconds``) also in a fresh agent process. ``move_gbps`` is the median over
every run, the first included; ``runs_seconds`` lists them. A third baseline,
``baseline_fresh_gbps`` (``ratio_to_fresh_baseline``), is the raw ``sendall`` into newly mapped
memory whose pages another thread backs meanwhile, as a move's target does: what any copy into
new memory can do on this machine. ``move_cpu_s`` is the CPU a move took, both agents together
(median), and ``cpu_bound_ratio_to_baseline`` the most that cost a byte allows here: the size
over ``move_cpu_s`` spread on every CPU, as a ratio to the baseline. ``--network-only`` starts
the agents without the same-host path, so blocks are anonymous memory rather than memfds.

``startup`` times how long ``grid`` takes to start, against the code of ``--baseline-ref``
(65b4786: the commit before the restructuring of issue 9) checked out into a temporary ``git
worktree`` (removed at the end). Each tree gets two real agents of its own (its own
``agents.main``, on 127.0.0.1 and .2), then the two trees take turns, ``--runs`` times each, at
``python -m mesh.cli --help`` and ``python -m mesh.cli memory stats -c CONFIG`` (cwd and
PYTHONPATH set to the tree, so each imports its own code; one untimed warm-up each compiles the
bytecode). Figures are medians in ms, the ratio current/baseline, and the number of modules
each command had imported at exit (``len(sys.modules)``, from one more run through a ``-c``
wrapper), with the heavy ones among them.

``read-rss`` starts one real agent, writes one block of ``--size``, then READs the whole block
``--reads`` times over a raw DEALER with ``--window`` in flight (after an uncounted warm-up of
20,000), and reports the agent's RSS before and after, the growth and the growth per read (the
zero-copy read tracking must not grow: issue 10, defect 2). Baseline, in the same run: a bare
pyzmq ROUTER in a child process answering the same READs zero-copy without tracking them.

``key-race`` starts three agents and two clients (threads, each its own client) that put the
same new key at the same moment, ``--pairs`` times: half to two different agents, half with
default placement. Exactly one put of each pair may succeed (the other gets ``KeyExists``); it
counts the keys left with more than one record (every agent is asked), pairs where neither put
succeeded, and any other error.

``listing`` spreads ``--blocks`` lazy blocks over three agents, then runs ``grid memory
list-blocks --json`` and counts its rows, while it asks the second agent every 50 ms how long
ago it heard the first (``max_heartbeat_age_s``: heartbeats must stay under the suspect
threshold while agents page through their blocks).

``checksum`` times the checksums of ``mesh/checksum.py`` over one warm buffer of ``--size``
random bytes, in one process: zlib's CRC-32 (what records and moves used before: the baseline)
and XXH3-64 (what they use now) over the whole buffer at once, and the running checksum as
streams and moves make it (``mesh.checksum.new()`` updated with ``--chunk`` views of the buffer,
no copies). Figures are medians over the runs in GB/s; ``ratio`` is xxh3 over crc32, and
``seconds_per_gib`` what each spends per GiB (a move pays it on the source and on the target).

``scale`` starts many agents on 127.0.1.x and reports membership convergence, false suspects,
gossip bytes per agent, stats, placement and a large listing: tools/bench_scale.py says how.

``concurrent``: reads through one ``AsyncMeshClient`` one after another and all at once
(``concurrency_ratio``); ``transfer --stripe N``: the transfer striped over N agents against the
same raw baseline: tools/bench_concurrency.py says how.

``intake``: microseconds per heartbeat an agent takes in, against the full check of every
record it relays, in one process: tools/bench_intake.py says how.

``small``: 4 KiB ops/s one in flight and batched (``read_many``/``write_many``) against a raw
Python TCP request/reply loop, one in flight and 64 pipelined: tools/bench_small.py says how.

A benchmark, not a test: it asserts nothing; it stops by itself (every wait has a timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402

from mesh.client import MeshClient  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

import bench_report  # noqa: E402  (tools/bench_report.py: the report mode)
import bench_small  # noqa: E402  (tools/bench_small.py: the small mode)
import bench_concurrency  # noqa: E402  (tools/bench_concurrency.py: concurrent, transfer --stripe)
from bench_ports import free_port as _free_port  # noqa: E402
import bench_scale  # noqa: E402  (tools/bench_scale.py: the scale mode)
import bench_cache  # noqa: E402  (tools/bench_cache.py: the cache mode)
import bench_intake  # noqa: E402  (tools/bench_intake.py: the intake mode)

SEND_BYTES = 4 * 1024 * 1024


# --- baseline: raw sockets -----------------------------------------------------------------------


def _sink(port: int, size: int, runs: int, fresh: bool = False) -> None:
    """Child process: accept one connection, recv_into a warm buffer ``runs`` times, ack each.
    ``fresh``: each run into newly mapped memory instead, its pages backed by another thread
    while the bytes land, as an agent backs a moved block's pages (``agents/backing.py``); each
    run's memory is unmapped at its end, so the next run finds the pages given back to the
    system as long before as a move finds its target's last moved-away block."""
    buf = bytearray(size)
    buf[::4096] = b"\x01" * len(buf[::4096])  # touch every page once
    view = memoryview(buf)
    srv = socket.create_server(("127.0.0.1", port))
    srv.settimeout(30)
    conn, _ = srv.accept()
    conn.settimeout(60)
    for _ in range(runs):
        backer = None
        if fresh:
            view = memoryview(buf := _fresh_buffer(size))
            backer = threading.Thread(target=_back, args=(buf, view, size))
            backer.start()
        got = 0
        while got < size:
            n = conn.recv_into(view[got:], min(SEND_BYTES, size - got))
            if n == 0:
                return
            got += n
        if backer is not None:
            backer.join()
            view.release()
            buf.close()  # gone before the next run maps its own, as a moved-away block is
        conn.sendall(b"k")
    conn.close()


def _fresh_buffer(size: int) -> Any:
    import mmap

    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def _back(buf: Any, view: memoryview, size: int) -> None:
    from types import SimpleNamespace

    from agents.backing import populate

    populate(SimpleNamespace(buf=buf, view=view, size=size))


class Baseline:
    """The raw-socket baseline: one TCP connection, ``sendall`` of the data in ``piece``-byte
    pieces (4 MiB: the baseline the ratios are of) into a sink process that ``recv_into``s a
    warm buffer (``fresh``: newly mapped memory each run, see ``_sink``)."""

    def __init__(self, size: int, runs: int, fresh: bool = False, piece: int = SEND_BYTES):
        self.size, self.runs, self.piece = size, runs, piece
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_sink", str(self.port), str(size), str(runs),
             *(["fresh"] if fresh else [])]
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("baseline sink did not start")
                time.sleep(0.05)

    def run_once(self, data: memoryview) -> float:
        t0 = time.perf_counter()
        for i in range(0, self.size, self.piece):
            self.sock.sendall(data[i : i + self.piece])
        if self.sock.recv(1) != b"k":
            raise RuntimeError("baseline sink went away")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the mesh ----------------------------------------------------------------------------------


class Agents:
    """``n`` real agents on 127.0.0.1, .2, ... each with room for ``size`` bytes, running the
    code of the source tree ``root`` (this checkout unless told otherwise); ``mesh`` adds
    settings to the cluster file's ``mesh:`` section."""

    def __init__(self, size: int, chunk: int, window: int, tmp: Path, n: int = 1,
                 root: Path = ROOT, mesh: dict | None = None, keyed: bool = False,
                 room: int | None = None, network_only: bool = False, spare_gb: float = 0.25):
        hosts = [f"127.0.0.{i + 1}" for i in range(n)]
        ports = [_free_port(h) for h in hosts]
        self.port = ports[0]
        self.n = n
        cfg = {
            "name": "bench",
            "nodes": [{"name": f"bench-{i + 1}", "host": h, "mesh_port": p,
                       "memory_gb": (room or size) / 1024**3 + spare_gb}
                      for i, (h, p) in enumerate(zip(hosts, ports))],
            "mesh": {"chunk_bytes": chunk, "window": window, "host_reserve_bytes": "512MiB",
                     "request_timeout_s": 60, **(mesh or {})},
        }
        if network_only:  # no same-host path: what a client on another machine gets
            cfg["mesh"]["local_access"] = False
        if keyed:  # (only then: an older tree's agents, see `startup`, refuse the field)
            cfg["mesh"]["keys_dir"] = str(tmp / "keys")
        self.config = tmp / "bench.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        if keyed:  # `grid keys init`: the agents run authenticated, the client uses the admin key
            from mesh.config import load_cluster_config
            from mesh.security.keys import KeyDir

            KeyDir(tmp / "keys").init(load_cluster_config(self.config))
        self.log = open(tmp / "agent.log", "wb")
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "agents.main", "--config", str(self.config),
             "--node", f"bench-{i + 1}"],
            stdout=self.log, stderr=self.log, env=dict(os.environ, PYTHONPATH=str(root)), cwd=root,
        ) for i in range(n)]
        self.proc = self.procs[0]

    def client(self, network: bool = False) -> MeshClient:
        """A client of these agents; ``network``: one that never takes the same-host path (what
        a client on another machine gets), whatever the agents offer."""
        config: Any = self.config
        if network:
            from dataclasses import replace

            from mesh.config import load_cluster_config

            config = load_cluster_config(self.config)
            config = replace(config, mesh=replace(config.mesh, local_access=False))
        client = MeshClient(config)
        deadline = time.monotonic() + 30
        while True:
            try:
                if sum(n.state == "alive" for n in client.nodes()) >= self.n:
                    return client
            except Exception:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("agent did not start; see its log")
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log.close()


def _warm(n: int, fill: bool) -> bytearray:
    buf = bytearray(os.urandom(1 << 20)) * (n >> 20) + bytearray(n & ((1 << 20) - 1)) if fill else bytearray(n)
    if not fill:
        buf[::4096] = b"\x01" * len(buf[::4096])
    return buf


def _allocate_copies(client: MeshClient, size: int, copies: int) -> str:
    """A block of ``size`` with ``copies`` copies, the primary on bench-1. The agents have just
    started: until bench-1 has heard the others' heartbeats it can place no copy there
    (``PlacementShort``), so that is tried again for a few seconds."""
    from mesh.errors import PlacementShort

    deadline = time.monotonic() + 15
    while True:
        try:
            return client.allocate(size, node="bench-1", replicas=copies, spread="node")
        except PlacementShort:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def transfer(args: argparse.Namespace) -> dict:
    size = parse_size(args.size)
    chunk = parse_size(args.chunk)
    runs = args.runs
    data = _warm(size, fill=True)
    out = _warm(size, fill=False)
    dv = memoryview(data)
    secure = getattr(args, "secure", False)
    replicas = getattr(args, "replicas", 1) or 1
    if (getattr(args, "stripe", 1) or 1) > 1:
        return bench_concurrency.striped(args, Agents, Baseline, _warm, parse_size)
    if replicas < 1:
        raise SystemExit("--replicas: expected 1 or more copies")
    local = getattr(args, "local", False)
    if local and (secure or replicas > 1):
        raise SystemExit("--local: measures one agent's block; not with --secure or --replicas")
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp, \
            tempfile.TemporaryDirectory(prefix="mesh-bench-keyed-") as ktmp:
        if replicas > 1:  # the one-copy block and the primary copy share the first agent
            agent = Agents(size, chunk, args.window, Path(tmp), n=replicas,
                           mesh={"replica_spread": "node"}, room=2 * size, network_only=True)
        else:
            agent = Agents(size, chunk, args.window, Path(tmp), network_only=not local)
        keyed = Agents(size, chunk, args.window, Path(ktmp), keyed=True,
                       network_only=True) if secure else None
        baseline = Baseline(size, runs)
        # the same raw stream sent 1 MiB a send, as the mesh's direct path sends (faster here:
        # docs/DESIGN.md, "1 MiB a send"); reported beside, the ratios stay of the 4 MiB one
        small = Baseline(size, runs, piece=1 << 20)
        try:
            client = agent.client()
            block = client.allocate(size, node="bench-1" if replicas > 1 else None)
            rblock = _allocate_copies(client, size, replicas) if replicas > 1 else None
            replica_nodes = list(client.stat(rblock).nodes) if rblock is not None else []
            kclient = keyed.client() if keyed else None
            kblock = kclient.allocate(size) if kclient else None
            w, r, b, b1, sw, sr, rw, rr = [], [], [], [], [], [], [], []
            checks: list[bool] = []

            def check(last: bool) -> None:  # the last run's reads, each byte for byte
                if last:
                    checks.append(out == data)
                    out[::4096] = b"\x02" * len(out[::4096])  # the next read must refill it

            def timed(c: MeshClient, blk: str, into_w: list, into_r: list, last: bool) -> None:
                """Write then read the block once, in GB/s, and check what came back."""
                t0 = time.perf_counter()
                c.write(blk, dv)
                into_w.append(size / (time.perf_counter() - t0) / 1e9)
                t0 = time.perf_counter()
                c.read_into(blk, out)
                into_r.append(size / (time.perf_counter() - t0) / 1e9)
                check(last)

            for i in range(runs):
                b.append(size / baseline.run_once(dv) / 1e9)
                b1.append(size / small.run_once(dv) / 1e9)
                timed(client, block, w, r, i == runs - 1)
                line = (f"run {i + 1}: baseline {b[-1]:.2f} (1 MiB sends {b1[-1]:.2f})  "
                        f"write {w[-1]:.2f}  read {r[-1]:.2f}")
                if rblock is not None:
                    timed(client, rblock, rw, rr, i == runs - 1)
                    line += f"  {replicas} copies: write {rw[-1]:.2f}  read {rr[-1]:.2f}"
                if kclient is not None:
                    timed(kclient, kblock, sw, sr, i == runs - 1)
                    line += f"  secure write {sw[-1]:.2f}  secure read {sr[-1]:.2f}"
                if not args.json:
                    print(line + " GB/s")
            same = bool(checks) and all(checks)
            local_ops = sum(core.local.done for core in client._pool.cores)
            client.free(block)
            if rblock is not None:
                client.free(rblock)
            client.close()
            if kclient is not None:
                kclient.free(kblock)
                kclient.close()
        finally:
            baseline.close()
            small.close()
            agent.close()
            if keyed is not None:
                keyed.close()
    result = {
        "bench": "transfer",
        "size_bytes": size,
        "runs": runs,
        "chunk_bytes": chunk,
        "window": args.window,
        "baseline_gbps": round(statistics.median(b), 3),
        "write_gbps": round(statistics.median(w), 3),
        "read_gbps": round(statistics.median(r), 3),
        "verified": same,
        "path": "same-host" if local else "network",
    }
    if local:  # every write and read went through shared memory, none over TCP
        result["local_ops"] = local_ops
        result["verified"] = same and local_ops >= 2 * runs
    result["write_ratio"] = round(result["write_gbps"] / result["baseline_gbps"], 3)
    result["read_ratio"] = round(result["read_gbps"] / result["baseline_gbps"], 3)
    result["baseline_1mib_gbps"] = round(statistics.median(b1), 3)
    result["write_ratio_1mib"] = round(result["write_gbps"] / result["baseline_1mib_gbps"], 3)
    result["read_ratio_1mib"] = round(result["read_gbps"] / result["baseline_1mib_gbps"], 3)
    if secure:  # keys, CURVE handshake, AES-256-GCM sealed chunks; over the plaintext mesh
        result["secure_write_gbps"] = round(statistics.median(sw), 3)
        result["secure_read_gbps"] = round(statistics.median(sr), 3)
        result["secure_write_ratio"] = round(result["secure_write_gbps"] / result["write_gbps"], 3)
        result["secure_read_ratio"] = round(result["secure_read_gbps"] / result["read_gbps"], 3)
    if replicas > 1:  # N copies (the primary forwards each write) over one copy, same agents
        result["replicas"] = replicas
        result["replica_nodes"] = replica_nodes
        result["replicated_write_gbps"] = round(statistics.median(rw), 3)
        result["replicated_read_gbps"] = round(statistics.median(rr), 3)
        result["replicated_write_ratio"] = round(
            result["replicated_write_gbps"] / result["write_gbps"], 3)
        result["replicated_read_ratio"] = round(
            result["replicated_read_gbps"] / result["read_gbps"], 3)
    return result


# --- move: a block from one agent to another -------------------------------------------------


def _timed_move(client: MeshClient, block: str, where: str) -> tuple[dict, float]:
    """Move ``block`` to ``where``; (its report, its seconds). Just after the agents start, a
    source may not know its target yet and refuses the move at once (nothing was copied): that
    move is asked again, and timed again, for up to 30 s; so is one the target refused because
    it had not heard of the source yet (the original is intact)."""
    from mesh.errors import InvalidRequest, MoveFailed

    deadline = time.monotonic() + 30
    while True:
        t0 = time.perf_counter()
        try:
            report = client.move(block, where)
            return report, time.perf_counter() - t0
        except (InvalidRequest, MoveFailed) as exc:
            unknown = "is not the address of an agent of this mesh" in str(exc)
            if time.monotonic() > deadline or (isinstance(exc, MoveFailed) and not unknown):
                raise
            time.sleep(0.1)


def move(args: argparse.Namespace) -> dict:
    size = parse_size(args.size)
    runs = args.runs
    data = _warm(size, fill=True)
    dv = memoryview(data)
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        agents = Agents(size, 2 << 20, 8, Path(tmp), n=2, network_only=args.network_only)
        baseline = Baseline(size, runs)
        fresh = Baseline(size, runs, fresh=True)  # what a copy into new memory can do here
        try:
            client = agents.client(network=True)  # its write is the network's baseline
            block = client.allocate(size, node="bench-1")
            procs = [psutil.Process(p.pid) for p in agents.procs]
            b, f, w, m, cpu = [], [], [], [], []
            where = "bench-1"
            for i in range(runs):
                b.append(size / baseline.run_once(dv) / 1e9)
                f.append(size / fresh.run_once(dv) / 1e9)
                t0 = time.perf_counter()
                client.write(block, dv)
                w.append(size / (time.perf_counter() - t0) / 1e9)
                where = "bench-2" if where == "bench-1" else "bench-1"
                c0 = sum(sum(p.cpu_times()[:2]) for p in procs)
                report, seconds = _timed_move(client, block, where)
                m.append(seconds)
                cpu.append(sum(sum(p.cpu_times()[:2]) for p in procs) - c0)
                if not args.json:
                    print(f"run {i + 1}: baseline {b[-1]:.2f} GB/s (into new memory "
                          f"{f[-1]:.2f})  client write {w[-1]:.2f} GB/s"
                          f"  move {seconds:.2f} s ({size / seconds / 1e9:.2f} GB/s: source "
                          f"checksum {report['checksum_s']:.2f} s, target copy and checksum "
                          f"{report['pull_s']:.2f} s, commit {report['commit_s']:.2f} s)")
            out = client.read(block)
            same = out == data and client.stat(block).node == where
            client.free(block)
            client.close()
        finally:
            baseline.close()
            fresh.close()
            agents.close()
    move_s = statistics.median(m)
    result = {
        "bench": "move",
        "size_bytes": size,
        "runs": runs,
        "move_seconds": round(move_s, 3),
        "first_move_seconds": round(m[0], 3),
        "runs_seconds": [round(s, 3) for s in m],
        "move_gbps": round(size / move_s / 1e9, 3),
        "baseline_gbps": round(statistics.median(b), 3),
        "baseline_fresh_gbps": round(statistics.median(f), 3),
        "client_write_gbps": round(statistics.median(w), 3),
        "verified": same,
        "network_only": args.network_only,
    }
    result["ratio_to_baseline"] = round(result["move_gbps"] / result["baseline_gbps"], 3)
    result["ratio_to_fresh_baseline"] = round(result["move_gbps"] / result["baseline_fresh_gbps"],
                                              3)
    result["ratio_to_client_write"] = round(result["move_gbps"] / result["client_write_gbps"], 3)
    # The CPU a move took, both agents (median): at that cost a byte, what the machine's CPUs
    # allow at most, as a ratio to the baseline (cores all busy, nothing waiting)
    move_cpu = statistics.median(cpu)
    result["move_cpu_s"] = round(move_cpu, 3)
    result["move_cores_busy"] = round(move_cpu / move_s, 2)
    result["cpu_bound_ratio_to_baseline"] = round(  # (CPU times come in 10 ms ticks)
        size / (move_cpu / (psutil.cpu_count() or 1)) / 1e9 / result["baseline_gbps"], 3) \
        if move_cpu > 0 else None
    return result


# --- checksum: xxh3 against crc32 over one warm buffer --------------------------------------


def checksum(args: argparse.Namespace) -> dict:
    import zlib

    import xxhash

    from mesh import checksum as C

    size, chunk = parse_size(args.size), parse_size(args.chunk)
    view = memoryview(_warm(size, fill=True))

    def running() -> str:
        h = C.new()
        for pos in range(0, size, chunk):
            h.update(view[pos : pos + chunk])
        return h.text()

    ways = {"crc32": lambda: zlib.crc32(view), "xxh3": lambda: xxhash.xxh3_64_intdigest(view),
            "xxh3_running": running}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    results: dict[str, object] = {}
    for _ in range(args.runs):
        for name, way in ways.items():  # interleaved, so a noisy moment hits all three
            t0 = time.perf_counter()
            results[name] = way()
            seconds[name].append(time.perf_counter() - t0)
    gbps = {name: size / statistics.median(s) / 1e9 for name, s in seconds.items()}
    result = {
        "bench": "checksum", "size_bytes": size, "runs": args.runs, "chunk_bytes": chunk,
        "crc32_gbps": round(gbps["crc32"], 2), "xxh3_gbps": round(gbps["xxh3"], 2),
        "xxh3_running_gbps": round(gbps["xxh3_running"], 2),
        "ratio": round(gbps["xxh3"] / gbps["crc32"], 2),
        "seconds_per_gib": {name: round(2**30 / (g * 1e9), 3) for name, g in gbps.items()},
        # the running checksum is the one-shot one, chunk by chunk
        "running_matches": results["xxh3_running"] == f"xxh3:{results['xxh3']:016x}",
    }
    return result


# --- read-rss: agent memory over many zero-copy reads ------------------------------------------


def _read_sink(port: int, size: int) -> None:
    """Child process, the baseline of ``read-rss``: a bare pyzmq ROUTER answering READs from one
    buffer zero-copy, like the agent but without tracking the sends. Runs until killed."""
    import zmq
    from mesh import protocol as P
    buf = bytearray(os.urandom(size))
    view = memoryview(buf)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        identity, *frames = sock.recv_multipart(copy=False)
        req = P.parse_request(frames)
        off, length = req.fields["offset"], req.fields["length"]
        sock.send_multipart([identity, P.encode_reply(P.READ, req.request_id, {
            "block": req.fields["block"], "offset": off, "length": length}),
            view[off : off + length]], copy=False)


def _pipelined_reads(address: str, block: str, size: int, reads: int, window: int) -> float:
    """``reads`` READs of the whole ``size`` bytes of ``block``, ``window`` in flight, over one
    raw DEALER; returns the seconds taken."""
    import zmq
    from mesh import protocol as P
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    sock.connect(address)
    try:
        sent = done = 0
        t0 = time.perf_counter()
        while done < reads:
            while sent < reads and sent - done < window:
                sent += 1
                sock.send(P.encode_request(P.READ, sent, {"block": block, "offset": 0,
                                                         "length": size}))
            frames = sock.recv_multipart(copy=False)
            if len(frames) != 2 or len(frames[1]) != size:
                raise RuntimeError(f"unexpected READ reply: {P.parse_reply(frames).body}")
            done += 1
        return time.perf_counter() - t0
    finally:
        sock.close(0)


def _rss_growth(pid: int, address: str, block: str, size: int, reads: int, window: int) -> dict:
    import psutil
    proc = psutil.Process(pid)
    _pipelined_reads(address, block, size, min(reads, 20_000), window)  # warm-up, not counted
    before = proc.memory_info().rss
    seconds = _pipelined_reads(address, block, size, reads, window)
    after = proc.memory_info().rss
    return {"rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
            "growth_mib": round((after - before) / 2**20, 2),
            "growth_bytes_per_read": round((after - before) / reads, 3),
            "reads_per_s": round(reads / seconds)}


def read_rss(args: argparse.Namespace) -> dict:
    size, reads, window = parse_size(args.size), args.reads, args.window
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        agents = Agents(size, 2 << 20, 8, Path(tmp))
        try:
            client = agents.client()
            block = client.allocate(size)
            client.write(block, os.urandom(size))
            agent = _rss_growth(agents.proc.pid, f"tcp://127.0.0.1:{agents.port}", block, size,
                                reads, window)
            client.free(block)
            client.close()
        finally:
            agents.close()
    port = _free_port()
    sink = subprocess.Popen([sys.executable, __file__, "_read_sink", str(port), str(size)])
    try:
        baseline = _rss_growth(sink.pid, f"tcp://127.0.0.1:{port}", "baseline", size, reads,
                               window)
    finally:
        sink.kill()
        sink.wait(timeout=10)
    return {"bench": "read-rss", "reads": reads, "size_bytes": size, "window": window,
            "agent": agent, "baseline_untracked": baseline}


# --- cli-memory: the grid process's own memory while files stream through it -----------------


GRID = Path(sys.executable).parent / "grid"
SAMPLE_S = 0.02


def _grid_command() -> list[str]:
    return [str(GRID)] if GRID.exists() else [sys.executable, "-m", "mesh.cli"]


def _rss_tree(proc) -> int:
    import psutil

    total = 0
    try:
        total += proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def _hwm(pid: int) -> int:
    """The kernel's peak RSS of ``pid``'s current address space (VmHWM; 0 when unreadable).

    Not ``ru_maxrss`` from wait4: Linux carries the forked parent's peak across exec into it,
    so every child of this (64 MiB) process would read at least 64 MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _measure(cmd: list[str], log: Path, timeout_s: float) -> tuple[int, float]:
    """Run ``cmd``, sampling its RSS (with its children) and its VmHWM every 20 ms; (peak RSS
    bytes, wall seconds). Raises on a non-zero exit or when it outlives ``timeout_s`` (it is
    killed)."""
    import psutil

    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        ps = psutil.Process(proc.pid)
        peak = 0
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            peak = max(peak, _rss_tree(ps), _hwm(proc.pid))
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=30)
                raise RuntimeError(f"{' '.join(cmd)} did not finish in {timeout_s:.0f} s; see {log}")
            time.sleep(SAMPLE_S)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log.read_text(errors='replace')}")
    return peak, wall


def _write_random(path: Path, size: int, piece: int = 16 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(piece, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def cli_memory(args: argparse.Namespace) -> dict:
    size = parse_size(args.size)
    chunk = parse_size(args.chunk)
    timeout_s = 120 + size / 50e6  # generous: 50 MB/s would be a broken build
    mib = 1 << 20
    with tempfile.TemporaryDirectory(prefix="mesh-bench-cli-") as tmp_name:
        tmp = Path(tmp_name)
        src, dst = tmp / "src.bin", tmp / "dst.bin"
        if not args.json:
            print(f"writing {format_bytes(size)} of random bytes to {src}")
        digest = _write_random(src, size)
        agent = Agents(size, chunk, args.window, tmp)
        try:
            agent.client().close()  # waits until the agent answers
            grid = _grid_command()
            cfg = ["-c", str(agent.config)]
            # the pause lets the 20 ms sampler see the finished import
            baseline, _ = _measure([sys.executable, "-c", "import mesh.cli, time; time.sleep(0.3)"],
                                   tmp / "baseline.log", 60)
            _, startup_s = _measure([*grid, "--version"], tmp / "version.log", 60)
            store_rss, store_s = _measure([*grid, "memory", "store", "bench", str(src), *cfg],
                                          tmp / "store.log", timeout_s)
            if not args.json:
                print((tmp / "store.log").read_text().rstrip())
            src.unlink()  # the digest is all we need; keep the page cache for the retrieve
            retrieve_rss, retrieve_s = _measure(
                [*grid, "memory", "retrieve", "bench", "-o", str(dst), *cfg],
                tmp / "retrieve.log", timeout_s)
            if not args.json:
                print((tmp / "retrieve.log").read_text().rstrip())
            verified = dst.stat().st_size == size and _sha256(dst) == digest
            dst.unlink()
            _measure([*grid, "memory", "delete", "bench", *cfg], tmp / "delete.log", 60)
        finally:
            agent.close()
    result = {
        "bench": "cli-memory",
        "size_bytes": size,
        "chunk_bytes": chunk,
        "window": args.window,
        "baseline_rss_mib": round(baseline / mib, 1),
        "store_peak_rss_mib": round(store_rss / mib, 1),
        "retrieve_peak_rss_mib": round(retrieve_rss / mib, 1),
        "store_rss_ratio": round(store_rss / baseline, 2),
        "retrieve_rss_ratio": round(retrieve_rss / baseline, 2),
        "startup_s": round(startup_s, 3),
        "store_s": round(store_s, 3),
        "retrieve_s": round(retrieve_s, 3),
        "store_gbps": round(size / store_s / 1e9, 3),
        "retrieve_gbps": round(size / retrieve_s / 1e9, 3),
        "verified": verified,
    }
    return result


# --- startup: how long grid takes to start, against the code before the restructuring --------


STARTUP_COMMANDS = {"grid --help": ["--help"], "grid memory stats": ["memory", "stats"]}
# what a command should not need to load (mesh.placement, .pressure, .rebalance: the baseline's
# names for mesh.balance)
HEAVY_MODULES = ("fabric", "paramiko", "invoke", "ray", "numpy", "mesh.balance", "mesh.placement",
                 "mesh.pressure", "mesh.rebalance", "rich", "zmq", "yaml")
COUNT_MODULES = """\
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
import runpy
runpy.run_module("mesh.cli", run_name="__main__", alter_sys=True)
"""


class Tree:
    """A source tree of this project, and how to run its ``grid`` against its own agents."""

    def __init__(self, name: str, root: Path, tmp: Path):
        self.name, self.root = name, root
        tmp.mkdir()
        self.agents = Agents(0, 2 << 20, 8, tmp, n=2, root=root)
        self.config = ["-c", str(self.agents.config)]
        self.env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="160")
        self.env.pop("GRID_CONFIG", None)

    def args(self, command: str) -> list[str]:
        extra = self.config if command != "grid --help" else []
        return [*STARTUP_COMMANDS[command], *extra]

    def run(self, argv: list[str]) -> float:
        """Seconds ``argv`` took, start to exit; raises when it fails."""
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)} exited {done.returncode}:\n"
                               f"{done.stderr.decode(errors='replace')}")
        return seconds

    def time(self, command: str) -> float:
        return self.run([sys.executable, "-m", "mesh.cli", *self.args(command)])

    def modules(self, command: str, tmp: Path) -> list[str]:
        out = tmp / f"modules-{self.name}.json"
        self.run([sys.executable, "-c", COUNT_MODULES, str(out), *self.args(command)])
        return json.loads(out.read_text())

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until this tree's own client sees both of its agents alive."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = subprocess.run([sys.executable, "-m", "mesh.cli", "memory", "stats", "--json",
                                   *self.config], cwd=self.root, env=self.env, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=60)
            try:
                if done.returncode == 0 and json.loads(done.stdout)["live_nodes"] >= 2:
                    return
            except (ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the agents did not come up: "
                                   f"{done.stderr.decode(errors='replace')}")
            time.sleep(0.2)


def _heavy(modules: list[str]) -> list[str]:
    return sorted(h for h in HEAVY_MODULES
                  if any(m == h or m.startswith(h + ".") for m in modules))


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()


def startup(args: argparse.Namespace) -> dict:
    ref = _git("rev-parse", "--short", args.baseline_ref)
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    times: dict[str, dict[str, list[float]]] = {}
    modules: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="mesh-bench-startup-") as tmp_name:
        tmp = Path(tmp_name)
        worktree = tmp / "baseline"
        _git("worktree", "add", "--detach", str(worktree), ref)
        trees: list[Tree] = []
        try:
            trees.append(Tree("baseline", worktree, tmp / "baseline-agents"))
            trees.append(Tree("current", ROOT, tmp / "current-agents"))
            for tree in trees:
                tree.wait_ready()
                for command in STARTUP_COMMANDS:
                    tree.time(command)  # warm-up: bytecode, page cache
                modules[tree.name] = {c: tree.modules(c, tmp) for c in STARTUP_COMMANDS}
            times = {t.name: {c: [] for c in STARTUP_COMMANDS} for t in trees}
            for i in range(args.runs):
                for tree in trees if i % 2 == 0 else trees[::-1]:  # take turns going first
                    for command in STARTUP_COMMANDS:
                        times[tree.name][command].append(tree.time(command))
                if not args.json:
                    print(f"run {i + 1}: " + "  ".join(
                        f"{t.name} {c.removeprefix('grid ')} {times[t.name][c][-1] * 1e3:.0f} ms"
                        for t in trees for c in STARTUP_COMMANDS))
        finally:
            for tree in trees:
                tree.agents.close()
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(worktree)], capture_output=True, timeout=120)
    result: dict = {"bench": "startup", "runs": args.runs, "baseline_ref": ref,
                    "current": head + ("+working tree" if dirty else ""), "commands": {}}
    for command in STARTUP_COMMANDS:
        base = statistics.median(times["baseline"][command])
        cur = statistics.median(times["current"][command])
        result["commands"][command] = {
            "baseline_ms": round(base * 1e3, 1),
            "current_ms": round(cur * 1e3, 1),
            "ratio": round(cur / base, 3),
            "baseline_modules": len(modules["baseline"][command]),
            "current_modules": len(modules["current"][command]),
            "baseline_heavy": _heavy(modules["baseline"][command]),
            "current_heavy": _heavy(modules["current"][command]),
        }
    return result


# --- listing -------------------------------------------------------------------------------------


def listing(args: argparse.Namespace) -> dict:
    """``--blocks`` lazy blocks spread over three agents, then ``grid memory list-blocks --json``
    as a subprocess, while this process asks node 2 every 50 ms how long ago it heard node 1."""
    import threading

    from mesh import protocol as P

    per_block = parse_size(args.block_size)
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        agents = Agents(per_block * args.blocks // 3 + 64 * 1024**2, parse_size("2MiB"), 8,
                        Path(tmp), n=3)
        try:
            client = agents.client()
            made_at = time.perf_counter()
            nodes = [f"bench-{i + 1}" for i in range(3)]
            for i in range(args.blocks):
                client.allocate(per_block, node=nodes[i % 3], lazy=True)
            made_s = time.perf_counter() - made_at
            ages: list[float] = []
            done = threading.Event()
            watcher = MeshClient(agents.config)
            second = next(n.address for n in client.nodes() if n.name == "bench-2")

            def watch() -> None:
                while not done.is_set():
                    try:
                        table = watcher._run(watcher._core.call(second, P.NODES, {}))["nodes"]
                        ages.extend(r["age_s"] for r in table if r["node"] == "bench-1")
                    except Exception:
                        pass
                    done.wait(0.05)

            thread = threading.Thread(target=watch)
            thread.start()
            started = time.perf_counter()
            run = subprocess.run([*_grid_command(), "memory", "list-blocks", "--json", "-c",
                                  str(agents.config)], capture_output=True, text=True,
                                 timeout=600)
            seconds = time.perf_counter() - started
            done.set()
            thread.join(timeout=10)
            watcher.close()
            rows = len(json.loads(run.stdout)["blocks"]) if run.returncode == 0 else 0
            suspect_s = client.settings.suspect_after_s
            client.close()
        finally:
            agents.close()
    return {"bench": "listing", "blocks": args.blocks, "rows": rows, "exit_code": run.returncode,
            "list_seconds": round(seconds, 2), "allocate_seconds": round(made_s, 2),
            "max_heartbeat_age_s": round(max(ages, default=float("nan")), 3),
            "suspect_after_s": suspect_s}


# --- key-race ------------------------------------------------------------------------------------


def key_race(args: argparse.Namespace) -> dict:
    """``--pairs`` races of two clients putting the same new key at once (half to two different
    agents, half with default placement); counts the keys left with more than one record."""
    import threading

    from mesh.client import objects
    from mesh.errors import KeyExists

    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        agents = Agents(256 * 1024**2, parse_size("2MiB"), 8, Path(tmp), n=3)
        try:
            checker = agents.client()
            clients = [MeshClient(agents.config), MeshClient(agents.config)]
            barrier = threading.Barrier(2)
            outcomes: list[list] = [[None] * args.pairs, [None] * args.pairs]

            def run(side: int) -> None:
                for i in range(args.pairs):
                    node = (("bench-1", "bench-2")[side]) if i % 2 == 0 else None
                    barrier.wait(timeout=60)
                    try:
                        outcomes[side][i] = clients[side].put_bytes(
                            f"race-{i}", bytes([side]) * 4096, node=node)
                    except KeyExists as exc:
                        outcomes[side][i] = exc
                    except Exception as exc:  # counted below, never hidden
                        outcomes[side][i] = exc

            started = time.perf_counter()
            threads = [threading.Thread(target=run, args=(s,)) for s in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            seconds = time.perf_counter() - started
            duplicates = both_failed = other_errors = 0
            for i in range(args.pairs):
                pair = (outcomes[0][i], outcomes[1][i])
                won = sum(isinstance(r, objects.ObjectInfo) for r in pair)
                other_errors += sum(not isinstance(r, (objects.ObjectInfo, KeyExists))
                                    for r in pair)
                records = checker._run(objects.holders(checker._core, f"race-{i}"))
                duplicates += len(records) > 1 or won > 1
                both_failed += won == 0
            for c in clients:
                c.close()
            checker.close()
        finally:
            agents.close()
    return {"bench": "key-race", "pairs": args.pairs, "duplicates": duplicates,
            "neither_succeeded": both_failed, "other_errors": other_errors,
            "pairs_per_s": round(args.pairs / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_sink":
        _sink(int(argv[1]), int(argv[2]), int(argv[3]), fresh=argv[4:5] == ["fresh"])
        return 0
    if argv and argv[0] == "_read_sink":
        _read_sink(int(argv[1]), parse_size(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    t = sub.add_parser("transfer", help="write and read a block against a raw-socket baseline")
    t.add_argument("--size", default="1GiB")
    t.add_argument("--runs", type=int, default=5)
    t.add_argument("--chunk", default="2MiB")
    t.add_argument("--window", type=int, default=8)
    t.add_argument("--secure", action="store_true", help="also write and read the block on a "
                   "keyed agent (authenticated, sealed) in the same runs")
    t.add_argument("--replicas", type=int, default=1, metavar="N",
                   help="also write and read a block with N copies (N agents, spread node) in "
                   "the same runs, against the one-copy block")
    t.add_argument("--local", action="store_true",
                   help="the client reads and writes through the same-host path (shared memory, "
                        "mesh/localwire.py) instead of TCP")
    t.add_argument("--stripe", type=int, default=1, metavar="N",
                   help="instead, the transfer striped over N agents through one client "
                   "(tools/bench_concurrency.py)")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    c = sub.add_parser("cli-memory", help="peak RSS of `grid memory store/retrieve` moving a file")
    c.add_argument("--size", default="2GiB")
    c.add_argument("--chunk", default="2MiB")
    c.add_argument("--window", type=int, default=8)
    c.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    mv = sub.add_parser("move", help="move a block between two agents against the baselines")
    mv.add_argument("--size", default="1GiB")
    mv.add_argument("--runs", type=int, default=4)
    mv.add_argument("--network-only", action="store_true",
                    help="agents without the same-host path: blocks in anonymous memory, not "
                    "memfds")
    mv.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    rr = sub.add_parser("read-rss", help="agent RSS growth over many zero-copy reads of one "
                        "block, against a bare pyzmq ROUTER that does not track its sends")
    rr.add_argument("--reads", type=int, default=1_000_000)
    rr.add_argument("--size", default="64KiB")
    rr.add_argument("--window", type=int, default=64, help="READs in flight")
    rr.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ls = sub.add_parser("listing", help="grid memory list-blocks of many blocks over three "
                        "agents, and the heartbeats meanwhile")
    ls.add_argument("--blocks", type=int, default=100_000)
    ls.add_argument("--block-size", default="4KiB")
    ls.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    kr = sub.add_parser("key-race", help="two clients put the same new key at once, N times: "
                        "how many keys end with two records")
    kr.add_argument("--pairs", type=int, default=1000)
    kr.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ck = sub.add_parser("checksum", help="xxh3 against crc32 over one warm buffer (GB/s)")
    ck.add_argument("--size", default="1GiB")
    ck.add_argument("--runs", type=int, default=5)
    ck.add_argument("--chunk", default="2MiB", help="the running checksum's update size")
    ck.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    st = sub.add_parser("startup", help="start-up time of grid against a baseline commit")
    st.add_argument("--baseline-ref", default="65b4786",
                    help="the commit to compare with (default: before the restructuring)")
    st.add_argument("--runs", type=int, default=15)
    st.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    bench_report.add_parser(sub)
    bench_small.add_parser(sub)
    bench_concurrency.add_parser(sub)
    bench_scale.add_parser(sub)
    bench_cache.add_parser(sub)
    bench_intake.add_parser(sub)
    args = parser.parse_args(argv)
    if args.bench == "concurrent":
        result = bench_concurrency.concurrent(args, Agents, parse_size)
        print(json.dumps(result) if args.json else bench_concurrency.describe_concurrent(result))
        return 0
    if args.bench == "small":
        result = bench_small.small(args, Agents, parse_size)
        print(json.dumps(result) if args.json else bench_small.describe(result))
        return 0
    if args.bench == "cache":
        result = bench_cache.cache(args, Agents, parse_size)
        print(json.dumps(result) if args.json else bench_cache.describe(result))
        return 0
    if args.bench == "intake":
        result = bench_intake.intake(args)
        print(json.dumps(result) if args.json else bench_intake.describe(result))
        return 0
    if args.bench == "scale":
        result = bench_scale.scale(args)
        print(json.dumps(result) if args.json else
              "\n".join(f"  {k:<28} {v}" for k, v in result.items()))
        return 0
    if args.bench == "report":
        result = bench_report.report(args)
        if args.json:
            print(json.dumps(result))
        else:
            print(Path(result["markdown"]).read_text(), end="")
        return 0
    if args.bench == "startup":
        result = startup(args)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"grid start-up, median of {result['runs']} runs each, baseline "
                  f"{result['baseline_ref']} vs current {result['current']}, same run:")
            for command, r in result["commands"].items():
                print(f"  {command:<18} baseline {r['baseline_ms']:6.1f} ms  current "
                      f"{r['current_ms']:6.1f} ms  ratio {r['ratio']:.2f}  modules "
                      f"{r['baseline_modules']} -> {r['current_modules']}")
                print(f"  {'':<18} heavy modules loaded: baseline "
                      f"{', '.join(r['baseline_heavy']) or '-'}; current "
                      f"{', '.join(r['current_heavy']) or '-'}")
        return 0
    if args.bench == "checksum":
        result = checksum(args)
        if args.json:
            print(json.dumps(result))
        else:
            per = result["seconds_per_gib"]
            print(f"{format_bytes(result['size_bytes'])}, median of {result['runs']}: crc32 "
                  f"{result['crc32_gbps']:.2f} GB/s ({per['crc32']:.3f} s/GiB) | xxh3 "
                  f"{result['xxh3_gbps']:.2f} GB/s ({per['xxh3']:.3f} s/GiB), ratio "
                  f"{result['ratio']:.2f} | running xxh3 in {format_bytes(result['chunk_bytes'])}"
                  f" chunks {result['xxh3_running_gbps']:.2f} GB/s (matches one-shot: "
                  f"{result['running_matches']})")
        return 0
    if args.bench == "listing":
        result = listing(args)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"list-blocks of {result['blocks']} blocks on 3 agents: {result['rows']} rows "
                  f"in {result['list_seconds']} s (exit {result['exit_code']}); node 1 heard by "
                  f"node 2 at most {result['max_heartbeat_age_s']} s ago meanwhile (suspect "
                  f"after {result['suspect_after_s']} s)")
        return 0
    if args.bench == "key-race":
        result = key_race(args)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['pairs']} racing pairs: {result['duplicates']} keys with two records, "
                  f"{result['neither_succeeded']} pairs where neither put succeeded, "
                  f"{result['other_errors']} other errors ({result['pairs_per_s']} pairs/s)")
        return 0
    if args.bench == "read-rss":
        result = read_rss(args)
        if args.json:
            print(json.dumps(result))
        else:
            for who in ("agent", "baseline_untracked"):
                r = result[who]
                print(f"{who}: {result['reads']} reads of {format_bytes(result['size_bytes'])}"
                      f", RSS {r['rss_before_mib']} -> {r['rss_after_mib']} MiB (growth "
                      f"{r['growth_mib']} MiB, {r['growth_bytes_per_read']} B/read), "
                      f"{r['reads_per_s']} reads/s")
        return 0
    if args.bench == "move":
        result = move(args)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{format_bytes(result['size_bytes'])} moved agent to agent in "
                f"{result['move_seconds']:.2f} s ({result['move_gbps']:.2f} GB/s, median of "
                f"{result['runs']}); baseline sendall {result['baseline_gbps']:.2f} GB/s, ratio "
                f"{result['ratio_to_baseline']:.2f}; client write {result['client_write_gbps']:.2f}"
                f" GB/s, ratio {result['ratio_to_client_write']:.2f}; verified {result['verified']}"
                f"\na move took {result['move_cpu_s']:.2f} CPU-s (both agents; "
                f"{result['move_cores_busy']:.2f} cores busy): at that cost, at most "
                f"{result['cpu_bound_ratio_to_baseline']}x the baseline on this machine"
            )
        return 0
    if args.bench == "cli-memory":
        result = cli_memory(args)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{format_bytes(result['size_bytes'])}: grid memory store peak RSS "
                f"{result['store_peak_rss_mib']:.0f} MiB ({result['store_gbps']:.2f} GB/s), "
                f"retrieve {result['retrieve_peak_rss_mib']:.0f} MiB "
                f"({result['retrieve_gbps']:.2f} GB/s); baseline `import mesh.cli` "
                f"{result['baseline_rss_mib']:.0f} MiB; verified {result['verified']}"
            )
        return 0
    result = transfer(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{format_bytes(result['size_bytes'])} x {result['runs']} runs, chunk "
            f"{format_bytes(result['chunk_bytes'])}, window {result['window']}\n"
            f"baseline {result['baseline_gbps']:.2f} GB/s | write {result['write_gbps']:.2f} GB/s "
            f"(ratio {result['write_ratio']:.2f}) | read {result['read_gbps']:.2f} GB/s "
            f"(ratio {result['read_ratio']:.2f}) | verified {result['verified']}\n"
            f"baseline in 1 MiB sends {result['baseline_1mib_gbps']:.2f} GB/s: write ratio "
            f"{result['write_ratio_1mib']:.2f}, read ratio {result['read_ratio_1mib']:.2f}"
        )
        if "replicas" in result:
            print(
                f"{result['replicas']} copies on {', '.join(result['replica_nodes'])}: write "
                f"{result['replicated_write_gbps']:.2f} GB/s (ratio to one copy "
                f"{result['replicated_write_ratio']:.2f}) | read "
                f"{result['replicated_read_gbps']:.2f} GB/s (ratio "
                f"{result['replicated_read_ratio']:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
