"""The mesh's client library: ``MeshClient`` (blocking) and ``AsyncMeshClient`` (asyncio).

    from mesh.client import MeshClient      # or simply: from mesh import MeshClient

Modules, from the top down:

- ``drivers``: the two client classes; they differ only in how they wait for sockets.
- ``pool``: the cores one client runs its operations on at once (``mesh.client_connections``),
  and ``gather``, which runs several operations side by side in one thread; ``parallel``: a
  large transfer over two connections; ``stripes``: objects striped over several agents.
- ``objects``: named objects (bytes, files, pickles, numpy arrays under keys).
- ``many``: many small operations per message (``read_many``, ``write_many``, ``get_many``,
  ``put_many``).
- ``core``: the core every operation is written in once (sockets per agent, the membership
  view, block locations, placement, the block operations).
- ``transfer``: the one chunking helper, the one "follow the block" policy, the ring of chunk
  buffers that streams files (resuming after a move).
- ``batch``: the pure batch window and reply matching every request goes through.
- Smaller pieces of the core: ``locate`` (where a block's copies are), ``keylookup`` and
  ``keyclaims`` (key records), ``listing`` (listings merged over agents), ``view`` (merging the
  membership view; version skew), ``reach`` (telling "nothing listens" from "slow"), ``links``
  (a link per agent), ``blame`` (which node to blame for a failure).

Not here: frame layouts (``mesh/protocol.py``), errors (``mesh/errors.py``), cluster files
(``mesh/config.py``).
"""

from mesh.client.core import BlockInfo, NodeInfo
from mesh.client.drivers import AsyncMeshClient, MeshClient
from mesh.client.objects import ObjectInfo

__all__ = ["MeshClient", "AsyncMeshClient", "BlockInfo", "NodeInfo", "ObjectInfo"]
