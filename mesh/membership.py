"""Who is in the mesh: a membership table fed by heartbeats and relayed gossip.

Pure logic, no sockets and no clock of its own: callers pass ``now`` (monotonic seconds). The
agent feeds it every heartbeat it hears (``observe``) and publishes ``gossip_entries``; the client
gets ``snapshot`` rows through the NODES request. ``NodeInfo`` is the one record of a node, for
the agent's table, the client's view, ``stats()`` and placement (``NodeLoad.from_node``).

Merge rule (``MembershipTable`` has it in full): only a node's own heartbeat changes what we
know of it; a higher incarnation replaces what we knew (the agent restarted); the same
incarnation only moves ``last_heard`` forward (``now - age_s`` for relayed entries, so hearsay
never makes a node look fresher than its freshest witness); a lower incarnation is stale and
ignored. Relayed entries introduce unknown nodes and refresh known ones, nothing more. The table
holds at most ``MAX_MEMBERS`` nodes. A node silent for ``suspect_after_s`` is "suspect", for
``dead_after_s`` "dead". Dead nodes are not relayed, so a dead node cannot be brought back by
gossip, only by its own heartbeat.

Stretched heartbeats: in a large mesh an agent beats less often, so that what each agent takes in
stays near ``mesh.heartbeat_intake_per_s``, and what the agents sharing a machine take in together
near ``mesh.heartbeat_host_intake_per_s`` (``stretched_interval``), and says so in its record
(``beat_ms``: how long until its next heartbeat). Whoever times its silence scales
``suspect_after_s`` and ``dead_after_s`` by the same factor (``stretch``, at most
``MAX_STRETCH``). Replica leases do not stretch: a longer silence before a node is declared dead
only leaves its lease more time to run out (docs/scale.md).

What a heartbeat relays (``gossip_digest``) is bounded, so that its size does not grow with the
mesh: the records that changed here lately (a node new to us, a new incarnation or address:
``CHANGE_RELAY_S``, at most ``DIGEST_RECENT``) and ``DIGEST_SAMPLE`` others taken round-robin.
Every agent follows every peer's own heartbeat (``agents/gossip.py``), so the relayed records only
introduce nodes; docs/scale.md has the figures and what changes past 1,000 nodes.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass
from typing import Any

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
DOWN = "down"  # in the cluster file, but no agent has heard of it (the client's view only)
# What an agent's STATS adds to its record, passed on by ``MeshClient.stats`` (counters for
# ``grid top``; agents/metrics.py)
LIVE_FIELDS = ("ops", "uptime_s", "metrics_url")

# Nodes one agent's table holds, at most (MembershipTable says what happens at the bound), and
# peers one heartbeat relays: 256 entries of a few hundred bytes stay far below the 1 MiB limit
# of a heartbeat (the agent also halves the list until the encoded heartbeat fits).
MAX_MEMBERS = 1024
MAX_GOSSIP_PEERS = 256
MAX_NODE_NAME_CHARS = 255
# A heartbeat's digest (``MembershipTable.gossip_digest``): records that changed within
# CHANGE_RELAY_S, the freshest DIGEST_RECENT of them, plus DIGEST_SAMPLE others in turn.
CHANGE_RELAY_S = 5.0
DIGEST_RECENT = 16
DIGEST_SAMPLE = 4

# The fields a heartbeat refreshes without a new incarnation.
_STAT_FIELDS = ("capacity", "used", "room", "host_available", "host_total", "blocks",
                "evictable", "beat_ms")

# How far a node may stretch its heartbeat interval, and so its peers' silence timeouts: a dead
# node is noticed within 4 x dead_after_s at worst (12 s with the defaults, below the clients'
# 15 s of failover: mesh/client/transfer.py FAILOVER_S).
MAX_STRETCH = 4.0
# A stretched interval grows by at most half per heartbeat: the heartbeat announcing it may be
# lost, and then the next one must still come before its peers' suspect_after_s for the interval
# they know (3 intervals with the defaults).
STRETCH_STEP = 1.5


MAX_ADDRESS_CHARS = 300
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def parse_agent_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of an agent's endpoint ``tcp://host:port``; ``ValueError`` unless the
    host is an IPv4 address, an IPv6 address in brackets or a hostname (RFC 1123 labels of
    letters, digits and inner hyphens, 253 characters at most; all-numeric only as an IPv4
    address) and the port is 1-65535. Checked before an agent connects anywhere a heartbeat or
    a MOVE/PULL names: libzmq raises on what it cannot parse, and an address that is a valid
    shape but names nothing only costs reconnect attempts."""
    if not isinstance(address, str) or len(address) > MAX_ADDRESS_CHARS or \
            not address.startswith("tcp://"):
        raise ValueError(f"not an address like tcp://host:port: {address!r}")
    rest = address[len("tcp://"):]
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
        if not sep:
            raise ValueError(f"not an address like tcp://[ipv6]:port: {address!r}")
        ipaddress.IPv6Address(host)  # ValueError if it is not one
    else:
        host, sep, port = rest.rpartition(":")
        if not sep or not _valid_host(host):
            raise ValueError(f"not a host name or IPv4 address in {address!r}")
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1-65535 in {address!r}")
    return host, int(port)


