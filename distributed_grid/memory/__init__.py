"""Seed import path for the key/value manager; the code is ``mesh.manager``."""

from mesh.manager import DistributedMemoryManager

__all__ = ["DistributedMemoryManager"]
