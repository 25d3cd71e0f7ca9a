"""Real OpenSSH servers on loopback for deployment tests: one sshd per "host".

Host i listens on 127.0.0.{i + 2} (never 127.0.0.1) on a free port, with a throw-away host key
and one authorized client key; ``wrong_key_path`` is a valid key no host accepts. Nothing
outside the temporary directory is touched except creating ``/run/sshd`` (sshd's privilege
separation directory) when it is missing.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"


def sshd_path() -> str:
    if not os.access(SSHD, os.X_OK):
        raise RuntimeError("openssh-server is not installed: apt-get install -y openssh-server")
    return SSHD


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)
    return path


@dataclass
class SshHost:
    name: str
    address: str
    port: int
    user: str
    key_path: Path
    workdir: Path
    proc: subprocess.Popen | None = None


class SshHosts:
    def __init__(self, tmp: Path, n: int = 3):
        self.tmp = Path(tmp)
        self.keys = self.tmp / "keys"
        self.keys.mkdir(parents=True, exist_ok=True)
        self.client_key = _keygen(self.keys / "client")
        self.wrong_key_path = _keygen(self.keys / "wrong")
        self.host_key = _keygen(self.keys / "host")
        (self.keys / "authorized_keys").write_text((self.keys / "client.pub").read_text())
        user = getpass.getuser()
        self.hosts = []
        for i in range(n):
            address = f"127.0.0.{i + 2}"
            work = self.tmp / f"host{i + 1}"
            work.mkdir(exist_ok=True)
            self.hosts.append(SshHost(f"host{i + 1}", address, _free_port(address), user,
                                      self.client_key, work))

    def _config(self, h: SshHost) -> Path:
        path = h.workdir / "sshd_config"
        path.write_text(
            f"ListenAddress {h.address}:{h.port}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.keys / 'authorized_keys'}\n"
            f"PidFile {h.workdir / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
        )
        return path

    def start(self) -> "SshHosts":
        exe = sshd_path()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for h in self.hosts:
            log = open(h.workdir / "sshd.log", "ab")
            h.proc = subprocess.Popen([exe, "-D", "-e", "-f", str(self._config(h))],
                                      stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
        for h in self.hosts:
            self._wait_login(h)
        return self

    def _wait_login(self, h: SshHost, timeout_s: float = 15.0) -> None:
        import paramiko

        deadline = time.monotonic() + timeout_s
        while True:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect(h.address, h.port, h.user, key_filename=str(h.key_path),
                               look_for_keys=False, allow_agent=False, timeout=2)
                _, out, _ = client.exec_command("echo ok", timeout=5)
                if out.read().strip() == b"ok":
                    return
            except Exception:
                pass
            finally:
                client.close()
            if time.monotonic() > deadline or (h.proc and h.proc.poll() is not None):
                raise RuntimeError(f"sshd for {h.name} never accepted a login:\n"
                                   + (h.workdir / "sshd.log").read_text())
            time.sleep(0.1)

    def stop(self) -> list[int]:
        killed = []
        for h in self.hosts:
            if h.proc is None or h.proc.poll() is not None:
                continue
            children = psutil.Process(h.proc.pid).children(recursive=True)
            h.proc.send_signal(signal.SIGTERM)
            try:
                h.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                h.proc.kill()
                h.proc.wait(timeout=10)
                killed.append(h.proc.pid)
            for child in children:  # session processes (not the agents: they left the session)
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        return killed

    def __enter__(self) -> "SshHosts":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
