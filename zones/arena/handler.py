"""The arena's game code: wandering NPCs, a health field everyone sees, a score only you see."""

from __future__ import annotations

import numpy as np

from shardworld.entities import Field, Scope
from shardworld.zone import InputBatch, Zone, ZoneHandler
from shardworld.zone.handler import PlayerMessage

KIND_PLAYER = 1
KIND_NPC = 2
ACTION_EMOTE = 1
CHAT_RANGE = 100.0
CHAT_MAX_CHARS = 200


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

    def on_messages(self, world: Zone, tick: int, messages: list[PlayerMessage]) -> None:
        # Chat: {"text": str} reaches every player within CHAT_RANGE of the speaker.
        ents = world.entities
        players = np.flatnonzero(ents["observer"])
        if players.size == 0:
            return
        ppos = ents["pos"][players]
        pids = ents.live_ids()[players]
        for m in messages:
            if m.kind != "chat" or not isinstance(m.body, dict):
                continue
            text = m.body.get("text")
            row = ents.rows_of([m.entity_id])[0]
            if not isinstance(text, str) or row < 0:
                continue
            d2 = np.sum((ppos - ents["pos"][row]) ** 2, axis=1)
            body = {"from": m.entity_id, "text": text[:CHAT_MAX_CHARS]}
            for eid in pids[d2 <= CHAT_RANGE**2]:
                world.send_message(int(eid), "chat", body)
