"""Real ``mesh-agent`` processes on 127.0.0.x with random ports, for integration tests.

``LocalMesh`` writes a cluster file for N nodes (127.0.0.1, .2, .3, ...), starts one agent
process per node, waits until each answers, and at teardown stops them (SIGTERM, then SIGKILL);
``running_mesh`` fails the test if any process it started is still alive.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from mesh.client import MeshClient

ROOT = Path(__file__).resolve().parents[2]  # the checkout


def _below_ephemeral() -> tuple[int, int]:
    """Where the tests pick agent ports: below the kernel's ephemeral range, which every
    outgoing connection's local port and every port-0 listener (Ray, a keyed agent's sealed
    port) is taken from. A port picked inside it was taken by one of those between the pick
    and the agent's start (twice in a full run)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (20000, low) if low >= 24000 else (20000, 60000)  # (Ray's workers: 10002-19999)


def free_port_pair(host: str) -> int:
    """A port p with p to p+3 free on ``host`` (the data, gossip, metrics and direct ports), a
    multiple of 4 so that two picks on one host never overlap, below the ephemeral range."""
    start, stop = _below_ephemeral()
    for _ in range(200):
        port = random.randrange(start, stop - 4, 4)
        socks = []
        try:
            for p in (port, port + 1, port + 2, port + 3):
                s = socket.socket()
                s.bind((host, p))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port pair found")


def cluster_file(tmp: Path, n: int, name: str = "test-mesh", extra_nodes: list | None = None,
                 memory_gb: float = 0.5) -> Path:
    """``tmp/cluster.yaml`` with nodes n1..n``n`` on 127.0.0.1.. (free ports), for tests that
    start agents through ``grid agents start``; ``extra_nodes`` are appended as given."""
    nodes = [{"name": f"n{i + 1}", "host": f"127.0.0.{i + 1}", "memory_gb": memory_gb,
              "mesh_port": free_port_pair(f"127.0.0.{i + 1}")} for i in range(n)]
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump({"name": name, "nodes": nodes + (extra_nodes or []),
                                    "mesh": {"host_reserve_bytes": "256MiB"}}))
    return path


def agent_command(config: Path, node: str) -> list[str]:
    return [sys.executable, "-m", "agents.main", "--config", str(config), "--node", node]


@dataclass
class AgentProc:
    name: str
    host: str
    port: int
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"


