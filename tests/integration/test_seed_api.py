"""The seeds' Python API (pool, helper, manager) against real agents on 127.0.0.1-3.

The seed documents' own snippets run here nearly verbatim, through the import paths the seeds
use (``distributed_grid...``, where the classes live); the changes are the node names (gpu2 -> node2), sizes that fit 1 GiB nodes, and
``KeyNotFound`` where the seed returned None. Also: numpy dtypes and layouts, persistence, the
"not initialized" error, and the client memory cost of large arrays (tracemalloc).
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

import distributed_grid.config
import distributed_grid.memory.distributed_memory_manager
import distributed_grid.orchestration.distributed_memory_pool
import distributed_grid.utils.memory_helpers
import mesh.config
import mesh.errors
from distributed_grid.memory.distributed_memory_manager import DistributedMemoryManager
from distributed_grid.orchestration.distributed_memory_pool import (
    DistributedMemoryPool,
    PoolNotInitialized,
)
from distributed_grid.utils.memory_helpers import DistributedMemoryHelper
from mesh.client import MeshClient
from mesh.errors import BlockNotFound, KeyExists, KeyNotFound, MeshError, NodeUnavailable
from support.mesh import LocalMesh, running_mesh

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("seed-api")) as local:
        yield local


@pytest.fixture
def api():
    """The seeds' names, imported from the seeds' import paths (one name per class)."""
    return SimpleNamespace(
        load_cluster_config=distributed_grid.config.load_cluster_config,
        DistributedMemoryPool=distributed_grid.orchestration.distributed_memory_pool.DistributedMemoryPool,
        DistributedMemoryHelper=distributed_grid.utils.memory_helpers.DistributedMemoryHelper,
        DistributedMemoryManager=distributed_grid.memory.distributed_memory_manager.DistributedMemoryManager,
    )


def run(coro):
    return asyncio.run(coro)


def block_ids(mesh3) -> set[str]:
    with mesh3.client() as c:
        return {b.block_id for b in c.blocks()}


def key_names(mesh3) -> set[str]:
    with mesh3.client() as c:
        return {i.key for i in c.keys()}


# --- import paths -----------------------------------------------------------------------------


def test_seed_import_paths_are_ours():
    from distributed_grid.config import ClusterConfig, load_cluster_config
    from distributed_grid.config.models import ClusterConfig as ModelsClusterConfig
    from distributed_grid.memory import DistributedMemoryManager as M2
    from distributed_grid.orchestration import DistributedMemoryPool as P2
    from distributed_grid.utils import DistributedMemoryHelper as H2

    assert PoolNotInitialized is mesh.errors.PoolNotInitialized
    assert (P2, H2, M2) == (DistributedMemoryPool, DistributedMemoryHelper, DistributedMemoryManager)
    assert load_cluster_config is mesh.config.load_cluster_config
    assert ModelsClusterConfig is ClusterConfig


def test_cluster_config_from_yaml(mesh3):
    from distributed_grid.config import ClusterConfig

    cfg = ClusterConfig.from_yaml(mesh3.config_path)
    assert isinstance(cfg, mesh.config.ClusterConfig)
    assert [n.name for n in cfg.nodes] == ["node1", "node2", "node3"]
    loaded = mesh.config.load_cluster_config(mesh3.config_path)
    assert (cfg.nodes, cfg.mesh, cfg.execution, cfg.source) == (
        loaded.nodes, loaded.mesh, loaded.execution, loaded.source)
    with pytest.raises(mesh.errors.ConfigError, match="no such cluster file"):
        ClusterConfig.from_yaml(mesh3.tmp / "missing.yaml")


# --- seed 000: "Using Distributed Memory Pool" ------------------------------------------------


def test_seed_000_using_distributed_memory_pool(mesh3, api):
    before = block_ids(mesh3)

    async def use_distributed_memory():
        # Initialize
        config = api.load_cluster_config(mesh3.config_path)
        pool = api.DistributedMemoryPool(config)
        await pool.initialize()

        # Allocate 64 MiB on node2 (seed: 5 GiB on gpu2)
        block_id = await pool.allocate(64 * 1024**2, preferred_node="node2")

        # Write data
        data = b"Your data here" * 1000000
        await pool.write(block_id, data)

        # Read data back
        retrieved = await pool.read(block_id, len(data))
        assert retrieved == data
        assert (await pool.client.stat(block_id)).node == "node2"

        # Clean up
        await pool.deallocate(block_id)
        await pool.shutdown()
        return block_id

    block_id = run(use_distributed_memory())
    assert "node2" in block_id
    assert block_ids(mesh3) == before


def test_pool_offsets_sizes_and_path_config(mesh3):
    async def go():
        async with DistributedMemoryPool(str(mesh3.config_path)) as pool:
            block = await pool.allocate(MiB)
            try:
                assert await pool.write(block, b"hello", offset=1000) == 5
                assert await pool.read(block, 5, offset=1000) == b"hello"
                assert len(await pool.read(block)) == MiB
                assert len(await pool.read(block, offset=MiB - 10)) == 10
                arr = np.arange(1000, dtype=np.int32)
                await pool.write(block, arr, offset=4096)
                back = np.frombuffer(await pool.read(block, arr.nbytes, 4096), dtype=np.int32)
                assert np.array_equal(back, arr)
                with pytest.raises(mesh.errors.OutOfRange):
                    await pool.write(block, b"xx", offset=MiB - 1)
            finally:
                await pool.deallocate(block)
            with pytest.raises(BlockNotFound):
                await pool.read(block, 1)
            with pytest.raises(BlockNotFound):
                await pool.deallocate(block)

    run(go())


def test_pool_get_stats_shows_blocks_per_node(mesh3):
    async def go():
        async with DistributedMemoryPool(mesh3.config_path) as pool:
            before = await pool.get_stats()
            made = [await pool.allocate(2 * MiB, preferred_node="node1"),
                    await pool.allocate(2 * MiB, preferred_node="node1"),
                    await pool.allocate(3 * MiB, preferred_node="node3")]
            try:
                stats = await pool.get_stats()
                assert stats["total_blocks"] == before["total_blocks"] + 3
                assert stats["pool_blocks"] == 3
                assert stats["persistent"] is True
                per = stats["node_stats"]
                old = before["node_stats"]
                assert set(per) == {"node1", "node2", "node3"}
                assert per["node1"]["blocks"] == old["node1"]["blocks"] + 2
                assert per["node1"]["used"] == old["node1"]["used"] + 4 * MiB
                assert per["node3"]["blocks"] == old["node3"]["blocks"] + 1
                assert per["node3"]["used"] == old["node3"]["used"] + 3 * MiB
                assert per["node2"] == old["node2"]
                assert stats["total_used"] == before["total_used"] + 7 * MiB
                assert stats["total_free"] == stats["total_capacity"] - stats["total_used"]
                assert stats["live_nodes"] == 3
            finally:
                for block in made:
                    await pool.deallocate(block)
            assert (await pool.get_stats())["total_blocks"] == before["total_blocks"]

    run(go())


def test_pool_not_initialized(mesh3):
    pool = DistributedMemoryPool(mesh3.config_path)
    helper = DistributedMemoryHelper(pool)

    async def calls():
        return [
            pool.allocate(MiB), pool.write("block_0_node1_x", b"x"), pool.read("block_0_node1_x"),
            pool.deallocate("block_0_node1_x"), pool.get_stats(),
            helper.store_object({}), helper.retrieve_object("k"),
            helper.store_numpy_array(np.zeros(3)), helper.retrieve_numpy_array("k"),
            helper.cache_large_data("k", b"x"), helper.get_cached_data("k"),
            helper.clear_cache("k"), helper.get_memory_usage_summary(),
        ]

    async def go():
        for coro in await calls():
            with pytest.raises(PoolNotInitialized) as info:
                await coro
            assert "Distributed memory pool is not initialized" in str(info.value)
            assert isinstance(info.value, MeshError) and info.value.code == "not_initialized"
        with pytest.raises(PoolNotInitialized):
            pool.client
        assert not pool.initialized
        await pool.initialize()
        await pool.initialize()  # idempotent
        assert pool.initialized
        await pool.shutdown()
        await pool.shutdown()  # idempotent
        with pytest.raises(PoolNotInitialized, match="Distributed memory pool is not initialized"):
            await pool.allocate(MiB)
        await pool.initialize()  # and again after a shutdown
        block = await pool.allocate(MiB)
        await pool.deallocate(block)
        await pool.shutdown()

    run(go())


def test_pool_initialize_without_agents_fails(tmp_path):
    nobody = LocalMesh.create(tmp_path, n=1, connect_timeout_s=0.3)  # never started

    async def go():
        pool = DistributedMemoryPool(nobody.config_path)
        with pytest.raises(NodeUnavailable, match="no mesh agent answered"):
            await pool.initialize()
        assert not pool.initialized

    run(go())


def test_persistent_blocks_outlive_the_pool_and_non_persistent_ones_do_not(mesh3):
    async def persistent():
        pool = DistributedMemoryPool(mesh3.config_path)
        await pool.initialize(persistent=True)
        block = await pool.allocate(MiB, preferred_node="node3")
        await pool.write(block, b"still here")
        await pool.shutdown()
        return block

    async def later(block):
        pool = DistributedMemoryPool(mesh3.config_path)  # a new pool, as a later process would
        await pool.initialize()
        assert await pool.read(block, 10) == b"still here"
        await pool.deallocate(block)
        await pool.shutdown()

    block = run(persistent())
    assert block in block_ids(mesh3)
    run(later(block))
    assert block not in block_ids(mesh3)

    async def temporary():
        pool = DistributedMemoryPool(mesh3.config_path)
        await pool.initialize(persistent=False)
        assert not pool.persistent
        kept, gone, freed_early = (await pool.allocate(MiB), await pool.allocate(MiB),
                                   await pool.allocate(MiB))
        await pool.deallocate(freed_early)
        with MeshClient(mesh3.config_path) as other:  # freed behind the pool's back
            other.free(gone)
        await pool.shutdown()
        return kept, gone, freed_early

    made = run(temporary())
    assert not set(made) & block_ids(mesh3)


# --- seed 000: "Using Helper Utilities", workflows 2 and 3 ------------------------------------


def test_seed_000_using_helper_utilities(mesh3, api):
    large_data = np.random.default_rng(0).random((512, 1024))  # 4 MiB
    before_blocks, before_keys = block_ids(mesh3), key_names(mesh3)

    async def use_memory_helpers(pool):
        # Create helper
        helper = api.DistributedMemoryHelper(pool)

        # Store Python object
        obj = {"key": "value", "data": [1, 2, 3]}
        block_id = await helper.store_object(obj, preferred_node="node2")

        # Retrieve object
        retrieved_obj = await helper.retrieve_object(block_id)
        assert retrieved_obj == obj

        # Store NumPy array
        array = np.random.rand(1000, 1000)
        array_block = await helper.store_numpy_array(array, preferred_node="node2")

        # Retrieve array
        retrieved_array = await helper.retrieve_numpy_array(array_block)
        assert np.array_equal(retrieved_array, array)

        # Cache large data
        await helper.cache_large_data("my_cache_key", large_data)
        cached = await helper.get_cached_data("my_cache_key")
        assert np.array_equal(cached, large_data)

        # the stored objects are on node2, each in its own block, keyed by its block id
        for block in (block_id, array_block):
            assert (await pool.client.stat(block)).node == "node2"
            info = await pool.client.object_info(block)
            assert info.block_id == block and info.owns_block
        await pool.deallocate(block_id)
        with pytest.raises(KeyNotFound):
            await helper.retrieve_object(block_id)
        await pool.client.delete(array_block)
        with pytest.raises(KeyNotFound):
            await helper.retrieve_numpy_array(array_block)
        assert await helper.clear_cache() == 1

    async def main():
        pool = api.DistributedMemoryPool(api.load_cluster_config(mesh3.config_path))
        await pool.initialize()
        try:
            await use_memory_helpers(pool)
        finally:
            await pool.shutdown()

    run(main())
    assert block_ids(mesh3) == before_blocks
    assert key_names(mesh3) == before_keys


def load_large_dataset():
    rng = np.random.default_rng(2)
    return {
        "features": rng.random((20_000, 64), dtype=np.float32),
        "labels": rng.integers(0, 10, 20_000),
        "meta": {"version": "1.0", "source": "test"},
    }


def test_seed_000_workflow_2_cache_large_datasets(mesh3, api):
    async def cache_workflow(pool):
        helper = api.DistributedMemoryHelper(pool)

        # Load large dataset
        large_dataset = load_large_dataset()

        # Cache on node2
        info = await helper.cache_large_data(
            "training_data",
            large_dataset,
            preferred_node="node2"
        )
        assert info.key == "training_data" and info.node == "node2"
        assert info.content_type == "pickle"

        # Later: retrieve from cache
        dataset = await helper.get_cached_data("training_data")
        assert dataset.keys() == large_dataset.keys()
        assert np.array_equal(dataset["features"], large_dataset["features"])
        assert np.array_equal(dataset["labels"], large_dataset["labels"])
        assert dataset["meta"] == large_dataset["meta"]

        # When done
        await helper.clear_cache("training_data")
        with pytest.raises(KeyNotFound, match="training_data"):
            await helper.get_cached_data("training_data")

    async def main():
        async with api.DistributedMemoryPool(mesh3.config_path) as pool:
            await cache_workflow(pool)

    run(main())
    assert "training_data" not in key_names(mesh3)


def test_seed_000_workflow_3_store_ml_model_weights(mesh3, api):
    async def store_model_weights(pool):
        helper = api.DistributedMemoryHelper(pool)

        # Large model weights
        weights = {
            'layer1': np.random.rand(1000, 1000),
            'layer2': np.random.rand(1000, 1000),
            'layer3': np.random.rand(1000, 1000),
        }

        # Store each layer on node2
        block_ids = {}
        for layer_name, layer_weights in weights.items():
            block_id = await helper.store_numpy_array(
                layer_weights,
                preferred_node="node2"
            )
            block_ids[layer_name] = block_id

        # Later: load weights
        loaded_weights = {}
        for layer_name, block_id in block_ids.items():
            loaded_weights[layer_name] = await helper.retrieve_numpy_array(block_id)

        for layer_name in weights:
            assert np.array_equal(loaded_weights[layer_name], weights[layer_name])
            assert (await pool.client.stat(block_ids[layer_name])).node == "node2"
        for block_id in block_ids.values():
            await pool.deallocate(block_id)

    async def main():
        async with api.DistributedMemoryPool(mesh3.config_path) as pool:
            await store_model_weights(pool)

    before = block_ids(mesh3)
    run(main())
    assert block_ids(mesh3) == before


# --- the helper's cache, in detail ------------------------------------------------------------


def test_cache_dispatches_on_type_and_reads_back_by_content_type(mesh3, tmp_path):
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    objects = np.array([{"a": 1}, None, "x"], dtype=object)
    structured = np.array([(1, 2.5), (3, 4.5)], dtype=[("i", "<i4"), ("f", "<f8")])
    cases = {
        "t-array": (np.arange(12.0).reshape(3, 4), "ndarray"),
        "t-bytes": (b"raw bytes" * 1000, "bytes"),
        "t-bytearray": (bytearray(b"\x00\x01" * 5000), "bytes"),
        "t-memoryview": (memoryview(b"view" * 100), "bytes"),
        "t-dict": ({"a": [1, 2, 3], "b": np.ones(4)}, "pickle"),
        "t-text": ("This is a test message stored in distributed memory!", "pickle"),
        "t-masked": (masked, "pickle"),
        "t-objects": (objects, "pickle"),
        "t-structured": (structured, "pickle"),
    }

    async def go():
        async with DistributedMemoryPool(mesh3.config_path) as pool:
            helper = DistributedMemoryHelper(pool)
            for key, (value, content_type) in cases.items():
                info = await helper.cache_large_data(key, value)
                assert info.key == key and info.content_type == content_type, key
            for key, (value, content_type) in cases.items():
                back = await helper.get_cached_data(key)
                if content_type == "bytes":
                    assert isinstance(back, bytearray) and back == bytes(value)
                elif key == "t-dict":
                    assert back["a"] == value["a"] and np.array_equal(back["b"], value["b"])
                elif key == "t-masked":
                    assert isinstance(back, np.ma.MaskedArray)
                    assert back.mask.tolist() == [False, True, False]
                    assert back.compressed().tolist() == [1.0, 3.0]
                elif key == "t-objects":
                    assert back.dtype == object and back.tolist() == value.tolist()
                elif isinstance(value, np.ndarray):
                    assert back.dtype == value.dtype and np.array_equal(back, value)
                else:
                    assert back == value

            # replace=True by default; replace=False refuses an existing key
            await helper.cache_large_data("t-bytes", b"new")
            assert await helper.get_cached_data("t-bytes") == b"new"
            with pytest.raises(KeyExists):
                await helper.cache_large_data("t-bytes", b"newer", replace=False)
            assert await helper.get_cached_data("t-bytes") == b"new"

            # a file stored with put_file reads back as its bytes
            path = tmp_path / "data.bin"
            path.write_bytes(os.urandom(300_000))
            info = await pool.client.put_file("t-file", path)
            assert info.content_type == "file"
            assert await helper.get_cached_data("t-file") == path.read_bytes()
            await helper.clear_cache("t-file")

            summary = await helper.get_memory_usage_summary()
            assert summary["cached_keys"] == list(cases)
            by_type = summary["by_content_type"]
            assert by_type["bytes"]["objects"] >= 3 and by_type["pickle"]["objects"] >= 5
            assert by_type["ndarray"]["bytes"] >= 96
            assert summary["total_objects"] == sum(t["objects"] for t in by_type.values())
            assert summary["total_bytes"] == sum(t["bytes"] for t in by_type.values())
            assert summary["pool"]["live_nodes"] == 3

            with pytest.raises(KeyNotFound):
                await helper.clear_cache("t-never-stored")
            await helper.clear_cache("t-array")
            await pool.client.delete("t-text")  # gone behind the helper's back: skipped
            assert await helper.clear_cache() == len(cases) - 2
            assert (await helper.get_memory_usage_summary())["cached_keys"] == []

    run(go())
    assert not {k for k in key_names(mesh3) if k.startswith("t-")}


DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128", ">i4", ">f8"]


def _sample(dtype: np.dtype, shape, rng) -> np.ndarray:
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype.newbyteorder("="), endpoint=True).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return (rng.standard_normal(shape) * 1000).astype(dtype)


def test_numpy_dtypes_and_layouts_round_trip(mesh3):
    rng = np.random.default_rng(7)
    arrays = {}
    for name in DTYPES:
        dtype = np.dtype(name)
        arrays[f"c-{name}"] = _sample(dtype, (37, 53), rng)
        arrays[f"f-{name}"] = np.asfortranarray(_sample(dtype, (37, 53, 3), rng))
        arrays[f"strided-{name}"] = _sample(dtype, (40, 60), rng)[::3, 1::2]
    arrays["zero-d"] = np.array(3.25)
    arrays["one-element"] = np.array([7], dtype=np.int16)
    arrays["big-f"] = np.asfortranarray(rng.random((700, 900)))  # several chunks

    def check(key: str, src: np.ndarray, out: np.ndarray) -> None:
        assert isinstance(out, np.ndarray), key
        assert out.dtype == src.dtype and out.shape == src.shape, key
        assert np.array_equal(out, src), key
        if src.flags.f_contiguous and not src.flags.c_contiguous:
            assert out.flags.f_contiguous and not out.flags.c_contiguous, key
        else:
            assert out.flags.c_contiguous, key

    async def go():
        async with DistributedMemoryPool(mesh3.config_path) as pool:
            helper = DistributedMemoryHelper(pool)
            manager = DistributedMemoryManager(mesh3.config_path)
            blocks = {}
            for key, src in arrays.items():
                blocks[key] = await helper.store_numpy_array(src, preferred_node="node1")
                await manager.store(f"dt-{key}", src)
            for key, src in arrays.items():
                check(key, src, await helper.retrieve_numpy_array(blocks[key]))
                check(key, src, await manager.retrieve(f"dt-{key}"))
                await pool.deallocate(blocks[key])
                await manager.delete(f"dt-{key}")
            await manager.shutdown()

    run(go())
    assert not {k for k in key_names(mesh3) if k.startswith("dt-")}


def test_empty_array_and_empty_bytes(mesh3):
    async def go():
        async with DistributedMemoryPool(mesh3.config_path) as pool:
            helper = DistributedMemoryHelper(pool)
            empty = np.zeros((0, 5), dtype=np.float32)
            key = await helper.store_numpy_array(empty)
            out = await helper.retrieve_numpy_array(key)
            assert out.shape == (0, 5) and out.dtype == np.float32
            await pool.client.delete(key)
            await helper.cache_large_data("e-bytes", b"")
            assert await helper.get_cached_data("e-bytes") == b""
            await helper.clear_cache()

    run(go())


# --- seed 004: the key/value manager ----------------------------------------------------------


def test_seed_004_store_and_retrieve(mesh3, api):
    async def test_store_and_retrieve():
        """Test basic store and retrieve operations."""
        manager = api.DistributedMemoryManager(api.load_cluster_config(mesh3.config_path))
        await manager.initialize()

        # Store data
        test_data = {"message": "hello", "numbers": [1, 2, 3]}
        info = await manager.store("test_key", test_data)
        assert info.key == "test_key", "Store operation should succeed"

        # Retrieve data
        retrieved = await manager.retrieve("test_key")
        assert retrieved == test_data, "Retrieved data should match stored data"

        await manager.delete("test_key")
        await manager.shutdown()

    run(test_store_and_retrieve())


def test_seed_004_store_large_dataset(mesh3, api):
    async def test_store_large_dataset():
        """Test storing large datasets."""
        manager = api.DistributedMemoryManager(mesh3.config_path)
        await manager.initialize()

        # Create large dataset (100MB)
        large_data = b"x" * (100 * 1024 * 1024)

        info = await manager.store("large_data", large_data)
        assert info.length == len(large_data), "Should be able to store large datasets"

        retrieved = await manager.retrieve("large_data")
        assert len(retrieved) == len(large_data), "Large data should be retrieved intact"
        assert retrieved == large_data

        await manager.delete("large_data")
        await manager.shutdown()

    run(test_store_large_dataset())


def test_seed_004_nonexistent_key(mesh3, api):
    async def test_nonexistent_key():
        """Test retrieving non-existent keys: KeyNotFound (the seed returned None)."""
        manager = api.DistributedMemoryManager(mesh3.config_path)
        await manager.initialize()

        with pytest.raises(KeyNotFound, match="Key not found: 'nonexistent'"):
            await manager.retrieve("nonexistent")
        with pytest.raises(KeyNotFound):
            await manager.delete("nonexistent")
        await manager.shutdown()

    run(test_nonexistent_key())


def test_seed_004_demo(mesh3, api):
    """Seed 004's examples/distributed_memory_demo.py, with asserts for its prints."""

    async def demo_distributed_memory():
        from distributed_grid.config.models import ClusterConfig

        cluster_config = ClusterConfig.from_yaml(mesh3.config_path)
        manager = api.DistributedMemoryManager(cluster_config)
        await manager.initialize()

        text_data = "This is a test message stored in distributed memory!"
        await manager.store("demo_text", text_data)
        assert await manager.retrieve("demo_text") == text_data

        binary_data = b"x" * (10 * 1024 * 1024)  # 10MB
        await manager.store("demo_binary", binary_data)
        retrieved_binary = await manager.retrieve("demo_binary")
        assert len(retrieved_binary) == len(binary_data)

        complex_data = {
            "numbers": [1, 2, 3, 4, 5],
            "nested": {"a": "hello", "b": [10, 20, 30]},
            "metadata": {"version": "1.0", "created_at": "2026-01-23"},
        }
        await manager.store("demo_complex", complex_data)
        assert await manager.retrieve("demo_complex") == complex_data

        stats = await manager.get_stats()
        mine = {o["key"]: o for o in stats["objects"] if o["key"].startswith("demo_")}
        assert set(mine) == {"demo_text", "demo_binary", "demo_complex"}
        assert mine["demo_binary"]["size_bytes"] == 10 * MiB
        assert mine["demo_binary"]["size_mb"] == 10.0
        assert mine["demo_binary"]["content_type"] == "bytes"
        assert mine["demo_text"]["content_type"] == "pickle"
        assert mine["demo_binary"]["node_hint"] in {"node1", "node2", "node3"}
        assert stats["total_objects"] == len(stats["objects"]) >= 3
        assert stats["total_bytes"] == sum(o["size_bytes"] for o in stats["objects"])
        assert stats["total_mb"] == stats["total_bytes"] / MiB
        assert "T" in mine["demo_text"]["created_at"]  # ISO 8601

        for key in mine:
            await manager.delete(key)
        await manager.shutdown()

    run(demo_distributed_memory())


