"""Memory pressure: the seed's score and the offload decision.

Covers: ``pressure_score`` (seed 004's piecewise score in used/total), its inverse
``usage_for_score`` (the fill level a threshold means), ``NodeLoad`` (what a heartbeat or the
master's own host tells about one node) and ``should_offload`` (seed 004's decision).

Does not cover: reading the host's memory (``mesh/hostmem.py``), choosing which blocks go where
(``mesh/balance/rebalance.py``), reservations (``mesh/balance/placement.py``). Pure: no I/O.

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

from dataclasses import dataclass

from mesh.membership import NodeInfo
from mesh.units import GiB

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
    def from_node(cls, n: NodeInfo) -> NodeLoad:
        """What a node's record says (agents report their share and their host)."""
        host_used = max(0, n.host_total - n.host_available) if n.host_total else 0
        return cls(n.name, n.used, n.capacity, host_used, n.host_total, n.alive)

    @classmethod
    def from_stats(cls, row: dict) -> NodeLoad:
        """One node of ``MeshClient.stats()``: a node record plus its state."""
        return cls.from_node(NodeInfo.from_record(row))

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
