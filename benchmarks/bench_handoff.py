"""Handoffs and ghosts of a sharded world: latency, a storm, ghost bytes, multi-zone overhead.

Every zone is a :class:`~shardworld.sharding.cluster.Cluster` zone in this process, exactly
what ``shardworld run`` (memory bus) and the sharding tests (memory and Kafka) run.

1. Handoff latency, in real time (``Cluster.run()``, 20 Hz, ticks aligned to the wall
   clock), once on the memory bus and once on Kafka. A 400 m square world split in 2 zones
   (``--handoff-zones 4``: 2 x 2). Walkers pace between a point a few metres from a border
   and its mirror image across it (seek mode; the handler swaps ``target`` and a studio
   field ``anchor`` on arrival, whole arrays), so hundreds of handoffs happen per second.
   Reported: percentiles of every zone's ``NodeStats.handoff_ticks`` (ticks from leaving
   the old owner to being taken in by the new one; 1 = simulated the very next tick), and
   the same in milliseconds (wall time from the old owner sending the rows to the new
   owner taking them in, at the start of the tick that simulates them; measured by
   wrapping two ZoneNode methods of this process's nodes): the time until the new owner
   simulates them. Visibility: in the 2-zone world every walker stays well within ghost
   range of both regions, so at every tick each zone must hold every walker, owned or as a
   ghost (its snapshot candidates); ``visibility_gaps_per_handoff`` counts the walkers
   missing there (entity-ticks in which nearby observers get a despawn, then a respawn),
   per handoff. 0 is what ZoneNode promises (the old owner keeps a ghost copy meanwhile).
   Storm: ``--storm`` idle entities standing deep in zone 0 are teleported across the
   border between two ticks, so they all leave in the same tick. Reported: the largest
   tick time of any zone from then until they have all been taken in
   (``storm_max_tick_ms``, next to the largest of the same number of ticks before it) and
   how many of them no zone owns afterwards (``storm_lost``) or two zones own.
   The issue's target: handoff p99 <= 2 ticks at 20 Hz with Kafka on loopback
   (``target_met``).

2. Ghost bytes per tick per border cell, from the 4-zone world of part 3 (uniform density,
   ``--density`` entities per cell, everyone wandering locally so the density stays
   uniform): ghost bytes all zones sent per tick (``NodeStats.ghost_bytes_out``, envelopes
   included) divided by the number of border cells, the cells in any zone's
   ``cellmap.ghost_cells(zone, interest_radius + interest_hysteresis)`` mask. A cell near
   two neighbours (a corner) is sent to both: ``..._per_mask_cell`` divides by
   (cell, neighbour) pairs instead.

3. Multi-zone overhead: the same world (same entities, same observers, same seed) as a
   4-zone Cluster and as a 1-zone Cluster (what ``shardworld run`` serves when a world is
   not split), both on the memory bus with a manual clock, stepped in turn, tick by tick,
   without real-time pacing. ``multizone_overhead_ratio`` = (sum over the 4 zones of their
   p50 tick time) / (the single zone's p50 tick time): the CPU a world tick costs split in
   4 against whole. A plain Zone (no node, no bus, snapshots dropped) is stepped alongside
   for reference. Observers are seek-mode entities with ``observer=1`` (no inputs to route).

Kafka needs a broker: ``--kafka kafka://127.0.0.1:19092`` or ``SHARDWORLD_KAFKA_URL``
(``scripts/services.sh start kafka``); without one the Kafka figures are null, with a note.
Progress goes to stderr; the last line printed on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.bus import BusError
from shardworld.bus.memory import forget_memory_bus
from shardworld.entities.schema import Field, Scope
from shardworld.sharding import wire
from shardworld.sharding.cluster import Cluster
from shardworld.sharding.node import ZoneNode
from shardworld.testing import ManualClock
from shardworld.zone import MODE_IDLE, MODE_SEEK, InputBatch, Zone, ZoneConfig, ZoneHandler
from shardworld.zone.stats import ZoneStats
from shardworld.zone.world import ShardingSettings, World

TICK_HZ = 20.0
WALKER = 2
STORM = 3
OBSERVER_KIND = 1

# Handoff world: 400 m square, cells of 50 m, borders at x = 200 (and y = 200 for 4 zones).
H_SIDE = 400.0
H_CELL = 50.0
H_RADIUS = 30.0
H_HYSTERESIS = 3.0
WALK_MIN = 3.0  # a walker's ends are this far from the border at least ...
WALK_MAX = 20.0  # ... and at most
WALK_SPEED = 10.0
WALK_ACCEL = 20.0
STORM_SHIFT = 250.0  # metres along x: from deep in zone 0 to deep across the border

# Overhead world: cells of 50 m, interest as in bench_tick.
O_CELL = 50.0
O_RADIUS = 50.0
O_HYSTERESIS = 5.0
ROAM = 40.0  # a roamer's next target is at most this far away along each axis


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop  # what `shardworld run` uses

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _pct(values: npt.ArrayLike, q: float) -> float | None:
    a = np.asarray(values, dtype=np.float64)
    return round(float(np.percentile(a, q)), 3) if a.size else None


def _histogram(values: list[int]) -> dict[str, int]:
    v, c = np.unique(np.asarray(values, np.int64), return_counts=True)
    return {str(a): int(b) for a, b in zip(v.tolist(), c.tolist(), strict=True)}


# --- part 1: walkers across a border ---------------------------------------------------------


class Walkers(ZoneHandler):
    """Walkers pacing across the borders, and idle entities waiting to be teleported.

    ``extra``: walkers, storm, zones, seed. Spawned by the first zone; whatever stands
    elsewhere is handed off at the first tick.
    """

    fields = (Field("anchor", np.float32, (2,), Scope.SERVER, "the other end of the walk"),)

    def on_start(self, world: Zone) -> None:
        x = world.config.extra
        rng = np.random.default_rng(int(x["seed"]))
        n, storm, zones = int(x["walkers"]), int(x["storm"]), int(x["zones"])
        mid = H_SIDE / 2.0
        # Ends a few metres either side of a border; walker i crosses along axis[i].
        axis = np.zeros(n, np.int64) if zones == 2 else rng.integers(0, 2, n)
        off = rng.uniform(WALK_MIN, WALK_MAX, n) * rng.choice([-1.0, 1.0], n)
        along = rng.uniform(10.0, H_SIDE - 10.0, n)
        start = np.empty((n, 2), np.float64)
        start[np.arange(n), axis] = mid + off
        start[np.arange(n), 1 - axis] = along
        mirror = start.copy()
        mirror[np.arange(n), axis] = mid - off
        world.spawn(
            n,
            pos=start.astype(np.float32),
            target=mirror.astype(np.float32),
            anchor=start.astype(np.float32),
            mode=MODE_SEEK,
            kind=WALKER,
            max_speed=WALK_SPEED,
            max_accel=WALK_ACCEL,
        )
        # Deep in zone 0 (x < 200, y < 200 for either split), far from every border.
        pts = np.column_stack([rng.uniform(20.0, 120.0, storm), rng.uniform(20.0, 150.0, storm)])
        world.spawn(storm, pos=pts.astype(np.float32), mode=MODE_IDLE, kind=STORM)

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        ents = world.entities
        if len(ents) == 0:
            return
        d2 = np.sum((ents["pos"] - ents["target"]) ** 2, axis=1)
        turn = np.flatnonzero((ents["kind"] == WALKER) & (d2 < 1.0))
        if turn.size:
            there = ents["target"][turn].copy()
            ents["target"][turn] = ents["anchor"][turn]
            ents["anchor"][turn] = there


def handoff_world(walkers: int, storm: int, zones: int, seed: int) -> World:
    config = ZoneConfig(
        name="handoff",
        world=(0.0, 0.0, H_SIDE, H_SIDE),
        tick_hz=TICK_HZ,
        snapshot_hz=TICK_HZ,
        interest_radius=H_RADIUS,
        interest_hysteresis=H_HYSTERESIS,
        k_max=128,
        capacity=walkers + storm + 1024,
        seed=seed,
        extra={"walkers": walkers, "storm": storm, "zones": zones, "seed": seed},
    )
    return World(Path("."), config, Walkers, {}, ShardingSettings(zones, H_CELL))


class HandoffProbe:
    """What a handoff looks like from outside: its wall time, and whether anyone lost sight.

    Wraps three ZoneNode methods of each node (instance attributes only; the nodes behave
    exactly as before):

    - ``_to_zone`` and ``_on_handoff``: wall time from a handoff's send to its take-in, per
      entity. A handoff is keyed by (source, target, tick): a zone sends at most one
      handoff message per neighbour per tick.
    - ``after_simulate`` (with ``walkers`` > 0): right after it, the zone's snapshot
      candidates are its entities plus its ghosts. In the 2-zone world every walker stays
      well within ghost range of both regions, so every zone must hold every walker, owned
      or ghosted, at every tick; each walker missing there is one entity-tick of a gap
      (its observers get a despawn, then a fresh spawn).
    """

    def __init__(self, walkers: int) -> None:
        self.walkers = walkers
        self.sent: dict[tuple[int, int, int], float] = {}
        self.ms: list[float] = []
        self.gaps = [0, 0]  # per zone index, entity-ticks
        self.checks = 0

    def attach(self, node: ZoneNode) -> None:
        to_zone = node._to_zone
        on_handoff = node._on_handoff
        after_simulate = node.after_simulate

        def timed_to_zone(index: int, msg: wire.Message, own: bool = False) -> bool:
            if type(msg) is wire.Handoff and not msg.bounce:
                self.sent[(msg.source, msg.target, msg.tick)] = time.perf_counter()
            return to_zone(index, msg, own)

        def timed_on_handoff(msg: wire.Handoff) -> None:
            before = node.stats.handoffs_in
            on_handoff(msg)
            took = node.stats.handoffs_in - before
            if took:  # not deferred, not a bounce
                t0 = self.sent.pop((msg.source, msg.target, msg.tick), None)
                if t0 is not None:
                    self.ms.extend([(time.perf_counter() - t0) * 1000.0] * took)

        def checked_after_simulate(zone: Zone) -> None:
            after_simulate(zone)
            own, ghosts = zone.entities, zone.ghosts
            seen = np.union1d(
                own.live_ids()[own["kind"] == WALKER], ghosts.live_ids()[ghosts["kind"] == WALKER]
            )
            self.gaps[node.index] += self.walkers - len(seen)
            self.checks += 1

        node._to_zone = timed_to_zone  # type: ignore[method-assign]
        node._on_handoff = timed_on_handoff  # type: ignore[method-assign]
        if self.walkers:
            node.after_simulate = checked_after_simulate  # type: ignore[method-assign]

    def drain(self) -> list[float]:
        out, self.ms = self.ms, []
        return out

    def drain_gaps(self) -> tuple[list[int], int]:
        out, self.gaps = self.gaps, [0, 0]
        checks, self.checks = self.checks, 0
        return out, checks


def _drain_ticks(cluster: Cluster) -> list[int]:
    out: list[int] = []
    for n in cluster.nodes:
        out.extend(n.stats.handoff_ticks)
        n.stats.handoff_ticks.clear()
    return out


def _recent_ticks_ms(zone: Zone, since: int) -> npt.NDArray[np.float64]:
    k = zone.stats.ticks - since
    t = zone.stats.tick_ms()
    return t[len(t) - min(k, len(t)) :] if k > 0 else t[:0]


async def handoff_case(
    url: str, zones: int, walkers: int, storm: int, warm_s: float, seconds: float, seed: int
) -> dict[str, Any]:
    """Part 1 on one bus: walkers for ``seconds`` (after ``warm_s``), then the storm."""
    world = handoff_world(walkers, storm, zones, seed)
    cluster = Cluster(world, bus_url=url, gateway=False, world_name=f"bh{uuid.uuid4().hex[:10]}")
    t0 = time.perf_counter()
    try:
        await cluster.start()
    except BaseException:
        await cluster.close()
        raise
    start_s = time.perf_counter() - t0
    # Only the 2-zone world keeps every walker in ghost range of every zone.
    timer = HandoffProbe(walkers if zones == 2 else 0)
    for node in cluster.nodes:
        timer.attach(node)
    runner = asyncio.create_task(cluster.run())

    async def sleep(s: float) -> None:
        # Wake early if a zone died (its exception surfaces here).
        done, _ = await asyncio.wait([runner], timeout=s)
        if done:
            runner.result()
            raise RuntimeError("the cluster stopped on its own")

    try:
        await sleep(warm_s)
        _drain_ticks(cluster)
        timer.drain()
        timer.drain_gaps()
        for z in cluster.zones:
            z.stats = ZoneStats()
        ins0 = sum(n.stats.handoffs_in for n in cluster.nodes)
        t_meas = time.perf_counter()
        ticks: list[int] = []
        ms: list[float] = []
        while time.perf_counter() - t_meas < seconds:
            await sleep(0.5)
            ticks += _drain_ticks(cluster)  # the deque keeps only the last 4096
            ms += timer.drain()
        measured_s = time.perf_counter() - t_meas
        gaps, gap_checks = timer.drain_gaps()
        handoffs = sum(n.stats.handoffs_in for n in cluster.nodes) - ins0
        walk_ticks = [z.stats.tick_ms() for z in cluster.zones]
        late = sum(z.stats.late_ticks for z in cluster.zones)
        skipped = sum(z.stats.skipped_ticks for z in cluster.zones)

        # The storm: every idle entity of zone 0 across the border between two ticks.
        z0 = cluster.zones[0]
        rows = np.flatnonzero(z0.entities["kind"] == STORM)
        ids = z0.entities.live_ids()[rows].copy()
        new_pos = z0.entities["pos"][rows] + np.array([STORM_SHIFT, 0.0], np.float32)
        dest = cluster.cellmap.owner_of(new_pos)
        marks = [z.stats.ticks for z in cluster.zones]
        z0.entities["pos"][rows] = new_pos
        t_storm = time.perf_counter()

        def arrived() -> npt.NDArray[np.bool_]:
            got = np.zeros(len(ids), np.bool_)
            for i, z in enumerate(cluster.zones):
                got |= z.entities.contains(ids) & (dest == i)
            return got

        # Walkers keep handoffs in flight all the time: wait for the storm's own entities.
        settle_deadline = t_storm + 10.0
        while not np.all(arrived()) and time.perf_counter() < settle_deadline:
            await sleep(0.01)
        settled_s = time.perf_counter() - t_storm
        await sleep(0.3)  # and the ticks after it: ghosts of the newcomers, forwarding tables
        storm_ticks = _drain_ticks(cluster)
        storm_ms = timer.drain()
        held = np.zeros(len(ids), np.int64)
        for z in cluster.zones:
            held += z.entities.contains(ids)
        in_dest = arrived()
        window = [_recent_ticks_ms(z, m) for z, m in zip(cluster.zones, marks, strict=True)]
        k = max(len(w) for w in window)
        before = [w[len(w) - k :] if k else w[:0] for w in walk_ticks]
        storm_max = max((float(w.max()) for w in window if len(w)), default=0.0)
        pre_max = max((float(w.max()) for w in before if len(w)), default=0.0)
        all_walk = np.concatenate(walk_ticks)
        result: dict[str, Any] = {
            "bus": url.split("://")[0],
            "zones": zones,
            "walkers": walkers,
            "start_s": round(start_s, 2),
            "measured_s": round(measured_s, 2),
            "handoffs": handoffs,
            "handoffs_per_s": round(handoffs / measured_s, 1),
            "handoff_ticks_n": len(ticks),
            "handoff_p50_ticks": _pct(ticks, 50),
            "handoff_p99_ticks": _pct(ticks, 99),
            "handoff_max_ticks": max(ticks) if ticks else None,
            "handoff_ticks_histogram": _histogram(ticks),
            "handoff_p50_ms": _pct(ms, 50),
            "handoff_p99_ms": _pct(ms, 99),
            "handoff_max_ms": round(max(ms), 3) if ms else None,
            "visibility_gap_entity_ticks": sum(gaps) if zones == 2 else None,
            "visibility_gap_entity_ticks_by_zone": gaps if zones == 2 else None,
            "visibility_gaps_per_handoff": (
                round(sum(gaps) / handoffs, 3) if zones == 2 and handoffs else None
            ),
            "visibility_checks": gap_checks,
            "tick_p50_ms": _pct(all_walk, 50),
            "tick_p99_ms": _pct(all_walk, 99),
            "late_ticks": late,
            "skipped_ticks": skipped,
            "storm": {
                "entities": len(ids),
                "destinations": sorted({int(d) for d in dest.tolist()}),
                "settled_s": round(settled_s, 3),
                "max_tick_ms": round(storm_max, 3),
                "max_tick_ms_by_zone": [
                    round(float(w.max()), 3) if len(w) else None for w in window
                ],
                "pre_storm_max_tick_ms": round(pre_max, 3),
                "window_ticks": k,
                "handoff_max_ticks": max(storm_ticks) if storm_ticks else None,
                "handoff_max_ms": round(max(storm_ms), 3) if storm_ms else None,
                "lost": int(np.sum(held == 0)),
                "duplicated": int(np.sum(held > 1)),
                "not_at_destination": int(np.sum(~in_dest)),
            },
            "node": {n.name: n.stats.report() for n in cluster.nodes},
        }
        return result
    finally:
        cluster.stop()
        try:
            await asyncio.wait_for(runner, 10.0)
        except Exception:
            runner.cancel()
        await cluster.close()
        if url.startswith("memory://"):
            forget_memory_bus(cluster.bus_url[len("memory://") :])


# --- parts 2 and 3: a uniform world, split in 4 and whole --------------------------------------


class Roamers(ZoneHandler):
    """Entities wandering locally (uniform density stays uniform); some are observers.

    ``extra``: entities, observers, seed. Spawned by the first zone with its own generator,
    so every copy of the world starts identical.
    """

    def on_start(self, world: Zone) -> None:
        x = world.config.extra
        rng = np.random.default_rng(int(x["seed"]))
        n, obs = int(x["entities"]), int(x["observers"])
        x0, y0, x1, y1 = world.bounds
        pos = np.column_stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)]).astype(np.float32)
        target = self._near(pos, rng, world.bounds)
        speed = rng.uniform(1.0, 3.0, n).astype(np.float32)
        npcs = n - obs
        world.spawn(
            npcs,
            pos=pos[:npcs],
            target=target[:npcs],
            mode=MODE_SEEK,
            kind=WALKER,
            max_speed=speed[:npcs],
            max_accel=4.0,
        )
        world.spawn(
            obs,
            pos=pos[npcs:],
            target=target[npcs:],
            mode=MODE_SEEK,
            kind=OBSERVER_KIND,
            observer=1,
            owner=np.arange(1, obs + 1, dtype=np.uint64),
            max_speed=speed[npcs:],
            max_accel=4.0,
        )

    @staticmethod
    def _near(
        pos: npt.NDArray[np.float32],
        rng: np.random.Generator,
        bounds: tuple[float, float, float, float],
    ) -> npt.NDArray[np.float32]:
        x0, y0, x1, y1 = bounds
        t = pos + rng.uniform(-ROAM, ROAM, pos.shape).astype(np.float32)
        t[:, 0] = np.clip(t[:, 0], x0 + 1.0, x1 - 1.0)
        t[:, 1] = np.clip(t[:, 1], y0 + 1.0, y1 - 1.0)
        return t

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        ents = world.entities
        if len(ents) == 0:
            return
        d2 = np.sum((ents["pos"] - ents["target"]) ** 2, axis=1)
        arrived = np.flatnonzero(d2 < 1.0)
        if arrived.size:
            ents["target"][arrived] = self._near(ents["pos"][arrived], world.rng, world.bounds)


def uniform_world(entities: int, observers: int, density: float, seed: int) -> World:
    cells = max(2, round(math.sqrt(entities / density)))
    cells += cells % 2  # an even grid splits 2 x 2 into equal quarters
    side = cells * O_CELL
    config = ZoneConfig(
        name="uniform",
        world=(0.0, 0.0, side, side),
        tick_hz=TICK_HZ,
        snapshot_hz=TICK_HZ,
        interest_radius=O_RADIUS,
        interest_hysteresis=O_HYSTERESIS,
        k_max=128,
        pos_quantum=0.01,
        capacity=entities + 1024,
        seed=seed,
        extra={"entities": entities, "observers": observers, "seed": seed},
    )
    return World(Path("."), config, Roamers, {}, ShardingSettings(4, O_CELL))


def border_cells(cluster: Cluster) -> tuple[int, int]:
    """(cells in any zone's ghost mask, (cell, neighbour) pairs over all masks)."""
    cfg = cluster.world.config
    reach = cfg.interest_radius + cfg.interest_hysteresis
    cm = cluster.cellmap
    union = np.zeros(cm.n_cells, np.bool_)
    pairs = 0
    for z in range(len(cm.zones)):
        for mask in cm.ghost_cells(z, reach).values():
            union |= mask
            pairs += int(mask.sum())
    return int(union.sum()), pairs


async def overhead_case(
    entities: int, observers: int, density: float, warm: int, ticks: int, seed: int
) -> dict[str, Any]:
    """Parts 2 and 3: 4 zones vs 1 zone vs a plain Zone, stepped in turn, tick by tick."""
    world = uniform_world(entities, observers, density, seed)
    multi = Cluster(world, zones=4, gateway=False, clock=ManualClock(), world_name="bhmulti")
    single = Cluster(world, zones=1, gateway=False, clock=ManualClock(), world_name="bhsingle")
    plain = Zone(world.config, world.make_handler(), clock=ManualClock())
    await multi.start()
    await single.start()
    plain.warm_up()
    worlds: list[tuple[str, Callable[[], object]]] = [
        ("multi", multi.step),
        ("single", single.step),
        ("plain", plain.step),
    ]
    step_ms: dict[str, list[float]] = {name: [] for name, _ in worlds}
    all_zones = [*multi.zones, *single.zones, plain]
    try:
        g_bytes = g_rows = g_msgs = 0
        for t in range(warm + ticks):
            if t == warm:
                for z in all_zones:
                    z.stats = ZoneStats()
                g_bytes = sum(n.stats.ghost_bytes_out for n in multi.nodes)
                g_rows = sum(n.stats.ghosts_out for n in multi.nodes)
                g_msgs = sum(n.stats.ghost_messages_out for n in multi.nodes)
            # Rotate who goes first, so that no world always finds the caches warm.
            k = t % len(worlds)
            for name, step in worlds[k:] + worlds[:k]:
                a = time.perf_counter()
                step()
                if t >= warm:
                    step_ms[name].append((time.perf_counter() - a) * 1000.0)
            await asyncio.sleep(0)  # the nodes' bus tasks (gateway topics, heartbeats)
        g_bytes = sum(n.stats.ghost_bytes_out for n in multi.nodes) - g_bytes
        g_rows = sum(n.stats.ghosts_out for n in multi.nodes) - g_rows
        g_msgs = sum(n.stats.ghost_messages_out for n in multi.nodes) - g_msgs
        union, pairs = border_cells(multi)
        n_cells = multi.cellmap.n_cells
        zone_p50 = [z.stats.percentiles()["p50_ms"] for z in multi.zones]
        per_tick_sum = np.sum([z.stats.tick_ms() for z in multi.zones], axis=0)
        single_p50 = single.zones[0].stats.percentiles()["p50_ms"]
        plain_p50 = plain.stats.percentiles()["p50_ms"]
        multi_sum = float(sum(zone_p50))
        per_tick_bytes = g_bytes / ticks
        row_bytes = multi.nodes[0]._ghost_dtype.itemsize
        return {
            "entities": entities,
            "observers": observers,
            "world_side_m": world.config.world[2],
            "cell_m": O_CELL,
            "cells": n_cells,
            "entities_per_cell": round(entities / n_cells, 3),
            "interest_radius_m": world.config.interest_radius,
            "ghost_reach_m": world.config.interest_radius + world.config.interest_hysteresis,
            "ticks": ticks,
            "border_cells": union,
            "border_cell_neighbour_pairs": pairs,
            "ghost_row_bytes": row_bytes,
            "ghost_bytes_per_tick": round(per_tick_bytes, 1),
            "ghost_bytes_per_tick_per_border_cell": round(per_tick_bytes / union, 2),
            "ghost_bytes_per_tick_per_mask_cell": round(per_tick_bytes / pairs, 2),
            "ghosts_per_tick": round(g_rows / ticks, 1),
            "ghosted_entities_per_mask_cell": round(g_rows / ticks / pairs, 3),
            "ghost_messages_per_tick": round(g_msgs / ticks, 2),
            "multi_zone_p50_ms": [round(v, 3) for v in zone_p50],
            "multi_zone_entities": [len(z.entities) for z in multi.zones],
            "multi_zone_ghosts": [len(z.ghosts) for z in multi.zones],
            "multi_p50_sum_ms": round(multi_sum, 3),
            "multi_world_tick_p50_ms": _pct(per_tick_sum, 50),
            "multi_step_p50_ms": _pct(step_ms["multi"], 50),
            "single_p50_ms": round(single_p50, 3),
            "single_step_p50_ms": _pct(step_ms["single"], 50),
            "plain_p50_ms": round(plain_p50, 3),
            "plain_step_p50_ms": _pct(step_ms["plain"], 50),
            "multizone_overhead_ratio": round(multi_sum / single_p50, 3),
            "multizone_overhead_ratio_vs_plain_zone": round(multi_sum / plain_p50, 3),
            "multi_phase_ms": {
                z.config.name: {p: round(v, 3) for p, v in z.stats.phase_means().items()}
                for z in multi.zones
            },
            "single_phase_ms": {
                p: round(v, 3) for p, v in single.zones[0].stats.phase_means().items()
            },
            "handoffs_during": sum(n.stats.handoffs_in for n in multi.nodes),
        }
    finally:
        for c in (multi, single):
            await c.close()
            forget_memory_bus(c.bus_url[len("memory://") :])


# --- the run ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs, small world (under 60 s)")
    ap.add_argument(
        "--kafka",
        default=os.environ.get("SHARDWORLD_KAFKA_URL") or None,
        help="Kafka broker, e.g. kafka://127.0.0.1:19092 (default: $SHARDWORLD_KAFKA_URL)",
    )
    ap.add_argument(
        "--handoff-zones",
        type=int,
        choices=(2, 4),
        default=2,
        help="zones of the handoff world: 2 (default) or 4 (2 x 2, no visibility check)",
    )
    ap.add_argument("--walkers", type=int, default=800, help="border walkers (default 800)")
    ap.add_argument("--storm", type=int, default=500, help="entities teleported at once (500)")
    ap.add_argument(
        "--seconds", type=float, default=None, help="measured walking per bus (20; quick 6)"
    )
    ap.add_argument("--entities", type=int, default=None, help="parts 2-3 (20000; quick 4000)")
    ap.add_argument("--observers", type=int, default=None, help="parts 2-3 (500; quick 100)")
    ap.add_argument("--density", type=float, default=8.0, help="entities per 50 m cell (8)")
    ap.add_argument("--ticks", type=int, default=None, help="parts 2-3 ticks (200; quick 60)")
    ap.add_argument("--seed", type=int, default=11, help="world layout and motion (11)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")

    q = args.quick
    seconds = args.seconds or (6.0 if q else 20.0)
    warm_s = 2.0 if q else 3.0
    entities = args.entities or (4000 if q else 20_000)
    observers = args.observers or (100 if q else 500)
    ticks = args.ticks or (60 if q else 200)
    warm_ticks = 10 if q else 20
    t_all = time.perf_counter()

    def case(url: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        res: dict[str, Any] = _run(
            handoff_case(
                url, args.handoff_zones, args.walkers, args.storm, warm_s, seconds, args.seed
            )
        )
        st = res["storm"]
        _say(
            f"handoff {res['bus']:6} {res['handoffs_per_s']:6.1f}/s "
            f"p50={res['handoff_p50_ticks']} p99={res['handoff_p99_ticks']} ticks "
            f"({res['handoff_p50_ms']} / {res['handoff_p99_ms']} ms), "
            f"tick p99 {res['tick_p99_ms']} ms, late {res['late_ticks']}, "
            f"visibility gaps {res['visibility_gap_entity_ticks']}; "
            f"storm of {st['entities']}: max tick {st['max_tick_ms']} ms "
            f"(before {st['pre_storm_max_tick_ms']}), lost {st['lost']} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
        return res

    memory = case("memory://")
    kafka: dict[str, Any] | None = None
    kafka_note: str | None = None
    if args.kafka:
        try:
            kafka = case(args.kafka)
        except (BusError, TimeoutError) as exc:
            kafka_note = f"failed: {exc}"
            _say(f"kafka: {kafka_note}")
    else:
        kafka_note = "skipped: no broker (pass --kafka URL or set SHARDWORLD_KAFKA_URL)"
        _say(f"kafka: {kafka_note}")

    t0 = time.perf_counter()
    over: dict[str, Any] = _run(
        overhead_case(entities, observers, args.density, warm_ticks, ticks, args.seed)
    )
    _say(
        f"overhead {entities} entities / {observers} observers: 4 zones "
        f"{over['multi_p50_sum_ms']} ms (sum of p50), 1 zone {over['single_p50_ms']} ms, "
        f"ratio {over['multizone_overhead_ratio']}; ghosts "
        f"{over['ghost_bytes_per_tick']} B/tick, "
        f"{over['ghost_bytes_per_tick_per_border_cell']} B/tick/border cell "
        f"({time.perf_counter() - t0:.1f}s)"
    )

    def k(key: str) -> Any:
        return kafka[key] if kafka is not None else None

    p99_kafka = k("handoff_p99_ticks")
    out: dict[str, Any] = {
        "benchmark": "handoff",
        "quick": q,
        "tick_hz": TICK_HZ,
        "handoff_zones": args.handoff_zones,
        "walkers": args.walkers,
        "storm_entities": args.storm,
        "seconds": seconds,
        "handoff_p50_ticks_memory": memory["handoff_p50_ticks"],
        "handoff_p99_ticks_memory": memory["handoff_p99_ticks"],
        "handoff_p50_ticks_kafka": k("handoff_p50_ticks"),
        "handoff_p99_ticks_kafka": p99_kafka,
        "handoff_p50_ms_memory": memory["handoff_p50_ms"],
        "handoff_p99_ms_memory": memory["handoff_p99_ms"],
        "handoff_p50_ms_kafka": k("handoff_p50_ms"),
        "handoff_p99_ms_kafka": k("handoff_p99_ms"),
        "visibility_gaps_per_handoff_memory": memory["visibility_gaps_per_handoff"],
        "visibility_gaps_per_handoff_kafka": k("visibility_gaps_per_handoff"),
        "handoffs_per_s_memory": memory["handoffs_per_s"],
        "handoffs_per_s_kafka": k("handoffs_per_s"),
        "late_ticks_memory": memory["late_ticks"],
        "late_ticks_kafka": k("late_ticks"),
        "storm_max_tick_ms": max(
            memory["storm"]["max_tick_ms"], kafka["storm"]["max_tick_ms"] if kafka else 0.0
        ),
        "storm_max_tick_ms_memory": memory["storm"]["max_tick_ms"],
        "storm_max_tick_ms_kafka": kafka["storm"]["max_tick_ms"] if kafka else None,
        "storm_lost": memory["storm"]["lost"] + (kafka["storm"]["lost"] if kafka else 0),
        "storm_duplicated": memory["storm"]["duplicated"]
        + (kafka["storm"]["duplicated"] if kafka else 0),
        "entities": entities,
        "observers": observers,
        "entities_per_cell": over["entities_per_cell"],
        "ghost_bytes_per_tick": over["ghost_bytes_per_tick"],
        "ghost_bytes_per_tick_per_border_cell": over["ghost_bytes_per_tick_per_border_cell"],
        "ghost_row_bytes": over["ghost_row_bytes"],
        "border_cells": over["border_cells"],
        "multi_p50_sum_ms": over["multi_p50_sum_ms"],
        "single_p50_ms": over["single_p50_ms"],
        "multizone_overhead_ratio": over["multizone_overhead_ratio"],
        "target_handoff_p99_ticks": 2,
        "target_met": None if p99_kafka is None else bool(p99_kafka <= 2),
        "kafka": kafka_note or args.kafka,
        "raw": {"memory": memory, "kafka": kafka, "overhead": over},
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    print(json.dumps(out))
    if kafka_note and kafka_note.startswith("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
