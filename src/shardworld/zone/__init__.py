"""The zone: a region's entities simulated at a fixed tick rate."""

from shardworld.zone.clock import Clock, LoopClock
from shardworld.zone.config import ConfigError, ZoneConfig
from shardworld.zone.handler import InputBatch, PlayerMessage, ZoneHandler
from shardworld.zone.persistence import PlayerPersistence
from shardworld.zone.sink import CollectingSink, NullSink, SnapshotBatch, SnapshotSink
from shardworld.zone.stats import ZoneStats
from shardworld.zone.timers import Timer, every
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
    "PlayerMessage",
    "PlayerPersistence",
    "SnapshotBatch",
    "SnapshotSink",
    "Timer",
    "World",
    "Zone",
    "ZoneConfig",
    "ZoneHandler",
    "ZoneStats",
    "every",
    "load_world",
]
