"""NPCs wander over the whole world (so entities keep crossing every border); each player
joins at a spot of its own, spread over the world by its player id."""

from __future__ import annotations

import numpy as np

from shardworld.entities import Field, Scope
from shardworld.zone import InputBatch, Zone, ZoneHandler

KIND_NPC = 2


class Handler(ZoneHandler):
    fields = (Field("steps", np.uint32, scope=Scope.OWNER, doc="ticks with a non-zero intent"),)

    def on_start(self, world: Zone) -> None:
        n = int(world.config.extra.get("npcs", 0))
        if n:
            world.spawn(
                n,
                pos=world.random_points(n, margin=2.0),
                target=world.random_points(n, margin=2.0),
                kind=KIND_NPC,
                mode=2,
                max_speed=world.rng.uniform(2.0, 6.0, n).astype(np.float32),
                max_accel=8.0,
            )

    def on_join(self, world: Zone, player_id: int) -> int:
        x0, y0, x1, y1 = world.bounds
        # Spots spread over the world by the player id (golden-ratio steps).
        fx = (player_id * 0.6180339887) % 1.0
        fy = (player_id * 0.7548776662) % 1.0
        x = x0 + 10.0 + fx * (x1 - x0 - 20.0)
        y = y0 + 10.0 + fy * (y1 - y0 - 20.0)
        return world.spawn_player(player_id, (x, y))

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        ents = world.entities
        moving = np.any(ents["intent"] != 0, axis=1)
        ents["steps"][moving] += 1
        npc = ents["kind"] == KIND_NPC
        pos, target = ents["pos"], ents["target"]
        arrived = np.flatnonzero(npc & (np.sum((pos - target) ** 2, axis=1) < 1.0))
        if arrived.size:
            x0, y0, x1, y1 = world.bounds
            target[arrived] = world.rng.uniform(
                [x0 + 2.0, y0 + 2.0], [x1 - 2.0, y1 - 2.0], (arrived.size, 2)
            ).astype(np.float32)
