"""Agents of this machine: start them as background processes, find them, stop them.

Covers: which nodes of a cluster file live on this machine (their host is a loopback address,
one of this machine's interface addresses, or its hostname), the state directory (pid and log
files: the agent writes ``<node>.log`` itself, rotated by size as ``logging:`` says, and its
stdout/stderr go to ``<node>.out``, where a failure before its log is set up shows), starting
``mesh-agent`` detached from the terminal (or, with ``systemd``, as a systemd unit:
``mesh/nodes/systemd.py``), waiting until it answers, and a
graceful stop (SIGTERM, then SIGKILL after a timeout) that only ever signals a process whose
command line is that node's agent.

Does not cover: remote nodes (deployment over SSH comes with ``grid agents deploy``), the
heartbeat view (``MeshClient.nodes``), or rendering (``mesh/cli/``).
"""

from __future__ import annotations

import functools
import ipaddress
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from mesh.config import ClusterConfig, NodeConfig, embedded_default_path
from mesh.errors import AuthenticationError, MeshError
from mesh.paths import state_path

START_WAITERS = 16  # threads waiting for started agents to answer their first ping

@functools.lru_cache(maxsize=1)
def _local_addresses() -> frozenset[str]:
    addrs = set()
    for entries in psutil.net_if_addrs().values():
        for e in entries:
            if e.family in (socket.AF_INET, socket.AF_INET6):
                addrs.add(e.address.split("%")[0])
    return frozenset(addrs)


def is_local_host(host: str) -> bool:
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    for info in infos:
        ip = info[4][0]
        if ipaddress.ip_address(ip).is_loopback or ip in _local_addresses():
            return True
    return False


def is_managed_locally(node: NodeConfig) -> bool:
    """Local process, or over SSH? ``managed_by`` decides; "auto" asks where the host is."""
    if node.managed_by != "auto":
        return node.managed_by == "local"
    return is_local_host(node.mesh_host)


def state_dir(cfg: ClusterConfig) -> Path:
    """This machine's state directory for the cluster (``mesh/paths.py``), made if missing."""
    base = state_path(cfg)
    base.mkdir(parents=True, exist_ok=True)
    return base


def config_path_for_agents(cfg: ClusterConfig) -> str:
    if cfg.source == "<embedded default>":
        return str(embedded_default_path())
    return str(Path(cfg.source).resolve())


@dataclass
class LocalAgent:
    node: NodeConfig
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        """The pid of this node's running agent, or None (stale pid files are removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _is_our_agent(pid, self.node.name):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    @property
    def out_file(self) -> Path:
        """The agent's stdout and stderr: start-up failures, crashes (its log is ``log_file``)."""
        return self.log_file.with_suffix(".out")

    def log_tail(self, lines: int = 10) -> str:
        """The last ``lines`` of the log, reaching into the newest rotated file when it is short."""
        return _tail([Path(f"{self.log_file}.1"), self.log_file], lines)

    def out_tail(self, lines: int = 10) -> str:
        return _tail([self.out_file], lines)

    def log_sizes(self) -> tuple[int, int]:
        return tuple(p.stat().st_size if p.exists() else 0 for p in (self.log_file, self.out_file))

    def said_since(self, sizes: tuple[int, int], lines: int = 10) -> str:
        """What a starting agent wrote after ``sizes`` (from ``log_sizes``): its stderr if any (a
        fatal error or traceback lands there), else its log."""
        for path, size in ((self.out_file, sizes[1]), (self.log_file, sizes[0])):
            try:
                with open(path, "rb") as f:
                    f.seek(size if size <= path.stat().st_size else 0)  # rotated: from the top
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            if text.strip():
                return "\n".join(text.splitlines()[-lines:])
        return ""


def _tail(paths: list[Path], lines: int) -> str:
    kept: list[str] = []
    for path in paths:
        try:
            kept += path.read_text(errors="replace").splitlines()
        except OSError:
            pass
    return "\n".join(kept[-lines:]) if lines > 0 else ""


def _is_our_agent(pid: int, node: str) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    joined = " ".join(cmd)
    return ("agents.main" in joined or "mesh-agent" in joined) and node in cmd


