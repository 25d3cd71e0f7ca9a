"""Seed import path for cluster files: ``from distributed_grid.config import load_cluster_config``.

Re-exports ``mesh.config`` (the loader, the resolution order and every value class). The one
addition is the seeds' ``ClusterConfig.from_yaml(path)``: ``ClusterConfig`` here is a subclass of
``mesh.config.ClusterConfig`` with that classmethod, so its instances go wherever a config does.
"""

from __future__ import annotations

import os
from dataclasses import fields

from mesh.config import ClusterConfig as _MeshClusterConfig
from mesh.config import (
    ExecutionConfig,
    MeshSettings,
    NodeConfig,
    NodeSharing,
    load_cluster_config,
    resolve_config,
)

__all__ = [
    "ClusterConfig",
    "ExecutionConfig",
    "MeshSettings",
    "NodeConfig",
    "NodeSharing",
    "load_cluster_config",
    "resolve_config",
]


class ClusterConfig(_MeshClusterConfig):
    """``mesh.config.ClusterConfig`` plus the seeds' ``from_yaml``."""

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ClusterConfig:
        """Load and check a cluster file (``ConfigError`` naming the file and the field)."""
        loaded = load_cluster_config(path)
        return cls(**{f.name: getattr(loaded, f.name) for f in fields(loaded)})
