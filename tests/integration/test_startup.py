"""What ``grid`` and the client library import at start-up, and what ``grid`` says when the cli
extra is missing.

Each ``grid`` runs in its own process through a ``-c`` wrapper that calls ``mesh.cli.main`` and
writes ``sys.modules`` to a file at exit, so the test sees exactly what that command loaded.
The missing-Fabric and missing-Ray lines are tested with the commands that need them
(tests/integration/test_deploy.py, test_placement.py); the start-up times are measured by
``tools/bench.py startup``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from support.mesh import ROOT, running_mesh

# Never needed by `grid --help` nor by any `grid memory` command.
HEAVY = ("fabric", "paramiko", "invoke", "ray", "numpy", "mesh.balance")

ENV = {**{k: v for k, v in os.environ.items() if k != "GRID_CONFIG"}, "COLUMNS": "200"}

WRAPPER = """\
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "grid"
from mesh.cli import main
main()
"""


def run_grid(tmp: Path, *args: str, prelude: str = "") -> tuple[subprocess.CompletedProcess, set]:
    """``grid ARGS`` in a fresh interpreter: (the finished process, the modules it had loaded)."""
    modules = tmp / "modules.json"
    modules.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", prelude + WRAPPER, str(modules), *args],
                          capture_output=True, text=True, cwd=tmp, timeout=60,
                          stdin=subprocess.DEVNULL, env=ENV)
    loaded = set(json.loads(modules.read_text())) if modules.exists() else set()
    return done, loaded


def among(loaded: set, names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def test_grid_help_lists_every_command_and_imports_none(tmp_path):
    done, loaded = run_grid(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.split("Commands:")[1].strip().splitlines()]
    assert listed == ["agents", "demo", "keys", "memory", "rebalance", "resource-sharing", "top"]
    assert "Move blocks off nodes over memory_pressure_high until" in done.stdout
    assert among(loaded, HEAVY) == []
    # no command module, no rich, no client, no cluster file (yaml)
    assert among(loaded, ("mesh.cli",)) == ["mesh.cli", "mesh.cli.app", "mesh.cli.common"]
    assert among(loaded, ("rich", "mesh.client", "mesh.config", "yaml", "zmq")) == []


def test_agents_help_lists_drain_without_importing_rebalancing(tmp_path):
    done, loaded = run_grid(tmp_path, "agents", "--help")
    assert done.returncode == 0, done.stderr
    assert re.search(r"\n  drain +Move every block off NODE \(for maintenance\)", done.stdout)
    assert re.search(r"\n  scrape-config +Print a Prometheus scrape config", done.stdout)
    assert among(loaded, HEAVY) == []


def test_a_mistyped_command_is_matched_against_every_command_without_importing_them(tmp_path):
    done, loaded = run_grid(tmp_path, "memroy")
    assert done.returncode == 2
    assert "No such command 'memroy'." in done.stderr
    if hasattr(click.exceptions, "NoSuchCommand"):  # click 8.4+ suggests close names
        assert "'memory'" in done.stderr
    assert among(loaded, ("mesh.cli",)) == ["mesh.cli", "mesh.cli.app", "mesh.cli.common"]


def test_memory_commands_against_a_running_mesh_import_none_of_the_extras(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"startup" * 1000)
    with running_mesh(tmp_path, n=2) as mesh:
        cfg = ("-c", str(mesh.config_path))
        for args in (["memory", "stats"], ["memory", "stats", "--json"],
                     ["memory", "store", "startup-key", str(data)], ["memory", "list-blocks"],
                     ["memory", "list-objects", "--json"],
                     ["memory", "retrieve", "startup-key", "-o", str(tmp_path / "back.bin")],
                     ["memory", "delete", "startup-key"]):
            done, loaded = run_grid(tmp_path, *args, *cfg)
            assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
            assert among(loaded, HEAVY) == [], args
            assert "mesh.cli.memory" in loaded  # the wrapper saw the command run
    assert (tmp_path / "back.bin").read_bytes() == data.read_bytes()


def test_the_client_library_loads_no_cli_and_no_extra():
    code = ("import json, sys; from mesh import MeshClient, AsyncMeshClient;"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "mesh.client.drivers" in loaded
    assert among(loaded, ("click", "rich", "fabric", "ray", "mesh.cli", *HEAVY)) == []


@pytest.mark.parametrize("group_path", ["mesh.cli.app:cli", "mesh.cli.agents:agents"])
def test_each_lazy_command_is_listed_with_its_own_help(group_path):
    import importlib

    module, _, attr = group_path.partition(":")
    group = getattr(importlib.import_module(module), attr)
    assert group.lazy
    for name, (_, short_help) in group.lazy.items():
        command = group.load(name)
        assert command.name == name
        for limit in (45, 1000):
            assert (click.Command(name, help=short_help).get_short_help_str(limit)
                    == command.get_short_help_str(limit)), name


@pytest.mark.parametrize("module", ["mesh.cli", "mesh"])
def test_python_m_mesh_runs_grid(tmp_path, module):
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("grid, version "), done.stderr


def test_mesh_agent_version_needs_no_node(tmp_path):
    from mesh import __version__

    done = subprocess.run([sys.executable, "-m", "agents.main", "--version"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"mesh-agent {__version__}"


# --- without the cli extra ---------------------------------------------------------------------


def test_without_click_grid_says_which_extra_to_install(tmp_path):
    done, _ = run_grid(tmp_path, "--help", prelude="import sys; sys.modules['click'] = None\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "grid: the command line needs click, which comes with the cli extra: "
        "pip install 'memory-mesh[cli]'"]


def test_without_rich_a_command_that_prints_says_which_extra_to_install(tmp_path):
    done, _ = run_grid(tmp_path, "memory", "stats", "-c", str(tmp_path / "none.yaml"),
                       prelude="import sys; sys.modules['rich'] = None\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "grid: the command line needs rich, which comes with the cli extra: "
        "pip install 'memory-mesh[cli]'"]
