"""Keeping the mesh balanced: memory pressure, Ray reservations and moving blocks.

- ``pressure``: the seed's pressure score, ``NodeLoad``, the offload decision (pure).
- ``placement``: reservations of worker resources as Ray placement groups (Ray is imported only
  when a reservation is made or read).
- ``rebalance``: planning moves (pure) and the ``Rebalancer`` that carries them out.

Only the master's operator uses this package (``grid rebalance``, ``grid resource-sharing``,
the seeds' orchestrator); neither the client library nor the agents import it.
"""
