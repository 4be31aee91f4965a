"""Structured logs: one JSON object per line, the same fields from every part."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from shardworld.logs import JsonFormatter

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"ts", "level", "logger", "msg", "pid", "role", "world"}


def _record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "shardworld.gateway", logging.WARNING, "x.py", 1, "kick %s", ("a",), None
    )
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_a_record_becomes_one_json_object_with_the_static_and_event_fields() -> None:
    f = JsonFormatter({"role": "gateway", "world": "arena", "gateway": 0, "zone": None})
    line = f.format(_record(shardworld={"event": "kick", "code": "FLOOD", "conn": 7}))
    out = json.loads(line)
    assert out["msg"] == "kick a" and out["level"] == "warning"
    assert out["logger"] == "shardworld.gateway"
    assert out["role"] == "gateway" and out["world"] == "arena" and out["gateway"] == 0
    assert "zone" not in out  # absent, not null
    assert out["event"] == "kick" and out["code"] == "FLOOD" and out["conn"] == 7
    assert out["ts"].endswith("Z") and len(out["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert "\n" not in line


def test_exceptions_and_odd_values_still_give_valid_json() -> None:
    f = JsonFormatter({"role": "zone"})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = _record(odd=object(), shardworld={"msg": "must not replace msg"})
        rec.exc_info = sys.exc_info()
    out = json.loads(f.format(rec))
    assert "ValueError: boom" in out["exc"]
    assert out["msg"] == "kick a"
    assert isinstance(out["odd"], str)


def test_a_sharded_run_logs_only_json_lines_with_the_common_fields() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardworld.cli",
            "--log-format",
            "json",
            "run",
            str(ROOT / "zones" / "arena"),
            "--dev",
            "--zones",
            "2",
            "--port",
            "0",
            "--seconds",
            "2",
            "--map",
            "never",
            "--npcs",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) >= 3
    loggers = set()
    for ln in lines:
        out = json.loads(ln)  # every stderr line is one JSON object
        assert set(out) >= REQUIRED, out
        assert out["role"] == "run" and out["world"] == "arena"
        loggers.add(out["logger"])
    assert any(name.startswith("shardworld.gateway") for name in loggers)
    assert "shardworld.sharding" in loggers
