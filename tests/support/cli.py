"""Running ``grid`` as a user would: a subprocess of this venv's console script, with the test's
own state directory and no cluster file or key from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GRID = Path(sys.executable).parent / "grid"


def grid(*args: str, env: dict, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRID), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def cli_env(tmp: Path) -> dict:
    """The environment without $GRID_CONFIG and $GRID_KEY, state (and keys) under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRID_CONFIG", "GRID_KEY")}
    env["GRID_STATE_DIR"] = str(tmp / "state")
    env["COLUMNS"] = "200"
    return env
