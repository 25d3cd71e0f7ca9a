"""The systemd unit an agent runs in (``mesh/nodes/systemd.py``): its ``ExecStart`` survives nasty
paths, and the unit asks for what the issue wants (Restart=on-failure, a raised LimitNOFILE).

Two judges of the quoting: ``systemd_words`` below, a parser written from systemd's documented
rules for command lines (split on whitespace outside quotes, C escapes, ``%%`` and ``$$``), and,
where it is installed, ``systemd-analyze verify`` itself, which names the program it parsed when
that program does not exist. Nothing is installed: the units are files in a temporary
directory.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mesh.nodes import systemd
from mesh.sockets import AGENT_FD_LIMIT

NASTY = [
    "/opt/my mesh/venv/bin/python",  # a space
    "/srv/100%/python",  # a specifier character
    "/home/a$HOME/b${USER}",  # environment variables
    '/tmp/quote"d/and\'single',  # both quotes
    "/tmp/back\\slash\\",  # backslashes, one at the end (a line continuation, unescaped)
    "/tmp/semi;colon ;",  # a command separator
    "/tmp/tab\there\nnewline",  # control characters
    "/tmp/ünïcødé ✓",
    "/tmp/%%n%i$$",
]

_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", '"': '"', "'": "'", "s": " "}


def systemd_words(line: str) -> list[str]:
    """The argv systemd runs for the ``ExecStart=`` value ``line``, by its documented rules:
    words split on whitespace unless quoted, C-style escapes (``\\xNN`` too), then ``%%`` ->
    ``%`` (specifiers) and ``$$`` -> ``$`` (environment). Any other ``%`` or ``$`` would be
    expanded by systemd: the test fails on it."""
    words, i = [], 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        quote = line[i] if line[i] in "\"'" else None
        i += 1 if quote else 0
        word = []
        while i < len(line):
            ch = line[i]
            if quote and ch == quote:
                i += 1
                break
            if not quote and ch in " \t":
                break
            if ch == "\\":
                nxt = line[i + 1]
                if nxt == "x":
                    word.append(chr(int(line[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                word.append(_ESCAPES[nxt])
                i += 2
                continue
            word.append(ch)
            i += 1
        else:
            assert not quote, f"unterminated quote in {line!r}"
        # the program's path gets specifiers, not environment variables
        words.append(_unspecify("".join(word), "%" if not words else "%$"))
    return words


def _unspecify(word: str, special: str) -> str:
    out, i = [], 0
    while i < len(word):
        ch = word[i]
        if ch in special:
            assert word[i + 1 : i + 2] == ch, f"{ch} would be expanded by systemd in {word!r}"
            out.append(ch)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _exec_start(unit: str) -> str:
    found = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(found) == 1
    return found[0].removeprefix("ExecStart=")


@pytest.mark.parametrize("path", NASTY)
def test_a_nasty_path_reaches_the_agent_as_it_was(path):
    argv = [path, "-m", "agents.main", "--config", path + "/cluster.yaml", "--node", "n 1",
            "--log-file", "", "50%"]
    unit = systemd.render_unit("n 1", argv, system=False)
    words = systemd_words(_exec_start(unit))
    if any(ch in "\"'\\\t\n" for ch in path):  # systemd refuses such a program: env runs it
        assert words == [systemd.ENV, *argv]
    else:
        assert words == argv
    assert all("\n" not in line and "\r" not in line for line in unit.split("\n")[:-1])


def test_plain_arguments_stay_readable():
    line = systemd.exec_line(["/usr/bin/python3", "-m", "agents.main", "--node", "local-1"])
    assert line == "/usr/bin/python3 -m agents.main --node local-1"
    assert systemd.quote_arg("a b") == '"a b"' and systemd.quote_arg("") == '""'
    assert systemd.quote_arg("100%") == "100%%" and systemd.quote_arg("$X") == "$$X"


def test_the_program_must_be_an_absolute_path():
    for argv in ([], ["python3", "-m", "agents.main"], ["-/usr/bin/python3"]):
        with pytest.raises(ValueError):
            systemd.exec_line(argv)
    with pytest.raises(ValueError):
        systemd.quote_arg("a\0b")


@pytest.mark.parametrize("system", [True, False])
def test_the_unit_restarts_on_failure_and_raises_the_descriptor_limit(system):
    unit = systemd.render_unit("node%1", ["/usr/bin/python3", "-m", "agents.main"],
                               system=system, working_dir="/srv/mesh dir")
    lines = unit.splitlines()
    assert "Restart=on-failure" in lines
    assert f"LimitNOFILE={AGENT_FD_LIMIT}" in lines and AGENT_FD_LIMIT >= 65536
    assert "Description=memory mesh agent node%%1" in lines
    assert 'WorkingDirectory="/srv/mesh dir"' in lines
    wanted = "multi-user.target" if system else "default.target"
    assert f"WantedBy={wanted}" in lines
    assert systemd.unit_name("n1") == "mesh-agent-n1.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("path", [p for p in NASTY if "\n" not in p and "\t" not in p])
def test_systemd_itself_reads_the_program_path_back(tmp_path, path):
    """``systemd-analyze verify`` parses the unit offline (no running systemd needed) and names
    the program it would run when that does not exist: that name must be ``path``. A path
    systemd refuses as a program (quotes, backslashes) runs through ``env``: the unit is
    valid."""
    missing = str(tmp_path / path.lstrip("/"))
    unit = tmp_path / "mesh-agent-t.service"
    unit.write_text(systemd.render_unit("t", [missing, "--node", "t 1", "50%"], system=True))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    said = done.stdout + done.stderr
    if any(ch in "\"'\\" for ch in path):  # run through env, which exists: a valid unit
        assert done.returncode == 0 and "special characters" not in said, said
    else:
        assert f"Command {missing} is not executable" in said, said


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_a_unit_whose_program_exists(tmp_path):
    program = tmp_path / "with space %" / "agent"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "mesh-agent-t.service"
    unit.write_text(systemd.render_unit("t", [str(program), "a b", "c\\d"], system=True))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
