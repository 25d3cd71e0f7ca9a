"""Defect 7 of issue 10: a block or key on a dead or paused node is not reported as missing.

A client that looks for a block whose node was killed (SIGKILL) or paused (SIGSTOP) gets
``NodeUnavailable`` naming that node and its state, never ``BlockNotFound``/``KeyNotFound``
("deallocated or never existed"): the data is not known to be gone. Real agents.
"""

from __future__ import annotations

import signal

import pytest

from mesh.errors import BlockNotFound, KeyNotFound, NodeUnavailable


def _blame(fn, node: str) -> NodeUnavailable:
    with pytest.raises(NodeUnavailable) as err:
        fn()
    assert not isinstance(err.value, (BlockNotFound, KeyNotFound))
    assert node in str(err.value), str(err.value)
    return err.value


def test_a_killed_node_is_blamed_not_reported_as_missing_data(mesh3):
    with mesh3.client() as c:
        block = c.allocate(4096, node="node2")
        c.put_bytes("on-node2", b"kept", node="node2")
        c.put_bytes("elsewhere", b"fine", node="node1")
    mesh3.kill("node2", signal.SIGKILL)
    with mesh3.client() as fresh:  # knows no block locations
        err = _blame(lambda: fresh.read(block), "node2")
        assert err.node == "node2"
        _blame(lambda: fresh.get_bytes("on-node2"), "node2")
        assert fresh.get_bytes("elsewhere") == b"fine"
        # what never existed is still "not found"
        with pytest.raises(BlockNotFound):
            fresh.read("block_999_node1_zz")
        with pytest.raises(KeyNotFound):
            fresh.get_bytes("never-put")


def test_a_paused_node_is_blamed_not_reported_as_missing_data(mesh3):
    with mesh3.client() as c:
        block = c.allocate(4096, node="node3")
        c.put_bytes("on-node3", b"kept", node="node3")
    mesh3.kill("node3", signal.SIGSTOP)
    try:
        with mesh3.client() as fresh:
            _blame(lambda: fresh.read(block), "node3")
            _blame(lambda: fresh.get_bytes("on-node3"), "node3")
    finally:
        mesh3.kill("node3", signal.SIGCONT)
    with mesh3.client() as c:
        mesh3.wait_converged()
        assert c.get_bytes("on-node3") == b"kept"
        c.free(block)
