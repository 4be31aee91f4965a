"""Timers: ``@every`` handler methods, ``world.after`` one-shots, tick deadlines in fields.

All of them are driven by tick numbers, so stepping a zone by hand gives exactly the ticks a
live zone would, and a deadline kept in a field stays valid in whichever zone the entity is.
"""

from __future__ import annotations

import numpy as np
import pytest

from shardworld.sdk import (
    MODE_SEEK,
    Field,
    InputBatch,
    Scope,
    Timer,
    World,
    ZoneConfig,
    ZoneHandler,
    every,
)
from shardworld.testing import ClusterHarness, WorldHarness
from shardworld.zone.timers import ZoneTimers, periodic_methods


class Clocks(ZoneHandler):
    """Writes down, in order, what ran on which tick."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def on_tick(self, world: World, tick: int, inputs: InputBatch) -> None:
        self.log.append(("on_tick", tick))

    @every(0.5)
    def half(self, world: World, tick: int) -> None:
        self.log.append(("half", tick))

    @every(0.25)
    def quarter(self, world: World, tick: int) -> None:
        self.log.append(("quarter", tick))


def _fired(log: list[tuple[str, int]], name: str) -> list[int]:
    return [t for n, t in log if n == name]


async def test_every_runs_on_the_ticks_that_cross_its_period_in_declaration_order() -> None:
    async with WorldHarness(Clocks, tick_hz=20.0, snapshot_hz=20.0) as h:
        handler = h.world.handler
        assert isinstance(handler, Clocks)
        await h.step(31)
        assert _fired(handler.log, "half") == [10, 20, 30]
        assert _fired(handler.log, "quarter") == [5, 10, 15, 20, 25, 30]
        # After on_tick, and in the order the methods were declared.
        at_20 = [n for n, t in handler.log if t == 20]
        assert at_20 == ["on_tick", "half", "quarter"]


async def test_every_runs_once_after_skipped_ticks_not_once_per_missed_period() -> None:
    async with WorldHarness(Clocks, tick_hz=20.0, snapshot_hz=20.0) as h:
        handler = h.world.handler
        assert isinstance(handler, Clocks)
        await h.step(3)
        h.world.tick += 40  # what Zone.run does when a stalled zone skips ticks
        await h.step(1)
        assert _fired(handler.log, "half") == [44]
        assert _fired(handler.log, "quarter") == [44]


def test_every_refuses_bad_periods_and_an_override_without_it_is_no_timer() -> None:
    with pytest.raises(ValueError):
        every(0)
    with pytest.raises(ValueError):
        every(float("nan"))
    with pytest.raises(TypeError):
        every("5")  # type: ignore[arg-type]

    class Quiet(Clocks):
        def half(self, world: World, tick: int) -> None:  # no @every: not a timer any more
            pass

    assert [n for n, _ in periodic_methods(Quiet())] == ["quarter"]
    assert [n for n, _ in periodic_methods(Clocks())] == ["half", "quarter"]
    # A very short period still runs at most once per tick.
    assert ZoneTimers(Clocks(), 4.0).periodic[1][1] == 1


async def test_after_runs_once_at_its_tick_and_cancel_stops_it() -> None:
    async with WorldHarness(ZoneHandler, tick_hz=10.0, snapshot_hz=10.0) as h:
        w = h.world
        ran: list[tuple[str, int]] = []
        t1 = w.after(0.5, lambda world, tick: ran.append(("a", tick)))
        t2 = w.after(0.3, lambda world, tick: ran.append(("b", tick)))
        t3 = w.after(0.3, lambda world, tick: ran.append(("c", tick)))
        t0 = w.after(0.0, lambda world, tick: ran.append(("now", tick)))
        assert isinstance(t1, Timer) and t1.due_tick == 5 and t0.due_tick == 1
        assert t3.cancel() and not t3.cancel()
        await h.step(10)
        assert ran == [("now", 1), ("b", 3), ("a", 5)]
        assert t1.fired and not t1.pending and not t1.cancel()
        assert t2.fired and t3.cancelled
        assert w.timers.pending == 0


async def test_a_timer_callback_can_set_another_timer() -> None:
    async with WorldHarness(ZoneHandler, tick_hz=10.0, snapshot_hz=10.0) as h:
        w = h.world
        ticks: list[int] = []

        def again(world: World, tick: int) -> None:
            ticks.append(tick)
            if len(ticks) < 3:
                world.after(0.2, again)

        w.after(0.2, again)
        await h.step(10)
        assert ticks == [2, 4, 6]


def test_ticks_converts_seconds_at_the_tick_rate() -> None:
    from shardworld.zone import Zone

    w = Zone(ZoneConfig(tick_hz=20.0, snapshot_hz=20.0))
    assert w.ticks(1.0) == 20
    assert w.ticks(0.26) == 5
    assert w.ticks(0) == 0
    with pytest.raises(ValueError):
        w.ticks(-1.0)


class Regen(ZoneHandler):
    fields = (
        Field("regen_at", "int64", scope=Scope.SERVER),
        Field("regens", "uint16", scope=Scope.PUBLIC),
        Field("fired_in", "uint16", scope=Scope.SERVER),
    )

    def on_tick(self, world: World, tick: int, inputs: InputBatch) -> None:
        rows = world.due("regen_at")
        ents = world.entities
        ents["regens"][rows] += 1
        ents["fired_in"][rows] = world.config.zone_tag


async def test_due_returns_the_rows_whose_deadline_passed_and_clears_them() -> None:
    async with WorldHarness(Regen, tick_hz=10.0, snapshot_hz=10.0) as h:
        w = h.world
        ids = w.spawn(4, pos=[(1.0, 1.0)] * 4)
        # No deadline, two due at tick 3, one at tick 6.
        w.entities.set(ids, regen_at=[0, 3, 3, 6])
        await h.step(2)
        assert w.entities["regens"].tolist() == [0, 0, 0, 0]
        await h.step(1)
        assert w.entities["regens"].tolist() == [0, 1, 1, 0]
        assert w.entities["regen_at"].tolist() == [0, 0, 0, 6]
        await h.step(5)
        assert w.entities["regens"].tolist() == [0, 1, 1, 1]
        # A deadline in the past fires on the next call, once.
        w.entities.set(ids[:1], regen_at=w.tick - 5)
        await h.step(3)
        assert w.entities["regens"].tolist() == [1, 1, 1, 1]
        assert w.due("regen_at").dtype == np.int32
        with pytest.raises(KeyError):
            w.due("nope")


async def test_due_refuses_fields_that_cannot_hold_a_tick() -> None:
    class Bad(ZoneHandler):
        fields = (
            Field("when", "float32", scope=Scope.SERVER),
            Field("pair", "int64", (2,), scope=Scope.SERVER),
        )

    async with WorldHarness(Bad) as h:
        with pytest.raises(TypeError):
            h.world.due("when")
        with pytest.raises(TypeError):
            h.world.due("pair")


class Grow(ZoneHandler):
    """Every 0.5 s each zone grows its own entities; one entity carries a deadline across."""

    fields = (
        Field("size", "uint16", scope=Scope.PUBLIC),
        Field("regen_at", "int64", scope=Scope.SERVER),
        Field("regens", "uint16", scope=Scope.PUBLIC),
        Field("fired_in", "uint16", scope=Scope.SERVER),
    )

    def on_start(self, world: World) -> None:
        # Still entities on both sides of the border at x = 200 ...
        world.spawn(2, pos=[(100.0, 100.0), (300.0, 100.0)], kind=2)
        # ... and a walker that crosses it before its deadline comes.
        world.spawn(
            1,
            pos=[(190.0, 100.0)],
            target=[(260.0, 100.0)],
            mode=MODE_SEEK,
            kind=3,
            max_speed=40.0,
            max_accel=400.0,
            regen_at=world.tick + world.ticks(2.0),
        )

    def on_tick(self, world: World, tick: int, inputs: InputBatch) -> None:
        rows = world.due("regen_at")
        world.entities["regens"][rows] += 1
        world.entities["fired_in"][rows] = world.config.zone_tag

    @every(0.5)
    def grow(self, world: World, tick: int) -> None:
        world.entities["size"][:] += 1


async def test_timers_run_in_every_zone_and_a_deadline_follows_its_entity() -> None:
    world = dict(world=(0.0, 0.0, 400.0, 200.0), tick_hz=20.0, snapshot_hz=20.0)
    async with ClusterHarness(Grow, zones=2, cell_size=50.0, **world) as h:
        await h.step(50)  # 2.5 s: five periods; the deadline (tick 40) is in the middle
        z0, z1 = h.zones
        assert len(z0.entities) == 1 and len(z1.entities) == 2
        # Each zone grew its own entities every period, including the one that came over.
        assert z0.entities["size"].tolist() == [5]
        assert z1.entities["size"].tolist() == [5, 5]
        walker = int(z1.entities.ids[np.flatnonzero(z1.entities["kind"] == 3)[0]])
        # Its deadline, set by z0 at start, fired once, in z1 (zone_tag 2).
        assert h.get(walker, "regens") == 1
        assert h.get(walker, "fired_in") == z1.config.zone_tag == 2
        assert h.get(walker, "regen_at") == 0


async def test_the_same_steps_give_the_same_timers_every_run() -> None:
    async def run() -> list[tuple[str, int]]:
        async with WorldHarness(Clocks, tick_hz=20.0, snapshot_hz=20.0) as h:
            handler = h.world.handler
            assert isinstance(handler, Clocks)
            h.world.after(0.35, lambda w, t: handler.log.append(("once", t)))
            await h.step(25)
            return handler.log

    assert await run() == await run()