def _valid_host(host: str) -> bool:
    labels = host.split(".")
    if all(label.isdigit() and label.isascii() for label in labels):
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def is_agent_address(address: str) -> bool:
    """Whether ``parse_agent_address`` accepts ``address``."""
    try:
        parse_agent_address(address)
        return True
    except ValueError:
        return False


def state_for_silence(silent_s: float, suspect_after_s: float, dead_after_s: float,
                      factor: float = 1.0) -> str:
    """alive, suspect or dead after ``silent_s`` seconds without a heartbeat, from a node whose
    timeouts are stretched by ``factor`` (``stretch``)."""
    if silent_s >= dead_after_s * factor:
        return DEAD
    if silent_s >= suspect_after_s * factor:
        return SUSPECT
    return ALIVE


def stretch(beat_ms: int, heartbeat_interval_s: float | None) -> float:
    """By how much a node that announces ``beat_ms`` until its next heartbeat stretches the
    cluster's ``heartbeat_interval_s``: 1.0 (no stretch) to ``MAX_STRETCH``; 1.0 when either is
    unknown (0, None: an agent older than the field)."""
    if not beat_ms or not heartbeat_interval_s:
        return 1.0
    return min(MAX_STRETCH, max(1.0, beat_ms / (1000.0 * heartbeat_interval_s)))


def stretched_interval(base_s: float, peers: int, intake_per_s: float,
                       previous_s: float | None = None, co_located: int = 1,
                       host_intake_per_s: float = 0.0) -> float:
    """An agent's heartbeat interval when it has ``peers`` live peers: the cluster's ``base_s``,
    lengthened so that each agent takes in about ``intake_per_s`` heartbeats a second
    (``peers / intake_per_s``; 0 never stretches, whatever the machine's bound) and, when
    ``co_located`` agents (this one included) share its machine's CPUs, so that together they
    take in about ``host_intake_per_s`` (``co_located * peers / host_intake_per_s``; 0: no such
    bound); at most ``MAX_STRETCH`` times ``base_s``, and at most ``STRETCH_STEP`` times the
    ``previous_s`` interval. Whole milliseconds."""
    want = base_s
    if intake_per_s > 0:
        want = max(want, peers / intake_per_s)
        if host_intake_per_s > 0 and co_located > 1:
            want = max(want, co_located * peers / host_intake_per_s)
    want = min(MAX_STRETCH * base_s, want)
    if previous_s is not None:
        want = min(want, max(base_s, previous_s * STRETCH_STEP))
    return max(base_s, int(want * 1000) / 1000)


