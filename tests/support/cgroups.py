"""A real memory cgroup for a test: processes started through it see a small machine.

``memory_cgroup(limit)`` makes a child of this process's own memory cgroup (v2 or v1) with that
limit, yields a ``Cgroup`` whose ``command(argv)`` wraps a command so it joins the group before it
execs, and removes the group at the end (after killing what is left in it). Tests that need it
skip when cgroups cannot be made here (no permission, no memory controller).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from mesh.hostmem import _own_paths

ROOT = Path("/sys/fs/cgroup")


@dataclass
class Cgroup:
    path: Path
    kind: str  # "v1" or "v2"

    def command(self, argv: list[str]) -> list[str]:
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *argv]

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []


def _make(limit: int) -> Cgroup:
    v2, v1 = _own_paths(None)
    name = f"mesh-test-{os.getpid()}-{time.monotonic_ns()}"
    if (ROOT / "memory").is_dir() and v1 is not None:
        path = ROOT / "memory" / v1.lstrip("/") / name
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(limit))
        return Cgroup(path, "v1")
    if (ROOT / "cgroup.controllers").exists() and v2 is not None:
        path = ROOT / v2.lstrip("/") / name
        path.mkdir()
        (path / "memory.max").write_text(str(limit))
        return Cgroup(path, "v2")
    raise OSError("no memory cgroup hierarchy")


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Cgroup]:
    try:
        group = _make(limit)
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        yield group
    finally:
        for pid in group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            group.path.rmdir()
