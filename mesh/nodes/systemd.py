"""Agents as systemd units: the unit file (``render_unit``, pure) and the few ``systemctl`` calls
that install, start and stop it. One renderer for every node: a local node started with
``grid agents start --systemd`` (``mesh/nodes/local.py``) and a remote one (``nodectl start
--systemd`` over SSH, ``mesh/nodes/nodectl.py``) get the same unit.

Which manager: as root, a system unit (``/etc/systemd/system``, ``systemctl``, wanted by
``multi-user.target``); as anyone else, a user unit (``~/.config/systemd/user``, ``systemctl
--user``, wanted by ``default.target``), which stops when that user's last session ends unless
lingering is on (``loginctl enable-linger USER``; the start message says so). The unit restarts
the agent when it fails (``Restart=on-failure``; a stop with SIGTERM is a clean exit, not a
failure), and raises its descriptor limit to ``AGENT_FD_LIMIT`` (``LimitNOFILE``: the agent caps
its connections below it, ``agents/limits.py``).

``ExecStart`` is quoted by systemd's rules for command lines (systemd.service(5), "Command
lines"; systemd.unit(5), "Specifiers"): each argument is one word, in double quotes when it
holds whitespace, quotes or ``;`` (or is empty), with ``\\`` and ``"`` escaped C-style, control
characters as ``\\xNN``, ``%`` doubled (specifiers are expanded inside quotes too) and ``$``
doubled in the arguments (environment variables; the program's path gets no substitution). A
program path holding quotes or backslashes, which systemd refuses, runs through ``env``. So a
path with spaces, ``%``, ``$`` or quotes reaches the agent as it was (``tests/unit/test_systemd_unit.py`` checks it against a parser of those
rules and, where it is installed, against ``systemd-analyze verify``).

Where systemd does not run (a container, a machine booted without it: no
``/run/systemd/system``, the check ``sd_booted()`` makes), ``unavailable`` says why and the
callers refuse ``--systemd`` with that line instead of ignoring it.

Not here: the agent's command line (``mesh/nodes/local.py: agent_command``), SSH
(``mesh/nodes/deploy.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mesh.sockets import AGENT_FD_LIMIT

SYSTEMCTL_TIMEOUT_S = 60.0
ENV = "/usr/bin/env"  # runs a program whose path systemd would refuse (``exec_line``)
_NEEDS_QUOTES = set(" \t\"';")


def unit_name(node: str) -> str:
    return f"mesh-agent-{node}.service"


def is_system_manager() -> bool:
    """A system unit (root) or a user unit (anyone else)."""
    return os.geteuid() == 0


def units_dir(system: bool | None = None) -> Path:
    system = is_system_manager() if system is None else system
    return Path("/etc/systemd/system") if system else \
        Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def quote_arg(arg: str, program: bool = False) -> str:
    """One argument of an ``ExecStart=`` line, read back by systemd as exactly ``arg``. The
    ``program`` (the first word) gets no environment substitution, so its ``$`` stays single."""
    if "\0" in arg:
        raise ValueError(f"an argument of a systemd command line cannot hold NUL: {arg!r}")
    out = []
    for ch in arg:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "%":
            out.append("%%")
        elif ch == "$" and not program:
            out.append("$$")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    word = "".join(out)
    if not arg or "\\" in word or any(ch in _NEEDS_QUOTES for ch in arg):
        return f'"{word}"'
    return word


def exec_line(argv: list[str]) -> str:
    """``argv`` as the value of ``ExecStart=``. Its program must be an absolute path (a
    relative one, or one starting with a prefix character such as ``-``, means something else
    to systemd). systemd refuses a program path holding quotes, backslashes or control
    characters ("Executable name contains special characters"); such a program is run through
    ``env``, which takes its path as an ordinary argument."""
    if not argv or not argv[0].startswith("/"):
        raise ValueError(f"a systemd unit runs an absolute path, got {argv[:1]!r}")
    if any(ch in "\"'\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in argv[0]):
        if "=" in argv[0]:  # env would take it for a variable to set
            raise ValueError(f"systemd cannot run {argv[0]!r}: its path holds both a quote, "
                             "backslash or control character and '='")
        argv = [ENV, *argv]
    return " ".join(quote_arg(a, program=i == 0) for i, a in enumerate(argv))


def _escape_value(text: str) -> str:
    """A one-line value outside ExecStart (Description): specifiers doubled, no line breaks."""
    return " ".join(text.split()).replace("%", "%%")


def render_unit(node: str, argv: list[str], *, system: bool,
                working_dir: str | None = None) -> str:
    """The unit file that runs ``argv`` (the agent of ``node``) under the system manager
    (``system``) or a user's."""
    lines = [
        "[Unit]",
        f"Description={_escape_value(f'memory mesh agent {node}')}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_line(argv)}",
        "Restart=on-failure",
        "RestartSec=1",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=10",
        # the agent caps its connections below its descriptor limit (agents/limits.py)
        f"LimitNOFILE={AGENT_FD_LIMIT}",
    ]
    if working_dir is not None:
        lines.append(f"WorkingDirectory={quote_arg(working_dir)}")
    lines += ["", "[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}",
              ""]
    return "\n".join(lines)


