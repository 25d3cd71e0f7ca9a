"""Reservations of worker resources as Ray placement groups (docs/placement.md).

Ray does one thing in the mesh: it *reserves* memory, CPUs or GPUs on mesh worker nodes, so that
Ray's scheduler keeps them free for whoever asked (``grid resource-sharing request``) or for a
block being moved there (``mesh/balance/rebalance.py``). Ray never holds data; the agents do.

A reservation is one detached placement group with one bundle per target node; everything we
know about it lives in the group's name (``mesh/balance/reservations.py``), so it outlives the
``grid`` process that made it. Each bundle is pinned to its mesh node by a custom resource that
the node's raylet advertises, ``mesh_node:<name>`` = 1 (``ray start ... --resources=
'{"mesh_node:gpu1": 1}'``, see ``ray_start_args``).

Here: ``Placement``, the thin driver around one Ray connection, and ``reserve_for``, the one
reservation workflow (the mesh's live stats and Ray's free resources give the candidates, the
amount is split over them, one placement group reserves it) used by ``grid resource-sharing
request``, the rebalancer when the master is over its threshold, and the seeds' orchestrator.
Ray is imported inside functions only: ``grid`` must start fast and the agents must never
import it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from dataclasses import replace
from typing import Any

from mesh.balance.reservations import (
    PIN_AMOUNT,
    RAY_RESOURCE,
    Reservation,
    available_from_pgs,
    candidates,
    check_request,
    describe,
    map_ray_nodes,
    new_reservation_id,
    no_ray_node_message,
    ray_start_args,
    reservations_from_table,
    show_amount,
    split_amount,
)
from mesh.errors import (
    CapacityError,
    InvalidRequest,
    NoRayNode,
    RayNotInstalled,
    RayUnavailable,
    ReservationFailed,
    ReservationNotFound,
)

RAY_NAMESPACE = "mesh"
PROBE_TIMEOUT_S = 2.0  # TCP check of the GCS before ray.init, which can wait for a long time
INSTALL_HINT = "pip install 'memory-mesh[placement]'"


# --- the Ray driver ---------------------------------------------------------------------------


def _import_ray(address: str) -> Any:
    # A loopback address must stay loopback: by default Ray rewrites 127.0.0.1 to this machine's
    # outward IP before dialling, which fails for a cluster bound to loopback (tests, one-box
    # setups) and then retries for ever. This variable (read once, when Ray is imported) keeps it.
    if "ray" not in sys.modules and _is_loopback(_host_port(address)[0]):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.util.placement_group  # noqa: F401
    except ImportError:
        raise RayNotInstalled(f"reservations need Ray, which is not installed here "
                              f"(`{INSTALL_HINT}`)") from None
    return ray


def _host_port(address: str) -> tuple[str, int | None]:
    """("host", port) of "host:port", "ray://host:port" or "[::1]:port"; (address, None) for
    "auto" and anything else."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unavailable(address: str, detail: str = "") -> RayUnavailable:
    return RayUnavailable(f"Ray is not running at {address}{' (' + detail + ')' if detail else ''} "
                          "(start it with `ray start --head`, or set ray.address in the cluster "
                          "file)")


