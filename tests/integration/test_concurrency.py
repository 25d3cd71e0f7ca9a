"""One client, many operations at once (``mesh/client/pool.py``), transfers over several
connections (``mesh/client/parallel.py``) and striped objects (``mesh/client/stripes.py``), on
real agents.

Overlap is shown without timing: an agent paused with SIGSTOP holds one operation, and an
operation on another agent, from another thread or task of the same client, must finish while
the first is still waiting.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading

import pytest

import mesh.client.parallel as parallel
from mesh.client import AsyncMeshClient, MeshClient
from tests.support.mesh import clean_client, running_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("concurrency"), n=3) as m:
        yield m


def test_a_paused_agent_does_not_hold_up_another_threads_operation(tmp_path):
    with running_mesh(tmp_path, n=2) as m, MeshClient(m.config_path, timeout_s=20.0) as client:
        slow = client.allocate(4096, node="node1")
        fast = client.allocate(4096, node="node2")
        client.write(slow, b"s" * 4096)
        m.kill("node1", signal.SIGSTOP)
        done: list[str] = []
        try:
            waiting = threading.Thread(target=lambda: (client.read(slow), done.append("slow")))
            waiting.start()
            for i in range(5):  # while the first thread waits on node1, node2 serves this one
                client.write(fast, bytes([i]) * 4096)
                assert client.read(fast) == bytes([i]) * 4096
            done.append("fast")
            assert done == ["fast"] and waiting.is_alive()
        finally:
            m.kill("node1", signal.SIGCONT)
        waiting.join(30)
        assert done == ["fast", "slow"]


def test_a_paused_agent_does_not_hold_up_another_task(tmp_path):
    async def main(config):
        async with AsyncMeshClient(config, timeout_s=20.0) as client:
            slow = await client.allocate(4096, node="node1")
            fast = await client.allocate(4096, node="node2")
            await client.write(slow, b"s" * 4096)
            m.kill("node1", signal.SIGSTOP)
            try:
                waiting = asyncio.ensure_future(client.read(slow))
                await asyncio.sleep(0.2)  # it has sent its request and waits
                for i in range(5):
                    await client.write(fast, bytes([i]) * 4096)
                    assert await client.read(fast) == bytes([i]) * 4096
                assert not waiting.done()
            finally:
                m.kill("node1", signal.SIGCONT)
            assert await asyncio.wait_for(waiting, 30) == b"s" * 4096

    with running_mesh(tmp_path, n=2) as m:
        asyncio.run(main(m.config_path))


def _work(n: int) -> list[tuple[int, bytes]]:
    rng = random.Random(n)
    return [(i, rng.randbytes(rng.randrange(1, 3 << 20))) for i in range(16)]


def test_sixteen_threads_share_one_client(mesh):
    with clean_client(mesh) as client:
        blocks = [client.allocate(3 << 20, node=f"node{i % 3 + 1}") for i in range(16)]
        work = _work(1)
        errors: list[BaseException] = []

        def one(i: int, data: bytes) -> None:
            try:
                for _ in range(3):
                    client.write(blocks[i], data)
                    assert client.read(blocks[i], len(data)) == data
                    client.put_bytes(f"t{i}", data, replace=True)
                    assert client.get_bytes(f"t{i}") == data
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=one, args=w) for w in work]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert 1 < len(client._pool.cores) <= client.settings.client_connections
        assert sorted(k.key for k in client.keys()) == sorted(f"t{i}" for i in range(16))


def test_sixteen_tasks_share_one_async_client(mesh):
    async def main():
        async with AsyncMeshClient(mesh.config_path) as client:
            blocks = [await client.allocate(3 << 20, node=f"node{i % 3 + 1}") for i in range(16)]

            async def one(i: int, data: bytes) -> bytes:
                await client.write(blocks[i], data)
                await client.put_bytes(f"a{i}", data, replace=True)
                got = await client.read(blocks[i], len(data))
                assert await client.get_bytes(f"a{i}") == got
                return bytes(got)

            work = _work(2)
            got = await asyncio.gather(*(one(i, d) for i, d in work))
            assert got == [d for _, d in work]
            assert len(client._pool.cores) > 1
            for i, b in enumerate(blocks):
                await client.delete(f"a{i}")
                await client.free(b)

    asyncio.run(main())


def test_a_large_transfer_over_zeromq_goes_over_several_connections(tmp_path):
    # small chunks and window, so 4 MiB is worth the most connections a transfer uses; over
    # ZeroMQ only (the direct path streams it over one: mesh/client/parallel.py)
    with running_mesh(tmp_path, n=1, chunk_bytes=65536, window=2, direct_tcp=False) as m, \
            m.client() as client:
        data = os.urandom(4 << 20)
        block = client.allocate(len(data) + 100)
        assert client.write(block, data, offset=100) == len(data)
        assert len(client._pool.cores) == parallel.MAX_PARTS > 1
        assert client.read(block, len(data), 100) == data
        out = bytearray(len(data) - 1)
        assert client.read_into(block, out, 101) == len(out)
        assert out == data[1:]


def test_a_keyed_cluster_shakes_hands_on_every_connection(tmp_path, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    with running_mesh(tmp_path, n=2, keyed=True, chunk_bytes=65536, window=2) as m:
        with MeshClient(m.config_path, key=m.admin_key) as client:
            blocks = [client.allocate(1 << 20, node=f"node{i % 2 + 1}") for i in range(8)]
            datas = [os.urandom(1 << 20) for _ in blocks]
            threads = [threading.Thread(target=client.write, args=(b, d))
                       for b, d in zip(blocks, datas)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert [client.read(b) for b in blocks] == datas
            assert len(client._pool.cores) > 1
            assert all(link.sealed for core in client._pool.cores
                       for link in core.links.live.values())


def test_a_striped_object_round_trips_lists_as_one_and_deletes_whole(mesh, tmp_path):
    with clean_client(mesh) as client:
        data = os.urandom((5 << 20) + 3)
        info = client.put_bytes("striped", data, stripe=3)
        assert info.length == len(data)
        assert len({b for b, _ in info.meta["stripes"]}) == 3
        assert client.get_bytes("striped") == data
        client.get_file("striped", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == data
        listed = {k.key: k for k in client.keys()}
        assert list(listed) == ["striped"] and listed["striped"].length == len(data)
        nodes = {b.node for b in client.blocks()}
        assert nodes == {"node1", "node2", "node3"}  # one stripe each
        smaller = os.urandom(1000)
        client.put_bytes("striped", smaller, replace=True, stripe=2)
        assert client.get_bytes("striped") == smaller
        assert len(client.blocks()) == 2  # the third stripe of the old value is gone
        client.delete("striped")
        assert list(client.keys()) == [] and list(client.blocks()) == []


def test_striping_refuses_more_stripes_than_nodes(mesh):
    from mesh.errors import CapacityError, InvalidRequest

    with clean_client(mesh) as client:
        with pytest.raises(CapacityError):
            client.put_bytes("x", b"y" * 100, stripe=4)
        with pytest.raises(InvalidRequest):
            client.put_bytes("x", b"y" * 100, stripe=0)
        assert list(client.keys()) == [] and list(client.blocks()) == []
