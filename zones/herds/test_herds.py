"""Tests of the herds world's game code, with the harnesses of shardworld.testing.

One zone on a manual clock (WorldHarness) for the rules; the world's four zones on the
in-process bus (ClusterHarness) for a herd that grazes across a zone border.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.sdk import World, load_world
from shardworld.testing import ClusterHarness, WorldHarness

# Loaded once: every harness below reuses the same handler module (and its compiled kernel).
WORLD = load_world(Path(__file__).parent)
herds: ModuleType = sys.modules[WORLD.handler_class.__module__]
NO_ANIMALS = {**WORLD.config.extra, "npcs": 0}
U64 = npt.NDArray[np.uint64]


def one_zone(**changes: Any) -> WorldHarness:
    """The world as one zone, with no animals unless the test spawns them."""
    changes.setdefault("extra", NO_ANIMALS)
    return WorldHarness(WORLD, **changes)


def herd_of(world: World, count: int, at: tuple[float, float], herd: int) -> U64:
    """Spawn ``count`` animals of ``herd`` around ``at``; returns their ids."""
    spots = np.tile(np.asarray(at, np.float32), (count, 1))
    ids: U64 = herds.spawn_animals(world, spots, np.full(count, herd))
    return ids


def positions(world: World, ids: np.ndarray) -> np.ndarray:
    return world.entities["pos"][world.entities.require_rows(ids)].astype(np.float64)


def reference_centres(herd: np.ndarray, pos: np.ndarray) -> dict[int, np.ndarray]:
    """Each herd's centre the obvious way: one herd at a time."""
    return {int(h): pos[herd == h].mean(axis=0) for h in np.unique(herd)}


# --- herds ------------------------------------------------------------------------------


def test_herd_centres_match_a_plain_numpy_reference() -> None:
    rng = np.random.default_rng(7)
    herd = rng.integers(1, 40, 3000).astype(np.uint16)
    pos = rng.uniform(0.0, 1600.0, (3000, 2)).astype(np.float32)
    centres, sizes = herds.herd_centres(herd, pos)
    expected = reference_centres(herd, pos.astype(np.float64))
    assert set(np.flatnonzero(sizes)) == set(expected)
    for h, centre in expected.items():
        assert sizes[h] == np.count_nonzero(herd == h)
        np.testing.assert_allclose(centres[h], centre, rtol=0, atol=1e-6)


async def test_scattered_herds_gather_and_stay_together_while_they_graze() -> None:
    async with one_zone() as h:
        rng = np.random.default_rng(5)
        for number, spot in enumerate([(300.0, 300.0), (700.0, 300.0), (300.0, 900.0)], 1):
            ids = herd_of(h.world, 15, spot, herd=number)
            # Scatter each herd over a disc of 40 m: five times the radius it keeps.
            angle = rng.uniform(0.0, 2.0 * np.pi, 15)
            r = 40.0 * np.sqrt(rng.uniform(0.0, 1.0, 15))
            scattered = (
                np.asarray(spot) + np.column_stack([np.cos(angle), np.sin(angle)]) * r[:, None]
            )
            h.world.entities.set(ids, pos=scattered.astype(np.float32))
        await h.run_for(30.0)
        ents = h.world.entities
        herd, pos = ents["herd"], ents["pos"].astype(np.float64)
        centres = reference_centres(herd, pos)
        assert sorted(centres) == [1, 2, 3]
        for number, centre in centres.items():
            spread = np.linalg.norm(pos[herd == number] - centre, axis=1)
            assert spread.max() < 2.0 * herds.HERD_RADIUS, (number, spread.max())
        # ... and they are not standing still: grazing.
        assert np.linalg.norm(ents["vel"], axis=1).mean() > 0.2


def test_nearest_within_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    points = rng.uniform(0.0, 200.0, (500, 2)).astype(np.float32)
    others = rng.uniform(0.0, 200.0, (80, 2)).astype(np.float32)
    near, dist = herds.nearest_within(points, others, 12.0)
    d = np.linalg.norm(points[:, None, :] - others[None, :, :], axis=2)
    best = np.where(d.min(axis=1) <= 12.0, d.argmin(axis=1), -1)
    np.testing.assert_array_equal(near, best)
    hit = best >= 0
    np.testing.assert_allclose(dist[hit], d.min(axis=1)[hit], rtol=1e-5)
    assert np.all(np.isinf(dist[~hit]))


