#!/usr/bin/env python3
"""Workflow 1 of the seeds: allocate memory on a worker for heavy processing, use it in place.

    python tools/examples/heavy_processing.py [-c cluster.yaml] [--size 32MiB] [--node NAME]
                                              [--slice 4MiB]

Allocates one block of ``--size`` (float64 values) through ``DistributedMemoryPool``, fills it
from a numpy array, then processes it in place slice by slice: each slice is read
(``pool.read``, viewed with ``numpy.frombuffer`` without a copy), transformed
(``x -> 2 * sqrt(x) + 1``) and written back at the same offset, so the client never holds more
than one slice. Finally it reads the whole block back, compares it with the same computation
done locally, and deallocates the block (also on failure).

Needs running agents (``grid agents start`` for the local mesh). Exit status: 0 when everything
matched, 1 on a mismatch or a mesh error (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from mesh.errors import MeshError  # noqa: E402
from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

ITEM_BYTES = 8  # float64


async def heavy_processing(config: str | None, size: int, node: str | None, slice_bytes: int) -> bool:
    count = size // ITEM_BYTES
    size = count * ITEM_BYTES
    per_slice = max(1, slice_bytes // ITEM_BYTES)
    pool = DistributedMemoryPool(config)
    await pool.initialize()
    try:
        block_id = await pool.allocate(size, preferred_node=node)
        try:
            where = (await pool.client.stat(block_id)).node
            print(f"allocated {format_bytes(size)} on {where}: {block_id}")

            source = np.arange(count, dtype=np.float64)
            await pool.write(block_id, source)
            print(f"wrote {count:,} float64 values")

            started = time.perf_counter()
            slices = 0
            for first in range(0, count, per_slice):
                n = min(per_slice, count - first)
                offset = first * ITEM_BYTES
                x = np.frombuffer(await pool.read(block_id, n * ITEM_BYTES, offset), np.float64)
                np.sqrt(x, out=x)
                x *= 2
                x += 1
                await pool.write(block_id, x, offset)
                slices += 1
            elapsed = time.perf_counter() - started
            print(f"processed {slices} slices of up to {format_bytes(per_slice * ITEM_BYTES)} in "
                  f"place (x -> 2*sqrt(x)+1) in {elapsed:.2f} s")

            expected = 2 * np.sqrt(source) + 1
            result = np.frombuffer(await pool.read(block_id, size), np.float64)
            ok = bool(np.array_equal(result, expected))
            print(f"verified {format_bytes(size)} against the local computation: "
                  f"{'match' if ok else 'MISMATCH'}")
            return ok
        finally:
            await pool.deallocate(block_id)
            print(f"deallocated {block_id}")
    finally:
        await pool.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="cluster file (default: the usual resolution)")
    parser.add_argument("--size", default="32MiB", help="block size (default 32MiB)")
    parser.add_argument("--node", help="node to allocate on (default: the one with most room)")
    parser.add_argument("--slice", default="4MiB", help="bytes processed per step (default 4MiB)")
    args = parser.parse_args(argv)
    try:
        size, slice_bytes = parse_size(args.size), parse_size(args.slice)
        if size < ITEM_BYTES or slice_bytes < ITEM_BYTES:
            parser.error("--size and --slice must be at least 8 bytes")
        ok = asyncio.run(heavy_processing(args.config, size, args.node, slice_bytes))
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