def _probe(address: str, timeout_s: float, shown: str | None = None) -> None:
    """Fail fast, with ``RayUnavailable``, when nothing accepts TCP connections at ``address``."""
    host, port = _host_port(address)
    if port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise _unavailable(shown or address, reason.lower()) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Placement:
    """One Ray connection for reservations. Use as a context manager, or ``connect``/``close``.

    When this process is already connected to Ray (an app that called ``ray.init`` itself), that
    connection is used and left open by ``close``.
    """

    def __init__(self, config: Any, *, probe_timeout_s: float = PROBE_TIMEOUT_S):
        self.config = config
        self.address: str = config.ray_address
        self.probe_timeout_s = probe_timeout_s
        self.gcs_address: str | None = None  # what was dialled, once connected
        self._ray: Any = None
        self._owns_connection = False

    # connection

    def connect(self) -> Placement:
        if self._ray is not None:
            return self
        ray = _import_ray(self.address)
        if ray.is_initialized():
            self._ray, self._owns_connection = ray, False
            return self
        target = self._resolve(ray)
        try:
            _probe(target, self.probe_timeout_s, self._shown(target))
        except RayUnavailable:
            self._explain_rewrite(target)
            raise
        self._check_local_raylet(ray, target)
        try:
            ray.init(address=target, namespace=RAY_NAMESPACE, logging_level="ERROR",
                     log_to_driver=False, configure_logging=False, include_dashboard=False)
        except ConnectionError as exc:
            raise _unavailable(self._shown(target), _first_line(exc)) from None
        except (RuntimeError, ValueError) as exc:
            raise RayUnavailable(f"cannot connect to Ray at {self._shown(target)}: "
                                 f"{_first_line(exc)}") from None
        self._ray, self._owns_connection, self.gcs_address = ray, True, target
        return self

    def _resolve(self, ray: Any) -> str:
        """The host:port Ray will dial (it reads RAY_ADDRESS and this machine's last cluster for
        "auto"); raises ``RayUnavailable`` when "auto" finds nothing."""
        try:
            from ray._private import services
        except ImportError:  # a Ray without this helper: let ray.init decide
            return self.address
        try:
            resolved = services.canonicalize_bootstrap_address(self.address)
        except ConnectionError:
            raise _unavailable(self._shown(None), "no RAY_ADDRESS, and no cluster started on "
                               "this machine") from None
        except ValueError as exc:
            raise RayUnavailable(f"ray.address {self.address!r} in {self.config.source} is not "
                                 f"an address: {_first_line(exc)}") from None
        except Exception:  # noqa: BLE001 - private helper; ray.init will say what is wrong
            return self.address
        if resolved is None:
            raise _unavailable(self._shown(None), "no RAY_ADDRESS, and no cluster started on "
                               "this machine")
        if self.address.startswith("ray://"):
            return self.address
        return resolved

    def _explain_rewrite(self, target: str) -> None:
        """Ray was imported before ``_import_ray`` could keep a loopback address on loopback, and
        dials this machine's outward IP, where a loopback-only cluster does not listen."""
        host = _host_port(self.address)[0]
        if not _is_loopback(host) or _is_loopback(_host_port(target)[0]):
            return
        try:
            _probe(self.address, self.probe_timeout_s)
        except RayUnavailable:
            return
        raise RayUnavailable(
            f"Ray at {self.address} listens on loopback only, but Ray, imported before the mesh "
            f"connected, dials it as {target}: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before "
            "importing ray (grid does)")

    def _shown(self, target: str | None) -> str:
        """The address for messages: as configured, and what Ray made of it when that differs."""
        if self.address == "auto":
            return "auto" if target is None or target == "auto" else f"{target} (found by auto)"
        if target is not None and target != self.address and not self.address.startswith("ray://"):
            return f"{self.address} (dialled as {target})"
        return self.address

    def _check_local_raylet(self, ray: Any, target: str) -> None:
        """A driver talks to Ray through a raylet on its own machine; without one ray.init
        searches for a minute before failing."""
        if target.startswith("ray://"):
            return
        try:
            from ray._private import services

            local = services.find_node_ids()
        except Exception:  # noqa: BLE001 - private helper; ray.init will say what is wrong
            return
        if not local:
            raise RayUnavailable(
                f"Ray runs at {self._shown(target)} but not on this machine: start a raylet here "
                f"(`ray start --address={target} --num-cpus=0`) or run the head here")

    def close(self) -> None:
        if self._ray is not None and self._owns_connection:
            self._ray.shutdown()
        self._ray, self._owns_connection = None, False

    def __enter__(self) -> Placement:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _need(self) -> Any:
        if self._ray is None:
            self.connect()
        return self._ray

    # Ray's view

    def _table(self) -> dict[str, dict]:
        from ray.util.placement_group import placement_group_table

        self._need()
        return placement_group_table()

    def ray_nodes(self) -> dict[str, dict]:
        """Per mesh node of the cluster file that a Ray node stands for: ``node_id``, ``alive``,
        ``address``, ``pin``, ``total`` and ``available`` (Ray's resource names)."""
        ray = self._need()
        nodes = ray.nodes()
        try:
            from ray._private.state import available_resources_per_node

            available = available_resources_per_node()
        except (ImportError, AttributeError):
            totals = {n["NodeID"]: dict(n.get("Resources") or {}) for n in nodes
                      if n.get("Alive")}
            available = available_from_pgs(totals, self._table())
        return map_ray_nodes([(n.name, n.host) for n in self.config.nodes], nodes,
                             available=available)

    def _pins(self, names: list[str], mapping: dict[str, dict]) -> list[str]:
        pins = []
        for name in names:
            if name not in mapping:
                known = {n.name for n in self.config.nodes}
                raise NoRayNode(no_ray_node_message(
                    name, "" if name in known else f"not in {self.config.source}"))
            pins.append(mapping[name]["pin"])
        return pins

    # reservations

    def reserve(self, source: str, resource: str, targets: list[tuple[str, float]],
                priority: str = "normal", kind: str = "request", block: str = "",
                ttl_s: float | None = None, timeout_s: float = 10.0) -> Reservation:
        """Reserve ``resource`` on each target (one bundle each) for ``source``.

        Waits up to ``timeout_s`` for Ray to place every bundle; if it cannot, the placement
        group is removed and ``ReservationFailed`` says what could not be placed.
        """
        targets = [(name, amount) for name, amount in targets]
        check_request(resource, targets, priority, kind)
        if ttl_s is not None and not ttl_s > 0:
            raise InvalidRequest(f"a reservation's lifetime must be > 0 s, got {ttl_s!r}")
        if resource == "memory":
            targets = [(name, int(round(amount))) for name, amount in targets]
        mapping = self.ray_nodes()
        pins = self._pins([name for name, _ in targets], mapping)
        now = time.time()
        res = Reservation(
            id=new_reservation_id(source, now), source=source, targets=tuple(targets),
            resource=resource, amount=sum(a for _, a in targets), priority=priority, kind=kind,
            block=block, created=round(now, 3),
            expires=None if ttl_s is None else round(now + ttl_s, 3),
        )
        key = RAY_RESOURCE[resource]
        bundles = [{pin: PIN_AMOUNT, key: float(amount)} for pin, (_, amount) in zip(pins, targets)]
        from ray.util.placement_group import placement_group, remove_placement_group

        pg = placement_group(bundles, strategy="PACK", name=res.pg_name(), lifetime="detached")
        if not pg.wait(timeout_s):
            entry = self._table().get(pg.id.hex(), {})
            remove_placement_group(pg)
            raise ReservationFailed(self._failure(res, entry, mapping, timeout_s))
        entry = self._table().get(pg.id.hex(), {})
        b2n = entry.get("bundles_to_node_id") or {}
        nodes = tuple(str(b2n[k]) for k in sorted(b2n, key=lambda k: int(k)))
        return replace(res, pg_id=pg.id.hex(), state=entry.get("state", "CREATED"),
                       bundle_nodes=nodes)

    def _failure(self, res: Reservation, entry: dict, mapping: dict[str, dict],
                 timeout_s: float) -> str:
        b2n = entry.get("bundles_to_node_id") or {}
        key = RAY_RESOURCE[res.resource]
        missing = []
        for i, (name, amount) in enumerate(res.targets):
            if b2n.get(i, b2n.get(str(i))):
                continue
            free = mapping.get(name, {}).get("available", {}).get(key, 0.0)
            missing.append(f"{describe(res.resource, amount)} on {name} "
                           f"(Ray has {show_amount(res.resource, free)} of {key} free there)")
        state = (entry.get("stats") or {}).get("scheduling_state")
        return (f"Ray could not place {', '.join(missing) or 'the bundles'} "
                f"within {timeout_s:g} s{' (' + state.lower() + ')' if state else ''}; "
                "nothing was reserved")

    def reservations(self) -> list[Reservation]:
        return reservations_from_table(self._table())

    def get(self, reservation_id: str) -> Reservation:
        for r in self.reservations():
            if r.id == reservation_id:
                return r
        raise ReservationNotFound(f"no reservation {reservation_id} "
                                  "(see `grid resource-sharing status`)")

    def handle(self, reservation_id: str) -> Any:
        """The Ray ``PlacementGroup`` of a reservation, so an app can run its own tasks in it
        (``PlacementGroupSchedulingStrategy(placement_group=..., placement_group_bundle_index=i)``,
        bundle i sitting on ``targets[i]``)."""
        ray = self._need()
        from ray.util.placement_group import PlacementGroup

        return PlacementGroup(ray.PlacementGroupID.from_hex(self.get(reservation_id).pg_id))

    def release(self, reservation_id: str) -> Reservation:
        res = self.get(reservation_id)
        self._remove(res)
        return res

    def _remove(self, res: Reservation) -> None:
        ray = self._need()
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(res.pg_id)))

    def sweep_expired(self, now: float | None = None) -> list[Reservation]:
        """Remove the reservations whose time is up; returns them."""
        now = time.time() if now is None else now
        gone = [r for r in self.reservations() if r.expired(now)]
        for r in gone:
            self._remove(r)
        return gone


