#!/usr/bin/env python3
"""Benchmarks of the mesh, each against a baseline measured in the same run.

    python tools/bench.py transfer [--size 1GiB] [--runs 5] [--chunk 2MiB] [--window 8] [--json]
    python tools/bench.py cli-memory [--size 2GiB] [--chunk 2MiB] [--window 8] [--json]
    python tools/bench.py move [--size 1GiB] [--runs 4] [--json]

``transfer`` starts one real ``mesh-agent`` on loopback, allocates one block of ``--size``, then
for each run writes the whole block from a warm client buffer and reads it back into another
warm buffer (``read_into``). In the same process it measures the baseline: plain Python
``sendall`` of the same bytes in 4 MiB pieces over a loopback TCP socket to a second process that
``recv_into``s a warm buffer. Figures are medians over the runs, in GB/s (10**9 bytes/s), and
ratios against that baseline. With ``--json`` the last line printed is one JSON object.

``cli-memory`` measures the memory of the ``grid`` client process itself: it writes a file of
``--size`` random bytes, starts one real agent with room for it, then runs ``grid memory store``
and ``grid memory retrieve -o FILE`` as subprocesses, sampling each one's RSS (with its children,
psutil) and the kernel's peak (VmHWM) every 20 ms until it exits. Baseline, in the same run:
the peak RSS of ``python -c "import mesh.cli"`` (what ``grid`` loads before it does anything).
GB/s are over each command's whole wall time, start-up included (``startup_s``: the wall time of
``grid --version``). The retrieved file is compared with the original by a streaming SHA-256.

``move`` starts two real agents (127.0.0.1 and 127.0.0.2), writes one block of ``--size`` on the
first, then moves it back and forth (``MeshClient.move``: agent to agent, crc32 on both sides,
keys handed over, the source freed) ``--runs`` times, and reads it back once at the end to check
every byte. Baselines in the same run: the raw-socket ``sendall`` of ``transfer`` and the
client's own write of the same block. Each move lands in fresh memory on the target (page
faults included), as a real move does.

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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from mesh.client import MeshClient  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

SEND_BYTES = 4 * 1024 * 1024


# --- baseline: raw sockets -----------------------------------------------------------------------


def _sink(port: int, size: int, runs: int) -> None:
    """Child process: accept one connection, recv_into a warm buffer ``runs`` times, ack each."""
    buf = bytearray(size)
    buf[::4096] = b"\x01" * len(buf[::4096])  # touch every page once
    view = memoryview(buf)
    srv = socket.create_server(("127.0.0.1", port))
    srv.settimeout(30)
    conn, _ = srv.accept()
    conn.settimeout(60)
    for _ in range(runs):
        got = 0
        while got < size:
            n = conn.recv_into(view[got:], min(SEND_BYTES, size - got))
            if n == 0:
                return
            got += n
        conn.sendall(b"k")
    conn.close()


def _free_port(host: str = "127.0.0.1") -> int:
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind((host, 0))
                port = a.getsockname()[1]
                b.bind((host, port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


class Baseline:
    def __init__(self, size: int, runs: int):
        self.size, self.runs = size, runs
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_sink", str(self.port), str(size), str(runs)]
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
        for i in range(0, self.size, SEND_BYTES):
            self.sock.sendall(data[i : i + SEND_BYTES])
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
    """``n`` real agents on 127.0.0.1, .2, ... each with room for ``size`` bytes."""

    def __init__(self, size: int, chunk: int, window: int, tmp: Path, n: int = 1):
        hosts = [f"127.0.0.{i + 1}" for i in range(n)]
        ports = [_free_port(h) for h in hosts]
        self.port = ports[0]
        self.n = n
        cfg = {
            "name": "bench",
            "nodes": [{"name": f"bench-{i + 1}", "host": h, "mesh_port": p,
                       "memory_gb": size / 1024**3 + 0.25}
                      for i, (h, p) in enumerate(zip(hosts, ports))],
            "mesh": {"chunk_bytes": chunk, "window": window, "host_reserve_bytes": "512MiB",
                     "request_timeout_s": 60},
        }
        self.config = tmp / "bench.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = open(tmp / "agent.log", "wb")
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "agents.main", "--config", str(self.config),
             "--node", f"bench-{i + 1}"],
            stdout=self.log, stderr=self.log, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        ) for i in range(n)]
        self.proc = self.procs[0]

    def client(self) -> MeshClient:
        client = MeshClient(self.config)
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


def transfer(args: argparse.Namespace) -> dict:
    size = parse_size(args.size)
    chunk = parse_size(args.chunk)
    runs = args.runs
    data = _warm(size, fill=True)
    out = _warm(size, fill=False)
    dv = memoryview(data)
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        agent = Agents(size, chunk, args.window, Path(tmp))
        baseline = Baseline(size, runs)
        try:
            client = agent.client()
            block = client.allocate(size)
            w, r, b = [], [], []
            for i in range(runs):
                b.append(size / baseline.run_once(dv) / 1e9)
                t0 = time.perf_counter()
                client.write(block, dv)
                w.append(size / (time.perf_counter() - t0) / 1e9)
                t0 = time.perf_counter()
                client.read_into(block, out)
                r.append(size / (time.perf_counter() - t0) / 1e9)
                if not args.json:
                    print(f"run {i + 1}: baseline {b[-1]:.2f}  write {w[-1]:.2f}  read {r[-1]:.2f} GB/s")
            same = out == data
            client.free(block)
            client.close()
        finally:
            baseline.close()
            agent.close()
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
    }
    result["write_ratio"] = round(result["write_gbps"] / result["baseline_gbps"], 3)
    result["read_ratio"] = round(result["read_gbps"] / result["baseline_gbps"], 3)
    return result


# --- move: a block from one agent to another -------------------------------------------------


def move(args: argparse.Namespace) -> dict:
    size = parse_size(args.size)
    runs = args.runs
    data = _warm(size, fill=True)
    dv = memoryview(data)
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        agents = Agents(size, 2 << 20, 8, Path(tmp), n=2)
        baseline = Baseline(size, runs)
        try:
            client = agents.client()
            block = client.allocate(size, node="bench-1")
            b, w, m = [], [], []
            where = "bench-1"
            for i in range(runs):
                b.append(size / baseline.run_once(dv) / 1e9)
                t0 = time.perf_counter()
                client.write(block, dv)
                w.append(size / (time.perf_counter() - t0) / 1e9)
                where = "bench-2" if where == "bench-1" else "bench-1"
                t0 = time.perf_counter()
                report = client.move(block, where)
                seconds = time.perf_counter() - t0
                m.append(seconds)
                if not args.json:
                    print(f"run {i + 1}: baseline {b[-1]:.2f} GB/s  client write {w[-1]:.2f} GB/s"
                          f"  move {seconds:.2f} s ({size / seconds / 1e9:.2f} GB/s: source "
                          f"checksum {report['checksum_s']:.2f} s, target copy and checksum "
                          f"{report['pull_s']:.2f} s, commit {report['commit_s']:.2f} s)")
            out = client.read(block)
            same = out == data and client.stat(block).node == where
            client.free(block)
            client.close()
        finally:
            baseline.close()
            agents.close()
    move_s = statistics.median(m)
    result = {
        "bench": "move",
        "size_bytes": size,
        "runs": runs,
        "move_seconds": round(move_s, 3),
        "move_gbps": round(size / move_s / 1e9, 3),
        "baseline_gbps": round(statistics.median(b), 3),
        "client_write_gbps": round(statistics.median(w), 3),
        "verified": same,
    }
    result["ratio_to_baseline"] = round(result["move_gbps"] / result["baseline_gbps"], 3)
    result["ratio_to_client_write"] = round(result["move_gbps"] / result["client_write_gbps"], 3)
    return result


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_sink":
        _sink(int(argv[1]), int(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    t = sub.add_parser("transfer", help="write and read a block against a raw-socket baseline")
    t.add_argument("--size", default="1GiB")
    t.add_argument("--runs", type=int, default=5)
    t.add_argument("--chunk", default="2MiB")
    t.add_argument("--window", type=int, default=8)
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    c = sub.add_parser("cli-memory", help="peak RSS of `grid memory store/retrieve` moving a file")
    c.add_argument("--size", default="2GiB")
    c.add_argument("--chunk", default="2MiB")
    c.add_argument("--window", type=int, default=8)
    c.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    mv = sub.add_parser("move", help="move a block between two agents against the baselines")
    mv.add_argument("--size", default="1GiB")
    mv.add_argument("--runs", type=int, default=4)
    mv.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
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
            f"(ratio {result['read_ratio']:.2f}) | verified {result['verified']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
