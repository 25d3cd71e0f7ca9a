"""Seed import path for the helpers; the code is ``mesh.helpers``."""

from mesh.helpers import DistributedMemoryHelper

__all__ = ["DistributedMemoryHelper"]
