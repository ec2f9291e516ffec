"""The proxy's structured logs: one JSON object per line."""

from __future__ import annotations

import json
import logging
import logging.config

import pytest

from reranker.proxy.logs import JsonFormatter, log_config


def record(**extra: object) -> logging.LogRecord:
    made = logging.LogRecord(
        "reranker.proxy.app", logging.INFO, "app.py", 1, "reranked %s", ("x",), None
    )
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    line = JsonFormatter().format(record(index="beir-scifact", took_ms={"total": 1.5}))
    event = json.loads(line)
    assert event["message"] == "reranked x" and event["log.level"] == "info"
    assert event["log.logger"] == "reranker.proxy.app"
    assert event["index"] == "beir-scifact" and event["took_ms"] == {"total": 1.5}
    assert event["@timestamp"].endswith("+00:00")
    assert "args" not in event and "msg" not in event


def test_an_exception_is_logged_with_its_type_and_trace() -> None:
    try:
        raise ValueError("bad scores")
    except ValueError:
        import sys

        made = record()
        made.exc_info = sys.exc_info()
    event = json.loads(JsonFormatter().format(made))
    assert event["error.type"] == "ValueError" and event["error.message"] == "bad scores"
    assert "Traceback" in event["error.stack_trace"]


def test_log_config_routes_uvicorn_through_the_json_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    uvicorn = logging.getLogger("uvicorn.error")
    saved_uvicorn = (uvicorn.handlers[:], uvicorn.level, uvicorn.propagate)
    logging.config.dictConfig(log_config("info", json_lines=True))
    try:
        uvicorn.info("Started server process")
        err = capsys.readouterr().err.strip().splitlines()
        assert json.loads(err[-1])["message"] == "Started server process"
    finally:
        root.handlers[:], root.level = saved
        uvicorn.handlers[:], uvicorn.level, uvicorn.propagate = saved_uvicorn
