"""The mesh as a cache, against real agents: keys with a time to live (put_*(ttl=), expire),
evictable keys evicted by policy when an agent needs room, compression per put, and cloudpickle
as put_object's serializer (mesh/client/cacheopts.py, agents/eviction.py)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import pytest

from mesh.errors import CapacityError, InvalidRequest, KeyNotFound
from support.mesh import ROOT, clean_client, running_mesh

MiB = 1 << 20


@pytest.fixture(scope="module")
def client(shared_mesh):
    with clean_client(shared_mesh) as c:
        yield c


def _gone(client, key: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            client.object_info(key)
        except KeyNotFound:
            return True
        time.sleep(0.1)
    return False


# --- lifetimes ------------------------------------------------------------------------------------


def test_a_key_with_a_ttl_is_freed_by_its_agent_without_a_client(client):
    info = client.put_bytes("ttl/short", b"x" * 5000, ttl=1.0)
    assert info.expires is not None and 0 < info.ttl_remaining <= 1.0
    listed = {i.key: i for i in client.keys()}
    assert listed["ttl/short"].expires == pytest.approx(info.expires)
    block = info.block_id
    assert _gone(client, "ttl/short", within_s=5.0)
    # its block went with it: nobody freed it
    assert block not in {b.block_id for b in client.blocks()}


def test_ttl_takes_a_timedelta_and_every_put_kind(client):
    np = pytest.importorskip("numpy")
    a = client.put_array("ttl/arr", np.arange(10), ttl=datetime.timedelta(minutes=5))
    o = client.put_object("ttl/obj", {"a": 1}, ttl=300)
    assert 290 < a.ttl_remaining <= 300 and 290 < o.ttl_remaining <= 300
    assert client.get_object("ttl/obj") == {"a": 1}


def test_expire_sets_and_removes_a_time_to_live(client):
    client.put_bytes("ttl/later", b"y" * 100)
    assert client.object_info("ttl/later").expires is None
    assert 59 < client.expire("ttl/later", 60).ttl_remaining <= 60
    assert client.object_info("ttl/later").ttl_remaining > 59
    assert client.expire("ttl/later", None).expires is None
    client.expire("ttl/later", 0.5)
    assert _gone(client, "ttl/later", within_s=5.0)


def test_a_key_whose_ttl_was_removed_stays(client):
    client.put_bytes("ttl/kept", b"z" * 100, ttl=0.8)
    client.expire("ttl/kept", None)
    time.sleep(1.8)
    assert client.get_bytes("ttl/kept") == b"z" * 100


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), "10m", True])
def test_a_bad_ttl_is_refused_before_anything_is_stored(client, ttl):
    with pytest.raises(InvalidRequest, match="ttl"):
        client.put_bytes("ttl/bad", b"x", ttl=ttl)
    with pytest.raises(KeyNotFound):
        client.object_info("ttl/bad")


def test_lifetimes_need_a_block_of_their_own(client):
    with pytest.raises(InvalidRequest, match="empty object"):
        client.put_bytes("ttl/empty", b"", ttl=10)
    block = client.allocate(4096)
    with pytest.raises(InvalidRequest, match="block_id"):
        client.put_bytes("ttl/into", b"abc", block_id=block, ttl=10)
    client.put_bytes("ttl/into", b"abc", block_id=block)
    with pytest.raises(InvalidRequest, match="no block of its own"):
        client.expire("ttl/into", 10)
    with pytest.raises(KeyNotFound):
        client.expire("ttl/nobody", 10)


def test_put_many_takes_a_ttl_eviction_and_compression(client):
    infos = client.put_many({f"many/{i}": b"v" * 300 for i in range(20)}, ttl=600,
                            evictable=True)
    assert all(590 < i.ttl_remaining <= 600 and i.evictable for i in infos)
    listed = {i.key: i for i in client.keys() if i.key.startswith("many/")}
    assert len(listed) == 20 and all(i.evictable and i.expires for i in listed.values())
    packed = client.put_many({"many/z": b"abc" * 10_000}, compression="zstd")[0]
    assert packed.compression == "zstd" and client.get_bytes("many/z") == b"abc" * 10_000
    small = client.put_bytes("many/small", b"xyz" * 100, compression="lz4")
    assert small.length < 300  # small enough for get_many's batch, which reads blocks raw...
    got = client.get_many(["many/z", "many/small", "many/0"])
    assert got == [b"abc" * 10_000, b"xyz" * 100, b"v" * 300]  # ...but not compressed ones


# --- compression ----------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["lz4", "zstd"])
def test_compressed_bytes_come_back_as_they_were(client, algo):
    data = b"the memory mesh " * 200_000
    info = client.put_bytes(f"z/{algo}", data, compression=algo)
    assert info.compression == algo and info.raw_length == len(data)
    assert info.length < len(data) // 20  # stored compressed
    assert client.get_bytes(f"z/{algo}") == data
    listed = {i.key: i for i in client.keys()}[f"z/{algo}"]
    assert listed.raw_length == len(data) and listed.length == info.length
    # the block holds the frame, read raw at offsets as it is: never decompressed there
    raw = client.read(info.block_id, info.length, info.offset)
    assert bytes(raw) != data[: info.length]


def test_compressed_objects_arrays_and_files(client, tmp_path):
    np = pytest.importorskip("numpy")
    arr = np.zeros((300, 400), dtype=np.float32, order="F")
    arr[::7, ::3] = 1.5
    a = client.put_array("z/arr", arr, compression="zstd")
    back = client.get_array("z/arr")
    assert a.length < arr.nbytes and back.dtype == arr.dtype and back.flags.f_contiguous
    assert (back == arr).all()
    obj = {"rows": [list(range(100))] * 100, "blob": np.ones(50_000)}
    client.put_object("z/obj", obj, compression="lz4")
    got = client.get_object("z/obj")
    assert got["rows"] == obj["rows"] and (got["blob"] == obj["blob"]).all()
    src = tmp_path / "log.txt"
    src.write_bytes(b"2026-11-27 INFO all is well\n" * 300_000)  # several pieces
    f = client.put_file("z/file", src, compression="zstd")
    assert f.length < src.stat().st_size // 10 and f.raw_length == src.stat().st_size
    dest = tmp_path / "back.txt"
    client.get_file("z/file", dest)
    assert dest.read_bytes() == src.read_bytes()


def test_compression_is_refused_where_it_cannot_apply(client):
    with pytest.raises(InvalidRequest, match="compression must be one of"):
        client.put_bytes("z/bad", b"x", compression="gzip")
    block = client.allocate(4096)
    with pytest.raises(InvalidRequest, match="block_id"):
        client.put_bytes("z/into", b"abc", block_id=block, compression="lz4")


# --- cloudpickle ---------------------------------------------------------------------------------


def test_cloudpickle_stores_lambdas_closures_and_local_classes(client):
    base = 10

    class Point:
        def __init__(self, x):
            self.x = x

    with pytest.raises(InvalidRequest, match="serializer='cloudpickle'"):
        client.put_object("cp/f", lambda x: x + base)
    client.put_object("cp/f", lambda x: x + base, serializer="cloudpickle")
    client.put_object("cp/p", Point(3), serializer="cloudpickle", compression="zstd")
    assert client.get_object("cp/f")(5) == 15
    assert client.get_object("cp/p").x == 3
    assert client.object_info("cp/f").meta["serializer"] == "cloudpickle"
    with pytest.raises(InvalidRequest, match="serializer must be"):
        client.put_object("cp/x", 1, serializer="json")


def test_a_cloudpickled_function_runs_in_another_process(client, shared_mesh):
    offset = 7
    client.put_object("cp/remote", lambda x: x * 2 + offset, serializer="cloudpickle")
    code = ("from mesh.client import MeshClient\n"
            "with MeshClient() as c:\n"
            "    print(c.get_object('cp/remote')(5))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "GRID_CONFIG": str(shared_mesh.config_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "17"


# --- eviction -------------------------------------------------------------------------------------

# One agent with room for six 8 MiB values and their records (3.3 MB to spare), not seven.
SMALL_GB = 0.05


def _fill(client, prefix: str, n: int, **kw) -> None:
    value = os.urandom(8 * MiB)
    for i in range(n):
        client.put_bytes(f"{prefix}{i}", value, evictable=True, **kw)


def _held(client, prefix: str) -> set[str]:
    return {i.key for i in client.keys() if i.key.startswith(prefix)}


def test_lru_evicts_the_least_recently_used_evictable_key_only(tmp_path):
    with running_mesh(tmp_path, n=1, memory_gb=SMALL_GB) as mesh, mesh.client() as client:
        client.put_bytes("pinned", os.urandom(8 * MiB))  # never evicted
        block = client.allocate(2 * MiB)  # a raw block: never evicted
        _fill(client, "e", 5)
        assert _held(client, "e") == {f"e{i}" for i in range(5)}
        client.get_bytes("e0")  # now the most recently used
        client.put_bytes("new", os.urandom(8 * MiB), evictable=True)
        held = _held(client, "e")
        assert "e0" in held and "e1" not in held, held
        with pytest.raises(KeyNotFound, match=r"was evicted from node node1 .*\(eviction policy lru\)"):
            client.get_bytes("e1")
        assert client.get_bytes("pinned") and client.stat(block).size == 2 * MiB
        stats = client._run(lambda core: core.call(client.nodes()[0].address, "stats", {}))
        assert stats["evictions"]["count"] >= 1 and stats["evictions"]["policy"] == "lru"
        # a key stored again is no longer "evicted"
        client.put_bytes("e1", b"back", evictable=True)
        assert client.get_bytes("e1") == b"back"


def test_nothing_evictable_left_is_a_capacity_error(tmp_path):
    with running_mesh(tmp_path, n=1, memory_gb=SMALL_GB) as mesh, mesh.client() as client:
        value = os.urandom(8 * MiB)
        for i in range(5):
            client.put_bytes(f"p{i}", value)  # not evictable
        with pytest.raises(CapacityError):
            for i in range(5, 8):
                client.put_bytes(f"p{i}", value)
        assert {f"p{i}" for i in range(5)} <= {i.key for i in client.keys()}


def test_lfu_evicts_the_least_read_key(tmp_path):
    with running_mesh(tmp_path, n=1, memory_gb=SMALL_GB, eviction_policy="lfu") as mesh, \
            mesh.client() as client:
        _fill(client, "f", 6)
        for i in (0, 1, 3, 4, 5):  # f2 is read least, though not stored first
            for _ in range(2):
                client.object_info(f"f{i}")
        client.put_bytes("new", os.urandom(8 * MiB), evictable=True)
        assert "f2" not in _held(client, "f") and "f0" in _held(client, "f")


def test_ttl_first_evicts_the_key_that_expires_soonest(tmp_path):
    with running_mesh(tmp_path, n=1, memory_gb=SMALL_GB, eviction_policy="ttl-first") as mesh, \
            mesh.client() as client:
        value = os.urandom(8 * MiB)
        client.put_bytes("t0", value, evictable=True)  # oldest, no ttl
        client.put_bytes("t1", value, evictable=True, ttl=3600)
        client.put_bytes("t2", value, evictable=True, ttl=600)  # expires first
        client.put_bytes("t3", value, evictable=True)
        client.put_bytes("t4", value, evictable=True, ttl=7200)
        client.put_bytes("t5", value, evictable=True)
        client.put_bytes("new", value, evictable=True)
        assert _held(client, "t") == {"t0", "t1", "t3", "t4", "t5"}


def test_a_full_node_that_can_evict_is_chosen_over_refusing(tmp_path):
    # two full agents: the client places a new value where evicting makes room
    with running_mesh(tmp_path, n=2, memory_gb=SMALL_GB) as mesh, mesh.client() as client:
        _fill(client, "a", 10, node="node1")
        value = os.urandom(8 * MiB)
        for i in range(6):
            client.put_bytes(f"b{i}", value, node="node2")  # node2 full, nothing evictable
        info = client.put_bytes("c", value, evictable=True)
        assert info.node == "node1"


def test_expire_reaches_a_replicated_keys_backups(tmp_path):
    from mesh.errors import MeshError

    fast = dict(heartbeat_interval_s=0.25, suspect_after_s=0.75, dead_after_s=1.5,
                replica_spread="node")
    with running_mesh(tmp_path, n=3, **fast) as mesh, mesh.client() as client:
        info = client.put_bytes("rep/key", b"r" * 5000, replicas=2, ttl=3600)
        primary, backup = info.nodes
        client.expire("rep/key", 120)
        # a second key with the same primary, whose time to live is taken away
        assert client.put_bytes("rep/kept", b"k" * 5000, primary, replicas=2, ttl=3600).node \
            == primary
        client.expire("rep/kept", None)
        mesh.kill(primary)
        # the backup takes over with the time the primary was last given, not the hour the key
        # was stored with
        deadline = time.monotonic() + 20
        while True:
            try:
                now = client.object_info("rep/key")
                if now.node == backup:
                    break
            except MeshError:
                pass
            assert time.monotonic() < deadline, "the backup never took over"
            time.sleep(0.2)
        assert 90 < now.ttl_remaining <= 120
        assert client.get_bytes("rep/key") == b"r" * 5000
        kept = client.object_info("rep/kept")  # (its backup has taken over too)
        assert kept.node != primary and kept.expires is None
