"""Running agents on nodes: local processes, SSH deployment, and the node-side control.

- ``local``: agents of this machine (start, find, stop; the state directory).
- ``deploy``: install and drive agents on other machines over SSH with Fabric (the ``deploy``
  extra; Fabric is imported only when a node is really reached over SSH).
- ``nodectl``: what ``deploy`` runs on a node (``python -m mesh.nodes.nodectl``).
- ``status``: one row per node for ``grid agents status``, from the pid files, SSH and heartbeats.
"""
