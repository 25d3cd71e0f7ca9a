"""Cluster files: finding one, loading it, checking it, and the frozen values the rest reads.

A cluster file is YAML (the format of ``config/my-cluster-enhanced.yaml`` that users of the
earlier version already have, accepted unchanged) plus an optional ``mesh:`` section and optional
per-node ``mesh_host`` / ``mesh_port``::

    name: my-cluster
    nodes:
    - {name: gpu1, host: gpu1, port: 22, user: mesh, role: worker, memory_gb: 16,
       resource_sharing: {can_share: true, max_share_memory_gb: 8}}
    execution: {working_directory: /tmp/grid, resource_sharing: {thresholds: {...}}}
    logging: {level: INFO}
    mesh: {port: 7700, chunk_bytes: 4MiB, heartbeat_interval_s: 0.5}

``resolve_config`` picks the file: an explicit path, else ``$GRID_CONFIG``, else
``config/my-cluster-enhanced.yaml`` under the current directory, else the embedded local default
(``mesh/default_cluster.yaml``: three nodes on 127.0.0.1-3). ``parse_config`` checks everything
once and raises one ``ConfigError`` naming the file and the field, for example
``config/x.yaml: nodes[1].memory_gb: expected a number >= 0, got 'abc'``. ``MeshSettings`` also
checks itself, so ``dataclasses.replace(settings, window=0)`` fails the same way.

Keys this module does not know are kept, not refused: a node's in ``NodeConfig.extra``, the
execution section's in ``ExecutionConfig.extra``, everything in ``ClusterConfig.raw``. The
exceptions are the ``mesh:`` and ``logging:`` sections, which are ours, so a misspelt key there is
an error. ``logging:`` is checked in ``mesh/logconfig.py`` (``ClusterConfig.logging``).

Not here: sizes for humans (``mesh/units.py``), the small checks of single values
(``mesh/configcheck.py``), the errors themselves (``mesh/errors.py``), what
the agent does with these values (``agents/main.py``, ``agents/logs.py``), deployment over ssh and
Ray placement (they read ``NodeConfig`` and ``ExecutionConfig`` but live in their own modules).
Host names are compared as written; nothing here resolves DNS or opens a socket.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from mesh.configcheck import Invalid as _Invalid  # the small checks, shared with logconfig
from mesh.configcheck import check_int as _check_int, check_number as _check_number
from mesh.configcheck import check_positive as _check_positive, check_string as _check_string
from mesh.configcheck import check_tags as _check_tags, describe as _describe
from mesh.configcheck import did_you_mean as _did_you_mean, is_number as _is_number
from mesh.configcheck import mapping_or_empty as _mapping_or_empty
from mesh.errors import ConfigError, InvalidSize
from mesh.logconfig import LoggingConfig, parse_logging
from mesh.units import GiB, KiB, MiB, parse_size

ENV_VAR = "GRID_CONFIG"
LOCAL_CONFIG_PATH = Path("config") / "my-cluster-enhanced.yaml"  # relative to the current directory
EMBEDDED_SOURCE = "<embedded default>"

DEFAULT_PORT = 7700
MIN_CHUNK_BYTES = 64 * KiB
MAX_CHUNK_BYTES = 64 * MiB
MAX_WINDOW = 64
# Highest data port: the gossip port (data port + 1) must still be a valid port.
MAX_MESH_PORT = 65534
EVICTION_POLICIES = ("lru", "lfu", "ttl-first")


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshSettings:
    """The ``mesh:`` section: ports, timings and transfer sizes shared by agents and clients.

    Checks itself on construction (and so on ``dataclasses.replace``), raising ``ConfigError``
    with a ``mesh.<field>`` path.
    """

    port: int = DEFAULT_PORT  # data port; gossip is port + 1
    heartbeat_interval_s: float = 0.5
    suspect_after_s: float = 1.5
    dead_after_s: float = 3.0
    # Heartbeats each agent takes in per second, about, at most: with more peers than this
    # times heartbeat_interval_s, agents beat less often (up to 4x), and their silence is timed
    # as much longer (mesh/membership.py: stretch). 0: never.
    heartbeat_intake_per_s: float = 100.0
    # The same, for all the agents on one machine together (they share its CPUs; its kernel's
    # boot id tells them apart: mesh/machine.py kernel_key). 0: no such bound.
    heartbeat_host_intake_per_s: float = 2500.0
    chunk_bytes: int = 2 * MiB
    window: int = 8  # chunks in flight per agent
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    # How far apart client and agent clocks may be: a request carries the wall-clock time its
    # client gives up less this, and the agent applies nothing after that (mesh/protocol.py).
    clock_skew_s: float = 0.25
    host_reserve_bytes: int = 1 * GiB  # RAM an agent always leaves to its host
    state_dir: str | None = None
    # The cluster keys (mesh/security/keys.py); default: <state_dir>/keys on this machine.
    keys_dir: str | None = None
    insecure: bool = False
    # A block made for a named put is freed when its client has not renewed it (any request
    # naming it) for this long, plus at most one heartbeat (agents/store.py: leases).
    lease_s: float = 30.0
    # Copies of every block unless a call says otherwise, kept on distinct failure domains
    # ("host": machines) or only distinct nodes ("node") (docs/durability.md).
    replicas: int = 1
    replica_spread: str = "host"
    # Operations one client runs at once (threads, asyncio tasks), each on its own connection
    # per agent; a large transfer over ZeroMQ to one agent is cut over two (mesh/client/pool.py).
    client_connections: int = 4
    # A client on an agent's machine reads and writes its blocks in shared memory, not over
    # TCP; the agent keeps blocks in memfds for that (mesh/localwire.py).
    local_access: bool = True
    # Without cluster keys, block reads and writes also travel over a plain TCP stream to each
    # agent beside ZeroMQ: one copy fewer per byte, one message per small op (mesh/directwire.py).
    direct_tcp: bool = True
    # Which evictable key an agent short of room frees first: lru, lfu or ttl-first
    # (agents/eviction.py); keys not stored as evictable and raw blocks are never evicted.
    eviction_policy: str = "lru"

    def __post_init__(self) -> None:
        try:
            _check_int(self.port, "port", 1, MAX_MESH_PORT)
            for name in ("heartbeat_interval_s", "suspect_after_s", "dead_after_s",
                         "request_timeout_s", "connect_timeout_s"):
                _check_positive(getattr(self, name), name)
            if not self.suspect_after_s > self.heartbeat_interval_s:
                raise _Invalid("suspect_after_s", f"must be greater than heartbeat_interval_s "
                               f"({self.heartbeat_interval_s}), got {self.suspect_after_s}")
            if not self.dead_after_s > self.suspect_after_s:
                raise _Invalid("dead_after_s", f"must be greater than suspect_after_s "
                               f"({self.suspect_after_s}), got {self.dead_after_s}")
            if not _is_number(self.heartbeat_intake_per_s) or self.heartbeat_intake_per_s < 0:
                raise _Invalid("heartbeat_intake_per_s", "expected heartbeats a second >= 0 "
                               f"(0: never stretch), got {self.heartbeat_intake_per_s!r}")
            if not _is_number(self.heartbeat_host_intake_per_s) or \
                    self.heartbeat_host_intake_per_s < 0:
                raise _Invalid("heartbeat_host_intake_per_s", "expected heartbeats a second >= 0 "
                               f"(0: no bound), got {self.heartbeat_host_intake_per_s!r}")
            _check_int(self.chunk_bytes, "chunk_bytes", MIN_CHUNK_BYTES, MAX_CHUNK_BYTES,
                       shown="64KiB..64MiB")
            _check_int(self.window, "window", 1, MAX_WINDOW)
            if not _is_number(self.clock_skew_s) or not 0 <= self.clock_skew_s < 3600:
                raise _Invalid("clock_skew_s", f"expected seconds >= 0, got {self.clock_skew_s!r}")
            _check_int(self.host_reserve_bytes, "host_reserve_bytes", 0, None)
            if self.state_dir is not None:
                _check_string(self.state_dir, "state_dir")
            if self.keys_dir is not None:
                _check_string(self.keys_dir, "keys_dir")
            for name in ("insecure", "local_access", "direct_tcp"):
                if not isinstance(getattr(self, name), bool):
                    raise _Invalid(name, f"expected true or false, got {getattr(self, name)!r}")
            if not _is_number(self.lease_s) or not 0 < self.lease_s <= 3600:
                raise _Invalid("lease_s", f"expected seconds in (0, 3600], got {self.lease_s!r}")
            _check_int(self.replicas, "replicas", 1, 16)
            _check_int(self.client_connections, "client_connections", 1, 64)
            if self.eviction_policy not in EVICTION_POLICIES:
                raise _Invalid("eviction_policy", f"expected one of {', '.join(EVICTION_POLICIES)}"
                               f", got {self.eviction_policy!r}")
            if self.replica_spread not in ("host", "node"):
                raise _Invalid("replica_spread", f"expected host or node, got "
                               f"{self.replica_spread!r}")
        except _Invalid as exc:
            raise ConfigError(f"mesh.{exc.path}: {exc.problem}") from None

    @property
    def gossip_port(self) -> int:
        return self.port + 1

    @property
    def max_message_bytes(self) -> int:
        """The largest message an agent accepts: one chunk plus room for the header."""
        return self.chunk_bytes + 1 * MiB


@dataclass(frozen=True)
class NodeSharing:
    """A node's ``resource_sharing`` mapping (the seed format)."""

    can_share: bool = True
    max_share_memory_gb: float | None = None
    max_share_cpu: float | None = None
    max_share_gpu: float | None = None
    priority: float | None = None


