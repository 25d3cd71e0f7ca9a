"""Agents on other machines: deploy, start, stop, watch them over SSH with Fabric.

Covers, for every node managed over SSH (``managed_by: ssh``, or "auto" with a host that is not
this machine), all nodes in parallel:

- ``deploy``: check the node's Python (3.11+), install this project from a wheel built from the
  master's own source tree into the node's virtual environment (``<deploy_dir>/venv``; with a
  wheelhouse, offline: ``pip --no-index``), and write the cluster file the agent reads (mode
  0600, in a 0700 directory). When the cluster has keys (``grid keys init``), carry the node
  its own secret and the public keys (``KeyDir.node_bundle``) into ``<deploy dir>/keys`` (0700,
  secrets 0600, nothing else there), and point the node's copy of the cluster file at them
  (``mesh.keys_dir``). The build id (version + hash of the source) and the hashes of the config
  and of the keys are recorded on the node, so deploying the same thing again does nothing.
- ``remote``: start / stop / status / logs through ``python -m mesh.nodes.nodectl`` on the node, which
  reuses the local process handling (``mesh/nodes/local.py``) and answers with one JSON line.

Every failure is a one-line ``NodeResult`` for its node (host unreachable, authentication
refused, no Python 3.11+, a command that failed with its last line of output); one failing node
never stops the others. Connections use the node's ``host``, ``port``, ``user``, ``ssh_key`` and
``ssh`` options, and otherwise Fabric's defaults (the ssh agent, ``~/.ssh/config``).

Fabric comes with the ``deploy`` extra and is needed on the master only: ``ssh_nodes`` says so
in one line (``MissingExtra``) when it is missing. A node gets the base install (the client
library and the agent), nothing of the CLI or Fabric.

Not here: local agents (``mesh/nodes/local.py``), rendering (``mesh/cli/``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from mesh import __version__
from mesh.config import ClusterConfig, NodeConfig
from mesh.errors import DeployError, MeshError, require
from mesh.security.keys import KeyDir, keys_dir

SSH_TIMEOUT_S = 10.0


@dataclass
class NodeResult:
    node: str
    ok: bool
    message: str
    detail: dict = field(default_factory=dict)


def node_dir(cfg: ClusterConfig, node: NodeConfig) -> str:
    return node.deploy_dir or f"{cfg.execution.working_directory.rstrip('/')}/mesh/{node.name}"


def ssh_nodes(cfg: ClusterConfig, names: tuple[str, ...] = ()) -> list[NodeConfig]:
    """The nodes among ``names`` (default: all) that are managed over SSH.

    Every command that reaches nodes over SSH asks here first, so this is where a missing
    ``deploy`` extra is found: when there is such a node and Fabric is not installed, this
    raises ``MissingExtra`` before anything was done to any node."""
    from mesh.nodes.local import is_managed_locally

    nodes = [cfg.node(n) for n in names] if names else list(cfg.nodes)
    remote = [n for n in nodes if not is_managed_locally(n)]
    if remote:
        require("fabric", "deploy", f"managing node {remote[0].name} over SSH")
    return remote


# --- connections and errors ---------------------------------------------------------------------


def connect(node: NodeConfig):
    from fabric import Connection

    kwargs: dict[str, Any] = {"banner_timeout": SSH_TIMEOUT_S, "auth_timeout": SSH_TIMEOUT_S}
    if node.ssh_key:
        # An explicit key: use it alone, so a wrong key fails as such (not via other keys).
        kwargs.update(key_filename=os.path.expanduser(node.ssh_key), look_for_keys=False,
                      allow_agent=False)
    options = dict(node.ssh)
    timeout_s = float(options.pop("timeout", SSH_TIMEOUT_S))  # Fabric takes it separately
    kwargs.update(options)
    return Connection(host=node.host, port=node.port, user=node.user, connect_kwargs=kwargs,
                      connect_timeout=timeout_s)


def describe_failure(node: NodeConfig, exc: BaseException) -> str:
    """One line for what went wrong talking to ``node``."""
    import paramiko
    from invoke.exceptions import UnexpectedExit

    where = f"{node.user + '@' if node.user else ''}{node.host}:{node.port}"
    if isinstance(exc, MeshError):
        return str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication refused by {where} (check the node's user and ssh_key)"
    if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, socket.timeout,
                        TimeoutError, ConnectionError, socket.gaierror)):
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"host unreachable: {where} ({reason})"
    if isinstance(exc, UnexpectedExit):
        r = exc.result
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or [f"exit {r.exited}"]
        return f"command failed on {node.name}: {last[0]}"
    if isinstance(exc, paramiko.SSHException):
        return f"ssh error with {where}: {exc}"
    if isinstance(exc, OSError):
        return f"host unreachable: {where} ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


def for_each(nodes: list[NodeConfig], work: Callable[[NodeConfig], NodeResult]) -> list[NodeResult]:
    """Run ``work`` on every node in parallel; an exception becomes that node's failure."""

    def guarded(node: NodeConfig) -> NodeResult:
        try:
            return work(node)
        except Exception as exc:  # one node's failure must not stop the others
            return NodeResult(node.name, False, describe_failure(node, exc))

    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        return list(pool.map(guarded, nodes))


