"""Memory pressure: the seed's score, the offload decision, and how full a host really is.

Covers: ``pressure_score`` (seed 004's piecewise score in used/total), its inverse
``usage_for_score`` (the fill level a threshold means), ``NodeLoad`` (what a heartbeat or the
master's own host tells about one node), ``should_offload`` (seed 004's decision), and
``host_memory`` (psutil's view, narrowed to the cgroup's limit and usage inside a container).

Does not cover: choosing which blocks go where (``mesh/rebalance.py``), reservations
(``mesh/placement.py``). Nothing here imports Ray or touches a socket, so the agent uses
``host_memory`` too.

The score keeps seed 004's shape (flat up to 60 % full, gentle to 80 %, sharp above) and its
breakpoints, but is continuous and never falls as a node fills. The seed's own formula drops from
0.5 to 0 just above 80 % and from 0.1 to 0 just above 60 % (so an 85 %-full node would look calmer
than a 75 % one), and it fails the seed's own test (92 % full must score above 0.8; the formula
gives 0.6). Ours, in u = used/total:

    u <= 0.6    0.6 < u <= 0.8         u > 0.8
    0.1         0.1 + (u - 0.6) * 2    min(1, 0.5 + (u - 0.8) * 5)

so the seed's thresholds mean: high 0.7 = above 84 % full, low 0.3 = below 70 % full.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

GiB = 1024**3
UNKNOWN_PRESSURE = 0.5  # the seed's answer when a node has told us nothing
DEFAULT_BUFFER_GB = 2.0  # the seed keeps 2 GB free on a node before it offloads


def pressure_score(used: int | float, total: int | float) -> float:
    """Seed 004's score in 0.1..1 (higher = more pressure), made continuous and monotonic (see
    the module doc); 0.5 when ``total`` is unknown."""
    if total <= 0:
        return UNKNOWN_PRESSURE
    u = max(0.0, used / total)
    if u > 0.8:
        return min(1.0, 0.5 + (u - 0.8) * 5)
    if u > 0.6:
        return 0.1 + (u - 0.6) * 2
    return 0.1


def usage_for_score(score: float) -> float:
    """The highest fill level (used/total) whose score is at most ``score``.

    Scores at or below 0.1 cannot be told apart under 60 % full, so they map to 0.6.
    """
    if score >= 1.0:
        return 0.9
    if score > 0.5:
        return 0.8 + (score - 0.5) / 5
    if score > 0.1:
        return 0.6 + (score - 0.1) / 2
    return 0.6


@dataclass(frozen=True)
class NodeLoad:
    """One node's memory as the mesh sees it (bytes).

    ``used``/``capacity`` is the agent's share; ``host_used``/``host_total`` is the machine (or
    its cgroup). The master has no share: its capacity is its host.
    """

    name: str
    used: int
    capacity: int
    host_used: int
    host_total: int
    alive: bool = True

    @classmethod
    def from_stats(cls, n: dict) -> NodeLoad:
        """One node of ``MeshClient.stats()`` (agents report their share and their host)."""
        host_total = int(n.get("host_total") or 0)
        host_used = max(0, host_total - int(n.get("host_available") or 0)) if host_total else 0
        return cls(n["node"], int(n["used"]), int(n["capacity"]), host_used, host_total,
                   n["state"] == "alive")

    @property
    def available(self) -> int:
        """Bytes that can still be taken on this node, by share and by host."""
        by_share = self.capacity - self.used
        by_host = self.host_total - self.host_used
        return max(0, min(by_share, by_host))

    @property
    def share_pressure(self) -> float:
        return pressure_score(self.used, self.capacity)

    @property
    def host_pressure(self) -> float:
        return pressure_score(self.host_used, self.host_total)

    @property
    def pressure(self) -> float:
        """The worse of the share's and the host's score."""
        return max(self.share_pressure, self.host_pressure)

    def moved(self, delta: int) -> NodeLoad:
        """This node after ``delta`` bytes arrive (positive) or leave (negative)."""
        return NodeLoad(self.name, self.used + delta, self.capacity,
                        self.host_used + delta, self.host_total, self.alive)


@dataclass(frozen=True)
class OffloadDecision:
    offload: bool
    reasons: tuple[str, ...]
    pressure: float
    available_gb: float

    def __bool__(self) -> bool:
        return self.offload


def should_offload(node: NodeLoad | None, estimated_gb: float, high: float = 0.7,
                   buffer_gb: float = DEFAULT_BUFFER_GB) -> OffloadDecision:
    """Seed 004's decision: offload when the node lacks room for ``estimated_gb``, its pressure
    is above ``high``, or less than ``buffer_gb`` would be left free. Unknown node: offload."""
    if node is None or not node.alive:
        return OffloadDecision(True, ("nothing is known about the node's memory",),
                               UNKNOWN_PRESSURE, 0.0)
    available_gb = node.available / GiB
    pressure = node.pressure
    reasons = []
    if estimated_gb > available_gb:
        reasons.append(f"needs {estimated_gb:g} GB, {available_gb:.1f} GB available")
    if pressure > high:
        reasons.append(f"pressure {pressure:.2f} is above {high:g}")
    if available_gb < buffer_gb:
        reasons.append(f"{available_gb:.1f} GB available is under the {buffer_gb:g} GB buffer")
    return OffloadDecision(bool(reasons), tuple(reasons), pressure, available_gb)


# --- the host's memory, cgroup-aware -------------------------------------------------------


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


def cgroup_memory(root: str | os.PathLike = "/sys/fs/cgroup",
                  proc_cgroup: str | None = None) -> tuple[int, int, str] | None:
    """(limit, usage, kind) of the tightest memory limit over this process's cgroup and its
    parents (cgroup v2, else v1), or None when none is limited. ``proc_cgroup`` is the text of
    /proc/self/cgroup (read when None). Inside a container the container's own cgroup is the
    root of the mount, so the root is always looked at."""
    base = Path(root)
    v2_path, v1_path = _own_paths(proc_cgroup)
    layouts = (
        (_chain(base, v2_path), "memory.max", "memory.current", "inactive_file", "cgroup v2"),
        (_chain(base / "memory", v1_path), "memory.limit_in_bytes", "memory.usage_in_bytes",
         "total_inactive_file", "cgroup v1"),
    )
    for dirs, limit_file, usage_file, inactive_key, kind in layouts:
        best: tuple[int, int] | None = None
        for d in dirs:
            limit = _read_int(d / limit_file)
            if limit is None:
                continue
            usage = (_read_int(d / usage_file) or 0) - _inactive_file(d / "memory.stat",
                                                                       inactive_key)
            usage = max(0, usage)
            if best is None or limit - usage < best[0] - best[1]:
                best = (limit, usage)
        if best is not None:
            return best[0], best[1], kind
    return None


def host_memory(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                proc_cgroup: str | None = None) -> HostMemory:
    """Total and available RAM for this process: the host's, or its cgroup's when smaller."""
    vm = psutil.virtual_memory()
    total, available, source = int(vm.total), int(vm.available), "host"
    limited = cgroup_memory(cgroup_root, proc_cgroup)
    if limited is not None:
        limit, usage, kind = limited
        if limit < total:
            total, source = limit, kind
            available = min(available, max(0, limit - usage))
    return HostMemory(total, available, source)
