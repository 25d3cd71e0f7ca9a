"""Seed import path ``distributed_grid.utils.memory_helpers``: a re-export of ``mesh.helpers``
(``DistributedMemoryHelper``)."""

from mesh.helpers import DistributedMemoryHelper

__all__ = ["DistributedMemoryHelper"]
