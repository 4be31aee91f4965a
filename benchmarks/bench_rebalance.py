"""Rebalancing under a crowd: how fast the coordinator moves split lines back to balance,
and what the players standing in the cells that change owner see meanwhile.

One scenario, in real time, as ``shardworld run`` serves a sharded world: a
:class:`~shardworld.sharding.cluster.Cluster` of 4 zones (a square world, 1000 m by default,
25 m cells, split 2 x 2) ticking at 20 Hz (``Cluster.run()``, ticks aligned to the wall
clock), each zone's node sending its heartbeat (tick p99, per-cell load) every second by
itself, and a :class:`~shardworld.coordinator.coordinator.Coordinator` with the
:class:`~shardworld.coordinator.planner.RebalancingPlanner` running its own loop
(``Coordinator.run()``, one round per second) on the same bus, with a store (the memory bus
and the memory store by default). A real gateway (``Gateway(cluster.port, ...)``, dev mode)
serves a few SDK players over WebSockets.

Timeline:

1. Warm-up (``--warm``): ``--npcs`` NPCs wander uniformly over the world (each walks to a
   point at most 40 m away at 1-3 m/s, then picks another). The players join: each stands
   still on a spot chosen inside the future crowd corner, in cells that the coordinator is
   expected to hand to another zone (half of them next to the vertical split line, half next
   to the horizontal one; which cells really moved is read from the store's event log).
2. t0, the crowd: ``--crowd-fraction`` of the NPCs head for random spots in the corner
   region [0, e] x [0, e] of the world (e = ``--crowd-extent`` x side; the low-x, low-y
   corner is zone z0's quadrant) at ``--crowd-speed`` m/s, then mill there (local walks inside
   the region at their old pace). The others keep wandering.
3. The run ends ``--post`` seconds after the zones are balanced (see below) and at least 95 %
   of the crowd has arrived, or ``--max-seconds`` after t0.

The scenario runs twice (``--variants``), each time in a fresh world:

- ``held`` (the headline figures): the coordinator leads from the start but its planner stays
  silent until 95 % of the crowd has arrived, then is released against the full overload
  (z0 holding about 3.3 x the mean). ``time_to_balance_s`` is then the rebalancer's pure
  convergence time, and its first moves carry the largest strips of a dense crowd (the
  handoff storm, the worst case for tick times and snapshot gaps).
- ``tracking`` (under ``tracking``): the planner works from the start, as ``shardworld run``
  runs it, and follows the crowd while it gathers: how far the zones drift from balance
  (``max_share_peak``, ``seconds_unbalanced``) while the static 2 x 2 split would reach
  about 3.4 x.

Definitions (also in the JSON under ``definitions``):

- recent p99: the 99th percentile of a zone's tick durations over its last 40 ticks (2 s);
  the zones' own ``p99_ms`` (what the heartbeat reports) spans 1200 ticks (60 s), too slow
  to see a peak come and go.
- crowd formed (overload), held: the first per-second sample after t0 with >= 95 % of the
  crowd inside the corner (the planner is released then).
- crowd formed (overload), tracking: the first per-second sample after t0 at which (a) the
  busiest quadrant of the initial map holds more than 1.5 x the mean entity count per zone
  (what its zone would carry without rebalancing), or (b) the busiest zone holds more than
  1.5 x the mean, or (c) the hottest zone's recent p99 exceeds twice the hottest zone's p99
  over the warm-up (and at least 5 ms, so that scheduler noise at sub-millisecond ticks does
  not count). ``formed_by`` says which came first.
- balanced: max / mean of the zones' entity counts <= 1.3 and the hottest zone's recent p99
  <= 25 ms (half the 50 ms tick budget), holding for ``--hold`` consecutive samples.
  ``time_to_balance_s``: from the crowd-formed sample to the first sample of that window.
  ``time_to_count_balance_s``: the same with the entity counts alone (the p99 half depends
  on how busy the machine is; see ``busy_ms_per_tick``).
- snapshot gaps: every SNAPSHOT a player receives (``Player.snapshots()``) is recorded with
  its tick; a gap is the tick difference between consecutive snapshots of a player (1 = none
  missing), counted from 2 s after the last player joined. ``max_snapshot_gap_ticks_during
  _move`` is the largest gap of any player whose entity changed zone during the run (the
  gateway port's route for it changed); ``..._all`` over every player. Target: <= 3 ticks.
  ``..._not_skipped`` leaves out the missed ticks that the zone which sent the later
  snapshot did not run (a zone that falls more than 2 ticks behind skips ticks, so every
  player there sees a gap, rebalancing or not); ``max_snapshot_gap_ticks_at_zone_change``:
  gaps within two snapshots of the player's route changing.
- ``entities_lost``: NPCs + players 1 s into the warm-up (once the first zone has handed
  everything it spawned to its owner) minus (entities owned by
  zones + entities in a handoff, ``cluster.in_flight()``) at the end; ``entities_duplicated``:
  ids owned by more than one zone at the end.
- ``cells_moved``: cells listed in the store's ``cell_move`` events (a cell that moves twice
  counts twice); ``cells_changed_owner``: cells whose owner differs between the first map and
  the last.
- ``busy_ms_per_tick_*``: the sum over the zones of their mean tick time (per 1 s sample,
  after t0). Every zone runs in this one process and event loop, so together they have
  the 50 ms of a tick (minus the gateway's, the players' and the bus's share); near that,
  zones run late and skip ticks (``late_ticks``, ``skipped_ticks``), which players see as
  snapshot gaps that have nothing to do with rebalancing.
- ``failover_recovery_s``: a separate 2-zone world (memory bus and store, or the real ones):
  a player stands in zone z1, z1 vanishes as under SIGKILL (no more ticks, heartbeats or
  lease renewals); seconds until the player's entity moves again, with lease TTL
  ``--failover-lease`` s and checkpoints every ``--failover-checkpoint`` s; plus the
  entities lost and whether the player's WebSocket stayed open.

``--kafka URL`` / ``--redis URL`` (default: ``$SHARDWORLD_KAFKA_URL`` /
``$SHARDWORLD_REDIS_URL``) run the first variant once more on the real bus and/or store (the
other one stays in memory); its figures come under ``real`` (null when neither is given).
Headline keys ending ``_any_run`` take the worst over every run.

Progress goes to stderr, one line per second (per-zone entities / recent p99, max/mean,
map epoch, handoffs per second); the last line printed on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.bus import BusError
from shardworld.bus.memory import forget_memory_bus
from shardworld.client import Player, connect
from shardworld.coordinator.coordinator import Coordinator
from shardworld.coordinator.planner import RebalancingPlanner
from shardworld.entities.schema import Field, Scope
from shardworld.gateway import Gateway, GatewayConfig
from shardworld.sharding import wire
from shardworld.sharding.cellmap import CellMap
from shardworld.sharding.cluster import Cluster
from shardworld.sharding.node import ZoneNode
from shardworld.store import StoreError, forget_memory_store, open_store
from shardworld.zone import MODE_SEEK, InputBatch, Zone, ZoneConfig, ZoneHandler
from shardworld.zone.sink import SnapshotBatch
from shardworld.zone.world import ShardingSettings, World

TICK_HZ = 20.0
TICK_BUDGET_MS = 1000.0 / TICK_HZ
ZONES = 4
CELL = 25.0
RADIUS = 30.0
HYSTERESIS = 3.0
ROAM = 40.0  # a wanderer's next target is at most this far away along each axis
STROLL = (1.0, 3.0)  # m/s, wandering and milling pace
CROWD_ACCEL = 200.0  # m/s^2: fast seekers still brake onto their spot
NPC = 2

# Crowd states (field ``crowd``).
ROAMS = 0  # never joins the crowd
WILL_JOIN = 1  # roams until the crowd starts
HEADING = 2  # on its way to its spot in the corner
MILLING = 3  # arrived; walks about inside the corner region

P99_WINDOW_TICKS = 40
OVERLOAD_SHARE = 1.5
OVERLOAD_P99_FACTOR = 2.0
OVERLOAD_P99_FLOOR_MS = 5.0
BALANCED_SHARE = 1.3
BALANCED_P99_MS = TICK_BUDGET_MS / 2.0
ARRIVED_FRACTION = 0.95
GAP_TARGET_TICKS = 3
_U32 = 1 << 32


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop  # what `shardworld run` uses

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(float(v), nd)


def _tick_delta(tick: int, since: int) -> int:
    """``tick - since`` for the 32-bit tick numbers of snapshots."""
    return ((tick - since + (_U32 >> 1)) % _U32) - (_U32 >> 1)


# --- the world ----------------------------------------------------------------------------


@dataclass
class CrowdPlan:
    """What every zone's handler of one run shares (all zones live in this process)."""

    region: tuple[float, float, float, float]
    crowd_speed: tuple[float, float]
    player_spots: list[tuple[float, float]]
    started: bool = False
    joined: int = 0


