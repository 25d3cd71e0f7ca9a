"""Node-side agent control, run over SSH from the master by ``grid agents ...``.

    python -m mesh.nodes.nodectl start|stop|status|logs --dir DIR --node NAME [--insecure]
                           [--systemd] [--lines N]

It runs with the node's deployed virtual environment (``DIR/venv``), reads the cluster file the
master wrote there (``DIR/cluster.yaml``), keeps pid and log files in ``DIR/state``, and prints
exactly one JSON line: ``{"ok": bool, "message": str, ...}``. Starting and stopping reuse
``mesh/nodes/local.py`` (a detached process, graceful stop that only signals our own agent); with
``--systemd`` the agent runs as a systemd unit instead, the same unit a local node gets
(``mesh/nodes/systemd.py``), and ``stop`` stops that unit. When the master carried cluster keys
(``DIR/keys``, see ``mesh/nodes/deploy.py``) the agent uses them: the unit passes ``--keys
DIR/keys``, and a detached agent finds them through ``mesh.keys_dir`` of ``DIR/cluster.yaml``.

Not here: SSH, deployment and rendering (``mesh/nodes/deploy.py``, ``mesh/cli/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psutil

from mesh import __version__
from mesh.nodes import local, systemd as units
from mesh.config import ClusterConfig, load_cluster_config
from mesh.errors import MeshError


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


def start(base: Path, node: str, insecure: bool, systemd: bool) -> dict:
    cfg, agent = _agent(base, node)
    # The agent finds DIR/keys through the cluster file, whose mesh.keys_dir deploy points
    # there; a systemd unit is told it too (``agent_args``).
    outcome = local.start(cfg, [agent], insecure=insecure, config_path=str(base / "cluster.yaml"),
                          systemd=systemd, extra=agent_args(base) if systemd else None)[0]
    return {"ok": outcome.ok, "message": outcome.message, "pid": outcome.pid}


def stop(base: Path, node: str) -> dict:
    _, agent = _agent(base, node)
    outcome = local.stop([agent])[0]  # its systemd unit, when it runs as one
    return {"ok": outcome.ok, "message": outcome.message, "pid": outcome.pid}


def status(base: Path, node: str) -> dict:
    _, agent = _agent(base, node)
    pid = agent.pid()
    out = {"ok": True, "version": __version__, "pid": pid, "running": pid is not None,
           "systemd": units.active(node)}
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
