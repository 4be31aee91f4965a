"""Elastic zones: the planner that lets splits and merges through, the coordinator's
scale-out (zone appended, process started, split once it is up) and scale-in (merge, stop
once drained) with a fake node provider, fake heartbeats and fake leases in the memory
store; the local provider with a stand-in for the zone command; the CLI's settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.bus import open_bus
from shardworld.coordinator.coordinator import Coordinator
from shardworld.coordinator.elastic import ElasticPlanner, ScalingSettings
from shardworld.coordinator.planner import RebalancingPlanner
from shardworld.coordinator.provider import LocalProvider, NodeProvider, ProviderError
from shardworld.coordinator.rebalancer import Partition, RebalanceConfig
from shardworld.sharding import wire
from shardworld.sharding.cellmap import CellMap
from shardworld.store import open_store
from shardworld.store.memory import forget_memory_store

WORLD = (0.0, 0.0, 400.0, 400.0)

#: 50 ms budget: hot above 25 ms, cold below 7.5 ms.
CONFIG = RebalanceConfig(
    split_after_s=1.0,
    merge_after_s=1.0,
    structural_cooldown_s=0.0,
    min_zones=2,
    max_zones=4,
)


def _two_zones() -> CellMap:
    return CellMap.split(WORLD, 50.0, ("z0", "z1"), epoch=1)


def _owned(cm: CellMap) -> dict[str, int]:
    counts = np.bincount(np.asarray(cm.owner).reshape(-1), minlength=len(cm.zones))
    return {z: int(counts[i]) for i, z in enumerate(cm.zones)}


def _even_load(cm: CellMap) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.ones((cm.rows, cm.cols), np.float64)


# --------------------------------------------------------------------------- the planner


def test_a_hot_zone_without_a_spare_appends_a_new_zone_that_owns_nothing() -> None:
    cm = _two_zones()
    planner = ElasticPlanner(CONFIG)
    load = _even_load(cm)
    hot = {"z0": 40.0, "z1": 10.0}
    assert planner.next_map(cm, load, hot, 0.0, ready=set()) is None  # not hot for long yet
    planned = planner.next_map(cm, load, hot, 1.5, ready=set())
    assert planned is not None
    new, changes = planned
    assert new.zones == ("z0", "z1", "z2")
    assert new.epoch == cm.epoch + 1
    assert np.array_equal(new.owner, cm.owner)
    assert [c["type"] for c in changes] == ["zone_added"]
    assert changes[0]["zone"] == "z2" and changes[0]["for_zone"] == "z0"
    assert changes[0]["index"] == 2


def test_the_split_goes_to_the_new_zone_once_it_is_ready_and_names_keep_their_index() -> None:
    cm = _two_zones()
    planner = ElasticPlanner(CONFIG)
    load = _even_load(cm)
    hot = {"z0": 40.0, "z1": 10.0}
    planner.next_map(cm, load, hot, 0.0, ready=set())
    added = planner.next_map(cm, load, hot, 1.5, ready=set())
    assert added is not None
    cm2 = added[0]
    # While z2 is on its way, no second zone is added.
    assert planner.next_map(cm2, load, hot, 2.0, ready=set(), starting={"z2"}) is None
    planned = planner.next_map(cm2, load, hot, 2.5, ready={"z2"})
    assert planned is not None
    cm3, changes = planned
    assert cm3.zones == ("z0", "z1", "z2") and cm3.epoch == cm2.epoch + 1
    split = [c for c in changes if c["type"] == "split"]
    assert len(split) == 1
    assert split[0]["from"] == "z0" and split[0]["to"] == "z2" and split[0]["zone"] == "z0"
    before = np.asarray(cm2.owner).reshape(-1)
    after = np.asarray(cm3.owner).reshape(-1)
    # z1 is untouched; z0's region is cut in two; the half z2 got is what the change says.
    assert np.array_equal(before == 1, after == 1)
    assert set(np.flatnonzero(after == 2).tolist()) == set(split[0]["cells"])
    assert np.all(before[after == 2] == 0)
    assert _owned(cm3)["z0"] > 0 and _owned(cm3)["z2"] > 0
    # The map is still a k-d partition of rectangles.
    assert set(Partition.from_cellmap(cm3).zones) == {"z0", "z1", "z2"}


def test_a_ready_spare_takes_the_split_instead_of_a_new_zone() -> None:
    cm = _two_zones()
    spare = cm.with_owner(np.asarray(cm.owner), zones=("z0", "z1", "z2", "z3"))
    planner = ElasticPlanner(CONFIG)
    load = _even_load(cm)
    hot = {"z0": 10.0, "z1": 40.0}
    planner.next_map(spare, load, hot, 0.0, ready={"z3"})
    planned = planner.next_map(spare, load, hot, 1.5, ready={"z3"})
    assert planned is not None
    new, changes = planned
    assert new.zones == spare.zones
    split = next(c for c in changes if c["type"] == "split")
    assert split["from"] == "z1" and split["to"] == "z3"
    assert _owned(new)["z2"] == 0  # not ready: not used


def test_without_a_provider_splits_are_dropped() -> None:
    cm = _two_zones()
    planner = ElasticPlanner(CONFIG)
    load = _even_load(cm)
    hot = {"z0": 40.0, "z1": 40.0}
    planner.next_map(cm, load, hot, 0.0)
    assert planner.next_map(cm, load, hot, 5.0) is None


def _three_zones() -> tuple[CellMap, ElasticPlanner]:
    """z0 split into z0 and z2 (siblings), z1 alone."""
    cm = _two_zones()
    planner = ElasticPlanner(CONFIG)
    load = _even_load(cm)
    hot = {"z0": 40.0, "z1": 10.0}
    planner.next_map(cm, load, hot, 0.0, ready=set())
    added = planner.next_map(cm, load, hot, 1.5, ready=set())
    assert added is not None
    planned = planner.next_map(added[0], load, hot, 2.0, ready={"z2"})
    assert planned is not None
    return planned[0], planner


def test_cold_siblings_merge_and_the_removed_zone_keeps_its_slot() -> None:
    cm, planner = _three_zones()
    load = _even_load(cm)
    cold = {"z0": 1.0, "z1": 1.0, "z2": 1.0}
    planner.next_map(cm, load, cold, 10.0, ready=set())
    planned = planner.next_map(cm, load, cold, 11.5, ready=set())
    assert planned is not None
    new, changes = planned
    merge = [c for c in changes if c["type"] == "merge"]
    assert len(merge) == 1
    m = merge[0]
    assert {m["keep"], m["remove"]} == {"z0", "z2"}
    assert m["from"] == m["remove"] and m["to"] == m["keep"]
    assert new.zones == ("z0", "z1", "z2")  # never shrinks, never renumbers
    assert _owned(new)[m["remove"]] == 0
    # z1 cannot merge: that would leave fewer than min_zones = 2 zones with cells.
    planner.next_map(new, load, cold, 20.0, ready=set())
    assert planner.next_map(new, load, cold, 30.0, ready=set()) is None


def test_a_merge_removes_a_zone_whose_process_can_be_stopped_or_does_not_happen() -> None:
    cm, planner = _three_zones()
    load = _even_load(cm)
    cold = {"z0": 1.0, "z1": 1.0, "z2": 1.0}
    # z0 (lighter, as the rebalancer would remove it) was started by hand: z2 goes instead.
    load[:4, :4] = 0.0
    planner.next_map(cm, load, cold, 10.0, ready=set(), stoppable={"z2"})
    planned = planner.next_map(cm, load, cold, 11.5, ready=set(), stoppable={"z2"})
    assert planned is not None
    new, changes = planned
    m = next(c for c in changes if c["type"] == "merge")
    assert (m["keep"], m["remove"]) == ("z0", "z2")
    assert _owned(new)["z2"] == 0 and _owned(new)["z0"] == cm.n_cells - _owned(new)["z1"]
    assert set(m["cells"]) == set(np.flatnonzero(np.asarray(cm.owner).reshape(-1) == 2).tolist())
    # Neither can be stopped here: merging would save no process.
    cm2, planner2 = _three_zones()
    planner2.next_map(cm2, load, cold, 10.0, ready=set(), stoppable=set())
    dropped = planner2.next_map(cm2, load, cold, 11.5, ready=set(), stoppable=set())
    assert dropped is None or not [c for c in dropped[1] if c["type"] == "merge"]


def test_a_split_after_a_merge_appends_a_fresh_name_never_the_merged_one() -> None:
    cm, planner = _three_zones()
    load = _even_load(cm)
    cold = {"z0": 1.0, "z1": 1.0, "z2": 1.0}
    planner.next_map(cm, load, cold, 10.0, ready=set())
    merged = planner.next_map(cm, load, cold, 11.5, ready=set())
    assert merged is not None
    cm2 = merged[0]
    hot = {"z0": 40.0, "z1": 40.0, "z2": 0.0}
    planner.next_map(cm2, load, hot, 20.0, ready=set())
    added = planner.next_map(cm2, load, hot, 21.5, ready=set())
    assert added is not None
    assert added[0].zones == ("z0", "z1", "z2", "z3")


def test_new_settings_apply_from_the_next_round() -> None:
    cm = _two_zones()
    planner = ElasticPlanner(CONFIG)
    load = _even_load(cm)
    p99 = {"z0": 5.0, "z1": 5.0}
    planner.next_map(cm, load, p99, 0.0, ready=set())
    assert planner.next_map(cm, load, p99, 5.0, ready=set()) is None  # 5 ms: nobody is hot
    planner.set_config(
        RebalanceConfig(
            high_water=0.02,  # 1 ms
            low_water=0.01,
            split_after_s=1.0,
            structural_cooldown_s=0.0,
            min_zones=2,
            max_zones=4,
        )
    )
    planner.next_map(cm, load, p99, 6.0, ready=set())
    planned = planner.next_map(cm, load, p99, 7.5, ready=set())
    assert planned is not None and planned[1][0]["type"] == "zone_added"


def test_the_rebalancing_planner_still_pins_the_zone_count() -> None:
    cm = _two_zones()
    planner = RebalancingPlanner(CONFIG)
    load = _even_load(cm)
    hot = {"z0": 40.0, "z1": 40.0}
    for t in (0.0, 2.0, 4.0):
        assert planner.next_map(cm, load, hot, t) is None


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rounds=st.integers(5, 40),
)
def test_maps_stay_append_only_k_d_partitions_whatever_the_load(seed: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    cm = _two_zones()
    planner = ElasticPlanner(
        RebalanceConfig(
            split_after_s=0.5,
            merge_after_s=0.5,
            structural_cooldown_s=0.0,
            min_zones=1,
            max_zones=6,
        )
    )
    starting: dict[str, int] = {}
    now = 0.0
    for r in range(rounds):
        now += float(rng.uniform(0.2, 1.5))
        owned = _owned(cm)
        live = [z for z in cm.zones if owned[z]]
        # Busy in the first half (splits), quiet in the second (merges).
        odds = [0.1, 0.3, 0.6] if r < rounds // 2 else [0.8, 0.15, 0.05]
        p99 = {z: float(rng.choice([1.0, 10.0, 40.0], p=odds)) for z in live}
        load = rng.uniform(0.0, 3.0, (cm.rows, cm.cols))
        ready = {z for z, since in starting.items() if r - since >= 2}
        planned = planner.next_map(cm, load, p99, now, ready=ready, starting=set(starting) - ready)
        if planned is None:
            continue
        new, changes = planned
        assert new.epoch == cm.epoch + 1
        assert new.zones[: len(cm.zones)] == cm.zones
        assert len(new.zones) - len(cm.zones) <= 1
        assert len(set(new.zones)) == len(new.zones)
        part = Partition.from_cellmap(new)  # regions are rectangles of a k-d tree
        assert 1 <= part.n_zones <= 6
        for ch in changes:
            if ch["type"] == "zone_added":
                assert _owned(new)[ch["zone"]] == 0
                starting[ch["zone"]] = r
            elif ch["type"] == "split":
                assert ch["to"] in ready
                starting.pop(ch["to"])
            elif ch["type"] == "merge":
                assert _owned(new)[ch["remove"]] == 0
        cm = new


# --------------------------------------------------------------------------- the coordinator


class FakeProvider:
    """Records what the coordinator asks for; zones "run" as soon as they are started."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []
        self._running: set[str] = set()
        self.fail: set[str] = set()

    async def start_zone(self, name: str) -> None:
        if name in self.fail:
            raise ProviderError(f"no room for {name}")
        self.started.append(name)
        self._running.add(name)

    async def stop_zone(self, name: str) -> None:
        self.stopped.append(name)
        self._running.discard(name)

    def running(self) -> set[str]:
        return set(self._running)


