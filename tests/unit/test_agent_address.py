"""The parser of agent addresses (``mesh.membership.parse_agent_address``) that guards every
connect a heartbeat or a MOVE/PULL asks for (issue 10, defect 1: ``tcp://-:80`` passed the old
regex and raised in ``sub.connect``)."""

from __future__ import annotations

import pytest

from mesh.membership import is_agent_address, parse_agent_address


@pytest.mark.parametrize("address, parsed", [
    ("tcp://127.0.0.1:7700", ("127.0.0.1", 7700)),
    ("tcp://node-1.example.com:1", ("node-1.example.com", 1)),
    ("tcp://localhost:65535", ("localhost", 65535)),
    ("tcp://[::1]:80", ("::1", 80)),
    ("tcp://w2:7701", ("w2", 7701)),
])
def test_good_addresses(address, parsed):
    assert parse_agent_address(address) == parsed
    assert is_agent_address(address)


@pytest.mark.parametrize("address", [
    "tcp://-:80", "tcp://a-:80", "tcp://-a:80", "tcp://a..b:80", "tcp://.:80", "tcp://:80",
    "tcp://host:0", "tcp://host:65536", "tcp://host:99999", "tcp://host:", "tcp://host",
    "tcp://host:8a", "tcp://host:\u0661\u0662", "tcp://[::1:80", "tcp://[zz]:80", "tcp://::1:80",
    "tcp://999.1.1.1:80", "tcp://1.2.3:80", "tcp://*:80", "udp://host:80", "host:80",
    "tcp://h\u00e9:80", "tcp://a b:80", "tcp://" + "a" * 64 + ":80",
    "tcp://" + ".".join(["a" * 60] * 5) + ":80", 80, None, b"tcp://a:1",
])
def test_bad_addresses(address):
    assert not is_agent_address(address)
    with pytest.raises(ValueError):
        parse_agent_address(address)
