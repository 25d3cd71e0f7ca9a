"""A real Ray cluster on loopback for placement tests, one per test session.

``tests/conftest.py`` loads it as a plugin (registered once,
so every module that asks shares one cluster) and mark the module's Ray tests
``pytest.mark.xdist_group("ray")``: with ``--dist loadgroup`` (pyproject's addopts) they all run
in one xdist worker, so ``pytest -n 2`` starts one cluster, not one per worker.

``ray_cluster`` starts a head with no CPUs and one raylet per mesh node of ``LocalMesh``
("node1", "node2", "node3"), each with 1 CPU, ``RAYLET_MEMORY_BYTES`` of Ray's ``memory``
resource and the custom resource ``mesh_node:<name>`` = 1, every address on 127.0.0.1. It
connects this process as a driver (namespace "mesh") so tests can read the placement group
table, and yields the cluster address. At teardown it removes and reports any placement group
with a "mesh:" name that is still there (the session fails), disconnects and shuts the cluster
down, whatever happened before.
"""

from __future__ import annotations

import os

# Before Ray is imported anywhere in this process: without it Ray dials a loopback address as
# this machine's outward IP, and the cluster below listens on loopback only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import pytest  # noqa: E402

MESH_NODES = ("node1", "node2", "node3")
RAYLET_MEMORY_BYTES = 2 * 1024**3
NAMESPACE = "mesh"


def mesh_groups() -> dict[str, dict]:
    """Placement groups with a "mesh:" name that are not REMOVED (this process is a driver)."""
    from ray.util.placement_group import placement_group_table

    return {pg_id: e for pg_id, e in placement_group_table().items()
            if (e.get("name") or "").startswith("mesh:") and e.get("state") != "REMOVED"}


def remove_mesh_groups() -> list[str]:
    """Remove every live "mesh:" placement group; returns their names."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    left = mesh_groups()
    for pg_id in left:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
    return [e["name"] for e in left.values()]


def node_of(node_id: str) -> str | None:
    """The mesh node a Ray node stands for (its ``mesh_node:<name>`` resource), or None."""
    import ray

    for n in ray.nodes():
        if n["NodeID"] == node_id:
            for key in n.get("Resources") or {}:
                if key.startswith("mesh_node:"):
                    return key.split(":", 1)[1]
    return None


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if ray_constants.ENABLE_RAY_CLUSTER:
        pytest.fail("Ray was imported before tests/support/raycluster.py set "
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; it would dial 127.0.0.1 as this "
                    "machine's outward IP")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1",
    })
    leftovers: list[str] = []
    try:
        for name in MESH_NODES:
            cluster.add_node(num_cpus=1, memory=RAYLET_MEMORY_BYTES,
                             resources={f"mesh_node:{name}": 1}, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False, include_dashboard=False)
        try:
            yield cluster.address
            leftovers = remove_mesh_groups()
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    if leftovers:
        pytest.fail(f"placement groups left behind by the tests: {leftovers}")
