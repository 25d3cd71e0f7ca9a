"""Where this machine keeps a cluster's files: pure path rules, nothing made or read.

    state_path(cfg)   ``mesh.state_dir``, else ``$GRID_STATE_DIR``, else
                      ``$XDG_STATE_HOME/mesh/<cluster name>`` (``~/.local/state/...``): local
                      agents' pid and log files, wheels for deployment, and by default the keys
    keys_path(cfg)    ``mesh.keys_dir``, else ``keys`` under ``state_path``

Here so that a client can find its key without loading the code that runs agents
(``mesh/nodes/local.py`` makes the state directory; ``mesh/security/keys.py`` the keys).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.config import ClusterConfig


def state_path(cfg: ClusterConfig) -> Path:
    if cfg.mesh.state_dir:
        return Path(cfg.mesh.state_dir).expanduser()
    if os.environ.get("GRID_STATE_DIR"):
        return Path(os.environ["GRID_STATE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "mesh" / cfg.name


def keys_path(cfg: ClusterConfig) -> Path:
    if cfg.mesh.keys_dir:
        return Path(cfg.mesh.keys_dir).expanduser()
    return state_path(cfg) / "keys"
