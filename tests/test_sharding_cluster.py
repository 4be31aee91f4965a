"""A world split between zones on a bus: conservation, handoffs, ghosts, fencing.

Every test runs on the memory bus and on a real Kafka broker (``bus_url`` fixture).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardworld.sharding import wire
from shardworld.sharding.cluster import Cluster
from shardworld.testing import ManualClock
from shardworld.zone import ZoneConfig, ZoneHandler
from shardworld.zone.world import ShardingSettings, World
from shardworld.zone.zone import Zone


class Npcs(ZoneHandler):
    """Spawns ``extra.npcs`` still NPCs at random spots (on the first zone only)."""

    def on_start(self, world: Zone) -> None:
        n = int(world.config.extra.get("npcs", 0))
        if n:
            world.spawn(n, pos=world.random_points(n, margin=1.0), kind=2)


def _name() -> str:
    """A world name of its own per test: a reused broker keeps old topics."""
    return f"t{uuid.uuid4().hex[:12]}"


def _world(npcs: int = 0, **cfg: Any) -> World:
    base = dict(
        name="t",
        world=(0.0, 0.0, 400.0, 200.0),
        interest_radius=30.0,
        interest_hysteresis=3.0,
        k_max=1024,
        capacity=256,
        tick_hz=20.0,
        snapshot_hz=20.0,
        extra={"npcs": npcs},
    )
    base.update(cfg)
    return World(Path("."), ZoneConfig(**base), Npcs, {}, ShardingSettings(2, 50.0))


async def _settle(cluster: Cluster, ticks: int, delay: float = 0.0) -> None:
    for _ in range(ticks):
        cluster.step()
        # Give a real broker time to deliver what the tick sent.
        await asyncio.sleep(delay)


def _delay(url: str) -> float:
    return 0.0 if url.startswith("memory://") else 0.03


def _check_ownership(cluster: Cluster, total: int) -> None:
    owned = cluster.owned_ids()
    all_ids = np.concatenate(owned)
    assert len(np.unique(all_ids)) == len(all_ids), "an entity is owned by two zones"
    assert len(all_ids) + cluster.in_flight() == total


async def test_npcs_spawned_by_the_first_zone_end_up_with_the_owner_of_their_cell(
    bus_url: str,
) -> None:
    cluster = Cluster(_world(npcs=300), bus_url=bus_url, clock=ManualClock(), world_name=_name())
    await cluster.start()
    try:
        await _settle(cluster, 10, _delay(bus_url))
        assert cluster.in_flight() == 0
        _check_ownership(cluster, 300)
        for i, z in enumerate(cluster.zones):
            owner = cluster.cellmap.owner_of(z.entities["pos"])
            assert np.all(owner == i)
            assert len(z.entities) > 50  # the split is even; random spots land on both sides
    finally:
        await cluster.close()


async def test_a_walker_crossing_the_border_many_times_is_never_lost_duplicated_or_jumping(
    bus_url: str,
) -> None:
    speed = 40.0
    cluster = Cluster(
        _world(player_speed=speed, player_accel=4000.0),
        bus_url=bus_url,
        clock=ManualClock(),
        world_name=_name(),
    )
    await cluster.start()
    try:
        delay = _delay(bus_url)
        z0 = cluster.zones[0]
        border = cluster.cellmap.region_bounds(0)[2]
        eid = z0.spawn_player(owner=7, pos=(border - 3.0, 100.0))
        z0.entities.set([eid], observer=1)
        crossings = 0
        last_side = 0
        last_pos: np.ndarray | None = None
        direction = 1.0
        seq = 0
        unseen = 1
        target = 1000
        for _ in range(target * 8):
            owners = [i for i, z in enumerate(cluster.zones) if z.entities.contains([eid])[0]]
            if not owners:
                assert cluster.in_flight() == 1
                if delay:
                    # On a real broker, wait for the handoff to arrive (a tick passes anyway).
                    dst = 1 - last_side
                    await cluster.nodes[dst].wait_for_ownership_traffic(2.0)
                cluster.step()
                unseen += 1
                continue
            assert len(owners) == 1
            z = cluster.zones[owners[0]]
            pos = z.entities["pos"][z.entities.rows_of([eid])[0]].copy()
            if last_pos is not None:
                # Never further than its speed allows over the ticks since we last saw it.
                step = float(np.hypot(*(pos - last_pos)))
                assert step <= speed * z.config.tick_period * unseen + 1e-3, f"jumped {step} m"
            last_pos = pos
            unseen = 1
            side = owners[0]
            if side != last_side:
                crossings += 1
                last_side = side
                if crossings >= target:
                    break
            # Turn around a few metres past the border either way.
            if pos[0] > border + 3.0:
                direction = -1.0
            elif pos[0] < border - 3.0:
                direction = 1.0
            seq += 1
            z.submit_input(eid, seq, (direction, 0.0))
            cluster.step()
            if not delay:
                # Within ghost range of both zones, both always hold it: owned or as a ghost,
                # never neither (no blink for observers on either side at a handoff).
                for other in cluster.zones:
                    held = other.entities.contains([eid])[0] or other.ghosts.contains([eid])[0]
                    assert held, f"{other.config.name} lost sight of the walker"
        assert crossings >= target
        assert cluster.entity_count() + cluster.in_flight() == 1
        # Its input sequence travelled with it: nothing was applied out of order.
        assert sum(z.stats.inputs_out_of_order for z in cluster.zones) == 0
    finally:
        await cluster.close()


async def test_players_at_the_border_see_what_a_single_zone_would(bus_url: str) -> None:
    cluster = Cluster(_world(npcs=400), bus_url=bus_url, clock=ManualClock(), world_name=_name())
    await cluster.start()
    try:
        delay = _delay(bus_url)
        await _settle(cluster, 3, delay)
        border = cluster.cellmap.region_bounds(0)[2]
        rng = np.random.default_rng(3)
        observers = []
        for k in range(12):
            x = border + rng.uniform(-25.0, 25.0)
            y = rng.uniform(20.0, 180.0)
            zi = int(cluster.cellmap.owner_of(np.array([[x, y]], np.float32))[0])
            z = cluster.zones[zi]
            eid = z.spawn_player(owner=100 + k, pos=(x, y))
            observers.append(eid)
        # Nobody moves: after ghosts have crossed, every zone's view is settled.
        await _settle(cluster, 4, delay)
        everyone = {}
        for z in cluster.zones:
            for i, p in zip(z.entities.live_ids().tolist(), z.entities["pos"], strict=True):
                everyone[i] = p.astype(np.float64)
        ids = np.array(list(everyone), np.uint64)
        pos = np.array(list(everyone.values()))
        r = cluster.zones[0].config.interest_radius
        checked = 0
        for z in cluster.zones:
            prev = z._prev_obs_ids
            for slot, oid in enumerate(prev.tolist()):
                if oid not in observers:
                    continue
                seen = set(z._prev_ids[z._prev_off[slot] : z._prev_off[slot + 1]].tolist())
                d = np.hypot(*(pos - everyone[oid]).T)
                want = set(ids[d <= r].tolist())  # its own entity included
                assert seen == want, f"observer {oid} in {z.config.name}"
                checked += 1
        assert checked == len(observers)
    finally:
        await cluster.close()


async def test_a_handoff_of_a_stale_epoch_is_refused_and_the_entity_lives_on(
    bus_url: str,
) -> None:
    cluster = Cluster(_world(), bus_url=bus_url, clock=ManualClock(), world_name=_name())
    await cluster.start()
    try:
        delay = _delay(bus_url)
        z0, z1 = cluster.zones
        n0, n1 = cluster.nodes
        border = cluster.cellmap.region_bounds(0)[2]
        spot = np.array([[border + 5.0, 100.0]], np.float32)
        # Epoch 2 gives zone 0 the cell east of the border where the entity will stand.
        owner = np.asarray(cluster.cellmap.owner).copy().reshape(-1)
        owner[cluster.cellmap.cell_of(spot)[0]] = 0
        newer = cluster.cellmap.with_owner(owner.reshape(cluster.cellmap.owner.shape))
        n1.apply_map(newer)  # zone 1 is at epoch 2; zone 0 has not heard yet
        eid = z0.spawn(1, pos=tuple(spot[0]))[0]  # zone 1's cell under epoch 1
        for _ in range(6):
            cluster.step()
            await asyncio.sleep(delay)
            _check_ownership(cluster, 1)
        # Zone 0 keeps handing it over (epoch 1); zone 1 keeps refusing (not its cell).
        assert n1.stats.stale_refused >= 1
        assert not z1.entities.contains([eid])[0]
        n0.apply_map(newer)
        await _settle(cluster, 4, delay)
        assert z0.entities.contains([eid])[0]  # its cell is zone 0's now: it stays
        _check_ownership(cluster, 1)
    finally:
        await cluster.close()


async def test_a_stale_epoch_handoff_into_a_cell_the_receiver_owns_anyway_is_taken(
    bus_url: str,
) -> None:
    cluster = Cluster(_world(), bus_url=bus_url, clock=ManualClock(), world_name=_name())
    await cluster.start()
    try:
        delay = _delay(bus_url)
        z0, z1 = cluster.zones
        n1 = cluster.nodes[1]
        n1.apply_map(cluster.cellmap.with_owner(np.asarray(cluster.cellmap.owner)))
        border = cluster.cellmap.region_bounds(0)[2]
        eid = z0.spawn(1, pos=(border + 5.0, 100.0))[0]
        for _ in range(4):
            cluster.step()
            await asyncio.sleep(delay)
            _check_ownership(cluster, 1)
        assert z1.entities.contains([eid])[0]
        assert n1.stats.stale_refused == 0
    finally:
        await cluster.close()


async def test_a_new_cell_map_moves_cells_and_their_entities(bus_url: str) -> None:
    cluster = Cluster(_world(npcs=300), bus_url=bus_url, clock=ManualClock(), world_name=_name())
    await cluster.start()
    try:
        delay = _delay(bus_url)
        await _settle(cluster, 4, delay)
        cm = cluster.cellmap
        owner = np.asarray(cm.owner).copy()
        # Zone 0's easternmost column of cells goes to zone 1.
        col = int(np.max(np.nonzero(owner == 0)[1]))
        owner[:, col] = 1
        newer = cm.with_owner(owner)
        cluster.bus.send(cluster.nodes[0].topics.control, wire.encode(wire.MapUpdate(newer)))
        await cluster.bus.flush()
        for _ in range(400):  # a loaded broker may take a while; done as soon as settled
            cluster.step()
            await asyncio.sleep(delay)
            _check_ownership(cluster, 300)
            if (
                all(n.cellmap.epoch == newer.epoch for n in cluster.nodes)
                and not cluster.in_flight()
            ):
                break
        await _settle(cluster, 3, delay)
        assert all(n.cellmap.epoch == newer.epoch for n in cluster.nodes)
        for i, z in enumerate(cluster.zones):
            assert np.all(newer.owner_of(z.entities["pos"]) == i)
        moved = int(np.count_nonzero(newer.owner_of(cluster.zones[1].entities["pos"]) == 1))
        assert moved == len(cluster.zones[1].entities)
        _check_ownership(cluster, 300)
    finally:
        await cluster.close()


async def test_garbage_on_a_zone_topic_is_counted_and_the_zone_carries_on(bus_url: str) -> None:
    cluster = Cluster(_world(npcs=50), bus_url=bus_url, clock=ManualClock(), world_name=_name())
    await cluster.start()
    try:
        delay = _delay(bus_url)
        node = cluster.nodes[1]
        topic = node.topics.zone_rt("z1")
        for bad in (
            b"",
            b"\xc1",
            b"\x93\x01\x02\x03",
            wire.encode(wire.Ghosts(1, 0, 1, b"\x00" * 7)),
            wire.encode(wire.Ghosts(1, 1, 1, b"")),  # from itself
            wire.encode(wire.Handoff(1, 0, 1, 1, "wrong", b"")),
        ):
            cluster.bus.send(topic, bad)
        await cluster.bus.flush()
        await asyncio.sleep(delay * 3)
        await _settle(cluster, 3, delay)
        assert node.stats.wire_errors >= 6
        _check_ownership(cluster, 50)
    finally:
        await cluster.close()


def test_wire_messages_round_trip_and_refuse_garbage() -> None:
    msgs: list[wire.Message] = [
        wire.Inputs(
            np.array([1, 2], np.uint64),
            np.array([3, 4], np.uint32),
            np.array([[0.5, -1.0], [0.0, 1.0]], np.float32),
            np.array([0, 1], np.uint32),
        ),
        wire.PlayerMessageIn(5, "chat", {"text": "hi"}),
        wire.Join(1, 0, 42, None),
        wire.Join(2, 1, 43, 99),
        wire.Leave(7),
        wire.Resync(8),
        wire.Ghosts(3, 1, 1000, b"abc"),
        wire.Handoff(3, 0, 1, 1000, "fp", b"rows"),
        wire.Handoff(3, 1, 0, 1001, "fp", b"rows", bounce=True),
        wire.Messages([(1, "chat", {"a": 1})]),
        wire.Joined(1, 5, False, 0),
        wire.Joined(2, 0, False, 1, error="nope"),
        wire.Route(2, np.array([5, 6], np.uint64)),
        wire.Heartbeat(0, "z0", 1, 5, 10, {"p99_ms": 1.5}),
    ]
    for m in msgs:
        back = wire.decode(wire.encode(m))
        assert type(back) is type(m)
        for name in m.__dataclass_fields__:  # type: ignore[union-attr]
            a, b = getattr(m, name), getattr(back, name)
            if isinstance(a, np.ndarray):
                assert np.array_equal(a, b) and b.flags.writeable
            else:
                assert a == b
    for bad in (b"", b"\x90", b"\x91\x63", b"\x92\x01\x02", b"\xc1", b"\x93\x14\x01\x02"):
        with pytest.raises(wire.WireError):
            wire.decode(bad)
    # Columns that disagree in length.
    bad_inputs = wire.encode(msgs[0])[:-4] + b"\x00\x00\x00"
    with pytest.raises(wire.WireError):
        wire.decode(bad_inputs)


async def test_players_in_a_sharded_world_walk_across_borders_without_noticing() -> None:
    """Real WebSockets: the gateway reroutes; the SDK mirror never breaks or drops."""
    from shardworld.client import connect
    from shardworld.gateway import Gateway, GatewayConfig

    cluster = Cluster(_world(npcs=60, player_speed=30.0, player_accel=400.0), bus_url="memory://")
    await cluster.start()
    assert cluster.port is not None
    gw = Gateway(cluster.port, GatewayConfig(port=0, dev=True))
    await gw.start()
    ticking = asyncio.create_task(cluster.run())
    try:
        async with connect(gw.url) as a, connect(gw.url) as b:
            errors: list[BaseException] = []

            async def drain(p: Any) -> None:
                try:
                    async for _ in p.snapshots():
                        pass
                except Exception as exc:  # a mirror error would surface here
                    errors.append(exc)

            readers = [asyncio.create_task(drain(p)) for p in (a, b)]
            border = cluster.cellmap.region_bounds(0)[2]
            for z in cluster.zones:
                if z.entities.contains([a.entity_id])[0]:
                    z.entities.set([a.entity_id], pos=(border - 10.0, 100.0))
                if z.entities.contains([b.entity_id])[0]:
                    z.entities.set([b.entity_id], pos=(border + 10.0, 100.0))
            loop = asyncio.get_running_loop()
            end = loop.time() + 4.0
            direction = 1.0
            zones_seen = set()
            while loop.time() < end:
                for i, z in enumerate(cluster.zones):
                    row = z.entities.rows_of([a.entity_id])[0]
                    if row >= 0:
                        zones_seen.add(i)
                        x = float(z.entities["pos"][row, 0])
                        if x > border + 15:
                            direction = -1.0
                        elif x < border - 15:
                            direction = 1.0
                await a.send_input(direction, 0.0)
                await asyncio.sleep(0.05)
            assert zones_seen == {0, 1}
            assert b.entity_id in a.visible() and a.entity_id in b.visible()
            assert not errors
            for t in readers:
                t.cancel()
        assert sum(n.stats.handoffs_in for n in cluster.nodes) >= 4
        stats = gw.stats()
        assert not any(stats["errors"].values())
    finally:
        await gw.stop()
        cluster.stop()
        await asyncio.wait_for(ticking, 5.0)
        await cluster.close()


async def test_ghosts_sent_as_changes_match_the_neighbours_entities_every_tick() -> None:
    """Deltas between keyframes: the receiver's ghosts are exactly the sender's entities in
    range, with their current fields, at every tick; idle entities cost nothing."""
    cluster = Cluster(_world(npcs=300), clock=ManualClock(), world_name=_name())
    await cluster.start()
    try:
        z0, z1 = cluster.zones
        reach = z0.config.interest_radius + z0.config.interest_hysteresis
        mask = cluster.cellmap.ghost_cells(0, reach)[1]
        rng = np.random.default_rng(5)
        await _settle(cluster, 2)
        bytes_idle = None
        for tick in range(60):
            if tick == 20:
                n0 = cluster.nodes[0]
                before = n0.stats.ghost_bytes_out
            if tick == 39:
                bytes_idle = cluster.nodes[0].stats.ghost_bytes_out - before
            if tick >= 40:
                # Some of zone 0's entities start walking about (seek mode, random targets).
                k = 30
                rows = rng.choice(len(z0.entities), k, replace=False)
                z0.entities["mode"][rows] = 2
                z0.entities["max_speed"][rows] = 3.0
                z0.entities["max_accel"][rows] = 30.0
                z0.entities["target"][rows] = z0.entities["pos"][rows] + rng.uniform(
                    -20, 20, (k, 2)
                ).astype(np.float32)
            cluster.step()
            cells = cluster.cellmap.cell_of(z0.entities["pos"])
            want = z0.entities.live_ids()[mask[cells]]
            got = np.setdiff1d(z1.ghosts.live_ids(), z1.entities.live_ids())
            ghost_from_0 = got[np.isin(got, z0.entities.live_ids())]
            assert set(ghost_from_0.tolist()) == set(want.tolist()), f"tick {tick}"
            r0 = z0.entities.rows_of(want)
            r1 = z1.ghosts.rows_of(want)
            assert np.array_equal(z0.entities["pos"][r0], z1.ghosts["pos"][r1])
            assert np.array_equal(z0.entities["vel"][r0], z1.ghosts["vel"][r1])
        # While nothing moved, only the keyframe (one in 20 ticks) carried rows.
        assert bytes_idle is not None
        full_set = len(want) * cluster.nodes[0]._ghost_dtype.itemsize
        assert bytes_idle < 2 * full_set + 19 * 64
    finally:
        await cluster.close()


def test_a_snapshot_batch_selects_the_payloads_of_some_observers() -> None:
    from shardworld.zone.sink import SnapshotBatch

    rng = np.random.default_rng(2)
    lengths = rng.integers(0, 9, 12)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    buf = rng.integers(0, 256, int(off[-1])).astype(np.uint8)
    ids = np.arange(100, 112, dtype=np.uint64)
    batch = SnapshotBatch("z0", 7, ids, ids + 1, np.arange(12, dtype=np.uint32), buf, off)
    keep = rng.random(12) < 0.5
    sub = batch.select(keep)
    kept = np.flatnonzero(keep)
    assert sub.zone == "z0" and sub.tick == 7
    assert list(sub.observer_ids) == list(ids[kept]) and list(sub.owners) == list(ids[kept] + 1)
    assert [sub.payload(i) for i in range(len(sub))] == [batch.payload(i) for i in kept]
    assert len(batch.select(np.zeros(12, np.bool_))) == 0
