"""The mesh:// filesystem (mesh/fs.py) against real agents: fsspec's calls, then pandas, pyarrow
and Dask reading and writing through it."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys

import fsspec
import pytest

from mesh.errors import ObjectChanged
from mesh.fs import MeshFileSystem
from support.mesh import ROOT, clean_client

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
MiB = 1024 * 1024


@pytest.fixture
def c(shared_mesh, monkeypatch):
    """A client that cleans up, with ``$GRID_CONFIG`` naming the mesh (so ``mesh://`` URLs with
    no options reach it); every filesystem fsspec made meanwhile is closed and forgotten."""
    monkeypatch.setenv("GRID_CONFIG", str(shared_mesh.config_path))
    with clean_client(shared_mesh) as client:
        try:
            yield client
        finally:
            for fs in list(MeshFileSystem._cache.values()):
                fs.close()
            MeshFileSystem.clear_instance_cache()


@pytest.fixture
def fs(c, shared_mesh):
    return fsspec.filesystem("mesh", config=str(shared_mesh.config_path))


def bytes_sent(client) -> int:
    """Payload bytes every agent has sent in replies so far (agents/metrics.py)."""
    return sum(n["ops"]["bytes_out"] for n in client.stats()["nodes"])


def test_the_entry_point_finds_the_filesystem_and_paths_are_keys(c, fs):
    assert isinstance(fsspec.filesystem("mesh"), MeshFileSystem)  # through $GRID_CONFIG
    fs.pipe("mesh://a/b/c.bin", b"abc")
    assert c.get_bytes("a/b/c.bin") == b"abc"
    assert fs.cat("mesh:///a/b/c.bin") == b"abc" == fs.cat("a/b/c.bin")
    assert fs.unstrip_protocol("a/b/c.bin") == "mesh://a/b/c.bin"


def test_ls_info_find_and_rm_of_pseudo_directories(c, fs):
    for key in ("top.txt", "d/one.txt", "d/two.txt", "d/sub/three.txt", "d/sub/deep/four.txt"):
        c.put_bytes(key, key.encode())
    assert fs.ls("", detail=False) == ["d", "top.txt"]
    assert fs.ls("d", detail=False) == ["d/one.txt", "d/sub", "d/two.txt"]
    entries = {e["name"]: e for e in fs.ls("mesh://d/", detail=True)}
    assert entries["d/sub"] == {"name": "d/sub", "size": 0, "type": "directory"}
    one = entries["d/one.txt"]
    assert (one["type"], one["size"], one["content_type"]) == ("file", 9, "bytes")
    assert fs.ls("d/one.txt", detail=False) == ["d/one.txt"]
    assert fs.info("d/sub")["type"] == "directory" and fs.isdir("d/sub") and not fs.isfile("d")
    assert fs.info("d/two.txt")["size"] == 9 and fs.isfile("d/two.txt")
    assert fs.info("")["type"] == "directory"
    assert fs.find("d") == ["d/one.txt", "d/sub/deep/four.txt", "d/sub/three.txt", "d/two.txt"]
    assert fs.find("d", maxdepth=1) == ["d/one.txt", "d/two.txt"]
    assert fs.find("d", withdirs=True, maxdepth=2) == [
        "d", "d/one.txt", "d/sub", "d/sub/deep", "d/sub/three.txt", "d/two.txt"]
    assert fs.glob("d/*.txt") == ["d/one.txt", "d/two.txt"]
    assert fs.du("d") == 9 + 9 + 15 + 19
    fs.mkdir("d/new")  # implied by keys: nothing to make, nothing made
    assert not fs.exists("d/new")
    with pytest.raises(IsADirectoryError):
        fs.rm("d/sub")
    fs.rm("d/sub", recursive=True)
    assert fs.find("d") == ["d/one.txt", "d/two.txt"]
    fs.rm(["d/one.txt", "top.txt"])
    assert [i.key for i in c.keys()] == ["d/two.txt"]
    fs.rm("d", recursive=True)
    assert fs.ls("", detail=False) == [] and list(c.keys()) == []


def test_put_get_pipe_cat_and_cp(c, fs, tmp_path):
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(3 * MiB + 5))
    (src / "nested" / "b.bin").write_bytes(b"bee")
    fs.put(str(src) + "/", "up/", recursive=True)
    assert fs.find("up") == ["up/a.bin", "up/nested/b.bin"]
    assert c.get_bytes("up/a.bin") == (src / "a.bin").read_bytes()
    assert c.object_info("up/a.bin").content_type == "file"  # streamed (put_file)
    fs.get("up/", str(tmp_path / "out") + "/", recursive=True)
    assert (tmp_path / "out" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (tmp_path / "out" / "nested" / "b.bin").read_bytes() == b"bee"
    fs.pipe({"p/1": b"one", "p/2": b"two"})
    assert fs.cat(["p/1", "p/2"]) == {"p/1": b"one", "p/2": b"two"}
    assert fs.cat("p/*") == {"p/1": b"one", "p/2": b"two"}
    fs.pipe("p/1", b"ONE")  # overwrites, as files do
    assert fs.cat_file("p/1") == b"ONE"
    with pytest.raises(FileExistsError):
        fs.pipe_file("p/1", b"again", mode="create")
    fs.cp_file("p/1", "p/copy")
    fs.mv("p/2", "p/moved")
    assert fs.cat("p/copy") == b"ONE" and fs.cat("p/moved") == b"two" and not fs.exists("p/2")
    assert fs.created("p/copy").timestamp() == pytest.approx(c.object_info("p/copy").created)
    assert fs.modified("p/copy") == fs.created("p/copy")


def test_missing_keys_are_file_not_found(c, fs, tmp_path):
    c.put_bytes("there/x", b"x")
    for call in (lambda: fs.cat("nowhere"), lambda: fs.cat_file("nowhere", 0, 1),
                 lambda: fs.info("there/y"), lambda: fs.open("nowhere", "rb"),
                 lambda: fs.rm("nowhere"), lambda: fs.ls("nowhere"),
                 lambda: fs.get_file("nowhere", str(tmp_path / "n")),
                 lambda: fs.created("nowhere"), lambda: pd.read_parquet("mesh://nowhere.parquet")):
        with pytest.raises(FileNotFoundError):
            call()
    assert not fs.exists("nowhere") and fs.exists("there") and fs.exists("there/x")
    assert not (tmp_path / "n").exists()
    with pytest.raises(IsADirectoryError):
        fs.cat_file("")


def test_a_range_reads_only_the_range(c, fs):
    data = os.urandom(32 * MiB)
    c.put_bytes("big.bin", data, node="node2")
    before = bytes_sent(c)
    assert fs.cat_file("big.bin", 10 * MiB, 11 * MiB) == data[10 * MiB:11 * MiB]
    assert fs.cat_file("big.bin", -8) == data[-8:]
    assert fs.cat_file("big.bin", 5, -(32 * MiB - 9)) == data[5:9]
    assert fs.cat_file("big.bin", 40 * MiB) == b""
    with fs.open("big.bin", "rb", block_size=MiB, cache_type="bytes") as f:
        f.seek(-100, 2)
        assert f.read() == data[-100:]
        f.seek(3 * MiB)
        assert f.read(10) == data[3 * MiB:3 * MiB + 10]
        assert f.size == 32 * MiB
    sent = bytes_sent(c) - before
    assert MiB <= sent <= 4 * MiB, f"{sent} bytes sent for ranges of about 2 MiB"
    before = bytes_sent(c)
    assert fs.cat("big.bin") == data  # whole: one get_bytes
    assert 32 * MiB <= bytes_sent(c) - before < 33 * MiB


def test_striped_objects_are_read_whole_and_cut(c, fs):
    data = os.urandom(3 * MiB + 1)
    c.put_bytes("striped", data, stripe=3)
    assert fs.info("striped")["size"] == len(data)
    assert fs.cat_file("striped", MiB - 3, 2 * MiB + 3) == data[MiB - 3:2 * MiB + 3]
    with fs.open("striped", "rb") as f:
        f.seek(2 * MiB)
        assert f.read() == data[2 * MiB:]
    c.put_bytes("empty", b"")
    assert fs.cat("empty") == b"" and fs.open("empty").read() == b""


def test_a_key_replaced_while_open_is_never_mixed(c, fs):
    c.put_bytes("moving", b"a" * (2 * MiB))
    with fs.open("moving", "rb", block_size=1024, cache_type="bytes") as f:
        assert f.read(10) == b"a" * 10
        c.put_bytes("moving", b"b" * (2 * MiB), replace=True)
        f.seek(MiB)
        with pytest.raises(ObjectChanged):
            f.read(10)


def test_writes_store_on_close(c, shared_mesh, tmp_path):
    fs = MeshFileSystem(config=str(shared_mesh.config_path), spool_bytes=MiB,
                        skip_instance_cache=True)
    try:
        with fs.open("w/small", "wb") as f:
            f.write(b"hello ")
            f.write(b"mesh")
            assert not fs.exists("w/small")  # nothing stored before close
        assert c.get_bytes("w/small") == b"hello mesh"
        assert c.object_info("w/small").content_type == "bytes"
        big = os.urandom(3 * MiB + 17)  # past spool_bytes: through a temporary file
        with fs.open("w/big", "wb") as f:
            for i in range(0, len(big), 300_000):
                f.write(big[i:i + 300_000])
        assert c.get_bytes("w/big") == big
        with fs.open("w/small", "w") as f:  # text, and it replaces
            f.write("text")
        assert fs.open("w/small", "r").read() == "text"
        with pytest.raises(FileExistsError):
            with fs.open("w/small", "xb") as f:
                f.write(b"no")
        with pytest.raises(RuntimeError):
            with fs.open("w/failed", "wb") as f:
                f.write(b"half")
                raise RuntimeError("the writer failed")
        assert not fs.exists("w/failed")
        with pytest.raises(NotImplementedError):
            fs.open("w/small", "ab")
        with fs.transaction:
            with fs.open("w/later", "wb") as f:
                f.write(b"committed")
            assert not fs.exists("w/later")
        assert fs.cat("w/later") == b"committed"
    finally:
        fs.close()


def _cat_in_child(fs, key, queue):
    queue.put(fs.cat(key))


def test_a_filesystem_pickles_and_reconnects_in_other_processes(c, fs):
    fs.pipe("pickled", b"from the parent")
    again = pickle.loads(pickle.dumps(fs))
    assert again is fs  # fsspec's instance cache
    script = ("import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read()); "
              "sys.stdout.buffer.write(fs.cat('pickled')); fs.pipe('child', b'from the child')")
    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(fs),
                          capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"from the parent"
    assert fs.cat("child") == b"from the child"
    # a forked child inherits the instance and its client; it makes its own
    assert fs.cat("pickled") == b"from the parent"  # the parent's client exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_cat_in_child, args=(fs, "child", queue))
    child.start()
    try:
        assert queue.get(timeout=60) == b"from the child"
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    assert fs.cat("pickled") == b"from the parent"  # the parent's client still works


def test_pandas_parquet_through_mesh_urls(c):
    df = pd.DataFrame({"id": range(10_000), "name": [f"n{i}" for i in range(10_000)],
                       "score": [i / 7 for i in range(10_000)]})
    df.to_parquet("mesh://features.parquet")
    info = c.object_info("features.parquet")
    assert info.length > 0 and c.get_bytes("features.parquet")[:4] == b"PAR1"
    back = pd.read_parquet("mesh://features.parquet")
    pd.testing.assert_frame_equal(back, df)
    cols = pd.read_parquet("mesh://features.parquet", columns=["score"])
    pd.testing.assert_frame_equal(cols, df[["score"]])
    df.to_csv("mesh://tables/features.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv("mesh://tables/features.csv"), df)


def test_pyarrow_dataset_over_a_mesh_directory(c, fs):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    for part in range(3):
        table = pa.table({"part": [part] * 100, "value": list(range(part * 100, part * 100 + 100))})
        pq.write_table(table, f"mesh://events/part-{part}.parquet", filesystem=fs)
    assert fs.ls("events", detail=False) == [f"events/part-{i}.parquet" for i in range(3)]
    # pyarrow takes paths without the protocol once it has a filesystem: url_to_fs splits them
    mesh_fs, path = fsspec.core.url_to_fs("mesh://events/")
    assert isinstance(mesh_fs, MeshFileSystem) and path == "events"  # via $GRID_CONFIG
    dataset = ds.dataset(path, filesystem=mesh_fs, format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 300
    assert sorted(table.column("value").to_pylist()) == list(range(300))
    assert dataset.to_table(filter=ds.field("part") == 2).num_rows == 100
    assert pq.read_table("events", filesystem=fs).num_rows == 300


def test_dask_writes_and_reads_parquet_through_mesh(c):
    dd = pytest.importorskip("dask.dataframe")
    import dask

    df = pd.DataFrame({"x": range(1000), "y": [i % 7 for i in range(1000)]})
    ddf = dd.from_pandas(df, npartitions=4)
    ddf.to_parquet("mesh://dask/out")
    parts = [k.key for k in c.keys() if k.key.startswith("dask/out/")]
    assert len([p for p in parts if p.endswith(".parquet")]) == 4
    back = dd.read_parquet("mesh://dask/out")
    assert back.npartitions == 4
    pd.testing.assert_frame_equal(back.compute().reset_index(drop=True), df)
    with dask.config.set(scheduler="processes", num_workers=2):  # pickled filesystems
        total = dd.read_parquet("mesh://dask/out").x.sum().compute()
    assert total == df.x.sum()
