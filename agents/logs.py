"""The agent's log: level, format and destination from the cluster file's ``logging:`` section.

``setup(config, node, log_file=..., level=...)`` replaces the root logger's handlers with one:

- a ``RotatingFileHandler`` on ``log_file`` (rotated at ``config.max_bytes``, keeping
  ``config.backups`` old files: ``agent.log.1`` is the newest), or stderr when there is no file;
- ``format: text``: ``2025-01-02 03:04:05,678 INFO node1 mesh.agent: message`` (the format of
  earlier versions plus the node), with `` [request 42]`` at the end while a request is handled;
- ``format: json``: one JSON object per line::

      {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "node": "node1",
       "logger": "mesh.agent", "event": "agent", "message": "...", "request_id": 42}

  ``time`` is UTC with milliseconds; ``event`` is a short machine name, taken from
  ``log.info(..., extra={"event": "freed"})`` when given, else the last part of the logger's
  name; ``request_id`` is there while a request is handled; ``exc`` holds a traceback; every
  other ``extra=`` field is added as it is (``str()`` of what JSON cannot hold).

The request loop says which request it handles with ``set_request(request_id, op)`` before and
``clear_request()`` after (a context variable: each thread has its own, and a thread that never
set one logs none). Uncaught exceptions (main thread and other threads) are logged with
``event: "crash"`` and still printed on stderr, where whoever started the agent sees them.

Not here: checking the section (``mesh/logconfig.py``), the command line (``agents/main.py``),
where ``grid agents start`` puts the files (``mesh/nodes/local.py``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import Any

from mesh.logconfig import LoggingConfig

_request_id: contextvars.ContextVar[Any] = contextvars.ContextVar("mesh_request_id", default=None)
_request_log = logging.getLogger("mesh.agent.request")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def set_request(request_id: Any, op: str | None = None) -> None:
    """Lines logged from now on (in this thread) carry ``request_id``. With ``op``, and at DEBUG,
    one line says which request starts (``event: "request"``); below DEBUG that costs one
    level check."""
    _request_id.set(request_id)
    if op is not None and _request_log.isEnabledFor(logging.DEBUG):
        _request_log.debug("handling %s", op, extra={"event": "request", "op": op})


def clear_request() -> None:
    _request_id.set(None)


def current_request() -> Any:
    return _request_id.get()


def _iso_utc(created: float) -> str:
    seconds = int(created)
    ms = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside messages and tracebacks are escaped)."""

    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "node": self.node,
            "logger": record.name,
            "event": getattr(record, "event", None) or record.name.rsplit(".", 1)[-1],
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            request_id = _request_id.get()
        if request_id is not None:
            doc["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The text format of earlier versions, plus the node and the request being handled."""

    def __init__(self, node: str):
        super().__init__("%(asctime)s %(levelname)s " + node.replace("%", "%%")
                         + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            request_id = _request_id.get()
        if request_id is None:
            return line
        first, nl, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [request {request_id}]{nl}{rest}"


def make_handler(config: LoggingConfig, node: str, log_file: str | None) -> logging.Handler:
    """The handler ``setup`` installs; ``OSError`` when ``log_file`` cannot be opened."""
    if log_file:
        parent = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(parent, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node) if config.format == "json" else TextFormatter(node))
    return handler


def setup(config: LoggingConfig, node: str, log_file: str | None = None,
          level: str | None = None) -> logging.Handler:
    """Send every logger's records to one handler as ``config`` says; ``level`` (a name, e.g.
    from ``--log-level``) overrides ``config.level``. Returns the handler."""
    handler = make_handler(config, node, log_file)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel((level or config.level).upper())
    logging.captureWarnings(True)  # warnings.warn lines in the same format
    _log_uncaught()
    return handler


def _log_uncaught() -> None:
    crash = logging.getLogger("mesh.agent")
    default_hook, default_thread_hook = sys.__excepthook__, threading.__excepthook__

    def hook(kind, exc, tb) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            crash.critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb),
                           extra={"event": "crash"})
        if not logs_to_stderr():
            default_hook(kind, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:
            crash.critical("uncaught %s in thread %s: %s", args.exc_type.__name__,
                           getattr(args.thread, "name", "?"), args.exc_value,
                           exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
                           extra={"event": "crash"})
        if not logs_to_stderr():
            default_thread_hook(args)

    sys.excepthook = hook
    threading.excepthook = thread_hook


def logs_to_stderr() -> bool:
    """Does the root logger already write to stderr (no need to print a crash twice)?"""
    return any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
               for h in logging.getLogger().handlers)
