"""The arena's game code: wandering NPCs, a health field everyone sees, a score only you see."""

from __future__ import annotations

import numpy as np

from shardworld.entities import Field, Scope
from shardworld.zone import InputBatch, Zone, ZoneHandler

KIND_PLAYER = 1
KIND_NPC = 2
ACTION_EMOTE = 1


class Handler(ZoneHandler):
    fields = (
        Field("health", np.uint8, scope=Scope.PUBLIC, doc="0..100"),
        Field("emote", np.uint8, scope=Scope.PUBLIC, doc="last emote, 0 none"),
        Field("score", np.uint32, scope=Scope.OWNER, doc="only the owning player sees it"),
    )

    def on_start(self, world: Zone) -> None:
        npcs = int(world.config.extra.get("npcs", 0))
        if npcs:
            world.spawn(
                npcs,
                pos=world.random_points(npcs, margin=5.0),
                target=world.random_points(npcs, margin=5.0),
                kind=KIND_NPC,
                mode=2,
                health=100,
                max_speed=world.rng.uniform(1.0, 3.0, npcs).astype(np.float32),
                max_accel=4.0,
            )

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        ents = world.entities
        # NPCs that reached their target pick a new one nearby: whole columns, no loop.
        npc = ents["kind"] == KIND_NPC
        pos, target = ents["pos"], ents["target"]
        d2 = np.sum((pos - target) ** 2, axis=1)
        arrived = np.flatnonzero(npc & (d2 < 1.0))
        if arrived.size:
            jump = world.rng.uniform(-80.0, 80.0, (arrived.size, 2)).astype(np.float32)
            x0, y0, x1, y1 = world.bounds
            new = np.clip(pos[arrived] + jump, [x0 + 1, y0 + 1], [x1 - 1, y1 - 1])
            target[arrived] = new
        # Emote action bit from player inputs sets the public emote field.
        if len(inputs):
            emoting = (inputs.actions & ACTION_EMOTE) != 0
            ents["emote"][inputs.rows] = np.where(emoting, 1, 0)
            ents["score"][inputs.rows[emoting]] += 1