def local_agents(cfg: ClusterConfig, names: tuple[str, ...] = ()) -> tuple[list[LocalAgent], list[NodeConfig]]:
    """(agents of this machine, remote nodes), limited to ``names`` when given."""
    nodes = [cfg.node(n) for n in names] if names else list(cfg.nodes)
    sdir = state_dir(cfg)
    local, remote = [], []
    for node in nodes:
        if is_managed_locally(node):
            local.append(LocalAgent(node, sdir / f"{node.name}.pid", sdir / f"{node.name}.log"))
        else:
            remote.append(node)
    return local, remote


@dataclass
class Outcome:
    node: str
    ok: bool
    message: str
    pid: int | None = None


def _ping(cfg: ClusterConfig, address: str, timeout_s: float) -> bool:
    """The agent at ``address`` answers (with this machine's key of the cluster, if any)."""
    from mesh.client import MeshClient

    try:
        with MeshClient(cfg, address=address) as client:
            client.ping(address, timeout_s)
        return True
    except AuthenticationError:
        return True  # it answered the handshake: up and keyed (a node holds no client key)
    except MeshError:
        return False


def agent_command(cfg_path: str, agent: LocalAgent, insecure: bool = False,
                  extra: list[str] | None = None) -> list[str]:
    """The command line of ``agent``'s process (a detached process or a systemd unit's)."""
    cmd = [sys.executable, "-m", "agents.main", "--config", cfg_path, "--node", agent.node.name,
           "--log-file", str(agent.log_file)]  # the agent rotates it (agents/logs.py)
    return cmd + list(extra or ()) + (["--insecure"] if insecure else [])


def start(cfg: ClusterConfig, agents: list[LocalAgent], insecure: bool = False,
          timeout_s: float = 15.0, config_path: str | None = None,
          systemd: bool = False, extra: list[str] | None = None) -> list[Outcome]:
    """Start ``agents`` as detached processes, or with ``systemd`` as systemd units
    (``start_units``, which add ``extra`` to the agent's arguments), and wait until each
    answers."""
    cfg_path = config_path or config_path_for_agents(cfg)
    if systemd:
        return start_units(cfg, agents, insecure, timeout_s, cfg_path, extra)
    launched: list[tuple[LocalAgent, subprocess.Popen, tuple[int, int]]] = []
    outcomes: dict[str, Outcome] = {}
    for agent in agents:
        pid = agent.pid()
        if pid is not None:
            outcomes[agent.node.name] = Outcome(agent.node.name, True, "already running", pid)
            continue
        cmd = agent_command(cfg_path, agent, insecure)
        sizes = agent.log_sizes()
        with open(agent.out_file, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, close_fds=True,
            )
        agent.pid_file.write_text(f"{proc.pid}\n")
        launched.append((agent, proc, sizes))
    deadline = time.monotonic() + timeout_s

    def wait(agent: LocalAgent, proc: subprocess.Popen, sizes: tuple[int, int]) -> None:
        name = agent.node.name
        # Each try is a new connection. On a loaded machine (100 agents starting on 2 cores) a
        # handshake and an answer can take longer than a short ping allows, and a fixed 0.3 s
        # never succeeded for 11-43 of 100 agents in 150 s: each try waits longer, up to 3 s.
        ping_s = 0.3
        while True:
            code = proc.poll()
            if code is not None:
                agent.pid_file.unlink(missing_ok=True)
                outcomes[name] = Outcome(
                    name, False, f"agent exited at start (code {code}):\n{agent.said_since(sizes)}"
                )
                return
            if _ping(cfg, agent.node.data_address, min(ping_s, max(0.05, deadline -
                                                                  time.monotonic()))):
                outcomes[name] = Outcome(name, True, "started", proc.pid)
                return
            ping_s = min(3.0, ping_s * 1.5)
            if time.monotonic() > deadline:
                _terminate(proc.pid, 3.0)
                agent.pid_file.unlink(missing_ok=True)
                outcomes[name] = Outcome(
                    name, False,
                    f"agent did not answer within {timeout_s:g} s:\n{agent.said_since(sizes)}"
                )
                return

    # the agents are waited for at once: one after another, each ping building a client, 100
    # agents took longer than their own start-up (docs/scale.md)
    with ThreadPoolExecutor(max_workers=max(1, min(START_WAITERS, len(launched)))) as pool:
        for done in [pool.submit(wait, *item) for item in launched]:
            done.result()
    return [outcomes[a.node.name] for a in agents]


