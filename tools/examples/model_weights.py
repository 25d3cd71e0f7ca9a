#!/usr/bin/env python3
"""Workflow 3 of the seeds: store model weights layer by layer on one node, load them back.

    python tools/examples/model_weights.py [-c cluster.yaml] [--size 32MiB] [--layers 4]
                                           [--node NAME]

Makes ``--layers`` float32 weight matrices totalling about ``--size``, stores each with
``DistributedMemoryHelper.store_numpy_array(..., preferred_node=node)`` (one block per layer, on
``--node`` or else the live node with the most room), loads them back with
``retrieve_numpy_array``, checks that values, dtype and shape match and that every block is on
that node, then deallocates the blocks (also on failure).

Exit status: 0 when everything matched, 1 on a mismatch or a mesh error (one line on stderr).
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
from distributed_grid.utils.memory_helpers import DistributedMemoryHelper  # noqa: E402
from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

COLUMNS = 1024


async def store_model_weights(config: str | None, size: int, layers: int, node: str | None) -> bool:
    rows = max(1, size // layers // (COLUMNS * 4))
    rng = np.random.default_rng(0)
    weights = {f"layer{i + 1}": rng.standard_normal((rows, COLUMNS), dtype=np.float32)
               for i in range(layers)}
    async with DistributedMemoryPool(config) as pool:
        helper = DistributedMemoryHelper(pool)
        if node is None:
            alive = [n for n in await pool.client.nodes() if n.state == "alive"]
            node = max(alive, key=lambda n: n.room).name
        block_ids: dict[str, str] = {}
        try:
            started = time.perf_counter()
            for layer_name, layer_weights in weights.items():
                block_ids[layer_name] = await helper.store_numpy_array(layer_weights,
                                                                       preferred_node=node)
                print(f"stored {layer_name} {layer_weights.shape} {layer_weights.dtype} "
                      f"({format_bytes(layer_weights.nbytes)}) -> {block_ids[layer_name]}")
            stored_s = time.perf_counter() - started

            started = time.perf_counter()
            loaded = {name: await helper.retrieve_numpy_array(block)
                      for name, block in block_ids.items()}
            loaded_s = time.perf_counter() - started
            total = sum(w.nbytes for w in weights.values())
            print(f"stored {layers} layers ({format_bytes(total)}) on {node} in {stored_s:.2f} s, "
                  f"loaded them back in {loaded_s:.2f} s")

            ok = True
            for name, original in weights.items():
                back = loaded[name]
                where = (await pool.client.stat(block_ids[name])).node
                same = (back.dtype == original.dtype and back.shape == original.shape
                        and np.array_equal(back, original) and where == node)
                if not same:
                    print(f"MISMATCH in {name} (on {where})")
                ok = ok and same
            print(f"compared {layers} layers: {'all match' if ok else 'MISMATCH'}")
            return ok
        finally:
            for block in block_ids.values():
                await pool.deallocate(block)
            print(f"deallocated {len(block_ids)} blocks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="cluster file (default: the usual resolution)")
    parser.add_argument("--size", default="32MiB", help="total size of the weights (default 32MiB)")
    parser.add_argument("--layers", type=int, default=4, help="number of layers (default 4)")
    parser.add_argument("--node", help="node for every layer (default: the one with most room)")
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    try:
        ok = asyncio.run(store_model_weights(args.config, parse_size(args.size), args.layers,
                                             args.node))
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