# --- the one reservation workflow -------------------------------------------------------------


def reserve_for(placement: Placement, config: Any, source: str, resource: str, amount: float,
                stats_nodes: list[dict] | None, priority: str = "normal") -> Reservation:
    """Reserve ``amount`` of ``resource`` on the workers with the most room, for ``source``.

    ``stats_nodes`` is ``MeshClient.stats()["nodes"]`` (needed for memory: the agents' room;
    None for cpu/gpu, which only Ray counts). Candidates come from ``candidates`` (never
    ``source`` itself), the amount is spread by ``split_amount``, and one placement group
    reserves it until ``execution.resource_sharing.allocation_timeout_minutes`` from now.

    Raises ``NoRayNode`` when only nodes without a Ray node have room, ``CapacityError`` when the
    room is short (saying which nodes were not counted and how to start their raylets), and the
    errors of ``Placement.reserve``.
    """
    rooms, unmapped = candidates(config, resource, stats_nodes, placement.ray_nodes(),
                                 placement.reservations(), source)
    if not rooms and unmapped:
        raise NoRayNode(no_ray_node_message(unmapped[0]))
    try:
        targets = split_amount(amount, rooms, exclude=source, resource=resource)
    except CapacityError as exc:
        if not unmapped:
            raise
        raise CapacityError(
            f"{exc} ({', '.join(unmapped)} not counted: no Ray node stands for "
            f"{'it' if len(unmapped) == 1 else 'them'}; start with {ray_start_args(unmapped[0])})"
        ) from None
    return placement.reserve(source, resource, targets, priority, "request", "",
                             config.execution.allocation_timeout_s)
