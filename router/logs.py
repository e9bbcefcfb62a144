"""Structured logs: one JSON object per line on stderr.

`event(logger, name, **fields)` writes {"time", "level", "logger", "event",
...fields}. Decisions, reloads and errors are events; so is the access log
when it is on. NaN and infinite figures become null (`finite`), so every
line is valid JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from policies.control.actions import plain


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(plain(line), default=str)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": {"event": name, **fields}})


def configure(level: str = "info") -> None:
    """JSON lines on stderr for the `modeshift` loggers (and aiohttp's errors)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("modeshift", "aiohttp"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("modeshift").setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
