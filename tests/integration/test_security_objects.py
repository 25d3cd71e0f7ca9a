"""Pickles and who wrote them (``mesh/client/objects.py`` get_object(allow_pickle), the agent's
``writer`` stamp in ``agents/keyops.py``): unpickling runs code its writer chose, so on a keyed
mesh only writer keys may store records (and their agent names them), ``allow_pickle=False``
refuses every pickle, and nothing but ``get_object`` ever unpickles, whoever stored the bytes.
"""

from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from mesh import protocol as P
from mesh.client import MeshClient
from mesh.errors import Forbidden, InvalidRequest, UnsafeObject
from support.mesh import running_mesh


class _Planted:
    """Unpickled, it creates ``path`` (as a stranger's pickle would run anything)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _record(block: str, data: bytes, content_type: str, meta: dict, **extra) -> dict:
    return {"block": block, "offset": 0, "length": len(data), "content_type": content_type,
            "checksum": f"crc32:{zlib.crc32(data):08x}", "owns_block": True, "meta": meta,
            **extra}


def _raw_put(client: MeshClient, address: str, key: str, data: bytes, content_type: str,
             meta: dict, **extra) -> dict:
    """A key record sent as it is (KPUT through the client core), over a block written with
    ``data``: what any client could send, without the client library's checks."""
    block = client.allocate(len(data), node=client.ping(address)["node"])
    client.write(block, data)
    return client._run(client._core.call(address, P.KPUT, {
        "key": key, "record": _record(block, data, content_type, meta, **extra),
        "replace": False}))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A keyed one-node mesh with a writer key "wkey" and a reader key "rkey"."""
    with running_mesh(tmp_path_factory.mktemp("objects"), n=1, keyed=True,
                      client_keys={"wkey": "writer", "rkey": "reader"}) as mesh:
        yield mesh, mesh.keys


def test_a_writers_pickle_is_read_by_a_reader_unless_pickles_are_refused(keyed, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    mesh, keys = keyed
    obj = {"numbers": list(range(10)), "blob": np.arange(1000, dtype=np.int64)}
    with MeshClient(mesh.config_path, key=keys["wkey"], timeout_s=10.0) as w, \
            MeshClient(mesh.config_path, key=keys["rkey"], timeout_s=10.0) as r:
        info = w.put_object("pickled", obj)
        assert info.content_type == "pickle" and info.writer == "wkey"
        try:
            got = r.get_object("pickled")
            assert got["numbers"] == obj["numbers"]
            assert np.array_equal(got["blob"], obj["blob"])
            with pytest.raises(UnsafeObject):
                r.get_object("pickled", allow_pickle=False)
            with pytest.raises(UnsafeObject):
                w.get_object("pickled", allow_pickle=False)
            assert r.object_info("pickled").writer == "wkey"
        finally:
            w.delete("pickled")


def test_a_reader_cannot_store_and_a_writer_cannot_forge_the_writer(keyed, tmp_path,
                                                                    monkeypatch):
    """A reader's KPUT (raw, and through put_object) is forbidden; a writer's KPUT naming
    "admin" as its writer is stored under the writer's own key name."""
    monkeypatch.delenv("GRID_KEY", raising=False)
    mesh, keys = keyed
    address = mesh.node("node1").address
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Planted(marker))
    meta = {"pickle_bytes": len(payload), "buffers": []}
    with mesh.client() as admin, \
            MeshClient(mesh.config_path, key=keys["wkey"], timeout_s=10.0) as w, \
            MeshClient(mesh.config_path, key=keys["rkey"], timeout_s=10.0) as r:
        block = admin.allocate(len(payload), node="node1")
        admin.write(block, payload)
        with pytest.raises(Forbidden):
            r._run(r._core.call(address, P.KPUT, {
                "key": "by-reader", "record": _record(block, payload, "pickle", meta,
                                                      writer="admin"), "replace": False}))
        with pytest.raises(Forbidden):
            r.put_object("by-reader", {"a": 1})
        assert "by-reader" not in [k.key for k in admin.keys()]
        admin.free(block)

        rec = _raw_put(w, address, "forged", payload, "pickle", meta, writer="admin")
        try:
            assert rec["writer"] == "wkey"
            assert admin.object_info("forged").writer == "wkey"
            assert r.object_info("forged").writer == "wkey"
            with pytest.raises(UnsafeObject):
                r.get_object("forged", allow_pickle=False)
            assert r.get_bytes("forged") == payload
        finally:
            w.delete("forged")
    assert not marker.exists()


def test_a_strangers_pickle_is_never_unpickled_but_by_get_object(tmp_path, monkeypatch):
    """Without keys anyone who reaches an agent is a writer: a stranger stores a pickle that
    would create a file when unpickled (a raw KPUT, claiming "admin" wrote it), and records
    pointing at it that claim other types. get_bytes, get_file and get_array read it without
    unpickling, get_object(allow_pickle=False) refuses it, and the claimed writer is dropped.
    (Then the test unpickles it itself: the file appears, so the payload was live.)"""
    monkeypatch.delenv("GRID_KEY", raising=False)
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Planted(marker))
    meta = {"pickle_bytes": len(payload), "buffers": []}
    (tmp_path / "mesh").mkdir()
    with running_mesh(tmp_path / "mesh", n=1) as mesh:
        address = mesh.node("node1").address
        with MeshClient(address=address, timeout_s=10.0) as stranger:
            rec = _raw_put(stranger, address, "planted", payload, "pickle", meta,
                           writer="admin")
            assert rec["writer"] is None
            _raw_put(stranger, address, "as-array", payload, "ndarray",
                     {"dtype": "|O", "shape": [1], "order": "C"})
            _raw_put(stranger, address, "as-record-array", payload, "ndarray",
                     {"dtype": [{"t": ["a", "|O"]}], "shape": [1], "order": "C"})
        with MeshClient(address=address, timeout_s=10.0) as c:
            assert c.object_info("planted").writer is None
            assert c.get_bytes("planted") == payload
            out = tmp_path / "out.bin"
            c.get_file("planted", out)
            assert out.read_bytes() == payload
            with pytest.raises(InvalidRequest):
                c.get_array("planted")
            for key in ("as-array", "as-record-array"):
                with pytest.raises(UnsafeObject):
                    c.get_array(key)
            with pytest.raises(UnsafeObject):
                c.get_object("planted", allow_pickle=False)
            assert not marker.exists()
            for key in ("planted", "as-array", "as-record-array"):
                c.delete(key)
    pickle.loads(payload).close()  # the control: unpickling it does create the file
    assert marker.exists()
    os.unlink(marker)
