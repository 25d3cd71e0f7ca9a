"""Seed import paths for the memory pool and the orchestrator; each loads on first use, so
``from distributed_grid.orchestration import DistributedMemoryPool`` does not import Ray-side
rebalancing code."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DistributedMemoryPool": "distributed_grid.orchestration.distributed_memory_pool",
    "ResourceSharingOrchestrator": "distributed_grid.orchestration.resource_sharing_orchestrator",
    "PoolNotInitialized": "mesh.errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
