"""``DistributedMemoryPool``: the seeds' asyncio block API, on the mesh.

The earlier Ray version's users wrote::

    pool = DistributedMemoryPool(load_cluster_config("config/my-cluster-enhanced.yaml"))
    await pool.initialize()
    block_id = await pool.allocate(5 * 1024**3, preferred_node="gpu2")
    await pool.write(block_id, data)
    retrieved = await pool.read(block_id, len(data))
    await pool.deallocate(block_id)
    await pool.shutdown()

and that code runs unchanged here. The pool is a thin layer over one ``AsyncMeshClient`` (``pool.client``):
every call is one client call, data is passed through without copies, and errors are the mesh's
typed exceptions (``CapacityError``, ``BlockNotFound``, ``NodeUnavailable``, ...).

Persistence: blocks live in the agents, not in this process, so a block outlives the pool and the
process that allocated it, and any later pool or client reads it by id (``persistent=True``, the
default and the only storage mode). ``initialize(persistent=False)`` only adds clean-up: the
blocks allocated through this pool and not yet deallocated are freed at ``shutdown()``.

Not here: named objects, pickles and arrays (``distributed_grid/utils/memory_helpers.py``, or
``put_object``/``put_array`` on the clients directly), the key/value manager
(``distributed_grid/memory/distributed_memory_manager.py``), the wire and placement
(``mesh/client/core.py``). ``PoolNotInitialized`` lives with every other error in
``mesh/errors.py`` and is importable from here too, as the seeds did.
"""

from __future__ import annotations

import os
from typing import Any

from mesh.client import AsyncMeshClient
from mesh.config import ClusterConfig
from mesh.errors import BlockNotFound, PoolNotInitialized

__all__ = ["DistributedMemoryPool", "PoolNotInitialized"]


_NOT_INITIALIZED = (
    "Distributed memory pool is not initialized (call `await pool.initialize()` first)"
)


class DistributedMemoryPool:
    """Blocks of worker RAM, allocated, written, read and freed from asyncio code.

    ``config`` is a ``ClusterConfig``, the path of a cluster file, or ``None`` for the default
    resolution (``$GRID_CONFIG``, ``config/my-cluster-enhanced.yaml``, the embedded local mesh).
    Nothing connects until ``initialize()``. Also an async context manager
    (``async with DistributedMemoryPool(cfg) as pool:`` initializes and shuts down).
    """

    def __init__(self, config: ClusterConfig | str | os.PathLike | None = None):
        self._config_source = config
        self._client: AsyncMeshClient | None = None
        self._persistent = True
        self._allocated: set[str] = set()  # blocks this pool made and has not freed

    # --- lifecycle ----------------------------------------------------------------------------

    async def initialize(self, persistent: bool = True) -> None:
        """Connect to the mesh and check that at least one agent answers (``NodeUnavailable``
        otherwise). Calling it again on an initialized pool does nothing.

        ``persistent=True`` (default): blocks stay in the agents after ``shutdown()`` and after
        this process exits; any later pool, client or ``grid memory`` command uses them by id.
        ``persistent=False``: ``shutdown()`` frees the blocks allocated through this pool.
        """
        if self._client is not None:
            return
        client = AsyncMeshClient(self._config_source)
        try:
            await client.nodes()
        except BaseException:
            await client.close()
            raise
        if self._client is not None:  # another task initialized the pool while we waited
            await client.close()
            return
        self._client = client
        self._persistent = bool(persistent)
        self._allocated.clear()

    async def shutdown(self) -> None:
        """Close the connection (and, when not persistent, free this pool's blocks first).
        Safe to call twice; the pool may be initialized again afterwards."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if not self._persistent:
                for block_id in sorted(self._allocated):
                    try:
                        await client.free(block_id)
                    except BlockNotFound:
                        pass  # freed elsewhere (another client, `grid memory deallocate`)
        finally:
            self._allocated.clear()
            await client.close()

    async def __aenter__(self) -> DistributedMemoryPool:
        await self.initialize()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    @property
    def initialized(self) -> bool:
        return self._client is not None

    @property
    def persistent(self) -> bool:
        return self._persistent

    @property
    def client(self) -> AsyncMeshClient:
        """The pool's ``AsyncMeshClient``, for everything the seeds' API does not cover
        (``read_into``, ``stat``, ``blocks``, named objects). ``PoolNotInitialized`` before
        ``initialize()``."""
        if self._client is None:
            raise PoolNotInitialized(_NOT_INITIALIZED)
        return self._client

    # --- blocks -------------------------------------------------------------------------------

    async def allocate(self, size_bytes: int, preferred_node: str | None = None) -> str:
        """A new block of ``size_bytes`` on ``preferred_node`` (it must be alive), else on the
        live node with the most room; returns its block id. ``CapacityError`` ("No available
        nodes for memory allocation") when nothing fits."""
        block_id = await self.client.allocate(size_bytes, node=preferred_node)
        self._allocated.add(block_id)
        return block_id

    async def write(self, block_id: str, data: Any, offset: int = 0) -> int:
        """Write any bytes-like ``data`` (bytes, memoryview, a C-contiguous numpy array) at
        ``offset``, without copying it; returns the number of bytes written."""
        return await self.client.write(block_id, data, offset)

    async def read(self, block_id: str, size: int | None = None, offset: int = 0) -> bytearray:
        """``size`` bytes from ``offset`` (default: to the end of the block), as a new
        ``bytearray`` (``numpy.frombuffer`` views it without a copy)."""
        return await self.client.read(block_id, size, offset)

    async def deallocate(self, block_id: str) -> None:
        """Free the block (and any named objects stored in it). ``BlockNotFound`` if no live
        agent holds it."""
        await self.client.free(block_id)
        self._allocated.discard(block_id)

    async def get_stats(self) -> dict[str, Any]:
        """The mesh's statistics, as ``client.stats()`` returns them (``nodes``: one dict per
        node with ``node``, ``state``, ``capacity``, ``used``, ``room``, ``blocks``...;
        ``live_nodes``, ``total_blocks``, ``total_used``, ``total_capacity``), plus:

        - ``node_stats``: ``{node name: {"blocks", "used", "capacity", "state"}}`` (the seeds'
          "Node Memory Usage" table),
        - ``total_free``: room left on live nodes, in bytes,
        - ``pool_blocks``: blocks allocated through this pool and not yet deallocated,
        - ``persistent``: the mode given to ``initialize()``.
        """
        stats = await self.client.stats()
        stats["node_stats"] = {
            n["node"]: {"blocks": n["blocks"], "used": n["used"], "capacity": n["capacity"],
                        "state": n["state"]}
            for n in stats["nodes"]
        }
        stats["total_free"] = sum(n["room"] for n in stats["nodes"] if n["state"] == "alive")
        stats["pool_blocks"] = len(self._allocated)
        stats["persistent"] = self._persistent
        return stats
