"""Reservations without Ray: what a reservation is, where it may go, how an amount is spread.

Pure (no Ray, no sockets, no clock of its own), unit-tested in tests/unit/test_reservations.py:

- ``split_amount``: spread an amount over nodes with room, as few pieces as possible;
- ``Reservation``: one reservation, and its encoding as a placement group's name
  (``"mesh:" + compact JSON``), so every ``grid`` process and every machine reads it back from
  Ray's placement group table (``reservations_from_table``);
- ``map_ray_nodes``: which Ray node stands for which mesh node (a raylet advertising
  ``mesh_node:<name>``, else the only raylet on the node's IP);
- ``candidates``: the (node, room) pairs a request may use, from the mesh's live stats, the
  nodes' sharing limits, Ray's free resources and the reservations already held.

Not here: talking to Ray and the one reservation workflow (``mesh/balance/placement.py``),
moving blocks (``mesh/balance/rebalance.py``), errors (``mesh/errors.py``).
"""

from __future__ import annotations

import json
import math
import secrets
import shlex
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from mesh.errors import CapacityError, InvalidRequest
from mesh.units import GiB, format_bytes

if TYPE_CHECKING:
    from mesh.config import ClusterConfig

RESOURCES = ("memory", "cpu", "gpu")
PRIORITIES = ("low", "normal", "high", "critical")
KINDS = ("request", "block")
RAY_RESOURCE = {"memory": "memory", "cpu": "CPU", "gpu": "GPU"}  # our name -> Ray's

NAME_PREFIX = "mesh:"
NODE_RESOURCE_PREFIX = "mesh_node:"
PIN_AMOUNT = 0.001  # of a raylet's mesh_node:<name> (or node:<ip>) resource, per bundle
NAME_VERSION = 1



# --- pure: amounts ----------------------------------------------------------------------------


def show_amount(resource: str, amount: float) -> str:
    """An amount for people: sizes for memory ("10.00 GiB"), plain numbers for CPUs and GPUs."""
    if resource == "memory":
        return format_bytes(int(round(amount)))
    return _plain(amount)


def describe(resource: str, amount: float) -> str:
    """"512.00 MiB of memory", "1 CPU", "2.5 CPUs", "1 GPU"."""
    if resource == "memory":
        return f"{show_amount(resource, amount)} of memory"
    unit = RAY_RESOURCE.get(resource, resource)
    return f"{_plain(amount)} {unit}{'' if amount == 1 else 's'}"


def _plain(x: float) -> str:
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.4f}".rstrip("0").rstrip(".")


