"""The arena's own game code, unchanged (this world only changes settings)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_ARENA = Path(__file__).resolve().parents[3] / "zones" / "arena" / "handler.py"
_spec = importlib.util.spec_from_file_location("shardworld_arena_handler", _ARENA)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)


class Handler(_module.Handler):  # type: ignore[name-defined,misc]
    pass
