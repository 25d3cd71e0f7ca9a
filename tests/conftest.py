"""Shared fixtures. The helpers behind them live in the ``support`` package (imported normally:
``from support.mesh import LocalMesh``): ``support.mesh`` (real agent processes),
``support.sshd`` (real OpenSSH servers), ``support.raycluster`` (a real local Ray cluster, loaded
here as a plugin), ``support.cgroups`` (real memory cgroups).

Tests are grouped by what they exercise: ``unit/`` (pure logic, no processes or sockets) and
``integration/`` (real agents, sshd, Ray, cgroups).
"""

from __future__ import annotations

import pytest

from support.mesh import running_mesh

pytest_plugins = ["support.raycluster"]


@pytest.fixture
def mesh3(tmp_path):
    """Three fresh agents for one test (for tests that kill or restart them)."""
    with running_mesh(tmp_path) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory):
    """Three agents shared by a module's tests (each test cleans up its own blocks)."""
    with running_mesh(tmp_path_factory.mktemp("mesh")) as mesh:
        yield mesh


# pytest-xdist#1386: with pytest 9.2, ``--dist loadgroup`` (pyproject's addopts) no longer adds
# the "@group" suffix that keeps a ``pytest.mark.xdist_group`` on one worker, so the Ray tests
# would start one cluster per worker and module-scoped fixtures would be split. Add it where
# xdist meant to, on workers only; nothing happens once the suffix is there (older pytest, or a
# fixed xdist).
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    if not getattr(config.option, "loadgroup", False):  # set by xdist on its workers only
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # a pytest whose node ids xdist can still suffix itself
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid.rpartition("::")[2] and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")
