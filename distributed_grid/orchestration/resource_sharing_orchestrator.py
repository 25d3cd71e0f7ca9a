"""Seed import path ``distributed_grid.orchestration.resource_sharing_orchestrator``: a
re-export of ``mesh.orchestrator.ResourceSharingOrchestrator``."""

from mesh.orchestrator import ResourceSharingOrchestrator

__all__ = ["ResourceSharingOrchestrator"]
