"""``mesh.proxystore.MeshConnector`` under a real ProxyStore ``Store``, against real agents; a
proxy pickled here is resolved in another process, as Parsl and Globus Compute workers do."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import uuid

import pytest

from mesh.client import MeshClient
from mesh.errors import KeyNotFound
from support.mesh import ROOT

pytest.importorskip("proxystore")
np = pytest.importorskip("numpy")

from proxystore.connectors.protocols import Connector, DeferrableConnector  # noqa: E402
from proxystore.store import Store  # noqa: E402

from mesh.proxystore import MeshConnector, MeshKey  # noqa: E402

SUBPROCESS_TIMEOUT_S = 60


@pytest.fixture
def connector(shared_mesh, c):
    conn = MeshConnector(shared_mesh.config_path, prefix="ps/")
    yield conn
    conn.close()


@pytest.fixture
def store(connector):
    # registered, as a proxy resolved in this process would register it anyway
    s = Store(f"mesh-{uuid.uuid4().hex[:8]}", connector, register=True)
    yield s
    s.close()


def test_it_is_a_proxystore_connector(connector):
    assert isinstance(connector, Connector) and isinstance(connector, DeferrableConnector)


def test_put_get_exists_evict(connector, c):
    key = connector.put(b"serialized bytes")
    assert isinstance(key, MeshKey) and key.mesh_key.startswith("ps/")
    assert c.get_bytes(key.mesh_key) == b"serialized bytes"
    assert connector.get(key) == b"serialized bytes" and connector.exists(key)
    connector.evict(key)
    assert not connector.exists(key) and connector.get(key) is None
    connector.evict(key)  # evicting what is gone is no error
    later = connector.new_key()
    assert connector.get(later) is None
    connector.set(later, memoryview(b"set later"))
    assert connector.get(later) == b"set later"


def test_batches_keep_order_and_give_none_for_missing(connector):
    keys = connector.put_batch([b"one", bytearray(b"two"), b""])
    assert len(set(keys)) == 3
    connector.evict(keys[1])
    assert connector.get_batch(keys) == [b"one", None, b""]


def test_store_put_get_exists_evict_and_batches(store):
    obj = {"weights": np.arange(10.0), "name": "layer1"}
    key = store.put(obj)
    got = store.get(key)
    assert got["name"] == "layer1" and np.array_equal(got["weights"], obj["weights"])
    assert store.exists(key)
    store.evict(key)
    assert not store.exists(key) and store.get(key) is None
    keys = store.put_batch([1, "two", [3]])
    assert [store.get(k) for k in keys] == [1, "two", [3]]
    proxy = store.proxy(np.ones((4, 4)))
    assert float(proxy.sum()) == 16.0


def test_config_pickling_and_from_config_reach_the_same_mesh(shared_mesh, connector, store):
    cfg = connector.config()
    assert cfg["config"] == str(shared_mesh.config_path.resolve())
    assert cfg["prefix"] == "ps/"
    key = connector.put(b"shared")
    again = MeshConnector.from_config(cfg)
    copied = pickle.loads(pickle.dumps(connector))
    try:
        assert again.get(key) == b"shared" and copied.get(key) == b"shared"
    finally:
        again.close()
        copied.close()
    other = Store.from_config(store.config().model_copy(update={"name": "mesh-copy"}))
    try:
        k = store.put([1, 2, 3])
        assert other.get(k) == [1, 2, 3]
    finally:
        other.close()


def test_paths_travel_absolute_and_the_client_is_made_on_first_use(shared_mesh, monkeypatch,
                                                                   tmp_path):
    monkeypatch.chdir(tmp_path)
    conn = MeshConnector(shared_mesh.config_path, key="keys/me.key_secret")  # not read yet
    assert conn.config()["key"] == str(tmp_path / "keys" / "me.key_secret")
    assert conn._client is None and pickle.loads(pickle.dumps(conn)).config() == conn.config()
    conn.close()  # nothing to close


def test_grid_config_is_resolved_when_the_connector_is_made(shared_mesh, monkeypatch, c):
    monkeypatch.setenv("GRID_CONFIG", str(shared_mesh.config_path))
    conn = MeshConnector()
    try:
        assert conn.config()["config"] == str(shared_mesh.config_path.resolve())
        assert conn.get(conn.put(b"x")) == b"x"
    finally:
        conn.close()


def test_close_with_clear_deletes_only_its_prefix(shared_mesh, c):
    conn = MeshConnector(shared_mesh.config_path, prefix="clear-me/", clear=True)
    conn.put_batch([b"a", b"b"])
    c.put_bytes("keep", b"k")
    conn.close()
    conn.close()  # idempotent
    assert [i.key for i in c.keys()] == ["keep"]


RESOLVE = textwrap.dedent("""\
    import pickle, sys
    with open(sys.argv[1], "rb") as f:
        proxies = pickle.load(f)
    print(proxies["text"].upper(), int(proxies["array"].sum()), proxies["array"].__class__.__name__)
""")


def test_a_proxy_resolves_in_another_process(shared_mesh, store, tmp_path, c):
    """The subprocess has no $GRID_CONFIG: everything it needs travels in the proxy."""
    proxies = {"text": store.proxy("hello from the mesh"),
               "array": store.proxy(np.arange(1000, dtype=np.int64))}
    (tmp_path / "proxies.pkl").write_bytes(pickle.dumps(proxies))
    (tmp_path / "resolve.py").write_text(RESOLVE)
    env = {k: v for k, v in os.environ.items() if k not in ("GRID_CONFIG", "GRID_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, str(tmp_path / "resolve.py"),
                           str(tmp_path / "proxies.pkl")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "HELLO FROM THE MESH 499500 ndarray"


def test_evict_on_resolve_removes_the_mesh_key(store, c):
    proxy = store.proxy(b"once", evict=True, populate_target=False)  # resolves
    assert len([i for i in c.keys() if i.key.startswith("ps/")]) == 1
    assert proxy == b"once"
    assert [i for i in c.keys() if i.key.startswith("ps/")] == []


def test_ttl_and_evictable_are_passed_only_when_set(shared_mesh, c, monkeypatch):
    conn = MeshConnector(shared_mesh.config_path, prefix="opts/")
    seen = []
    real = MeshClient.put_bytes

    def recording(self, *args, **kwargs):
        seen.append(sorted(kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MeshClient, "put_bytes", recording)
    try:
        conn.put(b"x")
        conn.set(conn.new_key(), b"y")
        assert seen == [[], ["replace"]]
    finally:
        conn.close()


def test_ttl_and_evictable_reach_the_mesh(shared_mesh, c):
    conn = MeshConnector(shared_mesh.config_path, prefix="ttl/", ttl=30.0, evictable=True)
    try:
        assert conn.config()["ttl"] == 30.0 and conn.config()["evictable"] is True
        keys = conn.put_batch([b"a", b"b"]) + [conn.put(b"c")]
        assert conn.get_batch(keys) == [b"a", b"b", b"c"]
        for k in keys:  # the batch (put_many) and the single put both carried them
            info = c.object_info(k.mesh_key)
            assert info.evictable and 20 < info.ttl_remaining <= 30
    finally:
        conn.close()
    with pytest.raises(KeyNotFound):
        c.get_bytes("ttl/nothing")
