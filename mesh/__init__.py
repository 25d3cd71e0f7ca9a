"""The memory mesh: use the RAM of worker machines as if it were your own.

    from mesh import MeshClient, AsyncMeshClient

The package is laid out by audience (docs/DESIGN.md, "Layout"):

- ``mesh`` itself is the kernel shared by clients and agents: ``protocol`` (the only module that
  builds frames), ``errors``, ``units``, ``config``, ``membership``, ``sockets``, ``hostmem``.
- ``mesh.client``: ``MeshClient`` and ``AsyncMeshClient``, named objects, the sans-IO core.
- ``mesh.balance``: pressure, Ray reservations, rebalancing (the master's operator only).
- ``mesh.nodes``: agents as local processes, SSH deployment, node control.
- ``mesh.cli``: the ``grid`` command line.

The agent daemon is the ``agents`` package; the seeds' API is ``distributed_grid``.

``import mesh`` is cheap: the client classes and the error hierarchy load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

# A testing hook, not a setting: MESH_VERSION_OVERRIDE makes this process claim another version,
# so that a test can run an agent "of another version" and watch the version-skew warnings
# (tests/integration/test_version_skew.py). Never set it in production.
if __import__("os").environ.get("MESH_VERSION_OVERRIDE", "").strip():
    __version__ = __import__("os").environ["MESH_VERSION_OVERRIDE"].strip()

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "MeshClient": "mesh.client",
    "AsyncMeshClient": "mesh.client",
    "BlockInfo": "mesh.client",
    "NodeInfo": "mesh.client",
    "ObjectInfo": "mesh.client",
    "MeshError": "mesh.errors",
    "load_cluster_config": "mesh.config",
}

__all__ = [
    "__version__", "MeshClient", "AsyncMeshClient", "BlockInfo", "NodeInfo", "ObjectInfo",
    "MeshError", "load_cluster_config",
]

if TYPE_CHECKING:
    from mesh.client import AsyncMeshClient, BlockInfo, MeshClient, NodeInfo, ObjectInfo
    from mesh.config import load_cluster_config
    from mesh.errors import MeshError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
