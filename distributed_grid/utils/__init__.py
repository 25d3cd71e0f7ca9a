"""Seed import path for the helpers (``memory_helpers``)."""

from distributed_grid.utils.memory_helpers import DistributedMemoryHelper

__all__ = ["DistributedMemoryHelper"]
