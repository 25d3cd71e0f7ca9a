"""Defect 6 of issue 10: a request the client has given up on is never applied.

A client's requests carry the wall-clock time at which it gives up (``deadline``); the agent
refuses, with ``DeadlineExceeded`` and without applying anything, a request it takes up after
that (less ``mesh.clock_skew_s``). Real agents, paused with SIGSTOP so the client's write
times out while its chunks wait in the agent's socket buffers.
"""

from __future__ import annotations

import signal
import time

import pytest

from mesh import protocol as P
from mesh.errors import DeadlineExceeded, MeshTimeout
from support.mesh import running_mesh

MiB = 1024 * 1024


def _stats(client, address):
    return client._run(client._core.call(address, P.STATS, {}))


def test_a_write_that_timed_out_is_not_applied_after_the_agent_resumes(tmp_path):
    with running_mesh(tmp_path, n=1, request_timeout_s=1.5) as mesh:
        agent = mesh.node("node1")
        with mesh.client() as c:
            block = c.allocate(8 * MiB, node="node1")
            mesh.kill("node1", signal.SIGSTOP)
            try:
                with pytest.raises(MeshTimeout):
                    c.write(block, b"\xab" * (6 * MiB))
            finally:
                mesh.kill("node1", signal.SIGCONT)
            # The 2 MiB chunks that reached the agent's socket before it stopped (all three, or
            # fewer when the client's reset dropped some still unsent on a busy machine) are
            # taken up now and must each be refused. Wait until the count of refused requests
            # has been steady for a moment (bounded), then look at the block.
            end = time.monotonic() + 10
            seen, steady_since = -1, time.monotonic()
            while time.monotonic() < end:
                try:
                    late = _stats(c, agent.address).get("late_requests", 0)
                except MeshTimeout:
                    late = -1
                if late != seen:
                    seen, steady_since = late, time.monotonic()
                elif late >= 1 and time.monotonic() - steady_since > 0.5:
                    break
                time.sleep(0.05)
            data = c.read(block)
            landed = len(data) - data.count(0)
            assert landed == 0, f"{landed} bytes of a write reported as failed were applied"
            assert _stats(c, agent.address)["late_requests"] >= 1


def test_the_agent_answers_a_late_request_with_deadline_exceeded(shared_mesh):
    node = shared_mesh.node("node2")
    with shared_mesh.client() as c:
        block = c.allocate(1 * MiB, node="node2")
        try:
            late = {"block": block, "offset": 0, "deadline": time.time() - 1.0}
            frames = [P.encode_request(P.WRITE, 7, late), b"\x01" * 1024]
            sock = c._core.socket(node.address)
            sock.send_multipart(frames)
            assert sock.poll(5000)
            reply = P.parse_reply(sock.recv_multipart())
            with pytest.raises(DeadlineExceeded) as err:
                reply.raise_for_error("node2")
            assert err.value.code == "deadline_exceeded"
            assert bytes(c.read(block, 1024)) == bytes(1024)
            # a request within its deadline is applied as ever
            c.write(block, b"\x02" * 1024)
            assert bytes(c.read(block, 1024)) == b"\x02" * 1024
        finally:
            c.free(block)
