"""Shared fixtures. The helpers behind them live in the ``support`` package (imported normally:
``from support.mesh import LocalMesh``): ``support.mesh`` (real agent processes),
``support.sshd`` (real OpenSSH servers), ``support.raycluster`` (a real local Ray cluster, loaded
here as a plugin), ``support.cgroups`` (real memory cgroups).

Tests are grouped by what they exercise: ``unit/`` (pure logic, no processes or sockets) and
``integration/`` (real agents, sshd, Ray, cgroups).

Two guards keep a broken run from hanging or passing (tests/integration/test_xdist_crash.py shows
both): a crashed xdist worker fails the run (pyproject's ``--max-worker-restart=0`` ends it
instead of replacing the worker, which hangs under ``--dist loadgroup``, pytest-xdist#1323; the
hooks below make the exit code non-zero and name the worker even when no test was running), and
SIGTERM (the README's ``timeout`` sends it to the whole process group when the time limit is
reached) stops pytest through ``pytest.exit``, so fixtures tear down what they started, including
agents started in their own sessions, which the group signal does not reach.
"""

from __future__ import annotations

import signal
import threading

import pytest

from support.mesh import clean_client, running_mesh

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


@pytest.fixture
def c(shared_mesh):
    """A client of the module's shared mesh that deletes every key and frees every block left
    when the test ends (a module may define its own ``c``)."""
    with clean_client(shared_mesh) as client:
        yield client


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


# A crashed xdist worker fails the run. pyproject's ``--max-worker-restart=0`` makes xdist stop
# the run when a worker dies (replacing it hangs under ``--dist loadgroup``, pytest-xdist#1323:
# the new worker can be handed a single test and waits for a second one for ever). xdist fails
# the test the worker died in; these hooks also fail a run whose worker died between tests, and
# say which worker died and what it means.
CRASHED_WORKERS = pytest.StashKey[list]()


def pytest_testnodedown(node, error):
    if error and error != "keyboard-interrupt":  # an interrupted worker is not a crash
        node.config.stash.setdefault(CRASHED_WORKERS, []).append(f"{node.gateway.id} ({error})")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    if session.config.stash.get(CRASHED_WORKERS, None) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    crashed = config.stash.get(CRASHED_WORKERS, None)
    if crashed:
        terminalreporter.section("crashed xdist workers", sep="!", red=True)
        terminalreporter.line(
            f"crashed: xdist worker {', '.join(crashed)}; the run fails, and the tests it had "
            "left did not run (--max-worker-restart=0 in pyproject.toml)", red=True)


# SIGTERM stops pytest like Ctrl-C does, so fixtures tear down what they started. Python's
# default for SIGTERM ends the process on the spot, and ``ray.init`` installs its own handler,
# which only fails the current test; ours is put back before every test.
def _stop_on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the teardown must not be cut short
    pytest.exit("got SIGTERM (the README's time limit, or a kill): stopping; fixtures tear down "
                "what they started")


def _catch_sigterm():
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) not in (_stop_on_sigterm, signal.SIG_IGN)):
        signal.signal(signal.SIGTERM, _stop_on_sigterm)


def pytest_configure(config):
    _catch_sigterm()


def pytest_unconfigure(config):
    # After the session (a worker then idles in execnet until the controller lets it go), SIGTERM
    # has nothing left to tear down: the default ends the process quietly.
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) in (_stop_on_sigterm, signal.SIG_IGN)):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    try:
        return (yield)
    finally:
        _catch_sigterm()  # after the fixtures started (a session fixture may have called ray.init)
