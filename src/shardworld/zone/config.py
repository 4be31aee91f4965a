"""Zone settings: one dataclass, loadable from a world's ``world.toml``."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

INPUT_OVERFLOW_POLICIES = ("drop_newest", "drop_oldest")


_FLOAT_SETTINGS = (
    "tick_hz",
    "snapshot_hz",
    "interest_radius",
    "interest_hysteresis",
    "pos_quantum",
    "obstacle_cell",
    "player_speed",
    "player_accel",
    "persist_every_s",
)
_INT_SETTINGS = ("zone_tag", "k_max", "capacity", "input_queue", "max_catchup_ticks", "seed")


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range. The message names it."""


@dataclass(frozen=True)
class ZoneConfig:
    """Everything a zone needs to know before its first tick.

    Distances are metres, rates are Hz. The defaults are a sensible small world.
    """

    name: str = "world"
    zone_tag: int = 1
    world: tuple[float, float, float, float] = (0.0, 0.0, 1000.0, 1000.0)
    tick_hz: float = 20.0
    snapshot_hz: float = 20.0
    interest_radius: float = 50.0
    interest_hysteresis: float = 5.0
    k_max: int = 128
    pos_quantum: float = 0.01
    capacity: int = 4096
    input_queue: int = 65536
    input_overflow: str = "drop_newest"
    max_catchup_ticks: int = 2
    obstacles: tuple[tuple[float, float, float, float], ...] = ()
    obstacle_cell: float = 2.0
    player_speed: float = 6.0
    player_accel: float = 40.0
    seed: int = 0
    persist_every_s: float = 30.0
    """Seconds of simulation time between saves of every player's ``persistent`` fields
    (with a store); 0 saves only when a player leaves."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Kernels are compiled per argument type: an int where a float belongs (say
        # `obstacle_cell = 4` in TOML) would compile a new version inside a tick.
        for name in _FLOAT_SETTINGS:
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in _INT_SETTINGS:
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ConfigError(f"{name} must be a whole number, not {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "world", tuple(float(v) for v in self.world))
        object.__setattr__(
            self, "obstacles", tuple(tuple(float(v) for v in r) for r in self.obstacles)
        )
        x0, y0, x1, y1 = self.world
        if not (x1 > x0 and y1 > y0):
            raise ConfigError(f"world {self.world}: need x1 > x0 and y1 > y0")
        if not 0 <= self.zone_tag <= 0xFFFF:
            raise ConfigError(f"zone_tag {self.zone_tag}: must be 0..65535")
        if not 0 < self.tick_hz <= 1000:
            raise ConfigError(f"tick_hz {self.tick_hz}: must be in (0, 1000]")
        if not 0 < self.snapshot_hz <= self.tick_hz:
            raise ConfigError(f"snapshot_hz {self.snapshot_hz}: must be in (0, tick_hz]")
        ratio = self.tick_hz / self.snapshot_hz
        if abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(
                f"tick_hz / snapshot_hz = {ratio:g}: snapshots go out every whole number of ticks"
            )
        if self.interest_radius <= 0 or self.interest_hysteresis < 0:
            raise ConfigError("interest_radius must be > 0 and interest_hysteresis >= 0")
        if not 1 <= self.k_max <= 65535:
            raise ConfigError(f"k_max {self.k_max}: must be 1..65535 (handles are 16-bit)")
        if self.pos_quantum <= 0:
            raise ConfigError("pos_quantum must be > 0")
        reach = (self.interest_radius + self.interest_hysteresis) / self.pos_quantum
        if reach > 32767:
            reach_m = self.interest_radius + self.interest_hysteresis
            need = reach_m / 32767
            raise ConfigError(
                f"interest range {reach_m:g} m does not fit "
                f"16-bit relative positions at pos_quantum {self.pos_quantum:g} m; "
                f"use pos_quantum >= {need:.4g}"
            )
        if self.input_overflow not in INPUT_OVERFLOW_POLICIES:
            raise ConfigError(f"input_overflow must be one of {INPUT_OVERFLOW_POLICIES}")
        if self.input_queue < 1 or self.capacity < 1 or self.max_catchup_ticks < 0:
            raise ConfigError("input_queue and capacity must be >= 1, max_catchup_ticks >= 0")
        if self.obstacle_cell <= 0:
            raise ConfigError("obstacle_cell must be > 0")
        if not (math.isfinite(self.persist_every_s) and self.persist_every_s >= 0):
            raise ConfigError(f"persist_every_s {self.persist_every_s}: must be >= 0")
        for rect in self.obstacles:
            if len(rect) != 4 or not all(math.isfinite(v) for v in rect):
                raise ConfigError(f"obstacle {rect}: need [x0, y0, x1, y1]")

    @property
    def tick_period(self) -> float:
        return 1.0 / self.tick_hz

    @property
    def ticks_per_snapshot(self) -> int:
        return round(self.tick_hz / self.snapshot_hz)

    def with_(self, **changes: Any) -> ZoneConfig:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ZoneConfig:
        """Build from a parsed TOML table; unknown keys are an error (typos must not pass)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(unknown)}")
        kwargs = dict(data)
        if "world" in kwargs:
            kwargs["world"] = tuple(float(v) for v in kwargs["world"])
            if len(kwargs["world"]) != 4:
                raise ConfigError("world: need [x0, y0, x1, y1]")
        if "obstacles" in kwargs:
            kwargs["obstacles"] = tuple(tuple(float(v) for v in r) for r in kwargs["obstacles"])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_toml(cls, path: str | Path) -> ZoneConfig:
        """Read the ``[zone]`` table of a TOML file (the whole file when it has none)."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        table = data.get("zone", data)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [zone] must be a table")
        return cls.from_mapping(table)
