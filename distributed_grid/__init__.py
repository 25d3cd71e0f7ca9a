"""The seeds' Python API, under the import paths the earlier Ray-based version used.

Code written against the seed documents runs unchanged on the memory mesh. The classes live
here, each under one name; they are thin layers over the mesh's client (``mesh.client``) and,
for the orchestrator, its balancing package (``mesh.balance``):

===============================================================  ================================
``distributed_grid.config``                                      ``load_cluster_config``,
                                                                 ``ClusterConfig.from_yaml``
``distributed_grid.orchestration.distributed_memory_pool``       ``DistributedMemoryPool``
``distributed_grid.orchestration.resource_sharing_orchestrator`` ``ResourceSharingOrchestrator``
``distributed_grid.utils.memory_helpers``                        ``DistributedMemoryHelper``
``distributed_grid.memory.distributed_memory_manager``           ``DistributedMemoryManager``
===============================================================  ================================

The mesh never imports this package. Not provided: ``SSHManager`` and the offloading executor
(the agents are reached over the mesh; see ``docs/python-api.md``).
"""
