"""The ``logging:`` section (mesh/logconfig.py) and the agent's log formats (agents/logs.py).

The formats are checked through a real handler writing a real file; the agent process itself is
tested in tests/integration/test_logging.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading

import pytest

from agents import logs
from mesh.config import parse_config
from mesh.errors import ConfigError
from mesh.logconfig import LoggingConfig, parse_logging
from mesh.units import KiB, MiB


def _cluster(logging_section) -> dict:
    return {"name": "c", "nodes": [{"name": "a", "host": "127.0.0.1"}], "logging": logging_section}


def test_defaults_and_sizes():
    assert parse_logging(None) == LoggingConfig()
    assert LoggingConfig() == LoggingConfig("INFO", "text", 16 * MiB, 3, None)
    cfg = parse_logging({"level": "debug", "format": "json", "max_bytes": "2KiB", "backups": 0})
    assert (cfg.level, cfg.format, cfg.max_bytes, cfg.backups) == ("DEBUG", "json", 2 * KiB, 0)
    assert parse_config(_cluster({"level": "warning"}), "x.yaml").logging.level == "WARNING"
    assert parse_config(_cluster(None), "x.yaml").logging == LoggingConfig()


def test_file_names_the_node():
    cfg = parse_logging({"file": "/var/log/mesh/{node}.log"})
    assert cfg.file_for("gpu1") == "/var/log/mesh/gpu1.log"
    assert LoggingConfig().file_for("gpu1") is None


@pytest.mark.parametrize("section, message", [
    ({"format": "xml"}, "logging.format: expected text or json, got 'xml'"),
    ({"format": "jsn"}, "got 'jsn' (did you mean 'json'?)"),
    ({"level": "verbose"}, "logging.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
                           "got 'verbose'"),
    ({"level": "warn"}, "got 'warn' (did you mean 'WARNING'?)"),
    ({"level": 10}, "logging.level: expected one of"),
    ({"levle": "INFO"}, "logging.levle: unknown key (did you mean 'level'?) (known: level, "
                        "format, max_bytes, backups, file)"),
    ({"max_bytes": 100}, "logging.max_bytes: expected a size of at least 1KiB, got 100"),
    ({"max_bytes": "lots"}, "logging.max_bytes: "),
    ({"max_bytes": True}, "logging.max_bytes: expected a size of at least 1KiB, got True"),
    ({"backups": -1}, "logging.backups: expected an integer in 0..100, got -1"),
    ({"file": "logs/{node}.log"}, "logging.file: expected an absolute path"),
    ("loud", "logging: expected a mapping, got 'loud'"),
])
def test_mistakes_name_the_file_and_the_field(section, message):
    with pytest.raises(ConfigError) as info:
        parse_config(_cluster(section), "x.yaml")
    assert str(info.value).startswith("x.yaml: logging")
    assert message in str(info.value)


def test_the_values_check_themselves():
    with pytest.raises(ConfigError, match="logging.format"):
        dataclasses.replace(LoggingConfig(), format="yaml")


@pytest.fixture
def logger(request):
    """A logger of its own (not the root: pytest's handlers stay as they are)."""
    log = logging.getLogger(f"mesh.test.{request.node.name}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    logs.clear_request()


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_json_lines_carry_time_level_node_event_and_request(tmp_path, logger):
    path = tmp_path / "agent.log"
    logger.addHandler(logs.make_handler(LoggingConfig(format="json"), "node1", str(path)))
    logger.debug("plain %d", 1)
    logs.set_request(42)
    logger.info("freed %s", "b1\nsecond line", extra={"event": "freed", "size": 7, "peer": object()})
    logs.clear_request()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    lines = _lines(path)
    assert len(lines) == 3  # a newline in a message or a traceback stays inside its line
    first, second, third = (json.loads(line) for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["level"] == "DEBUG" and first["node"] == "node1"
    assert first["logger"] == logger.name and first["event"] == logger.name.rsplit(".", 1)[-1]
    assert first["message"] == "plain 1" and "request_id" not in first
    assert second["event"] == "freed" and second["request_id"] == 42
    assert second["message"] == "freed b1\nsecond line" and second["size"] == 7
    assert second["peer"].startswith("<object object")
    assert third["level"] == "ERROR" and "request_id" not in third
    assert "ValueError: boom" in third["exc"] and "Traceback" in third["exc"]


def test_a_request_belongs_to_the_thread_that_set_it(tmp_path, logger):
    path = tmp_path / "agent.log"
    logger.addHandler(logs.make_handler(LoggingConfig(format="json"), "node1", str(path)))
    logs.set_request(7)
    other = threading.Thread(target=logger.info, args=("from another thread",))
    other.start()
    other.join(timeout=10)
    logger.info("from the request loop")
    docs = {d["message"]: d for d in map(json.loads, _lines(path))}
    assert "request_id" not in docs["from another thread"]
    assert docs["from the request loop"]["request_id"] == 7


def test_text_lines_name_the_node_and_the_request(tmp_path, logger):
    path = tmp_path / "agent.log"
    logger.addHandler(logs.make_handler(LoggingConfig(), "node%1", str(path)))
    logger.warning("disk %s", "low")
    logs.set_request(9)
    logger.info("handling")
    first, second = _lines(path)
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} WARNING node%1 {logger.name}: "
                        r"disk low", first)
    assert second.endswith(f"INFO node%1 {logger.name}: handling [request 9]")


def test_the_file_is_rotated_at_max_bytes(tmp_path, logger):
    path = tmp_path / "agent.log"
    cfg = LoggingConfig(format="json", max_bytes=1 * KiB, backups=2)
    logger.addHandler(logs.make_handler(cfg, "node1", str(path)))
    for i in range(200):
        logger.info("line %d of a log that grows", i)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(p.stat().st_size <= 1 * KiB for p in tmp_path.iterdir())
    assert json.loads(_lines(path)[-1])["message"] == "line 199 of a log that grows"


def test_a_request_says_it_starts_at_debug_only(tmp_path):
    log = logging.getLogger("mesh.agent.request")
    path = tmp_path / "agent.log"
    handler = logs.make_handler(LoggingConfig(format="json"), "node1", str(path))
    log.addHandler(handler)
    old_level, old_propagate = log.level, log.propagate
    log.propagate = False
    try:
        log.setLevel(logging.INFO)
        logs.set_request(5, "alloc")
        log.setLevel(logging.DEBUG)
        logs.set_request(6, "write")
    finally:
        logs.clear_request()
        log.removeHandler(handler)
        handler.close()
        log.setLevel(old_level)
        log.propagate = old_propagate
    (only,) = map(json.loads, _lines(path))
    assert (only["event"], only["op"], only["request_id"]) == ("request", "write", 6)
    assert only["message"] == "handling write" and only["level"] == "DEBUG"
