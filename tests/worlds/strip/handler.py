"""Players join on the border between the two zones; a few NPCs stand around."""

from __future__ import annotations

import numpy as np

from shardworld.entities import Field, Scope
from shardworld.zone import Zone, ZoneHandler


class Handler(ZoneHandler):
    fields = (Field("steps", np.uint32, scope=Scope.OWNER, doc="ticks with a non-zero intent"),)

    def on_start(self, world: Zone) -> None:
        n = int(world.config.extra.get("npcs", 40))
        world.spawn(n, pos=world.random_points(n, margin=2.0), kind=2)

    def on_join(self, world: Zone, player_id: int) -> int:
        x0, y0, x1, y1 = world.bounds
        return world.spawn_player(player_id, ((x0 + x1) / 2 - 1.0, (y0 + y1) / 2))

    def on_tick(self, world: Zone, tick: int, inputs: object) -> None:
        ents = world.entities
        moving = np.any(ents["intent"] != 0, axis=1)
        ents["steps"][moving] += 1
