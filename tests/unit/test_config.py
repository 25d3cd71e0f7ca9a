"""Unit tests of cluster files (``mesh/config.py``): loading, resolution order, every check.

No sockets: files are written under ``tmp_path`` and read back.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from mesh.config import (
    EMBEDDED_SOURCE,
    ClusterConfig,
    ExecutionConfig,
    MeshSettings,
    NodeConfig,
    NodeSharing,
    embedded_default_path,
    load_cluster_config,
    parse_config,
    resolve_config,
)
from mesh.errors import ConfigError
from mesh.units import GiB, KiB, MiB

ROOT = Path(__file__).resolve().parents[2]
# the seeds' cluster file (the earlier design's my-cluster-enhanced.yaml), kept in the repository so
# no test depends on a file outside it
SEED = Path(__file__).resolve().parents[1] / "data" / "seed-cluster.yaml"

GOOD = {
    "name": "t",
    "nodes": [
        {"name": "a", "host": "127.0.0.1", "memory_gb": 2},
        {"name": "b", "host": "127.0.0.2", "memory_gb": 2},
    ],
}


def good() -> dict:
    return copy.deepcopy(GOOD)


def write(tmp_path: Path, data, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config_error(tmp_path: Path, data) -> str:
    """The message of the ConfigError that loading ``data`` from a file raises."""
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_cluster_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # always names the file first
    return message


# --- the seed file and the shipped files ------------------------------------------------------


@pytest.fixture
def seed() -> ClusterConfig:
    return load_cluster_config(SEED)


def test_seed_loads_unchanged(seed):
    assert seed.name == "my-cluster"
    assert seed.source == str(SEED)
    assert [n.name for n in seed.nodes] == ["gpu-master", "gpu1", "gpu2"]
    assert [n.name for n in seed.worker_nodes()] == ["gpu1", "gpu2"]
    assert seed.mesh == MeshSettings()  # no mesh: section, so every default


def test_seed_node_values(seed):
    master, gpu1, gpu2 = seed.nodes
    assert master.role == "master" and master.resource_sharing.can_share is False
    assert master.share_bytes == 0
    assert gpu1.share_bytes == 8 * GiB
    assert gpu2.share_bytes == 16 * GiB
    assert gpu1.port == 22 and gpu1.user == "mesh"
    assert (gpu1.cpu_count, gpu1.gpu_count, gpu1.memory_gb) == (6, 1, 16)
    assert gpu1.tags == ("gpu", "cuda", "worker")
    assert gpu1.resource_sharing == NodeSharing(True, 8, 8, 1, 0.8)
    assert gpu1.mesh_host == "gpu1" and gpu1.mesh_port == 7700
    assert gpu1.data_address == "tcp://gpu1:7700"
    assert gpu1.gossip_address == "tcp://gpu1:7701"
    assert gpu1.extra == {}


def test_seed_execution_and_logging(seed):
    ex = seed.execution
    assert ex.working_directory == "/tmp/grid"
    assert ex.memory_pressure_high == 0.7
    assert ex.memory_pressure_low == 0.3
    assert ex.resource_sharing["mode"] == "dynamic_balancing"
    assert ex.resource_sharing["priorities"]["worker_nodes"]["gpu2"] == 0.9
    assert ex.extra["timeout_seconds"] == 3600
    assert (seed.logging.format, seed.logging.level) == ("json", "INFO")  # mesh/logconfig.py
    assert seed.raw["execution"]["default_nodes"] == 3


def test_embedded_default():
    path = embedded_default_path()
    assert path.is_file() and path.parent.name == "mesh"
    cfg = parse_config(yaml.safe_load(path.read_text()), EMBEDDED_SOURCE)
    assert cfg.name == "local-mesh"
    assert [(n.name, n.host, n.role, n.port) for n in cfg.nodes] == [
        ("local-1", "127.0.0.1", "worker", 22),
        ("local-2", "127.0.0.2", "worker", 22),
        ("local-3", "127.0.0.3", "worker", 22),
    ]
    assert all(n.share_bytes == 4 * GiB for n in cfg.nodes)
    assert cfg.mesh == MeshSettings()  # the file spells out the defaults
    assert cfg.execution.memory_pressure_high == 0.7
    assert cfg.execution.memory_pressure_low == 0.3


def test_config_local_is_the_embedded_default():
    local = load_cluster_config(ROOT / "config" / "local.yaml")
    embedded = parse_config(yaml.safe_load(embedded_default_path().read_text()), EMBEDDED_SOURCE)
    assert local.raw == embedded.raw


def test_example_cluster_file():
    cfg = load_cluster_config(ROOT / "config" / "example-cluster.yaml")
    assert [n.name for n in cfg.nodes] == ["gpu-master", "gpu1", "gpu2"]
    assert cfg.node("gpu1").share_bytes == 8 * GiB
    assert cfg.node("gpu2").data_address == "tcp://gpu2:7710"
    assert cfg.node("gpu2").gossip_address == "tcp://gpu2:7711"
    assert cfg.mesh.chunk_bytes == 2 * MiB


# --- resolution order -------------------------------------------------------------------------


@pytest.fixture
def empty_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRID_CONFIG", raising=False)
    return tmp_path


def named(name: str) -> dict:
    data = good()
    data["name"] = name
    return data


def test_resolve_falls_back_to_embedded_default(empty_dir):
    cfg = resolve_config()
    assert cfg.source == EMBEDDED_SOURCE
    assert cfg.name == "local-mesh"
    assert [n.host for n in cfg.nodes] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def test_resolve_prefers_config_dir_over_default(empty_dir):
    (empty_dir / "config").mkdir()
    write(empty_dir / "config", named("from-cwd"), "my-cluster-enhanced.yaml")
    assert resolve_config().name == "from-cwd"


def test_resolve_prefers_env_over_config_dir(empty_dir, monkeypatch):
    (empty_dir / "config").mkdir()
    write(empty_dir / "config", named("from-cwd"), "my-cluster-enhanced.yaml")
    env_file = write(empty_dir, named("from-env"), "env.yaml")
    monkeypatch.setenv("GRID_CONFIG", str(env_file))
    cfg = resolve_config()
    assert cfg.name == "from-env" and cfg.source == str(env_file)


def test_resolve_prefers_explicit_path_over_env(empty_dir, monkeypatch):
    monkeypatch.setenv("GRID_CONFIG", str(write(empty_dir, named("from-env"), "env.yaml")))
    explicit = write(empty_dir, named("explicit"), "explicit.yaml")
    assert resolve_config(explicit).name == "explicit"
    assert resolve_config(str(explicit)).name == "explicit"


def test_resolve_empty_env_is_unset(empty_dir, monkeypatch):
    monkeypatch.setenv("GRID_CONFIG", "")
    assert resolve_config().source == EMBEDDED_SOURCE


def test_resolve_env_naming_a_missing_file_is_an_error(empty_dir, monkeypatch):
    monkeypatch.setenv("GRID_CONFIG", str(empty_dir / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"nope\.yaml.*GRID_CONFIG"):
        resolve_config()


def test_resolve_explicit_missing_file_is_an_error(empty_dir):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such cluster file"):
        resolve_config(empty_dir / "nope.yaml")


# --- reading the file -------------------------------------------------------------------------


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read cluster file"):
        load_cluster_config(tmp_path)  # a directory


def test_invalid_yaml_names_file_and_line(tmp_path):
    message = config_error(tmp_path, "name: t\nnodes: [\n  {name: a\n")
    assert "invalid YAML at line" in message


def test_empty_file(tmp_path):
    assert "top level: the file is empty" in config_error(tmp_path, "")


def test_node_lookup(tmp_path):
    cfg = load_cluster_config(write(tmp_path, good()))
    assert cfg.node("b").host == "127.0.0.2"
    with pytest.raises(ConfigError) as info:
        cfg.node("zz")
    assert "unknown node 'zz' (known: a, b)" in str(info.value)
    assert "x.yaml" in str(info.value)


def test_unknown_node_keys_are_kept(tmp_path):
    data = good()
    data["nodes"][0]["rack"] = "r7"
    data["nodes"][0]["ssh_key"] = "~/.ssh/mesh"
    node = load_cluster_config(write(tmp_path, data)).nodes[0]
    assert node.extra == {"rack": "r7"}
    assert node.ssh_key == "~/.ssh/mesh"


def test_mesh_section_sizes_and_overrides(tmp_path):
    data = good()
    data["mesh"] = {"port": 9000, "chunk_bytes": "1MiB", "host_reserve_bytes": "256MiB",
                    "window": 4, "request_timeout_s": 60, "insecure": True, "state_dir": "/var/mesh"}
    data["nodes"][1]["mesh_port"] = 9100
    data["nodes"][1]["mesh_host"] = "10.0.0.2"
    cfg = load_cluster_config(write(tmp_path, data))
    m = cfg.mesh
    assert (m.port, m.chunk_bytes, m.host_reserve_bytes, m.window) == (9000, MiB, 256 * MiB, 4)
    assert m.request_timeout_s == 60.0 and isinstance(m.request_timeout_s, float)
    assert m.max_message_bytes == 2 * MiB
    assert m.insecure is True and m.state_dir == "/var/mesh"
    assert cfg.nodes[0].data_address == "tcp://127.0.0.1:9000"  # mesh.port is the node default
    assert cfg.nodes[1].data_address == "tcp://10.0.0.2:9100"
    assert cfg.nodes[1].gossip_address == "tcp://10.0.0.2:9101"


def test_share_bytes_rules():
    assert NodeConfig("n", "h").share_bytes is None  # only host RAM limits it
    assert NodeConfig("n", "h", memory_gb=2).share_bytes == 2 * GiB
    assert NodeConfig("n", "h", memory_gb=2.5).share_bytes == 5 * GiB // 2
    limited = NodeSharing(max_share_memory_gb=1)
    assert NodeConfig("n", "h", memory_gb=2, resource_sharing=limited).share_bytes == GiB
    off = NodeSharing(can_share=False, max_share_memory_gb=1)
    assert NodeConfig("n", "h", memory_gb=2, resource_sharing=off).share_bytes == 0


def test_node_config_mesh_host_defaults_to_host():
    node = NodeConfig("n", "box")
    assert node.mesh_host == "box" and node.data_address == "tcp://box:7700"


def test_execution_defaults():
    ex = ExecutionConfig()
    assert (ex.working_directory, ex.memory_pressure_high, ex.memory_pressure_low) == ("/tmp/grid", 0.7, 0.3)


def test_mesh_settings_check_themselves_on_replace():
    with pytest.raises(ConfigError, match=r"^mesh\.window: expected an integer in 1\.\.64, got 0$"):
        dataclasses.replace(MeshSettings(), window=0)
    assert dataclasses.replace(MeshSettings(), window=16).window == 16


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MeshSettings().port = 1  # type: ignore[misc]


# --- every check: one ConfigError naming the file and the field -------------------------------


def _set(path: str, value):
    """A change to GOOD: set ``path`` (dots and [i]) to ``value``; ``...`` deletes it."""

    def change(data: dict) -> dict:
        parts = path.replace("[", ".").replace("]", "").split(".")
        target = data
        for part in parts[:-1]:
            key = int(part) if part.isdigit() else part
            if isinstance(target, dict) and key not in target:
                target[key] = {}
            target = target[key]
        last = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value is ...:
            del target[last]
        else:
            target[last] = value
        return data

    return change


BAD = [
    # (change to GOOD, expected fragment after "<file>: ")
    (lambda d: ["not", "a", "mapping"], "top level: expected a mapping, got a list"),
    (_set("nodes", ...), "top level: missing required field 'nodes'"),
    (_set("name", ...), "top level: missing required field 'name'"),
    (_set("name", ""), "name: expected a non-empty string, got ''"),
    (_set("name", 7), "name: expected a non-empty string, got 7"),
    (_set("nodes", []), "nodes: expected a non-empty list of nodes, got a list"),
    (_set("nodes", {"a": 1}), "nodes: expected a non-empty list of nodes, got a dict"),
    (_set("nodes[1]", "b"), "nodes[1]: expected a mapping"),
    (_set("nodes[0].host", ...), "nodes[0]: missing required field 'host'"),
    (_set("nodes[1].name", ...), "nodes[1]: missing required field 'name'"),
    (_set("nodes[1].host", ""), "nodes[1].host: expected a non-empty string, got ''"),
    (_set("nodes[1].name", "a"), "nodes[1].name: duplicate node name 'a' (also nodes[0])"),
    (_set("nodes[1].memory_gb", "abc"), "nodes[1].memory_gb: expected a number >= 0, got 'abc'"),
    (_set("nodes[1].memory_gb", -1), "nodes[1].memory_gb: expected a number >= 0, got -1"),
    (_set("nodes[1].memory_gb", True), "nodes[1].memory_gb: expected a number >= 0, got True"),
    (_set("nodes[0].cpu_count", 2.5), "nodes[0].cpu_count: expected an integer >= 0, got 2.5"),
    (_set("nodes[0].gpu_count", -1), "nodes[0].gpu_count: expected an integer >= 0, got -1"),
    (_set("nodes[0].port", 0), "nodes[0].port: expected an integer in 1..65535, got 0"),
    (_set("nodes[0].port", 70000), "nodes[0].port: expected an integer in 1..65535, got 70000"),
    (_set("nodes[0].port", True), "nodes[0].port: expected an integer in 1..65535, got True"),
    (_set("nodes[0].port", "22"), "nodes[0].port: expected an integer in 1..65535, got '22'"),
    (_set("nodes[0].mesh_port", 65535), "nodes[0].mesh_port: expected an integer in 1..65534"),
    (_set("nodes[0].tags", "gpu"), "nodes[0].tags: expected a list of strings, got 'gpu'"),
    (_set("nodes[0].tags", ["gpu", 3]), "nodes[0].tags: expected a list of strings"),
    (_set("nodes[0].resource_sharing", [1]), "nodes[0].resource_sharing: expected a mapping"),
    (_set("nodes[0].resource_sharing.can_share", "yes please"),
     "nodes[0].resource_sharing.can_share: expected true or false, got 'yes please'"),
    (_set("nodes[0].resource_sharing.max_share_memory_gb", -2),
     "nodes[0].resource_sharing.max_share_memory_gb: expected a number >= 0, got -2"),
    (_set("nodes[1].host", "127.0.0.1"),
     "nodes[1].mesh_port: data address tcp://127.0.0.1:7700 is already used by node 'a' (nodes[0])"),
    (lambda d: _set("nodes[1].mesh_port", 7701)(_set("nodes[1].host", "127.0.0.1")(d)),
     "nodes[1].mesh_port: data port 7701 on 127.0.0.1 is the gossip port (mesh_port + 1) of node 'a'"),
    (lambda d: _set("nodes[1].mesh_port", 7699)(_set("nodes[1].host", "127.0.0.1")(d)),
     "nodes[1].mesh_port: gossip port 7700 (mesh_port + 1) on 127.0.0.1 is the data port of node 'a'"),
    (lambda d: _set("nodes[1].mesh_port", 7702)(_set("nodes[1].host", "127.0.0.1")(d)),
     "nodes[1].mesh_port: data port 7702 on 127.0.0.1 is the metrics port (metrics_port) of "
     "node 'a' (nodes[0]); agents on one host need mesh ports at least 3 apart"),
    (lambda d: _set("nodes[1].metrics_port", 7701)(_set("nodes[1].mesh_port", 7800)(
        _set("nodes[1].host", "127.0.0.1")(d))),
     "nodes[1].metrics_port: metrics port 7701 (metrics_port) on 127.0.0.1 is the gossip port "
     "(mesh_port + 1) of node 'a'"),
    (_set("nodes[0].metrics_port", 70000), "nodes[0].metrics_port: expected an integer in "
     "0..65535, got 70000"),
    (lambda d: _set("nodes[1].mesh_host", "127.0.0.1")(d),
     "nodes[1].mesh_port: data address tcp://127.0.0.1:7700 is already used"),
    (_set("mesh", [1]), "mesh: expected a mapping, got a list"),
    (_set("mesh.chunk_byte", "4MiB"), "mesh.chunk_byte: unknown key (did you mean 'chunk_bytes'?)"),
    (_set("mesh.chunk_bytes", "4 parsecs"), "mesh.chunk_bytes: invalid size '4 parsecs'"),
    (_set("mesh.chunk_bytes", "1KiB"), "mesh.chunk_bytes: expected an integer in 64KiB..64MiB, got 1024"),
    (_set("mesh.chunk_bytes", "128MiB"), "mesh.chunk_bytes: expected an integer in 64KiB..64MiB"),
    (_set("mesh.window", 0), "mesh.window: expected an integer in 1..64, got 0"),
    (_set("mesh.window", 65), "mesh.window: expected an integer in 1..64, got 65"),
    (_set("mesh.port", "7700"), "mesh.port: expected an integer in 1..65534, got '7700'"),
    (_set("mesh.heartbeat_interval_s", 0), "mesh.heartbeat_interval_s: expected a number of seconds > 0"),
    (_set("mesh.suspect_after_s", 0.4),
     "mesh.suspect_after_s: must be greater than heartbeat_interval_s (0.5), got 0.4"),
    (_set("mesh.dead_after_s", 1.5), "mesh.dead_after_s: must be greater than suspect_after_s (1.5), got 1.5"),
    (_set("mesh.request_timeout_s", -1), "mesh.request_timeout_s: expected a number of seconds > 0, got -1"),
    (_set("mesh.host_reserve_bytes", -1), "mesh.host_reserve_bytes: expected an integer >= 0, got -1"),
    (_set("mesh.host_reserve_bytes", "-1GiB"), "mesh.host_reserve_bytes: invalid size '-1GiB'"),
    (_set("mesh.insecure", "no"), "mesh.insecure: expected true or false, got 'no'"),
    (_set("execution", "fast"), "execution: expected a mapping, got 'fast'"),
    (_set("execution.working_directory", ""), "execution.working_directory: expected a non-empty string"),
    (_set("execution.resource_sharing.thresholds.memory_pressure_high", "high"),
     "execution.resource_sharing.thresholds.memory_pressure_high: expected a number >= 0, got 'high'"),
    (_set("execution.resource_sharing.thresholds.memory_pressure_high", 7),
     "execution.resource_sharing.thresholds.memory_pressure_high: expected a fraction in 0..1, got 7"),
    (_set("execution.resource_sharing.thresholds.memory_pressure_low", 0.9),
     "execution.resource_sharing.thresholds.memory_pressure_low: must be less than memory_pressure_high"),
    (_set("logging", "loud"), "logging: expected a mapping, got 'loud'"),
]


@pytest.mark.parametrize("change, fragment", BAD, ids=[b[1].split(":")[0] + f"-{i}" for i, b in enumerate(BAD)])
def test_validation_errors(tmp_path, change, fragment):
    message = config_error(tmp_path, change(good()))
    path = tmp_path / "x.yaml"
    assert f"{path}: {fragment}" in message


def test_good_config_loads(tmp_path):
    # The base of every case above must itself be valid.
    cfg = load_cluster_config(write(tmp_path, good()))
    assert [n.name for n in cfg.nodes] == ["a", "b"]


def test_agents_on_one_host_three_ports_apart_are_fine(tmp_path):
    data = good()
    for i, node in enumerate(data["nodes"]):
        node["host"] = "127.0.0.1"
        node["mesh_port"] = 7700 + 3 * i
    cfg = load_cluster_config(write(tmp_path, data))
    assert [n.data_address for n in cfg.nodes] == ["tcp://127.0.0.1:7700", "tcp://127.0.0.1:7703"]
    assert [n.metrics_port for n in cfg.nodes] == [7702, 7705]


def test_metrics_port_zero_turns_metrics_off_and_frees_the_port(tmp_path):
    data = good()
    for i, node in enumerate(data["nodes"]):
        node["host"] = "127.0.0.1"
        node["mesh_port"] = 7700 + 2 * i
    data["nodes"][0]["metrics_port"] = 0
    cfg = load_cluster_config(write(tmp_path, data))
    assert [n.metrics_port for n in cfg.nodes] == [0, 7704]


def test_parse_config_source_is_used_verbatim():
    with pytest.raises(ConfigError, match=r"^config/x\.yaml: nodes\[1\]\.memory_gb: expected a number >= 0, got 'abc'$"):
        parse_config(_set("nodes[1].memory_gb", "abc")(good()), "config/x.yaml")


def test_chunk_bytes_bounds_are_inclusive():
    assert MeshSettings(chunk_bytes=64 * KiB).chunk_bytes == 64 * KiB
    assert MeshSettings(chunk_bytes=64 * MiB).max_message_bytes == 65 * MiB


def test_the_direct_port_is_mesh_port_plus_3_unless_another_agent_uses_it(tmp_path):
    data = good()
    for i, node in enumerate(data["nodes"]):
        node["host"] = "127.0.0.1"
        node["mesh_port"] = 7700 + 4 * i
    assert [n.direct_port for n in load_cluster_config(write(tmp_path, data)).nodes] == \
        [7703, 7707]
    for i, node in enumerate(data["nodes"]):  # three apart: 7703 is b's data port, so any
        node["mesh_port"] = 7700 + 3 * i
    assert [n.direct_port for n in load_cluster_config(write(tmp_path, data)).nodes] == [0, 7706]
    data["nodes"][1]["direct_port"] = 7700  # given, and a's data port: refused
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.direct_port: direct port 7700 "
                                          r"\(direct_port\) on 127.0.0.1 is the data port"):
        load_cluster_config(write(tmp_path, data))
