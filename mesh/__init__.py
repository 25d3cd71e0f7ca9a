"""The memory mesh: use the RAM of worker machines as if it were your own.

The client API lives in ``mesh.client`` (``MeshClient``, ``AsyncMeshClient``); errors in
``mesh.errors``; cluster files in ``mesh.config``. The agent daemon is the ``agents`` package.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("memory-mesh")
except PackageNotFoundError:  # running from a checkout without an install
    __version__ = "0.0.0+local"
