#!/usr/bin/env python3
"""Workflow 2 of the seeds: cache a large dataset in the mesh with the helper, get it back.

    python tools/examples/cache_dataset.py [-c cluster.yaml] [--size 32MiB] [--node NAME]

Builds a dataset of about ``--size`` (a dict with a float32 feature matrix, int64 labels and
some metadata), caches it with ``DistributedMemoryHelper.cache_large_data`` (pickled with
protocol 5: the arrays travel out of band, straight from their memory) and also caches the
feature matrix alone (stored raw as an ndarray). Reads both back with ``get_cached_data``,
compares them with the originals, prints the usage summary, and clears what it cached (also on
failure).

Exit status: 0 when everything matched, 1 on a mismatch or a mesh error (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from mesh.errors import MeshError  # noqa: E402
from distributed_grid.utils.memory_helpers import DistributedMemoryHelper  # noqa: E402
from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

FEATURES = 256


def load_large_dataset(size: int) -> dict:
    rows = max(1, size // (FEATURES * 4 + 8))
    rng = np.random.default_rng(42)
    return {
        "features": rng.random((rows, FEATURES), dtype=np.float32),
        "labels": rng.integers(0, 10, rows),
        "meta": {"name": "example", "rows": rows, "features": FEATURES},
    }


async def cache_workflow(config: str | None, size: int, node: str | None) -> bool:
    dataset = load_large_dataset(size)
    nbytes = dataset["features"].nbytes + dataset["labels"].nbytes
    key = f"example-training-data-{os.getpid()}"
    async with DistributedMemoryPool(config) as pool:
        helper = DistributedMemoryHelper(pool)
        try:
            info = await helper.cache_large_data(key, dataset, preferred_node=node)
            print(f"cached {key!r}: {format_bytes(info.length)} as {info.content_type} on "
                  f"{info.node} ({len(info.meta.get('buffers', []))} buffers out of band)")
            array_info = await helper.cache_large_data(f"{key}-features", dataset["features"],
                                                       preferred_node=node)
            print(f"cached {array_info.key!r}: {format_bytes(array_info.length)} as "
                  f"{array_info.content_type} {array_info.meta.get('dtype')} "
                  f"{tuple(array_info.meta.get('shape', ()))} on {array_info.node}")

            back = await helper.get_cached_data(key)
            features = await helper.get_cached_data(f"{key}-features")
            ok = (back["meta"] == dataset["meta"]
                  and np.array_equal(back["features"], dataset["features"])
                  and np.array_equal(back["labels"], dataset["labels"])
                  and features.dtype == dataset["features"].dtype
                  and np.array_equal(features, dataset["features"]))
            print(f"retrieved both ({format_bytes(nbytes)} of arrays in the dataset): "
                  f"{'match' if ok else 'MISMATCH'}")

            summary = await helper.get_memory_usage_summary()
            kinds = ", ".join(f"{kind}: {v['objects']} ({format_bytes(v['bytes'])})"
                              for kind, v in summary["by_content_type"].items())
            print(f"mesh holds {summary['total_objects']} objects, "
                  f"{format_bytes(summary['total_bytes'])} [{kinds}]")
            return ok
        finally:
            cleared = await helper.clear_cache()
            print(f"cleared {cleared} cached keys")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="cluster file (default: the usual resolution)")
    parser.add_argument("--size", default="32MiB", help="dataset size (default 32MiB)")
    parser.add_argument("--node", help="node to cache on (default: the one with most room)")
    args = parser.parse_args(argv)
    try:
        ok = asyncio.run(cache_workflow(args.config, parse_size(args.size), args.node))
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