@dataclass(frozen=True)
class NodeInfo:
    """The one record of a node: what its heartbeat says, plus its state and age as seen by
    whoever holds the record. Sizes are bytes; ``age_s`` is seconds since it was last heard.

    On the wire (heartbeats, NODES, STATS) it travels as ``record()``: a map keyed ``node``,
    ``address``, ... (``mesh/protocol.py``); ``from_record`` reads one back."""

    name: str
    address: str
    state: str  # alive, suspect, dead, down
    incarnation: int
    capacity: int
    used: int
    room: int
    host_available: int
    blocks: int
    age_s: float
    version: str
    host_total: int = 0  # 0 from agents older than the field
    gossip: str = ""
    # its public key (z85), in NODES replies of a keyed cluster: how a client that learns of a
    # node from an agent it has authenticated can shake hands with it (mesh/security/link.py)
    key: bytes | None = None
    # "keyed" (authenticated, sealed), "loopback" (no keys, loopback only), "insecure" (no keys,
    # bound beyond loopback on purpose); "" from agents older than the field
    security: str = ""
    # its failure domain: the machine it runs on (``/etc/machine-id``, or what ``--domain``
    # says); two copies of a block in one domain are not two copies (docs/durability.md)
    domain: str = ""
    # bytes its evictable keys hold: room it can make for a new allocation (agents/eviction.py)
    evictable: int = 0
    # milliseconds until its next heartbeat when longer than the cluster's interval (``stretch``);
    # 0: the cluster's interval (and from agents older than the field)
    beat_ms: int = 0
    # its kernel (``mesh.machine.kernel_key``): agents with the same share CPUs, and together
    # stretch their interval (``stretched_interval``); 0: unknown (and from older agents)
    host_key: int = 0

    @property
    def alive(self) -> bool:
        return self.state == ALIVE

    def with_stats(self, changed: dict[str, Any]) -> NodeInfo:
        """A copy with the ``changed`` stat fields: what ``dataclasses.replace`` makes, without
        running ``__init__`` (4 us of every heartbeat taken in: one stat or another changes at
        almost every beat)."""
        new = object.__new__(NodeInfo)
        new.__dict__.update(self.__dict__, **changed)
        return new

    @classmethod
    def from_record(cls, rec: dict[str, Any], state: str | None = None,
                    age_s: float | None = None) -> NodeInfo:
        """A record from the wire; ``state`` and ``age_s`` default to the record's own."""
        return cls(
            name=rec["node"],
            address=rec["address"],
            state=state if state is not None else str(rec.get("state", ALIVE)),
            incarnation=rec["incarnation"],
            capacity=rec["capacity"],
            used=rec["used"],
            room=int(rec["room"]) if rec.get("room") is not None else
            max(0, rec["capacity"] - rec["used"]),  # ("room": nil is as good as none)
            host_available=rec["host_available"],
            blocks=rec["blocks"],
            age_s=float(age_s if age_s is not None else rec.get("age_s", 0.0)),
            version=str(rec.get("version", "")),
            host_total=int(rec.get("host_total") or 0),
            gossip=str(rec.get("gossip", "")),
            key=rec.get("key") if isinstance(rec.get("key"), bytes) else None,
            security=str(rec.get("security") or ""),
            domain=str(rec.get("domain") or ""),
            evictable=_count(rec.get("evictable")),
            beat_ms=_count(rec.get("beat_ms")),
            host_key=_count(rec.get("host_key")),
        )

    def record(self) -> dict[str, Any]:
        """The wire form, without state and age (each holder adds its own)."""
        return {
            "node": self.name,
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
            "security": self.security,
            "domain": self.domain,
            "evictable": self.evictable,
            "beat_ms": self.beat_ms,
            "host_key": self.host_key,
        }


def _count(value: Any) -> int:
    """A non-negative int field that older agents do not send (0 then)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class Member:
    """A node in an agent's table: its latest record and when we heard of it (monotonic s)."""

    info: NodeInfo
    last_heard: float
    stats_heard: float  # when the stat fields were current
    vouched: bool = True  # its record came from its own heartbeat, not only from hearsay
    changed_at: float = 0.0  # when we learned of it or of its identity (incarnation, address)

    def as_record(self, now: float, state: str) -> dict[str, Any]:
        return {**self.info.record(), "age_s": max(0.0, now - self.last_heard), "state": state}


