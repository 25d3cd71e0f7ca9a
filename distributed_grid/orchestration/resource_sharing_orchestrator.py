"""``ResourceSharingOrchestrator``: the seeds' orchestrator API, on the mesh and Ray reservations.

The earlier version's users wrote (seeds 000 and 003)::

    orchestrator = ResourceSharingOrchestrator(cluster_config, ssh_manager)
    await orchestrator.initialize()
    block_id = await orchestrator.allocate_distributed_memory(size_bytes=10 * 1024**3,
                                                              preferred_node="gpu2")
    await orchestrator.write_distributed_memory(block_id, b"data")
    data = await orchestrator.read_distributed_memory(block_id, 4)
    stats = await orchestrator.get_distributed_memory_stats()
    await orchestrator.deallocate_distributed_memory(block_id)
    await orchestrator.stop()

and that code runs unchanged (``distributed_grid.orchestration.resource_sharing_orchestrator``
re-exports this class; ``ssh_manager`` is accepted and not needed: the agents are reached over
the mesh, not SSH). Beyond the seeds' five memory calls it offers what ``grid`` does:

- pressure: ``get_memory_pressure(node)``, ``should_offload(node, estimated_gb)``;
- reservations: ``request_resources(node, resource_type, amount, priority)``,
  ``release_resources(id)``, ``get_reservations()``, and ``placement_group(id)``, the Ray
  placement group handle, so an app runs its own Ray tasks inside a reservation;
- ``rebalance()`` (one pass of ``grid rebalance``) and ``drain(node)``.

Blocks are served by the mesh's agents; Ray only holds reservations and is connected on the
first call that needs it (the memory calls work without Ray). Ray and the rebalancer are
blocking libraries: their calls run in a worker thread so the event loop keeps turning.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from mesh.client import MeshClient
from mesh.config import ClusterConfig, resolve_config
from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool
from mesh.balance.pressure import NodeLoad, OffloadDecision, should_offload
from mesh.balance.rebalance import PassReport, Rebalancer, loads_from, master_load
from mesh.units import parse_size

__all__ = ["ResourceSharingOrchestrator"]


class ResourceSharingOrchestrator:
    def __init__(self, config: ClusterConfig | str | os.PathLike | None = None,
                 ssh_manager: Any = None):
        self.config = config if isinstance(config, ClusterConfig) else resolve_config(config)
        self.ssh_manager = ssh_manager  # kept for the seeds' signature; not used
        self.pool = DistributedMemoryPool(self.config)
        self._placement: Any = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def initialize(self) -> None:
        await self.pool.initialize()

    async def stop(self) -> None:
        await self.pool.shutdown()
        if self._placement is not None:
            placement, self._placement = self._placement, None
            await asyncio.to_thread(placement.close)

    shutdown = stop

    async def __aenter__(self) -> ResourceSharingOrchestrator:
        await self.initialize()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # --- the seeds' distributed memory calls --------------------------------------------------

    async def allocate_distributed_memory(self, size_bytes: int,
                                          preferred_node: str | None = None) -> str:
        return await self.pool.allocate(size_bytes, preferred_node)

    async def deallocate_distributed_memory(self, block_id: str) -> bool:
        await self.pool.deallocate(block_id)
        return True

    async def write_distributed_memory(self, block_id: str, data: Any, offset: int = 0) -> bool:
        await self.pool.write(block_id, data, offset)
        return True

    async def read_distributed_memory(self, block_id: str, size: int | None = None,
                                      offset: int = 0) -> bytearray:
        return await self.pool.read(block_id, size, offset)

    async def get_distributed_memory_stats(self) -> dict[str, Any]:
        return await self.pool.get_stats()

    # --- pressure -----------------------------------------------------------------------------

    async def node_loads(self) -> dict[str, NodeLoad]:
        """Every mesh node's load from its heartbeats, and the master's from this host."""
        loads = {n.name: n for n in loads_from(await self.pool.client.stats())}
        master = master_load(self.config)
        loads.setdefault(master.name, master)
        return loads

    async def get_memory_pressure(self, node: str | None = None) -> float:
        """The pressure score (``mesh.balance.pressure``) of ``node``; the master's when None."""
        loads = await self.node_loads()
        load = loads.get(node or self.config.master_name())
        return 0.5 if load is None or not load.alive else load.pressure

    async def should_offload(self, node: str | None, estimated_gb: float,
                             buffer_gb: float = 2.0) -> OffloadDecision:
        loads = await self.node_loads()
        return should_offload(loads.get(node or self.config.master_name()), estimated_gb,
                              self.config.execution.memory_pressure_high, buffer_gb)

    # --- reservations through Ray ---------------------------------------------------------------

    async def _ray(self) -> Any:
        if self._placement is None:
            from mesh.balance.placement import Placement

            placement = Placement(self.config)
            await asyncio.to_thread(placement.connect)
            self._placement = placement
        return self._placement

    async def request_resources(self, node: str, resource_type: str, amount: float | str,
                                priority: str = "normal") -> Any:
        """Reserve ``amount`` (memory: GB or a size like "512MiB"; cpu/gpu: units) on the
        workers with room, for ``node``, as ``grid resource-sharing request`` does."""
        from mesh.balance.placement import reserve_for

        placement = await self._ray()
        need = (float(parse_size(amount, default_unit="GB")) if resource_type == "memory"
                else float(amount))
        stats = (await self.pool.client.stats())["nodes"] if resource_type == "memory" else None
        return await asyncio.to_thread(reserve_for, placement, self.config, node, resource_type,
                                       need, stats, priority)

    async def release_resources(self, reservation_id: str) -> None:
        placement = await self._ray()
        await asyncio.to_thread(placement.release, reservation_id)

    async def get_reservations(self) -> list[Any]:
        placement = await self._ray()
        return await asyncio.to_thread(placement.reservations)

    async def placement_group(self, reservation_id: str) -> Any:
        """The Ray ``PlacementGroup`` of a reservation, for
        ``PlacementGroupSchedulingStrategy(placement_group=..., placement_group_bundle_index=i)``."""
        placement = await self._ray()
        return await asyncio.to_thread(placement.handle, reservation_id)

    # --- rebalancing --------------------------------------------------------------------------

    async def rebalance(self, use_ray: bool = True) -> PassReport:
        return await self._pass(None, use_ray)

    async def drain(self, node: str, use_ray: bool = True) -> PassReport:
        return await self._pass(node, use_ray)

    async def _pass(self, drain: str | None, use_ray: bool) -> PassReport:
        placement = await self._ray() if use_ray else None

        def work() -> PassReport:
            with MeshClient(self.config) as client:
                return Rebalancer(client, self.config, placement).run_once(drain=drain)

        return await asyncio.to_thread(work)

