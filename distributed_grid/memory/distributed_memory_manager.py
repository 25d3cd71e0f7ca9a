"""``DistributedMemoryManager``: the seeds' key/value store, on named objects.

Seed 004 planned a manager with ``store(key, data)``, ``retrieve(key)``, ``delete(key)``,
``list_objects()`` and ``get_stats()`` over Ray's object store, that returned ``False`` or
``None`` when something failed and kept its key table in the process. Here:

- the keys live in the agents with the data, so what one process stores, every later process
  (and ``grid memory list-objects``) sees, and ``list_objects()`` lists every named object in
  the mesh;
- ``store`` returns the ``ObjectInfo`` (``KeyExists`` never happens: a store replaces, like a
  dict), and failures raise: ``retrieve`` and ``delete`` of a missing key raise ``KeyNotFound``,
  a full mesh raises ``CapacityError``, no agent raises ``NodeUnavailable``;
- values are stored the cheapest faithful way (``distributed_grid.utils.memory_helpers.put_data``): numpy arrays raw,
  ``bytes``-like as bytes (read back as ``bytearray``), anything else pickled with protocol 5.

Each method initializes the manager on first use, as the seed did. Not here: anonymous blocks
and objects (``distributed_grid/orchestration/distributed_memory_pool.py``, ``distributed_grid/utils/memory_helpers.py``), the object format (``mesh/client/core.py``).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mesh.client import AsyncMeshClient
from mesh.config import ClusterConfig
from distributed_grid.utils.memory_helpers import get_data, put_data
from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool

if TYPE_CHECKING:
    from mesh.client import ObjectInfo

__all__ = ["DistributedMemoryManager"]

_MiB = 1024 * 1024


class DistributedMemoryManager:
    """A dict-like store of named values in the mesh, for asyncio code.

    ``cluster_config``: a ``ClusterConfig``, the path of a cluster file, or ``None`` for the
    default resolution. Also an async context manager (closes its connection on exit).
    """

    def __init__(self, cluster_config: ClusterConfig | str | os.PathLike | None = None):
        self.cluster_config = cluster_config
        self._pool = DistributedMemoryPool(cluster_config)

    async def initialize(self) -> None:
        """Connect (``NodeUnavailable`` if no agent answers). Idempotent."""
        await self._pool.initialize()

    async def shutdown(self) -> None:
        """Close the connection; the stored objects stay in the mesh."""
        await self._pool.shutdown()

    async def __aenter__(self) -> DistributedMemoryManager:
        await self.initialize()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    @property
    def pool(self) -> DistributedMemoryPool:
        return self._pool

    async def _client(self) -> AsyncMeshClient:
        if not self._pool.initialized:
            await self._pool.initialize()
        return self._pool.client

    async def store(self, key: str, data: Any, preferred_node: str | None = None) -> ObjectInfo:
        """Store ``data`` under ``key``, replacing any earlier value; placed on
        ``preferred_node`` when given, else on the live node with the most room."""
        client = await self._client()
        return await put_data(client, key, data, preferred_node, replace=True)

    async def retrieve(self, key: str) -> Any:
        """The value under ``key``. ``KeyNotFound`` if there is none (the seed returned None)."""
        return await get_data(await self._client(), key)

    async def delete(self, key: str) -> None:
        """Delete ``key`` and free its memory. ``KeyNotFound`` if there is none."""
        await (await self._client()).delete(key)

    async def list_objects(self) -> dict[str, ObjectInfo]:
        """Every named object in the mesh, by key (sorted)."""
        return {info.key: info for info in await (await self._client()).keys()}

    async def get_stats(self) -> dict[str, Any]:
        """The seed's statistics: ``total_objects``, ``total_bytes``, ``total_mb`` and
        ``objects``, one dict per object with ``key``, ``size_bytes``, ``size_mb``,
        ``created_at`` (ISO 8601, local time), ``node_hint`` (the node that holds it; the seed
        only knew the requested one), plus ``node``, ``content_type`` and ``block_id``."""
        objects = [
            {
                "key": info.key,
                "size_bytes": info.length,
                "size_mb": info.length / _MiB,
                "created_at": datetime.fromtimestamp(info.created).isoformat(),
                "node_hint": info.node,
                "node": info.node,
                "content_type": info.content_type,
                "block_id": info.block_id,
            }
            for info in (await self.list_objects()).values()
        ]
        total = sum(o["size_bytes"] for o in objects)
        return {
            "total_objects": len(objects),
            "total_bytes": total,
            "total_mb": total / _MiB,
            "objects": objects,
        }