@dataclass(frozen=True)
class NodeConfig:
    """One entry of ``nodes:``. ``port`` is ssh; the agent listens on ``mesh_host:mesh_port``."""

    name: str
    host: str
    port: int = 22
    user: str | None = None
    role: str = "worker"
    memory_gb: float | None = None
    cpu_count: int | None = None
    gpu_count: int | None = None
    tags: tuple[str, ...] = ()
    resource_sharing: NodeSharing = field(default_factory=NodeSharing)
    mesh_host: str = ""  # "" means the same as host
    mesh_port: int = DEFAULT_PORT
    metrics_port: int | None = None  # Prometheus /metrics; None: mesh_port + 2; 0: not served
    # the direct path's TCP port (mesh/directwire.py); 0: any free port. Not given: mesh_port
    # + 3, unless another agent of the file uses that port on the same host (then 0), so files
    # whose agents share a host three ports apart stay valid (``_direct_ports``)
    direct_port: int | None = None
    ssh_key: str | None = None
    # Deployment (``grid agents deploy``): where the node keeps its venv, config, pid and log
    # files (default: <execution.working_directory>/mesh/<node name>), its Python, and whether
    # its agent is managed over SSH or as a local process ("auto": local when the host is this
    # machine). ``ssh`` holds extra paramiko connect options (e.g. {"timeout": 5}).
    deploy_dir: str | None = None
    python: str = "python3"
    managed_by: str = "auto"
    ssh: dict = field(default_factory=dict, hash=False)
    extra: dict = field(default_factory=dict, hash=False)  # the node's other keys, as written

    def __post_init__(self) -> None:
        if not self.mesh_host:
            object.__setattr__(self, "mesh_host", self.host)
        if self.metrics_port is None:
            object.__setattr__(self, "metrics_port", self.mesh_port + 2)

    @property
    def data_address(self) -> str:
        return f"tcp://{self.mesh_host}:{self.mesh_port}"

    @property
    def gossip_address(self) -> str:
        return f"tcp://{self.mesh_host}:{self.mesh_port + 1}"

    @property
    def share_bytes(self) -> int | None:
        """The most this node's agent may promise, or None for "only host RAM limits it"."""
        sharing = self.resource_sharing
        if not sharing.can_share:
            return 0
        if sharing.max_share_memory_gb is not None:
            return round(sharing.max_share_memory_gb * GiB)
        if self.memory_gb is not None:
            return round(self.memory_gb * GiB)
        return None


