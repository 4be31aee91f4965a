"""The studio API: everything a world's game code imports, from one place.

::

    from shardworld.sdk import Field, InputBatch, Scope, World, ZoneHandler, every

    class Handler(ZoneHandler):
        fields = (Field("xp", "uint32", scope=Scope.OWNER),)
        persistent = ("xp",)

        def on_tick(self, world: World, tick: int, inputs: InputBatch) -> None: ...

        @every(5.0)
        def regrow(self, world: World, tick: int) -> None: ...

The names here are the stable surface: they keep their meaning across minor versions, while
the modules they come from may move. ``World`` is the zone as game code sees it (the class
:class:`shardworld.zone.Zone`); ``WorldFolder`` is what :func:`load_world` returns (a world
folder's settings and handler class). Tests use :mod:`shardworld.testing`. docs/sdk.md is the
guide.
"""

from __future__ import annotations

from shardworld.entities.schema import Field, Scope
from shardworld.zone.config import ConfigError, ZoneConfig
from shardworld.zone.handler import InputBatch, PlayerMessage, ZoneHandler
from shardworld.zone.timers import Timer, every
from shardworld.zone.world import ShardingSettings, load_world
from shardworld.zone.world import World as WorldFolder
from shardworld.zone.zone import MODE_IDLE, MODE_PLAYER, MODE_SEEK
from shardworld.zone.zone import Zone as World

__all__ = [
    "MODE_IDLE",
    "MODE_PLAYER",
    "MODE_SEEK",
    "ConfigError",
    "Field",
    "InputBatch",
    "PlayerMessage",
    "Scope",
    "ShardingSettings",
    "Timer",
    "World",
    "WorldFolder",
    "ZoneConfig",
    "ZoneHandler",
    "every",
    "load_world",
]
