"""Streams follow a block that moves while they read, with real agents.

A file stored under a key is retrieved over and over with ``get_file``, ``read_to_file`` and the
real ``grid memory retrieve KEY -o FILE`` while another client moves its block back and forth
between two nodes (the block id stays the same; the source answers "moving" during the hand-over
and "not found, moved" after it). Every retrieve must succeed and every file must be
byte-identical. A key that names another object when the reader looks again raises a clear
error instead of a file made of two objects.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mesh.errors import IntegrityError, ObjectChanged
from support.mesh import ROOT, running_mesh

MiB = 1 << 20
SIZE = 48 * MiB + 12345  # not a whole number of chunks
ROUNDS = 5  # retrieves per way of retrieving
MAX_MOVES = 2000  # the mover stops by itself even if the test forgets to tell it


class Mover:
    """Moves ``block`` between node1 and node2 back to back, on its own client and thread,
    until stopped; remembers when each move finished."""

    def __init__(self, mesh, block: str):
        self.mesh, self.block = mesh, block
        self.done_at: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.mesh.client() as m:
            here = m.stat(self.block).node
            for _ in range(MAX_MOVES):
                if self._stop.is_set():
                    return
                there = "node2" if here == "node1" else "node1"
                try:
                    m.move(self.block, there)
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)
                    return
                here = there
                self.done_at.append(time.monotonic())

    def __enter__(self) -> Mover:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the mover did not stop"

    def moves_during(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.done_at)


def _grid_retrieve(config: Path, key: str, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRID_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", "memory", "retrieve", key, "-o", str(out),
         "-c", str(config)],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )


def test_streams_follow_a_block_moving_back_and_forth(tmp_path):
    original = tmp_path / "original.bin"
    original.write_bytes(os.urandom(SIZE))
    (tmp_path / "mesh").mkdir()
    with running_mesh(tmp_path / "mesh", n=2) as mesh, mesh.client() as c:
        info = c.put_file("follow/file", original, node="node1")
        block = info.block_id
        failures: list[str] = []
        straddled = {"get_file": 0, "read_to_file": 0, "grid retrieve": 0}

        def retrieve(way: str, i: int, mover: Mover) -> None:
            out = tmp_path / f"{way.replace(' ', '-')}-{i}.bin"
            start = time.monotonic()
            try:
                if way == "get_file":
                    c.get_file("follow/file", out)
                elif way == "read_to_file":
                    c.read_to_file(block, out, offset=info.offset, size=info.length)
                else:
                    run = _grid_retrieve(mesh.config_path, "follow/file", out)
                    if run.returncode != 0:
                        failures.append(f"{way} #{i}: exit {run.returncode}: {run.stderr.strip()}")
                        return
            except Exception as exc:  # noqa: BLE001 - every failure is reported at the end
                failures.append(f"{way} #{i}: {type(exc).__name__}: {exc}")
                return
            finally:
                straddled[way] += mover.moves_during(start, time.monotonic()) > 0
            if not filecmp.cmp(out, original, shallow=False):
                failures.append(f"{way} #{i}: the file differs from the original")
            out.unlink()

        with Mover(mesh, block) as mover:
            for i in range(ROUNDS):
                for way in straddled:
                    retrieve(way, i, mover)
        assert not mover.errors, mover.errors
        assert not failures, "\n".join(failures)
        # the race really happened: moves finished while each kind of retrieve was reading
        assert all(straddled.values()), straddled
        assert len(mover.done_at) >= 2 * ROUNDS, len(mover.done_at)
        c.delete("follow/file")


def test_a_key_naming_another_object_midway_is_an_error_not_a_mix(tmp_path):
    data = os.urandom(40 * MiB)
    (tmp_path / "mesh").mkdir()
    with running_mesh(tmp_path / "mesh", n=2) as mesh, mesh.client() as c, \
            mesh.client() as other:
        c.put_bytes("follow/replaced", data, node="node1")
        out = tmp_path / "out.bin"
        replaced = []

        def progress(n: int) -> None:
            # after the first chunk arrives, the key is replaced by another object on node2,
            # which frees the block the reader is in the middle of
            if not replaced:
                replaced.append(other.put_bytes("follow/replaced", b"another object",
                                                node="node2", replace=True))

        with pytest.raises(ObjectChanged, match="changed while it was being read") as caught:
            c.get_file("follow/replaced", out, progress=progress)
        assert isinstance(caught.value, IntegrityError)  # callers catching the parent see it
        assert replaced and c.get_bytes("follow/replaced") == b"another object"
        c.delete("follow/replaced")
