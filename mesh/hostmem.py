"""How much RAM this process may use: the host's, narrowed to its cgroup's limit and usage.

Covers: ``host_memory`` (psutil's view of the machine, then the tightest memory limit over this
process's cgroup and its parents, cgroup v2 then v1) and ``HostMemory``, the reading it returns.
The agent takes one reading per heartbeat and per allocation (``agents/store.py``); the master's
own load is read the same way (``mesh/balance/rebalance.py``).

Does not cover: what a reading means for placement (the pressure score lives in
``mesh/balance/pressure.py``). No sockets, no Ray: the agent imports this module.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil


@dataclass(frozen=True)
class HostMemory:
    total: int
    available: int
    source: str  # "host" or "cgroup v2" / "cgroup v1"

    @property
    def used(self) -> int:
        return max(0, self.total - self.available)


_NO_LIMIT = 1 << 60  # cgroup v1 writes a huge number for "unlimited"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _NO_LIMIT else value


def _inactive_file(stat_path: Path, key: str) -> int:
    """Reclaimable page cache in a cgroup's memory.stat (not counted as used, as free(1) does)."""
    try:
        for line in stat_path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_paths(proc_cgroup: str | None) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's memory hierarchy."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None, None
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _chain(base: Path, path: str | None) -> list[Path]:
    """``base/path`` and each of its parents up to ``base`` (a parent's limit applies too)."""
    out = []
    rel = Path((path or "/").lstrip("/"))
    while True:
        out.append(base / rel)
        if rel == Path("."):
            return out
        rel = rel.parent


# (limit, usage file, reclaimable key in memory.stat) of one limited cgroup directory
_Limited = tuple[int, Path, str]
# how long ``HostMemoryReader`` trusts which directories are limited, and their limits
LAYOUT_TTL_S = 10.0


def _limits(root: str | os.PathLike, proc_cgroup: str | None) -> tuple[str, list[_Limited]] | None:
    """The limited directories over this process's cgroup, in the first hierarchy (cgroup v2,
    else v1) that has any: (kind, [(limit, usage file, inactive key)]), or None."""
    base = Path(root)
    v2_path, v1_path = _own_paths(proc_cgroup)
    layouts = (
        (_chain(base, v2_path), "memory.max", "memory.current", "inactive_file", "cgroup v2"),
        (_chain(base / "memory", v1_path), "memory.limit_in_bytes", "memory.usage_in_bytes",
         "total_inactive_file", "cgroup v1"),
    )
    for dirs, limit_file, usage_file, inactive_key, kind in layouts:
        limited = [(limit, d / usage_file, inactive_key) for d in dirs
                   if (limit := _read_int(d / limit_file)) is not None]
        if limited:
            return kind, limited
    return None


def _tightest(kind: str, limited: list[_Limited]) -> tuple[int, int, str]:
    """(limit, usage, kind) of the limited directory with the least room left, usage read now
    (less its reclaimable page cache)."""
    best: tuple[int, int] | None = None
    for limit, usage_file, inactive_key in limited:
        usage = max(0, (_read_int(usage_file) or 0)
                    - _inactive_file(usage_file.parent / "memory.stat", inactive_key))
        if best is None or limit - usage < best[0] - best[1]:
            best = (limit, usage)
    assert best is not None
    return best[0], best[1], kind


def cgroup_memory(root: str | os.PathLike = "/sys/fs/cgroup",
                  proc_cgroup: str | None = None) -> tuple[int, int, str] | None:
    """(limit, usage, kind) of the tightest memory limit over this process's cgroup and its
    parents (cgroup v2, else v1), or None when none is limited. ``proc_cgroup`` is the text of
    /proc/self/cgroup (read when None). Inside a container the container's own cgroup is the
    root of the mount, so the root is always looked at."""
    found = _limits(root, proc_cgroup)
    return None if found is None else _tightest(*found)


def host_memory(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                proc_cgroup: str | None = None) -> HostMemory:
    """Total and available RAM for this process: the host's, or its cgroup's when smaller."""
    return _narrowed(cgroup_memory(cgroup_root, proc_cgroup))


class HostMemoryReader:
    """``host_memory()`` for a caller that reads it often (the agent: every heartbeat and
    allocation): which cgroup directories are limited, and their limits, are looked up again
    only every ``LAYOUT_TTL_S``; the usage under a limit and the host's figures are read every
    time. On a host without a limit that skips every cgroup file: 96 us a reading became 22."""

    def __init__(self, cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                 proc_cgroup: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.cgroup_root, self.proc_cgroup = cgroup_root, proc_cgroup
        self._clock = clock
        self._layout: tuple[str, list[_Limited]] | None = None
        self._until = float("-inf")

    def __call__(self) -> HostMemory:
        now = self._clock()
        if now >= self._until:
            self._layout = _limits(self.cgroup_root, self.proc_cgroup)
            self._until = now + LAYOUT_TTL_S
        return _narrowed(None if self._layout is None else _tightest(*self._layout))


def _narrowed(limited: tuple[int, int, str] | None) -> HostMemory:
    vm = psutil.virtual_memory()
    total, available, source = int(vm.total), int(vm.available), "host"
    if limited is not None:
        limit, usage, kind = limited
        if limit < total:
            total, source = limit, kind
            available = min(available, max(0, limit - usage))
    return HostMemory(total, available, source)
