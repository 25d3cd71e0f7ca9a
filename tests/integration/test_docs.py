"""Every shell, Python and YAML example of README.md and docs/*.md, run against a real local mesh.

One test per fenced block (ids like ``README.md:123``). The mesh is three real agents named as
the docs name them (``local-1..3`` on 127.0.0.1-3, free ports), reached through ``$GRID_CONFIG``,
so commands run verbatim. A page runs once, in order, the first time one of its blocks is asked
for (so test order never matters): it starts in a fresh directory with the mesh holding no
block and no key, and its blocks may build on the ones before them, as a reader would.

- ``console``: each ``$ `` command runs in bash (a block id the doc's output showed earlier on
  the page is replaced by the real one it stood for); its output (stdout and stderr, as a terminal
  shows them) must have the doc's shape (``support.docblocks.compare``), and it must fail
  exactly when the doc shows an error line (``✗ ...``, or ``{"error": ...}`` with ``--json``).
- ``bash``/``shell``: the block runs as one script (``set -e``) and must succeed.
- ``python``: runs as a script in a subprocess (top-level ``await`` allowed, as in ``python -m
  asyncio`` or a notebook); a ``text`` block right after it is what it must print; ``>>>``
  blocks run as doctests.
- ``yaml``: a file with ``nodes`` must load with ``load_cluster_config``; a fragment must load
  once merged into the test mesh's cluster file.

Directives (``<!-- doc-test: ... -->``) are described in ``support/docblocks.py``. Three of them
bring in more real parts:

- ``ray``: the block runs against the suite's Ray cluster (``ray_cluster``, tests/support/
  raycluster.py: a raylet per node, ``mesh_node:node1..3``) and a second mesh named as the Ray
  pages name theirs, ``node1..3`` (1 GiB each, ``ray.address`` set), in ``$GRID_CONFIG`` and as
  ``cluster.yaml`` in the page's directory. Its blocks and reservations last to the end of the
  page (or a ``fresh`` block), then every "mesh:" placement group is removed, as
  test_placement.py's ``table`` fixture does. The blocks of a page with a ``ray`` block run in
  the xdist group "ray" with the other Ray tests, so ``-n 2`` starts one Ray cluster.
- ``ssh``: the block runs in a directory of its own (the same for the page's ``ssh`` blocks)
  whose ``cluster.yaml`` has one node, ``m1``, behind a real OpenSSH server on loopback
  (tests/support/sshd.py), and whose ``bad.yaml`` adds ``wrongkey`` (a key the server refuses),
  ``gone`` (nobody listening) and ``nopy`` (no such Python), as the README's deployment steps
  describe them; at the end of the page its agents are stopped and the server too. Needs root
  and sshd; skipped without.
- ``file NAME``: the block is written to ``NAME`` in the page's directory instead of running (a
  ``yaml`` fragment merged into the cluster file the block would use, and checked to load).

A drifted block fails with each doc line and the actual line that replaced it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.docblocks import (LANGUAGES, Block, compare, console_steps, learn_ids, parse_page,
                               with_ids)
from support.mesh import ROOT, AgentProc, LocalMesh, free_port_pair
from support.sshd import SSHD, SshHosts

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [b for page in PAGES for b in parse_page(page, ROOT)]
RUN = {"python", "console", "bash", "shell", "sh", "yaml"}
NODES = ("local-1", "local-2", "local-3")
BIN = Path(sys.executable).parent
COMMAND_TIMEOUT_S = 60
RAY_PAGES = {b.page for b in BLOCKS if "ray" in b.directives}
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
docs_group = pytest.mark.xdist_group("docs")


def xdist_group(block: Block) -> str:
    """A page with Ray blocks runs on the worker of the other Ray tests (one Ray cluster)."""
    return "ray" if block.page in RAY_PAGES else "docs"


def docs_cluster(path: Path, memory_gb: float = 4.0) -> list[AgentProc]:
    """A cluster file like the embedded local mesh's (local-1..3 on 127.0.0.1-3, 4 GiB each) on
    free ports; returns its nodes."""
    nodes = [AgentProc(name, f"127.0.0.{i + 1}", free_port_pair(f"127.0.0.{i + 1}"),
                       path.parent / f"{name}.log") for i, name in enumerate(NODES)]
    path.write_text(yaml.safe_dump({
        "name": "local-mesh",
        "nodes": [{"name": a.name, "host": a.host, "port": 22, "role": "worker",
                   "memory_gb": memory_gb, "mesh_port": a.port,
                   "resource_sharing": {"can_share": True, "max_share_memory_gb": memory_gb}}
                  for a in nodes],
        "execution": {"working_directory": str(path.parent / "work")},
        "mesh": {"host_reserve_bytes": "256MiB", "keys_dir": str(path.parent / "keys"),
                 "state_dir": str(path.parent / "state")},
    }, sort_keys=False))
    return nodes


@pytest.fixture(scope="module")
def docs_mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs-mesh")
    path = tmp / "cluster.yaml"
    mesh = LocalMesh(tmp, docs_cluster(path), path)
    try:
        mesh.start_all()
        yield mesh
    finally:
        leaked = mesh.stop_all()
        assert not leaked, f"agents ignored SIGTERM and had to be killed: {leaked}"


@dataclass
class Outcome:
    skip: str = ""
    failure: str = ""


class PageRunner:
    """Runs each page's blocks once, in order, and keeps what each block came to."""

    def __init__(self, mesh: LocalMesh, tmp: Path):
        self.mesh, self.tmp = mesh, tmp
        self.outcomes: dict[str, Outcome] = {}
        self.ids: dict[str, str] = {}  # the page's block ids in the doc -> the real ones
        self.ray_address = ""  # the Ray cluster's, set by the test before a Ray page runs
        self.ray_mesh: LocalMesh | None = None
        self.ssh: SshHosts | None = None
        self.ssh_dir: Path | None = None

    def close(self) -> None:
        if self.ray_mesh is not None:
            leaked = self.ray_mesh.stop_all()
            assert not leaked, f"Ray mesh agents ignored SIGTERM and had to be killed: {leaked}"

    def outcome(self, block: Block) -> Outcome:
        if block.id not in self.outcomes:
            self.run_page(block.page)
        return self.outcomes[block.id]

    # --- a page ----------------------------------------------------------------------------

    def run_page(self, page: str) -> None:
        blocks = [b for b in BLOCKS if b.page == page]
        cwd = self.tmp / page.replace("/", "_")
        cwd.mkdir()
        for name in ("tools", "config"):  # the checkout's, as when reading from it
            (cwd / name).symlink_to(ROOT / name)
        self.empty_mesh()
        self.ids = {}
        try:
            self.run_blocks(blocks, cwd)
        finally:
            if page in RAY_PAGES:
                self.clear_ray()
            if self.ssh is not None:
                self.stop_ssh(cwd)

    def run_blocks(self, blocks: list[Block], cwd: Path) -> None:
        python_groups = self.python_groups(blocks)
        for b in blocks:
            if b.lang not in RUN:
                self.outcomes[b.id] = Outcome(skip=f"{b.lang or 'no language'}: not an example")
                continue
            if "skip" in b.directives:
                self.outcomes[b.id] = Outcome(skip=b.directives["skip"] or "no reason given")
                continue
            if b.id in self.outcomes:  # ran with its python group
                continue
            if "ssh" in b.directives and (why := ssh_missing()):
                self.outcomes[b.id] = Outcome(skip=why)
                continue
            config = self.mesh.config_path
            if "ray" in b.directives:
                config = self.ray_config(cwd, fresh="fresh" in b.directives)
            elif "fresh" in b.directives:
                self.empty_mesh()
            env = self.env(config, cwd / ".state")
            try:
                if "file" in b.directives:
                    failure = self.write_file(b, cwd, config)
                elif b.lang == "python":
                    self.run_python_group(python_groups[b.id], cwd, env)
                    continue
                elif b.lang == "yaml":
                    failure = self.check_yaml(b, config)
                elif "own-agents" in b.directives:
                    failure = self.run_with_own_agents(b, cwd)
                elif "ssh" in b.directives:
                    failure = self.run_over_ssh(b, cwd)
                elif b.lang == "console":
                    failure = self.run_console(b, cwd, env)
                else:
                    failure = self.run_script(b, cwd, env)
            except subprocess.TimeoutExpired as exc:
                failure = f"timed out after {exc.timeout} s: {exc.cmd!r}"
            self.outcomes[b.id] = Outcome(failure=failure)

    def env(self, config: Path, state: Path) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("GRID_KEY", "GRID_CONFIG", "RAY_ADDRESS")}
        env.update(GRID_CONFIG=str(config), GRID_STATE_DIR=str(state), COLUMNS="200",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
                   NO_COLOR="1", PYTHONUNBUFFERED="1")
        return env

    def empty_mesh(self, mesh: LocalMesh | None = None) -> None:
        with (mesh or self.mesh).client() as c:
            for info in c.keys():
                c.delete(info.key)
            for b in c.blocks():
                c.free(b.block_id)

    # --- ray ---------------------------------------------------------------------------------

    def ray_config(self, cwd: Path, fresh: bool) -> Path:
        """The Ray mesh's cluster file (the mesh started the first time), also as
        ``cluster.yaml`` in ``cwd``; with ``fresh``, its blocks and reservations gone first."""
        from support.raycluster import mesh_groups

        if not self.ray_address:
            raise AssertionError("a `ray` block on a page outside RAY_PAGES: the test did not "
                                 "start the Ray cluster")
        if self.ray_mesh is None:
            tmp = self.tmp / "ray-mesh"
            tmp.mkdir()
            self.ray_mesh = LocalMesh.create(tmp, 3, 1.0, extra={
                "ray": {"address": self.ray_address},
                "execution": {"working_directory": str(tmp / "work")}})
            self.ray_mesh.start_all()
            left = mesh_groups()
            assert not left, f"reservations from an earlier test are still there: {left}"
        elif fresh:
            self.clear_ray()
        link = cwd / "cluster.yaml"
        if not link.exists():
            link.symlink_to(self.ray_mesh.config_path)
        return self.ray_mesh.config_path

    def clear_ray(self) -> None:
        """What a page's Ray blocks leave behind: placement groups and the Ray mesh's blocks."""
        from support.raycluster import remove_mesh_groups

        if self.ray_mesh is not None:
            remove_mesh_groups()
            self.empty_mesh(self.ray_mesh)

    # --- ssh ---------------------------------------------------------------------------------

    def ssh_files(self, cwd: Path) -> Path:
        """A directory with ``cluster.yaml`` (node m1 behind a real sshd) and ``bad.yaml``
        (m1, wrongkey, gone, nopy); the server starts the first time."""
        if self.ssh_dir is not None:
            return self.ssh_dir
        self.ssh_dir = cwd / "ssh-deploy"
        self.ssh_dir.mkdir()
        self.ssh = SshHosts(self.ssh_dir / "sshd", n=1)
        self.ssh.start()
        h = self.ssh.hosts[0]

        def node(name: str, deploy_dir: str, **over) -> dict:
            entry = {"name": name, "host": h.address, "port": h.port, "user": h.user,
                     "ssh_key": str(h.key_path), "managed_by": "ssh", "python": BASE_PYTHON,
                     "deploy_dir": str(self.ssh_dir / deploy_dir), "memory_gb": 0.5,
                     "mesh_port": free_port_pair(h.address), "ssh": {"timeout": 5}}
            return {**entry, **over}

        m1 = node("m1", "d1")
        bad = [m1, node("wrongkey", "d2", ssh_key=str(self.ssh.wrong_key_path)),
               node("gone", "d3", host="127.0.0.9", port=free_port_pair("127.0.0.9")),
               node("nopy", "d4", python="/usr/bin/python3.99")]
        for name, nodes in (("cluster.yaml", [m1]), ("bad.yaml", bad)):
            (self.ssh_dir / name).write_text(yaml.safe_dump({
                "name": "my-cluster", "nodes": nodes,
                "mesh": {"host_reserve_bytes": "256MiB", "connect_timeout_s": 1.0}},
                sort_keys=False))
        return self.ssh_dir

    def run_over_ssh(self, block: Block, cwd: Path) -> str:
        where = self.ssh_files(cwd)
        env = self.env(where / "cluster.yaml", where / "state")
        if block.lang == "console":
            return self.run_console(block, where, env, timeout_s=300)
        return self.run_script(block, where, env)

    def stop_ssh(self, cwd: Path) -> None:
        """Stops what the page's ``ssh`` blocks left running: m1's agent, then the server."""
        assert self.ssh is not None and self.ssh_dir is not None
        try:
            env = self.env(self.ssh_dir / "cluster.yaml", self.ssh_dir / "state")
            subprocess.run([str(BIN / "grid"), "agents", "stop", "-c", "cluster.yaml"],
                           cwd=self.ssh_dir, env=env, capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT_S)
        finally:
            self.ssh.stop()
            self.ssh = None

    # --- console and shell -------------------------------------------------------------------

    def run_console(self, block: Block, cwd: Path, env: dict,
                    timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        problems = []
        for step in console_steps(block):
            done = subprocess.run(["bash", "-c", with_ids(step.command, self.ids)], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, timeout=timeout_s)
            actual = done.stdout.splitlines()
            learn_ids(step.expected, actual, self.ids)
            diff = compare(step.expected, actual, step.line + 1)
            should_fail = any(line.lstrip().startswith(("✗", '{"error"')) for line in step.expected)
            if should_fail != (done.returncode != 0):
                diff.append(f"  exit code {done.returncode}: the doc shows "
                            f"{'a failure (✗)' if should_fail else 'success'}")
            if diff:
                problems.append(f"{block.page}:{step.line} `{step.command}` drifted from the doc "
                                f"(- doc, + actual; compared by shape):\n" + "\n".join(diff)
                                + "\n  actual output:\n"
                                + textwrap.indent(done.stdout.rstrip() or "(none)", "    | "))
        return "\n\n".join(problems)

    def run_script(self, block: Block, cwd: Path, env: dict) -> str:
        done = subprocess.run(["bash", "-e", "-c", block.text], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode:
            return f"{block.id}: the script exited {done.returncode}:\n{done.stdout}"
        return ""

    def run_with_own_agents(self, block: Block, cwd: Path) -> str:
        """The block starts (and may stop) agents itself: a cluster file of its own, named like
        the local mesh, on free ports; whatever it leaves running is stopped after it."""
        own = cwd / f"own-{block.line}"
        own.mkdir()
        config = own / "cluster.yaml"
        docs_cluster(config)
        env = self.env(config, own / "state")
        try:
            if block.lang == "console":
                return self.run_console(block, cwd, env)
            return self.run_script(block, cwd, env)
        finally:
            stop = subprocess.run([str(BIN / "grid"), "agents", "stop"], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            assert stop.returncode == 0, f"could not stop the block's agents: {stop.stderr}"

    # --- yaml --------------------------------------------------------------------------------

    def check_yaml(self, block: Block, base_config: Path, path: Path | None = None) -> str:
        """A cluster file, or a fragment merged into ``base_config``, must load; it is written
        to ``path`` (else a scratch file)."""
        from mesh.config import load_cluster_config
        from mesh.errors import ConfigError

        doc = yaml.safe_load(block.text)
        if not isinstance(doc, dict):
            return f"{block.id}: not a YAML mapping"
        if "nodes" not in doc:  # a fragment: it must fit in a cluster file
            base = yaml.safe_load(base_config.read_text())
            doc = merge(base, doc)
        path = path or self.tmp / f"yaml-{block.page.replace('/', '_')}-{block.line}.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            load_cluster_config(path)
        except ConfigError as exc:
            return f"{block.id}: the cluster file does not load: {exc}"
        return ""

    def write_file(self, block: Block, cwd: Path, config: Path) -> str:
        """``file NAME``: the block becomes ``cwd/NAME`` (a yaml fragment merged into ``config``)."""
        path = cwd / block.directives["file"]
        if block.lang == "yaml":
            return self.check_yaml(block, config, path)
        path.write_text(block.text)
        return ""

    # --- python ------------------------------------------------------------------------------

    def python_groups(self, blocks: list[Block]) -> dict[str, list[Block]]:
        """Python blocks that run in one process: a block and the ``continue`` ones after it."""
        groups: dict[str, list[Block]] = {}
        current: list[Block] | None = None
        for b in blocks:
            if b.lang != "python" or "skip" in b.directives:
                if b.lang in RUN and "skip" not in b.directives and b.lang != "python":
                    current = None  # a shell step in between: a later `continue` is an error
                continue
            if "continue" in b.directives:
                if current is None:
                    raise AssertionError(f"{b.id}: `continue` with no python block just before")
                current.append(b)
            else:
                current = [b]
            groups[b.id] = current
        return groups

    def run_python_group(self, group: list[Block], cwd: Path, env: dict) -> None:
        special = {b.id: b.directives["fields-of"] for b in group if "fields-of" in b.directives}
        sources = [{"id": b.id, "source": b.text, "fields_of": special.get(b.id)} for b in group]
        done = subprocess.run([sys.executable, "-c", PY_RUNNER], input=json.dumps(sources),
                              cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S * 2)
        try:
            results = json.loads(done.stdout.splitlines()[-1])
        except (IndexError, ValueError):
            failure = (f"the python runner failed (exit {done.returncode}):\n{done.stdout}\n"
                       f"{done.stderr}")
            for b in group:
                self.outcomes[b.id] = Outcome(failure=failure)
            return
        for b, res in zip(group, results + [None] * len(group)):
            if res is None:
                self.outcomes[b.id] = Outcome(failure="not run: an earlier block of its group "
                                                      "failed")
            elif res["error"]:
                self.outcomes[b.id] = Outcome(
                    failure=f"{b.id} raised:\n{res['error']}\nprinted:\n{res['stdout']}")
            elif b.output is not None:
                diff = compare(b.output.text.splitlines(), res["stdout"].splitlines(),
                               b.output.first_content_line)
                self.outcomes[b.id] = Outcome(failure=(
                    f"{b.id}: what it prints drifted from the doc's ({b.output.id}; - doc, "
                    f"+ actual; compared by shape):\n" + "\n".join(diff)
                    + "\n  actual output:\n" + textwrap.indent(res["stdout"].rstrip(), "    | ")
                ) if diff else "")
            else:
                self.outcomes[b.id] = Outcome()


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


# Runs a group of python blocks in one namespace, each block's stdout captured on its own;
# top-level await runs on one event loop kept for the whole group; ``>>>`` blocks are doctests;
# a ``fields-of`` block is a class whose annotated fields must be the named dataclass's.
PY_RUNNER = r'''
import ast, asyncio, contextlib, dataclasses, doctest, importlib, io, json, sys, traceback
blocks = json.load(sys.stdin)
out = sys.stdout
glob = {"__name__": "__main__"}
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
results = []
for b in blocks:
    buf = io.StringIO()
    error = ""
    try:
        with contextlib.redirect_stdout(buf):
            if b["fields_of"]:
                module, _, name = b["fields_of"].rpartition(".")
                real = [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))]
                cls = next(n for n in ast.parse(b["source"]).body if isinstance(n, ast.ClassDef))
                doc = [s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)]
                if doc != real:
                    raise AssertionError(f"the doc's fields {doc} are not {b['fields_of']}'s {real}")
            elif b["source"].lstrip().startswith(">>>"):
                test = doctest.DocTestParser().get_doctest(b["source"], glob, b["id"], b["id"], 0)
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
                report = io.StringIO()
                runner.run(test, out=report.write, clear_globs=False)
                if runner.failures:
                    raise AssertionError("doctest failed:\n" + report.getvalue())
            else:
                code = compile(b["source"], b["id"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                result = eval(code, glob)
                if asyncio.iscoroutine(result):
                    loop.run_until_complete(result)
    except BaseException:
        error = traceback.format_exc(limit=-4)
    results.append({"id": b["id"], "stdout": buf.getvalue(), "error": error})
    if error:
        break
loop.close()
out.write("\n" + json.dumps(results) + "\n")
'''


def ssh_missing() -> str:
    """Why the ``ssh`` blocks cannot run here, or ""."""
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh-keygen"):
        return "needs OpenSSH's sshd and ssh-keygen (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return f"needs root to run sshd (running as {getpass.getuser()})"
    return ""


@pytest.fixture(scope="module")
def pages(docs_mesh, tmp_path_factory):
    runner = PageRunner(docs_mesh, tmp_path_factory.mktemp("docs-pages"))
    try:
        yield runner
    finally:
        runner.close()


@pytest.mark.parametrize("block", [
    pytest.param(b, id=b.id, marks=pytest.mark.xdist_group(xdist_group(b)))
    for b in BLOCKS if b.lang in RUN])
def test_doc_example(block, pages, request):
    if block.page in RAY_PAGES and not pages.ray_address:
        pages.ray_address = request.getfixturevalue("ray_cluster")
    outcome = pages.outcome(block)
    if outcome.skip:
        pytest.skip(f"{block.id}: {outcome.skip}")
    if outcome.failure:
        pytest.fail(outcome.failure, pytrace=False)


@docs_group
def test_every_fence_names_a_known_language():
    unnamed = [f"{b.id} ({b.lang or 'none'})" for b in BLOCKS if b.lang not in LANGUAGES]
    assert not unnamed, ("fences must name their language (python, console, bash, yaml, text, "
                         f"...) so the doc test knows what to run: {unnamed}")


@docs_group
def test_skips_are_few_and_give_a_reason():
    skipped = [b for b in BLOCKS if "skip" in b.directives]
    assert all(b.directives["skip"] for b in skipped), "every skip says why"
    runnable = [b for b in BLOCKS if b.lang in RUN]
    # Today 12 of 64: measurements (6), machines set up by hand (ray start on gpu-master and
    # gpu1, twice), pip, a terminal, another program on an agent's port.
    assert len(skipped) <= 0.25 * len(runnable), [f"{b.id}: {b.directives['skip']}"
                                                  for b in skipped]


@docs_group
def test_the_page_runner_catches_a_drifted_block(docs_mesh, tmp_path):
    """A doc whose output changed fails with the doc line and the actual one; the same output
    with another pid and block id passes."""
    from support.docblocks import parse_markdown

    good, bad = parse_markdown(textwrap.dedent("""\
        ```console
        $ echo "✓ started (pid $$)"; echo "Block ID: block_$$_local-2_h$$x"
        ✓ started (pid 5634)
        Block ID: block_0_local-2_hoft6qz2k4
        ```
        ```console
        $ echo "✓ started (pid $$)"; echo "Block ID: block_$$_local-2_h$$x"
        ✓ local-1: started (pid 5634)
        Block ID: block_0_local-2_hoft6qz2k4
        ```
        """), "inline.md")
    runner = PageRunner(docs_mesh, tmp_path)
    env = runner.env(docs_mesh.config_path, tmp_path / ".state")
    assert runner.run_console(good, tmp_path, env) == ""
    failure = runner.run_console(bad, tmp_path, env)
    assert "- doc line 8: ✓ local-1: started (pid 5634)" in failure
    assert "+ actual:       ✓ started (pid " in failure
