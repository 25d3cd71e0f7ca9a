"""``mesh.cache``: the two-tier ``TieredCache`` and ``memoize``, against real agents.

What is local is proved twice: by the counters, and by deleting the mesh key behind the cache's
back (a local entry is still served; an entry the LRU dropped then misses). ``memoize`` is
proved across processes by a function whose body appends to a file.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
import time

import pytest

from mesh.cache import TieredCache, memo_key, memoize, put_options
from mesh.errors import KeyNotFound
from support.mesh import ROOT

np = pytest.importorskip("numpy")

SUBPROCESS_TIMEOUT_S = 60


def test_values_round_trip_with_their_types_from_both_tiers(c):
    cache = TieredCache(c, local_bytes=1 << 20, prefix="t/")
    fortran = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    values = {"b": b"raw bytes", "ba": bytearray(b"mutable"), "mv": memoryview(b"viewed"),
              "arr": np.linspace(0, 1, 1000, dtype=np.float32), "f": fortran,
              "obj": {"a": [1, 2, 3], "t": (None, 1.5)}, "masked": masked, "empty": b""}
    for k, v in values.items():
        cache[k] = v
    cold = TieredCache(c, local_bytes=0, prefix="t/")  # the same keys, no local tier
    for tier in (cache, cold):
        for k in ("b", "ba", "mv", "empty"):
            assert type(tier[k]) is bytes and tier[k] == bytes(values[k])
        for k in ("arr", "f"):
            got = tier[k]
            assert type(got) is np.ndarray and got.dtype == values[k].dtype
            assert got.shape == values[k].shape and np.array_equal(got, values[k])
        assert tier["f"].flags.f_contiguous
        assert tier["obj"] == values["obj"]
        assert type(tier["masked"]) is np.ma.MaskedArray
        assert tier["masked"].mask.tolist() == [False, True, False]
    assert cache.mesh_hits == cache.misses == 0 and cache.local_hits > 0
    assert cold.local_hits == cold.misses == 0 and cold.mesh_hits == cache.local_hits
    assert {i.content_type for i in c.keys()} == {"bytes", "ndarray", "pickle"}


def test_the_local_tier_keeps_the_most_recently_used_within_local_bytes(c):
    cache = TieredCache(c, local_bytes=3000, prefix="lru/")
    for k in "abc":
        cache[k] = k.encode() * 1000
    assert [cache.in_local(k) for k in "abc"] == [True, True, True]
    assert cache["a"] == b"a" * 1000  # a is now the most recent: b is the oldest
    cache["d"] = b"d" * 1000
    assert [cache.in_local(k) for k in "abcd"] == [True, False, True, True]
    assert cache.stats()["local_bytes_used"] == 3000 and cache.stats()["local_evictions"] == 1

    # behind the cache's back: a hot entry is still served from RAM, a cold one is gone
    c.delete(cache.mesh_key("a"))
    c.delete(cache.mesh_key("b"))
    assert cache["a"] == b"a" * 1000
    with pytest.raises(KeyError):
        cache["b"]
    assert cache.stats() == {"local_hits": 2, "mesh_hits": 0, "misses": 1,
                             "local_evictions": 1, "local_entries": 3,
                             "local_bytes_used": 3000, "local_bytes": 3000}


def test_looking_at_the_local_tier_is_not_a_use(c):
    cache = TieredCache(c, local_bytes=2000, prefix="look/")
    cache["old"], cache["new"] = b"o" * 1000, b"n" * 1000
    assert cache.in_local("old") and "old" in cache  # neither makes "old" recent
    cache["newest"] = b"x" * 1000
    assert not cache.in_local("old") and cache.in_local("new")
    assert cache.local_hits == cache.mesh_hits == cache.misses == 0


def test_a_cold_entry_comes_from_the_mesh_and_becomes_hot(c):
    cache = TieredCache(c, local_bytes=2500, prefix="cold/")
    cache["x"] = b"x" * 1000
    cache["y"] = b"y" * 1000
    cache["z"] = b"z" * 1000  # x leaves the local tier
    assert not cache.in_local("x")
    assert cache["x"] == b"x" * 1000  # from the mesh, then kept locally (y leaves)
    assert cache.in_local("x") and not cache.in_local("y")
    assert (cache.local_hits, cache.mesh_hits, cache.misses) == (0, 1, 0)
    assert cache["x"] == b"x" * 1000
    assert (cache.local_hits, cache.mesh_hits, cache.misses) == (1, 1, 0)


def test_a_value_larger_than_the_local_tier_lives_only_in_the_mesh(c):
    cache = TieredCache(c, local_bytes=1000, prefix="big/")
    cache["small"] = b"s" * 10
    cache["big"] = np.zeros(1000, dtype=np.float64)  # 8000 bytes
    assert not cache.in_local("big") and cache.in_local("small")
    assert cache["big"].nbytes == 8000 and cache.mesh_hits == 1
    assert cache.stats()["local_bytes_used"] == 10


def test_misses_get_with_default_and_contains(c):
    cache = TieredCache(c, local_bytes=1 << 20, prefix="m/")
    with pytest.raises(KeyError):
        cache["absent"]
    assert cache.get("absent", 42) == 42
    assert "absent" not in cache and 7 not in cache
    cache["here"] = b"1"
    assert "here" in cache
    assert cache.misses == 2 and cache.local_hits == 0  # `in` counts nothing
    with pytest.raises(TypeError):
        cache[1] = b"x"


def test_a_mesh_entry_deleted_elsewhere_is_a_miss(c):
    cache = TieredCache(c, local_bytes=0, prefix="gone/")
    cache["k"] = {"v": 1}
    assert cache["k"] == {"v": 1}
    c.delete(cache.mesh_key("k"))  # as an agent's eviction or a ttl would
    assert cache.get("k") is None
    assert (cache.mesh_hits, cache.misses) == (1, 1)


def test_delete_len_iter_and_clear_go_by_the_mesh_under_the_prefix(shared_mesh, c):
    cache = TieredCache(c, local_bytes=1 << 20, prefix="ns/")
    c.put_bytes("outside", b"not mine")
    c.put_bytes("ns-lookalike", b"not mine either")
    for i in range(5):
        cache[f"k{i}"] = i
    with shared_mesh.client() as other:  # another process's entry under the same prefix
        TieredCache(other, prefix="ns/")["theirs"] = b"t"
    assert len(cache) == 6
    assert sorted(cache) == ["k0", "k1", "k2", "k3", "k4", "theirs"]
    del cache["k0"]
    assert not cache.in_local("k0") and "k0" not in cache
    with pytest.raises(KeyNotFound):
        c.object_info("ns/k0")
    with pytest.raises(KeyError):
        del cache["k0"]
    c.delete("ns/k1")  # gone from the mesh, still local: del removes it without complaint
    del cache["k1"]
    assert not cache.in_local("k1")
    assert cache.pop("k2") == 2 and len(cache) == 3
    cache.clear()
    assert len(cache) == 0 and cache.stats()["local_entries"] == 0
    assert sorted(i.key for i in c.keys()) == ["ns-lookalike", "outside"]


def test_a_generated_prefix_is_a_cache_of_its_own(c):
    one, two = TieredCache(c), TieredCache(c)
    assert one.prefix != two.prefix and one.prefix.startswith("cache/")
    one["k"] = b"1"
    assert "k" not in two and len(two) == 0 and list(one) == ["k"]


def test_a_failed_put_leaves_no_local_entry(c):
    cache = TieredCache(c, local_bytes=1 << 20, prefix="fail/")
    cache["k"] = b"old"
    with pytest.raises(Exception):
        cache["k"] = lambda: None  # cannot be pickled
    assert not cache.in_local("k")
    assert cache["k"] == b"old" and cache.mesh_hits == 1  # the mesh still has the old value


class RecordingClient:
    """The real client, with a note of the keyword arguments each put was given."""

    def __init__(self, client):
        self.client, self.puts = client, []

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not name.startswith("put_"):
            return attr

        def put(*args, **kwargs):
            self.puts.append((name, sorted(kwargs)))
            return attr(*args, **kwargs)
        return put


def test_ttl_and_evictable_are_passed_only_when_set(c):
    rec = RecordingClient(c)
    cache = TieredCache(rec, prefix="opts/")
    cache["b"], cache["a"], cache["o"] = b"1", np.ones(3), {"x": 1}
    assert rec.puts == [("put_bytes", ["replace"]), ("put_array", ["replace"]),
                        ("put_object", ["replace"])]
    assert put_options() == {} and put_options(2.5, True) == {"ttl": 2.5, "evictable": True}
    assert put_options(datetime.timedelta(minutes=1)) == {"ttl": 60.0}
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError):
            put_options(bad)


def test_ttl_and_evictable_reach_the_mesh(c):
    rec = RecordingClient(c)
    cache = TieredCache(rec, prefix="ttl/", ttl=1.0, evictable=True)
    cache["b"], cache["a"] = b"1", np.ones(3)
    assert rec.puts == [("put_bytes", ["evictable", "replace", "ttl"]),
                        ("put_array", ["evictable", "replace", "ttl"])]
    assert cache["b"] == b"1" and cache.local_hits == 1
    cache["empty"], cache["none"] = b"", np.zeros(0)  # no block to expire: pickled instead
    assert rec.puts[2:] == [("put_object", ["evictable", "replace", "ttl"])] * 2
    cache.drop_local()
    assert cache["empty"] == b"" and type(cache["none"]) is np.ndarray
    assert c.object_info(cache.mesh_key("empty")).evictable
    deadline = time.monotonic() + 15
    while "b" in cache:  # the local entry expires after ttl, then the mesh key
        assert time.monotonic() < deadline, "a key with ttl=1 s still there after 15 s"
        time.sleep(0.2)
    assert cache.get("b") is None and cache.misses == 1


# --- memoize ------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent("""\
    import sys
    from mesh import MeshClient
    from mesh.cache import memoize

    client = MeshClient()

    @memoize(client, prefix="memo-test/")
    def slow_square(x, scale=1):
        with open(sys.argv[1], "a") as log:
            log.write(f"ran {x}\\n")
        return {"square": x * x * scale}

    print(slow_square(int(sys.argv[2])), slow_square.key_for(int(sys.argv[2])))
    client.close()