def test_manager_replaces_lists_places_and_auto_initializes(mesh3):
    async def go():
        manager = DistributedMemoryManager(mesh3.config_path)
        # no initialize(): the first call does it, as in the seed
        first = await manager.store("m-key", [1, 2, 3], preferred_node="node3")
        assert first.node == "node3"
        second = await manager.store("m-key", np.arange(5), preferred_node="node1")  # replaces
        assert second.node == "node1" and second.content_type == "ndarray"
        assert np.array_equal(await manager.retrieve("m-key"), np.arange(5))
        listed = await manager.list_objects()
        assert listed["m-key"] == second
        assert list(listed) == sorted(listed)
        with MeshClient(mesh3.config_path) as other:  # another client sees it by key
            assert np.array_equal(other.get_array("m-key"), np.arange(5))
        await manager.delete("m-key")
        assert "m-key" not in await manager.list_objects()
        with pytest.raises(KeyNotFound):
            await manager.retrieve("m-key")
        await manager.shutdown()

    before = block_ids(mesh3)
    run(go())
    assert block_ids(mesh3) == before


def test_manager_concurrent_first_use_makes_one_client(mesh3):
    async def go():
        async with DistributedMemoryManager(mesh3.config_path) as manager:
            infos = await asyncio.gather(*(manager.store(f"cc-{i}", i) for i in range(4)))
            assert [i.key for i in infos] == [f"cc-{i}" for i in range(4)]
            assert await asyncio.gather(*(manager.retrieve(f"cc-{i}") for i in range(4))) == [0, 1, 2, 3]
            for i in range(4):
                await manager.delete(f"cc-{i}")

    run(go())


