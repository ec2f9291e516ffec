"""Structured logs: one JSON object per line (ECS-style field names), for the proxy and uvicorn.

Fields: ``@timestamp``, ``log.level``, ``log.logger``, ``message``, any ``extra=`` fields of the
call (e.g. a reranked request's ``index``, ``window``, ``took_ms``, ``degraded``), and
``error.type`` / ``error.message`` / ``error.stack_trace`` when an exception is logged.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "@timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["error.type"] = record.exc_info[0].__name__
            out["error.message"] = str(record.exc_info[1])
            out["error.stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def log_config(level: str = "info", json_lines: bool = True) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's ``log_config``: everything (the proxy's
    loggers, uvicorn's, the Elasticsearch client's) to stderr, as JSON lines or plain text."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if json_lines
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
