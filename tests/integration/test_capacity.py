"""Capacity is promised once per host (issue 10, defect 4), with real agents.

Every agent of a ``LocalMesh`` runs on this machine, so they share its RAM: their shares here
(20 GiB each) add up to more than the host has. Lazy blocks make promises without backing pages,
so the test promises the whole host without using it. The agents keep their ledger in the test's
own state directory, so other meshes running on this machine at the same time do not see these
promises (nor these agents theirs)."""

from __future__ import annotations

import threading

from mesh.errors import CapacityError
from mesh.units import GiB
from tests.support.mesh import running_mesh


def _fill(mesh, node: str, got: list[int], errors: list[Exception]) -> None:
    """Allocate 1 GiB lazy blocks on ``node`` until the agent says there is no room."""
    try:
        with mesh.client() as client:
            for _ in range(64):
                try:
                    client.allocate(GiB, node=node, lazy=True)
                except CapacityError:
                    return
                got.append(GiB)
    except Exception as exc:  # reported by the test
        errors.append(exc)


def test_agents_sharing_a_host_never_promise_more_than_it_has(tmp_path):
    reserve = 1 * GiB
    with running_mesh(tmp_path, n=2, memory_gb=20, host_reserve_bytes=reserve,
                      state_dir=str(tmp_path / "state")) as mesh:
        got: dict[str, list[int]] = {"node1": [], "node2": []}
        errors: list[Exception] = []
        threads = [threading.Thread(target=_fill, args=(mesh, node, got[node], errors))
                   for node in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        with mesh.client() as client:
            stats = client.stats()
        nodes = {r["node"]: r for r in stats["nodes"]}
        host_total = nodes["node1"]["host_total"]
        promised = sum(r["used"] for r in nodes.values())
        assert promised == sum(map(len, got.values())) * GiB
        # The old agents promised 20 GiB each, 40 GiB on a 23.5 GiB host.
        assert promised <= host_total - reserve
        assert all(r["room"] < GiB for r in nodes.values())  # both full: the host is
        # freeing on one agent gives the room to the other
        with mesh.client() as client:
            victim = next(b for b in client.blocks() if b.node == "node1")
            client.free(victim.block_id)
            client.allocate(GiB, node="node2", lazy=True)