# --- players and animals ------------------------------------------------------------------


async def _approach(intent: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A player 12 m west of a herd walks east with ``intent`` for one second; returns the
    herd's velocities and its offsets from the player."""
    async with one_zone() as h:
        animals = herd_of(h.world, 10, (400.0, 400.0), herd=1)
        me = await h.join(1)
        h.set(me, pos=(388.0, 400.0))
        for _ in range(h.world.ticks(1.0)):
            h.input(me, intent)
            await h.step()
        vel = h.world.entities["vel"][h.world.entities.require_rows(animals)]
        return vel.astype(np.float64), positions(h.world, animals) - h.get(me, "pos")


async def test_animals_bolt_from_a_running_player_and_ignore_a_sneaking_one() -> None:
    vel, offset = await _approach((1.0, 0.0))  # running: 6 m/s
    close = np.linalg.norm(offset, axis=1) < herds.FLEE_RADIUS
    assert close.sum() >= 5
    away = np.einsum("ij,ij->i", vel[close], offset[close])
    assert np.all(away > 0), "every animal close to the runner moves away from it"
    assert np.linalg.norm(vel[close], axis=1).mean() > 3.0

    calm_vel, _ = await _approach((0.2, 0.0))  # sneaking: 1.2 m/s
    assert np.linalg.norm(calm_vel, axis=1).max() < 2.0


async def test_taming_pays_xp_that_survives_leaving_and_joining_again() -> None:
    async with one_zone(store=f"memory://herds-{uuid.uuid4().hex[:8]}") as h:
        [sheep] = herd_of(h.world, 1, (400.0, 400.0), herd=3)
        me = await h.join(42)
        h.set(me, pos=(397.0, 400.0))
        await h.run_for(herds.TAME_SECONDS - 0.5)
        assert h.get(sheep, "shepherd") == 0, "not yet: trust takes TAME_SECONDS"
        await h.run_for(1.0)
        assert h.get(sheep, "shepherd") == me
        assert h.get(me, "xp") == 1
        assert h.get(sheep, "unpaid") == 0

        h.leave(me)
        assert await h.flush()
        again = await h.join(42)
        assert again != me
        assert h.get(again, "xp") == 1
        assert h.get(again, "coins") == 0
        assert h.messages_to(again, "welcome")[-1].body == {"xp": 1, "coins": 0}


async def test_a_tamed_animal_follows_and_a_whistle_answers_with_the_flock() -> None:
    async with one_zone() as h:
        flock = herd_of(h.world, 3, (400.0, 400.0), herd=2)
        me = await h.join(7)
        h.set(me, pos=(430.0, 400.0))
        h.world.entities.set(flock, shepherd=me, tame_until=h.tick + h.world.ticks(60.0))
        h.message(me, "whistle", {})
        await h.step()
        assert h.messages_to(me, "whistle") == [(me, "whistle", {"flock": 3})]
        assert h.get(flock[0], "tame_until") == h.tick + h.world.ticks(herds.LOYALTY_SECONDS)
        await h.run_for(2.0)
        speed = np.linalg.norm(
            h.world.entities["vel"][h.world.entities.require_rows(flock)], axis=1
        )
        assert speed.min() > herds.FOLLOW_SPEED + 1.0, "called: they run, not walk"
        await h.run_for(6.0)
        gap = np.linalg.norm(positions(h.world, flock) - h.get(me, "pos"), axis=1)
        assert gap.max() < herds.FOLLOW_DISTANCE + 2.0


async def test_loyalty_runs_out_on_its_tick_and_the_animal_rejoins_its_herd() -> None:
    async with one_zone() as h:
        [sheep] = herd_of(h.world, 1, (400.0, 400.0), herd=5)
        me = await h.join(7)
        h.set(me, pos=(300.0, 300.0))
        deadline = h.tick + 10
        h.set(sheep, shepherd=me, tame_until=deadline)
        await h.step(9)
        assert h.get(sheep, "shepherd") == me
        await h.step()
        assert h.tick == deadline
        assert h.get(sheep, "shepherd") == 0
        assert h.get(sheep, "tame_until") == 0
        assert h.get(sheep, "herd") == 5


async def test_animals_led_into_the_market_are_sold_for_coins() -> None:
    async with one_zone() as h:
        x0, y0, x1, y1 = herds.market(h.world)
        me = await h.join(9)
        h.set(me, pos=((x0 + x1) / 2, (y0 + y1) / 2))
        inside = herd_of(h.world, 2, ((x0 + x1) / 2, (y0 + y1) / 2), herd=1)
        outside = herd_of(h.world, 1, (x0 - 30.0, y0 - 30.0), herd=1)
        h.world.entities.set(inside, pos=((x0 + x1) / 2 + 1.0, (y0 + y1) / 2))
        everyone = np.concatenate([inside, outside])
        h.world.entities.set(everyone, shepherd=me, tame_until=h.tick + 1000)
        await h.step()
        assert h.get(me, "coins") == 2
        assert not any(h.alive(int(a)) for a in inside)
        assert h.alive(int(outside[0]))


# --- the timer ----------------------------------------------------------------------------


async def test_lambing_fires_every_lambing_seconds_for_herds_below_their_size() -> None:
    async with one_zone(extra={**NO_ANIMALS, "herd_size": 4}) as h:
        herd_of(h.world, 2, (300.0, 300.0), herd=1)
        herd_of(h.world, 4, (1200.0, 1200.0), herd=2)  # full: never gets a lamb
        period = h.world.ticks(herds.LAMBING_SECONDS)
        lambs_at: list[tuple[int, int]] = []
        count = 6
        for _ in range(2 * period + 10):
            await h.step()
            now = len(h.world.entities)
            if now != count:
                lambs_at.append((h.tick, now - count))
                count = now
        assert lambs_at == [(period, 1), (2 * period, 1)]
        ents = h.world.entities
        assert np.bincount(ents["herd"], minlength=3)[1:].tolist() == [4, 4]


# --- zones ----------------------------------------------------------------------------------


async def test_a_herd_driven_across_a_zone_border_keeps_its_herd_and_its_centre() -> None:
    async with ClusterHarness(WORLD, extra=NO_ANIMALS) as h:
        assert h.cluster is not None
        z0 = h.zones[0]
        _, y0, border, y1 = h.cluster.cellmap.region_bounds(0)
        y = (y0 + y1) / 2
        animals = herd_of(z0, 12, (border - 8.0, y), herd=7)
        me = await h.join(1)
        for _ in range(20):  # it joined by the market: wait for its handoff to land
            if h.zone_of(me) >= 0:
                break
            await h.step()
        h.set(me, pos=(border - 26.0, y))
        await h.step()

        straddled = 0
        for _ in range(h.zones[0].ticks(4.0)):
            h.input(me, (1.0, 0.0))  # run east: the herd bolts across the border
            await h.step()
            owners = {h.zone_of(int(a)) for a in animals}
            if len(owners - {-1}) < 2 or -1 in owners:
                continue
            straddled += 1
            # Every zone that owns part of the herd sees its centre where it really is.
            truth = np.mean([h.get(int(a), "pos") for a in animals], axis=0)
            for i in owners:
                centres, sizes = herds.View.of(h.zones[i]).herd_centres()
                assert sizes[7] == 12, "owned + ghosts: the whole herd"
                assert np.linalg.norm(centres[7] - truth) < 1.0
        assert straddled > 0, "the herd never stood across the border"
        h.input(me, (0.0, 0.0))

        await h.run_for(8.0)  # the runner stopped: the herd calms down and regroups
        now = [h.zone_of(int(a)) for a in animals]
        assert -1 not in now
        assert any(i != 0 for i in now), "some animals crossed into another zone"
        assert all(h.get(int(a), "herd") == 7 for a in animals)
        pos = np.array([h.get(int(a), "pos") for a in animals], np.float64)
        spread = np.linalg.norm(pos - pos.mean(axis=0), axis=1)
        assert spread.max() < 2.5 * herds.HERD_RADIUS