@dataclass
class LocalMesh:
    tmp: Path
    nodes: list[AgentProc]
    config_path: Path
    extra_mesh: dict = field(default_factory=dict)
    started: list[subprocess.Popen] = field(default_factory=list)
    admin_key: Path | None = None  # the cluster's admin key, when it has keys
    keys: dict = field(default_factory=dict)  # name -> secret key file of the client keys made
    domains: dict = field(default_factory=dict)  # node -> the failure domain it claims

    @classmethod
    def create(cls, tmp: Path, n: int = 3, memory_gb: float = 1.0, extra: dict | None = None,
               keyed: bool = False, client_keys: dict[str, str] | None = None,
               **mesh_settings) -> "LocalMesh":
        """``extra`` adds top-level sections to the cluster file (``ray``, ``execution``);
        ``keyed`` makes the cluster's keys first (``grid keys init``), so its agents run
        authenticated, and ``client_keys`` ({name: role}) client keys in ``mesh.keys``. The keys
        directory is the test's own either way, so a developer's keys never change a test."""
        mesh_settings.setdefault("keys_dir", str(tmp / "keys"))
        nodes = []
        for i in range(n):
            host = f"127.0.0.{i + 1}"
            nodes.append(AgentProc(f"node{i + 1}", host, free_port_pair(host), tmp / f"node{i + 1}.log"))
        cfg = {
            "name": "test-mesh",
            "nodes": [
                {
                    "name": a.name,
                    "host": a.host,
                    "port": 22,
                    "role": "worker",
                    "memory_gb": memory_gb,
                    "mesh_port": a.port,
                }
                for a in nodes
            ],
            "mesh": {"host_reserve_bytes": "256MiB", **mesh_settings},
            **(extra or {}),
        }
        path = tmp / "cluster.yaml"
        path.write_text(yaml.safe_dump(cfg))
        mesh = cls(tmp, nodes, path)
        if keyed:
            from mesh.config import load_cluster_config
            from mesh.security.keys import KeyDir

            keydir = KeyDir(mesh_settings["keys_dir"])
            cfg = load_cluster_config(path)
            keydir.init(cfg)
            mesh.admin_key = keydir.path / "clients" / "admin.key_secret"
            mesh.keys = {name: keydir.add(name, role, cfg)
                         for name, role in (client_keys or {}).items()}
        return mesh

    def node(self, name: str) -> AgentProc:
        return next(a for a in self.nodes if a.name == name)

    def start(self, name: str, wait: bool = True, root: Path = ROOT) -> AgentProc:
        """Start agent ``name`` running the code of the source tree ``root`` (this checkout's,
        unless a test runs an older version's)."""
        agent = self.node(name)
        log = open(agent.log, "ab")
        env = dict(os.environ, PYTHONPATH=str(root))
        if name in self.domains:  # its own machine, as far as replicas can tell (mesh/machine.py)
            env["MESH_DOMAIN"] = self.domains[name]
        agent.proc = subprocess.Popen(
            agent_command(self.config_path, name), stdout=log, stderr=log, env=env, cwd=self.tmp
        )
        log.close()
        self.started.append(agent.proc)
        if wait:
            self.wait_ready(agent)
        return agent

    def start_all(self) -> None:
        for a in self.nodes:
            self.start(a.name, wait=False)
        for a in self.nodes:
            self.wait_ready(a)
        self.wait_converged()

    def wait_converged(self, timeout_s: float = 15.0) -> None:
        """Until every agent has heard every other one itself, not only through relays
        (PUB/SUB joins take a moment; a move's target must have spoken for itself)."""
        deadline = time.monotonic() + timeout_s
        want = {a.name for a in self.nodes}
        for a in self.nodes:
            with MeshClient(self.config_path, timeout_s=2.0) as client:
                while True:
                    table = client._run(client._core.call(a.address, "nodes"))["nodes"]
                    if {r["node"] for r in table
                            if r["state"] == "alive" and r.get("vouched", True)} >= want:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{a.name} never heard all of {sorted(want)}: {table}")
                    time.sleep(0.05)

    def wait_ready(self, agent: AgentProc, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        with MeshClient(self.config_path, timeout_s=1.0) as client:
            while True:
                if agent.proc is not None and agent.proc.poll() is not None:
                    raise RuntimeError(f"agent {agent.name} exited:\n{agent.log.read_text()}")
                try:
                    client.ping(agent.address, timeout_s=0.5)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"agent {agent.name} never answered:\n{agent.log.read_text()}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.node(name).proc
        assert proc is not None
        proc.send_signal(sig)
        if sig not in (signal.SIGSTOP, signal.SIGCONT):  # a pause is not an end
            proc.wait(timeout=10)

    def client(self, **kw) -> MeshClient:
        return MeshClient(self.config_path, **kw)

    def stop_all(self) -> list[int]:
        leaked = []
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                leaked.append(proc.pid)
        return leaked


@contextlib.contextmanager
def clean_client(mesh: LocalMesh) -> Iterator[MeshClient]:
    """A client of ``mesh`` that deletes every key and frees every block when the test is done
    (for module-scoped meshes shared by many tests)."""
    with mesh.client() as client:
        yield client
        for info in client.keys():
            client.delete(info.key)
        for block in client.blocks():
            client.free(block.block_id)


@contextlib.contextmanager
def running_mesh(tmp: Path, n: int = 3, memory_gb: float = 1.0, extra: dict | None = None,
                 keyed: bool = False, client_keys: dict[str, str] | None = None,
                 **mesh_settings) -> Iterator[LocalMesh]:
    """A started ``LocalMesh``; at the end its agents are stopped, and any that ignored SIGTERM
    fails the test."""
    mesh = LocalMesh.create(tmp, n, memory_gb, extra, keyed, client_keys, **mesh_settings)
    mesh.start_all()
    try:
        yield mesh
    finally:
        leaked = mesh.stop_all()
        assert not leaked, f"agents ignored SIGTERM and had to be killed: {leaked}"
