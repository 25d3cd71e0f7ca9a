"""Issue 13: ``grid memory retrieve KEY | head -1`` exited 1 with no message in 2 runs of 3.

rich's console answers a write to a closed pipe with ``SystemExit(1)`` (its ``on_broken_pipe``),
and click does the same for EPIPE; ``mesh.cli.main`` now turns an exit raised while a
``BrokenPipeError`` is being handled into the shell's 141, with nothing on stderr. A real agent,
a real multi-MiB object, the real ``grid`` in a real shell pipeline.
"""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from support.cli import GRID, cli_env, grid
from support.mesh import running_mesh

RUNS = 5


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    with running_mesh(tmp, n=1) as mesh:
        env = cli_env(tmp)
        text = tmp / "text.txt"
        text.write_bytes(b"a line of text\n" * 300_000)  # 4.5 MB
        blob = tmp / "blob.bin"
        blob.write_bytes(os.urandom(6 << 20))
        for key, path in (("text", text), ("blob", blob)):
            r = grid("memory", "store", key, str(path), "-c", str(mesh.config_path), env=env,
                     cwd=tmp)
            assert r.returncode == 0, r.stdout + r.stderr
        yield mesh, env, tmp


def _piped(mesh, env, tmp, args: str, reader: str) -> tuple[int, str]:
    """grid's own exit status in ``grid ... | reader`` (bash's PIPESTATUS), and its stderr."""
    script = (f"set -o pipefail; {shlex.quote(str(GRID))} {args} -c "
              f"{shlex.quote(str(mesh.config_path))} 2>{shlex.quote(str(tmp / 'err'))} "
              f"| {reader} >/dev/null; echo ${{PIPESTATUS[0]}}")
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp, capture_output=True,
                          text=True, timeout=60)
    return int(done.stdout.strip()), (tmp / "err").read_text()


@pytest.mark.parametrize("key", ["text", "blob"])
def test_a_stream_into_a_closed_pipe_exits_141(stored, key):
    """Megabytes to standard output: the writer always outlives ``head``'s reading."""
    mesh, env, tmp = stored
    for _ in range(RUNS):
        code, said = _piped(mesh, env, tmp, f"memory retrieve {key} -o -", "head -c 10")
        assert code == 141 and said == "", (code, said)


@pytest.mark.parametrize("key", ["text", "blob"])
def test_a_preview_into_a_closed_pipe_never_exits_1(stored, key):
    """The preview is about 1 KiB: when it all fits in the pipe before ``head`` closes it, grid
    has nothing left to write and ends with 0, as ``seq 3 | head -1`` does; when a write comes
    after, 141. Never 1, never a word on stderr (the defect: 1, silently)."""
    mesh, env, tmp = stored
    for _ in range(RUNS):
        code, said = _piped(mesh, env, tmp, f"memory retrieve {key}", "head -1")
        assert code in (0, 141) and said == "", (code, said)
