"""The coordinator: leader election under a lease, standby takeover, map changes that
zones apply, the audit trail. Stores: memory and real Redis (``store_url``)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np

from shardworld.bus import open_bus
from shardworld.coordinator.coordinator import Coordinator
from shardworld.sharding.cellmap import CellMap
from shardworld.sharding.cluster import Cluster
from shardworld.store import open_store
from shardworld.testing import ManualClock
from shardworld.zone import ZoneConfig, ZoneHandler
from shardworld.zone.world import ShardingSettings, World
from shardworld.zone.zone import Zone


class Npcs(ZoneHandler):
    def on_start(self, world: Zone) -> None:
        n = int(world.config.extra.get("npcs", 0))
        if n:
            world.spawn(n, pos=world.random_points(n, margin=1.0), kind=2)


def _world(npcs: int = 200) -> World:
    cfg = ZoneConfig(
        name="c",
        world=(0.0, 0.0, 400.0, 400.0),
        interest_radius=30.0,
        capacity=512,
        extra={"npcs": npcs},
    )
    return World(Path("."), cfg, Npcs, {}, ShardingSettings(4, 50.0))


async def test_one_leader_and_a_standby_that_takes_over_when_it_dies(store_url: str) -> None:
    world = f"c{uuid.uuid4().hex[:10]}"
    cm = CellMap.split((0.0, 0.0, 400.0, 400.0), 50.0, ("z0", "z1"))
    bus = open_bus(f"memory://{world}")
    await bus.start()
    stores = [open_store(store_url, world), open_store(store_url, world)]
    for s in stores:
        await s.start()
    a = Coordinator(bus, stores[0], world, cm, "a", lease_ttl_s=0.4, period_s=0.05)
    b = Coordinator(bus, stores[1], world, cm, "b", lease_ttl_s=0.4, period_s=0.05)
    try:
        for c in (a, b):
            await c.start()
        await a.round()
        await b.round()
        assert a.leader and not b.leader
        stored = await stores[0].get_map()
        assert stored is not None and stored[0] == cm.epoch
        # The leader dies without a word (no release): the standby waits out the lease.
        loop = asyncio.get_running_loop()
        died = loop.time()
        while not b.leader:
            await b.round()
            await asyncio.sleep(0.05)
            assert loop.time() - died < 3.0, "the standby never took over"
        assert loop.time() - died >= 0.3  # not before the lease lapsed
        assert b.lease is not None and a.lease is not None
        assert b.lease.token > a.lease.token
        # The old leader comes back: its renewal fails and it steps down.
        await a.round()
        assert not a.leader
        # Its stale view cannot overwrite the map either (epoch compare-and-set).
        newer = cm.with_owner(np.asarray(cm.owner))
        assert await b.publish(newer, [])
        assert not await stores[0].cas_map(cm.epoch, cm.epoch + 1, cm.to_bytes())
        kinds = [e.data["type"] for e in await stores[0].events()]
        assert kinds.count("leader") == 2 and "leader_lost" in kinds and "cell_move" in kinds
    finally:
        for c in (a, b):
            await c.close()
        for s in stores:
            await s.close()
        await bus.close()


async def test_a_published_map_moves_cells_between_running_zones_and_is_audited(
    store_url: str,
) -> None:
    name = f"c{uuid.uuid4().hex[:10]}"
    cluster = Cluster(_world(), zones=2, clock=ManualClock(), world_name=name)
    await cluster.start()
    store = open_store(store_url, name)
    await store.start()
    coord = Coordinator(cluster.bus, store, name, cluster.cellmap, "coord", period_s=0.05)
    try:
        await coord.start()
        for _ in range(3):
            cluster.step()
        for n in cluster.nodes:
            n.beat()
        await coord.round()
        assert coord.leader
        # The load report reached the coordinator: one value per entity (no observers here).
        load, p99 = coord.load_grid(coord.clock())
        assert set(p99) == {"z0", "z1"}
        assert float(load.sum()) == 200.0
        owner = np.asarray(cluster.cellmap.owner).copy()
        owner[owner == 0] = 1
        owner[0, 0] = 0  # z0 keeps one cell
        assert await coord.publish(cluster.cellmap.with_owner(owner), [])
        for _ in range(6):
            cluster.step()
            await asyncio.sleep(0)
        assert all(n.cellmap.epoch == 2 for n in cluster.nodes)
        assert cluster.entity_count() + cluster.in_flight() == 200
        z0 = cluster.zones[0]
        assert np.all(coord.cellmap.owner_of(z0.entities["pos"]) == 0)
        events = [e.data for e in await store.events()]
        moves = [e for e in events if e["type"] == "cell_move"]
        assert moves and moves[-1]["epoch"] == 2 and moves[-1]["node"] == "coord"
        assert len(moves[-1]["cells"]) == int(np.count_nonzero(owner != cluster.cellmap.owner))
    finally:
        await coord.close()
        await store.close()
        await cluster.close()


class Crowd(ZoneHandler):
    """Every NPC heads for a spot in the same corner: a crowd gathers in one zone."""

    def on_start(self, world: Zone) -> None:
        n = int(world.config.extra.get("npcs", 0))
        world.spawn(
            n,
            pos=world.random_points(n, margin=1.0),
            target=world.rng.uniform(10.0, 190.0, (n, 2)).astype(np.float32),
            kind=2,
            mode=2,
            max_speed=100.0,
            max_accel=1000.0,
        )


async def test_a_crowd_gathering_in_one_zone_makes_the_coordinator_move_lines_until_balanced(
    store_url: str,
) -> None:
    from shardworld.coordinator.planner import RebalancingPlanner

    name = f"c{uuid.uuid4().hex[:10]}"
    cfg = ZoneConfig(
        name="c",
        world=(0.0, 0.0, 400.0, 400.0),
        interest_radius=30.0,
        capacity=1024,
        extra={"npcs": 800},
    )
    world = World(Path("."), cfg, Crowd, {}, ShardingSettings(4, 25.0))
    cluster = Cluster(world, clock=ManualClock(), world_name=name)
    await cluster.start()
    store = open_store(store_url, name)
    await store.start()
    coord = Coordinator(
        cluster.bus, store, name, cluster.cellmap, "coord", planner=RebalancingPlanner()
    )

    def imbalance() -> float:
        counts = np.array([len(z.entities) for z in cluster.zones], np.float64)
        return float(counts.max() / counts.mean())

    try:
        await coord.start()
        for _ in range(120):  # 6 s of world time: the crowd is in z0's corner
            cluster.step()
        crowded = imbalance()
        assert crowded > 2.5
        rounds = 0
        while imbalance() > 1.5 and rounds < 30:
            for n in cluster.nodes:
                n.beat()
            await coord.round()
            for _ in range(5):
                cluster.step()
                await asyncio.sleep(0)
            rounds += 1
        assert imbalance() <= 1.5, (crowded, imbalance(), rounds)
        assert coord.maps_published >= 1
        assert cluster.entity_count() + cluster.in_flight() == 800
        # Every zone simulates exactly the cells the current map gives it.
        for _ in range(3):
            cluster.step()
        for i, z in enumerate(cluster.zones):
            assert np.all(coord.cellmap.owner_of(z.entities["pos"]) == i)
    finally:
        await coord.close()
        await store.close()
        await cluster.close()


async def test_a_zone_that_dies_is_adopted_from_its_checkpoint_and_nothing_is_lost(
    store_url: str,
) -> None:
    name = f"c{uuid.uuid4().hex[:10]}"
    cluster = Cluster(
        _world(npcs=300),
        zones=2,
        clock=ManualClock(),
        world_name=name,
        store_url=store_url,
        lease_ttl_s=0.6,
        checkpoint_every_s=0.0,  # every tick (the manual clock does not move)
    )
    await cluster.start()
    coord = Coordinator(
        cluster.bus,
        cluster.store,
        name,
        cluster.cellmap,
        "coord",
        lease_ttl_s=0.6,  # type: ignore[arg-type]
    )
    try:
        await coord.start()
        for _ in range(10):
            cluster.step()
            await asyncio.sleep(0.01)  # checkpoints are saved in the background
        await coord.round()
        assert coord.leader and coord.status()["failovers"] == 0
        assert all(n.stats.checkpoints > 0 for n in cluster.nodes)
        z0, z1 = cluster.zones
        n_dead = len(z1.entities)
        assert n_dead > 50
        await cluster.kill(1)
        loop = asyncio.get_running_loop()
        killed = loop.time()
        while coord.failovers == 0:
            cluster.step()  # zone 0 carries on alone
            await coord.round()
            await asyncio.sleep(0.05)
            assert loop.time() - killed < 5.0, "the coordinator never noticed"
        assert loop.time() - killed >= 0.4  # not before the lease lapsed
        for _ in range(40):
            cluster.step()
            await asyncio.sleep(0.01)
            if cluster.nodes[0].stats.adopted:
                break
        cluster.step()
        # Zone 0 simulates the whole world: its own entities and the dead zone's.
        assert cluster.nodes[0].stats.adopted == n_dead
        assert len(z0.entities) + cluster.in_flight() == 300
        ids = z0.entities.live_ids()
        assert len(np.unique(ids)) == len(ids)
        assert np.all(coord.cellmap.owner_of(z0.entities["pos"]) == 0)
        kinds = [e.data["type"] for e in await cluster.store.events()]  # type: ignore[union-attr]
        assert "failover" in kinds
    finally:
        await coord.close()
        await cluster.close()