def split_amount(amount: float, candidates: Iterable[tuple[str, float]], exclude: str | None = None,
                 *, resource: str = "") -> list[tuple[str, float]]:
    """Spread ``amount`` over ``candidates`` (node name, room), as few pieces as possible.

    Nodes are taken in order of most room (ties keep the given order); ``exclude`` and nodes
    without room are skipped. Each piece is at most the node's room. Integer inputs give integer
    pieces. ``resource`` ("memory", "cpu", "gpu") only changes how errors print amounts.

    Raises ``InvalidRequest`` for an amount that is not a number > 0 and ``CapacityError`` when
    the candidates' room together is short (the message says how much is free in total).
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(
            amount) or amount <= 0:
        raise InvalidRequest(f"the amount to reserve must be a number > 0, got {amount!r}")
    usable = [(name, room) for name, room in candidates
              if name != exclude and isinstance(room, (int, float)) and math.isfinite(room)
              and room > 0]
    usable.sort(key=lambda c: -c[1])
    free = sum(room for _, room in usable)
    # Float sums of CPU fractions leave crumbs; anything below Ray's 1e-4 resolution is zero.
    eps = 0 if isinstance(amount, int) and all(isinstance(r, int) for _, r in usable) else 1e-6
    if free + eps < amount:
        where = f" other than {exclude}" if exclude else ""
        what = describe(resource, amount) if resource else _plain(amount)
        have = show_amount(resource, free) if resource else _plain(free)
        raise CapacityError(f"cannot reserve {what}: the nodes{where} have {have} free in total")
    pieces: list[tuple[str, float]] = []
    left = amount
    for name, room in usable:
        if left <= eps:
            break
        take = min(room, left)
        pieces.append((name, take))
        left -= take
    return pieces


# --- pure: reservations -----------------------------------------------------------------------


def new_reservation_id(source: str, now: float) -> str:
    """``alloc_<unix seconds>_<source>_<4 hex>``: the seed's form plus a suffix, so two requests
    in the same second differ."""
    return f"alloc_{int(now)}_{source}_{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Reservation:
    """One reservation: what the placement group's name says, plus its id and state in Ray.

    ``amount`` is the total (bytes for memory, units for cpu/gpu); ``targets`` holds one
    (mesh node, amount) pair per bundle, in bundle order. ``expires`` is unix seconds or None.
    """

    id: str
    source: str
    targets: tuple[tuple[str, float], ...]
    resource: str
    amount: float
    priority: str = "normal"
    kind: str = "request"
    block: str = ""
    created: float = 0.0
    expires: float | None = None
    pg_id: str = ""
    state: str = ""
    bundle_nodes: tuple[str, ...] = field(default=(), compare=False)  # Ray node id per bundle

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created)

    def expires_in_s(self, now: float | None = None) -> float | None:
        if self.expires is None:
            return None
        return self.expires - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= self.expires

    def metadata(self) -> dict[str, Any]:
        return {
            "v": NAME_VERSION, "id": self.id, "source": self.source,
            "targets": [[name, amount] for name, amount in self.targets],
            "resource": self.resource, "amount": self.amount, "priority": self.priority,
            "kind": self.kind, "block": self.block, "created": self.created,
            "expires": self.expires,
        }

    def pg_name(self) -> str:
        return NAME_PREFIX + json.dumps(self.metadata(), separators=(",", ":"))

    @classmethod
    def from_pg_name(cls, name: str, pg_id: str = "", state: str = "",
                     bundle_nodes: tuple[str, ...] = ()) -> Reservation:
        """Parse a placement group name made by ``pg_name``; ``ValueError`` when it is not one."""
        if not isinstance(name, str) or not name.startswith(NAME_PREFIX):
            raise ValueError(f"not a mesh reservation name: {name!r}")
        try:
            meta = json.loads(name[len(NAME_PREFIX):])
        except json.JSONDecodeError as exc:
            raise ValueError(f"reservation name is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise ValueError("reservation name is not a JSON object")
        try:
            targets = tuple((str(t), _number(a)) for t, a in meta["targets"])
            expires = meta.get("expires")
            res = cls(
                id=_text(meta["id"]), source=_text(meta["source"]), targets=targets,
                resource=_choice(meta["resource"], RESOURCES), amount=_number(meta["amount"]),
                priority=_choice(meta.get("priority", "normal"), PRIORITIES),
                kind=_choice(meta.get("kind", "request"), KINDS), block=str(meta.get("block", "")),
                created=_number(meta.get("created", 0)),
                expires=None if expires is None else _number(expires),
                pg_id=pg_id, state=state, bundle_nodes=tuple(bundle_nodes),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"reservation name lacks a field: {exc}") from None
        if not targets:
            raise ValueError("reservation name has no targets")
        return res


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"expected a number, got {v!r}")
    return v


def _choice(v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
    return v


def reservations_from_table(table: dict[str, dict]) -> list[Reservation]:
    """Our reservations in a ``placement_group_table()`` result: names that start with "mesh:",
    not REMOVED, and parseable (others are skipped), oldest first."""
    found = []
    for pg_id, entry in table.items():
        name = entry.get("name") or ""
        state = entry.get("state", "")
        if not name.startswith(NAME_PREFIX) or state == "REMOVED":
            continue
        b2n = entry.get("bundles_to_node_id") or {}
        nodes = tuple(str(b2n[k]) for k in sorted(b2n, key=lambda k: int(k)))
        try:
            found.append(Reservation.from_pg_name(name, entry.get("placement_group_id", pg_id),
                                                  state, nodes))
        except ValueError:
            continue
    found.sort(key=lambda r: (r.created, r.id))
    return found


def check_request(resource: str, targets: list[tuple[str, float]], priority: str,
                  kind: str) -> None:
    """Refuse a reservation that Ray should never see, with one ``InvalidRequest`` line."""
    if resource not in RESOURCES:
        raise InvalidRequest(f"unknown resource type {resource!r} (use {', '.join(RESOURCES)})")
    if priority not in PRIORITIES:
        raise InvalidRequest(f"unknown priority {priority!r} (use {', '.join(PRIORITIES)})")
    if kind not in KINDS:
        raise InvalidRequest(f"unknown reservation kind {kind!r} (use {', '.join(KINDS)})")
    if not targets:
        raise InvalidRequest("a reservation needs at least one target node")
    for name, amount in targets:
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"a target must be a node name, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(
                amount) or amount <= 0:
            raise InvalidRequest(f"the amount to reserve on {name} must be a number > 0, "
                                 f"got {amount!r}")
        if resource == "memory" and round(amount) < 1:
            raise InvalidRequest(f"the memory to reserve on {name} must be at least one byte")


# --- pure: which Ray node is which mesh node --------------------------------------------------


def ray_start_args(node_name: str) -> str:
    """The ``--resources`` argument that makes a raylet stand for mesh node ``node_name``."""
    return "--resources=" + shlex.quote(json.dumps({NODE_RESOURCE_PREFIX + node_name: 1}))


def no_ray_node_message(node_name: str, reason: str = "") -> str:
    return (f"no Ray node stands for mesh node {node_name!r}{' (' + reason + ')' if reason else ''}"
            f": start its raylet with `ray start --address=<head>:6379 {ray_start_args(node_name)}`")


def map_ray_nodes(mesh_nodes: Iterable[tuple[str, str]], ray_nodes: list[dict],
                  resolve: Callable[[str], str] = socket.gethostbyname,
                  available: dict[str, dict[str, float]] | None = None) -> dict[str, dict]:
    """Which alive Ray node stands for each mesh node, from ``ray.nodes()`` entries.

    ``mesh_nodes`` are (name, host) pairs. A raylet advertising ``mesh_node:<name>`` wins;
    else the raylet whose ``NodeManagerAddress`` is the host's IP, when it is the only alive one
    there and does not advertise another mesh node. Unmapped nodes are left out. Each value::

        {"node_id", "alive", "address", "pin" (the resource a bundle asks 0.001 of),
         "total" (Ray's resources), "available" (from ``available``, else the totals)}
    """
    alive = [n for n in ray_nodes if n.get("Alive", n.get("alive", False))]
    mapped: dict[str, dict] = {}
    for name, host in mesh_nodes:
        pin = NODE_RESOURCE_PREFIX + name
        match = next((n for n in alive if pin in (n.get("Resources") or {})), None)
        if match is None and host:
            try:
                ip = resolve(host)
            except (OSError, UnicodeError):
                ip = None
            # node:<ip> is held by every raylet on that IP, so it pins only when there is one;
            # and a raylet that stands for another mesh node is not this one.
            same_ip = [n for n in alive if n.get("NodeManagerAddress") == ip]
            if ip is not None and len(same_ip) == 1 and not any(
                    k.startswith(NODE_RESOURCE_PREFIX) for k in same_ip[0].get("Resources") or {}):
                match, pin = same_ip[0], f"node:{ip}"
        if match is None:
            continue
        total = dict(match.get("Resources") or {})
        node_id = match.get("NodeID", "")
        mapped[name] = {
            "node_id": node_id,
            "alive": True,
            "address": match.get("NodeManagerAddress", ""),
            "pin": pin,
            "total": total,
            "available": dict((available or {}).get(node_id, total)),
        }
    return mapped


def available_from_pgs(totals: dict[str, dict[str, float]],
                       table: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per Ray node, its totals minus the bundles of placement groups placed on it (used when
    this Ray has no per-node availability call; running tasks are not counted)."""
    left = {node: dict(res) for node, res in totals.items()}
    for entry in table.values():
        if entry.get("state") == "REMOVED":
            continue
        bundles = entry.get("bundles") or {}
        for index, node in (entry.get("bundles_to_node_id") or {}).items():
            if node not in left:
                continue
            bundle = bundles.get(index, bundles.get(str(index), bundles.get(_int(index))))
            for key, amount in (bundle or {}).items():
                if key in left[node]:
                    left[node][key] = max(0.0, left[node][key] - amount)
    return left


def _int(k: Any) -> Any:
    try:
        return int(k)
    except (TypeError, ValueError):
        return k


# --- pure: where a request may go --------------------------------------------------------------


def reserved_on(reservations: list[Any], resource: str, kinds: tuple[str, ...]) -> dict[str, float]:
    """Per node, what live reservations of these kinds hold there."""
    held: dict[str, float] = {}
    for r in reservations:
        if r.resource == resource and r.kind in kinds:
            for name, amount in r.targets:
                held[name] = held.get(name, 0.0) + amount
    return held


def candidates(cfg: ClusterConfig, resource: str, stats_nodes: list[dict] | None,
               ray_nodes: dict[str, dict], reservations: list[Any],
               exclude: str) -> tuple[list[tuple[str, float]], list[str]]:
    """(node, room) pairs a request may use, and the names of nodes with room that were left out
    because no Ray node stands for them. Pure: takes what the mesh and Ray said.

    Memory room is the least of: the agent's room, the node's share limit less what requests
    already hold there (block reservations are already counted as used blocks), and Ray's free
    ``memory`` on its Ray node. CPU/GPU room is Ray's free amount, within ``max_share_cpu/gpu``
    less what requests already hold.
    """
    by_name = {n.name: n for n in cfg.nodes}
    held = reserved_on(reservations, resource, ("request",))
    key = RAY_RESOURCE[resource]
    rooms: list[tuple[str, float]] = []
    unmapped: list[str] = []
    if resource == "memory":
        pool = [(n["node"], float(n["room"]), float(n["used"])) for n in stats_nodes or []
                if n["state"] == "alive"]
    else:
        pool = [(name, float(info["available"].get(key, 0.0)), 0.0)
                for name, info in ray_nodes.items() if info.get("alive", True)]
    for name, room, used in pool:
        if name == exclude:
            continue
        node = by_name.get(name)
        sharing = node.resource_sharing if node is not None else None
        if sharing is not None and not sharing.can_share:
            continue
        limit = None
        if sharing is not None:
            limit = {"memory": None if sharing.max_share_memory_gb is None
                     else sharing.max_share_memory_gb * GiB,
                     "cpu": sharing.max_share_cpu, "gpu": sharing.max_share_gpu}[resource]
        if resource == "memory":
            # Requests hold memory the agent does not see as used; Ray's free memory already
            # leaves them out.
            if limit is not None:
                room = min(room, limit - used)
            room -= held.get(name, 0.0)
            if name not in ray_nodes:
                if room > 0:
                    unmapped.append(name)
                continue
            room = float(math.floor(min(room, ray_nodes[name]["available"].get(key, 0.0))))
        elif limit is not None:
            room = min(room, limit - held.get(name, 0.0))  # Ray's free amount already excludes them
        if room > 0:
            rooms.append((name, room))
    return rooms, unmapped
