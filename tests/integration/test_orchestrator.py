"""The seeds' orchestrator API on real agents (the Ray calls are in tests/integration/test_rebalance_ray.py)."""

from __future__ import annotations

import asyncio

from distributed_grid.orchestration.resource_sharing_orchestrator import (
    ResourceSharingOrchestrator,
)

MiB = 1 << 20


def test_the_seeds_orchestrator_code_runs_unchanged(shared_mesh):
    async def main():
        orchestrator = ResourceSharingOrchestrator(str(shared_mesh.config_path), None)
        await orchestrator.initialize()
        block_id = await orchestrator.allocate_distributed_memory(
            size_bytes=10 * MiB, preferred_node="node2"
        )
        assert await orchestrator.write_distributed_memory(block_id, b"data") is True
        data = await orchestrator.read_distributed_memory(block_id, 4)
        stats = await orchestrator.get_distributed_memory_stats()
        assert await orchestrator.deallocate_distributed_memory(block_id) is True
        await orchestrator.stop()
        return data, stats

    data, stats = asyncio.run(main())
    assert data == b"data"
    assert {n["node"] for n in stats["nodes"]} == {"node1", "node2", "node3"}


def test_pressure_and_offload_decisions_from_heartbeats(shared_mesh):
    async def main():
        async with ResourceSharingOrchestrator(shared_mesh.config_path) as o:
            block = await o.allocate_distributed_memory(880 * MiB, "node3")
            try:
                loads = await o.node_loads()
                hot = await o.get_memory_pressure("node3")
                calm = await o.get_memory_pressure("node1")
                big = await o.should_offload("node3", estimated_gb=2.0, buffer_gb=0.1)
                small = await o.should_offload("node1", estimated_gb=0.01, buffer_gb=0.1)
                master = await o.get_memory_pressure()
                unknown = await o.should_offload("nope", 0.1)
            finally:
                await o.deallocate_distributed_memory(block)
            return loads, hot, calm, big, small, master, unknown

    loads, hot, calm, big, small, master, unknown = asyncio.run(main())
    assert loads["node3"].used >= 880 * MiB and master_name_in(loads)
    assert hot > 0.7 and calm == 0.1  # 86 % of a 1 GiB share (over the high threshold) vs nothing
    assert big.offload and any("needs 2 GB" in r for r in big.reasons)
    assert not small.offload, small.reasons
    assert 0.1 <= master <= 1.0
    assert unknown.offload


def master_name_in(loads) -> bool:
    return any(name not in ("node1", "node2", "node3") for name in loads)


def test_drain_without_ray_moves_everything_off_a_node(shared_mesh):
    async def main():
        async with ResourceSharingOrchestrator(shared_mesh.config_path) as o:
            blocks = [await o.allocate_distributed_memory(4 * MiB, "node1") for _ in range(3)]
            for i, b in enumerate(blocks):
                await o.write_distributed_memory(b, bytes([i + 1]) * (4 * MiB))
            report = await o.drain("node1", use_ray=False)
            back = [await o.read_distributed_memory(b) for b in blocks]
            stats = await o.get_distributed_memory_stats()
            for b in blocks:
                await o.deallocate_distributed_memory(b)
            return blocks, report, back, stats

    blocks, report, back, stats = asyncio.run(main())
    assert sorted(r.move.block for r in report.results if r.ok) == sorted(blocks)
    assert all(r.move.target != "node1" for r in report.results)
    assert back == [bytes([i + 1]) * (4 * MiB) for i in range(3)]
    assert next(n for n in stats["nodes"] if n["node"] == "node1")["blocks"] == 0
