"""Herds: wild sheep graze in herds; players are shepherds who tame them and sell them.

The game, for a player: walk slowly up to an animal and stay close for a few seconds to tame
it (+1 xp); run, and every animal near you bolts. Tamed animals follow you; lead them into
the market in the middle of the meadow to sell them (+1 coin each). Send the message
``whistle`` to make your flock hurry to you (it also renews their loyalty); the reply says
how many follow you. Left alone for LOYALTY_SECONDS, a tamed animal goes back to its herd.
Every LAMBING_SECONDS each herd that has lost animals gets a lamb.

What the code shows, top to bottom:

* world fields, among them ``herd`` (PUBLIC, so clients can colour herds) and the per-player
  ``xp`` and ``coins`` that survive leaving and joining again (``persistent``);
* a system of its own over whole columns: herd centres with ``np.bincount``, steering in
  numpy, and one numba kernel for "the nearest player within r metres of each animal";
* a per-entity deadline (``tame_until``) collected with ``world.due``;
* a timer (``@every``): lambing;
* a custom message (``whistle``) answered with a reply message.

Zones. The meadow is split between four zones, and herds graze across the borders. Four
rules keep that invisible (README.md explains them):

1. A herd's centre is computed from this zone's animals *plus the neighbours' ghosts*: a herd
   astride a border is seen whole on both sides, so both sides steer it to the same centre.
2. A zone only writes the entities it owns. Taming writes the animal; the xp for it is paid
   by the zone that owns both the animal and its shepherd (the ``unpaid`` flag waits on the
   animal until then). Selling works the same way.
3. A decision for a whole herd (a lamb) is made by the zone that owns the herd's animal with
   the lowest id: every zone sees the same herd, and exactly one of them owns that animal.
4. Randomness a whole herd shares (where it drifts) is a hash of the herd and the time, so
   every zone draws the same without talking to the others.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from shardworld.sdk import (
    MODE_PLAYER,
    Field,
    InputBatch,
    PlayerMessage,
    Scope,
    World,
    ZoneHandler,
    every,
)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

KIND_SHEPHERD = 1
KIND_SHEEP = 2

# Distances in metres, speeds in metres per second, times in seconds.
GRAZE_SPEED = 0.8  # how fast a grazing animal ambles about
DRIFT_SPEED = 0.35  # how fast a whole herd moves on to fresh grass
HERD_RADIUS = 8.0  # animals farther than this from their herd's centre head back to it
RUN_SPEED = 5.5  # animals flee at this speed (players run at 6)
FLEE_RADIUS = 14.0  # a running player this close scares an animal
SNEAK_SPEED = 2.0  # players slower than this scare nobody
TAME_RADIUS = 6.0  # ... and this close, they win an animal's trust
TAME_SECONDS = 2.0  # trust needed to tame an animal
FOLLOW_DISTANCE = 3.0  # tamed animals stop this far from their shepherd
FOLLOW_SPEED = 4.0
LOYALTY_SECONDS = 90.0  # a tamed animal goes wild again this long after taming or a whistle
WHISTLE_SECONDS = 4.0  # a whistle makes the flock run to its shepherd for this long
DRIFT_SECONDS = 30.0  # each herd picks a new drift direction this often
EDGE_MARGIN = 60.0  # herds this close to the meadow's edge drift back inwards
LAMBING_SECONDS = 15.0


class Handler(ZoneHandler):
    """The world's hooks; the systems they call are plain functions further down."""

    fields = (
        Field("herd", "uint16", scope=Scope.PUBLIC, doc="the animal's herd, 1.. (0: players)"),
        Field("shepherd", "uint64", scope=Scope.PUBLIC, doc="entity id it follows, 0 when wild"),
        Field("tame_until", "int64", scope=Scope.SERVER, doc="tick it turns wild again, 0 none"),
        Field("trust", "float32", scope=Scope.SERVER, doc="seconds a sneaking player stayed close"),
        Field("suitor", "uint64", scope=Scope.SERVER, doc="the player earning that trust"),
        Field("heading", "float32", scope=Scope.SERVER, doc="wander direction, radians"),
        Field("unpaid", "uint8", scope=Scope.SERVER, doc="1 until its shepherd got the xp"),
        Field("whistle_until", "int64", scope=Scope.GHOST, doc="tick a player's whistle stops"),
        Field("xp", "uint32", scope=Scope.OWNER, doc="animals this player tamed, ever"),
        Field("coins", "uint32", scope=Scope.OWNER, doc="animals this player sold"),
    )
    persistent = ("xp", "coins")

    def __init__(self) -> None:
        super().__init__()
        # Compile (or load from the disk cache) before the first tick, not inside it.
        nearest_within(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), 1.0)

    # --- start and players -------------------------------------------------------------

    def on_start(self, world: World) -> None:
        animals = int(world.config.extra.get("npcs", 0))
        size = int(world.config.extra.get("herd_size", 24))
        if animals <= 0:
            return
        herds = -(-animals // size)
        centres = world.random_points(herds, margin=EDGE_MARGIN + HERD_RADIUS)
        herd = np.arange(animals) % herds
        spawn_animals(world, centres[herd], herd + 1)

    def on_join(self, world: World, player_id: int) -> int:
        # New shepherds start next to the market, where the game's loop ends.
        x0, y0, x1, y1 = market(world)
        angle = world.rng.uniform(0.0, 2.0 * math.pi)
        r = 0.5 * max(x1 - x0, y1 - y0) + 10.0
        pos = ((x0 + x1) / 2 + r * math.cos(angle), (y0 + y1) / 2 + r * math.sin(angle))
        return world.spawn_player(player_id, pos, kind=KIND_SHEPHERD)

    def on_player_loaded(self, world: World, entity_id: int, record: dict[str, Any]) -> None:
        world.send_message(
            entity_id,
            "welcome",
            {"xp": int(record.get("xp", 0)), "coins": int(record.get("coins", 0))},
        )

    # --- the tick ------------------------------------------------------------------------

    def on_tick(self, world: World, tick: int, inputs: InputBatch) -> None:
        # Players move by their inputs, animals by the intents `steer` set last tick; the
        # systems below read what this zone sees and write only what it owns.
        turn_wild(world)
        view = View.of(world)
        steer(world, tick, view)
        win_trust(world, tick, view)
        settle(world)

    def on_messages(self, world: World, tick: int, messages: list[PlayerMessage]) -> None:
        whistlers = np.unique(
            np.array([m.entity_id for m in messages if m.kind == "whistle"], np.uint64)
        )
        if whistlers.size:
            whistle(world, tick, whistlers)

    @every(LAMBING_SECONDS)
    def lambing(self, world: World, tick: int) -> None:
        """Each herd smaller than herd_size gets one lamb, next to its lowest-id animal."""
        view = View.of(world)
        wild = np.flatnonzero(view.wild)
        if wild.size == 0:
            return
        # Sort the wild animals by herd, then id: each herd's first row is its leader.
        order = wild[np.lexsort((view.ids[wild], view.herd[wild]))]
        herd = view.herd[order]
        first = np.flatnonzero(np.r_[True, herd[1:] != herd[:-1]])
        sizes = np.diff(np.r_[first, order.size])
        leader = order[first]
        cap = int(world.config.extra.get("herd_size", 24))
        lamb = leader[(sizes < cap) & (leader < view.owned)]
        if lamb.size:
            near = view.pos[lamb] + world.rng.normal(0.0, 1.5, (lamb.size, 2))
            spawn_animals(world, near.astype(np.float32), view.herd[lamb])


# --- what a zone sees: its own entities, then its neighbours' ghosts ---------------------


class View:
    """The columns the systems read, over owned rows ``[0, owned)`` then ghost rows.

    Built once per tick; writes go to ``world.entities`` (only owned rows are writable).
    """

    def __init__(self, world: World) -> None:
        self.owned = len(world.entities)
        cols = {}
        for name in ("pos", "vel", "kind", "herd", "shepherd", "whistle_until"):
            own = world.entities[name]
            cols[name] = np.concatenate([own, world.ghosts[name]]) if len(world.ghosts) else own
        self.ids: U64 = np.concatenate([world.entities.live_ids(), world.ghosts.live_ids()])
        self.pos: F32 = np.ascontiguousarray(cols["pos"])
        self.vel: F32 = cols["vel"]
        self.kind: npt.NDArray[np.uint16] = cols["kind"]
        self.herd: npt.NDArray[np.uint16] = cols["herd"]
        self.shepherd: U64 = cols["shepherd"]
        self.whistle_until: npt.NDArray[np.int64] = cols["whistle_until"]
        self.sheep = self.kind == KIND_SHEEP
        self.wild = self.sheep & (self.shepherd == 0)
        self.players = np.flatnonzero(self.kind == KIND_SHEPHERD)

    @classmethod
    def of(cls, world: World) -> View:
        return cls(world)

    def herd_centres(self) -> tuple[F64, I64]:
        """Centre and size of every herd this zone sees, from its wild animals and ghosts."""
        return herd_centres(self.herd[self.wild], self.pos[self.wild])


# --- systems --------------------------------------------------------------------------------


def steer(world: World, tick: int, view: View) -> None:
    """Set every owned animal's ``intent``: the built-in motion kernel moves it next tick."""
    ents = world.entities
    n = view.owned
    if n == 0:
        return
    pos = view.pos[:n].astype(np.float64)
    want = np.zeros((n, 2), np.float64)

    # Wild animals: back toward the herd's centre, a wander of their own, the herd's drift.
    wild = np.flatnonzero(view.wild[:n])
    if wild.size:
        centres, _ = view.herd_centres()
        herd = view.herd[wild]
        to_centre = centres[herd] - pos[wild]
        dist = np.linalg.norm(to_centre, axis=1)
        pull = GRAZE_SPEED * np.clip((dist - HERD_RADIUS) / HERD_RADIUS, 0.0, 3.0)
        want[wild] = to_centre * (pull / np.maximum(dist, 1e-6))[:, None]
        heading = ents["heading"]
        heading[wild] += world.rng.normal(0.0, 0.4, wild.size).astype(np.float32)
        want[wild, 0] += 0.5 * GRAZE_SPEED * np.cos(heading[wild])
        want[wild, 1] += 0.5 * GRAZE_SPEED * np.sin(heading[wild])
        drift = herd_drift(np.arange(centres.shape[0]), tick // world.ticks(DRIFT_SECONDS))
        drift = away_from_edges(drift, centres, world.bounds)
        want[wild] += DRIFT_SPEED * drift[herd]

        # A running player close by: bolt straight away from it, whatever else.
        running = view.players[np.linalg.norm(view.vel[view.players], axis=1) > SNEAK_SPEED]
        near, _ = nearest_within(
            np.ascontiguousarray(view.pos[wild]), view.pos[running], FLEE_RADIUS
        )
        scared = near >= 0
        away = pos[wild[scared]] - view.pos[running[near[scared]]]
        away /= np.maximum(np.linalg.norm(away, axis=1), 1e-6)[:, None]
        want[wild[scared]] = away * RUN_SPEED
        ents["trust"][wild[scared]] = 0.0

    # Tamed animals follow their shepherd if this zone sees it (owned or ghost). One whose
    # shepherd is out of sight (gone, or beyond the ghost range) waits where it is.
    tamed = np.flatnonzero(view.sheep[:n] & (view.shepherd[:n] != 0))
    if tamed.size:
        lead = find(view.ids[view.players], view.shepherd[tamed])
        seen = lead >= 0
        who = view.players[lead[seen]]
        to = view.pos[who].astype(np.float64) - pos[tamed[seen]]
        dist = np.linalg.norm(to, axis=1)
        speed = np.clip((dist - FOLLOW_DISTANCE) * 1.5, 0.0, FOLLOW_SPEED)
        called = view.whistle_until[who] > tick
        speed[called & (dist > FOLLOW_DISTANCE)] = RUN_SPEED
        want[tamed[seen]] = to * (speed / np.maximum(dist, 1e-6))[:, None]
        # A whistle they hear renews their loyalty.
        ents["tame_until"][tamed[seen][called]] = tick + world.ticks(LOYALTY_SECONDS)

    intent = want / RUN_SPEED
    length = np.linalg.norm(intent, axis=1)
    intent /= np.maximum(length, 1.0)[:, None]
    sheep = view.sheep[:n]
    ents["intent"][sheep] = intent[sheep]


def win_trust(world: World, tick: int, view: View) -> None:
    """A sneaking player courts the wild animal nearest to it (within TAME_RADIUS): that
    animal's trust grows while the player stays, and at TAME_SECONDS it is theirs."""
    ents = world.entities
    n = view.owned
    wild = np.flatnonzero(view.wild[:n])
    if wild.size == 0:
        return
    players = view.players
    sneaking = players[np.linalg.norm(view.vel[players], axis=1) <= SNEAK_SPEED]
    # Candidates are every wild animal in view, ghosts too, so the zones on both sides of a
    # border agree on which animal a player courts; only this zone's own are updated here.
    candidates = np.flatnonzero(view.wild)
    near, _ = nearest_within(view.pos[sneaking], view.pos[candidates], TAME_RADIUS)
    courted = candidates[near[near >= 0]]
    courting = view.ids[sneaking[near >= 0]]
    mine = courted < n
    who_of_row = np.zeros(n, np.uint64)
    who_of_row[courted[mine]] = courting[mine]
    who = who_of_row[wild]
    close = who != 0
    trust, suitor = ents["trust"], ents["suitor"]
    dt = np.float32(world.config.tick_period)
    same = close & (who == suitor[wild])
    # Someone new starts from scratch; nobody near: trust fades at the rate it grew.
    trust[wild] = np.where(same, trust[wild] + dt, np.where(close, dt, trust[wild] - dt))
    trust[wild] = np.maximum(trust[wild], 0.0)
    suitor[wild] = np.where(close, who, np.where(trust[wild] > 0, suitor[wild], 0))

    won = wild[trust[wild] >= TAME_SECONDS]
    if won.size:
        ents["shepherd"][won] = suitor[won]
        ents["tame_until"][won] = tick + world.ticks(LOYALTY_SECONDS)
        ents["unpaid"][won] = 1
        trust[won] = 0.0
        suitor[won] = 0


def turn_wild(world: World) -> None:
    """Tamed animals whose loyalty ran out go back to their herd."""
    rows = world.due("tame_until")
    world.entities["shepherd"][rows] = 0


def settle(world: World) -> None:
    """Pay xp for tamed animals and coins for animals led into the market.

    Only where this zone owns both the animal and its shepherd: a zone never writes an
    entity it does not own. Until then the animal keeps its ``unpaid`` flag, or simply
    stands in the market, and the zone that owns both settles it later.
    """
    ents = world.entities
    animals = np.flatnonzero((ents["kind"] == KIND_SHEEP) & (ents["shepherd"] != 0))
    if animals.size == 0:
        return
    boss = ents.rows_of(ents["shepherd"][animals])
    here = boss >= 0
    animals, boss = animals[here], boss[here]

    unpaid = ents["unpaid"][animals] != 0
    np.add.at(ents["xp"], boss[unpaid], 1)
    ents["unpaid"][animals[unpaid]] = 0

    x0, y0, x1, y1 = market(world)
    p = ents["pos"][animals]
    sold = (p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)
    if sold.any():
        np.add.at(ents["coins"], boss[sold], 1)
        world.despawn(ents.live_ids()[animals[sold]])


def whistle(world: World, tick: int, whistlers: U64) -> None:
    """Each whistling player's flock runs to it; the reply says how many follow it."""
    ents = world.entities
    rows = ents.rows_of(whistlers)
    mine = rows >= 0
    whistlers, rows = whistlers[mine], rows[mine]
    ents["whistle_until"][rows] = tick + world.ticks(WHISTLE_SECONDS)
    view = View.of(world)
    k = find(whistlers, view.shepherd[view.sheep])
    flock = np.bincount(k[k >= 0], minlength=whistlers.size)
    for eid, count in zip(whistlers.tolist(), flock.tolist(), strict=True):
        world.send_message(eid, "whistle", {"flock": count})


# --- building blocks ----------------------------------------------------------------------------


def spawn_animals(world: World, pos: npt.ArrayLike, herd: npt.ArrayLike) -> U64:
    """Spawn wild animals around ``pos`` (one each), members of ``herd``."""
    pos = np.asarray(pos, np.float32)
    count = pos.shape[0]
    jitter = world.rng.normal(0.0, HERD_RADIUS / 2, (count, 2)).astype(np.float32)
    x0, y0, x1, y1 = world.bounds
    spot = np.clip(pos + jitter, [x0 + 1, y0 + 1], [x1 - 1, y1 - 1]).astype(np.float32)
    return world.spawn(
        count,
        pos=spot,
        kind=KIND_SHEEP,
        mode=MODE_PLAYER,  # steered by its intent, which the herd system sets every tick
        herd=herd,
        heading=world.rng.uniform(0.0, 2.0 * math.pi, (count,)).astype(np.float32),
        max_speed=RUN_SPEED,
        max_accel=8.0,
    )


def herd_centres(herd: npt.NDArray[np.integer[Any]], pos: F32) -> tuple[F64, I64]:
    """Mean position and size of each herd, indexed by herd number (empty herds: 0, 0)."""
    size = np.bincount(herd, minlength=1)
    centre = np.zeros((size.shape[0], 2), np.float64)
    for axis in (0, 1):
        total = np.bincount(herd, weights=pos[:, axis], minlength=size.shape[0])
        centre[:, axis] = np.divide(total, size, out=centre[:, axis], where=size > 0)
    return centre, size


def herd_drift(herd: npt.NDArray[np.integer[Any]], slot: int) -> F64:
    """A unit direction per herd that changes each slot: the same in every zone."""
    x = herd.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= np.uint64((slot * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    angle = (x >> np.uint64(11)).astype(np.float64) * (2.0 * math.pi / 2.0**53)
    return np.column_stack([np.cos(angle), np.sin(angle)])


def away_from_edges(drift: F64, centres: F64, bounds: tuple[float, float, float, float]) -> F64:
    """Herds near the meadow's edge drift toward its middle instead."""
    x0, y0, x1, y1 = bounds
    near = (
        (centres[:, 0] < x0 + EDGE_MARGIN)
        | (centres[:, 0] > x1 - EDGE_MARGIN)
        | (centres[:, 1] < y0 + EDGE_MARGIN)
        | (centres[:, 1] > y1 - EDGE_MARGIN)
    )
    inward = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - centres[near]
    out = drift.copy()
    out[near] = inward / np.maximum(np.linalg.norm(inward, axis=1), 1e-6)[:, None]
    return out


def market(world: World) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in world.config.extra.get("market", (0, 0, 0, 0)))
    return x0, y0, x1, y1


def find(haystack: U64, needles: U64) -> I64:
    """Index of each needle in ``haystack`` (unique values, any order), or -1."""
    if haystack.size == 0:
        return np.full(needles.shape[0], -1, np.int64)
    order = np.argsort(haystack)
    at = np.minimum(np.searchsorted(haystack, needles, sorter=order), haystack.size - 1)
    hit = haystack[order[at]] == needles
    return np.where(hit, order[at], -1).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def nearest_within(points: F32, others: F32, radius: float) -> tuple[npt.NDArray[np.int32], F32]:
    """For each point, the index of the nearest of ``others`` within ``radius`` (-1: none)
    and its distance.

    ``others`` are bucketed into a grid of ``radius``-sized cells (a counting sort), so each
    point looks at the 3 x 3 cells around its own: linear in points plus others.
    """
    n = points.shape[0]
    m = others.shape[0]
    best = np.full(n, -1, np.int32)
    best_d = np.full(n, np.inf, np.float32)
    if n == 0 or m == 0:
        return best, best_d
    gx0 = others[:, 0].min()
    gy0 = others[:, 1].min()
    cell = max(radius, (others[:, 0].max() - gx0) / 1024.0, (others[:, 1].max() - gy0) / 1024.0)
    nx = int((others[:, 0].max() - gx0) / cell) + 1
    ny = int((others[:, 1].max() - gy0) / cell) + 1
    start = np.zeros(nx * ny + 1, np.int64)
    cell_of = np.empty(m, np.int64)
    for j in range(m):
        c = int((others[j, 1] - gy0) / cell) * nx + int((others[j, 0] - gx0) / cell)
        cell_of[j] = c
        start[c + 1] += 1
    for c in range(nx * ny):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(m, np.int32)
    for j in range(m):
        order[fill[cell_of[j]]] = j
        fill[cell_of[j]] += 1
    r2 = radius * radius
    for i in range(n):
        px = points[i, 0]
        py = points[i, 1]
        cx = math.floor((px - gx0) / cell)
        cy = math.floor((py - gy0) / cell)
        best2 = r2
        for gy in range(max(cy - 1, 0), min(cy + 2, ny)):
            for gx in range(max(cx - 1, 0), min(cx + 2, nx)):
                c = gy * nx + gx
                for k in range(start[c], start[c + 1]):
                    j = order[k]
                    dx = others[j, 0] - px
                    dy = others[j, 1] - py
                    d2 = dx * dx + dy * dy
                    if d2 <= best2 and (best[i] < 0 or d2 < best2 or j < best[i]):
                        best2 = d2
                        best[i] = j
        if best[i] >= 0:
            best_d[i] = math.sqrt(best2)
    return best, best_d