class MembershipTable:
    """Who is in the mesh, as one agent knows it: at most ``max_members`` nodes.

    ``observe(rec, now, age_s, vouched)`` merges one record. ``vouched`` is True for a node's
    own record (the top-level record of a heartbeat), False for hearsay (the ``peers`` a
    heartbeat relays). What a record may change:

    - a vouched record replaces what we know of its node (address, gossip address, incarnation)
      when its incarnation is higher, or when all we had was hearsay; at the same incarnation it
      refreshes the stat fields and the age; a lower one is stale and ignored;
    - hearsay may introduce a node we do not know, and refresh the age (and, for a node known
      only from hearsay, the stat fields) of a known node when it names the same incarnation,
      address and gossip address; it never changes a node's identity or address, so a forged
      relay can neither redirect a node nor declare it restarted;
    - a record whose address or gossip address does not parse (``parse_agent_address``), or
      whose name is over ``MAX_NODE_NAME_CHARS``, is ignored.

    At ``max_members``, hearsay introduces nobody; a node vouching for itself takes the place of
    the hearsay-only member heard longest ago, else of the dead member heard longest ago, else
    it is ignored (``refused`` counts every record turned away for room).
    """

    def __init__(self, suspect_after_s: float, dead_after_s: float,
                 max_members: int = MAX_MEMBERS, heartbeat_interval_s: float | None = None):
        self.suspect_after_s = suspect_after_s
        self.dead_after_s = dead_after_s
        # the cluster's interval: a member announcing a longer one (``beat_ms``) has its
        # timeouts stretched as much (``stretch``); None: never stretched
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_members = max_members
        self.refused = 0
        self._members: dict[str, Member] = {}
        self._turn = -1  # where gossip_digest's round-robin sample goes on (-1: not begun)

    def __len__(self) -> int:
        return len(self._members)

    def observe(self, rec: dict[str, Any], now: float, age_s: float = 0.0,
                vouched: bool = True) -> bool:
        """Merge one record; True when it names a node, an incarnation or an address not known
        before (the caller follows its gossip address)."""
        name = rec.get("node")
        known = self._members.get(name) if isinstance(name, str) else None
        # a record naming a known node as we know it needs no second look at its addresses
        # (most of what an agent hears, so the check of every address stays off the hot path)
        if known is None or (rec.get("incarnation"), rec.get("address"), rec.get("gossip")) != (
                known.info.incarnation, known.info.address, known.info.gossip):
            if not _acceptable(rec):
                return False
        heard = now - max(0.0, float(age_s))
        if known is None:
            if len(self._members) >= self.max_members and not self._make_room(vouched, now):
                self.refused += 1
                return False
            self._members[rec["node"]] = Member(NodeInfo.from_record(rec, ALIVE, 0.0), heard,
                                                heard, vouched, changed_at=now)
            return True
        if vouched and (not known.vouched or rec["incarnation"] > known.info.incarnation):
            changed = (rec["incarnation"], rec["address"], rec["gossip"]) != (
                known.info.incarnation, known.info.address, known.info.gossip)
            self._members[rec["node"]] = Member(NodeInfo.from_record(rec, ALIVE, 0.0), heard,
                                                heard, True,
                                                changed_at=now if changed else known.changed_at)
            return changed
        if rec["incarnation"] != known.info.incarnation:
            return False  # stale, or hearsay claiming a restart the node did not tell us of
        if not vouched and (rec["address"], rec["gossip"]) != (known.info.address,
                                                               known.info.gossip):
            return False
        if heard > known.stats_heard and (vouched or not known.vouched):
            info = known.info  # a new NodeInfo only when a stat changed (most beats: none)
            changed = {name: value for name in _STAT_FIELDS
                       if (value := rec.get(name)) is not None and value != getattr(info, name)}
            if changed:
                known.info = info.with_stats(changed)
            known.stats_heard = heard
        known.last_heard = max(known.last_heard, heard)
        return False

    def merge_heartbeat(self, rec: dict[str, Any], now: float, waited_s: float = 0.0,
                        skip: str | None = None) -> list[dict[str, Any]]:
        """Merge a parsed heartbeat (``protocol.parse_heartbeat``): its sender's own record,
        which it vouches for, then what it relays, as hearsay aged by ``waited_s`` more (how
        long the heartbeat waited to be taken), except entries naming ``skip`` (the taker
        itself). The records that named a node, incarnation or address not known before, in
        order: the caller follows their gossip addresses."""
        new = [rec] if self.observe(rec, now) else []
        for peer in rec["peers"]:
            if peer["node"] != skip and \
                    self.observe(peer, now, peer["age_s"] + waited_s, vouched=False):
                new.append(peer)
        return new

    def moot(self, rec: Any, now: float, waited_s: float = 0.0) -> bool:
        """True when ``rec``, relayed by a heartbeat taken ``waited_s`` after it came, could
        change nothing here that matters, whatever else it holds: it names a member at another
        incarnation than ours (stale, or a restart only the node may announce), or one that has
        spoken for itself since the relayer heard it, or within the last third of
        ``suspect_after_s`` (hearsay keeps a node alive that we stop hearing, and it is taken
        again as soon as the node's own heartbeats are that late). Such entries are most of what
        heartbeats relay, and are left out before they are checked
        (``protocol.parse_heartbeat``). Safe on any input: anything it cannot judge is not
        moot, and is checked."""
        if type(rec) is not dict:
            return False
        name, incarnation, age = rec.get("node"), rec.get("incarnation"), rec.get("age_s")
        known = self._members.get(name) if type(name) is str else None
        if known is None or type(incarnation) is not int:
            return False
        if incarnation != known.info.incarnation:
            return True
        if not known.vouched or type(age) not in (int, float) or not age >= 0:
            return False
        return now - known.last_heard < self.suspect_after_s * self.stretch(known) / 3 or \
            now - (age + waited_s) <= known.last_heard

    def _make_room(self, vouched: bool, now: float) -> bool:
        if not vouched:
            return False
        candidates = [m for m in self._members.values() if not m.vouched] or \
            [m for m in self._members.values() if self.state(m, now) == DEAD]
        if not candidates:
            return False
        del self._members[min(candidates, key=lambda m: m.last_heard).info.name]
        return True

    def stretch(self, member: Member) -> float:
        """How much ``member``'s silence timeouts are stretched (``stretch``)."""
        beat_ms = member.info.beat_ms
        return stretch(beat_ms, self.heartbeat_interval_s) if beat_ms else 1.0

    def dead_after(self, member: Member) -> float:
        """Seconds of silence after which ``member`` is dead here."""
        return self.dead_after_s * self.stretch(member)

    def longest_dead_after(self) -> float:
        """The longest ``dead_after`` of any member (``dead_after_s`` when none stretches)."""
        return self.dead_after_s * max((self.stretch(m) for m in self._members.values()),
                                       default=1.0)

    def state(self, member: Member, now: float) -> str:
        return state_for_silence(now - member.last_heard, self.suspect_after_s, self.dead_after_s,
                                 self.stretch(member))

    def get(self, node: str) -> Member | None:
        return self._members.get(node)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every member's record with its state here, and whether it has spoken for itself
        (``vouched``: only such a node is a move's or a pull's peer)."""
        return [
            {**m.as_record(now, self.state(m, now)), "vouched": m.vouched}
            for m in sorted(self._members.values(), key=lambda m: m.info.name)
        ]

    def states(self, now: float) -> dict[str, str]:
        """{node: its state here}, for every member: what the agent's heartbeat needs of the table
        (dead addresses, the gauges' counts) without building each member's record."""
        return {name: self.state(m, now) for name, m in self._members.items()}

    def co_located(self, host_key: int, states: dict[str, str]) -> int:
        """Members not dead in ``states`` (``MembershipTable.states``) that vouched for a record
        naming ``host_key``: the agents sharing a machine with the one whose key it is, itself
        included (1 when the key is unknown). Hearsay counts for nothing."""
        if not host_key:
            return 1
        return max(1, sum(1 for name, state in states.items()
                          if state != DEAD and (m := self._members.get(name)) is not None
                          and m.vouched and m.info.host_key == host_key))

    def vouched_at(self, address: str, now: float) -> str | None:
        """The node at data ``address`` that has spoken for itself (not only through hearsay)
        and is not dead: the only nodes an agent connects out to for a move or a pull."""
        for m in self._members.values():
            if m.info.address == address and m.vouched and self.state(m, now) != DEAD:
                return m.info.name
        return None

    def gossip_entries(self, now: float, exclude: str | None = None,
                       limit: int = MAX_GOSSIP_PEERS) -> list[dict[str, Any]]:
        """Non-dead members to relay, at most ``limit``: vouched ones first, freshest first."""
        out = []
        members = sorted(self._members.values(), key=lambda m: (not m.vouched, -m.last_heard))
        for m in members:
            if len(out) >= limit:
                break
            if m.info.name == exclude:
                continue
            state = self.state(m, now)
            if state != DEAD:
                rec = m.as_record(now, state)
                del rec["state"]
                out.append(rec)
        return out


    def gossip_digest(self, now: float, exclude: str | None = None,
                      recent: int = DIGEST_RECENT, sample: int = DIGEST_SAMPLE,
                      relay_s: float = CHANGE_RELAY_S) -> list[dict[str, Any]]:
        """What one heartbeat relays: non-dead members other than ``exclude`` whose record
        changed here within ``relay_s`` (the ``recent`` most recent changes), then ``sample``
        of the others in turn (by name, going on where the last call stopped; the first call
        starts at a place of ``exclude``'s name, so that agents do not all relay the same
        nodes at once). At most ``recent + sample`` records, whatever the table's size."""
        live = [m for m in self._members.values()
                if m.info.name != exclude and self.state(m, now) != DEAD]
        fresh = sorted((m for m in live if now - m.changed_at <= relay_s),
                       key=lambda m: -m.changed_at)[:recent]
        chosen = {m.info.name for m in fresh}
        rest = sorted((m for m in live if m.info.name not in chosen), key=lambda m: m.info.name)
        picked = []
        if rest and sample > 0:
            if self._turn < 0:
                self._turn = zlib.crc32((exclude or "").encode())
            start = self._turn % len(rest)
            picked = (rest[start:] + rest[:start])[:sample]
            self._turn = start + len(picked)
        out = []
        for m in fresh + picked:
            rec = m.as_record(now, ALIVE)
            del rec["state"]
            out.append(rec)
        return out


def _acceptable(rec: dict[str, Any]) -> bool:
    name = rec.get("node")
    return isinstance(name, str) and 0 < len(name) <= MAX_NODE_NAME_CHARS and \
        is_agent_address(rec.get("address")) and is_agent_address(rec.get("gossip"))
