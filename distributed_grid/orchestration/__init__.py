"""Seed import path for the memory pool; the code is ``mesh.pool``. The seeds' orchestrator
(``ResourceSharingOrchestrator``) is not built yet."""

from mesh.pool import DistributedMemoryPool, PoolNotInitialized

__all__ = ["DistributedMemoryPool", "PoolNotInitialized"]
