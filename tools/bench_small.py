"""``tools/bench.py small``: 4 KiB operations per second, one in flight and batched, against a
raw Python TCP request/reply loop measured in the same run.

The mesh: one real agent on 127.0.0.1 and one block; ``--ops`` writes of ``--size`` bytes then
as many reads (offsets cycling over the block) through ``MeshClient``, one in flight
(``write``/``read``: ``single_ops``), then the same through ``write_many``/``read_many`` in
calls of ``--batch`` items (``batched_ops``; MANY messages of up to 256 sub-ops, ``mesh.window``
of them in flight). The last reads of each kind are compared with what was written
(``verified``).

The baseline: a second process serving a tiny protocol over one loopback TCP connection (Nagle
off): a request is an 8-byte header (op, length: two big-endian u32) and, for a write, the
payload; the reply is the same header and, for a read, the payload (the server keeps one buffer
per offset). ``baseline_single_ops``: the same writes then reads, one in flight;
``baseline_pipelined_ops``: 64 requests sent at once, then their 64 replies, in turn. Figures
are medians of ``--runs``, after ``--warmup`` uncounted rounds of all four (1: the first round of
a fresh process pays for its new pages, the mesh's batches most: they return a new bytearray
an item); ``single_ratio`` = single_ops / baseline_single_ops,
``batched_ratio`` = batched_ops / baseline_pipelined_ops.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">II")
WRITE, READ = 1, 2
PIPELINE = 64
SLOTS = 256  # offsets cycled over (the block is SLOTS * size bytes)


def add_parser(sub: argparse._SubParsersAction) -> None:
    sm = sub.add_parser("small", help="4 KiB ops/s one in flight and batched against a raw "
                        "Python TCP request/reply loop (one in flight and 64 pipelined)")
    sm.add_argument("--ops", type=int, default=20_000, help="writes (and as many reads) a run")
    sm.add_argument("--size", default="4KiB")
    sm.add_argument("--batch", type=int, default=4096, help="items per read_many/write_many")
    sm.add_argument("--runs", type=int, default=3)
    sm.add_argument("--warmup", type=int, default=1,
                    help="uncounted rounds of all four first (a fresh process's first pages)")
    sm.add_argument("--json", action="store_true", help="print one JSON object as the last line")


# --- the baseline ----------------------------------------------------------------------------


def serve(port: int, size: int) -> None:
    """The baseline's server (run in its own process): one connection, until it closes."""
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(60)
    conn, _ = listener.accept()
    # idle while the mesh's turn runs (minutes on a loaded machine); it ends when the client
    # closes the connection, or after an hour of silence
    conn.settimeout(3600)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = conn.makefile("rb", buffering=1 << 20)
    stored = bytearray(size)
    try:
        _serve(conn, stream, stored)
    except OSError:  # the client went away (or the hour passed): nothing more to serve
        pass


def _serve(conn: socket.socket, stream: Any, stored: bytearray) -> None:
    head = bytearray(HEADER.size)
    while True:
        if stream.readinto(head) != HEADER.size:
            return
        op, length = HEADER.unpack(head)
        if op == WRITE:
            if stream.readinto(memoryview(stored)[:length]) != length:
                return
            conn.sendall(HEADER.pack(op, 0))
        else:
            conn.sendall(HEADER.pack(op, length) + stored[:length])


class Raw:
    def __init__(self, size: int):
        self.size = size
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, __file__, "_serve", str(port), str(size)])
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the baseline server did not start")
                time.sleep(0.05)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = self.sock.makefile("rb", buffering=1 << 20)

    def _reply(self, out: memoryview | None) -> None:
        head = self.stream.read(HEADER.size)
        _, length = HEADER.unpack(head)
        if length:
            got = self.stream.readinto(out[:length]) if out is not None else len(
                self.stream.read(length))
            if got != length:
                raise RuntimeError("the baseline server went away")

    def run(self, data: bytes, ops: int, depth: int) -> tuple[float, bytes]:
        """Seconds for ``ops`` writes then ``ops`` reads, ``depth`` in flight; the last read."""
        write = HEADER.pack(WRITE, len(data)) + data
        read = HEADER.pack(READ, len(data))
        out = memoryview(bytearray(len(data)))
        t0 = time.perf_counter()
        for request in (write, read):
            for start in range(0, ops, depth):
                n = min(depth, ops - start)
                self.sock.sendall(request * n)
                for _ in range(n):
                    self._reply(out)
        return time.perf_counter() - t0, bytes(out)

    def close(self) -> None:
        self.stream.close()
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the mesh --------------------------------------------------------------------------------


