#!/usr/bin/env python3
"""Soak: a mixed workload from several client processes against three real agents, with clients
killed by SIGKILL along the way. A benchmark, not a test: it asserts nothing and stops by itself.

    python tools/soak.py [--duration 600] [--clients 4] [--kill-every 15] [--size 256KiB]
                         [--lease-s 10] [--ttl-s 20] [--json]

It starts three ``mesh-agent`` processes on 127.0.0.1-3 (random ports, ``mesh.lease_s`` set to
``--lease-s``), then ``--clients`` worker processes (this file with ``--worker``). Each worker
loops over random operations, checking every byte it reads back:

- raw blocks: ``allocate`` (with a time-to-live of ``--ttl-s``, so a killed worker's blocks
  expire; a live worker frees each one well before then), ``write``, ``read``, ``free``;
- named objects: ``put_bytes`` (its block is pending until the key is published, so a worker
  killed mid-put leaves a lease that runs out), ``get_bytes``, ``delete``;
- listings: ``blocks()``, ``keys()``, ``stats()``.

A worker holds at most 16 blocks and 16 keys at a time, so the mesh is loaded, not filled.
Every ``--kill-every`` seconds one worker, chosen at random, gets SIGKILL wherever it is (mid-
write, mid-put...), and a new one takes its place. Each worker prints a JSON line of counters
every second; a killed worker's last second is lost, nothing else.

At the end the workers are stopped (SIGTERM: they free what they hold and exit), the keys of the
killed ones are deleted (named objects outlive their writer by design), and the soak waits for
leases and time-to-lives to run out (``max(lease, ttl)`` plus two sweeps). Then every agent must
hold nothing: ``leaked_bytes`` (the agents' ``used``) and ``leaked_blocks`` are reported, and
must be 0. Also reported: operations per second by kind, errors by type, and each agent's RSS
and the bytes it holds, sampled every 5 s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import psutil  # noqa: E402

from mesh.client import MeshClient  # noqa: E402
from mesh.errors import MeshError  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

KEY_PREFIX = "soak/"
REPORT_EVERY_S = 1.0
RSS_EVERY_S = 5.0
STOP_WAIT_S = 20.0


# --- the worker (a separate process) -----------------------------------------------------------


def _allocate(client: MeshClient, size: int, ttl_s: float) -> str:
    try:
        return client.allocate(size, ttl_s=ttl_s)
    except TypeError:  # a client without time-to-lives
        return client.allocate(size)


def worker(config: str, wid: str, size: int, ttl_s: float, hold: int = 16) -> int:
    """Random operations until SIGTERM (then free what it holds) or SIGKILL (then nothing)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rng = random.Random()
    ops: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    blocks: list[str] = []  # oldest first
    born: dict[str, float] = {}
    keys: list[str] = []
    payload = os.urandom(size)
    last = time.monotonic()
    with MeshClient(config) as client:
        n = 0
        while not stop.is_set():
            kind = rng.choices(
                ["alloc", "read", "free", "put", "get", "delete", "list"],
                weights=[3, 4, 3, 3, 4, 3, 1])[0]
            # a worker holds a bounded number of each, and frees a block well before its time
            # to live runs out (a block freed by its agent is not this worker's error)
            if kind == "alloc" and len(blocks) >= hold or (
                    blocks and time.monotonic() - born[blocks[0]] > ttl_s / 2):
                kind = "free"
            if kind == "put" and len(keys) >= hold:
                kind = "delete"
            try:
                if kind == "alloc" or (kind in ("read", "free") and not blocks):
                    kind = "alloc"
                    block = _allocate(client, size, ttl_s)
                    blocks.append(block)
                    born[block] = time.monotonic()
                    client.write(block, payload)
                elif kind == "read":
                    block = rng.choice(blocks)
                    if client.read(block) != payload:
                        errors["mismatch"] += 1
                elif kind == "free":  # the oldest first
                    client.free(blocks.pop(0))
                elif kind == "put" or (kind in ("get", "delete") and not keys):
                    kind = "put"
                    key = f"{KEY_PREFIX}{wid}/{n}"
                    n += 1
                    client.put_bytes(key, payload)
                    keys.append(key)
                elif kind == "get":
                    if client.get_bytes(rng.choice(keys)) != payload:
                        errors["mismatch"] += 1
                elif kind == "delete":
                    client.delete(keys.pop(rng.randrange(len(keys))))
                else:
                    rng.choice([client.blocks, client.keys, client.stats])()
                ops[kind] += 1
            except MeshError as exc:
                errors[type(exc).__name__] += 1
            now = time.monotonic()
            if now - last >= REPORT_EVERY_S:
                print(json.dumps({"ops": ops, "errors": errors}), flush=True)
                ops, errors, last = collections.Counter(), collections.Counter(), now
        for block in blocks:  # a graceful stop cleans up after itself
            try:
                client.free(block)
            except MeshError:
                pass
        for key in keys:
            try:
                client.delete(key)
            except MeshError:
                pass
    print(json.dumps({"ops": ops, "errors": errors, "done": True}), flush=True)
    return 0


# --- the driver ---------------------------------------------------------------------------------


class Worker:
    def __init__(self, config: Path, wid: str, size: int, ttl_s: float, totals: "Totals"):
        self.wid = wid
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", wid, "--config", str(config),
             "--size", str(size), "--ttl-s", str(ttl_s)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )
        self.reader = threading.Thread(target=self._read, args=(totals,), daemon=True)
        self.reader.start()

    def _read(self, totals: "Totals") -> None:
        for line in self.proc.stdout:
            try:
                totals.add(json.loads(line))
            except ValueError:
                continue

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_WAIT_S)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
        self.reader.join(timeout=5)