def crowd_handler(plan: CrowdPlan) -> type[ZoneHandler]:
    """The world's handler class, bound to ``plan`` (one class per run)."""

    class Crowd(ZoneHandler):
        """Wanderers; at ``plan.started`` the chosen ones head for the corner and mill there.

        ``extra``: npcs, crowd_fraction, seed. Spawned by the first zone with its own
        generator; what stands elsewhere is handed off at the first tick.
        """

        fields = (
            Field("spot", np.float32, (2,), Scope.SERVER, "where in the corner it heads"),
            Field("crowd", np.uint8, (), Scope.SERVER, "0 roams, 1 will join, 2 heads, 3 mills"),
            Field("stroll", np.float32, (), Scope.SERVER, "its wandering pace (m/s)"),
        )

        def on_start(self, world: Zone) -> None:
            x = world.config.extra
            rng = np.random.default_rng(int(x["seed"]))
            n = int(x["npcs"])
            x0, y0, x1, y1 = world.bounds
            pos = np.column_stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)]).astype(
                np.float32
            )
            rx0, ry0, rx1, ry1 = plan.region
            spot = np.column_stack([rng.uniform(rx0, rx1, n), rng.uniform(ry0, ry1, n)])
            crowd = np.where(rng.random(n) < float(x["crowd_fraction"]), WILL_JOIN, ROAMS)
            stroll = rng.uniform(*STROLL, n).astype(np.float32)
            world.spawn(
                n,
                pos=pos,
                target=_near(pos, rng, world.bounds),
                spot=spot.astype(np.float32),
                crowd=crowd.astype(np.uint8),
                stroll=stroll,
                mode=MODE_SEEK,
                kind=NPC,
                max_speed=stroll,
                max_accel=CROWD_ACCEL,
            )

        def on_join(self, world: Zone, player_id: int) -> int:
            spots = plan.player_spots
            x, y = spots[plan.joined % len(spots)] if spots else (0.0, 0.0)
            plan.joined += 1
            return world.spawn_player(player_id, (x, y))

        def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
            ents = world.entities
            if len(ents) == 0:
                return
            crowd = ents["crowd"]
            if plan.started:
                go = np.flatnonzero(crowd == WILL_JOIN)
                if go.size:
                    ents["target"][go] = ents["spot"][go]
                    ents["max_speed"][go] = world.rng.uniform(*plan.crowd_speed, go.size)
                    crowd[go] = HEADING
            npc = ents["kind"] == NPC
            d2 = np.sum((ents["pos"] - ents["target"]) ** 2, axis=1)
            arrived = npc & (d2 < 1.0)
            if not np.any(arrived):
                return
            came = np.flatnonzero(arrived & (crowd == HEADING))
            if came.size:
                crowd[came] = MILLING
                ents["max_speed"][came] = ents["stroll"][came]
            mill = np.flatnonzero(arrived & (crowd == MILLING))
            if mill.size:
                ents["target"][mill] = _near(ents["pos"][mill], world.rng, plan.region)
            roam = np.flatnonzero(arrived & (crowd <= WILL_JOIN))
            if roam.size:
                ents["target"][roam] = _near(ents["pos"][roam], world.rng, world.bounds)

    return Crowd


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


def player_spots(
    count: int, region: tuple[float, float, float, float], seed: int
) -> list[tuple[float, float]]:
    """Spots inside the crowd corner in cells the lines are expected to sweep over.

    The vertical line (x = side / 2) moves toward low x until the low-x half holds half the
    load; the crowd's far strip next to it (x in [0.6 e, 0.97 e]) then changes zone. The same
    for the horizontal line of the low-x half (y in [0.65 e, 0.97 e]). Half the players in
    each group.
    """
    rng = np.random.default_rng(seed + 7)
    _x0, _y0, x1, y1 = region
    out: list[tuple[float, float]] = []
    for i in range(count):
        if i % 2 == 0:
            x = rng.uniform(0.6 * x1, 0.97 * x1)
            y = rng.uniform(0.2 * y1, 0.9 * y1)
        else:
            x = rng.uniform(0.1 * x1, 0.5 * x1)
            y = rng.uniform(0.65 * y1, 0.97 * y1)
        out.append((round(float(x), 2), round(float(y), 2)))
    return out


