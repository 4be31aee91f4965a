"""Logging setup: human-readable lines, or one JSON object per line for log pipelines.

Every JSON line has the same fields, whatever logged it:

``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg``, ``pid``, ``role``
(``run``, ``zone``, ``gateway``, ``coordinator``, ...), ``world`` and, where they apply,
``zone`` and ``gateway``; structured events (the gateway's, for instance) add ``event``
and their own fields; a traceback goes in ``exc``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with ``static`` fields (role, world, ...) on every line."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = {k: v for k, v in (static or {}).items() if v is not None}

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            **self.static,
        }
        fields = getattr(record, "shardworld", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                out.setdefault(str(k), v)
        for k, v in record.__dict__.items():
            if k not in _STANDARD and k != "shardworld":
                out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO", fmt: str = "text", **static: Any) -> None:
    """Send every log record to stderr as text lines or JSON lines (``fmt``)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter({"pid": os.getpid(), **static}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
