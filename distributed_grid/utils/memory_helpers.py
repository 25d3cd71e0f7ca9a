"""``DistributedMemoryHelper``: the seeds' object, array and cache helpers, on named objects.

Each helper method is one named-object call of the pool's ``AsyncMeshClient`` (the contract is
``docs/objects-api.md``):

==========================================  ==================================================
``store_object(obj, node)``                 ``put_object(None, obj, node)``: pickle protocol 5,
                                            large buffers out of band; returns the block id
``retrieve_object(block_id)``               ``get_object(block_id)``
``store_numpy_array(array, node)``          ``put_array(None, array, node)``: dtype, shape and
                                            order kept, the array's memory sent as it is
``retrieve_numpy_array(block_id)``          ``get_array(block_id)``: received straight into a
                                            new array
``cache_large_data(key, data, node)``       ``put_array`` / ``put_bytes`` / ``put_object`` by
                                            the type of ``data`` (``put_data`` below)
``get_cached_data(key)``                    ``get_array`` / ``get_bytes`` / ``get_object`` by
                                            the stored content type (``get_data`` below)
``clear_cache(key=None)``                   ``delete``
``get_memory_usage_summary()``              ``keys()`` and ``stats()``
==========================================  ==================================================

An object stored without a key (``store_object``, ``store_numpy_array``) gets its own block and
its key is that block id, so ``pool.deallocate(block_id)`` or ``client.delete(block_id)`` frees
it. Objects live in the agents: another process (or ``grid memory``) reads them by key or block
id. Numpy is optional: it is imported only when an array is stored or read.

The blocking ``MeshClient`` has the same named-object methods (``put_object``, ``get_array``,
...); use them directly from synchronous code. Not here: the pool itself (``distributed_grid/orchestration/distributed_memory_pool.py``), the
key/value manager (``distributed_grid/memory/distributed_memory_manager.py``), how objects are laid out in blocks (``mesh/client/core.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh.client import AsyncMeshClient
from mesh.cache import is_plain_ndarray
from mesh.errors import KeyNotFound
from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool

if TYPE_CHECKING:
    from mesh.client import ObjectInfo

__all__ = ["DistributedMemoryHelper", "put_data", "get_data"]

# Content types (``ObjectInfo.content_type``) and how each is read back.
NDARRAY, BYTES, PICKLE, FILE = "ndarray", "bytes", "pickle", "file"


async def put_data(client: AsyncMeshClient, key: str | None, data: Any,
                   node: str | None = None, *, replace: bool = False) -> ObjectInfo:
    """Store ``data`` under ``key`` the cheapest faithful way: a plain numpy array with
    ``put_array``, ``bytes``/``bytearray``/``memoryview`` with ``put_bytes`` (read back as a
    ``bytearray``), anything else with ``put_object``."""
    if is_plain_ndarray(data):
        return await client.put_array(key, data, node, replace=replace)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return await client.put_bytes(key, data, node, replace=replace)
    return await client.put_object(key, data, node, replace=replace)


async def get_data(client: AsyncMeshClient, key: str) -> Any:
    """The value stored under ``key``, read back by its content type: arrays as
    ``numpy.ndarray``, bytes and files as ``bytearray``, pickles as the object.
    ``KeyNotFound`` if there is no such key."""
    info = await client.object_info(key)
    if info.content_type == NDARRAY:
        return await client.get_array(key)
    if info.content_type == PICKLE:
        return await client.get_object(key)
    return await client.get_bytes(key)  # BYTES, FILE, and anything newer: its raw bytes


class DistributedMemoryHelper:
    """High-level storage on a ``DistributedMemoryPool``: Python objects, numpy arrays and a
    key/value cache. The pool must be initialized before the first call
    (``PoolNotInitialized`` otherwise)."""

    def __init__(self, pool: DistributedMemoryPool):
        self.pool = pool
        self._cached: dict[str, None] = {}  # keys cached through this helper, in order

    @property
    def _client(self) -> AsyncMeshClient:
        return self.pool.client

    # --- anonymous objects (key = block id) ---------------------------------------------------

    async def store_object(self, obj: Any, preferred_node: str | None = None) -> str:
        """Pickle ``obj`` (protocol 5, large buffers out of band) into a new block; returns the
        block id, which is also the object's key."""
        info = await self._client.put_object(None, obj, preferred_node)
        return info.key

    async def retrieve_object(self, block_id: str) -> Any:
        """The object ``store_object`` stored. ``KeyNotFound`` once it has been freed."""
        return await self._client.get_object(block_id)

    async def store_numpy_array(self, array: Any, preferred_node: str | None = None) -> str:
        """Store a numpy array (dtype, shape and C/Fortran order kept; a non-contiguous array
        is made contiguous first) in a new block; returns the block id."""
        info = await self._client.put_array(None, array, preferred_node)
        return info.key

    async def retrieve_numpy_array(self, block_id: str) -> Any:
        """The array ``store_numpy_array`` stored, as a new ``numpy.ndarray``."""
        return await self._client.get_array(block_id)

    # --- the cache (named keys) ---------------------------------------------------------------

    async def cache_large_data(self, key: str, data: Any, preferred_node: str | None = None,
                               replace: bool = True) -> ObjectInfo:
        """Store ``data`` under ``key`` (numpy arrays raw, bytes-like as bytes, anything else
        pickled). An existing ``key`` is replaced unless ``replace=False`` (then ``KeyExists``).
        """
        info = await put_data(self._client, key, data, preferred_node, replace=replace)
        self._cached[info.key] = None
        return info

    async def get_cached_data(self, key: str) -> Any:
        """The data cached under ``key`` (bytes come back as a ``bytearray``). ``KeyNotFound``
        if there is none."""
        return await get_data(self._client, key)

    async def clear_cache(self, key: str | None = None) -> int:
        """Delete ``key`` (``KeyNotFound`` if it does not exist), or with no key every key this
        helper cached that still exists. Returns the number of objects deleted."""
        if key is not None:
            await self._client.delete(key)
            self._cached.pop(key, None)
            return 1
        deleted = 0
        for cached in list(self._cached):
            try:
                await self._client.delete(cached)
                deleted += 1
            except KeyNotFound:
                pass  # already deleted elsewhere, or its block was freed
            self._cached.pop(cached, None)
        return deleted

    # --- usage --------------------------------------------------------------------------------

    async def get_memory_usage_summary(self) -> dict[str, Any]:
        """What the mesh holds::

            {"total_objects": 3, "total_bytes": ...,
             "by_content_type": {"ndarray": {"objects": 2, "bytes": ...}, "pickle": {...}},
             "cached_keys": [keys cached through this helper],
             "pool": pool.get_stats()}

        Objects are every named object in the mesh (any process's), not only this helper's.
        """
        infos = await self._client.keys()
        by_type: dict[str, dict[str, int]] = {}
        for info in infos:
            entry = by_type.setdefault(info.content_type, {"objects": 0, "bytes": 0})
            entry["objects"] += 1
            entry["bytes"] += info.length
        return {
            "total_objects": len(infos),
            "total_bytes": sum(info.length for info in infos),
            "by_content_type": dict(sorted(by_type.items())),
            "cached_keys": list(self._cached),
            "pool": await self.pool.get_stats(),
        }
