"""Who is in the mesh: a membership table fed by heartbeats and relayed gossip.

Pure logic, no sockets and no clock of its own: callers pass ``now`` (monotonic seconds). The
agent feeds it every heartbeat it hears (``observe``) and publishes ``gossip_entries``; the client
gets ``snapshot`` rows through the NODES request.

Merge rule: a higher incarnation replaces what we knew (the agent restarted); the same
incarnation only moves ``last_heard`` forward (``now - age_s`` for relayed entries, so hearsay
never makes a node look fresher than its freshest witness); a lower incarnation is stale and
ignored. A node silent for ``suspect_after_s`` is "suspect", for ``dead_after_s`` "dead". Dead
nodes are not relayed, so a dead node cannot be brought back by gossip, only by its own
heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"

_STAT_FIELDS = ("capacity", "used", "room", "host_available", "host_total", "blocks")


@dataclass
class Member:
    node: str
    address: str
    gossip: str
    incarnation: int
    version: str
    capacity: int
    used: int
    room: int
    host_available: int
    blocks: int
    last_heard: float
    stats_heard: float  # when the stat fields were current
    host_total: int = 0  # 0 from agents older than the field

    def as_record(self, now: float, state: str) -> dict[str, Any]:
        return {
            "node": self.node,
            "address": self.address,
            "gossip": self.gossip,
            "incarnation": self.incarnation,
            "version": self.version,
            "capacity": self.capacity,
            "used": self.used,
            "room": self.room,
            "host_available": self.host_available,
            "host_total": self.host_total,
            "blocks": self.blocks,
            "age_s": max(0.0, now - self.last_heard),
            "state": state,
        }


class MembershipTable:
    def __init__(self, suspect_after_s: float, dead_after_s: float):
        self.suspect_after_s = suspect_after_s
        self.dead_after_s = dead_after_s
        self._members: dict[str, Member] = {}

    def observe(self, rec: dict[str, Any], now: float, age_s: float = 0.0) -> bool:
        """Merge one record; True when it names a node or incarnation not known before."""
        heard = now - max(0.0, float(age_s))
        known = self._members.get(rec["node"])
        if known is not None and rec["incarnation"] < known.incarnation:
            return False
        if known is None or rec["incarnation"] > known.incarnation:
            self._members[rec["node"]] = Member(
                node=rec["node"],
                address=rec["address"],
                gossip=rec["gossip"],
                incarnation=rec["incarnation"],
                version=str(rec.get("version", "")),
                capacity=rec["capacity"],
                used=rec["used"],
                room=rec.get("room", max(0, rec["capacity"] - rec["used"])),
                host_available=rec["host_available"],
                blocks=rec["blocks"],
                host_total=int(rec.get("host_total") or 0),
                last_heard=heard,
                stats_heard=heard,
            )
            return True
        if heard > known.stats_heard:
            for name in _STAT_FIELDS:
                setattr(known, name, rec.get(name, getattr(known, name)))
            known.stats_heard = heard
        known.last_heard = max(known.last_heard, heard)
        return False

    def state(self, member: Member, now: float) -> str:
        silent = now - member.last_heard
        if silent >= self.dead_after_s:
            return DEAD
        if silent >= self.suspect_after_s:
            return SUSPECT
        return ALIVE

    def get(self, node: str) -> Member | None:
        return self._members.get(node)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        return [
            m.as_record(now, self.state(m, now))
            for m in sorted(self._members.values(), key=lambda m: m.node)
        ]

    def gossip_entries(self, now: float, exclude: str | None = None) -> list[dict[str, Any]]:
        out = []
        for m in self._members.values():
            if m.node == exclude:
                continue
            state = self.state(m, now)
            if state != DEAD:
                rec = m.as_record(now, state)
                del rec["state"]
                out.append(rec)
        return out
