"""Issue 13, 5a: with no agent running, a command says so within 1 s, naming the nodes.

Nothing listens at the cluster's addresses, so the kernel refuses each TCP connect at once;
ZeroMQ used to hide that and the request waited ``connect_timeout_s`` (3.2 s per command).
The client now probes a link that has not shaken hands (``mesh/client/reach.py``). An agent
that is stopped (SIGSTOP) still has its port open: it is not "not running", its requests time
out as before.

Real processes throughout: cluster files whose agents were never started (their ports were free
a moment ago, so nothing listens), real ``grid`` subprocesses, one real agent that is paused.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time

import pytest

from mesh.client import AsyncMeshClient, MeshClient
from mesh.client.reach import Reach
from mesh.errors import MeshTimeout, NodeUnavailable
from support.cli import GRID, cli_env, grid
from support.mesh import LocalMesh, running_mesh

BOUND_S = 1.0  # the bound issue 13 asks for


def _check_names_every_node(mesh: LocalMesh, message: str) -> None:
    assert message.startswith("no mesh agent answered: "), message
    for agent in mesh.nodes:
        assert f"{agent.name} ({agent.address})" in message, message
    assert "refused the connection" in message
    assert "grid agents start" in message


def test_a_client_says_at_once_that_no_agent_runs(tmp_path):
    """Measured in-process around the client call, so interpreter start-up does not count."""
    mesh = LocalMesh.create(tmp_path, n=3)  # never started
    with MeshClient(mesh.config_path) as client:
        start = time.monotonic()
        with pytest.raises(NodeUnavailable) as err:
            client.stats()
        elapsed = time.monotonic() - start
    _check_names_every_node(mesh, str(err.value))
    assert not isinstance(err.value, MeshTimeout)
    assert elapsed < BOUND_S, f"{elapsed:.2f} s"


def test_the_async_client_too(tmp_path):
    mesh = LocalMesh.create(tmp_path, n=2)

    async def main() -> tuple[str, float]:
        async with AsyncMeshClient(mesh.config_path) as client:
            start = time.monotonic()
            with pytest.raises(NodeUnavailable) as err:
                await client.blocks()
            return str(err.value), time.monotonic() - start

    message, elapsed = asyncio.run(main())
    _check_names_every_node(mesh, message)
    assert elapsed < BOUND_S, f"{elapsed:.2f} s"


def test_a_keyed_cluster_too(tmp_path):
    """On a keyed cluster each link starts with a CURVE handshake, which waits on its own."""
    mesh = LocalMesh.create(tmp_path, n=2, keyed=True)
    with MeshClient(mesh.config_path, key=mesh.admin_key) as client:
        start = time.monotonic()
        with pytest.raises(NodeUnavailable) as err:
            client.allocate(1 << 20)
        elapsed = time.monotonic() - start
    _check_names_every_node(mesh, str(err.value))
    assert elapsed < BOUND_S, f"{elapsed:.2f} s"


@pytest.mark.parametrize("args", [["memory", "stats"], ["memory", "list-blocks"],
                                  ["memory", "allocate", "1MiB"]])
def test_grid_exits_1_with_one_line_within_a_second(tmp_path, args):
    """The command's own time is its wall time less that of ``grid --help`` run just before
    (interpreter start-up and imports, which vary with the machine's load and are not what
    the issue is about); the best of the two runs of each is taken, so a scheduling hiccup of
    a loaded 2-core machine does not decide the test."""
    mesh = LocalMesh.create(tmp_path, n=3)
    env = cli_env(tmp_path)

    def timed(*argv: str) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        done = grid(*argv, env=env, cwd=tmp_path, timeout=30)
        return done, time.monotonic() - start

    baseline = min(timed("--help")[1] for _ in range(2))
    runs = [timed(*args, "-c", str(mesh.config_path)) for _ in range(2)]
    for done, _ in runs:
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        _check_names_every_node(mesh, lines[0].removeprefix("✗ "))
    own = min(elapsed for _, elapsed in runs) - baseline
    assert own < BOUND_S, f"{own:.2f} s beyond `{GRID.name} --help`"


def test_a_paused_agent_is_not_reported_as_not_running(tmp_path):
    """SIGSTOP: the kernel still accepts connections on its port, so the probe finds it
    listening and the request waits its timeout (``MeshTimeout``), as before."""
    with running_mesh(tmp_path, n=1, connect_timeout_s=1.0) as mesh:
        mesh.kill("node1", signal.SIGSTOP)
        try:
            with MeshClient(mesh.config_path) as client:
                with pytest.raises(NodeUnavailable) as err:
                    client.nodes()
        finally:
            mesh.kill("node1", signal.SIGCONT)
    message = str(err.value)
    assert "refused" not in message, message
    assert "no reply from" in message and "within 1 s" in message, message


def test_the_probe_tells_a_closed_port_from_a_listening_one():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        with socket.socket() as spare:  # a port that was free a moment ago: nothing listens
            spare.bind(("127.0.0.1", 0))
            closed_port = spare.getsockname()[1]
        reach = Reach()
        assert reach.look(f"tcp://127.0.0.1:{closed_port}", 0.0) is None  # too early to probe
        deadline = time.monotonic() + 5.0
        verdicts: dict[int, str | None] = {}
        while len(verdicts) < 2 and time.monotonic() < deadline:
            for port in (open_port, closed_port):
                why = reach.look(f"tcp://127.0.0.1:{port}", 1.0)
                if why is not None or reach.poll_s(f"tcp://127.0.0.1:{port}", 1.0) is None:
                    verdicts[port] = why  # settled
            time.sleep(0.01)
        reach.close()
    assert verdicts == {open_port: None, closed_port: "refused the connection"}


@pytest.mark.parametrize("address", ["tcp://some-host.example:7700", "ipc:///tmp/x", "tcp://h"])
def test_a_name_is_not_resolved_by_the_probe(address):
    reach = Reach()
    assert reach.look(address, 10.0) is None and reach.poll_s(address, 10.0) is None
