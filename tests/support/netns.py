"""Network namespaces for a test: a hub namespace with a bridge, and one namespace per agent
joined to it by a veth pair, on a private subnet that exists only inside them. ``cut(i)`` sets
the hub's end of agent ``i``'s pair down (a partition: that agent reaches no one, and no one
reaches it); ``heal(i)`` sets it up again.

``namespaces(n)`` yields a ``Net``; processes started with ``Net.popen(ns, argv)`` run inside a
namespace and are killed (by pid) before the namespaces are deleted. Needs root and ``ip``;
tests skip cleanly without them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterator

import pytest

SUBNET = "10.213.{}.{}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Net:
    tag: str
    n: int
    third: int  # the subnet's third octet
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.tag}h"

    def ns(self, i: int) -> str:
        return f"{self.tag}a{i}"

    def address(self, i: int) -> str:
        """Agent ``i``'s address (1-based); the hub itself is .100."""
        return SUBNET.format(self.third, i)

    @property
    def hub_address(self) -> str:
        return SUBNET.format(self.third, 100)

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.procs.append(proc)
        return proc

    def cut(self, i: int) -> None:
        _ip("-n", self.hub, "link", "set", f"h{i}", "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.hub, "link", "set", f"h{i}", "up")


@contextlib.contextmanager
def namespaces(n: int) -> Iterator[Net]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and `ip` (this test partitions agents)")
    tag = f"mz{os.getpid() % 100000}"
    net = Net(tag, n, third=os.getpid() % 200 + 20)
    made: list[str] = []
    try:
        try:
            for name in [net.hub] + [net.ns(i) for i in range(1, n + 1)]:
                _ip("netns", "add", name)
                made.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", net.hub, "addr", "add", f"{net.hub_address}/24", "dev", "br0")
            _ip("-n", net.hub, "link", "set", "br0", "up")
            for i in range(1, n + 1):
                _ip("-n", net.hub, "link", "add", f"h{i}", "type", "veth", "peer", "name", "e0",
                    "netns", net.ns(i))
                _ip("-n", net.hub, "link", "set", f"h{i}", "master", "br0")
                _ip("-n", net.hub, "link", "set", f"h{i}", "up")
                _ip("-n", net.ns(i), "addr", "add", f"{net.address(i)}/24", "dev", "e0")
                _ip("-n", net.ns(i), "link", "set", "e0", "up")
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        yield net
    finally:
        for proc in net.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
