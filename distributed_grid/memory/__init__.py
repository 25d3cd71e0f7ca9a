"""Seed import path for the key/value manager (``distributed_memory_manager``)."""

from distributed_grid.memory.distributed_memory_manager import DistributedMemoryManager

__all__ = ["DistributedMemoryManager"]
