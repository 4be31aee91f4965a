"""The zone: a region's entities simulated at a fixed tick rate."""

from shardworld.zone.clock import Clock, LoopClock
from shardworld.zone.config import ConfigError, ZoneConfig
from shardworld.zone.handler import InputBatch, ZoneHandler
from shardworld.zone.sink import CollectingSink, NullSink, SnapshotBatch, SnapshotSink
from shardworld.zone.stats import ZoneStats
from shardworld.zone.world import World, load_world
from shardworld.zone.zone import MODE_IDLE, MODE_PLAYER, MODE_SEEK, Zone

__all__ = [
    "MODE_IDLE",
    "MODE_PLAYER",
    "MODE_SEEK",
    "Clock",
    "CollectingSink",
    "ConfigError",
    "InputBatch",
    "LoopClock",
    "NullSink",
    "SnapshotBatch",
    "SnapshotSink",
    "World",
    "Zone",
    "ZoneConfig",
    "ZoneHandler",
    "ZoneStats",
    "load_world",
]
