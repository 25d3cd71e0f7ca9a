"""The scripts in tools/examples/, each run as a subprocess against real agents (``-c``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.mesh import ROOT, running_mesh

EXAMPLES = ROOT / "tools" / "examples"
SCRIPTS = ["heavy_processing.py", "cache_dataset.py", "model_weights.py",
           "share_between_processes.py"]


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory):
    with running_mesh(tmp_path_factory.mktemp("examples")) as local:
        yield local


def run_example(mesh3, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), "-c", str(mesh3.config_path), *args],
        capture_output=True, text=True, timeout=120, cwd=mesh3.tmp,
    )


def blocks_and_keys(mesh3) -> tuple[set[str], set[str]]:
    with mesh3.client() as c:
        return {b.block_id for b in c.blocks()}, {i.key for i in c.keys()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_and_cleans_up(mesh3, script):
    before = blocks_and_keys(mesh3)
    done = run_example(mesh3, script)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert "MISMATCH" not in done.stdout and "DIFFER" not in done.stdout
    assert blocks_and_keys(mesh3) == before, f"{script} left blocks or keys behind"


def test_examples_take_size_and_node(mesh3):
    done = run_example(mesh3, "model_weights.py", "--size", "3MiB", "--layers", "3",
                       "--node", "node3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on node3" in done.stdout and "all match" in done.stdout
    done = run_example(mesh3, "heavy_processing.py", "--size", "1000000", "--slice", "64KiB",
                       "--node", "node2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on node2" in done.stdout and "match" in done.stdout


def test_example_reports_a_mesh_error_in_one_line(mesh3):
    done = run_example(mesh3, "cache_dataset.py", "--node", "no-such-node")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "no-such-node" in done.stderr
    assert "Traceback" not in done.stderr