# --- what gets deployed -------------------------------------------------------------------------


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise DeployError(
            "deploy builds a wheel from the master's source tree, and none was found next to "
            f"{Path(__file__).parent} (install the project from its checkout)"
        )
    return root


def build_id() -> str:
    """The version plus a hash of every source file that goes into the wheel."""
    root = project_root()
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for package in ("mesh", "agents", "distributed_grid"):
        files += sorted(p for p in (root / package).rglob("*")
                        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def build_wheel(out_dir: Path) -> Path:
    """Build this project's wheel (cached per build id) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob("memory_mesh-*.whl"))
    if existing:
        return existing[0]
    tmp = Path(tempfile.mkdtemp(dir=out_dir))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(project_root())],
        capture_output=True, text=True, timeout=600,
    )
    wheels = list(tmp.glob("memory_mesh-*.whl"))
    if r.returncode != 0 or not wheels:
        raise DeployError(f"building the wheel failed: {(r.stderr or r.stdout).strip()[-400:]}")
    final = out_dir / wheels[0].name
    wheels[0].rename(final)
    return final


def config_text(cfg: ClusterConfig, keys_at: str | None = None) -> str:
    """The cluster file as a node gets it; with ``keys_at``, its ``mesh.keys_dir`` names that
    directory on the node (the master's own keys directory means nothing there)."""
    raw = cfg.raw
    if keys_at is not None:
        raw = {**raw, "mesh": {**(raw.get("mesh") or {}), "keys_dir": keys_at}}
    return yaml.safe_dump(raw, sort_keys=False)


def bundle_hash(bundle: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(bundle):
        digest.update(f"{rel}\0{len(bundle[rel])}\0".encode())
        digest.update(bundle[rel])
    return digest.hexdigest()


# --- deploy -------------------------------------------------------------------------------------


def _python_ok(c, node: NodeConfig) -> None:
    probe = f"{shlex.quote(node.python)} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'"
    r = c.run(probe, hide=True, warn=True)
    version = r.stdout.strip()
    try:
        major, minor = (int(x) for x in version.split("."))
    except ValueError:
        raise DeployError(f"no Python 3.11+ on {node.name}: {node.python!r} did not run "
                          f"({(r.stderr.strip() or 'not found').splitlines()[-1]})") from None
    if (major, minor) < (3, 11):
        raise DeployError(f"no Python 3.11+ on {node.name}: {node.python} is {version} "
                          "(set the node's `python:` to a 3.11+ interpreter)")


def _read_remote(c, path: str) -> str:
    r = c.run(f"cat {shlex.quote(path)} 2>/dev/null", hide=True, warn=True)
    return r.stdout.strip() if r.ok else ""


KEY_DIRS = ("agents", "clients")  # what a node's keys directory holds (mesh/security/keys.py)


def _put_keys(c, base: str, bundle: dict[str, bytes]) -> None:
    """Make ``<base>/keys`` hold exactly ``bundle``. The files are staged in ``keys.new``
    (0700 before anything is in it), then each is moved into place, so an agent reloading its
    keys never reads half a file; then whatever else was in ``keys`` is removed."""
    q = shlex.quote
    keys, staged = f"{base}/keys", f"{base}/keys.new"
    dirs = [f"{top}/{sub}" for top in (keys, staged) for sub in KEY_DIRS]
    c.run(f"umask 077 && rm -rf {q(staged)} && mkdir -p {' '.join(q(d) for d in dirs)} && "
          f"chmod 700 {q(keys)} {q(staged)} {' '.join(q(d) for d in dirs)}", hide=True)
    for rel, content in bundle.items():
        c.put(io.BytesIO(content), f"{staged}/{rel}")
    secrets = [q(f"{staged}/{rel}") for rel in bundle if rel.endswith(".key_secret")]
    publics = [q(f"{staged}/{rel}") for rel in bundle if not rel.endswith(".key_secret")]
    c.run(f"chmod 600 {' '.join(secrets)} && chmod 644 {' '.join(publics)}", hide=True)
    c.run(" && ".join(f"mv -f {q(f'{staged}/{rel}')} {q(f'{keys}/{rel}')}" for rel in bundle),
          hide=True)
    found = c.run(f"cd {q(keys)} && find . -mindepth 1 -print0", hide=True).stdout
    keep = set(bundle) | set(KEY_DIRS)
    extra = [p[2:] for p in found.split("\0") if p.startswith("./") and p[2:] not in keep]
    c.run(f"cd {q(keys)} && rm -rf -- {' '.join(q(p) for p in extra)} {q(staged)}", hide=True)


def deploy_node(cfg: ClusterConfig, node: NodeConfig, wheel: Callable[[], Path], bid: str,
                wheelhouse: Path | None, keys: KeyDir | None = None) -> NodeResult:
    base = node_dir(cfg, node)
    q = shlex.quote
    bundle = keys.node_bundle(node.name) if keys is not None else None
    keys_hash = bundle_hash(bundle) if bundle is not None else ""
    text = config_text(cfg, f"{base}/keys" if bundle is not None else None)
    config_hash = hashlib.sha256(text.encode()).hexdigest()
    with connect(node) as c:
        c.run("true", hide=True)  # connect and authenticate first: clear errors
        _python_ok(c, node)
        installed = _read_remote(c, f"{base}/BUILD")
        has_venv = c.run(f"test -x {q(base)}/venv/bin/python", hide=True, warn=True).ok
        same_code = installed == bid and has_venv
        same_config = _read_remote(c, f"{base}/cluster.yaml.sha256") == config_hash
        same_keys = bundle is None or _read_remote(c, f"{base}/keys.sha256") == keys_hash
        if same_code and same_config and same_keys:
            return NodeResult(node.name, True, f"up to date ({bid}), nothing to do",
                              {"changed": False, "build": bid})
        c.run(f"umask 077 && mkdir -p {q(base)}/wheels {q(base)}/state && chmod 700 {q(base)}",
              hide=True)
        if not same_code:
            w = wheel()
            remote_wheel = f"{base}/wheels/{w.name}"
            c.put(str(w), remote_wheel)
            pip_opts = ""
            if wheelhouse is not None:
                for extra in sorted(wheelhouse.glob("*.whl")):
                    c.put(str(extra), f"{base}/wheels/{extra.name}")
                pip_opts = f"--no-index --find-links {q(base)}/wheels"
            if not has_venv:
                c.run(f"{q(node.python)} -m venv {q(base)}/venv", hide=True)
            pip = f"{q(base)}/venv/bin/python -m pip install -q --disable-pip-version-check {pip_opts}"
            c.run(f"{pip} --force-reinstall --no-deps {q(remote_wheel)}", hide=True)
            c.run(f"{pip} {q(remote_wheel)}", hide=True)  # dependencies, when missing
            c.put(io.BytesIO(bid.encode()), f"{base}/BUILD")
        c.put(io.BytesIO(text.encode()), f"{base}/cluster.yaml")
        c.run(f"chmod 600 {q(base)}/cluster.yaml", hide=True)
        c.put(io.BytesIO(config_hash.encode()), f"{base}/cluster.yaml.sha256")
        if bundle is not None and not same_keys:
            _put_keys(c, base, bundle)
            c.put(io.BytesIO(keys_hash.encode()), f"{base}/keys.sha256")
        what = f"installed {bid}" if not same_code else "config updated"
        if wheelhouse is not None and not same_code:
            what += " from the wheelhouse (no package index)"
        if bundle is not None and not same_keys:
            what += ", keys carried"
        return NodeResult(node.name, True, f"{what} in {base}", {"changed": True, "build": bid})


def deploy(cfg: ClusterConfig, nodes: list[NodeConfig], wheelhouse: str | None = None,
           cache_dir: Path | None = None) -> list[NodeResult]:
    bid = build_id()
    house = Path(wheelhouse).expanduser() if wheelhouse else None
    if house is not None and not house.is_dir():
        raise DeployError(f"wheelhouse {wheelhouse} is not a directory")
    from mesh.nodes.local import state_dir

    wheels_dir = (cache_dir or state_dir(cfg)) / "wheels" / bid
    import threading

    lock = threading.Lock()

    def wheel() -> Path:  # built once, only if some node needs it
        with lock:
            return build_wheel(wheels_dir)

    keys = KeyDir(keys_dir(cfg))
    keyed = keys if keys.exists() else None
    return for_each(nodes, lambda n: deploy_node(cfg, n, wheel, bid, house, keyed))


# --- start / stop / status / logs ---------------------------------------------------------------


def nodectl(cfg: ClusterConfig, node: NodeConfig, action: str, *args: str) -> dict:
    base = node_dir(cfg, node)
    q = shlex.quote
    with connect(node) as c:
        if not c.run(f"test -x {q(base)}/venv/bin/python", hide=True, warn=True).ok:
            raise DeployError(f"{node.name} is not deployed (run `grid agents deploy --node {node.name}`)")
        cmd = (f"{q(base)}/venv/bin/python -m mesh.nodes.nodectl {action} --dir {q(base)} "
               f"--node {q(node.name)} " + " ".join(q(a) for a in args))
        r = c.run(cmd, hide=True, warn=True)
    lines = r.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (r.stderr.strip() or r.stdout.strip() or f"exit {r.exited}").splitlines()[-1]
        raise DeployError(f"mesh.nodes.nodectl {action} failed on {node.name}: {tail}") from None


def remote(cfg: ClusterConfig, nodes: list[NodeConfig], action: str, *args: str) -> list[NodeResult]:
    def work(node: NodeConfig) -> NodeResult:
        doc = nodectl(cfg, node, action, *args)
        return NodeResult(node.name, bool(doc.get("ok")), str(doc.get("message", "")), doc)

    return for_each(nodes, work)
