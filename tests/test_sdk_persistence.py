"""Persistent player state: records loaded on join, saved on leave and periodically.

Against the memory store and a real Redis (``store_url``), in one zone and across zones.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import msgpack
import numpy as np
import pytest

from shardworld.sdk import Field, PlayerMessage, Scope, World, ZoneHandler
from shardworld.store import MemoryStore, Store, StoreError, open_store
from shardworld.testing import ClusterHarness, WorldHarness
from shardworld.zone.persistence import LOADED, NOT_SAVED, STATE_FIELD


class Hero(ZoneHandler):
    fields = (
        Field("xp", "uint32", scope=Scope.OWNER),
        Field("bag", "int16", (3,), scope=Scope.SERVER),
        Field("hp", "uint8", scope=Scope.PUBLIC),
    )
    persistent = ("xp", "bag")

    def __init__(self) -> None:
        self.loaded: list[tuple[int, dict[str, Any]]] = []

    def on_join(self, world: World, player_id: int) -> int:
        # Joins on the left of the world, walking east on input.
        eid = world.spawn_player(player_id, (190.0, 100.0))
        world.entities.set([eid], hp=100, xp=1)
        return eid

    def on_player_loaded(self, world: World, entity_id: int, record: dict[str, Any]) -> None:
        self.loaded.append((entity_id, record))
        world.send_message(entity_id, "welcome_back", {"xp": record["xp"]})

    def on_messages(self, world: World, tick: int, messages: list[PlayerMessage]) -> None:
        for m in messages:
            if m.kind == "gain":
                rows = world.entities.rows_of([m.entity_id])
                world.entities["xp"][rows[rows >= 0]] += int(m.body)


def _world_name() -> str:
    return f"p{uuid.uuid4().hex[:12]}"


async def _record(store: Store, player: int) -> dict[str, Any] | None:
    data = await store.load_player(player)
    return None if data is None else msgpack.unpackb(data, raw=False)


async def test_a_player_who_leaves_and_comes_back_keeps_its_persistent_fields(
    store_url: str,
) -> None:
    name = _world_name()
    store = open_store(store_url, name)
    await store.start()
    try:
        async with WorldHarness(Hero, store=store, name=name, persist_every_s=0.0) as h:
            handler = h.world.handler
            assert isinstance(handler, Hero)
            eid = await h.join(42)
            assert h.get(eid, "xp") == 1 and handler.loaded == []  # new: on_join's values
            h.message(eid, "gain", 41)
            h.set(eid, bag=[3, -2, 7], hp=5)
            await h.step(2)
            assert h.get(eid, "xp") == 42
            h.leave(eid)
            assert not h.alive(eid)
            assert await h.flush()
            rec = await _record(store, 42)
            assert rec is not None
            assert rec["xp"] == 42 and rec["bag"] == [3, -2, 7] and rec["_v"] == 1
            assert "hp" not in rec  # not persistent

            again = await h.join(42)
            assert again != eid
            assert h.get(again, "xp") == 42
            assert h.get(again, "bag").tolist() == [3, -2, 7]
            assert h.get(again, "hp") == 100  # on_join's, not saved
            assert [e for e, _ in handler.loaded] == [again]
            assert handler.loaded[0][1]["xp"] == 42
            assert h.messages_to(again, "welcome_back")[0].body == {"xp": 42}
            stats = h.world.players.stats if h.world.players else None
            assert stats is not None and stats.saves == 1 and stats.records_applied == 1

        # The harness saved the second session on close.
        rec = await _record(store, 42)
        assert rec is not None and rec["xp"] == 42
    finally:
        await store.close()


async def test_players_are_saved_every_persist_interval_and_not_before(store_url: str) -> None:
    name = _world_name()
    async with WorldHarness(
        Hero, store=store_url, name=name, persist_every_s=1.0, tick_hz=20.0, snapshot_hz=20.0
    ) as h:
        assert h.store is not None
        a, b = await h.join(1), await h.join(2)
        npc = h.world.spawn(1, pos=[(5.0, 5.0)])  # not a player: never saved
        h.set(a, xp=10)
        h.set(b, xp=20)
        await h.step(10)
        await h.flush()
        assert await _record(h.store, 1) is None
        await h.step(10)  # tick 20: one second
        await h.flush()
        assert (await _record(h.store, 1) or {}).get("xp") == 10
        assert (await _record(h.store, 2) or {}).get("xp") == 20
        h.set(a, xp=11)
        await h.step(20)
        await h.flush()
        rec = await _record(h.store, 1)
        assert rec is not None and rec["xp"] == 11 and rec["_tick"] == 40
        players = h.world.players
        assert players is not None
        assert players.stats.save_rounds == 2 and players.stats.saves == 4
        assert h.get(int(npc[0]), STATE_FIELD) == NOT_SAVED
        assert h.get(a, STATE_FIELD) == LOADED


class Broken(MemoryStore):
    """A memory store whose player records fail on demand."""

    def __init__(self, name: str, world: str) -> None:
        super().__init__(name, world)
        self.fail_loads = False
        self.fail_saves = False
        self.hang_loads = False
        self.slow_saves = 0.0
        self.saved: list[int] = []

    async def load_player(self, player_id: int) -> bytes | None:
        if self.hang_loads:
            await asyncio.sleep(30)
        if self.fail_loads:
            raise StoreError("redis://nowhere: connection refused")
        return await super().load_player(player_id)

    async def save_player(self, player_id: int, data: bytes) -> None:
        if self.slow_saves:
            await asyncio.sleep(self.slow_saves)
        if self.fail_saves:
            raise StoreError("redis://nowhere: connection refused")
        self.saved.append(player_id)
        await super().save_player(player_id, data)


async def test_a_store_that_fails_never_costs_a_join_and_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = _world_name()
    store = Broken(f"broken-{name}", name)
    await store.start()
    await store.save_player(7, msgpack.packb({"_v": 1, "xp": 500}))
    store.saved.clear()
    async with WorldHarness(Hero, store=store, name=name, persist_every_s=0.0) as h:
        store.fail_loads = True
        with caplog.at_level(logging.WARNING, logger="shardworld.zone.persistence"):
            a = await h.join(7)
            b = await h.join(8)
        assert h.get(a, "xp") == 1 and h.get(b, "xp") == 1  # fresh
        players = h.world.players
        assert players is not None and players.stats.load_failures == 2
        assert len([r for r in caplog.records if "cannot load" in r.getMessage()]) == 1
        # A player whose record could not be read is not saved over it.
        h.leave(a)
        await h.flush()
        store.fail_loads = False
        assert (await _record(store, 7) or {}).get("xp") == 500
        assert store.saved == []

        # Loads work again; saves fail: counted, logged once, the zone carries on.
        store.fail_saves = True
        c = await h.join(7)
        assert h.get(c, "xp") == 500
        with caplog.at_level(logging.WARNING, logger="shardworld.zone.persistence"):
            h.leave(c)
            await h.flush()
            d = await h.join(9)
            h.leave(d)
            await h.flush()
        assert players.stats.save_failures == 2
        assert len([r for r in caplog.records if "records not saved" in r.getMessage()]) == 1
        await h.step(3)


async def test_a_load_that_hangs_times_out_and_the_player_joins_fresh() -> None:
    name = _world_name()
    store = Broken(f"hang-{name}", name)
    await store.start()
    async with WorldHarness(Hero, name=name) as h:
        h.world.use_store(store, load_timeout_s=0.05)
        store.hang_loads = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        eid = await h.join(3)
        assert loop.time() - started < 2.0
        assert h.get(eid, "xp") == 1 and h.get(eid, STATE_FIELD) == NOT_SAVED
        assert h.world.players is not None and h.world.players.stats.load_failures == 1


async def test_a_quick_rejoin_reads_the_record_still_being_written() -> None:
    name = _world_name()
    store = Broken(f"slow-{name}", name)
    await store.start()
    async with WorldHarness(Hero, store=store, name=name, persist_every_s=0.0) as h:
        store.slow_saves = 0.2
        eid = await h.join(5)
        h.set(eid, xp=77)
        h.leave(eid)
        again = await h.join(5)  # the save is still on its way
        assert await _record(store, 5) is None
        assert h.get(again, "xp") == 77
        await h.flush()
        assert (await _record(store, 5) or {}).get("xp") == 77


async def test_a_record_that_does_not_fit_keeps_on_joins_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = _world_name()
    store = MemoryStore(f"odd-{name}", name)
    await store.start()
    await store.save_player(1, msgpack.packb({"_v": 1, "xp": 9, "bag": [1, 2]}))  # bag: 3
    await store.save_player(2, b"\xc1 not msgpack")
    await store.save_player(3, msgpack.packb({"_v": 99, "xp": 5}))  # a newer format
    async with WorldHarness(Hero, store=store, name=name) as h:
        a = await h.join(1)
        assert h.get(a, "xp") == 9 and h.get(a, "bag").tolist() == [0, 0, 0]
        b = await h.join(2)
        assert h.get(b, "xp") == 1 and h.get(b, STATE_FIELD) == LOADED  # garbage is replaced
        c = await h.join(3)
        assert h.get(c, "xp") == 1 and h.get(c, STATE_FIELD) == NOT_SAVED  # never overwritten
        players = h.world.players
        assert players is not None
        assert players.stats.fields_refused == 1 and players.stats.records_unreadable == 1


def test_persistent_must_name_fields_that_can_be_saved() -> None:
    from shardworld.zone import Zone, ZoneConfig

    class Typo(Hero):
        persistent = ("xpp",)

    class Bookkeeping(Hero):
        persistent = ("xp", "gateway")

    class Twice(Hero):
        persistent = ("xp", "xp")

    for bad in (Typo, Bookkeeping, Twice):
        with pytest.raises(ValueError):
            Zone(ZoneConfig(), bad())
    # Without persistent fields a store is not needed and nothing is added to the rows.
    plain = Zone(ZoneConfig(), ZoneHandler())
    assert plain.schema.get(STATE_FIELD) is None
    assert plain.use_store(MemoryStore("x", "x")) is None


async def test_a_player_who_crosses_into_another_zone_is_saved_by_that_zone(
    store_url: str,
) -> None:
    name = _world_name()
    world = dict(world=(0.0, 0.0, 400.0, 200.0), name=name, tick_hz=20.0, snapshot_hz=20.0)
    store = open_store(store_url, name)
    await store.start()
    try:
        async with ClusterHarness(
            Hero, zones=2, cell_size=50.0, store=store, persist_every_s=1.0, **world
        ) as h:
            await store.save_player(4, msgpack.packb({"_v": 1, "xp": 30, "bag": [1, 1, 1]}))
            eid = await h.join(4)
            # Joined in zone 0 (at x = 190), with its record before anyone saw it.
            assert h.zone_of(eid) == 0
            assert h.get(eid, "xp") == 30
            for _ in range(60):
                h.input(eid, (1.0, 0.0))
                await h.step()
                if h.zone_of(eid) == 1:
                    break
            assert h.zone_of(eid) == 1
            h.message(eid, "gain", 12)
            await h.step(2)
            assert h.get(eid, "xp") == 42
            # The periodic save now comes from zone 1.
            z0, z1 = (z.players for z in h.zones)
            assert z0 is not None and z1 is not None
            saved_by_z0 = z0.stats.saves
            await h.run_for(1.0)
            await h.flush()
            assert (await _record(store, 4) or {}).get("xp") == 42
            assert z1.stats.saves >= 1 and z0.stats.saves == saved_by_z0
            # And so does the save on leave.
            h.message(eid, "gain", 8)
            await h.step(1)
            before = z1.stats.saves
            h.leave(eid)
            await h.step(2)
            await h.flush()
            assert h.zone_of(eid) == -1
            assert z1.stats.saves == before + 1
            rec = await _record(store, 4)
            assert rec is not None and rec["xp"] == 50 and rec["bag"] == [1, 1, 1]

            # Back again: whichever zone takes the join loads it first.
            again = await h.join(4)
            assert h.get(again, "xp") == 50
            assert h.messages_to(again, "welcome_back")[0].body == {"xp": 50}
    finally:
        await store.close()


async def test_a_sharded_join_survives_a_failing_store() -> None:
    name = _world_name()
    store = Broken(f"broken-{name}", name)
    await store.start()
    store.fail_loads = True
    async with ClusterHarness(
        Hero, zones=2, cell_size=50.0, store=store, name=name, world=(0.0, 0.0, 400.0, 200.0)
    ) as h:
        eids = [await h.join(p) for p in (10, 11)]
        assert all(h.get(e, "xp") == 1 for e in eids)
        failures = sum(z.players.stats.load_failures for z in h.zones if z.players)
        assert failures == 2
        assert np.all(h.zones[0].entities[STATE_FIELD] == NOT_SAVED)


async def test_a_slow_store_skips_save_rounds_instead_of_piling_them_up() -> None:
    name = _world_name()
    store = Broken(f"slow-{name}", name)
    await store.start()
    async with WorldHarness(
        Hero, store=store, name=name, persist_every_s=0.1, tick_hz=20.0, snapshot_hz=20.0
    ) as h:
        await h.join(1)
        store.slow_saves = 0.3
        loop = asyncio.get_running_loop()
        started = loop.time()
        await h.step(20)  # ten rounds due; the first is still being written
        assert loop.time() - started < 0.3 * 3  # the ticks never waited for the store
        players = h.world.players
        assert players is not None
        assert players.stats.save_rounds == 1 and players.stats.save_rounds_skipped == 9
        assert await h.flush()
        store.slow_saves = 0.0
        await h.step(2)
        await h.flush()
        assert players.stats.save_rounds == 2 and players.stats.saves == 2


def test_persist_every_s_is_a_setting_of_the_zone() -> None:
    from shardworld.zone import ConfigError, ZoneConfig

    assert ZoneConfig().persist_every_s == 30.0
    assert ZoneConfig.from_mapping({"persist_every_s": 5}).persist_every_s == 5.0
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError):
            ZoneConfig(persist_every_s=bad)