def start_units(cfg: ClusterConfig, agents: list[LocalAgent], insecure: bool, timeout_s: float,
                cfg_path: str, extra: list[str] | None = None) -> list[Outcome]:
    """Each agent as a systemd unit (``mesh/nodes/systemd.py``: a system unit as root, else
    a user unit), its pid file written from the unit's main pid so that ``status`` and
    ``stop`` find it. Where systemd does not run, every agent fails with that reason."""
    from mesh.nodes import systemd as units

    system = units.is_system_manager()
    why = units.unavailable(system)
    if why is not None:
        return [Outcome(a.node.name, False, f"{why}; start without --systemd") for a in agents]
    outcomes = []
    for agent in agents:
        name = agent.node.name
        pid = agent.pid()
        if pid is not None and not units.active(name, system):
            outcomes.append(Outcome(name, False, f"already running as a process (pid {pid}); "
                                    "stop it first (`grid agents stop`)", pid))
            continue
        sizes = agent.log_sizes()
        text = units.render_unit(name, agent_command(cfg_path, agent, insecure, extra),
                                 system=system, working_dir=str(agent.log_file.parent))
        failed = units.install(name, text, system)
        if failed is not None:
            outcomes.append(Outcome(name, False, failed))
            continue
        deadline = time.monotonic() + timeout_s
        while not _ping(cfg, agent.node.data_address, 0.3):
            if time.monotonic() > deadline or not units.active(name, system):
                outcomes.append(Outcome(name, False, f"unit {units.unit_name(name)} did not "
                                        f"answer within {timeout_s:g} s:\n"
                                        f"{agent.said_since(sizes)}"))
                break
        else:
            pid = units.main_pid(name, system)
            if pid is not None:
                agent.pid_file.write_text(f"{pid}\n")
            kind = "system" if system else "user"
            note = "" if system or units.lingers() else \
                " (it stops when you log out: `loginctl enable-linger` keeps it)"
            outcomes.append(Outcome(name, True, f"started as systemd {kind} unit "
                                    f"{units.unit_name(name)}{note}", pid))
    return outcomes


def _stop_unit(agent: LocalAgent) -> Outcome | None:
    """Stop ``agent``'s systemd unit when it has one (else None: it is a plain process)."""
    from mesh.nodes import systemd as units

    name = agent.node.name
    if not units.installed(name) or units.unavailable() is not None:
        return None
    pid = agent.pid()
    failed = units.stop(name)
    return Outcome(name, failed is None, failed or f"stopped systemd unit {units.unit_name(name)}",
                   pid)


def _terminate(pid: int, timeout_s: float) -> str:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
            return "stopped"
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
            return f"killed (did not stop within {timeout_s:g} s)"
    except psutil.NoSuchProcess:
        return "already gone"


def stop(agents: list[LocalAgent], timeout_s: float = 10.0) -> list[Outcome]:
    """SIGTERM to every running agent at once, then wait for them together (one after another,
    three agents took 5.4 s); SIGKILL for any still running after ``timeout_s``."""
    outcomes: dict[str, Outcome] = {}
    running: dict[psutil.Process, LocalAgent] = {}
    for agent in agents:
        unit = _stop_unit(agent)  # systemd would start a failed agent again: ask it first
        if unit is not None and (not unit.ok or agent.pid() is None):
            outcomes[agent.node.name] = unit
            continue
        pid = agent.pid()
        if pid is None:
            outcomes[agent.node.name] = Outcome(agent.node.name, True, "not running")
            continue
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            running[proc] = agent
        except psutil.NoSuchProcess:
            agent.pid_file.unlink(missing_ok=True)
            outcomes[agent.node.name] = Outcome(agent.node.name, True, "already gone", pid)
    gone, alive = psutil.wait_procs(list(running), timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    for proc, agent in running.items():
        how = "stopped" if proc in gone else f"killed (did not stop within {timeout_s:g} s)"
        agent.pid_file.unlink(missing_ok=True)
        outcomes[agent.node.name] = Outcome(agent.node.name, True, how, proc.pid)
    return [outcomes[a.node.name] for a in agents]