"""``tools/bench.py concurrent`` and ``tools/bench.py transfer --stripe N``: one client doing
several things at once (``mesh/client/pool.py``), against baselines of the same run.

``concurrent`` starts ``--agents`` real agents (127.0.0.1, .2, ...), spreads ``--reads`` blocks
of ``--size`` random bytes over them, then, through one ``AsyncMeshClient``, reads them all
into warm buffers one after another (``sequential_s``) and then all at once with
``asyncio.gather`` (``concurrent_s``), ``--runs`` times each, in turn. Figures are medians;
``concurrency_ratio`` = sequential_s / concurrent_s. The last reads are compared byte for byte
with what was written (``verified``). The baseline of the same run: the same reads over plain
TCP from ``--agents`` server processes holding the same number of buffers (``raw_sequential_s``
over one connection per server, ``raw_concurrent_s`` by a thread per read over its own
connection; ``raw_concurrency_ratio``): what doing them at once can gain on this machine at all.
And the CPU the reads one after another took, agents and client (``sequential_cpu_s``, median;
``sequential_cores_busy`` = that over ``sequential_s``): at that CPU a byte, all at once can take
at most ``cpu_bound_ratio`` = sequential_s / (sequential_cpu_s / CPUs) less time.

``transfer --stripe N`` starts N agents and, in each run, measures the raw-socket baseline of
``transfer`` (tools/bench.py) and a transfer of ``--size`` striped over the N agents through one
``MeshClient``: one warm block of ``size / N`` bytes on each agent, written from one warm buffer
and read back into another by N threads sharing the client (each stripe over its own
connections). ``write_ratio`` / ``read_ratio`` are against the baseline, as in ``transfer``.
It also stores the same bytes once as a striped object (``put_bytes(..., stripe=N)``) and reads
it back with ``get_bytes``: ``verified`` needs both the last block reads and that object to
match.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil


def add_parser(sub: argparse._SubParsersAction) -> None:
    cc = sub.add_parser("concurrent", help="reads through one AsyncMeshClient all at once "
                        "against the same reads one after another")
    cc.add_argument("--reads", type=int, default=16)
    cc.add_argument("--size", default="64MiB")
    cc.add_argument("--agents", type=int, default=4)
    cc.add_argument("--runs", type=int, default=3)
    cc.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def concurrent(args: argparse.Namespace, agents_cls: Any, parse_size: Callable) -> dict:
    from mesh.client import AsyncMeshClient

    size = parse_size(args.size)
    per_agent = -(-args.reads // args.agents) * size
    datas = [os.urandom(size) for _ in range(args.reads)]
    outs = [bytearray(size) for _ in range(args.reads)]
    with tempfile.TemporaryDirectory(prefix="mesh-bench-cc-") as tmp:
        agents = agents_cls(per_agent, 2 << 20, 8, Path(tmp), n=args.agents,
                            room=per_agent + (64 << 20), network_only=True)
        try:
            agents.client().close()  # every agent up and in the view
            procs = [psutil.Process(p.pid) for p in agents.procs] + [psutil.Process()]

            def cpu() -> float:  # CPU seconds of the agents and this process so far
                return sum(sum(p.cpu_times()[:2]) for p in procs)

            seq_cpu: list[float] = []  # the CPU each run of reads one after another took

            async def main() -> tuple[list[float], list[float], bool]:
                async with AsyncMeshClient(agents.config) as client:
                    blocks = []
                    for i, data in enumerate(datas):
                        blocks.append(await client.allocate(size, node=f"bench-{i % args.agents + 1}"))
                        await client.write(blocks[-1], data)
                    seq, con = [], []
                    for _ in range(args.runs):
                        c0, t0 = cpu(), time.perf_counter()
                        for b, out in zip(blocks, outs):
                            await client.read_into(b, out)
                        seq.append(time.perf_counter() - t0)
                        seq_cpu.append(cpu() - c0)
                        for out in outs:
                            out[::4096] = b"\x00" * len(out[::4096])
                        t0 = time.perf_counter()
                        await asyncio.gather(*(client.read_into(b, out)
                                               for b, out in zip(blocks, outs)))
                        con.append(time.perf_counter() - t0)
                    same = all(out == data for out, data in zip(outs, datas))
                    for b in blocks:
                        await client.free(b)
                    return seq, con, same

            seq, con, same = asyncio.run(main())
        finally:
            agents.close()
    raw_seq, raw_con = _raw_reads(args.agents, args.reads, size, args.runs, outs)
    result = {"bench": "concurrent", "reads": args.reads, "size_bytes": size,
              "agents": args.agents, "runs": args.runs,
              "sequential_s": round(statistics.median(seq), 4),
              "concurrent_s": round(statistics.median(con), 4), "verified": same,
              "raw_sequential_s": round(statistics.median(raw_seq), 4),
              "raw_concurrent_s": round(statistics.median(raw_con), 4)}
    result["concurrency_ratio"] = round(result["sequential_s"] / result["concurrent_s"], 3)
    # what plain sockets gain from doing the same reads at once on this machine
    result["raw_concurrency_ratio"] = round(result["raw_sequential_s"] /
                                            result["raw_concurrent_s"], 3)
    # The CPU the reads one after another took (agents and client): at that cost a byte, doing
    # them at once can gain at most what the idle cores leave, cpu_bound_ratio
    cores = psutil.cpu_count() or 1
    seq_cpu_s = statistics.median(seq_cpu)
    result["sequential_cpu_s"] = round(seq_cpu_s, 3)
    result["sequential_cores_busy"] = round(seq_cpu_s / result["sequential_s"], 2)
    result["cpu_bound_ratio"] = round(result["sequential_s"] / (seq_cpu_s / cores), 2) \
        if seq_cpu_s > 0 else None  # (CPU times come in 10 ms ticks: none at a tiny size)
    result["sequential_gbps"] = round(args.reads * size / result["sequential_s"] / 1e9, 3)
    result["concurrent_gbps"] = round(args.reads * size / result["concurrent_s"] / 1e9, 3)
    return result


def describe_concurrent(r: dict) -> str:
    return (f"{r['reads']} reads of {r['size_bytes']} bytes over {r['agents']} agents: one after "
            f"another {r['sequential_s']} s ({r['sequential_gbps']} GB/s), all at once "
            f"{r['concurrent_s']} s ({r['concurrent_gbps']} GB/s): ratio "
            f"{r['concurrency_ratio']}, verified {r['verified']}; plain sockets, the same reads "
            f"from {r['agents']} server processes: {r['raw_sequential_s']} s one after another, "
            f"{r['raw_concurrent_s']} s all at once (threads): ratio {r['raw_concurrency_ratio']}; "
            f"one after another kept {r['sequential_cores_busy']} cores busy, so at most "
            f"{r['cpu_bound_ratio']}x at that CPU a byte")


# --- the raw baseline of ``concurrent`` -----------------------------------------------------------


def _serve(port: int, count: int, size: int) -> None:
    """Child process: ``count`` buffers of ``size`` random bytes; for each 4-byte index a
    client sends, the whole buffer, a thread per connection. Runs until killed."""
    import socket

    buffers = [os.urandom(size) for _ in range(count)]
    srv = socket.create_server(("127.0.0.1", port))

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                ask = conn.recv(4)
                if len(ask) != 4:
                    return
                conn.sendall(buffers[int.from_bytes(ask, "big") % count])

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _raw_reads(servers: int, reads: int, size: int, runs: int, outs: list[bytearray]
               ) -> tuple[list[float], list[float]]:
    """The reads of ``concurrent`` over plain TCP: ``servers`` processes (one per agent) each
    serving its share of the buffers; read one after another over one connection per server,
    then all at once by a thread each over its own connection. (seconds sequential, seconds
    concurrent) per run."""
    import socket
    import subprocess
    import sys

    from bench_ports import free_port

    ports = [free_port() for _ in range(servers)]
    procs = [subprocess.Popen([sys.executable, __file__, "serve", str(p),
                               str(-(-reads // servers)), str(size)]) for p in ports]

    def connect(port: int) -> socket.socket:
        deadline = time.monotonic() + 60
        while True:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=60)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def read(sock: socket.socket, index: int, out: bytearray) -> None:
        sock.sendall(index.to_bytes(4, "big"))
        view, got = memoryview(out), 0
        while got < size:
            n = sock.recv_into(view[got:], size - got)
            if n == 0:
                raise RuntimeError("a raw server went away")
            got += n

    try:
        one = [connect(p) for p in ports]
        each = [connect(ports[i % servers]) for i in range(reads)]
        seq, con = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            for i in range(reads):
                read(one[i % servers], i // servers, outs[i])
            seq.append(time.perf_counter() - t0)
            threads = [threading.Thread(target=read, args=(each[i], i // servers, outs[i]))
                       for i in range(reads)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            con.append(time.perf_counter() - t0)
        for sock in one + each:
            sock.close()
        return seq, con
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)


def striped(args: argparse.Namespace, agents_cls: Any, baseline_cls: Any, warm: Callable,
            parse_size: Callable) -> dict:
    n = args.stripe
    size = parse_size(args.size)
    size -= size % n
    part = size // n
    data, out = warm(size, True), warm(size, False)
    dv, ov = memoryview(data), memoryview(out)
    with tempfile.TemporaryDirectory(prefix="mesh-bench-stripe-") as tmp:
        agents = agents_cls(part, parse_size(args.chunk), args.window, Path(tmp), n=n,
                            room=2 * part + (64 << 20), network_only=True)
        baseline = baseline_cls(size, args.runs)
        try:
            client = agents.client()
            blocks = [client.allocate(part, node=f"bench-{i + 1}") for i in range(n)]

            def side_by_side(fn: Callable[[int], Any]) -> float:
                threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(600)
                return time.perf_counter() - t0

            b, w, r = [], [], []
            for i in range(args.runs):
                b.append(size / baseline.run_once(dv) / 1e9)
                w.append(size / side_by_side(
                    lambda k: client.write(blocks[k], dv[k * part:(k + 1) * part])) / 1e9)
                ov[::4096] = b"\x02" * len(ov[::4096])
                r.append(size / side_by_side(
                    lambda k: client.read_into(blocks[k], ov[k * part:(k + 1) * part])) / 1e9)
                if not args.json:
                    print(f"run {i + 1}: baseline {b[-1]:.2f}  striped x{n} write {w[-1]:.2f}  "
                          f"read {r[-1]:.2f} GB/s")
            same = out == data
            for blk in blocks:
                client.free(blk)
            client.put_bytes("bench-striped", dv, stripe=n)
            same = same and client.get_bytes("bench-striped") == data
            client.delete("bench-striped")
            client.close()
        finally:
            baseline.close()
            agents.close()
    result = {"bench": "transfer", "stripe": n, "size_bytes": size, "runs": args.runs,
              "chunk_bytes": parse_size(args.chunk), "window": args.window,
              "baseline_gbps": round(statistics.median(b), 3),
              "write_gbps": round(statistics.median(w), 3),
              "read_gbps": round(statistics.median(r), 3), "verified": same}
    result["write_ratio"] = round(result["write_gbps"] / result["baseline_gbps"], 3)
    result["read_ratio"] = round(result["read_gbps"] / result["baseline_gbps"], 3)
    return result


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["serve"]:
        _serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
