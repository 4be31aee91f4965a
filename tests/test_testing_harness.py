"""shardworld.testing: one zone, or a whole sharded world, ticked by the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardworld.sdk import InputBatch, PlayerMessage, World, ZoneHandler, load_world
from shardworld.testing import ClusterHarness, ManualClock, SentMessage, WorldHarness

ARENA = Path(__file__).resolve().parent.parent / "zones" / "arena"


class Echo(ZoneHandler):
    """Players join at x = 190 (the border of a 2-zone 400 m world is at 200); "ping" gets
    a "pong" with the zone's name; an action bit counts up in ``on_tick``."""

    def __init__(self) -> None:
        self.actions = 0

    def on_join(self, world: World, player_id: int) -> int:
        return world.spawn_player(player_id, (190.0, 100.0))

    def on_tick(self, world: World, tick: int, inputs: InputBatch) -> None:
        self.actions += int(np.count_nonzero(inputs.actions & 1))

    def on_messages(self, world: World, tick: int, messages: list[PlayerMessage]) -> None:
        for m in messages:
            if m.kind == "ping":
                world.send_message(m.entity_id, "pong", {"n": m.body, "zone": world.config.name})


STRIP: dict[str, Any] = dict(world=(0.0, 0.0, 400.0, 200.0), tick_hz=20.0, snapshot_hz=20.0)


async def test_a_world_folder_runs_in_the_harness_with_players_inputs_and_messages() -> None:
    async with WorldHarness(ARENA, seed=3) as h:
        assert h.world.config.name == "arena" and h.world.config.seed == 3
        a = await h.join(1)
        b = await h.join(2)
        h.set(a, pos=(500.0, 500.0))
        h.set(b, pos=(510.0, 500.0))
        start = h.get(a, "pos")
        for _ in range(20):
            h.input(a, (1.0, 0.0), actions=1)  # walk east, emote
            await h.step()
        assert h.tick == 20
        assert h.get(a, "pos")[0] > start[0] + 3.0
        assert h.get(a, "score") == 20 and h.get(a, "emote") == 1
        h.message(a, "chat", {"text": "hello"})
        await h.step()
        # Both are within chat range: both got it, in the order the world sent them.
        assert [m.entity_id for m in h.sent] == [a, b]
        assert h.messages_to(b, "chat") == [SentMessage(b, "chat", {"from": a, "text": "hello"})]
        # Snapshots went to both observers.
        assert set(h.snapshots[-1].observer_ids.tolist()) == {a, b}
        h.leave(b)
        assert not h.alive(b) and h.alive(a)


async def test_the_harness_takes_a_loaded_folder_or_a_handler_class() -> None:
    folder = load_world(ARENA)
    async with WorldHarness(folder, tick_hz=10.0, snapshot_hz=10.0) as h:
        assert h.world.config.tick_hz == 10.0
    assert folder.config.tick_hz == 20.0  # the caller's copy is untouched
    async with WorldHarness(Echo, **STRIP) as h:
        assert isinstance(h.world.handler, Echo)
        assert h.world.bounds == (0.0, 0.0, 400.0, 200.0)
        assert isinstance(h.clock, ManualClock)
        await h.run_for(1.0)
        assert h.tick == 20 and h.clock.now() == pytest.approx(1.0)
    with pytest.raises(TypeError):
        WorldHarness(42)  # type: ignore[arg-type]


async def _walk(seed: int) -> list[float]:
    async with WorldHarness(ARENA, seed=seed) as h:
        h.world.spawn(50, pos=h.world.random_points(50), target=h.world.random_points(50),
                      mode=2)  # fmt: skip
        a = await h.join(9)
        for i in range(30):
            h.input(a, (float(np.cos(i)), float(np.sin(i))))
            await h.step()
        return [float(v) for v in np.asarray(h.world.entities["pos"]).ravel()]


async def test_the_same_test_gives_the_same_world_every_run() -> None:
    first = await _walk(5)
    assert first == await _walk(5)
    assert first != await _walk(6)


async def test_a_cluster_runs_every_zone_and_players_cross_borders_through_the_bus() -> None:
    async with ClusterHarness(Echo, 2, cell_size=50.0, **STRIP) as h:
        assert [z.config.name for z in h.zones] == ["z0", "z1"]
        eid = await h.join(7)
        assert h.zone_of(eid) == 0
        h.message(eid, "ping", 1)
        await h.step(2)
        assert h.messages_to(eid, "pong")[-1].body == {"n": 1, "zone": "z0"}
        crossed_at = None
        for i in range(60):
            h.input(eid, (1.0, 0.0), actions=1)
            await h.step()
            if h.zone_of(eid) == 1:
                crossed_at = i
                break
        assert crossed_at is not None
        assert h.get(eid, "pos")[0] >= 200.0
        # Inputs and messages now reach the new owner, through the same port.
        h.message(eid, "ping", 2)
        h.input(eid, (1.0, 0.0), actions=1)
        await h.step(2)
        assert h.messages_to(eid, "pong")[-1].body == {"n": 2, "zone": "z1"}
        handlers = [z.handler for z in h.zones]
        assert all(isinstance(x, Echo) for x in handlers)
        assert sum(x.actions for x in handlers if isinstance(x, Echo)) == crossed_at + 2
        assert h.snapshots_seen > 0
        # The zone that owns it handles the leave.
        h.leave(eid)
        await h.step(2)
        assert h.zone_of(eid) == -1 and h.entity_count() == 0


async def test_cluster_steps_are_deterministic() -> None:
    async def run() -> list[tuple[int, float]]:
        async with ClusterHarness(Echo, 2, cell_size=50.0, seed=1, **STRIP) as h:
            players = [await h.join(p) for p in (1, 2, 3)]
            out = []
            for i in range(40):
                for k, e in enumerate(players):
                    h.input(e, (1.0 if k % 2 else -1.0, 0.1 * k))
                await h.step()
                if i % 10 == 9:
                    out += [(h.zone_of(e), round(float(h.get(e, "pos")[0]), 4)) for e in players]
            return out

    first = await run()
    assert first == await run()
    assert {z for z, _ in first} == {0, 1}


async def test_a_cluster_harness_must_be_started() -> None:
    h = ClusterHarness(Echo, 2, cell_size=50.0, **STRIP)
    with pytest.raises(RuntimeError):
        _ = h.zones
