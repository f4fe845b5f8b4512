"""Logs are JSON lines and refuse text-sized fields, so a passage cannot be logged by accident."""

import json
import logging

import pytest

from fedprag.shared.log import MAX_FIELD_CHARS, _JsonFormatter, get_logger


def test_events_are_json_with_fields(caplog):
    caplog.set_level(logging.INFO, logger="fedprag")
    get_logger("test").info("prag.encoded", passages=3, seconds=1.5)
    record = caplog.records[-1]
    payload = json.loads(_JsonFormatter().format(record))
    assert payload["event"] == "prag.encoded" and payload["passages"] == 3


def test_text_sized_fields_are_refused():
    with pytest.raises(ValueError, match="logs never carry text"):
        get_logger("test").info("oops", passage="x" * (MAX_FIELD_CHARS + 1))
