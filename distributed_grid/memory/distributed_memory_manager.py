"""Seed import path ``distributed_grid.memory.distributed_memory_manager``: a re-export of
``mesh.manager`` (``DistributedMemoryManager``)."""

from mesh.manager import DistributedMemoryManager

__all__ = ["DistributedMemoryManager"]
