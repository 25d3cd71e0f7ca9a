"""Hardening of the agent against hostile peers and long runs (issue 10, defects 1, 2, 9, 10),
with real agent processes and raw sockets playing the hostile side: forged heartbeats from a
PUB bound in a configured node's slot, planted PULLs, a MOVE target that never answers, tens of
thousands of idle TCP connections from child processes. Every socket a test opens is closed and
every process it starts is stopped by the test itself."""

from __future__ import annotations

import contextlib
import os

import msgpack
import zmq

from mesh import protocol as P
from mesh.client import MeshClient
from support.mesh import free_port_pair, running_mesh

KiB = 1 << 10
MiB = 1 << 20


@contextlib.contextmanager
def _socket(kind: int, bind: str | None = None, connect: str | None = None,
            rcvtimeo_ms: int = 5000):
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, rcvtimeo_ms)
    try:
        if bind:
            sock.bind(bind)
        if connect:
            sock.connect(connect)
        yield sock
    finally:
        sock.close(0)


def _raw_request(op: str, request_id: int, fields: dict) -> bytes:
    return msgpack.packb([P.VERSION, op, request_id, fields])


def _fake_endpoint(host: str = "127.0.0.7") -> str:
    return f"tcp://{host}:{free_port_pair(host)}"


def _used(client: MeshClient, node: str) -> int:
    return next(n["used"] for n in client.stats()["nodes"] if n["node"] == node)


# --- defect 9: block ids and stalled moves --------------------------------------------------


def test_a_planted_pull_never_takes_a_fresh_blocks_id(tmp_path):
    """PULLs naming the ids this agent will hand out next must not make the next allocation
    share an entry with them: the victim's block survives the planted copies being dropped, and
    ``used`` stays the sum of the real blocks. A PULL naming an existing block is refused."""
    with running_mesh(tmp_path, n=1) as mesh, mesh.client() as c:
        node1 = mesh.node("node1").address
        first = c.allocate(4 * KiB)
        _, counter, node, tag = first.split("_")
        planted = [f"block_{int(counter) + i}_{node}_{tag}" for i in range(1, 4)]
        source = _fake_endpoint()
        with _socket(zmq.ROUTER, bind=source) as fake, \
                _socket(zmq.DEALER, connect=node1) as planter:
            for i, block_id in enumerate(planted):
                planter.send(_raw_request(P.PULL, 100 + i, {
                    "block": block_id, "source": source, "size": 16 * KiB, "created": 0.0,
                    "lazy": True}))
            reads = {}  # the planted pulls are under way once their READs reach the fake source
            while len(reads) < len(planted):
                identity, *frames = fake.recv_multipart()
                req = P.parse_request(frames)
                reads.setdefault(req.fields["block"], (identity, req))
            victim = c.allocate(MiB)
            data = os.urandom(MiB)
            c.write(victim, data)
            assert victim not in planted
            refused = P.parse_reply(_call(node1, P.PULL, {
                "block": victim, "source": source, "size": MiB, "created": 0.0, "lazy": True}))
            assert not refused.ok and "already exists" in refused.body["message"]
            for identity, req in reads.values():  # the fake source fails every planted pull
                fake.send_multipart([identity, P.encode_error(P.READ, req.request_id,
                                                              "not_found", "gone")])
            answers = [P.parse_reply(planter.recv_multipart()) for _ in planted]
            assert not any(a.ok for a in answers)
        assert c.read(victim) == data
        assert sorted(b.block_id for b in c.blocks()) == sorted([first, victim])
        assert _used(c, "node1") == MiB + 4 * KiB
        c.free(victim)
        c.free(first)


def _call(address: str, op: str, fields: dict, timeout_ms: int = 5000) -> list[bytes]:
    with _socket(zmq.DEALER, connect=address, rcvtimeo_ms=timeout_ms) as sock:
        sock.send(_raw_request(op, 7, fields))
        return sock.recv_multipart()


def test_a_move_to_a_target_that_never_answers_gives_the_block_back(tmp_path):
    """A target that takes the PULL and then says nothing, with the MOVE's timeout_s at an
    hour: the source sees no READ of the block and no reply, gives up after its stall bound
    and the block takes writes and frees again."""
    with running_mesh(tmp_path, n=1) as mesh, mesh.client() as c:
        node1 = mesh.node("node1").address
        block = c.allocate(MiB)
        c.write(block, b"x" * MiB)
        target = _fake_endpoint()
        with _socket(zmq.ROUTER, bind=target, rcvtimeo_ms=10_000) as silent:
            with _socket(zmq.DEALER, connect=node1, rcvtimeo_ms=45_000) as master:
                master.send(_raw_request(P.MOVE, 1, {"block": block, "target": target,
                                                     "timeout_s": 3600.0}))
                identity, *frames = silent.recv_multipart()  # the PULL, never answered
                assert P.parse_request(frames).op == P.PULL
                reply = P.parse_reply(master.recv_multipart())  # zmq.Again on the old code
        assert not reply.ok and reply.body["code"] == "move_failed"
        c.write(block, b"y", offset=0)
        assert c.read(block, 2) == b"yx"
        c.free(block)
