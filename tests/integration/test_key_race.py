"""Defect 8 of issue 10: two puts of the same new key at once; exactly one may succeed.

Two clients (threads, each with its own client and sockets) race ``put_bytes`` of the same new
key, both to different agents and with default placement; the loser must get ``KeyExists`` and
leave no record and no block behind. Real agents.
"""

from __future__ import annotations

import threading

import pytest

from mesh.client import objects
from mesh.errors import KeyExists

PAIRS = 100


def _race(mesh, key_prefix: str, nodes: tuple[str | None, str | None], pairs: int):
    """(duplicates, results per pair) of ``pairs`` races of two puts of a new key each."""
    barrier = threading.Barrier(2)
    results: list[list] = [[None] * pairs, [None] * pairs]
    clients = [mesh.client(), mesh.client()]

    def run(side: int) -> None:
        c = clients[side]
        for i in range(pairs):
            barrier.wait(timeout=30)
            try:
                results[side][i] = c.put_bytes(f"{key_prefix}-{i}", bytes([side]) * 4096,
                                               node=nodes[side])
            except KeyExists as exc:
                results[side][i] = exc
            except Exception as exc:  # reported below, never swallowed
                results[side][i] = exc

    threads = [threading.Thread(target=run, args=(s,)) for s in (0, 1)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        duplicates = 0
        for i in range(pairs):
            a, b = results[0][i], results[1][i]
            other = [r for r in (a, b) if not isinstance(r, (objects.ObjectInfo, KeyExists))]
            assert not other, f"pair {i}: unexpected {other!r}"
            won = [r for r in (a, b) if isinstance(r, objects.ObjectInfo)]
            assert won, f"pair {i}: neither put succeeded: {a!r} {b!r}"
            duplicates += len(won) - 1
            # every agent is asked: exactly one record under the key, the winner's
            found = clients[0]._run(objects.holders(clients[0]._core, f"{key_prefix}-{i}"))
            assert [f[1].block_id for f in found] == [won[0].block_id] or len(won) > 1
        return duplicates, results
    finally:
        for c in clients:
            c.close()


def _blocks_and_keys(c):
    return len(c.blocks()), len(c.keys())


@pytest.mark.parametrize("nodes", [("node1", "node2"), (None, None)],
                         ids=["different-agents", "default-placement"])
def test_racing_puts_of_one_new_key_never_both_succeed(mesh3, nodes):
    duplicates, _ = _race(mesh3, "race", nodes, PAIRS)
    assert duplicates == 0, f"{duplicates}/{PAIRS} races left two records of one key"
    with mesh3.client() as c:
        # the losers left nothing behind: one block and one key per pair
        assert _blocks_and_keys(c) == (PAIRS, PAIRS)
        for info in c.keys():
            c.delete(info.key)
        assert _blocks_and_keys(c) == (0, 0)


def test_replace_and_delete_still_work_under_the_home(mesh3):
    with mesh3.client() as a, mesh3.client() as b:
        a.put_bytes("k", b"one", node="node1")
        with pytest.raises(KeyExists):
            b.put_bytes("k", b"two", node="node2")
        b.put_bytes("k", b"two", node="node3", replace=True)
        assert a.get_bytes("k") == b"two"
        assert len(b._run(objects.holders(b._core, "k"))) == 1
        a.delete("k")
        b.put_bytes("k", b"three", node="node2")  # a deleted key can be put again
        assert a.get_bytes("k") == b"three"
        a.put_bytes("empty", b"")
        with pytest.raises(KeyExists):
            b.put_bytes("empty", b"x")
        block = a.allocate(1024, node="node1")
        a.put_bytes("inside", b"abc", block_id=block, offset=10)
        with pytest.raises(KeyExists):
            b.put_bytes("inside", b"abc", block_id=block, offset=20)
        assert b.get_bytes("inside") == b"abc"
        # a put that fails half-way releases its claim: the same key can be put at once
        with pytest.raises(Exception):
            a.put_bytes("fails", b"x" * 10, block_id=block, offset=1020)
        a.put_bytes("fails", b"ok")
        assert b.get_bytes("fails") == b"ok"
