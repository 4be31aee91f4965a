"""Loading a world folder: ``world.toml`` (settings) plus ``handler.py`` (game code).

A world folder looks like::

    zones/arena/
        world.toml     # [zone] table: ZoneConfig settings; [demo] table: defaults for `run`
        handler.py     # defines `Handler`, a ZoneHandler subclass

``world.toml`` may also have a ``[sharding]`` table: how many zones share the world and
how big a cell (the unit of ownership) is.
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


@dataclass(frozen=True)
class ShardingSettings:
    """The ``[sharding]`` table of world.toml."""

    zones: int = 1
    """How many zones split the world (k-d split into equal rectangles of cells)."""
    cell_size: float = 100.0
    """Edge of a cell in metres: the unit a zone owns and a cell move transfers."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ShardingSettings:
        unknown = sorted(set(data) - {"zones", "cell_size"})
        if unknown:
            raise ConfigError(f"[sharding]: unknown settings: {', '.join(unknown)}")
        zones = data.get("zones", 1)
        cell = data.get("cell_size", 100.0)
        if isinstance(zones, bool) or not isinstance(zones, int) or not 1 <= zones <= 4096:
            raise ConfigError(f"[sharding] zones = {zones!r}: must be a whole number 1..4096")
        if isinstance(cell, bool) or not isinstance(cell, int | float) or not cell > 0:
            raise ConfigError(f"[sharding] cell_size = {cell!r}: must be a number > 0")
        return cls(int(zones), float(cell))


@dataclass
class World:
    """A loaded world folder."""

    path: Path
    config: ZoneConfig
    handler_class: type[ZoneHandler]
    demo: dict[str, Any] = field(default_factory=dict)
    sharding: ShardingSettings = field(default_factory=ShardingSettings)

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
    try:
        sharding = ShardingSettings.from_mapping(dict(data.get("sharding", {})))
    except ConfigError as exc:
        raise ConfigError(f"{toml_path}: {exc}") from exc
    return World(root, config, handler_class, dict(demo), sharding)
