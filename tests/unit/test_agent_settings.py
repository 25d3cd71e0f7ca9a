"""What an agent takes from its cluster file (agents/main.py ``settings_for``): the pull's chunk
size is the cluster's ``mesh.chunk_bytes``, the one clients use. No processes, no sockets."""

from __future__ import annotations

import dataclasses

import pytest

from agents.main import settings_for
from mesh.config import parse_config

MiB = 1 << 20


def _cluster(mesh: dict):
    return parse_config({
        "name": "t",
        "nodes": [{"name": "n1", "host": "127.0.0.1", "mesh_port": 7700},
                  {"name": "n2", "host": "127.0.0.1", "mesh_port": 7710}],
        "mesh": mesh,
    }, "test")


@pytest.mark.parametrize(("mesh", "chunk"), [({}, 2 * MiB), ({"chunk_bytes": "4MiB"}, 4 * MiB),
                                             ({"chunk_bytes": "256KiB"}, 256 * 1024)])
def test_the_agent_pulls_in_the_clusters_chunk_size(mesh, chunk):
    cfg = _cluster(mesh)
    s = settings_for(cfg, cfg.node("n1"))
    assert s.chunk_bytes == chunk == cfg.mesh.chunk_bytes
    assert s.max_message_bytes == cfg.mesh.max_message_bytes > s.chunk_bytes
    assert s.peers == ["tcp://127.0.0.1:7711"]


def test_a_chunk_that_does_not_fit_in_a_message_is_refused():
    cfg = _cluster({})
    s = settings_for(cfg, cfg.node("n1"))
    with pytest.raises(ValueError, match="chunk_bytes"):
        dataclasses.replace(s, chunk_bytes=s.max_message_bytes + 1)
    with pytest.raises(ValueError):
        dataclasses.replace(s, chunk_bytes=0)
