"""Compatibility package: the import paths of the earlier Ray-based ``distributed_grid``, so code
written against the seed documents runs unchanged on the memory mesh.

Every module here is a thin re-export; the code lives in the ``mesh`` package:

===============================================================  ============================
``distributed_grid.config``                                       ``mesh.config``
``distributed_grid.orchestration.distributed_memory_pool``        ``mesh.pool``
``distributed_grid.utils.memory_helpers``                         ``mesh.helpers``
``distributed_grid.memory.distributed_memory_manager``            ``mesh.manager``
===============================================================  ============================

Not provided (not built yet): ``ResourceSharingOrchestrator``, ``SSHManager`` and the offloading
executor. See ``docs/python-api.md``.
"""
