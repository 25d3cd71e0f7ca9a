"""Seed import paths for the memory pool (``mesh.pool``) and the orchestrator
(``mesh.orchestrator``)."""

from mesh.orchestrator import ResourceSharingOrchestrator
from mesh.pool import DistributedMemoryPool, PoolNotInitialized

__all__ = ["DistributedMemoryPool", "PoolNotInitialized", "ResourceSharingOrchestrator"]
