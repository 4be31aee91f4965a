"""One zone: the entities of its region, simulated tick by tick.

The order of one tick (see docs/architecture.md):

1. drain inputs (bounded buffer, counted overflow) and apply them in one kernel call
2. integrate motion (intents, NPC targets, bounds, static obstacles)
3. the studio's ``on_messages`` then ``on_tick`` (its systems, over whole columns)
4. timers: the handler's ``@every`` methods (in declaration order), then the one-shots of
   ``after`` that are due (in due order); then, with a store, the periodic copy of the
   players' ``persistent`` fields for saving (written in the background)
5. in a sharded world: handoffs of entities that left the region, ghosts to the neighbours
6. on snapshot ticks: quantise positions, detect changed fields, interest (owned and ghost
   entities alike), diff against the last snapshot, encode one payload per observer into one
   buffer, hand the batch to the sink
7. record timings

:meth:`Zone.step` runs one tick synchronously (tests, benchmarks); :meth:`Zone.run` runs the
fixed-rate loop on an injected clock.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from shardworld.entities.ids import IdAllocator
from shardworld.entities.schema import Field, Schema, Scope
from shardworld.entities.store import EntityStore
from shardworld.kernels import inputs as k_inputs
from shardworld.kernels.interest import compute_interest
from shardworld.kernels.motion import integrate_motion, rasterize_rects
from shardworld.kernels.snapshot import encode_snapshots, pack_columns, quantize_positions
from shardworld.kernels.visibility import diff_visibility
from shardworld.zone.clock import Clock, LoopClock
from shardworld.zone.config import ZoneConfig
from shardworld.zone.handler import InputBatch, PlayerMessage, ZoneHandler
from shardworld.zone.persistence import (
    LoadResult,
    PlayerPersistence,
    check_persistent,
    internal_fields,
)
from shardworld.zone.sink import NullSink, SnapshotBatch, SnapshotSink
from shardworld.zone.stats import PHASES, ZoneStats
from shardworld.zone.timers import Timer, TimerCallback, ZoneTimers, due_rows, seconds_to_ticks

if TYPE_CHECKING:
    from shardworld.store.base import Store

log = logging.getLogger("shardworld.zone")

MODE_IDLE = 0
MODE_PLAYER = 1
MODE_SEEK = 2

# Fields the zone keeps per entity for replication bookkeeping. They travel with the row.
Q_LAST = "_q_last"
SHADOW = "_shadow"


class ZoneLink(Protocol):
    """What ties a zone into a sharded world (:class:`shardworld.sharding.ZoneNode`).

    Both calls run inside the tick and must not block: ``before_tick`` takes in what the
    bus brought (inputs, joins, handoffs, ghosts), ``after_simulate`` sends entities that
    left the region to their new owners and publishes ghosts to the neighbours.
    """

    def before_tick(self, zone: Zone) -> None: ...

    def after_simulate(self, zone: Zone) -> None: ...


# Public fields that have their own place in a spawn record rather than in the blob.
_SPAWN_HEADER_FIELDS = ("pos", "kind")


def build_schema(
    handler_fields: tuple[Field, ...] | list[Field],
    persistent: tuple[str, ...] | list[str] = (),
) -> Schema:
    """The zone's full schema: built-ins, the world's fields, then bookkeeping (replication,
    and the player-record state when the world has ``persistent`` fields)."""
    base = Schema.default().extend(*handler_fields, *internal_fields(persistent))
    pub = base.select([Scope.PUBLIC], exclude=_SPAWN_HEADER_FIELDS)
    own = base.select([Scope.OWNER])
    width = sum(f.nbytes for f in pub) + sum(f.nbytes for f in own)
    internal = [Field(Q_LAST, np.int32, (2,), Scope.GHOST)]
    if width:
        internal.append(Field(SHADOW, np.uint8, (width,), Scope.GHOST))
    return base.extend(*internal)


def _drop_message(entity_id: int, kind: str, body: Any) -> None:
    return None


class InputBuffer:
    """A bounded ring of player inputs, as preallocated arrays, drained once per tick.

    When full, ``drop_newest`` refuses new inputs and ``drop_oldest`` overwrites the oldest
    queued ones; either way every dropped input is counted, never silently lost.
    """

    def __init__(self, size: int, policy: str) -> None:
        self.size = size
        self.policy = policy
        self.ids = np.zeros(size, np.uint64)
        self.seq = np.zeros(size, np.uint32)
        self.intent = np.zeros((size, 2), np.float32)
        self.actions = np.zeros(size, np.uint32)
        self.head = 0  # oldest queued input
        self.count = 0
        self.dropped = 0

    def _make_room(self, k: int) -> int:
        """How many of ``k`` new inputs to keep (the newest), dropping per the policy."""
        room = self.size - self.count
        if self.policy == "drop_newest":
            take = min(k, room)
            self.dropped += k - take
            return take
        take = min(k, self.size)
        self.dropped += k - take
        evict = max(0, take - room)
        self.head = (self.head + evict) % self.size
        self.count -= evict
        self.dropped += evict
        return take

    def push(self, entity: int, seq: int, ix: float, iy: float, actions: int = 0) -> bool:
        """Queue one input; False if it was dropped (buffer full, ``drop_newest``)."""
        if self._make_room(1) == 0:
            return False
        i = (self.head + self.count) % self.size
        self.ids[i] = entity
        self.seq[i] = seq & 0xFFFFFFFF
        self.intent[i, 0] = ix
        self.intent[i, 1] = iy
        self.actions[i] = actions & 0xFFFFFFFF
        self.count += 1
        return True

    def push_many(
        self,
        ids: npt.ArrayLike,
        seq: npt.ArrayLike,
        intent: npt.ArrayLike,
        actions: npt.ArrayLike | None = None,
    ) -> int:
        """Queue a batch (as arrays, oldest first); returns how many were accepted."""
        ids_a = np.atleast_1d(np.asarray(ids, dtype=np.uint64))
        k = int(ids_a.shape[0])
        take = self._make_room(k)
        if take == 0:
            return 0
        src = slice(k - take, k) if self.policy == "drop_oldest" else slice(0, take)
        at = (self.head + self.count + np.arange(take)) % self.size
        self.ids[at] = ids_a[src]
        self.seq[at] = np.broadcast_to(np.asarray(seq, dtype=np.uint32), (k,))[src]
        self.intent[at] = np.asarray(intent, dtype=np.float32).reshape(-1, 2)[src]
        if actions is None:
            self.actions[at] = 0
        else:
            self.actions[at] = np.broadcast_to(np.asarray(actions, dtype=np.uint32), (k,))[src]
        self.count += take
        return take

    def drain(self) -> tuple[npt.NDArray[Any], ...]:
        """Copies of the queued inputs in arrival order; the buffer is empty afterwards."""
        at = (self.head + np.arange(self.count)) % self.size
        out = (self.ids[at], self.seq[at], self.intent[at], self.actions[at])
        self.head = 0
        self.count = 0
        return out


class Zone:
    """A zone: its entities, its ghosts, its tick. The studio's handler sees it as the world.

    Args:
        config: the zone's settings.
        handler: the world's game code.
        sink: receives each snapshot batch (defaults to dropping them).
        clock: drives the fixed-rate loop in :meth:`run` (defaults to the event loop's).
        timer: measures how long ticks take, for stats only.
    """

    def __init__(
        self,
        config: ZoneConfig,
        handler: ZoneHandler | None = None,
        sink: SnapshotSink | None = None,
        clock: Clock | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.handler = handler or ZoneHandler()
        self.sink: SnapshotSink = sink or NullSink()
        self.clock: Clock = clock or LoopClock()
        self.timer = timer
        self.schema = build_schema(self.handler.fields, self.handler.persistent)
        # A typo in ``persistent`` fails here, not the first time a player leaves.
        check_persistent(self.schema, self.handler.persistent)
        self.timers = ZoneTimers(self.handler, config.tick_hz)
        #: The player records (see :meth:`use_store`); None: nothing is loaded or saved.
        self.players: PlayerPersistence | None = None
        self.entities = EntityStore(
            self.schema, config.capacity, IdAllocator(config.zone_tag, capacity=config.capacity)
        )
        self.ghosts = EntityStore(self.schema, 256)
        self.rng = np.random.default_rng(config.seed)
        self.tick = 0
        self.stats = ZoneStats()
        self.inputs = InputBuffer(config.input_queue, config.input_overflow)

        x0, y0, x1, y1 = config.world
        self.bounds = (float(x0), float(y0), float(x1), float(y1))
        if config.obstacles:
            cell = config.obstacle_cell
            self.blocked = rasterize_rects(
                np.array(config.obstacles, dtype=np.float64).reshape(-1, 4),
                float(x0),
                float(y0),
                float(cell),
                int(np.ceil((x1 - x0) / cell)),
                int(np.ceil((y1 - y0) / cell)),
            )
        else:
            self.blocked = np.zeros((0, 0), dtype=np.uint8)

        pub = self.schema.select([Scope.PUBLIC], exclude=_SPAWN_HEADER_FIELDS)
        own = self.schema.select([Scope.OWNER])
        self.public_fields = [f.name for f in pub]
        self.owner_fields = [f.name for f in own]
        self.public_width = sum(f.nbytes for f in pub)
        self.owner_width = sum(f.nbytes for f in own)

        # Previous snapshot's visibility, per observer (sorted ids with their handles).
        self._prev_obs_ids = np.zeros(0, np.uint64)
        self._prev_off = np.zeros(1, np.int64)
        self._prev_ids = np.zeros(0, np.uint64)
        self._prev_handles = np.zeros(0, np.uint16)
        self._resync: set[int] = set()
        self._started = False
        self._stopping = False
        #: False runs simulation only (no interest, no snapshots): tools and benchmarks.
        self.replicate = True
        #: Where world -> player custom messages go: (entity id, kind, body).
        self.message_sink: Callable[[int, str, Any], None] = _drop_message
        self._messages: collections.deque[PlayerMessage] = collections.deque()
        self.max_messages_per_tick = 4096
        self.messages_dropped = 0
        #: Ties the zone into a sharded world; None runs it alone.
        self.link: ZoneLink | None = None
        #: Whether ``on_start`` runs here: in a sharded world only the first zone runs it
        #: (the world starts once); what it spawns outside that zone's region is handed off.
        self.primary = True
        #: Number ticks from the Unix epoch (tick k is due at k / tick_hz seconds of wall
        #: time), so every zone of a sharded world agrees on tick numbers and phase.
        self.align_to_wall_clock = False

    # --- the studio's world API ----------------------------------------------------------

    @property
    def time(self) -> float:
        """Simulation time in seconds (ticks times the tick period)."""
        return self.tick * self.config.tick_period

    def spawn(self, count: int = 1, **values: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """Spawn entities here; unset motion limits default to the world's player settings."""
        values.setdefault("max_speed", self.config.player_speed)
        values.setdefault("max_accel", self.config.player_accel)
        return self.entities.spawn(count, **values)

    def spawn_player(self, owner: int, pos: tuple[float, float], kind: int = 1) -> int:
        """Spawn a player's entity (an observer driven by its inputs); returns its id."""
        ids = self.spawn(1, pos=pos, owner=owner, kind=kind, mode=MODE_PLAYER, observer=1)
        return int(ids[0])

    def join_player(self, player_id: int, *, loaded: LoadResult | None = None) -> int:
        """A player joins: the handler's ``on_join`` spawns its entity; returns the id.

        With a store (:meth:`use_store`), the player's saved fields are applied right after
        ``on_join`` returns: from ``loaded`` when the caller loaded them first (a sharded
        zone does), else as soon as the record arrives (before the next tick).
        """
        if not self._started:
            self.warm_up()
        eid = int(self.handler.on_join(self, player_id))
        if self.players is not None:
            self.players.joined(eid, player_id, loaded)
        return eid

    def leave_player(self, entity_id: int) -> None:
        """A player leaves for good: ``on_leave``, its record is saved, its entity removed."""
        if self.entities.rows_of([entity_id])[0] < 0:
            return
        self.handler.on_leave(self, entity_id)
        if self.players is not None:
            self.players.leaving(entity_id)
        self.entities.despawn([entity_id])

    def use_store(self, store: Store, **options: Any) -> PlayerPersistence | None:
        """Load and save the players' ``persistent`` fields in ``store`` (a started store).

        Does nothing (returns None) when the handler has no persistent fields. ``options``
        go to :class:`~shardworld.zone.persistence.PlayerPersistence` (timeouts, batch size).
        """
        if not self.handler.persistent:
            return None
        self.players = PlayerPersistence(self, store, **options)
        return self.players

    # --- time: ticks, timers, deadlines ----------------------------------------------------

    def ticks(self, seconds: float) -> int:
        """``seconds`` as a whole number of ticks at this zone's tick rate."""
        return seconds_to_ticks(seconds, self.config.tick_hz)

    def after(self, seconds: float, callback: TimerCallback) -> Timer:
        """Run ``callback(world, tick)`` once, at the first tick ``seconds`` from now (at
        least the next tick). Zone-local: for a deadline that must follow an entity into
        another zone, keep a tick number in a field and use :meth:`due`."""
        return self.timers.after(self.tick, seconds, callback)

    def due(self, name: str) -> npt.NDArray[np.int32]:
        """Rows of ``world.entities`` whose deadline in field ``name`` has come.

        The field (int64) holds a tick number, 0 for none: set it to
        ``world.tick + world.ticks(seconds)``. Returns the rows whose deadline is at or
        before this tick and sets their deadline to 0, so each deadline is reported once.
        Rows are valid until the next spawn or despawn.
        """
        if self.schema.get(name) is None:
            raise KeyError(f"due(): no field {name!r} in this world")
        return due_rows(self.entities[name], self.tick)

    def post_message(self, entity_id: int, kind: str, body: Any) -> bool:
        """Queue a player's custom message for the next tick's ``on_messages``.

        Bounded: past ``max_messages_per_tick`` queued, new ones are dropped and counted.
        """
        if len(self._messages) >= self.max_messages_per_tick:
            self.messages_dropped += 1
            return False
        self._messages.append(PlayerMessage(entity_id, kind, body))
        return True

    def send_message(self, entity_id: int, kind: str, body: Any) -> None:
        """Send a custom message to the player controlling ``entity_id``."""
        self.message_sink(entity_id, kind, body)

    def despawn(self, ids: npt.ArrayLike) -> int:
        """Remove entities by id (stale ids are ignored); returns how many went."""
        return self.entities.despawn(ids)

    def random_points(self, count: int, margin: float = 0.0) -> npt.NDArray[np.float32]:
        """Uniform random points in the world (not inside obstacles), float32[count, 2]."""
        x0, y0, x1, y1 = self.bounds
        out = np.empty((count, 2), np.float32)
        todo = np.arange(count)
        for _ in range(64):
            if todo.size == 0:
                break
            pts = np.column_stack(
                [
                    self.rng.uniform(x0 + margin, x1 - margin, todo.size),
                    self.rng.uniform(y0 + margin, y1 - margin, todo.size),
                ]
            ).astype(np.float32)
            ok = ~self.is_blocked(pts)
            out[todo[ok]] = pts[ok]
            todo = todo[~ok]
        if todo.size:
            raise RuntimeError("could not find free points: is the world all obstacles?")
        return out

    def is_blocked(self, pts: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.bool_]:
        """Whether each point lies in a static obstacle cell."""
        if self.blocked.size == 0:
            return np.zeros(len(pts), dtype=np.bool_)
        x0, y0, _, _ = self.bounds
        gy, gx = self.blocked.shape
        cx = np.floor((pts[:, 0] - x0) / self.config.obstacle_cell).astype(np.int64)
        cy = np.floor((pts[:, 1] - y0) / self.config.obstacle_cell).astype(np.int64)
        inside = (cx >= 0) & (cx < gx) & (cy >= 0) & (cy < gy)
        out = np.zeros(len(pts), dtype=np.bool_)
        out[inside] = self.blocked[cy[inside], cx[inside]] != 0
        return out

    # --- inputs ---------------------------------------------------------------------------

    def submit_input(
        self, entity: int, seq: int, intent: tuple[float, float], actions: int = 0
    ) -> bool:
        """Queue one player input for the next tick; False when the buffer dropped it."""
        return self.inputs.push(entity, seq, intent[0], intent[1], actions)

    def request_resync(self, observer_id: int) -> None:
        """The next snapshot for this observer is a full one (RESET flag, everything spawns).

        The gateway asks for this when it had to drop a snapshot for a slow reader.
        """
        self._resync.add(int(observer_id))

    # --- the tick ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load every kernel from the disk cache and run the studio's ``on_start`` once."""
        from shardworld.kernels import warm_up as warm_kernels

        warm_kernels()
        if not self._started:
            self._started = True
            if self.primary:
                self.handler.on_start(self)
            # Everything allocated so far lives as long as the zone: move it out of the
            # cyclic collector's view, so a full collection never pauses a tick for long
            # (tens of ms with the objects numba and the libraries leave behind).
            gc.freeze()

    def step(self) -> SnapshotBatch | None:
        """Run one tick now. Returns the snapshot batch if this was a snapshot tick."""
        if not self._started:
            self.warm_up()
        timer = self.timer
        phases = np.zeros(len(PHASES), dtype=np.float64)
        t_start = timer()
        self.tick += 1
        link = self.link
        if link is not None:
            link.before_tick(self)
            t_link = timer()
            phases[7] = t_link - t_start
            t_start_inputs = t_link
        else:
            t_start_inputs = t_start

        batch = self._apply_inputs()
        t1 = timer()
        phases[0] = t1 - t_start_inputs

        ents = self.entities
        if len(ents):
            x0, y0, x1, y1 = self.bounds
            self.stats.wall_hits += int(
                integrate_motion(
                    ents["pos"],
                    ents["vel"],
                    ents["mode"],
                    ents["intent"],
                    ents["target"],
                    ents["max_speed"],
                    ents["max_accel"],
                    self.config.tick_period,
                    x0,
                    y0,
                    x1,
                    y1,
                    self.blocked,
                    x0,
                    y0,
                    self.config.obstacle_cell,
                )
            )
        t2 = timer()
        phases[1] = t2 - t1

        if self._messages:
            messages = list(self._messages)
            self._messages.clear()
            self.handler.on_messages(self, self.tick, messages)
        self.handler.on_tick(self, self.tick, batch)
        self.timers.run(self, self.tick)
        if self.players is not None:
            self.players.tick(self.tick)
        t3 = timer()
        phases[2] = t3 - t2
        if link is not None:
            link.after_simulate(self)
            t_link = timer()
            phases[7] += t_link - t3
            t3 = t_link

        out: SnapshotBatch | None = None
        if self.replicate and self.tick % self.config.ticks_per_snapshot == 0:
            out = self._snapshot(phases)
        self.stats.last_entities = len(self.entities)
        self.stats.last_ghosts = len(self.ghosts)
        total = timer() - t_start
        self.stats.record_tick(total * 1000.0, phases * 1000.0)
        return out

    def _apply_inputs(self) -> InputBatch:
        if self.inputs.count == 0:
            self.stats.inputs_dropped = self.inputs.dropped
            return InputBatch.empty()
        ids, seq, intent, actions = self.inputs.drain()
        self.stats.inputs_dropped = self.inputs.dropped
        rows = self.entities.rows_of(ids)
        outcome = np.empty(len(ids), np.uint8)
        ents = self.entities
        k_inputs.apply_inputs(
            rows, seq, intent, actions, ents["intent"], ents["input_seq"], ents["actions"], outcome
        )
        counts = np.bincount(outcome, minlength=4)
        self.stats.inputs_applied += int(counts[k_inputs.APPLIED])
        self.stats.inputs_unknown += int(counts[k_inputs.UNKNOWN_ENTITY])
        self.stats.inputs_out_of_order += int(counts[k_inputs.OUT_OF_ORDER])
        self.stats.inputs_invalid += int(counts[k_inputs.NOT_A_FINITE_INTENT])
        ok = outcome == k_inputs.APPLIED
        return InputBatch(ids[ok], rows[ok], seq[ok], intent[ok], actions[ok])

    def _candidates(self, name: str) -> npt.NDArray[Any]:
        """Owned rows then ghost rows of one column (a view when there are no ghosts)."""
        own = self.entities[name]
        if len(self.ghosts) == 0:
            return own
        return np.concatenate([own, self.ghosts[name]])

    def _blob(self, names: list[str], width: int, count: int) -> npt.NDArray[np.uint8]:
        if width == 0:
            return np.zeros((count, 0), dtype=np.uint8)
        return pack_columns([self._candidates(n) for n in names], count)

    def _snapshot(self, phases: npt.NDArray[np.float64]) -> SnapshotBatch:
        timer = self.timer
        t0 = timer()
        cfg = self.config
        ents, ghosts = self.entities, self.ghosts
        n, g = len(ents), len(ghosts)
        count = n + g

        cand_pos = np.ascontiguousarray(self._candidates("pos"))
        cand_ids = np.ascontiguousarray(self._ids())
        q_last = np.ascontiguousarray(self._candidates(Q_LAST))
        cand_q, moved = quantize_positions(cand_pos, cfg.pos_quantum, q_last)
        ents[Q_LAST][:] = cand_q[:n]
        if g:
            ghosts[Q_LAST][:] = cand_q[n:]

        pub_blob = self._blob(self.public_fields, self.public_width, count)
        own_blob = self._blob(self.owner_fields, self.owner_width, count)
        if self.public_width + self.owner_width:
            both = np.concatenate([pub_blob, own_blob], axis=1)
            shadow = self._candidates(SHADOW)
            updated = np.any(both != shadow, axis=1).astype(np.uint8)
            ents[SHADOW][:] = both[:n]
            if g:
                ghosts[SHADOW][:] = both[n:]
        else:
            updated = np.zeros(count, dtype=np.uint8)

        obs_rows = np.flatnonzero(ents["observer"]).astype(np.int32)
        obs_ids = ents.ids[obs_rows]
        obs_pos = np.ascontiguousarray(ents["pos"][obs_rows])
        obs_prev = self._map_previous_observers(obs_ids)

        vis_off, vis_idx = compute_interest(
            cand_pos,
            obs_pos,
            cfg.interest_radius,
            cfg.interest_hysteresis,
            cfg.k_max,
            cand_ids,
            obs_prev,
            self._prev_off,
            self._prev_ids,
        )
        t2 = timer()

        (
            cur_off,
            cur_ids,
            cur_idx,
            cur_handle,
            cur_state,
            leave_off,
            _leave_ids,
            leave_handle,
        ) = diff_visibility(
            vis_off,
            vis_idx,
            cand_ids,
            obs_prev,
            self._prev_off,
            self._prev_ids,
            self._prev_handles,
        )
        t3 = timer()

        reset = (obs_prev < 0).astype(np.uint8)
        base_q = np.ascontiguousarray(cand_q[obs_rows])
        buf, off = encode_snapshots(
            self.tick,
            reset,
            base_q,
            cur_off,
            cur_idx,
            cur_handle,
            cur_state,
            leave_off,
            leave_handle,
            cand_ids,
            np.ascontiguousarray(self._candidates("kind")),
            cand_q,
            moved,
            updated,
            pub_blob,
            own_blob,
            np.ascontiguousarray(self._candidates("owner")),
            np.ascontiguousarray(ents["owner"][obs_rows]),
            cfg.k_max > 255,
        )
        t4 = timer()

        self._prev_obs_ids = obs_ids
        self._prev_off, self._prev_ids, self._prev_handles = cur_off, cur_ids, cur_handle
        batch = SnapshotBatch(
            zone=cfg.name,
            tick=self.tick,
            observer_ids=obs_ids,
            owners=ents["owner"][obs_rows],
            input_acks=ents["input_seq"][obs_rows],
            buf=buf,
            off=off,
        )
        self.sink.emit(batch)
        t5 = timer()

        self.stats.snapshots += 1
        self.stats.bytes_out += batch.nbytes
        self.stats.last_pairs = int(vis_off[-1]) if vis_off.shape[0] else 0
        self.stats.last_observers = len(obs_ids)
        # The snapshot's own prep (quantise, blobs) is counted with interest.
        phases[3] = t2 - t0
        phases[4] = t3 - t2
        phases[5] = t4 - t3
        phases[6] = t5 - t4
        return batch

    def _ids(self) -> npt.NDArray[np.uint64]:
        own = self.entities.live_ids()
        if len(self.ghosts) == 0:
            return own
        return np.concatenate([own, self.ghosts.live_ids()])

    def _map_previous_observers(self, obs_ids: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        """For each current observer, its slot in the previous snapshot, or -1 (new/resync)."""
        prev = self._prev_obs_ids
        obs_prev = np.full(len(obs_ids), -1, dtype=np.int32)
        if len(prev) and len(obs_ids):
            order = np.argsort(prev, kind="stable")
            sorted_prev = prev[order]
            pos = np.searchsorted(sorted_prev, obs_ids)
            pos_c = np.minimum(pos, len(prev) - 1)
            hit = sorted_prev[pos_c] == obs_ids
            obs_prev[hit] = order[pos_c[hit]].astype(np.int32)
        if self._resync:
            want = np.fromiter(self._resync, dtype=np.uint64, count=len(self._resync))
            obs_prev[np.isin(obs_ids, want)] = -1
            self._resync.clear()
        return obs_prev

    # --- the loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the current tick."""
        self._stopping = True

    async def run(self, max_ticks: int | None = None) -> None:
        """Tick at ``tick_hz`` on the zone's clock until :meth:`stop` (or ``max_ticks``).

        Deadlines are absolute (start + k * period), so the rate never drifts. A late tick
        runs at once; if the zone falls more than ``max_catchup_ticks`` behind, the missed
        ticks are skipped and counted rather than run back to back, so a stall never turns
        into a burst. Lateness is measured and reported in :attr:`stats`.
        """
        self.warm_up()
        self._stopping = False
        period = self.config.tick_period
        clock = self.clock
        origin = clock.now()
        if self.align_to_wall_clock:
            # Tick k is due at k * period of Unix time: the next such instant, on our clock.
            wall = time.time()
            k = int(wall // period) + 1
            origin += k * period - wall
            self.tick = k - 1
        slot = 0  # deadline of the next tick = origin + slot * period (never accumulated)
        deadline = origin
        done = 0
        while not self._stopping and (max_ticks is None or done < max_ticks):
            await clock.sleep_until(deadline)
            if self._stopping:
                break
            now = clock.now()
            late = now - deadline
            if late > self.config.max_catchup_ticks * period:
                skipped = int(late / period + 1e-9)
                self.stats.skipped_ticks += skipped
                log.warning(
                    "zone %s fell %.1f ms behind; skipping %d ticks",
                    self.config.name,
                    late * 1000.0,
                    skipped,
                )
                slot += skipped
                if self.align_to_wall_clock:
                    self.tick += skipped  # tick numbers keep following the wall clock
                deadline = origin + slot * period
                late = now - deadline
            if late > 0.5 * period:
                self.stats.late_ticks += 1
            self.stats.max_lateness_s = max(self.stats.max_lateness_s, late)
            try:
                self.step()
            except Exception:
                log.exception("zone %s: tick %d failed", self.config.name, self.tick)
                raise
            done += 1
            slot += 1
            deadline = origin + slot * period
            # Give the event loop a turn even when behind (gateways share it).
            if clock.now() >= deadline:
                await asyncio.sleep(0)
        self.handler.on_stop(self)
        await self.save_players()

    async def save_players(self, timeout: float = 10.0) -> bool:
        """Save every player this zone owns now and wait for the store (a graceful stop).

        True when everything queued was written or failed in time (always True without a
        store)."""
        if self.players is None:
            return True
        self.players.save_all()
        return await self.players.flush(timeout)