class HeldPlanner:
    """The rebalancing planner, silent until :attr:`enabled` (the coordinator still leads,
    reads heartbeats and renews its lease meanwhile)."""

    def __init__(self, enabled: bool) -> None:
        self.inner = RebalancingPlanner()
        self.enabled = enabled

    def next_map(
        self,
        cellmap: CellMap,
        cell_load: npt.NDArray[np.float64],
        zone_p99_ms: dict[str, float],
        now: float,
    ) -> tuple[CellMap, list[dict[str, Any]]] | None:
        if not self.enabled:
            return None
        return self.inner.next_map(cellmap, cell_load, zone_p99_ms, now)


def make_world(
    side: float, npcs: int, players: int, crowd_fraction: float, seed: int, plan: CrowdPlan
) -> World:
    config = ZoneConfig(
        name="rebalance",
        world=(0.0, 0.0, side, side),
        tick_hz=TICK_HZ,
        snapshot_hz=TICK_HZ,
        interest_radius=RADIUS,
        interest_hysteresis=HYSTERESIS,
        k_max=64,
        # Any zone may end up holding (nearly) everyone.
        capacity=npcs + players + 1024,
        seed=seed,
        extra={"npcs": npcs, "crowd_fraction": crowd_fraction, "seed": seed},
    )
    return World(Path("."), config, crowd_handler(plan), {}, ShardingSettings(ZONES, CELL))


# --- the players -------------------------------------------------------------------------


@dataclass
class PlayerLog:
    """What one player received: per snapshot its tick, arrival time, reset flag and the
    zone the gateway routed the player's entity to at that moment."""

    index: int
    spot: tuple[float, float]
    player: Player
    ticks: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    resets: list[bool] = field(default_factory=list)
    zones: list[int] = field(default_factory=list)
    ended_early: bool = False


async def read_snapshots(log: PlayerLog, cluster: Cluster, stopping: asyncio.Event) -> None:
    port = cluster.port
    eid = log.player.entity_id
    async for snap in log.player.snapshots():
        log.ticks.append(snap.tick)
        log.times.append(snap.received_at)
        log.resets.append(snap.reset)
        route = port.route_of(eid) if port is not None else None
        log.zones.append(-1 if route is None else route)
    if not stopping.is_set():
        log.ended_early = True


def gap_report(
    log: PlayerLog,
    since: float,
    ran: list[set[int]],
    moves: list[tuple[int, int, int]],
) -> dict[str, Any]:
    """Gaps in ticks between consecutive snapshots received after ``since`` (monotonic).

    ``ran``: per zone, the (32-bit) ticks it ran; ``moves``: the player entity's handoffs
    (tick sent, from zone, to zone), in order. A missed tick that the entity's owner then
    did not run (the owner until the handoff tick, the receiver after it) was skipped by a
    zone running late: it counts in the raw gap, not in ``max_gap_ticks_not_skipped``. The
    route is read when the client reads the snapshot, so it may flip a snapshot early or
    late: a gap "at a zone change" is any within two snapshots of a route change.
    """

    def owner_at(tick: int, default: int) -> int:
        owner: int | None = None
        for sent, src, dst in moves:
            if _tick_delta(tick, sent) <= 0:
                return src if owner is None else owner
            owner = dst
        return default if owner is None else owner

    t = np.asarray(log.times, np.float64)
    keep = np.flatnonzero(t >= since)
    ticks = [log.ticks[i] for i in keep.tolist()]
    zones = [log.zones[i] for i in keep.tolist()]
    resets = [log.resets[i] for i in keep.tolist()]
    gaps = [_tick_delta(b, a) for a, b in itertools.pairwise(ticks)]
    run_gaps: list[int] = []
    for i, g in enumerate(gaps):
        if g <= 1:
            run_gaps.append(g)
            continue
        missed = [(ticks[i] + k) % _U32 for k in range(1, g)]
        owners = [owner_at(m, zones[i]) for m in missed]
        run_gaps.append(
            1 + sum(1 for m, o in zip(missed, owners, strict=True) if o < 0 or m in ran[o])
        )
    changes = [i for i in range(len(gaps)) if zones[i] != zones[i + 1] and zones[i] >= 0]
    near = sorted({j for i in changes for j in range(i - 2, i + 3) if 0 <= j < len(gaps)})
    # The gaps over 2 ticks in full (their ticks, routes, which zones ran the ticks missed
    # and who owned the entity then): first those that skipped ticks do not explain and
    # those next to a zone change, then the rest, 12 at most.
    over = [i for i, g in enumerate(gaps) if g > 2]
    first = set(near) | {i for i in over if run_gaps[i] > 2}
    events: list[dict[str, Any]] = []
    for i in sorted(over, key=lambda i: (i not in first, i))[:12]:
        missed = [(ticks[i] + k) % _U32 for k in range(1, gaps[i])]
        events.append(
            {
                "from_tick": ticks[i],
                "to_tick": ticks[i + 1],
                "gap": gaps[i],
                "gap_not_skipped": run_gaps[i],
                "zones": [zones[i], zones[i + 1]],
                "missed_ran_by": [[z for z, r in enumerate(ran) if m in r] for m in missed],
                "owner": [owner_at(m, zones[i]) for m in missed],
                "reset": resets[i + 1],
            }
        )
    at_change = [gaps[j] for j in near]
    path: list[int] = []
    for z in zones:
        if z >= 0 and (not path or path[-1] != z):
            path.append(z)
    p = log.player
    big = [g for g in gaps if g > GAP_TARGET_TICKS]
    return {
        "spot": list(log.spot),
        "entity": p.entity_id,
        "snapshots": len(ticks),
        "zone_path": path,
        "zone_changes": len(path) - 1 if path else 0,
        "max_gap_ticks": max(gaps) if gaps else None,
        "max_gap_ticks_not_skipped": max(run_gaps) if run_gaps else None,
        "gaps_over_target": len(big),
        "gap_histogram": _histogram([g for g in gaps if g != 1]),
        "max_gap_at_zone_change_ticks": max(at_change) if at_change else None,
        "gaps_over_2": events,
        "handoffs": [list(m) for m in moves[:20]],
        "out_of_order": sum(1 for g in gaps if g <= 0),
        "resets": sum(resets),
        "client_dropped": p.metrics.snapshots_dropped,
        "mirror_errors": p.metrics.mirror_errors,
        "closed": p.closed,
        "ended_early": log.ended_early,
        "close_code": p.close_code,
    }