""")


def run_script(mesh, script, *args):
    env = dict(os.environ, GRID_CONFIG=str(mesh.config_path), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_memoize_serves_a_second_process_without_running_the_body(shared_mesh, c, tmp_path):
    script, log = tmp_path / "memo.py", tmp_path / "ran.log"
    script.write_text(SCRIPT)
    first = run_script(shared_mesh, script, log, 7)
    second = run_script(shared_mesh, script, log, 7)
    assert first == second and first.startswith("{'square': 49} __main__.slow_square/")
    assert log.read_text() == "ran 7\n"
    run_script(shared_mesh, script, log, 8)
    assert log.read_text() == "ran 7\nran 8\n"
    assert sorted(i.key.split("/")[1] for i in c.keys()) == ["__main__.slow_square"] * 2


def test_memoize_binds_arguments_and_keeps_results_typed(c):
    calls = []

    @memoize(c, prefix="memo-in/", local_bytes=0)
    def f(x, y=2, *rest, **kw):
        calls.append((x, y, rest, kw))
        return np.full(3, x * y, dtype=np.int64)

    assert f(3).tolist() == [6, 6, 6]
    assert f(x=3).tolist() == [6, 6, 6] and f(3, 2).tolist() == [6, 6, 6]
    f(3, 2, a=1, b=2)
    f(3, 2, b=2, a=1)
    assert calls == [(3, 2, (), {}), (3, 2, (), {"a": 1, "b": 2})]
    assert type(f(3)) is np.ndarray and f.cache.mesh_hits == 4
    assert f.key_for(3) == memo_key(f.__wrapped__, (3,), {})
    assert f.key_for(3).startswith(f"{__name__}.test_memoize_binds_arguments_and_keeps"
                                   "_results_typed.<locals>.f/")


def test_memo_keys_hash_array_arguments_by_content(c):
    def g(a):
        return a

    big = np.arange(1 << 20, dtype=np.float64)
    same = big.copy()
    other = big.copy()
    other[-1] = -1
    assert memo_key(g, (big,), {}) == memo_key(g, (same,), {})
    assert memo_key(g, (big,), {}) != memo_key(g, (other,), {})
    assert memo_key(g, (big[::2],), {}) == memo_key(g, (big[::2],), {})  # not contiguous
    assert memo_key(g, (1,), {}, name="named").startswith("named/")


def test_cache_memoize_method_with_and_without_arguments(c):
    cache = TieredCache(c, prefix="meth/")
    n = []

    @cache.memoize
    def h(x):
        n.append(x)
        return bytes([x])

    @cache.memoize(name="stable.k")
    def k(x):
        n.append(-x)
        return x

    assert h(1) == h(1) == b"\x01" and k(2) == k(2) == 2
    assert n == [1, -2] and cache.local_hits == 2
    assert k.key_for(2).startswith("stable.k/")
    assert sorted(cache) == sorted([h.key_for(1), k.key_for(2)])