def _systemctl(*args: str, system: bool) -> subprocess.CompletedProcess:
    cmd = ["systemctl", *([] if system else ["--user"]), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", str(exc))


def unavailable(system: bool | None = None) -> str | None:
    """Why units cannot be run here (one phrase), or None when systemd can run them."""
    system = is_system_manager() if system is None else system
    if not Path("/run/systemd/system").is_dir():
        return "this node has no running systemd (no /run/systemd/system: a container, or " \
               "booted without it)"
    if shutil.which("systemctl") is None:
        return "systemd runs here but systemctl is not installed"
    if not system:
        r = _systemctl("show-environment", system=False)
        if r.returncode != 0:
            return "this user has no systemd user manager (systemctl --user: " \
                   f"{(r.stderr or r.stdout).strip() or 'failed'})"
    return None


def install(node: str, text: str, system: bool | None = None) -> str | None:
    """Write the unit, reload, enable and start it (restarting it if it runs); None when that
    worked, else why not (one line)."""
    system = is_system_manager() if system is None else system
    directory = units_dir(system)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / unit_name(node)).write_text(text)
    except OSError as exc:
        return f"cannot write {directory / unit_name(node)}: {exc.strerror or exc}"
    for args in (("daemon-reload",), ("enable", unit_name(node)),
                 ("restart", unit_name(node))):
        r = _systemctl(*args, system=system)
        if r.returncode != 0:
            return f"systemctl {' '.join(args)}: {(r.stderr or r.stdout).strip()}"
    return None


def main_pid(node: str, system: bool | None = None) -> int | None:
    """The pid systemd runs the unit's agent as (None when it runs none)."""
    system = is_system_manager() if system is None else system
    r = _systemctl("show", "--property", "MainPID", "--value", unit_name(node), system=system)
    try:
        pid = int(r.stdout.strip())
    except ValueError:
        return None
    return pid or None


def installed(node: str, system: bool | None = None) -> bool:
    return (units_dir(system) / unit_name(node)).is_file()


def active(node: str, system: bool | None = None) -> bool:
    system = is_system_manager() if system is None else system
    return unavailable(system) is None and \
        _systemctl("is-active", "--quiet", unit_name(node), system=system).returncode == 0


def stop(node: str, system: bool | None = None) -> str | None:
    """Stop the unit and keep it from starting at boot; None when that worked, else why not."""
    system = is_system_manager() if system is None else system
    r = _systemctl("disable", "--now", unit_name(node), system=system)
    return None if r.returncode == 0 else (r.stderr or r.stdout).strip() or "systemctl failed"


def lingers(user: str | None = None) -> bool:
    """Whether this user's units outlive their sessions (``loginctl enable-linger``)."""
    import getpass

    return Path("/var/lib/systemd/linger", user or getpass.getuser()).exists()
