"""Structured logs: one JSON object per line on stderr, events named ``area.what``.

Log calls take an event name and scalar fields only. Passage or question text is never logged:
a field whose value is a string longer than ``MAX_FIELD_CHARS`` is refused, so a careless call
cannot leak a passage.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

MAX_FIELD_CHARS = 200
_configured = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                   "event": record.getMessage(), **getattr(record, "fields", {})}
        return json.dumps(payload, default=str)


class StructuredLogger:
    """A thin wrapper that turns ``log.info("event", key=value)`` into one JSON line."""

    def __init__(self, name: str):
        self._logger = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, object]) -> None:
        for key, value in fields.items():
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
                raise ValueError(f"log field '{key}' is {len(value)} characters long; logs never carry text")
        self._logger.log(level, event, extra={"fields": fields})

    def info(self, event: str, **fields: object) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._emit(logging.ERROR, event, fields)


def configure(level: str | None = None) -> None:
    """Send fedprag's logs to stderr as JSON lines (level from ``FEDPRAG_LOG_LEVEL``, default info)."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger("fedprag")
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("FEDPRAG_LOG_LEVEL", "info")).upper())
    root.propagate = False
    logging.Formatter.converter = time.gmtime
    _configured = True


def get_logger(module: str) -> StructuredLogger:
    """The structured logger for a module (all live under the ``fedprag`` logger)."""
    return StructuredLogger(module if module.startswith("fedprag.") else f"fedprag.{module}")
