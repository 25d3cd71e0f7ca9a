#!/usr/bin/env python3
"""Share data between processes through the mesh, by key.

    python tools/examples/share_between_processes.py [-c cluster.yaml] [--size 32MiB] [--node NAME]

The parent stores a float64 array of ``--size`` under a key with
``DistributedMemoryManager.store`` (asyncio), then starts a second Python process that knows only
the key: the child reads it with the blocking ``MeshClient.get_array`` and prints its SHA-256.
The parent compares that checksum with its own, then deletes the key (also on failure). The
object lives in the agents, not in either process.

Exit status: 0 when the checksums match, 1 otherwise or on a mesh error (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from mesh.client import MeshClient  # noqa: E402
from mesh.errors import MeshError  # noqa: E402
from distributed_grid.memory.distributed_memory_manager import DistributedMemoryManager  # noqa: E402
from mesh.units import format_bytes, parse_size  # noqa: E402

CHILD_TIMEOUT_S = 120.0


def child(config: str | None, key: str) -> int:
    """The second process: read the array by key and print its checksum."""
    started = time.perf_counter()
    with MeshClient(config) as client:
        array = client.get_array(key)
    elapsed = time.perf_counter() - started
    print(f"child pid {os.getpid()}: read {key!r} {array.shape} {array.dtype} "
          f"({format_bytes(array.nbytes)}) in {elapsed:.2f} s")
    print(f"sha256={hashlib.sha256(array).hexdigest()}")
    return 0


async def parent(config: str | None, size: int, node: str | None) -> bool:
    key = f"example-shared-{os.getpid()}"
    array = np.random.default_rng(1).random(max(1, size // 8))
    checksum = hashlib.sha256(array).hexdigest()
    async with DistributedMemoryManager(config) as manager:
        info = await manager.store(key, array, preferred_node=node)
        try:
            print(f"parent pid {os.getpid()}: stored {key!r} ({format_bytes(info.length)}, "
                  f"{info.content_type}) on {info.node}")
            print(f"parent sha256={checksum}")
            command = [sys.executable, __file__, "--child", key]
            if config is not None:
                command += ["--config", config]
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
            for line in done.stdout.splitlines():
                print(f"  | {line}")
            if done.returncode != 0:
                print(f"the child exited with {done.returncode}: {done.stderr.strip()}")
                return False
            lines = done.stdout.splitlines()
            theirs = lines[-1].removeprefix("sha256=") if lines else ""
            ok = theirs == checksum
            print(f"checksums {'match' if ok else 'DIFFER'}")
            return ok
        finally:
            await manager.delete(key)
            print(f"deleted {key!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="cluster file (default: the usual resolution)")
    parser.add_argument("--size", default="32MiB", help="array size (default 32MiB)")
    parser.add_argument("--node", help="node to store on (default: the one with most room)")
    parser.add_argument("--child", metavar="KEY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.child:
            return child(args.config, args.child)
        ok = asyncio.run(parent(args.config, parse_size(args.size), args.node))
    except (MeshError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