def _single(client, block: str, data: bytes, ops: int) -> tuple[float, bytes]:
    size = len(data)
    out = b""
    t0 = time.perf_counter()
    for i in range(ops):
        client.write(block, data, (i % SLOTS) * size)
    for i in range(ops):
        out = client.read(block, size, (i % SLOTS) * size)
    return time.perf_counter() - t0, bytes(out)


def _batched(client, block: str, data: bytes, ops: int, batch: int) -> tuple[float, bytes]:
    size = len(data)
    out: list = []
    t0 = time.perf_counter()
    for start in range(0, ops, batch):
        client.write_many([(block, data, (i % SLOTS) * size)
                           for i in range(start, min(ops, start + batch))])
    for start in range(0, ops, batch):
        out = client.read_many([(block, size, (i % SLOTS) * size)
                                for i in range(start, min(ops, start + batch))])
    return time.perf_counter() - t0, bytes(out[-1])


def small(args: argparse.Namespace, agents_cls, parse_size) -> dict:
    size = parse_size(args.size)
    ops, runs = args.ops, args.runs
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        agents = agents_cls(SLOTS * size, 2 * 1024 * 1024, 8, Path(tmp), network_only=True)
        raw = Raw(size)
        single, batched, base_single, base_piped = [], [], [], []
        verified = True
        try:
            client = agents.client()
            block = client.allocate(SLOTS * size)
            for _ in range(args.warmup):  # not counted: the first round of a fresh process
                raw.run(data, ops, 1)  # pays for its new pages (20 ms more of ~125 for the
                raw.run(data, ops, PIPELINE)  # mesh's batches on this VM), not for its work
                _single(client, block, data, ops)
                _batched(client, block, data, ops, args.batch)
            for _ in range(runs):  # interleaved, so the load of the moment hits both alike
                s, last = raw.run(data, ops, 1)
                base_single.append(2 * ops / s)
                verified &= last == data
                s, last = raw.run(data, ops, PIPELINE)
                base_piped.append(2 * ops / s)
                verified &= last == data
                s, last = _single(client, block, data, ops)
                single.append(2 * ops / s)
                verified &= last == data
                s, last = _batched(client, block, data, ops, args.batch)
                batched.append(2 * ops / s)
                verified &= last == data
            client.close()
        finally:
            raw.close()
            agents.close()
    med = statistics.median
    result = {
        "size_bytes": size, "ops": ops, "runs": runs, "warmup": args.warmup,
        "batch": args.batch,
        "single_ops": round(med(single)), "batched_ops": round(med(batched)),
        "baseline_single_ops": round(med(base_single)),
        "baseline_pipelined_ops": round(med(base_piped)),
        "single_ratio": round(med(single) / med(base_single), 3),
        "batched_ratio": round(med(batched) / med(base_piped), 3),
        "verified": verified,
        "all_runs": {"single_ops": [round(x) for x in single],
                     "batched_ops": [round(x) for x in batched],
                     "baseline_single_ops": [round(x) for x in base_single],
                     "baseline_pipelined_ops": [round(x) for x in base_piped]},
    }
    return result


def describe(result: dict) -> str:
    return (f"{result['size_bytes']}-byte ops, median of {result['runs']} (writes then reads):"
            f" one in flight {result['single_ops']} ops/s vs raw loop "
            f"{result['baseline_single_ops']} (ratio {result['single_ratio']}); batched "
            f"{result['batched_ops']} ops/s vs raw pipelined-{PIPELINE} "
            f"{result['baseline_pipelined_ops']} (ratio {result['batched_ratio']}); verified "
            f"{result['verified']}")


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "_serve":
    serve(int(sys.argv[2]), int(sys.argv[3]))
