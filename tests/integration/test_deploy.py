"""`grid agents deploy/start/restart/status/logs/stop` over real SSH to three sshd "hosts".

Each host is its own sshd on 127.0.0.x with throw-away keys (tests/support/sshd.py); the agents are
installed into a fresh virtual environment per host from a wheel built from this checkout.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from support.mesh import ROOT, free_port_pair
from mesh.client import MeshClient
from mesh.errors import MeshError
from support.sshd import SshHosts

# the module's tests share deployed hosts (a module fixture): keep them on one xdist worker
pytestmark = pytest.mark.xdist_group("deploy")

GRID = Path(sys.executable).parent / "grid"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def grid(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRID), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def node_entry(h, deploy_dir: Path, **over) -> dict:
    entry = {"name": h.name, "host": h.address, "port": h.port, "user": h.user,
             "ssh_key": str(h.key_path), "managed_by": "ssh", "python": BASE_PYTHON,
             "deploy_dir": str(deploy_dir), "mesh_port": free_port_pair(h.address),
             "memory_gb": 0.5, "ssh": {"timeout": 5}}
    entry.update(over)
    return entry


def write_cfg(path: Path, nodes: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "ssh-test", "nodes": nodes,
        "mesh": {"host_reserve_bytes": "256MiB", "connect_timeout_s": 1.0},
    }))
    return path


def agents_under(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "agents.main" in cmd and str(path) in cmd:
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssh")
    with SshHosts(tmp, n=3) as hosts:
        hosts.start()
        nodes = [node_entry(h, h.workdir / "mesh") for h in hosts.hosts]
        cfg = write_cfg(tmp / "cluster.yaml", nodes)
        env = {k: v for k, v in __import__("os").environ.items() if k != "GRID_CONFIG"}
        env.update(GRID_STATE_DIR=str(tmp / "state"), COLUMNS="200")
        try:
            yield hosts, cfg, env, tmp
        finally:
            grid("agents", "stop", "-c", str(cfg), env=env, timeout=120)
            for proc in agents_under(tmp):
                proc.kill()


def test_deploy_start_use_restart_and_stop(cluster):
    hosts, cfg, env, tmp = cluster
    r = grid("agents", "deploy", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("installed") == 3
    for h in hosts.hosts:
        conf = h.workdir / "mesh" / "cluster.yaml"
        assert conf.stat().st_mode & 0o777 == 0o600
        assert (h.workdir / "mesh" / "venv" / "bin" / "mesh-agent").exists()

    r = grid("agents", "deploy", "-c", str(cfg), env=env)
    assert r.returncode == 0 and r.stdout.count("up to date") == 3, r.stdout + r.stderr

    r = grid("agents", "start", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("started") == 3

    def use_the_mesh():
        with MeshClient(cfg) as c:
            deadline = time.monotonic() + 15
            while {n.name for n in c.nodes() if n.state == "alive"} != {"host1", "host2", "host3"}:
                assert time.monotonic() < deadline, c.nodes()
                time.sleep(0.2)
            for h in hosts.hosts:
                block = c.allocate(3 * 1024 * 1024 + 5, node=h.name)
                payload = bytes(range(256)) * 12289
                c.write(block, payload[: 3 * 1024 * 1024 + 5])
                assert c.read(block) == payload[: 3 * 1024 * 1024 + 5]
                c.free(block)

    use_the_mesh()
    doc = json.loads(grid("agents", "status", "-c", str(cfg), "--json", env=env).stdout)
    for row in doc["nodes"]:
        assert row["state"] == "alive" and row["managed_by"] == "ssh"
        assert row["pid"] and row["uptime_s"] is not None and row["version"]

    # the agents survive the SSH sessions that started them, in their own sessions
    assert len(agents_under(tmp)) == 3

    r = grid("agents", "restart", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    use_the_mesh()

    r = grid("agents", "logs", "-c", str(cfg), "--node", "host2", env=env)
    assert r.returncode == 0 and "agent host2 serving" in r.stdout

    r = grid("agents", "stop", "-c", str(cfg), env=env)
    assert r.returncode == 0 and r.stdout.count("stopped") == 3, r.stdout + r.stderr
    deadline = time.monotonic() + 10
    while agents_under(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agents_under(tmp) == []


def test_unreachable_host_wrong_key_and_no_python_fail_alone(cluster):
    hosts, cfg, env, tmp = cluster
    good = yaml.safe_load(cfg.read_text())["nodes"][0]
    h2 = hosts.hosts[1]
    wrong = node_entry(h2, tmp / "wrong", name="wrongkey", ssh_key=str(hosts.wrong_key_path))
    gone = node_entry(h2, tmp / "gone", name="gone", host="127.0.0.9",
                      port=free_port_pair("127.0.0.9"))
    nopy = node_entry(h2, tmp / "nopy", name="nopy", python="/nonexistent/python3.11")
    bad = write_cfg(tmp / "bad.yaml", [good, wrong, gone, nopy])
    r = grid("agents", "deploy", "-c", str(bad), env=env)
    assert r.returncode == 1
    assert "host1: " in r.stdout  # the good node went ahead
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, r.stderr
    assert any("nopy: no Python 3.11+ on nopy" in x for x in lines), r.stderr
    assert any("wrongkey: authentication refused" in x for x in lines), r.stderr
    assert any("gone: host unreachable" in x for x in lines), r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_wheelhouse_install_without_any_index(cluster):
    hosts, cfg, env, tmp = cluster
    house = tmp / "wheelhouse"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    h = hosts.hosts[2]
    offline = write_cfg(tmp / "offline.yaml", [node_entry(h, h.workdir / "offline")])
    r = grid("agents", "deploy", "-c", str(offline), "--wheelhouse", str(house), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "from the wheelhouse (no package index)" in r.stdout
    # a node gets the base install only: the client library and the agent, no CLI, no Fabric
    venv = h.workdir / "offline" / "venv" / "bin"
    check = subprocess.run([str(venv / "python"), "-c",
                            "import importlib.util as u, mesh, zmq; from mesh import MeshClient;"
                            "print([m for m in ('click', 'rich', 'fabric', 'ray', 'numpy') "
                            "if u.find_spec(m)])"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "[]"
    lean = subprocess.run([str(venv / "grid"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert lean.returncode == 1 and lean.stdout == ""
    assert lean.stderr.splitlines() == [
        "grid: the command line needs click, which comes with the cli extra: "
        "pip install 'memory-mesh[cli]'"]


def test_systemd_start_is_refused_clearly_where_there_is_no_systemd(cluster):
    hosts, cfg, env, tmp = cluster
    if Path("/run/systemd/system").is_dir():
        pytest.skip("this machine runs systemd; the refusal path needs one that does not")
    r = grid("agents", "start", "-c", str(cfg), "--node", "host1", "--systemd", env=env)
    assert r.returncode == 1
    assert "host1: this node has no running systemd" in r.stderr
    assert "Traceback" not in r.stderr


def test_memory_stats_says_why_a_node_is_down(cluster):
    hosts, cfg, env, tmp = cluster
    r = grid("memory", "stats", "-c", str(cfg), "--json", env=env, timeout=60)
    # the agents are stopped by now: every node is in the config but unheard of
    assert r.returncode == 1 and "no mesh agent answered" in r.stderr
    assert grid("agents", "start", "-c", str(cfg), "--node", "host1", env=env).returncode == 0
    try:
        doc = json.loads(grid("memory", "stats", "-c", str(cfg), "--json", env=env).stdout)
        rows = {n["node"]: n for n in doc["nodes"]}
        assert rows["host1"]["state"] == "alive" and rows["host1"]["reason"] is None
        assert rows["host2"]["state"] == "down"
        assert "no agent has heard from it" in rows["host2"]["reason"]
    finally:
        grid("agents", "stop", "-c", str(cfg), "--node", "host1", env=env)


def test_deploy_carries_each_node_its_own_secret_and_the_public_keys(cluster):
    hosts, _, env, tmp = cluster
    master_keys = tmp / "cluster-keys"  # not tmp/keys: the sshd fixture keeps its keys there
    nodes = [node_entry(h, h.workdir / "keyed") for h in hosts.hosts[:2]]
    cfg = tmp / "keyed.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ssh-keyed", "nodes": nodes,
        "mesh": {"host_reserve_bytes": "256MiB", "keys_dir": str(master_keys)}}))
    for args in (["init"], ["add", "reader1", "--role", "reader"]):
        r = grid("keys", *args, "-c", str(cfg), env=env)
        assert r.returncode == 0, r.stdout + r.stderr

    def node_files(base: Path) -> dict[str, int]:
        return {str(p.relative_to(base)): p.stat().st_mode & 0o777 for p in base.rglob("*")}

    def check(publics: set[str]) -> None:
        for h in hosts.hosts[:2]:
            base = h.workdir / "keyed"
            keys = base / "keys"
            wanted = {"agents": 0o700, "clients": 0o700, f"agents/{h.name}.key_secret": 0o600,
                      **{p: 0o644 for p in publics}}
            assert node_files(keys) == wanted, h.name
            assert stat.S_IMODE(keys.stat().st_mode) == 0o700
            for rel in wanted:
                if rel.endswith((".key", ".key_secret")):
                    assert (keys / rel).read_bytes() == (master_keys / rel).read_bytes(), rel
            assert not (base / "keys.new").exists()
            on_node = yaml.safe_load((base / "cluster.yaml").read_text())
            assert on_node["mesh"]["keys_dir"] == str(keys)
            # nodectl starts the agent with --keys DIR/keys (run with the node's own install)
            told = subprocess.run(
                [str(base / "venv" / "bin" / "python"), "-c",
                 "import sys; from pathlib import Path; from mesh.nodes.nodectl import agent_args;"
                 "print(agent_args(Path(sys.argv[1])))", str(base)],
                capture_output=True, text=True, timeout=60)
            assert told.stdout.strip() == str(["--keys", str(keys)]), told.stderr

    agents_public = {"agents/host1.key", "agents/host2.key"}
    r = grid("agents", "deploy", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("keys carried") == 2
    check(agents_public | {"clients/admin.key", "clients/reader1.key"})

    # the agents started there run with those keys: the master's admin key gets in
    r = grid("agents", "start", "-c", str(cfg), env=env)
    try:
        assert r.returncode == 0 and r.stdout.count("started") == 2, r.stdout + r.stderr
        with MeshClient(cfg) as c:
            deadline = time.monotonic() + 15
            while {n.name for n in c.nodes() if n.state == "alive"} != {"host1", "host2"}:
                assert time.monotonic() < deadline, c.nodes()
                time.sleep(0.2)
            block = c.allocate(1000, node="host2")
            c.write(block, b"k" * 1000)
            assert c.read(block) == b"k" * 1000
            c.free(block)
            assert {n.name: n.security for n in c.nodes()} == {"host1": "keyed", "host2": "keyed"}
        # a client without a key is refused
        with MeshClient(address=nodes[0]["host"] + f":{nodes[0]['mesh_port']}") as c:
            with pytest.raises(MeshError):
                c.ping(timeout_s=2.0)
    finally:
        r = grid("agents", "stop", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stdout + r.stderr

    # the same keys are not carried again (the code may be: this checkout can change meanwhile)
    r = grid("agents", "deploy", "-c", str(cfg), env=env)
    assert r.returncode == 0 and "keys carried" not in r.stdout, r.stdout + r.stderr

    # a revoked key leaves the nodes with the next deploy; so does anything else found there
    assert grid("keys", "revoke", "reader1", "-c", str(cfg), env=env).returncode == 0
    (hosts.hosts[0].workdir / "keyed" / "keys" / "stray").write_text("not a key")
    r = grid("agents", "deploy", "-c", str(cfg), env=env)
    assert r.returncode == 0 and r.stdout.count("keys carried") == 2, r.stdout + r.stderr
    check(agents_public | {"clients/admin.key"})


# --- without the deploy extra -------------------------------------------------------------------

NO_FABRIC = ("import sys; sys.modules['fabric'] = None; sys.argv[0] = 'grid';"
             "from mesh.cli import main; main()")


def grid_without_fabric(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if k != "GRID_CONFIG"}
    env.update(GRID_STATE_DIR=str(tmp / "state"), COLUMNS="200")
    return subprocess.run([sys.executable, "-c", NO_FABRIC, *args], capture_output=True,
                          text=True, env=env, cwd=tmp, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [["deploy"], ["start"], ["status"], ["status", "--json"],
                                     ["logs"], ["stop"], ["restart"]])
def test_without_fabric_ssh_commands_say_how_to_install_it(tmp_path, command):
    host = "127.0.0.1"
    cfg = write_cfg(tmp_path / "c.yaml", [
        {"name": "here", "host": host, "mesh_port": free_port_pair(host), "memory_gb": 0.5},
        {"name": "far", "host": "127.0.0.9", "managed_by": "ssh", "memory_gb": 0.5}])
    r = grid_without_fabric(tmp_path, "agents", *command, "-c", str(cfg))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""  # stopped before anything was done, the local node included
    message = ("managing node far over SSH needs fabric, which comes with the deploy extra: "
               "pip install 'memory-mesh[deploy]'")
    if "--json" in command:  # one JSON error line (docs/memory-cli.md, "Exit codes")
        (line,) = r.stderr.splitlines()
        assert json.loads(line)["error"] == {"type": "MissingExtra", "message": message,
                                             "node": None}
    else:
        assert r.stderr.splitlines() == [f"✗ {message}"]
    assert list((tmp_path / "state").glob("*.pid")) == []


def test_without_fabric_local_nodes_need_nothing_more(tmp_path):
    host = "127.0.0.1"
    cfg = write_cfg(tmp_path / "c.yaml", [
        {"name": "here", "host": host, "mesh_port": free_port_pair(host), "memory_gb": 0.5}])
    r = grid_without_fabric(tmp_path, "agents", "status", "--json", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    row = json.loads(r.stdout)["nodes"][0]
    assert row["node"] == "here" and row["managed_by"] == "local" and row["state"] == "down"
