import asyncio
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardworld.entities import Field, Scope
from shardworld.kernels import KERNEL_MODULES
from shardworld.protocol.snapshot import SnapshotMirror, decode_snapshot
from shardworld.testing import ManualClock
from shardworld.zone import (
    MODE_IDLE,
    MODE_PLAYER,
    MODE_SEEK,
    CollectingSink,
    InputBatch,
    Zone,
    ZoneConfig,
    ZoneHandler,
    load_world,
)

ROOT = Path(__file__).resolve().parents[1]


def make_zone(**changes: Any) -> tuple[Zone, CollectingSink]:
    cfg = ZoneConfig(
        world=(0.0, 0.0, 1000.0, 1000.0),
        interest_radius=50.0,
        interest_hysteresis=5.0,
        k_max=128,
        pos_quantum=0.01,
    ).with_(**changes)
    sink = CollectingSink()
    return Zone(cfg, sink=sink, clock=ManualClock()), sink


class Mirrors:
    """One SnapshotMirror per observer, fed from the sink like a gateway would."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.by_obs: dict[int, SnapshotMirror] = {}

    def feed(self, sink: CollectingSink) -> None:
        for batch in sink.batches:
            for i, obs in enumerate(batch.observer_ids):
                m = self.by_obs.setdefault(
                    int(obs), SnapshotMirror(self.zone.public_width, self.zone.owner_width)
                )
                m.apply(batch.payload(i))
        sink.batches.clear()


def test_players_see_each_other_enter_and_leave_at_the_right_distances() -> None:
    zone, sink = make_zone()
    a = zone.spawn_player(owner=1, pos=(100.0, 100.0))
    b = zone.spawn_player(owner=2, pos=(170.0, 100.0))
    zone.entities.set([a, b], mode=MODE_IDLE)
    mirrors = Mirrors(zone)

    def view_of_a(bx: float) -> set[int]:
        zone.entities.set([b], pos=(bx, 100.0))
        zone.step()
        mirrors.feed(sink)
        return mirrors.by_obs[a].ids()

    assert view_of_a(170.0) == {a}  # 70 m: out of range (sees only itself)
    assert view_of_a(150.0) == {a, b}  # exactly 50 m: enters
    assert view_of_a(154.0) == {a, b}  # 54 m: hysteresis keeps it
    assert view_of_a(156.0) == {a}  # 56 m > r + h: leaves
    assert view_of_a(152.0) == {a}  # 52 m: not back until within r
    assert view_of_a(149.0) == {a, b}
    # The mirrored position is the server's, quantised.
    seen = mirrors.by_obs[a].by_id(b)
    assert seen is not None
    assert seen.qx * 0.01 == pytest.approx(149.0, abs=0.006)
    assert seen.qy * 0.01 == pytest.approx(100.0, abs=0.006)


def test_visible_sets_match_a_brute_force_reference_while_moving() -> None:
    zone, sink = make_zone(interest_hysteresis=0.0, k_max=4000, world=(0, 0, 400, 400))
    rng = np.random.default_rng(5)
    zone.spawn(
        1500,
        pos=zone.random_points(1500),
        target=zone.random_points(1500),
        mode=MODE_SEEK,
        max_speed=rng.uniform(2, 8, 1500).astype(np.float32),
    )
    players = zone.spawn(
        40,
        pos=zone.random_points(40),
        owner=np.arange(1, 41, dtype=np.uint64),
        mode=MODE_PLAYER,
        observer=1,
    )
    mirrors = Mirrors(zone)
    for tick in range(30):
        intents = rng.uniform(-1, 1, (40, 2)).astype(np.float32)
        zone.inputs.push_many(players, np.full(40, tick + 1), intents)
        zone.step()
        mirrors.feed(sink)
        pos = zone.entities["pos"].astype(np.float64)
        ids = zone.entities.live_ids()
        for p in players:
            me = pos[zone.entities.rows_of([p])[0]]
            d2 = np.sum((pos - me) ** 2, axis=1)
            want = {int(i) for i in ids[d2 <= 50.0**2]}
            mirror = mirrors.by_obs[int(p)]
            assert mirror.ids() == want
            q = np.round(pos / 0.01).astype(np.int64)
            for eid in list(want)[:10]:
                seen = mirror.by_id(eid)
                assert seen is not None
                row = zone.entities.rows_of([eid])[0]
                assert (seen.qx, seen.qy) == (int(q[row, 0]), int(q[row, 1]))


def test_ghost_entities_take_part_in_interest() -> None:
    zone, sink = make_zone()
    a = zone.spawn_player(owner=1, pos=(10.0, 500.0))
    # A neighbour zone's entity, mirrored here as a ghost.
    other, _ = make_zone(zone_tag=2)
    ghost_id = other.spawn(1, pos=(-20.0, 500.0), kind=7)
    zone.ghosts.import_rows(other.entities.export_rows(ghost_id))
    mirrors = Mirrors(zone)
    zone.step()
    mirrors.feed(sink)
    seen = mirrors.by_obs[a].by_id(int(ghost_id[0]))
    assert seen is not None and seen.kind == 7
    zone.ghosts.despawn(ghost_id)
    zone.step()
    mirrors.feed(sink)
    assert mirrors.by_obs[a].ids() == {a}


def test_k_max_caps_a_crowd_and_keeps_the_nearest() -> None:
    zone, sink = make_zone(k_max=16)
    a = zone.spawn_player(owner=1, pos=(500.0, 500.0))
    offsets = np.linspace(1.0, 40.0, 300, dtype=np.float32)
    crowd = zone.spawn(300, pos=np.column_stack([500 + offsets, np.full(300, 500.0)]))
    zone.step()
    batch = sink.batches[-1]
    snap = decode_snapshot(batch.payload(0), zone.public_width, zone.owner_width)
    got = {s.id for s in snap.spawns}
    assert len(got) == 16
    assert got == {a} | {int(i) for i in crowd[:15]}


def test_owner_fields_reach_only_the_owner() -> None:
    world = load_world(ROOT / "zones" / "arena")
    sink = CollectingSink()
    zone = Zone(world.config, world.make_handler(), sink=sink, clock=ManualClock())
    a = zone.spawn_player(owner=11, pos=(100.0, 100.0))
    b = zone.spawn_player(owner=12, pos=(110.0, 100.0))
    zone.entities.set([a], score=7)
    zone.entities.set([b], score=9)
    zone.step()
    mirrors = Mirrors(zone)
    mirrors.feed(sink)
    ma = mirrors.by_obs[a]
    mine, theirs = ma.by_id(a), ma.by_id(b)
    assert mine is not None and theirs is not None
    assert mine.own is not None and int.from_bytes(mine.own, "little") == 7
    assert theirs.own is None


def test_field_updates_replicate() -> None:
    world = load_world(ROOT / "zones" / "arena")
    sink = CollectingSink()
    zone = Zone(world.config, world.make_handler(), sink=sink, clock=ManualClock())
    a = zone.spawn_player(owner=1, pos=(100.0, 100.0))
    n = zone.spawn(1, pos=(105.0, 100.0), health=100)
    mirrors = Mirrors(zone)
    zone.step()
    mirrors.feed(sink)
    zone.entities.set(n, health=55)
    zone.step()
    mirrors.feed(sink)
    seen = mirrors.by_obs[a].by_id(int(n[0]))
    assert seen is not None and seen.pub[0] == 55


def test_resync_sends_a_full_snapshot() -> None:
    zone, sink = make_zone()
    a = zone.spawn_player(owner=1, pos=(100.0, 100.0))
    zone.spawn(5, pos=(110.0, 100.0))
    zone.step()
    zone.step()
    quiet = decode_snapshot(sink.batches[-1].payload(0), zone.public_width, zone.owner_width)
    assert not quiet.header.reset and not quiet.spawns
    zone.request_resync(a)
    zone.step()
    full = decode_snapshot(sink.batches[-1].payload(0), zone.public_width, zone.owner_width)
    assert full.header.reset and len(full.spawns) == 6


def test_inputs_move_players_and_bad_inputs_are_counted() -> None:
    zone, _ = make_zone(input_queue=8)
    a = zone.spawn_player(owner=1, pos=(100.0, 100.0))
    for seq in range(1, 21):
        assert zone.submit_input(a, seq, (50.0, 0.0))  # far beyond max speed: clamped
        zone.step()
    x = float(zone.entities["pos"][0, 0])
    max_travel = zone.config.player_speed * 20 * zone.config.tick_period
    assert 100.0 < x <= 100.0 + max_travel + 1e-3
    zone.submit_input(a, 5, (0.0, 1.0))  # replayed sequence number
    zone.submit_input(123456789, 99, (0.0, 1.0))  # unknown entity
    zone.submit_input(a, 30, (float("nan"), 1.0))
    zone.step()
    assert zone.stats.inputs_out_of_order == 1
    assert zone.stats.inputs_unknown == 1
    assert zone.stats.inputs_invalid == 1
    for seq in range(100, 120):
        zone.submit_input(a, seq, (0.0, 1.0))
    zone.step()
    assert zone.stats.inputs_dropped == 12


def test_nothing_walks_into_walls_in_the_arena() -> None:
    world = load_world(ROOT / "zones" / "arena")
    cfg = world.config.with_(extra={"npcs": 400}, world=(800.0, 800.0, 1200.0, 1200.0))
    zone = Zone(cfg, world.make_handler(), clock=ManualClock())
    zone.warm_up()
    players = zone.spawn(
        50,
        pos=zone.random_points(50),
        owner=np.arange(1, 51, dtype=np.uint64),
        mode=MODE_PLAYER,
        observer=1,
    )
    rng = np.random.default_rng(2)
    for t in range(120):
        zone.inputs.push_many(players, np.full(50, t + 1), rng.uniform(-1, 1, (50, 2)))
        zone.step()
        assert not zone.is_blocked(zone.entities["pos"]).any()


def _signature_counts() -> dict[str, int]:
    counts = {}
    for name in KERNEL_MODULES:
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            if hasattr(obj, "signatures") and hasattr(obj, "py_func"):
                counts[f"{name}.{attr}"] = len(obj.signatures)
    return counts


def test_no_kernel_compiles_inside_a_tick() -> None:
    world = load_world(ROOT / "zones" / "arena")
    cfg = world.config.with_(extra={"npcs": 300}, k_max=300)
    zone = Zone(cfg, world.make_handler(), sink=CollectingSink(), clock=ManualClock())
    zone.warm_up()
    before = _signature_counts()
    # A ghost from a neighbour zone with the same world, so the candidate concatenation runs.
    other = Zone(cfg.with_(zone_tag=9, extra={}), world.make_handler(), clock=ManualClock())
    ghost = other.spawn(3, pos=zone.random_points(3))
    zone.ghosts.import_rows(other.entities.export_rows(ghost))
    players = zone.spawn(
        20,
        pos=zone.random_points(20),
        owner=np.arange(1, 21, dtype=np.uint64),
        mode=MODE_PLAYER,
        observer=1,
    )
    for t in range(10):
        zone.inputs.push_many(players, np.full(20, t + 1), np.ones((20, 2)), np.ones(20))
        zone.step()
        zone.despawn(players[t : t + 1])
    assert _signature_counts() == before


class Recorder(ZoneHandler):
    fields = (Field("hp", np.uint8, scope=Scope.PUBLIC),)

    def __init__(self, clock: ManualClock, slow_tick: int = -1, slow_s: float = 0.0) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.slow_tick = slow_tick
        self.slow_s = slow_s

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        self.times.append(self.clock.now())
        if tick == self.slow_tick:
            self.clock.work(self.slow_s)


async def test_run_ticks_at_the_configured_rate_without_drift() -> None:
    clock = ManualClock()
    rec = Recorder(clock)
    zone = Zone(ZoneConfig(tick_hz=20.0), rec, clock=clock)
    task = asyncio.create_task(zone.run())
    await asyncio.sleep(0)
    await clock.advance(10.0)
    zone.stop()
    await clock.advance(0.1)
    await asyncio.wait_for(task, 1.0)
    # Ticks at t = 0, 0.05, ... 10.05: exactly on their absolute deadlines.
    times = np.array(rec.times)
    assert 200 <= len(times) <= 203
    np.testing.assert_allclose(times, np.arange(len(times)) * 0.05, atol=1e-9)
    assert zone.stats.late_ticks == 0 and zone.stats.skipped_ticks == 0


async def test_a_stall_is_skipped_not_burst() -> None:
    clock = ManualClock()
    rec = Recorder(clock, slow_tick=5, slow_s=0.5)  # ten periods of stall in one tick
    zone = Zone(ZoneConfig(tick_hz=20.0, max_catchup_ticks=2), rec, clock=clock)
    task = asyncio.create_task(zone.run())
    await asyncio.sleep(0)
    await clock.advance(2.0)
    zone.stop()
    await clock.advance(0.1)
    await asyncio.wait_for(task, 1.0)
    times = np.array(rec.times)
    gaps = np.diff(times)
    # No two ticks ran back to back at the same instant (no burst) ...
    assert (gaps > 0.0).all()
    # ... the stall was skipped and counted ...
    assert zone.stats.skipped_ticks >= 9
    # ... and the schedule stays on the original grid afterwards (no drift).
    after = times[6:]
    phase = np.mod(after, 0.05)
    assert np.all((phase < 1e-9) | (phase > 0.05 - 1e-9))


async def test_a_slightly_late_tick_catches_up_on_schedule() -> None:
    clock = ManualClock()
    rec = Recorder(clock, slow_tick=3, slow_s=0.08)  # 1.6 periods
    zone = Zone(ZoneConfig(tick_hz=20.0, max_catchup_ticks=2), rec, clock=clock)
    task = asyncio.create_task(zone.run())
    await asyncio.sleep(0)
    await clock.advance(1.0)
    zone.stop()
    await clock.advance(0.1)
    await asyncio.wait_for(task, 1.0)
    assert zone.stats.skipped_ticks == 0
    assert zone.stats.late_ticks >= 1
    # Every deadline up to 1.0 s was served: 21 ticks (0.00 .. 1.00) plus the final one.
    assert len(rec.times) >= 21


class Chatty(ZoneHandler):
    def __init__(self) -> None:
        self.joined: list[int] = []
        self.left: list[int] = []
        self.seen: list[tuple[int, str, object]] = []

    def on_join(self, world: Zone, player_id: int) -> int:
        self.joined.append(player_id)
        return world.spawn_player(player_id, (10.0 * player_id, 10.0))

    def on_leave(self, world: Zone, entity_id: int) -> None:
        self.left.append(entity_id)

    def on_messages(self, world: Zone, tick: int, messages: list[Any]) -> None:
        for m in messages:
            self.seen.append((m.entity_id, m.kind, m.body))
            world.send_message(m.entity_id, "echo", m.body)


def test_join_leave_and_custom_messages_are_batched_per_tick() -> None:
    handler = Chatty()
    zone = Zone(ZoneConfig(), handler, clock=ManualClock())
    out: list[tuple[int, str, object]] = []
    zone.message_sink = lambda e, k, b: out.append((e, k, b))
    a = zone.join_player(3)
    assert handler.joined == [3]
    assert zone.entities["owner"][zone.entities.rows_of([a])[0]] == 3
    zone.post_message(a, "chat", {"text": "hi"})
    zone.post_message(a, "emote", 2)
    assert handler.seen == []  # nothing happens between ticks
    zone.step()
    assert handler.seen == [(a, "chat", {"text": "hi"}), (a, "emote", 2)]
    assert out == [(a, "echo", {"text": "hi"}), (a, "echo", 2)]
    zone.max_messages_per_tick = 2
    assert zone.post_message(a, "x", 1) and zone.post_message(a, "x", 2)
    assert not zone.post_message(a, "x", 3)
    assert zone.messages_dropped == 1
    zone.leave_player(a)
    zone.leave_player(a)  # twice is harmless
    assert handler.left == [a] and len(zone.entities) == 0
