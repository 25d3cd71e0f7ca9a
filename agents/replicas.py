"""The rules of a replicated block, pure: where its copies go, how its replica set changes, and
when a copy may still serve (the design is ``docs/durability.md``).

- ``place``: distinct nodes for N copies, on distinct hosts when the cluster has them (the host is
  the failure domain: two agents on one machine are not two copies). ``spread="host"`` refuses
  what cannot be spread (``PlacementShort``); ``spread="node"`` accepts shared hosts and says so.
- ``ReplicaSet``: the copies of one block, primary first, and its epoch. Every change (a member
  dead, a repair target added, a move) makes a new set with the epoch one higher; a copy takes
  writes only from the primary of its own epoch (``verdict``), so a member the mesh has moved
  on from (paused, partitioned) can no longer get a write acknowledged.
- ``Lease``: a copy serves reads, and a primary acknowledges writes, only while it has heard from
  the rest of its set within ``lease_s(dead_after_s)``: half the time after which the others may
  declare it dead and go on without it. So by the time they do, it has stopped serving (monotonic
  clocks run on while a process is stopped: a copy resumed after SIGSTOP finds its lease over).

Not here: sockets, timers, the store (``agents/``), the membership view (``mesh/membership.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mesh.errors import PlacementShort

PRIMARY = "primary"
BACKUP = "backup"
SPREADS = ("host", "node")


@dataclass(frozen=True)
class Candidate:
    node: str
    host: str  # the failure domain: the machine the agent runs on
    room: int  # bytes it can still take


@dataclass(frozen=True)
class Placement:
    nodes: tuple[str, ...]  # primary first
    shared_hosts: bool  # some copies share a machine (only with spread="node")


def place(copies: int, size: int, candidates: list[Candidate], spread: str = "host",
          exclude: frozenset[str] = frozenset(), keep_apart: frozenset[str] = frozenset(),
          placed: int = 0) -> Placement:
    """``copies`` nodes with room for ``size``, most room first, each on a host of its own
    while there are hosts left. ``exclude``: nodes that may not be chosen (they hold a copy
    already); ``keep_apart``: hosts already holding a copy (a repair adds to a set);
    ``placed``: copies placed already (the primary's own), counted in the message only."""
    if copies < 1:
        raise ValueError("copies must be at least 1")
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, not {spread!r}")
    fit = sorted((c for c in candidates if c.room >= size and c.node not in exclude),
                 key=lambda c: (-c.room, c.node))
    chosen: list[Candidate] = []
    hosts = set(keep_apart)
    for c in fit:  # first pass: a host of its own each
        if len(chosen) < copies and c.host not in hosts:
            chosen.append(c)
            hosts.add(c.host)
    shared = False
    if len(chosen) < copies and spread == "node":
        for c in fit:  # second pass: any node left
            if len(chosen) < copies and c not in chosen:
                chosen.append(c)
                shared = True
    if len(chosen) < copies:
        domains = "hosts" if spread == "host" else "nodes"
        total = copies + placed
        raise PlacementShort(
            f"{total} copies of {size} bytes need {total} {domains} with room; "
            f"{len(chosen) + placed} found" + (" (spread='node' accepts copies on one machine)"
                                               if spread == "host" else ""))
    return Placement(tuple(c.node for c in chosen), shared)


@dataclass(frozen=True)
class ReplicaSet:
    epoch: int
    members: tuple[str, ...]  # the nodes holding a copy, primary first
    # members whose copy a repair is still filling: they apply every write (so they miss none)
    # but serve no read and can never be primary until the set says they are synced
    syncing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.epoch < 1 or not self.members or len(set(self.members)) != len(self.members):
            raise ValueError(f"a replica set needs an epoch >= 1 and distinct members: {self}")
        if not set(self.syncing) <= set(self.members[1:]):
            raise ValueError(f"only backups can be syncing: {self}")

    @property
    def primary(self) -> str:
        return self.members[0]

    @property
    def current(self) -> tuple[str, ...]:
        """The members holding a complete copy, primary first."""
        return tuple(m for m in self.members if m not in self.syncing)

    def role(self, node: str) -> str | None:
        if node not in self.members:
            return None
        return PRIMARY if node == self.primary else BACKUP

    def without(self, node: str) -> ReplicaSet:
        """The set once ``node`` is gone (dead, drained): the next member is primary if it was.
        ``ValueError`` for the last member: a block whose every copy is gone is lost, not
        re-elected."""
        if node not in self.members:
            return self
        rest = tuple(m for m in self.members if m != node)
        syncing = tuple(m for m in self.syncing if m != node)
        complete = [m for m in rest if m not in syncing]
        if not complete:
            raise ValueError(f"{node} holds the only complete copy")
        # a syncing copy is never primary: the first complete one is
        rest = tuple(complete[:1]) + tuple(m for m in rest if m != complete[0])
        return ReplicaSet(self.epoch + 1, rest, syncing)

    def with_member(self, node: str) -> ReplicaSet:
        """The set with a new copy (a repair or a move's target), last, syncing until
        ``synced``."""
        if node in self.members:
            raise ValueError(f"{node} holds a copy already")
        return replace(self, epoch=self.epoch + 1, members=self.members + (node,),
                       syncing=self.syncing + (node,))

    def synced(self, node: str) -> ReplicaSet:
        """The set once ``node``'s copy is complete."""
        if node not in self.syncing:
            return self
        return replace(self, epoch=self.epoch + 1,
                       syncing=tuple(m for m in self.syncing if m != node))

    def record(self) -> dict:
        return {"epoch": self.epoch, "nodes": list(self.members), "syncing": list(self.syncing)}

    @classmethod
    def from_record(cls, rec: dict) -> ReplicaSet:
        """A set from the wire; ``ValueError`` when it is not a valid set."""
        epoch, nodes, syncing = rec.get("epoch"), rec.get("nodes"), rec.get("syncing", [])
        if isinstance(epoch, bool) or not isinstance(epoch, int) or \
                not isinstance(nodes, list) or not isinstance(syncing, list) or \
                not all(isinstance(n, str) and n for n in nodes + syncing):
            raise ValueError("a replica set is {epoch: int, nodes: [str], syncing: [str]}")
        return cls(epoch, tuple(nodes), tuple(syncing))


APPLY = "apply"  # the sender is this set's primary, in this set's epoch
STALE = "stale"  # the sender's epoch is older: refuse (it is fenced), and say the current set
AHEAD = "ahead"  # the sender's epoch is newer: this copy missed a change; refuse, catch up
NOT_PRIMARY = "not_primary"  # same epoch, but the sender is not its primary: refuse


def verdict(mine: ReplicaSet, sender: str, epoch: int) -> str:
    """What a copy does with a write forwarded by ``sender`` in ``epoch``."""
    if epoch < mine.epoch:
        return STALE
    if epoch > mine.epoch:
        return AHEAD
    return APPLY if sender == mine.primary else NOT_PRIMARY


def lease_s(dead_after_s: float) -> float:
    """How long a copy may serve after it last heard from the rest of its set: half the time
    after which they may go on without it (the other half covers a message in flight)."""
    return dead_after_s / 2


@dataclass
class Lease:
    length_s: float
    heard_at: float = float("-inf")  # monotonic seconds

    def renew(self, now: float) -> None:
        self.heard_at = max(self.heard_at, now)

    def holds(self, now: float) -> bool:
        return now - self.heard_at < self.length_s
