"""Node-side agent control, run over SSH from the master by ``grid agents ...``.

    python -m mesh.nodes.nodectl start|stop|status|logs --dir DIR --node NAME [--insecure]
                           [--systemd] [--lines N]

It runs with the node's deployed virtual environment (``DIR/venv``), reads the cluster file the
master wrote there (``DIR/cluster.yaml``), keeps pid and log files in ``DIR/state``, and prints
exactly one JSON line: ``{"ok": bool, "message": str, ...}``. Starting and stopping reuse
``mesh/nodes/local.py`` (a detached process, graceful stop that only signals our own agent); with
``--systemd`` the agent runs as a systemd unit instead. When the master carried cluster keys
(``DIR/keys``, see ``mesh/nodes/deploy.py``) the agent uses them: the unit passes ``--keys
DIR/keys``, and a detached agent finds them through ``mesh.keys_dir`` of ``DIR/cluster.yaml``.

Not here: SSH, deployment and rendering (``mesh/nodes/deploy.py``, ``mesh/cli/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mesh import __version__
from mesh.nodes import local
from mesh.config import ClusterConfig, load_cluster_config
from mesh.errors import MeshError
from mesh.sockets import AGENT_FD_LIMIT


def _agent(base: Path, node: str) -> tuple[ClusterConfig, local.LocalAgent]:
    cfg = load_cluster_config(base / "cluster.yaml")
    state = base / "state"
    state.mkdir(parents=True, exist_ok=True)
    return cfg, local.LocalAgent(cfg.node(node), state / f"{node}.pid", state / f"{node}.log")


def agent_args(base: Path) -> list[str]:
    """What the agent is told besides its config and node: where its keys are, when the master
    carried some."""
    keys = base / "keys"
    return ["--keys", str(keys)] if keys.is_dir() else []


def _unit_name(node: str) -> str:
    return f"mesh-agent-{node}.service"


def _has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemctl(*args: str) -> subprocess.CompletedProcess:
    user = [] if os.geteuid() == 0 else ["--user"]
    return subprocess.run(["systemctl", *user, *args], capture_output=True, text=True, timeout=60)


def _unit_active(node: str) -> bool:
    return _has_systemd() and _systemctl("is-active", "--quiet", _unit_name(node)).returncode == 0


def start(base: Path, node: str, insecure: bool, systemd: bool) -> dict:
    cfg, agent = _agent(base, node)
    if systemd:
        return _start_systemd(base, cfg, agent, insecure)
    # local.start builds the agent's command itself (config and node only): the agent finds
    # DIR/keys through the cluster file, whose mesh.keys_dir deploy points there.
    outcome = local.start(cfg, [agent], insecure=insecure, config_path=str(base / "cluster.yaml"))[0]
    return {"ok": outcome.ok, "message": outcome.message, "pid": outcome.pid}


def _start_systemd(base: Path, cfg: ClusterConfig, agent: local.LocalAgent, insecure: bool) -> dict:
    node = agent.node.name
    if not _has_systemd():
        return {"ok": False, "message": "this node has no running systemd; start without --systemd"}
    exe = [sys.executable, "-m", "agents.main", "--config", str(base / "cluster.yaml"),
           "--node", node, "--log-file", str(agent.log_file)] + agent_args(base) \
        + (["--insecure"] if insecure else [])
    unit = (
        "[Unit]\nDescription=memory mesh agent " + node + "\nAfter=network-online.target\n\n"
        "[Service]\nExecStart=" + " ".join(exe) + "\nRestart=on-failure\n"
        "KillSignal=SIGTERM\nTimeoutStopSec=10\n"
        # the agent caps its connections below its descriptor limit (agents/limits.py)
        f"LimitNOFILE={AGENT_FD_LIMIT}\n\n[Install]\nWantedBy=default.target\n"
    )
    units = Path("/etc/systemd/system") if os.geteuid() == 0 else Path.home() / ".config/systemd/user"
    units.mkdir(parents=True, exist_ok=True)
    (units / _unit_name(node)).write_text(unit)
    for args in (("daemon-reload",), ("enable", "--now", _unit_name(node))):
        r = _systemctl(*args)
        if r.returncode != 0:
            return {"ok": False, "message": f"systemctl {' '.join(args)}: {r.stderr.strip()}"}
    return {"ok": True, "message": f"started as systemd unit {_unit_name(node)}"}


def stop(base: Path, node: str) -> dict:
    _, agent = _agent(base, node)
    if _unit_active(node):
        r = _systemctl("disable", "--now", _unit_name(node))
        return {"ok": r.returncode == 0, "message": "stopped systemd unit" if r.returncode == 0
                else r.stderr.strip()}
    outcome = local.stop([agent])[0]
    return {"ok": outcome.ok, "message": outcome.message, "pid": outcome.pid}


def status(base: Path, node: str) -> dict:
    _, agent = _agent(base, node)
    pid = agent.pid()
    out = {"ok": True, "version": __version__, "pid": pid, "running": pid is not None,
           "systemd": _unit_active(node)}
    if pid is not None:
        try:
            out["uptime_s"] = round(time.time() - psutil.Process(pid).create_time(), 1)
        except psutil.NoSuchProcess:
            out["running"] = False
    out["message"] = "running" if out["running"] or out["systemd"] else "not running"
    return out


def logs(base: Path, node: str, lines: int) -> dict:
    _, agent = _agent(base, node)
    # the agent's own log, and its stdout/stderr (start-up failures, crashes) when not empty
    return {"ok": True, "message": agent.log_tail(lines), "log_file": str(agent.log_file),
            "out": agent.out_tail(lines), "out_file": str(agent.out_file)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh.nodes.nodectl")
    parser.add_argument("action", choices=["start", "stop", "status", "logs"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--node", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--systemd", action="store_true")
    parser.add_argument("--lines", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            result = start(args.dir, args.node, args.insecure, args.systemd)
        elif args.action == "stop":
            result = stop(args.dir, args.node)
        elif args.action == "status":
            result = status(args.dir, args.node)
        else:
            result = logs(args.dir, args.node, args.lines)
    except (MeshError, OSError) as exc:
        result = {"ok": False, "message": str(exc)}
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