@dataclass(frozen=True)
class ExecutionConfig:
    """The ``execution:`` section. ``resource_sharing`` is kept raw (the seed's policy knobs)."""

    working_directory: str = "/tmp/grid"
    resource_sharing: dict = field(default_factory=dict, hash=False)
    extra: dict = field(default_factory=dict, hash=False)

    @property
    def thresholds(self) -> dict:
        return self.resource_sharing.get("thresholds") or {}

    @property
    def memory_pressure_high(self) -> float:
        """Pressure above which a node should offload (seed default 0.7)."""
        value = self.thresholds.get("memory_pressure_high")
        return 0.7 if value is None else float(value)

    @property
    def memory_pressure_low(self) -> float:
        """Pressure below which a node may take load (seed default 0.3)."""
        value = self.thresholds.get("memory_pressure_low")
        return 0.3 if value is None else float(value)

    @property
    def rebalance_interval_s(self) -> float:
        """Seconds between passes of ``grid rebalance --watch`` (seed default 30)."""
        value = self.resource_sharing.get("rebalance_interval_seconds")
        return 30.0 if value is None else float(value)

    @property
    def allocation_timeout_s(self) -> float:
        """How long a ``resource-sharing request`` reservation lives (seed default 10 min)."""
        value = self.resource_sharing.get("allocation_timeout_minutes")
        return 600.0 if value is None else float(value) * 60.0


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: tuple[NodeConfig, ...]
    mesh: MeshSettings = field(default_factory=MeshSettings)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # mesh/logconfig.py
    source: str = "<in memory>"  # the file it came from, or EMBEDDED_SOURCE; for messages
    raw: dict = field(default_factory=dict, hash=False, repr=False)  # the parsed YAML

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"{self.source}: unknown node {name!r} (known: {known})", node=name)

    def worker_nodes(self) -> tuple[NodeConfig, ...]:
        return tuple(n for n in self.nodes if n.role != "master")

    def master_node(self) -> NodeConfig | None:
        return next((n for n in self.nodes if n.role == "master"), None)

    def master_name(self) -> str:
        """The master's node name: the ``role: master`` node's, else this machine's host name."""
        node = self.master_node()
        return node.name if node is not None else socket.gethostname()

    @property
    def ray_address(self) -> str:
        """Where Ray's GCS is: the ``ray.address`` field, else ``auto`` (RAY_ADDRESS or the
        cluster started on this machine)."""
        section = self.raw.get("ray") if isinstance(self.raw, dict) else None
        value = section.get("address") if isinstance(section, dict) else None
        return "auto" if value is None else str(value)


