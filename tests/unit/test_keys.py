"""Unit tests of the cluster keys (``mesh/security/keys.py``): the files, their modes, the entries
agents accept, revocation, what a node gets, and which key a client uses.

No sockets: every keys directory lives under ``tmp_path`` (named by ``mesh.keys_dir``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq.auth

from mesh.config import parse_config
from mesh.errors import ConfigError
from mesh.security.keys import (
    DEFAULT_CLIENT,
    ROLES,
    KeyDir,
    KeyEntry,
    find_client_key,
    keys_dir,
    load_client_key,
)


def cluster(tmp_path: Path, names=("n1", "n2", "n3"), **mesh):
    nodes = [{"name": n, "host": f"127.0.0.{i + 1}", "mesh_port": 7700 + 2 * i}
             for i, n in enumerate(names)]
    return parse_config({"name": "keys-test", "nodes": nodes,
                         "mesh": {"keys_dir": str(tmp_path / "keys"), **mesh}}, "test.yaml")


@pytest.fixture
def cfg(tmp_path):
    return cluster(tmp_path)


@pytest.fixture
def kd(cfg):
    d = KeyDir(keys_dir(cfg))
    d.init(cfg)
    return d


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --- where ----------------------------------------------------------------------------------------


def test_keys_dir_is_the_configured_one_else_under_the_state_dir(tmp_path):
    assert keys_dir(cluster(tmp_path)) == tmp_path / "keys"
    assert keys_dir(cluster(tmp_path, keys_dir="~/k")) == Path.home() / "k"
    plain = parse_config({"name": "k", "nodes": [{"name": "a", "host": "127.0.0.1"}],
                          "mesh": {"state_dir": str(tmp_path / "state")}}, "x.yaml")
    assert keys_dir(plain) == tmp_path / "state" / "keys"


def test_keys_dir_in_the_cluster_file_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"^x.yaml: mesh.keys_dir: expected a non-empty string"):
        parse_config({"name": "k", "nodes": [{"name": "a", "host": "h"}], "mesh": {"keys_dir": 3}},
                     "x.yaml")


# --- init -----------------------------------------------------------------------------------------


def test_init_makes_one_key_per_node_and_the_admin_key_with_private_modes(cfg):
    kd = KeyDir(keys_dir(cfg))
    assert not kd.exists()
    made = kd.init(cfg)
    assert made == ["agent n1", "agent n2", "agent n3", f"client {DEFAULT_CLIENT}"]
    assert kd.exists()
    assert files(kd.path) == {
        *(f"agents/{n}.key{s}" for n in ("n1", "n2", "n3") for s in ("", "_secret")),
        "clients/admin.key", "clients/admin.key_secret"}
    for d in (kd.path, kd.path / "agents", kd.path / "clients", kd.path / "revoked"):
        assert mode(d) == 0o700
    for path in kd.path.rglob("*.key_secret"):
        assert mode(path) == 0o600, path
        public, secret = zmq.auth.load_certificate(path)
        assert len(public) == 40 and len(secret) == 40
    for path in kd.path.rglob("*.key"):
        public, secret = zmq.auth.load_certificate(path)
        assert len(public) == 40 and secret is None
        # the pair's two files hold the same public key
        assert zmq.auth.load_certificate(path.with_suffix(".key_secret"))[0] == public


def test_init_is_idempotent_and_adds_only_what_is_missing(tmp_path, cfg, kd):
    before = {p: p.read_bytes() for p in kd.path.rglob("*") if p.is_file()}
    assert kd.init(cfg) == []
    assert {p: p.read_bytes() for p in kd.path.rglob("*") if p.is_file()} == before
    bigger = cluster(tmp_path, names=("n1", "n2", "n3", "n4"))
    assert kd.init(bigger) == ["agent n4"]
    assert all(p.read_bytes() == content for p, content in before.items())


def test_init_on_an_umask_that_would_open_the_files(cfg, tmp_path):
    old = os.umask(0)
    try:
        kd = KeyDir(keys_dir(cfg))
        kd.init(cfg)
    finally:
        os.umask(old)
    assert mode(kd.path) == 0o700
    assert {mode(p) for p in kd.path.rglob("*.key_secret")} == {0o600}


def test_a_node_name_that_cannot_be_a_file_name_is_refused(tmp_path):
    bad = parse_config({"name": "k", "nodes": [{"name": "../x", "host": "127.0.0.1"}],
                        "mesh": {"keys_dir": str(tmp_path / "keys")}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"bad node name"):
        KeyDir(keys_dir(bad)).init(bad)
    assert not (tmp_path / "keys").exists()


# --- add, list, revoke ----------------------------------------------------------------------------


def test_add_makes_a_client_key_that_names_every_agent(cfg, kd):
    secret = kd.add("alice", "writer", cfg)
    assert secret == kd.path / "clients" / "alice.key_secret"
    assert mode(secret) == 0o600
    key = load_client_key(secret)
    assert (key.name, key.role, key.path) == ("alice", "writer", secret)
    assert (key.public, key.secret) == zmq.auth.load_certificate(secret)
    assert key.agents == {n.name: (n.data_address, kd.agent_public()[n.name]) for n in cfg.nodes}
    assert key.agents["n2"][0] == "tcp://127.0.0.2:7702"
    assert KeyEntry("alice", "writer", key.public, "client") in kd.entries()


def test_add_with_output_writes_the_secret_there_only(cfg, kd, tmp_path):
    out = tmp_path / "bob.secret"
    assert kd.add("bob", "reader", cfg, output=out) == out
    assert mode(out) == 0o600
    assert not (kd.path / "clients" / "bob.key_secret").exists()
    assert zmq.auth.load_certificate(kd.path / "clients" / "bob.key") == (
        load_client_key(out).public, None)


@pytest.mark.parametrize("name", ["", "a b", "../x", "x/y", "é", ".", "..", "a\n"])
def test_bad_names_are_refused(cfg, kd, name):
    with pytest.raises(ConfigError, match=r"bad key name .*letters, digits"):
        kd.add(name, "reader", cfg)


@pytest.mark.parametrize("role", ["agent", "root", "", "Admin"])
def test_bad_roles_are_refused(cfg, kd, role):
    with pytest.raises(ConfigError, match=r"bad role .* expected one of reader, writer, admin"):
        kd.add("carol", role, cfg)
    assert not list(kd.path.rglob("carol*"))


def test_a_name_already_used_is_refused(cfg, kd):
    kd.add("dave", "reader", cfg)
    with pytest.raises(ConfigError, match=r"'dave' is already used by a client key"):
        kd.add("dave", "admin", cfg)
    with pytest.raises(ConfigError, match=r"'n1' is already used by an agent key"):
        kd.add("n1", "reader", cfg)
    with pytest.raises(ConfigError, match=r"'admin' is already used"):
        kd.add("admin", "reader", cfg)
    kd.revoke("dave")
    with pytest.raises(ConfigError, match=r"'dave' is already used by a revoked key"):
        kd.add("dave", "reader", cfg)


def test_an_output_file_that_exists_is_never_written_over(cfg, kd, tmp_path):
    out = tmp_path / "precious"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match=r"precious: file exists"):
        kd.add("erin", "reader", cfg, output=out)
    assert out.read_text() == "keep me"
    assert not (kd.path / "clients" / "erin.key").exists()
    with pytest.raises(ConfigError, match=r"no such directory"):
        kd.add("erin", "reader", cfg, output=tmp_path / "nowhere" / "k")


def test_add_before_init_says_to_run_init(cfg):
    with pytest.raises(ConfigError, match=r"no cluster keys here \(run `grid keys init`\)"):
        KeyDir(keys_dir(cfg)).add("x", "reader", cfg)


def test_entries_and_allow_list(cfg, kd):
    kd.add("r", "reader", cfg)
    kd.add("w", "writer", cfg)
    entries = kd.entries()
    assert [(e.name, e.role, e.kind) for e in entries] == [
        ("n1", "agent", "agent"), ("n2", "agent", "agent"), ("n3", "agent", "agent"),
        ("admin", "admin", "client"), ("r", "reader", "client"), ("w", "writer", "client")]
    allow = kd.allow_list()
    assert allow == {e.public: e for e in entries} and len(allow) == 6
    assert {e.role for e in entries} <= set(ROLES)
    assert kd.agent_public() == {e.name: e.public for e in entries if e.kind == "agent"}


def test_revoke_moves_the_key_out_of_the_allow_list(cfg, kd):
    secret = kd.add("mallory", "writer", cfg)
    public = load_client_key(secret).public
    assert public in kd.allow_list()
    before = kd.stamp()
    entry = kd.revoke("mallory")
    assert (entry.name, entry.role, entry.public, entry.kind) == ("mallory", "writer", public,
                                                                  "client")
    assert public not in kd.allow_list()
    assert kd.revoked() == [entry]
    assert kd.stamp() != before
    assert not (kd.path / "clients" / "mallory.key").exists()
    assert (kd.path / "revoked" / "mallory.key").exists()
    assert mode(kd.path / "revoked" / "mallory.key_secret") == 0o600


def test_revoke_refuses_unknown_agent_admin_and_twice(cfg, kd):
    with pytest.raises(ConfigError, match=r"no client key 'nobody'"):
        kd.revoke("nobody")
    with pytest.raises(ConfigError, match=r"'n1' is an agent key"):
        kd.revoke("n1")
    with pytest.raises(ConfigError, match=r"'admin' is the master's own key"):
        kd.revoke("admin")
    kd.add("once", "reader", cfg)
    kd.revoke("once")
    with pytest.raises(ConfigError, match=r"'once' is already revoked"):
        kd.revoke("once")


def test_stamp_changes_on_add_and_revoke_and_not_otherwise(cfg, kd):
    s0 = kd.stamp()
    assert kd.stamp() == s0
    kd.entries()
    assert kd.stamp() == s0
    kd.add("s", "reader", cfg)
    s1 = kd.stamp()
    assert s1 != s0
    kd.revoke("s")
    assert kd.stamp() != s1


# --- agents and nodes -----------------------------------------------------------------------------


def test_agent_key_is_the_pair_of_that_node(kd):
    public, secret = kd.agent_key("n2")
    assert (public, secret) == zmq.auth.load_certificate(kd.path / "agents" / "n2.key_secret")
    assert kd.agent_public()["n2"] == public
    with pytest.raises(ConfigError, match=r"no secret key for node 'n9'"):
        kd.agent_key("n9")


def test_node_bundle_has_exactly_its_own_secret_and_every_public_cert(cfg, kd, tmp_path):
    kd.add("c1", "reader", cfg, output=tmp_path / "c1.secret")
    kd.add("c2", "writer", cfg)
    kd.add("gone", "writer", cfg)
    kd.revoke("gone")
    bundle = kd.node_bundle("n2")
    assert set(bundle) == {"agents/n2.key_secret", "agents/n1.key", "agents/n2.key",
                           "agents/n3.key", "clients/admin.key", "clients/c1.key",
                           "clients/c2.key"}
    assert [p for p, content in bundle.items() if b"secret-key" in content] == [
        "agents/n2.key_secret"]
    # what a node gets is a keys directory of its own: same allow list, its own key pair
    node = KeyDir(tmp_path / "node" / "keys")
    for rel, content in bundle.items():
        (node.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (node.path / rel).write_bytes(content)
    assert node.exists() and node.allow_list() == kd.allow_list()
    assert node.agent_key("n2") == kd.agent_key("n2")
    with pytest.raises(ConfigError):
        node.agent_key("n1")


def test_write_allow_list_makes_the_public_certs_exactly_those(cfg, kd, tmp_path):
    kd.add("keep", "reader", cfg)
    kd.add("drop", "writer", cfg)
    node = KeyDir(tmp_path / "node")
    for rel, content in kd.node_bundle("n1").items():
        (node.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (node.path / rel).write_bytes(content)
    kd.revoke("drop")
    before = node.stamp()
    node.write_allow_list([e.to_dict() for e in kd.entries()])
    assert node.allow_list() == kd.allow_list()
    assert node.stamp() != before
    assert not (node.path / "clients" / "drop.key").exists()
    assert node.agent_key("n1") == kd.agent_key("n1")  # the secret is untouched
    for path in node.path.rglob("*.key"):
        zmq.auth.load_certificate(path)
    # a new entry is written; writing the same list again changes nothing
    newcomer = kd.add("new", "admin", cfg)
    node.write_allow_list([e.to_dict() for e in kd.entries()])
    assert load_client_key(newcomer).public in node.allow_list()
    same = node.stamp()
    node.write_allow_list([e.to_dict() for e in kd.entries()])
    assert node.stamp() == same


@pytest.mark.parametrize("bad, message", [
    ({"name": "../x", "role": "reader", "public": "a" * 40, "kind": "client"}, "bad key name"),
    ({"name": "x", "role": "god", "public": "a" * 40, "kind": "client"}, "bad role"),
    ({"name": "x", "role": "reader", "public": "short", "kind": "client"}, "40-character z85"),
    ({"name": "x", "role": "reader", "public": "a" * 40, "kind": "agent"}, "bad kind"),
    ({"name": "x", "role": "reader", "public": "a" * 40}, "missing field 'kind'"),
    ("x", "expected a mapping"),
])
def test_write_allow_list_refuses_bad_entries_and_writes_nothing(tmp_path, bad, message):
    node = KeyDir(tmp_path / "node")
    with pytest.raises(ConfigError, match=message):
        node.write_allow_list([bad])
    assert not node.path.exists()


# --- the client's key -----------------------------------------------------------------------------


def test_load_client_key_refuses_missing_corrupt_and_public_files(kd, tmp_path):
    with pytest.raises(ConfigError, match=r"nope: no such key file"):
        load_client_key(tmp_path / "nope")
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"junk: not a CurveZMQ certificate"):
        load_client_key(junk)
    with pytest.raises(ConfigError, match=r"admin.key: not a secret key file"):
        load_client_key(kd.path / "clients" / "admin.key")
    with pytest.raises(ConfigError, match=r"is a directory"):
        load_client_key(tmp_path)


def test_find_client_key_order_explicit_then_env_then_default(cfg, kd, tmp_path, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    explicit = kd.add("ex", "reader", cfg, output=tmp_path / "ex.secret")
    env = kd.add("en", "writer", cfg, output=tmp_path / "en.secret")
    default = find_client_key(None, cfg)
    assert default is not None and (default.name, default.role) == ("admin", "admin")
    assert default.path == kd.path / "clients" / "admin.key_secret"
    assert default.agents == {n.name: (n.data_address, kd.agent_public()[n.name])
                              for n in cfg.nodes}
    monkeypatch.setenv("GRID_KEY", str(env))
    assert find_client_key(None, cfg).name == "en"
    assert find_client_key(str(explicit), cfg).name == "ex"
    monkeypatch.setenv("GRID_KEY", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"missing: no such key file \(named by \$GRID_KEY\)"):
        find_client_key(None, cfg)


def test_on_a_node_the_key_found_is_its_agent_key(cfg, kd, tmp_path, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    node_dir = tmp_path / "node-keys"
    for rel, content in kd.node_bundle("n3").items():
        (node_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (node_dir / rel).write_bytes(content)
    on_node = cluster(tmp_path, keys_dir=str(node_dir))
    key = find_client_key(None, on_node)
    assert (key.name, key.role) == ("n3", "agent")
    assert (key.public, key.secret) == kd.agent_key("n3")
    assert key.agents == {n.name: (n.data_address, kd.agent_public()[n.name]) for n in cfg.nodes}
    # the master's directory without its admin key holds every agent's secret: none is picked
    (kd.path / "clients" / "admin.key_secret").unlink()
    assert find_client_key(None, cfg) is None


def test_find_client_key_without_keys_is_none(cfg, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    assert find_client_key(None, cfg) is None


def test_the_default_key_follows_the_addresses_of_the_cluster_file(tmp_path, kd, monkeypatch):
    monkeypatch.delenv("GRID_KEY", raising=False)
    moved = parse_config({"name": "keys-test", "nodes": [
        {"name": "n1", "host": "127.0.0.1", "mesh_port": 9000},
        {"name": "n2", "host": "127.0.0.2"}], "mesh": {"keys_dir": str(kd.path)}}, "m.yaml")
    key = find_client_key(None, moved)
    assert key.agents == {"n1": ("tcp://127.0.0.1:9000", kd.agent_public()["n1"]),
                          "n2": ("tcp://127.0.0.2:7700", kd.agent_public()["n2"])}