# --- client memory for large arrays -----------------------------------------------------------


def _extra_traced(action) -> int:
    """Peak traced memory during ``action()`` minus the traced memory before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_large_array_round_trip_costs_at_most_one_copy(mesh3):
    src = np.random.default_rng(3).random(200 * MiB // 8)  # 200 MiB of float64
    src = src.reshape(-1, 1024)
    out = {}

    async def round_trip():
        async with DistributedMemoryPool(mesh3.config_path) as pool:
            helper = DistributedMemoryHelper(pool)

            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                out["key"] = await helper.store_numpy_array(src, preferred_node="node2")
                out["array"] = await helper.retrieve_numpy_array(out["key"])
                out["extra"] = tracemalloc.get_traced_memory()[1] - before
            finally:
                tracemalloc.stop()
            await pool.deallocate(out["key"])

    run(round_trip())
    assert np.array_equal(out["array"], src)
    ratio = out["extra"] / src.nbytes
    print(f"\nput_array+get_array of {src.nbytes / MiB:.0f} MiB: extra peak "
          f"{out['extra'] / MiB:.1f} MiB = {ratio:.3f}x the array")
    assert ratio < 1.3
    del out["array"]

    # the same through the blocking client
    with MeshClient(mesh3.config_path) as client:
        def sync_round_trip():
            client.put_array("mem-array", src, "node3")
            out["array"] = client.get_array("mem-array")

        extra = _extra_traced(sync_round_trip)
        client.delete("mem-array")
    assert np.array_equal(out["array"], src)
    print(f"sync client: extra peak {extra / MiB:.1f} MiB = {extra / src.nbytes:.3f}x")
    assert extra / src.nbytes < 1.3


@pytest.mark.slow
def test_large_pickled_object_round_trip_costs_at_most_one_copy(mesh3):
    big = np.random.default_rng(4).random(200 * MiB // 8).reshape(1024, -1)
    obj = {"weights": big, "name": "model", "layers": [1, 2, 3]}
    out = {}

    async def round_trip():
        async with DistributedMemoryManager(mesh3.config_path) as manager:
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                info = await manager.store("mem-object", obj, preferred_node="node1")
                out["object"] = await manager.retrieve("mem-object")
                out["extra"] = tracemalloc.get_traced_memory()[1] - before
            finally:
                tracemalloc.stop()
            assert info.content_type == "pickle"
            assert sum(info.meta["buffers"]) >= big.nbytes  # the array went out of band
            await manager.delete("mem-object")

    run(round_trip())
    back = out["object"]
    assert back["name"] == "model" and back["layers"] == [1, 2, 3]
    assert np.array_equal(back["weights"], big)
    ratio = out["extra"] / big.nbytes
    print(f"\nput_object+get_object of a dict with {big.nbytes / MiB:.0f} MiB: extra peak "
          f"{out['extra'] / MiB:.1f} MiB = {ratio:.3f}x the array")
    assert ratio < 1.3
