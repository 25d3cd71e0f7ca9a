"""The real ``grid keys`` executable: init, add, list, revoke, and one-line errors.

The keys go to ``<GRID_STATE_DIR>/keys`` (the default) or to ``mesh.keys_dir`` of the cluster
file; both live under ``tmp_path``. ``revoke`` tells running agents (real ones, keyed), and with
none running says so in one line per node.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
import yaml
import zmq.auth
from support.cli import cli_env, grid
from support.mesh import free_port_pair, running_mesh

from mesh.client import MeshClient
from mesh.errors import MeshError

@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path)


def write_config(tmp_path: Path, n: int = 2, **mesh) -> str:
    nodes = []
    for i in range(n):
        host = f"127.0.0.{i + 1}"
        nodes.append({"name": f"n{i + 1}", "host": host, "memory_gb": 0.5,
                      "mesh_port": free_port_pair(host)})
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"name": "keys-cli", "nodes": nodes,
                                    "mesh": {"host_reserve_bytes": "256MiB", **mesh}}))
    return str(path)


def test_init_add_list_revoke(tmp_path, env):
    cfg = write_config(tmp_path)
    keys = tmp_path / "state" / "keys"
    r = grid("keys", "init", "-c", cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"cluster keys in {keys}" in r.stdout
    assert "made: agent n1, agent n2, client admin" in r.stdout
    assert "running agents must be restarted" in r.stdout
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700

    r = grid("keys", "init", "-c", cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "nothing to make" in r.stdout, r.stdout + r.stderr

    r = grid("keys", "add", "ro", "--role", "reader", "-c", cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    secret = keys / "clients" / "ro.key_secret"
    assert str(secret) in r.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(secret)[1] is not None

    out = tmp_path / "rw.secret"
    r = grid("keys", "add", "rw", "--role", "writer", "--output", str(out), "-c", cfg, env=env,
             cwd=tmp_path)
    assert r.returncode == 0 and str(out) in r.stdout, r.stdout + r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    r = grid("keys", "list", "-c", cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("n1", "n2", "admin", "ro", "rw"):
        assert name in r.stdout
    doc = json.loads(grid("keys", "list", "--json", "-c", cfg, env=env, cwd=tmp_path).stdout)
    assert [(k["name"], k["kind"], k["role"], k["status"]) for k in doc] == [
        ("n1", "agent", "agent", "active"), ("n2", "agent", "agent", "active"),
        ("admin", "client", "admin", "active"), ("ro", "client", "reader", "active"),
        ("rw", "client", "writer", "active")]
    public = {k["name"]: k["public"] for k in doc}
    assert public["rw"].encode() == zmq.auth.load_certificate(out)[0]

    r = grid("keys", "revoke", "rw", "-c", cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "revoked writer key rw" in r.stdout
    # no agent runs: each node gets its one line, and the files are revoked all the same
    lines = r.stderr.strip().splitlines()
    assert [x.split(":")[0] for x in lines] == ["! node n1 not told", "! node n2 not told"], lines
    assert all("reload the key files within a second anyway" in x for x in lines)
    assert "Traceback" not in r.stderr
    doc = json.loads(grid("keys", "list", "--json", "-c", cfg, env=env, cwd=tmp_path).stdout)
    assert {k["name"]: k["status"] for k in doc}["rw"] == "revoked"
    assert not (keys / "clients" / "rw.key").exists()


def test_keys_dir_of_the_cluster_file_is_used(tmp_path, env):
    cfg = write_config(tmp_path, keys_dir=str(tmp_path / "elsewhere"))
    r = grid("keys", "init", "-c", cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "elsewhere" / "agents" / "n1.key_secret").exists()
    assert not (tmp_path / "state" / "keys").exists()


def test_revoke_tells_the_running_agents_and_they_refuse_the_key(tmp_path, env):
    with running_mesh(tmp_path, n=2, keyed=True, connect_timeout_s=1.0) as mesh:
        cfg = str(mesh.config_path)
        r = grid("keys", "add", "gone", "--role", "writer", "-c", cfg, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        secret = tmp_path / "keys" / "clients" / "gone.key_secret"
        deadline = time.monotonic() + 5  # agents here reload the key files every second
        while True:
            try:
                with MeshClient(cfg, key=secret) as client:
                    assert client.ping(mesh.nodes[0].address, timeout_s=1.0)["node"] == "node1"
                break
            except MeshError:
                assert time.monotonic() < deadline, "the new key was never accepted"
                time.sleep(0.2)
        r = grid("keys", "revoke", "gone", "-c", cfg, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "node node1 told" in r.stdout and "node node2 told" in r.stdout, r.stdout + r.stderr
        assert r.stderr == ""
        revoked = tmp_path / "keys" / "revoked" / "gone.key_secret"
        with MeshClient(cfg, key=revoked) as client, pytest.raises(MeshError):
            client.ping(mesh.nodes[1].address, timeout_s=1.0)


@pytest.mark.parametrize("args, message", [
    (["keys", "list"], "no cluster keys here (run `grid keys init`)"),
    (["keys", "add", "x", "--role", "reader"], "no cluster keys here (run `grid keys init`)"),
    (["keys", "revoke", "x"], "no cluster keys here (run `grid keys init`)"),
    (["keys", "add", "a/b", "--role", "reader"], "bad key name 'a/b'"),
    (["keys", "add", "n1", "--role", "reader"], "'n1' is already used by an agent key"),
    (["keys", "add", "admin", "--role", "admin"], "'admin' is already used by a client key"),
    (["keys", "add", "x", "--role", "reader", "--output", "taken"], "taken: file exists"),
    (["keys", "revoke", "nobody"], "no client key 'nobody'"),
    (["keys", "revoke", "n2"], "'n2' is an agent key"),
    (["keys", "revoke", "admin"], "'admin' is the master's own key"),
    (["keys", "init", "-c", "missing.yaml"], "missing.yaml: no such cluster file"),
])
def test_user_mistakes_give_one_line_and_no_traceback(tmp_path, env, args, message):
    cfg = write_config(tmp_path)
    (tmp_path / "taken").write_text("mine")
    if "no cluster keys" not in message:
        assert grid("keys", "init", "-c", cfg, env=env, cwd=tmp_path).returncode == 0
    if "-c" not in args:
        args = [*args, "-c", cfg]
    r = grid(*args, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_bad_role_is_a_usage_error(tmp_path, env):
    cfg = write_config(tmp_path)
    assert grid("keys", "init", "-c", cfg, env=env, cwd=tmp_path).returncode == 0
    r = grid("keys", "add", "x", "--role", "root", "-c", cfg, env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert "Invalid value for '--role': 'root' is not one of 'reader', 'writer', 'admin'" in r.stderr
    assert "Traceback" not in r.stderr
