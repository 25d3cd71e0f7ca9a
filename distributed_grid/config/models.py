"""Seed import path ``distributed_grid.config.models`` (seed 004's demo imports
``ClusterConfig`` from here). A re-export of ``distributed_grid.config``, itself over
``mesh.config``."""

from distributed_grid.config import ClusterConfig, ExecutionConfig, NodeConfig, load_cluster_config

__all__ = ["ClusterConfig", "ExecutionConfig", "NodeConfig", "load_cluster_config"]