class Rig:
    """A coordinator on a memory bus and store, fed with heartbeats a test writes."""

    def __init__(self, world: str, scaling: ScalingSettings) -> None:
        self.world = world
        self.bus = open_bus(f"memory://{world}")
        self.store = open_store(f"memory://{world}", world)
        self.provider = FakeProvider()
        self.t = 1000.0
        self.coord = Coordinator(
            self.bus,
            self.store,
            world,
            _two_zones(),
            "coord",
            planner=ElasticPlanner(CONFIG),
            provider=self.provider,
            scaling=scaling,
            clock=lambda: self.t,
        )
        self.ticks = 0

    async def start(self) -> None:
        await self.bus.start()
        await self.store.start()
        await self.coord.start()
        for z in ("z0", "z1"):
            await self.up(z)

    async def close(self) -> None:
        await self.coord.close()
        await self.store.close()
        await self.bus.close()
        forget_memory_store(self.world)

    async def up(self, zone: str) -> None:
        assert await self.store.acquire_lease(f"zone:{zone}", f"fake-{zone}", 600.0) is not None

    async def down(self, zone: str) -> None:
        lease = await self.store.get_lease(f"zone:{zone}")
        assert lease is not None
        assert await self.store.release_lease(lease)

    def beat(
        self, zone: str, p99: float, entities: int | None = None, tick: int | None = None
    ) -> None:
        """A heartbeat of ``zone``: one unit of load on each of its cells."""
        cm = self.coord.cellmap
        i = cm.zone_index(zone)
        cells = np.flatnonzero(np.asarray(cm.owner).reshape(-1) == i)
        report = {
            "p99_ms": p99,
            "cell_ids": cells.astype("<i4").tobytes(),
            "cell_load": np.ones(len(cells), "<f4").tobytes(),
        }
        n = len(cells) if entities is None else entities
        hb = wire.Heartbeat(i, zone, cm.epoch, self.ticks if tick is None else tick, n, report)
        self.bus.send(f"sw.{self.world}.heartbeat", wire.encode(hb))

    async def round(self, dt: float = 1.0, **p99: float) -> None:
        self.t += dt
        self.ticks += int(dt * 20)
        for zone, value in p99.items():
            self.beat(zone, value)
        await self.coord.round()
        await self.settle()

    async def settle(self) -> None:
        tasks = list(self.coord._scaling_tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def events(self) -> list[dict[str, Any]]:
        return [e.data for e in await self.store.events()]

    async def kinds(self) -> list[str]:
        return [str(e["type"]) for e in await self.events()]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig(f"el{uuid.uuid4().hex[:10]}", ScalingSettings(5.0, 2.0, 30.0))
    await r.start()
    try:
        yield r
    finally:
        await r.close()


async def _scale_out_to_three(rig: Rig) -> None:
    await rig.round(z0=40.0, z1=10.0)
    assert rig.coord.leader
    await rig.round(z0=40.0, z1=10.0)
    await rig.round(z0=40.0, z1=10.0)
    cm = rig.coord.cellmap
    assert cm.zones == ("z0", "z1", "z2") and _owned(cm)["z2"] == 0
    assert rig.provider.started == ["z2"]
    # Up yet? Not without its lease and a heartbeat: nothing moves meanwhile.
    epoch = cm.epoch
    await rig.round(z0=40.0, z1=10.0)
    assert rig.coord.cellmap.epoch == epoch
    assert rig.coord.elastic_status()["starting"] == ["z2"]
    await rig.up("z2")
    await rig.round(z0=40.0, z1=10.0)
    assert rig.coord.cellmap.epoch == epoch  # a lease but no heartbeat: still not up
    rig.beat("z2", 0.0, tick=0)
    await rig.round(z0=40.0, z1=10.0)
    assert rig.coord.cellmap.epoch == epoch  # heartbeats, but not ticking yet: not up
    await rig.round(z0=40.0, z1=10.0, z2=0.5)
    cm = rig.coord.cellmap
    assert cm.epoch == epoch + 1
    assert _owned(cm)["z2"] > 0 and _owned(cm)["z0"] > 0


async def test_scale_out_appends_the_zone_starts_it_and_splits_once_it_is_up(rig: Rig) -> None:
    await _scale_out_to_three(rig)
    kinds = await rig.kinds()
    assert kinds.index("zone_added") < kinds.index("zone_started") < kinds.index("split")
    events = await rig.events()
    added = next(e for e in events if e["type"] == "zone_added")
    split = next(e for e in events if e["type"] == "split")
    assert added["zone"] == "z2" and added["node"] == "coord"
    assert split["from"] == "z0" and split["to"] == "z2"
    assert split["epoch"] == added["epoch"] + 1
    # The store holds the map the zones read: the new zone's process finds its name there.
    stored = await rig.store.get_map()
    assert stored is not None and CellMap.from_bytes(stored[1]).zones == ("z0", "z1", "z2")
    st = rig.coord.elastic_status()
    assert st["peak_zones"] == 3 and st["zones_started"] == 1 and st["starting"] == []


async def test_scale_in_stops_the_merged_zone_once_drained_and_never_fails_it_over(
    rig: Rig,
) -> None:
    await _scale_out_to_three(rig)
    for _ in range(3):
        await rig.round(z0=1.0, z1=1.0, z2=1.0)
    events = await rig.events()
    merges = [e for e in events if e["type"] == "merge"]
    assert len(merges) == 1
    gone, keep = merges[0]["remove"], merges[0]["keep"]
    assert {gone, keep} == {"z0", "z2"}
    cm = rig.coord.cellmap
    assert cm.zones == ("z0", "z1", "z2") and _owned(cm)[gone] == 0
    # It still holds entities on its way out: not stopped.
    for _ in range(4):
        rig.beat(gone, 1.0, entities=7)
        await rig.round(**{keep: 1.0, "z1": 1.0})
    assert rig.provider.stopped == []
    assert rig.coord.elastic_status()["retiring"] == [gone]
    # Drained: stopped after retire_quiet_s (2 s) of empty heartbeats.
    rig.beat(gone, 0.5, entities=0)
    await rig.round(**{keep: 1.0, "z1": 1.0})
    assert rig.provider.stopped == []
    rig.beat(gone, 0.5, entities=0)
    await rig.round(**{keep: 1.0, "z1": 1.0})
    rig.beat(gone, 0.5, entities=0)
    await rig.round(**{keep: 1.0, "z1": 1.0})
    assert rig.provider.stopped == [gone]
    kinds = await rig.kinds()
    assert kinds.count("zone_stopped") == 1
    stopped = next(e for e in await rig.events() if e["type"] == "zone_stopped")
    assert stopped["zone"] == gone and stopped["reason"] == "merged"
    # Its lease goes (a graceful stop releases it): no failover, it owns no cells.
    await rig.down(gone)
    for _ in range(4):
        await rig.round(**{keep: 1.0, "z1": 1.0})
    assert rig.coord.failovers == 0
    assert "failover" not in await rig.kinds()
    assert rig.coord.elastic_status()["retired"] == [gone]


async def test_a_zone_that_never_comes_up_is_given_up_and_its_name_not_reused(rig: Rig) -> None:
    for _ in range(3):
        await rig.round(z0=40.0, z1=10.0)
    assert rig.provider.started == ["z2"]
    for _ in range(6):  # start_timeout_s = 5
        await rig.round(z0=40.0, z1=10.0)
    kinds = await rig.kinds()
    assert "zone_start_failed" in kinds
    assert rig.provider.stopped == ["z2"]
    assert "z2" in rig.coord.elastic_status()["retired"]
    for _ in range(3):
        await rig.round(z0=40.0, z1=10.0)
    assert rig.coord.cellmap.zones == ("z0", "z1", "z2", "z3")
    assert rig.provider.started == ["z2", "z3"]
    assert _owned(rig.coord.cellmap)["z2"] == 0


async def test_a_provider_that_cannot_start_a_zone_is_a_failed_start(rig: Rig) -> None:
    rig.provider.fail.add("z2")
    for _ in range(4):
        await rig.round(z0=40.0, z1=10.0)
    assert "zone_start_failed" in await rig.kinds()
    failed = next(e for e in await rig.events() if e["type"] == "zone_start_failed")
    assert "no room" in failed["reason"]


async def test_a_spare_nobody_splits_onto_is_stopped_after_a_while() -> None:
    r = Rig(f"el{uuid.uuid4().hex[:10]}", ScalingSettings(5.0, 2.0, 3.0))
    await r.start()
    try:
        for _ in range(3):
            await r.round(z0=40.0, z1=10.0)
        assert r.provider.started == ["z2"]
        await r.up("z2")
        # The crowd is gone by the time z2 is up: it gets nothing and is stopped.
        for _ in range(6):
            await r.round(z0=10.0, z1=10.0, z2=0.5)
        assert _owned(r.coord.cellmap)["z2"] == 0
        assert r.provider.stopped == ["z2"]
        stopped = [e for e in await r.events() if e["type"] == "zone_stopped"]
        assert stopped and stopped[0]["reason"] == "idle spare"
    finally:
        await r.close()


async def test_a_provider_needs_an_elastic_planner() -> None:
    bus = open_bus(f"memory://el{uuid.uuid4().hex[:10]}")
    store = open_store(f"memory://el{uuid.uuid4().hex[:10]}", "w")
    provider: NodeProvider = FakeProvider()
    assert isinstance(provider, NodeProvider)
    with pytest.raises(ValueError, match="ElasticPlanner"):
        Coordinator(
            bus, store, "w", _two_zones(), "c", planner=RebalancingPlanner(), provider=provider
        )


# --------------------------------------------------------------------------- the local provider


def _fake_python(tmp_path: Path, ignore_sigint: bool = False) -> str:
    """A stand-in for the interpreter: prints its arguments, stops on SIGINT (or not)."""
    script = tmp_path / ("stubborn" if ignore_sigint else "polite")
    trap = "trap '' INT" if ignore_sigint else "trap 'echo stopping; exit 0' INT"
    # The trap first: a test waits for the echo before it signals.
    script.write_text(f'#!/bin/sh\n{trap}\necho "args: $*"\nwhile :; do sleep 0.05; done\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


async def _wait_for_text(path: Path, text: str, timeout: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if path.exists() and text in (body := path.read_text()):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


async def test_the_local_provider_runs_the_zone_command_and_stops_it_with_sigint(
    tmp_path: Path,
) -> None:
    p = LocalProvider(
        "worlds/w",
        "kafka://k:1",
        "redis://r:2/0",
        extra_args=["--lease-ttl", "1.5"],
        log_dir=tmp_path / "logs",
        world_name="w1",
        grace_s=5.0,
        python=_fake_python(tmp_path),
    )
    assert isinstance(p, NodeProvider)
    await p.start_zone("z2")
    pid = p.pid("z2")
    assert pid is not None and p.running() == {"z2"}
    await p.start_zone("z2")  # already running: nothing more
    assert p.pid("z2") == pid
    log = tmp_path / "logs" / "zone-z2.log"
    body = await _wait_for_text(log, "args:")
    assert (
        "args: -m shardworld.cli zone worlds/w --zone z2 --bus kafka://k:1 --store "
        "redis://r:2/0 --world-name w1 --lease-ttl 1.5"
    ) in body
    await p.stop_zone("z2")
    assert p.running() == set() and p.pid("z2") is None
    assert "stopping" in log.read_text()
    await p.stop_zone("z2")  # not running: nothing to do
    await p.stop_zone("never")
    with pytest.raises(ProviderError):
        await p.start_zone("../etc")


async def test_the_local_provider_kills_a_zone_that_ignores_sigint(tmp_path: Path) -> None:
    p = LocalProvider(
        "w",
        "kafka://k:1",
        "redis://r:2/0",
        log_dir=tmp_path,
        grace_s=0.3,
        python=_fake_python(tmp_path, True),
    )
    await p.start_zone("z0")
    assert p.running() == {"z0"}
    await _wait_for_text(tmp_path / "zone-z0.log", "args:")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await p.stop_zone("z0")
    assert p.running() == set()
    assert 0.25 <= loop.time() - t0 < 5.0


async def test_the_local_provider_leaves_its_zones_running_on_close_unless_told(
    tmp_path: Path,
) -> None:
    p = LocalProvider("w", "kafka://k:1", "redis://r:2/0", python=_fake_python(tmp_path))
    await p.start_zone("z0")
    await p.start_zone("z1")
    pids = [p.pid("z0"), p.pid("z1")]
    await p.close(stop=False)
    assert p.running() == set()
    try:
        for pid in pids:
            assert pid is not None
            os.kill(pid, 0)  # still there
    finally:
        for pid in pids:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    q = LocalProvider("w", "kafka://k:1", "redis://r:2/0", python=_fake_python(tmp_path))
    await q.start_zone("z0")
    qpid = q.pid("z0")
    await q.close(stop=True)
    assert qpid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(qpid, 0)


# --------------------------------------------------------------------------- the CLI's settings


def test_the_coordinator_options_make_the_rebalancer_settings(tmp_path: Path) -> None:
    from shardworld.cli import _config_file, _parser, _rebalance_config
    from shardworld.zone import load_world

    world = load_world(Path(__file__).resolve().parent / "worlds" / "strip")
    args = _parser().parse_args(
        [
            "coordinator",
            "w",
            "--bus",
            "kafka://k:1",
            "--store",
            "redis://r:2/0",
            "--elastic",
            "--high-water-ms",
            "2",
            "--split-after",
            "0.5",
            "--max-zones",
            "5",
        ]
    )
    cfg = _rebalance_config(world, args)
    assert cfg.tick_budget_ms == 50.0  # 20 Hz
    assert cfg.high_water_ms == pytest.approx(2.0)
    assert cfg.low_water_ms <= 1.0
    assert cfg.split_after_s == 0.5
    assert (cfg.min_zones, cfg.max_zones) == (2, 5)  # min: the world's 2 zones
    path = tmp_path / "rebalance.json"
    path.write_text(json.dumps({"high_water_ms": 40.0, "low_water_ms": 30.0, "max_zones": 3}))
    cfg2 = _config_file(str(path), cfg)
    assert cfg2.high_water_ms == pytest.approx(40.0) and cfg2.low_water_ms == pytest.approx(30.0)
    assert cfg2.max_zones == 3 and cfg2.split_after_s == 0.5
    path.write_text(json.dumps({"no_such_setting": 1}))
    with pytest.raises(ValueError, match="no_such_setting"):
        _config_file(str(path), cfg)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        _config_file(str(path), cfg)


def test_the_zone_command_is_what_a_provider_runs() -> None:
    p = LocalProvider(Path("zones/arena"), "kafka://k:1", "redis://r:2/0")
    cmd = p.command("z7")
    assert cmd[:4] == [sys.executable, "-m", "shardworld.cli", "zone"]
    from shardworld.cli import _parser

    args = _parser().parse_args(cmd[3:])
    assert args.command == "zone" and args.zone == "z7" and args.store == "redis://r:2/0"
