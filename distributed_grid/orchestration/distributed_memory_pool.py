"""Seed import path ``distributed_grid.orchestration.distributed_memory_pool``: a re-export of
``mesh.pool`` (``DistributedMemoryPool``; ``PoolNotInitialized`` is the "Distributed memory pool
is not initialized" error)."""

from mesh.pool import DistributedMemoryPool, PoolNotInitialized

__all__ = ["DistributedMemoryPool", "PoolNotInitialized"]
