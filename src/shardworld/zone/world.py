"""Loading a world folder: ``world.toml`` (settings) plus ``handler.py`` (game code).

A world folder looks like::

    zones/arena/
        world.toml     # [zone] table: ZoneConfig settings; [demo] table: defaults for `run`
        handler.py     # defines `Handler`, a ZoneHandler subclass

"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardworld.zone.config import ConfigError, ZoneConfig
from shardworld.zone.handler import ZoneHandler


@dataclass
class World:
    """A loaded world folder."""

    path: Path
    config: ZoneConfig
    handler_class: type[ZoneHandler]
    demo: dict[str, Any] = field(default_factory=dict)

    def make_handler(self) -> ZoneHandler:
        return self.handler_class()


def load_world(path: str | Path) -> World:
    """Read a world folder. Raises :class:`ConfigError` with the file and the problem."""
    root = Path(path)
    toml_path = root / "world.toml"
    handler_path = root / "handler.py"
    if not root.is_dir():
        raise ConfigError(f"{root}: no such world folder")
    if not toml_path.is_file():
        raise ConfigError(f"{root}: missing world.toml")
    try:
        with open(toml_path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{toml_path}: {exc}") from exc
    zone_table = data.get("zone", {})
    try:
        config = ZoneConfig.from_mapping(zone_table)
    except ConfigError as exc:
        raise ConfigError(f"{toml_path}: {exc}") from exc
    handler_class: type[ZoneHandler] = ZoneHandler
    if handler_path.is_file():
        mod_name = f"shardworld_world_{root.resolve().name}"
        spec = importlib.util.spec_from_file_location(mod_name, handler_path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"{handler_path}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        found = getattr(module, "Handler", None)
        if not (isinstance(found, type) and issubclass(found, ZoneHandler)):
            raise ConfigError(f"{handler_path}: must define `class Handler(ZoneHandler)`")
        handler_class = found
    demo = data.get("demo", {})
    return World(root, config, handler_class, dict(demo))