class Totals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def add(self, doc: dict) -> None:
        with self.lock:
            self.ops.update(doc.get("ops", {}))
            self.errors.update(doc.get("errors", {}))


def _rss(procs: list[subprocess.Popen]) -> list[int]:
    out = []
    for p in procs:
        try:
            out.append(psutil.Process(p.pid).memory_info().rss)
        except psutil.Error:
            out.append(0)
    return out


def soak(args: argparse.Namespace) -> dict:
    from bench import Agents

    size = parse_size(args.size)
    totals = Totals()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="mesh-soak-") as tmp:
        agents = Agents(64 * 1024**2 * args.clients, parse_size("2MiB"), 8, Path(tmp), n=3,
                        mesh={"lease_s": args.lease_s} if args.lease_s else None)
        rss_series: list[dict] = []
        workers: list[Worker] = []
        killed: list[str] = []
        try:
            with agents.client() as client:
                start = time.monotonic()
                next_id = 0
                for _ in range(args.clients):
                    workers.append(Worker(agents.config, f"w{next_id}", size, args.ttl_s, totals))
                    next_id += 1
                next_kill = start + args.kill_every
                next_rss = start
                while time.monotonic() - start < args.duration:
                    now = time.monotonic()
                    if now >= next_rss:
                        try:
                            used = [n["used"] for n in client.stats()["nodes"]]
                        except MeshError:
                            used = []
                        rss_series.append({"t_s": round(now - start, 1),
                                           "rss": _rss(agents.procs), "used": used})
                        next_rss += RSS_EVERY_S
                    if args.kill_every > 0 and now >= next_kill:
                        victim = workers.pop(rng.randrange(len(workers)))
                        victim.kill()
                        killed.append(victim.wid)
                        workers.append(Worker(agents.config, f"w{next_id}", size, args.ttl_s,
                                              totals))
                        next_id += 1
                        next_kill += args.kill_every
                    time.sleep(0.2)
                elapsed = time.monotonic() - start
                for w in workers:
                    w.stop()
                # named objects outlive their writer by design: delete the killed workers' keys
                for info in client.keys():
                    if info.key.startswith(KEY_PREFIX):
                        try:
                            client.delete(info.key)
                        except MeshError:
                            pass
                # then every lease and time-to-live runs out
                settle_s = max(args.lease_s, args.ttl_s) + 2 * 0.5 + 2.0
                deadline = time.monotonic() + settle_s + 30.0
                time.sleep(settle_s)
                while True:
                    stats = client.stats()
                    leaked = sum(n["used"] for n in stats["nodes"] if n["state"] == "alive")
                    blocks = stats["total_blocks"]
                    if (leaked == 0 and blocks == 0) or time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
                rss_series.append({"t_s": round(time.monotonic() - start, 1),
                                   "rss": _rss(agents.procs),
                                   "used": [n["used"] for n in stats["nodes"]]})
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.kill()
            agents.close()
    ops = dict(totals.ops)
    total_ops = sum(ops.values())
    first, last = rss_series[0]["rss"], rss_series[-1]["rss"]
    return {
        "bench": "soak", "duration_s": round(elapsed, 1), "clients": args.clients,
        "killed_clients": len(killed), "size_bytes": size, "lease_s": args.lease_s,
        "ttl_s": args.ttl_s, "ops": total_ops, "ops_per_s": round(total_ops / elapsed, 1),
        "ops_by_kind": ops, "errors": dict(totals.errors),
        "agent_rss_mib": [[s["t_s"], [round(r / 2**20, 1) for r in s["rss"]]]
                          for s in rss_series],
        "agent_used_mib": [[s["t_s"], [round(u / 2**20, 1) for u in s["used"]]]
                           for s in rss_series],
        "agent_rss_growth_mib": [round((b - a) / 2**20, 1) for a, b in zip(first, last)],
        "leaked_bytes": leaked, "leaked_blocks": blocks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--kill-every", type=float, default=15.0,
                   help="seconds between SIGKILLs of a random client (0: never)")
    p.add_argument("--size", default="256KiB", help="bytes per block and per object")
    p.add_argument("--lease-s", type=float, default=10.0, help="the agents' mesh.lease_s")
    p.add_argument("--ttl-s", type=float, default=20.0, help="time-to-live of raw blocks")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.config, args.worker, parse_size(args.size), args.ttl_s)
    result = soak(args)
    errors = ", ".join(f"{k} {v}" for k, v in sorted(result["errors"].items())) or "none"
    print(f"{result['ops']} operations in {result['duration_s']} s from {result['clients']} "
          f"clients ({result['killed_clients']} killed with SIGKILL): "
          f"{result['ops_per_s']} ops/s; errors: {errors}")
    for (t, rss), (_, used) in zip(result["agent_rss_mib"], result["agent_used_mib"]):
        print(f"  t={t:>6} s  agent RSS MiB {rss}  blocks and keys held MiB {used}")
    print(f"agent RSS growth MiB {result['agent_rss_growth_mib']}; leaked after leases and "
          f"time-to-lives ran out: {format_bytes(result['leaked_bytes'])} in "
          f"{result['leaked_blocks']} blocks")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