# --- finding and loading ----------------------------------------------------------------------


def embedded_default_path() -> Path:
    """The local default shipped inside the package (three nodes on 127.0.0.1-3)."""
    return Path(__file__).with_name("default_cluster.yaml")


def load_cluster_config(path: str | os.PathLike) -> ClusterConfig:
    """Read, parse and check one cluster file. Every failure is a ``ConfigError`` naming it."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such cluster file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{source}: cannot read cluster file: {reason}") from None
    return _parse_text(text, source)


def resolve_config(path: str | os.PathLike | None = None) -> ClusterConfig:
    """The cluster config to use, first found of: ``path``, ``$GRID_CONFIG``,
    ``config/my-cluster-enhanced.yaml`` under the current directory, the embedded default.

    A path that is given (argument or a non-empty ``$GRID_CONFIG``) must exist; we never fall
    back silently from a file the user named.
    """
    if path is not None:
        return load_cluster_config(path)
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        if not Path(from_env).exists():
            raise ConfigError(f"{from_env}: no such cluster file (named by ${ENV_VAR})")
        return load_cluster_config(from_env)
    if LOCAL_CONFIG_PATH.is_file():
        return load_cluster_config(LOCAL_CONFIG_PATH)
    try:
        text = embedded_default_path().read_text(encoding="utf-8")
    except OSError as exc:  # a broken install
        raise ConfigError(f"{EMBEDDED_SOURCE}: cannot read {embedded_default_path()}: "
                          f"{exc.strerror or exc}") from None
    return _parse_text(text, EMBEDDED_SOURCE)


def _parse_text(text: str, source: str) -> ClusterConfig:
    try:
        # libyaml's parser where PyYAML has it: 2 ms for 100 nodes, against 16
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    return parse_config(data, source)


# --- checking ---------------------------------------------------------------------------------


def parse_config(data: Any, source: str) -> ClusterConfig:
    """Check parsed YAML (``data``) and build a ``ClusterConfig``; ``source`` names the file
    in error messages and is kept in ``ClusterConfig.source``."""
    try:
        return _parse_cluster(data, source)
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc.path}: {exc.problem}") from None
    except ConfigError as exc:  # from MeshSettings, which checks itself
        raise ConfigError(f"{source}: {exc.message}") from None


def _parse_cluster(data: Any, source: str) -> ClusterConfig:
    if data is None:
        raise _Invalid("top level", "the file is empty; expected a mapping with 'name' and 'nodes'")
    if not isinstance(data, dict):
        raise _Invalid("top level", f"expected a mapping, got {_describe(data)}")
    for key in ("name", "nodes"):
        if key not in data:
            raise _Invalid("top level", f"missing required field {key!r}")
    name = _check_string(data["name"], "name")

    mesh = _parse_mesh(data.get("mesh"))

    nodes_raw = data["nodes"]
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise _Invalid("nodes", f"expected a non-empty list of nodes, got {_describe(nodes_raw)}")
    nodes = tuple(_parse_node(item, f"nodes[{i}]", mesh.port) for i, item in enumerate(nodes_raw))
    _check_unique_names(nodes)
    nodes = _direct_ports(nodes)
    _check_addresses(nodes)

    execution = _parse_execution(data.get("execution"))
    ray_section = _mapping_or_empty(data.get("ray"), "ray")
    if ray_section.get("address") is not None:
        _check_string(ray_section["address"], "ray.address")
    logging_section = parse_logging(data.get("logging"))  # a ConfigError, as MeshSettings

    return ClusterConfig(
        name=name,
        nodes=nodes,
        mesh=mesh,
        execution=execution,
        logging=logging_section,
        source=source,
        raw=data,
    )


_MESH_FIELDS = tuple(f.name for f in fields(MeshSettings))
_MESH_SIZES = ("chunk_bytes", "host_reserve_bytes")


def _parse_mesh(section: Any) -> MeshSettings:
    values = _mapping_or_empty(section, "mesh")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _MESH_FIELDS:
            raise _Invalid(f"mesh.{key}", f"unknown key{_did_you_mean(key, _MESH_FIELDS)} "
                           f"(known: {', '.join(_MESH_FIELDS)})")
        if key in _MESH_SIZES and isinstance(value, (str, float)):
            try:
                value = parse_size(value)
            except InvalidSize as exc:
                raise _Invalid(f"mesh.{key}", str(exc)) from None
        elif key.endswith("_s") and _is_number(value):
            value = float(value)
        kwargs[key] = value
    return MeshSettings(**kwargs)  # checks itself; parse_config adds the file name


_NODE_FIELDS = (
    "name", "host", "port", "user", "role", "memory_gb", "cpu_count", "gpu_count", "tags",
    "resource_sharing", "mesh_host", "mesh_port", "metrics_port", "direct_port", "ssh_key", "deploy_dir", "python",
    "managed_by", "ssh",
)
_MANAGED_BY = ("auto", "local", "ssh")


def _parse_node(item: Any, where: str, default_mesh_port: int) -> NodeConfig:
    if not isinstance(item, dict):
        raise _Invalid(where, f"expected a mapping with at least 'name' and 'host', got {_describe(item)}")
    for key in ("name", "host"):
        if key not in item:
            raise _Invalid(where, f"missing required field {key!r}")

    def get(key: str, check, *args, default=None):
        value = item.get(key)
        return default if value is None else check(value, f"{where}.{key}", *args)

    host = _check_string(item["host"], f"{where}.host")
    return NodeConfig(
        name=_check_string(item["name"], f"{where}.name"),
        host=host,
        port=get("port", _check_int, 1, 65535, default=22),
        user=get("user", _check_string),
        role=get("role", _check_string, default="worker"),
        memory_gb=get("memory_gb", _check_number),
        cpu_count=get("cpu_count", _check_int, 0, None),
        gpu_count=get("gpu_count", _check_int, 0, None),
        tags=get("tags", _check_tags, default=()),
        resource_sharing=_parse_sharing(item.get("resource_sharing"), f"{where}.resource_sharing"),
        mesh_host=get("mesh_host", _check_string, default=host),
        mesh_port=get("mesh_port", _check_int, 1, MAX_MESH_PORT, default=default_mesh_port),
        metrics_port=get("metrics_port", _check_int, 0, 65535),
        direct_port=get("direct_port", _check_int, 0, 65535),
        ssh_key=get("ssh_key", _check_string),
        deploy_dir=get("deploy_dir", _check_string),
        python=get("python", _check_string, default="python3"),
        managed_by=get("managed_by", _check_choice, _MANAGED_BY, default="auto"),
        ssh=_mapping_or_empty(item.get("ssh"), f"{where}.ssh"),
        extra={k: v for k, v in item.items() if k not in _NODE_FIELDS},
    )


def _check_choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _Invalid(where, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _parse_sharing(section: Any, where: str) -> NodeSharing:
    values = _mapping_or_empty(section, where)
    can_share = values.get("can_share", True)
    if not isinstance(can_share, bool):
        raise _Invalid(f"{where}.can_share", f"expected true or false, got {can_share!r}")
    numbers = {}
    for key in ("max_share_memory_gb", "max_share_cpu", "max_share_gpu", "priority"):
        value = values.get(key)
        numbers[key] = None if value is None else _check_number(value, f"{where}.{key}")
    return NodeSharing(can_share=can_share, **numbers)


def _parse_execution(section: Any) -> ExecutionConfig:
    values = _mapping_or_empty(section, "execution")
    working_directory = values.get("working_directory")
    working_directory = ("/tmp/grid" if working_directory is None
                         else _check_string(working_directory, "execution.working_directory"))
    sharing = _mapping_or_empty(values.get("resource_sharing"), "execution.resource_sharing")
    where = "execution.resource_sharing.thresholds"
    thresholds = _mapping_or_empty(sharing.get("thresholds"), where)
    # Only the two thresholds the mesh reads are checked; the seed's other knobs are kept as-is.
    high = thresholds.get("memory_pressure_high")
    high = 0.7 if high is None else _check_number(high, f"{where}.memory_pressure_high")
    low = thresholds.get("memory_pressure_low")
    low = 0.3 if low is None else _check_number(low, f"{where}.memory_pressure_low")
    if high > 1:
        raise _Invalid(f"{where}.memory_pressure_high", f"expected a fraction in 0..1, got {high!r}")
    if not low < high:
        raise _Invalid(f"{where}.memory_pressure_low",
                       f"must be less than memory_pressure_high ({high}), got {low!r}")
    for key in ("rebalance_interval_seconds", "allocation_timeout_minutes"):
        value = sharing.get(key)
        if value is not None and _check_number(value, f"execution.resource_sharing.{key}") <= 0:
            raise _Invalid(f"execution.resource_sharing.{key}", f"must be > 0, got {value!r}")
    return ExecutionConfig(
        working_directory=working_directory,
        resource_sharing=sharing,
        extra={k: v for k, v in values.items() if k not in ("working_directory", "resource_sharing")},
    )


def _check_unique_names(nodes: tuple[NodeConfig, ...]) -> None:
    first_index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.name in first_index:
            raise _Invalid(f"nodes[{i}].name",
                           f"duplicate node name {node.name!r} (also nodes[{first_index[node.name]}])")
        first_index[node.name] = i


def _direct_ports(nodes: tuple[NodeConfig, ...]) -> tuple[NodeConfig, ...]:
    """Each node with its direct port settled: as given, else mesh_port + 3 when no agent of
    the file uses that port on the same host (data, gossip, metrics or a given direct port),
    else 0 (any free port)."""
    used = {(n.mesh_host, p) for n in nodes
            for p in (n.mesh_port, n.mesh_port + 1, n.metrics_port, n.direct_port) if p}
    out = []
    for n in nodes:
        if n.direct_port is None:
            port = n.mesh_port + 3
            n = replace(n, direct_port=port if port <= 65535 and (n.mesh_host, port) not in used
                        else 0)
        out.append(n)
    return tuple(out)


def _check_addresses(nodes: tuple[NodeConfig, ...]) -> None:
    """No two agents may bind the same port: each uses mesh_port (data), mesh_port + 1 (gossip),
    metrics_port (default mesh_port + 2) and direct_port (default mesh_port + 3) on mesh_host.
    Hosts are compared as written ("localhost" != "127.0.0.1")."""
    taken: dict[tuple[str, int], tuple[int, str]] = {}  # (host, port) -> (node index, use)
    for i, node in enumerate(nodes):
        host, port = node.mesh_host, node.mesh_port
        uses = [("data port", port, "nodes[{}].mesh_port"), ("gossip port", port + 1,
                "nodes[{}].mesh_port"), ("metrics port", node.metrics_port,
                                         "nodes[{}].metrics_port"),
                ("direct port", node.direct_port, "nodes[{}].direct_port")]
        for use, p, where in uses:
            if not p:
                continue
            j, other = taken.get((host, p), (None, ""))
            if j is not None:
                if use == other == "data port":
                    raise _Invalid(where.format(i), f"data address {node.data_address} is "
                                   f"already used by node {nodes[j].name!r} (nodes[{j}])")
                raise _Invalid(where.format(i), f"{use} {p}{_EXPR.get(use, '')} on {host} is the "
                               f"{other}{_EXPR.get(other, '')} of node {nodes[j].name!r} (nodes[{j}]); "
                               "agents on one host need mesh ports at least 3 apart (data, "
                               "gossip, metrics), or metrics_port set apart")
        for use, p, _ in uses:
            if p:
                taken[(host, p)] = (i, use)


_EXPR = {"gossip port": " (mesh_port + 1)", "metrics port": " (metrics_port)",
         "direct port": " (direct_port)"}