def _histogram(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    v, c = np.unique(np.asarray(values, np.int64), return_counts=True)
    return {str(a): int(b) for a, b in zip(v.tolist(), c.tolist(), strict=True)}


# --- the run --------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since t0 (negative during the warm-up)
    counts: list[int]
    quadrants: list[int]
    p99: list[float]
    max_ms: list[float]
    busy_ms: float  # sum over the zones of their mean tick time over the last second
    epoch: int
    in_flight: int
    total: int
    handoffs_per_s: float
    arrived: float
    ghosts: int

    @property
    def share(self) -> float:
        c = np.asarray(self.counts, np.float64)
        return float(c.max() / c.mean()) if c.sum() else 0.0

    @property
    def quadrant_share(self) -> float:
        c = np.asarray(self.quadrants, np.float64)
        return float(c.max() / c.mean()) if c.sum() else 0.0

    @property
    def hot_p99(self) -> float:
        return max(self.p99)

    def balanced(self) -> bool:
        return self.share <= BALANCED_SHARE and self.hot_p99 <= BALANCED_P99_MS


def record_ticks(cluster: Cluster) -> list[set[int]]:
    """Per zone, the set of (32-bit) ticks it runs from now on: which ticks an overloaded
    zone skipped (``Zone.run`` looks ``step`` up on the instance, so wrapping it there
    leaves the zone's behaviour as it was)."""
    out: list[set[int]] = []
    for z in cluster.zones:
        seen: set[int] = set()
        out.append(seen)
        inner = z.step

        def stepped(
            inner: Callable[[], SnapshotBatch | None] = inner, z: Zone = z, seen: set[int] = seen
        ) -> SnapshotBatch | None:
            batch = inner()
            seen.add(z.tick % _U32)
            return batch

        z.step = stepped  # type: ignore[method-assign]
    return out


def record_player_handoffs(cluster: Cluster) -> dict[int, list[tuple[int, int, int]]]:
    """Per player entity, its handoffs from now on: (32-bit tick sent, from zone, to zone).

    Wraps each node's ``_on_handoff`` on the instance (as bench_handoff does); bounces count
    as a move back to the zone that sent the rows out."""
    out: dict[int, list[tuple[int, int, int]]] = {}
    seen: set[tuple[int, int, int, bool]] = set()
    for node in cluster.nodes:
        inner = node._on_handoff

        def on_handoff(
            msg: wire.Handoff,
            inner: Callable[[wire.Handoff], None] = inner,
            node: ZoneNode = node,
        ) -> None:
            key = (msg.source, msg.target, msg.tick, msg.bounce)
            if key not in seen:  # a deferred handoff comes through here twice
                seen.add(key)
                block = np.frombuffer(msg.rows, dtype=node._row_dtype)
                if len(block):
                    players = block["id"][block["observer"] != 0]
                    for e in players.tolist():
                        out.setdefault(int(e), []).append((msg.tick % _U32, msg.source, msg.target))
            inner(msg)

        node._on_handoff = on_handoff  # type: ignore[method-assign]
    return out


def recent_mean(zone: Zone, ticks: int) -> float:
    t = zone.stats.tick_ms()
    t = t[len(t) - min(ticks, len(t)) :]
    return float(t.mean()) if t.size else 0.0


def recent_max(zone: Zone, ticks: int) -> float:
    t = zone.stats.tick_ms()
    t = t[len(t) - min(ticks, len(t)) :]
    return float(t.max()) if t.size else 0.0


def recent_p99(zone: Zone, ticks: int) -> float:
    t = zone.stats.tick_ms()
    t = t[len(t) - min(ticks, len(t)) :]
    return float(np.percentile(t, 99)) if t.size else 0.0


def take_sample(
    cluster: Cluster,
    coord: Coordinator,
    first: CellMap,
    region: tuple[float, float, float, float],
    t: float,
    handoffs_per_s: float,
) -> Sample:
    zones = cluster.zones
    counts = [len(z.entities) for z in zones]
    pos = cluster.positions()
    quadrants = np.bincount(first.owner_of(pos), minlength=len(zones)).tolist() if len(pos) else []
    heading = 0
    arrived = 0
    rx0, ry0, rx1, ry1 = region
    for z in zones:
        e = z.entities
        if not len(e):
            continue
        c = e["crowd"]
        p = e["pos"]
        joiner = c >= HEADING
        heading += int(np.count_nonzero(joiner))
        inside = (p[:, 0] >= rx0) & (p[:, 0] <= rx1) & (p[:, 1] >= ry0) & (p[:, 1] <= ry1)
        arrived += int(np.count_nonzero(joiner & inside))
    return Sample(
        t=t,
        counts=counts,
        quadrants=quadrants,
        p99=[recent_p99(z, P99_WINDOW_TICKS) for z in zones],
        max_ms=[recent_max(z, int(TICK_HZ)) for z in zones],
        busy_ms=sum(recent_mean(z, int(TICK_HZ)) for z in zones),
        epoch=coord.cellmap.epoch,
        in_flight=cluster.in_flight(),
        total=cluster.entity_count(),
        handoffs_per_s=handoffs_per_s,
        arrived=arrived / heading if heading else 0.0,
        ghosts=sum(len(z.ghosts) for z in zones),
    )


def progress_line(s: Sample, phase: str, maps: int) -> str:
    per_zone = " ".join(f"{c}/{p:.1f}" for c, p in zip(s.counts, s.p99, strict=True))
    return (
        f"t={s.t:6.1f}s {phase:8} zones(entities/p99 ms) {per_zone} | max/mean {s.share:.2f} "
        f"(static split {s.quadrant_share:.2f}) map epoch {s.epoch} ({maps} published) "
        f"handoffs/s {s.handoffs_per_s:.0f} in flight {s.in_flight} ghosts {s.ghosts} "
        f"busy {s.busy_ms:.0f} ms/tick "
        f"crowd arrived {100.0 * s.arrived:.0f}%"
    )


async def all_events(store: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await store.events(after=after, limit=1000)
        out.extend(e.data for e in page)
        if len(page) < 1000:
            return out
        after = page[-1].id


async def scenario(
    bus_url: str,
    store_url: str | None,
    side: float,
    npcs: int,
    players: int,
    crowd_fraction: float,
    crowd_extent: float,
    crowd_speed: tuple[float, float],
    warm_s: float,
    max_s: float,
    hold: int,
    post_s: float,
    seed: int,
    held: bool,
    gc_freeze: bool = False,
) -> dict[str, Any]:
    """One run. ``held``: the planner stays silent until the crowd has arrived, then is
    released against the overload; otherwise it works from the start (tracking)."""
    region = (0.0, 0.0, crowd_extent * side, crowd_extent * side)
    plan = CrowdPlan(region, crowd_speed, player_spots(players, region, seed))
    world = make_world(side, npcs, players, crowd_fraction, seed, plan)
    name = f"rb{uuid.uuid4().hex[:10]}"
    t_start = time.perf_counter()
    cluster = Cluster(world, bus_url=bus_url, gateway=True, world_name=name)
    store_name = store_url or f"memory://{name}"
    store = open_store(store_name, name)
    coord: Coordinator | None = None
    gateway: Gateway | None = None
    runner: asyncio.Task[None] | None = None
    coord_task: asyncio.Task[None] | None = None
    logs: list[PlayerLog] = []
    readers: list[asyncio.Task[None]] = []
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    planner = HeldPlanner(enabled=not held)
    variant = "held" if held else "tracking"
    try:
        await cluster.start()
        await store.start()
        first = cluster.cellmap
        coord = Coordinator(
            cluster.bus,
            store,
            name,
            first,
            "bench",
            planner=planner,
            period_s=1.0,
        )
        await coord.start()
        assert cluster.port is not None
        gateway = Gateway(cluster.port, GatewayConfig(port=0, dev=True))
        await gateway.start()
        ran = record_ticks(cluster)
        handoffs = record_player_handoffs(cluster)
        if gc_freeze:
            # Everything built so far (numba, the world, the zones) leaves the collector's
            # view, so a full collection no longer walks it while the zones tick.
            gc.collect()
            gc.freeze()
        runner = asyncio.create_task(cluster.run(), name="cluster")
        coord_task = asyncio.create_task(coord.run(), name="coordinator")
        start_s = time.perf_counter() - t_start
        _say(
            f"{variant} {bus_url.split(':')[0]}/{store_name.split(':')[0]}: world {name} up in "
            f"{start_s:.1f}s; {cluster.cellmap.describe()}"
        )

        for i, spot in enumerate(plan.player_spots):
            p = await connect(gateway.url, client="bench_rebalance", ping_interval=2.0)
            log = PlayerLog(i, spot, p)
            logs.append(log)
            readers.append(asyncio.create_task(read_snapshots(log, cluster, stopping)))
        joined_at = time.monotonic()
        gaps_since = joined_at + 2.0

        samples: list[Sample] = []
        last_hand = sum(n.stats.handoffs_in for n in cluster.nodes)
        last_t = time.perf_counter()
        total_before: int | None = None

        def sample(t: float) -> Sample:
            nonlocal last_hand, last_t
            now = time.perf_counter()
            hand = sum(n.stats.handoffs_in for n in cluster.nodes)
            rate = (hand - last_hand) / max(1e-9, now - last_t)
            last_hand, last_t = hand, now
            assert coord is not None
            s = take_sample(cluster, coord, first, region, t, rate)
            samples.append(s)
            return s

        async def next_second(anchor: float, k: int) -> None:
            await asyncio.sleep(max(0.0, anchor + k - loop.time()))

        # Warm-up: wander, players joined. The entity total is read once every entity
        # spawned in z0 has been handed to its zone (1 s in).
        anchor = loop.time()
        warm_n = max(2, round(warm_s))
        for k in range(1, warm_n + 1):
            await next_second(anchor, k)
            s = sample(k - warm_n - 0.0)
            if k == 1:
                total_before = s.total + s.in_flight
            _say(progress_line(s, "warm", coord.maps_published))
        warm_ticks = [z.stats.tick_ms()[-int((warm_n - 1) * TICK_HZ) :] for z in cluster.zones]
        pre_p99 = max(float(np.percentile(w, 99)) for w in warm_ticks if len(w))
        maps_before_crowd = coord.maps_published
        epoch_before_crowd = coord.cellmap.epoch

        # t0: the crowd starts.
        plan.started = True
        t0 = loop.time()
        p99_overload = max(OVERLOAD_P99_FACTOR * pre_p99, OVERLOAD_P99_FLOOR_MS)
        formed_at: float | None = None
        formed_by: str | None = None
        formed_share: float | None = None
        unbalanced = 0
        crossings: dict[str, float | None] = {"static_split": None, "zone": None, "p99": None}
        balanced_at: float | None = None
        streak_start: float | None = None
        streak = 0
        counts_at: float | None = None
        count_start: float | None = None
        count_streak = 0
        arrived_at: float | None = None
        end_at: float | None = None
        k = 0
        while True:
            k += 1
            await next_second(t0, k)
            s = sample(float(k))
            if s.quadrant_share > OVERLOAD_SHARE and crossings["static_split"] is None:
                crossings["static_split"] = s.t
            if s.share > OVERLOAD_SHARE and crossings["zone"] is None:
                crossings["zone"] = s.t
            if s.hot_p99 > p99_overload and crossings["p99"] is None:
                crossings["p99"] = s.t
            if s.arrived >= ARRIVED_FRACTION and arrived_at is None:
                arrived_at = s.t
            if formed_at is None:
                if held:
                    if arrived_at is not None:
                        formed_at, formed_by = s.t, "crowd arrived; planner released"
                        planner.enabled = True
                else:
                    hit = [n for n, v in crossings.items() if v is not None]
                    if hit:
                        formed_at, formed_by = s.t, "+".join(hit)
                if formed_at is not None:
                    formed_share = s.share
            if not s.balanced():
                unbalanced += 1
            if formed_at is not None and counts_at is None:
                if s.share <= BALANCED_SHARE:
                    if count_streak == 0:
                        count_start = s.t
                    count_streak += 1
                    if count_streak >= hold:
                        counts_at = count_start
                else:
                    count_streak = 0
            if formed_at is not None and balanced_at is None:
                if s.balanced():
                    if streak == 0:
                        streak_start = s.t
                    streak += 1
                    if streak >= hold:
                        balanced_at = streak_start
                else:
                    streak = 0
            phase = (
                "crowd" if formed_at is None else "formed" if balanced_at is None else "balanced"
            )
            _say(progress_line(s, phase, coord.maps_published))
            if end_at is None and balanced_at is not None and arrived_at is not None:
                end_at = s.t + post_s
            if (end_at is not None and s.t >= end_at) or s.t >= max_s:
                break

        # --- figures -----------------------------------------------------------------------
        stopping.set()
        final = samples[-1]
        crowd_samples = [x for x in samples if x.t > 0]
        peak = max(crowd_samples, key=lambda x: x.hot_p99)
        post_ticks = int(max(1.0, post_s) * TICK_HZ)
        after_p99 = max(
            float(np.percentile(z.stats.tick_ms()[-post_ticks:], 99)) for z in cluster.zones
        )
        # Conservation: let handoffs under way land (one tick is enough), then count.
        await asyncio.sleep(0.2)
        owned = cluster.owned_ids()
        allids = np.concatenate(owned) if owned else np.zeros(0, np.uint64)
        duplicated = int(len(allids) - len(np.unique(allids)))
        total_after = cluster.entity_count() + cluster.in_flight()
        events = await all_events(store)
        moves = [e for e in events if e.get("type") == "cell_move"]
        cells_moved = sum(len(e.get("cells", ())) for e in moves)
        last_map = coord.cellmap
        changed = np.flatnonzero(
            np.asarray(first.owner).reshape(-1) != np.asarray(last_map.owner).reshape(-1)
        )
        moved_cells = {int(c) for e in moves for c in e.get("cells", ())}
        gaps = [
            gap_report(lg, gaps_since, ran, handoffs.get(lg.player.entity_id, [])) for lg in logs
        ]
        for g, lg in zip(gaps, logs, strict=True):
            cell = int(first.cell_of(np.asarray([lg.spot], np.float64))[0])
            g["cell"] = cell
            g["cell_moved"] = cell in moved_cells
        movers = [g for g in gaps if g["zone_changes"] > 0]
        all_max = [g["max_gap_ticks"] for g in gaps if g["max_gap_ticks"] is not None]
        mover_max = [g["max_gap_ticks"] for g in movers if g["max_gap_ticks"] is not None]
        mover_run = [
            g["max_gap_ticks_not_skipped"]
            for g in movers
            if g["max_gap_ticks_not_skipped"] is not None
        ]
        mover_change = [
            g["max_gap_at_zone_change_ticks"]
            for g in movers
            if g["max_gap_at_zone_change_ticks"] is not None
        ]
        disconnected = sum(1 for g in gaps if g["closed"] or g["ended_early"])
        reps = cluster.report()
        gstats = gateway.stats()
        node_tot = {
            k2: sum(int(r["node"].get(k2, 0)) for r in reps.values())
            for k2 in (
                "handoffs_in",
                "bounced_in",
                "stale_refused",
                "ghosts_stale",
                "ghosts_expired",
                "undeliverable",
                "forwarded",
                "wire_errors",
                "handoffs_held",
            )
        }
        time_to_balance = (
            None if balanced_at is None or formed_at is None else balanced_at - formed_at
        )
        time_to_counts = None if counts_at is None or formed_at is None else counts_at - formed_at
        result: dict[str, Any] = {
            "variant": variant,
            "bus": bus_url.split("://")[0],
            "store": store_name.split("://")[0],
            "start_s": round(start_s, 2),
            "pre_crowd_hot_p99_ms": _r(pre_p99),
            "overload_p99_threshold_ms": _r(p99_overload),
            "formed_at_s": formed_at,
            "formed_by": formed_by,
            "share_when_formed": _r(formed_share),
            "seconds_unbalanced": unbalanced,
            "crossings_s": crossings,
            "crowd_arrived_at_s": arrived_at,
            "balanced_at_s": balanced_at,
            "time_to_balance_s": _r(time_to_balance, 1),
            "time_to_balance_from_t0_s": _r(balanced_at, 1),
            "time_to_count_balance_s": _r(time_to_counts, 1),
            "balanced": balanced_at is not None,
            "measured_s": round(samples[-1].t, 1),
            "hot_p99_before_ms": _r(pre_p99),
            "hot_p99_peak_ms": _r(peak.hot_p99),
            "hot_p99_peak_at_s": peak.t,
            "hot_p99_after_ms": _r(after_p99),
            "max_tick_ms_after_t0": _r(max(max(x.max_ms) for x in crowd_samples), 1),
            # All zones share this process's one event loop: at 20 Hz they have 50 ms per
            # tick between them, and past that they run late and skip ticks.
            "busy_ms_per_tick_mean": _r(float(np.mean([x.busy_ms for x in crowd_samples])), 1),
            "busy_ms_per_tick_max": _r(max(x.busy_ms for x in crowd_samples), 1),
            "max_share_peak": _r(max(x.share for x in crowd_samples)),
            "static_split_share_peak": _r(max(x.quadrant_share for x in crowd_samples)),
            "final_share": _r(final.share),
            "final_counts": final.counts,
            "final_static_split_counts": final.quadrants,
            "max_snapshot_gap_ticks_during_move": max(mover_max) if mover_max else None,
            "max_snapshot_gap_ticks_during_move_not_skipped": max(mover_run) if mover_run else None,
            "max_snapshot_gap_ticks_at_zone_change": max(mover_change) if mover_change else None,
            "max_snapshot_gap_ticks_all": max(all_max) if all_max else None,
            "players": len(logs),
            "players_changed_zone": len(movers),
            "players_disconnected": disconnected,
            "entities_before": total_before,
            "entities_after": total_after,
            "entities_lost": None if total_before is None else total_before - total_after,
            "entities_duplicated": duplicated,
            "maps_published": coord.maps_published,
            "maps_published_before_crowd": maps_before_crowd,
            "epoch_before_crowd": epoch_before_crowd,
            "final_epoch": last_map.epoch,
            "cells_moved": cells_moved,
            "cell_move_events": len(moves),
            "cells_changed_owner": len(changed),
            "final_map": last_map.describe(),
            "late_ticks": sum(z.stats.late_ticks for z in cluster.zones),
            "skipped_ticks": sum(z.stats.skipped_ticks for z in cluster.zones),
            "node": node_tot,
            "gateway": {
                k2: gstats.get(k2)
                for k2 in ("joins", "snapshots_sent", "snapshots_dropped", "snapshots_skipped")
            },
            "port_reroutes": cluster.port.reroutes,
            "port_stale_snapshots": cluster.port.stale_snapshots,
            "per_player": gaps,
            "events": [
                {k2: v for k2, v in e.items() if k2 != "cells"}
                | ({"n_cells": len(e["cells"])} if "cells" in e else {})
                for e in events
            ],
            "timeline": {
                "t": [x.t for x in samples],
                "counts": [x.counts for x in samples],
                "p99_ms": [[round(v, 2) for v in x.p99] for x in samples],
                "max_tick_ms": [[round(v, 1) for v in x.max_ms] for x in samples],
                "busy_ms": [round(x.busy_ms, 1) for x in samples],
                "ghosts": [x.ghosts for x in samples],
                "epoch": [x.epoch for x in samples],
                "in_flight": [x.in_flight for x in samples],
                "handoffs_per_s": [round(x.handoffs_per_s) for x in samples],
                "arrived": [round(x.arrived, 3) for x in samples],
            },
        }
        return result
    finally:
        stopping.set()
        for lg in logs:
            await lg.player.close()
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if gateway is not None:
            await gateway.stop()
        if coord is not None:
            coord.stop()
        if coord_task is not None:
            try:
                await asyncio.wait_for(coord_task, 5.0)
            except Exception:
                coord_task.cancel()
        cluster.stop()
        if runner is not None:
            try:
                await asyncio.wait_for(runner, 10.0)
            except Exception:
                runner.cancel()
        if coord is not None:
            await coord.close()
        await cluster.close()
        with contextlib.suppress(StoreError):
            await store.close()
        if bus_url.startswith("memory://"):
            forget_memory_bus(cluster.bus_url[len("memory://") :])
        if store_name.startswith("memory://"):
            forget_memory_store(store_name[len("memory://") :])


HEADLINE = (
    "time_to_balance_s",
    "time_to_balance_from_t0_s",
    "time_to_count_balance_s",
    "formed_at_s",
    "formed_by",
    "share_when_formed",
    "crowd_arrived_at_s",
    "balanced",
    "seconds_unbalanced",
    "hot_p99_before_ms",
    "hot_p99_peak_ms",
    "hot_p99_after_ms",
    "max_share_peak",
    "static_split_share_peak",
    "final_share",
    "max_tick_ms_after_t0",
    "busy_ms_per_tick_mean",
    "busy_ms_per_tick_max",
    "max_snapshot_gap_ticks_during_move",
    "max_snapshot_gap_ticks_during_move_not_skipped",
    "max_snapshot_gap_ticks_at_zone_change",
    "max_snapshot_gap_ticks_all",
    "players_changed_zone",
    "players_disconnected",
    "entities_lost",
    "entities_duplicated",
    "maps_published",
    "cells_moved",
    "cells_changed_owner",
    "late_ticks",
    "skipped_ticks",
)


async def failover_case(
    bus_url: str, store_url: str, npcs: int, lease_s: float, checkpoint_s: float
) -> dict[str, Any]:
    """Kill zone z1 of a 2-zone world under a player standing in it; time the recovery."""
    from shardworld.client import connect
    from shardworld.coordinator.coordinator import Coordinator
    from shardworld.gateway import Gateway, GatewayConfig

    plan = CrowdPlan((0.0, 0.0, 1.0, 1.0), (1.0, 1.0), [])
    world = make_world(400.0, npcs, 1, 0.0, 7, plan)
    name = f"failover{int(time.time() * 1000) % 10**9}"
    cluster = Cluster(
        world,
        zones=2,
        bus_url=bus_url,
        world_name=name,
        store_url=store_url if store_url != "memory://" else f"memory://{name}",
        lease_ttl_s=lease_s,
        checkpoint_every_s=checkpoint_s,
    )
    await cluster.start()
    assert cluster.port is not None and cluster.store is not None
    coord = Coordinator(
        cluster.bus,
        cluster.store,
        name,
        cluster.cellmap,
        "bench",
        period_s=0.25,
        lease_ttl_s=2.0,
    )
    await coord.start()
    gw = Gateway(cluster.port, GatewayConfig(port=0, dev=True))
    await gw.start()
    ticking = asyncio.create_task(cluster.run())
    leading = asyncio.create_task(coord.run())
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {}
    try:
        async with connect(gw.url) as me:
            reader = asyncio.create_task(_drain_player(me))
            await asyncio.sleep(1.0)
            border = cluster.cellmap.region_bounds(0)[2]
            for z in cluster.zones:
                if z.entities.contains([me.entity_id])[0]:
                    z.entities.set([me.entity_id], pos=(border + 50.0, 200.0))
            await asyncio.sleep(max(2.0, 3 * checkpoint_s))  # z1 checkpoints the player
            total = cluster.entity_count() + cluster.in_flight()
            assert cluster.zones[1].entities.contains([me.entity_id])[0]
            await cluster.kill(1)
            killed = loop.time()
            x0 = me.visible()[me.entity_id][1]
            recovered = None
            while loop.time() - killed < 30.0:
                await me.send_input(1.0, 0.0)
                await asyncio.sleep(0.05)
                pos = me.visible().get(me.entity_id)
                if pos is not None and pos[1] > x0 + 1.0:
                    recovered = loop.time() - killed
                    break
            await asyncio.sleep(0.5)
            live = sum(
                len(z.entities) for i, z in enumerate(cluster.zones) if i not in cluster.dead
            )
            out = {
                "failover_recovery_s": _r(recovered, 2),
                "failover_entities_lost": total - live - cluster.in_flight(),
                "failover_player_connected": not reader.done(),
                "failover_lease_s": lease_s,
                "failover_checkpoint_s": checkpoint_s,
                "failovers": coord.failovers,
            }
            reader.cancel()
    finally:
        coord.stop()
        await gw.stop()
        cluster.stop()
        await asyncio.gather(ticking, leading, return_exceptions=True)
        await coord.close()
        await cluster.close()
    return out


async def _drain_player(p: Any) -> None:
    async for _ in p.snapshots():
        pass


def _worst(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5000 NPCs, shorter limits (about 60 s)")
    ap.add_argument("--npcs", type=int, default=None, help="NPCs (default 20000; quick 5000)")
    ap.add_argument("--players", type=int, default=8, help="SDK players in the corner (8)")
    ap.add_argument(
        "--failover-lease", type=float, default=1.5, help="zone lease TTL in the failover case"
    )
    ap.add_argument(
        "--failover-checkpoint",
        type=float,
        default=0.5,
        help="seconds between checkpoints in the failover case",
    )
    ap.add_argument("--side", type=float, default=1000.0, help="world side in metres (1000)")
    ap.add_argument(
        "--crowd-fraction", type=float, default=0.8, help="NPCs that join the crowd (0.8)"
    )
    ap.add_argument(
        "--crowd-extent",
        type=float,
        default=0.45,
        help="the crowd corner's side as a fraction of the world's (0.45)",
    )
    ap.add_argument(
        "--crowd-speed",
        type=float,
        nargs=2,
        default=(30.0, 60.0),
        metavar=("MIN", "MAX"),
        help="m/s of NPCs heading for the corner (30 60)",
    )
    ap.add_argument(
        "--variants",
        default="held,tracking",
        help="runs, comma-separated (default held,tracking): held = the planner is released\n"
        "once the crowd has arrived (a sudden overload; the headline figures); tracking =\n"
        "the planner works from the start (figures under 'tracking')",
    )
    ap.add_argument(
        "--warm", type=float, default=None, help="seconds before the crowd (8; quick 5)"
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="give up this long after t0 (120; quick 45)",
    )
    ap.add_argument("--hold", type=int, default=3, help="balanced samples in a row (3)")
    ap.add_argument(
        "--post", type=float, default=None, help="seconds measured after balance (10; quick 4)"
    )
    ap.add_argument(
        "--kafka",
        default=os.environ.get("SHARDWORLD_KAFKA_URL") or None,
        help="also run the held variant on this Kafka bus (default: $SHARDWORLD_KAFKA_URL)",
    )
    ap.add_argument(
        "--redis",
        default=os.environ.get("SHARDWORLD_REDIS_URL") or None,
        help="also run the held variant with this Redis store (default: $SHARDWORLD_REDIS_URL)",
    )
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the world is up (a full collection of the objects numba\n"
        "and the world leave behind stalls every zone for ~50-120 ms; ticks get skipped)",
    )
    ap.add_argument("--seed", type=int, default=5, help="world layout and motion (5)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or not set(variants) <= {"held", "tracking"}:
        ap.error("--variants: held, tracking or both")

    q = args.quick
    npcs = args.npcs or (5000 if q else 20_000)
    warm = args.warm if args.warm is not None else (5.0 if q else 8.0)
    max_s = args.max_seconds or (45.0 if q else 120.0)
    post = args.post if args.post is not None else (4.0 if q else 10.0)
    t_all = time.perf_counter()

    def case(bus: str, store: str | None, variant: str) -> dict[str, Any]:
        res: dict[str, Any] = _run(
            scenario(
                bus,
                store,
                args.side,
                npcs,
                args.players,
                args.crowd_fraction,
                args.crowd_extent,
                (float(args.crowd_speed[0]), float(args.crowd_speed[1])),
                warm,
                max_s,
                args.hold,
                post,
                args.seed,
                held=variant == "held",
                gc_freeze=args.gc_freeze,
            )
        )
        _say(
            f"{variant} {res['bus']}/{res['store']}: formed at {res['formed_at_s']} s "
            f"({res['formed_by']}, max/mean {res['share_when_formed']}), balanced at "
            f"{res['balanced_at_s']} s: time to balance {res['time_to_balance_s']} s; hot p99 "
            f"{res['hot_p99_before_ms']} -> {res['hot_p99_peak_ms']} -> "
            f"{res['hot_p99_after_ms']} ms; maps {res['maps_published']}, cells moved "
            f"{res['cells_moved']}; snapshot gap max {res['max_snapshot_gap_ticks_all']} "
            f"(movers {res['max_snapshot_gap_ticks_during_move']}, "
            f"{res['players_changed_zone']} of {res['players']} changed zone); lost "
            f"{res['entities_lost']}"
        )
        return res

    runs = {v: case("memory://", None, v) for v in variants}
    real: dict[str, Any] | None = None
    real_note: str | None = None
    if args.kafka or args.redis:
        try:
            real = case(args.kafka or "memory://", args.redis, variants[0])
        except (BusError, StoreError, TimeoutError, OSError) as exc:
            real_note = f"failed: {exc}"
            _say(f"real services: {real_note}")
    else:
        real_note = "skipped: pass --kafka URL and/or --redis URL (or set the env variables)"

    _say("failover: a 2-zone world, zone z1 killed under a player")
    failover = _run(
        failover_case(
            args.kafka or "memory://",
            args.redis or "memory://",
            1000 if q else 4000,
            args.failover_lease,
            args.failover_checkpoint,
        )
    )
    _say(f"failover: {failover}")
    main_run = runs[variants[0]]
    every = [*runs.values(), *([real] if real is not None else [])]
    gap = _worst([r["max_snapshot_gap_ticks_during_move"] for r in every])
    out: dict[str, Any] = {
        "benchmark": "rebalance",
        "quick": q,
        "variant": variants[0],
        "gc_freeze": args.gc_freeze,
        "tick_hz": TICK_HZ,
        "zones": ZONES,
        "world_side_m": args.side,
        "cell_m": CELL,
        "npcs": npcs,
        "players": args.players,
        "crowd_fraction": args.crowd_fraction,
        "crowd_region_m": [0.0, 0.0, args.crowd_extent * args.side, args.crowd_extent * args.side],
        "crowd_speed_m_s": list(args.crowd_speed),
        **{k: main_run[k] for k in HEADLINE},
        # Over every run (both variants and the real services): the worst.
        "max_snapshot_gap_ticks_during_move_any_run": gap,
        "max_snapshot_gap_ticks_all_any_run": _worst(
            [r["max_snapshot_gap_ticks_all"] for r in every]
        ),
        "snapshot_gap_target_ticks": GAP_TARGET_TICKS,
        "snapshot_gap_target_met": None if gap is None else bool(gap <= GAP_TARGET_TICKS),
        "entities_lost_any_run": sum(int(r["entities_lost"] or 0) for r in every),
        "players_disconnected_any_run": sum(int(r["players_disconnected"]) for r in every),
        **failover,
        "tracking": (
            {k: runs["tracking"][k] for k in HEADLINE}
            if "tracking" in runs and variants[0] != "tracking"
            else None
        ),
        "real": None
        if real is None
        else {"bus": real["bus"], "store": real["store"]} | {k: real[k] for k in HEADLINE},
        "real_note": real_note,
        "definitions": {
            "recent_p99": f"p99 of a zone's last {P99_WINDOW_TICKS} tick durations (2 s)",
            "formed": (
                "held: the first 1 s sample after t0 with >= "
                f"{ARRIVED_FRACTION:.0%} of the crowd inside its corner (the planner is "
                "released then); tracking: the first sample after t0 where the busiest quadrant "
                f"of the initial map or the busiest zone holds > {OVERLOAD_SHARE} x the mean "
                f"entity count, or the hottest zone's recent p99 > max({OVERLOAD_P99_FACTOR} x "
                f"the warm-up p99, {OVERLOAD_P99_FLOOR_MS} ms)"
            ),
            "balanced": (
                f"max/mean zone entity count <= {BALANCED_SHARE} and hottest recent p99 <= "
                f"{BALANCED_P99_MS} ms for --hold consecutive 1 s samples; time_to_balance_s "
                "runs from the formed sample to the first sample of that run; "
                "time_to_count_balance_s: the same on the entity counts alone"
            ),
            "seconds_unbalanced": "1 s samples after t0 that were not balanced",
            "snapshot_gap": (
                "tick difference between consecutive snapshots of one player (1 = none "
                "missing), from 2 s after the last join; during_move: players whose route "
                "(owning zone) changed"
            ),
            "entities_lost": "entities at warm-up + 1 s minus (owned + in flight) at the end",
            "busy_ms_per_tick": (
                "sum over the zones of their mean tick time; they share one event loop and "
                "one core, so near 50 ms they run late and skip ticks"
            ),
        },
        "raw": {**runs, "real": real},
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    print(json.dumps(out))
    if real_note and real_note.startswith("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
