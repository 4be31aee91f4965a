"""A zone in a sharded world: its bus traffic, its handoffs and its ghosts.

A :class:`ZoneNode` wraps one :class:`~shardworld.zone.Zone` and hooks into its tick
(:class:`~shardworld.zone.zone.ZoneLink`):

* ``before_tick`` drains the zone's two topics: entities handed to it (ownership topic) and
  inputs, joins, leaves, player messages and neighbours' ghosts (real-time topic).
* ``after_simulate`` hands every entity that now stands in a cell owned elsewhere to that
  zone (whole rows, studio fields included, with the map epoch), keeps a copy of it as a
  ghost so no observer here sees it blink out, and sends each neighbour one message with
  every entity within ghost range of their border.
* the zone's snapshot batches and world → player messages go to each player's gateway.

All of it works on whole arrays: one bus message per neighbour per tick, no Python loop
per entity except for the few that arrive for an entity that has just left (forwarding).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.bus import Bus, BusError, Subscription, TopicSpec
from shardworld.entities.schema import Scope
from shardworld.sharding import wire
from shardworld.sharding.cellmap import CellMap
from shardworld.store import Lease, Store, StoreError
from shardworld.zone.persistence import LoadResult
from shardworld.zone.sink import SnapshotBatch
from shardworld.zone.zone import Q_LAST, SHADOW, Zone

log = logging.getLogger("shardworld.sharding")

#: At most this many ticks of ghost lag are made up by moving ghosts along their velocity.
MAX_GHOST_EXTRAPOLATION_TICKS = 4

#: Every this many ticks a zone sends each neighbour its whole ghost set, not the changes, so
#: a neighbour that missed a message (or just started) is whole again within a second.
GHOST_KEYFRAME_TICKS = 20

#: In the per-cell load a zone reports, an observer counts as this many plain entities.
OBSERVER_LOAD_WEIGHT = 4.0


@dataclass(frozen=True)
class Topics:
    """The topic names of one world (docs/bus.md lists them with their retention)."""

    world: str

    def zone_rt(self, zone: str) -> str:
        return f"sw.{self.world}.zone.{zone}.rt"

    def zone_own(self, zone: str) -> str:
        return f"sw.{self.world}.zone.{zone}.own"

    def gateway(self, index: int) -> str:
        return f"sw.{self.world}.gw.{index}"

    @property
    def heartbeat(self) -> str:
        return f"sw.{self.world}.heartbeat"

    @property
    def control(self) -> str:
        return f"sw.{self.world}.control"

    def zone_specs(self, zones: tuple[str, ...]) -> list[TopicSpec]:
        specs = [TopicSpec(self.heartbeat), TopicSpec(self.control, durable=True)]
        for z in zones:
            specs.append(TopicSpec(self.zone_rt(z)))
            specs.append(TopicSpec(self.zone_own(z), durable=True))
        return specs


@dataclass
class NodeStats:
    """Counters of a zone's sharding traffic."""

    handoffs_out: int = 0
    handoffs_in: int = 0
    handoff_messages_out: int = 0
    bounced_out: int = 0
    bounced_in: int = 0
    stale_refused: int = 0
    ghosts_out: int = 0
    ghost_bytes_out: int = 0
    ghost_messages_out: int = 0
    ghosts_in: int = 0
    ghosts_stale: int = 0
    ghosts_expired: int = 0
    forwarded: int = 0
    undeliverable: int = 0
    wire_errors: int = 0
    joins: int = 0
    bus_errors: int = 0
    maps_applied: int = 0
    handoffs_held: int = 0
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    adopted: int = 0
    #: Ticks from a handoff leaving its old owner to being simulated here (last 4096).
    handoff_ticks: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=4096)
    )

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if isinstance(v, int)}
        if self.handoff_ticks:
            arr = np.fromiter(self.handoff_ticks, dtype=np.int64)
            out["handoff_p50_ticks"] = float(np.percentile(arr, 50))
            out["handoff_p99_ticks"] = float(np.percentile(arr, 99))
        return out


class ZoneNode:
    """One zone of a sharded world, talking to the others and to gateways over a bus.

    Args:
        zone: the zone (its ``config.name`` must be one of ``cellmap.zones``).
        bus: a started bus shared by everything in this process.
        cellmap: who owns which cell, with its epoch.
        world: the world's name (topic prefix).
        forward_ttl_ticks: how long inputs and messages for an entity that left are
            forwarded to its new owner.
        ghost_timeout_ticks: ghosts of a neighbour that stopped sending are dropped after this.
    """

    def __init__(
        self,
        zone: Zone,
        bus: Bus,
        cellmap: CellMap,
        world: str,
        *,
        forward_ttl_ticks: int = 100,
        ghost_timeout_ticks: int = 40,
        store: Store | None = None,
        lease_ttl_s: float = 3.0,
        checkpoint_every_s: float = 2.0,
    ) -> None:
        self.zone = zone
        self.store = store
        self.lease_ttl_s = lease_ttl_s
        self.checkpoint_every_s = checkpoint_every_s
        self.lease: Lease | None = None
        #: True once this zone lost its lease: it must not simulate or send anything more.
        self.fenced = False
        self._last_checkpoint = -1e18
        self._saving: asyncio.Task[None] | None = None
        self._adopted: list[Subscription] = []
        self._restore: npt.NDArray[np.void] | None = None
        self._adopting: set[int] = set()
        self.bus = bus
        self.topics = Topics(world)
        self.name = zone.config.name
        self.cellmap = cellmap
        self.index = cellmap.zone_index(self.name)
        self.forward_ttl_ticks = forward_ttl_ticks
        self.ghost_timeout_ticks = ghost_timeout_ticks
        self.stats = NodeStats()
        self._rt: Subscription | None = None
        self._own: Subscription | None = None
        self._beats: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._forward: dict[int, tuple[int, int]] = {}  # entity -> (zone index, expiry tick)
        self._ghost_ids: dict[int, npt.NDArray[np.uint64]] = {}
        self._ghost_seen: dict[int, int] = {}
        self._out_messages: dict[int, list[tuple[int, str, Any]]] = {}
        self._gateways: set[int] = set()
        self._opening: dict[int, list[wire.Message]] = {}
        self.peers: dict[int, wire.Heartbeat] = {}
        self._peer_seen_at: dict[int, float] = {}
        self._logged: set[str] = set()
        self._closing = False
        self._deferred: list[wire.Handoff] = []
        #: Per destination: (tick, ids) of recent handoffs, whose ghost copies we keep until
        #: the new owner's ghost lists can include them.
        self._handed: dict[int, list[tuple[int, npt.NDArray[np.uint64]]]] = {}
        #: Per neighbour: the ghost ids (sorted) and raw rows we sent it last tick.
        self._sent: dict[int, tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]] = {}
        self._zones_ready: set[int] = set()
        self._control: Subscription | None = None
        #: JOINs waiting for the player's record (with a store for player records).
        self._joining: list[tuple[wire.Join, asyncio.Future[LoadResult]]] = []

        schema = zone.schema
        self._row_dtype = schema.row_dtype()
        self._fingerprint = schema.fingerprint()
        internal = {Q_LAST, SHADOW}
        self._ghost_fields = [
            f.name for f in schema.fields if f.scope is not Scope.SERVER and f.name not in internal
        ]
        parts: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = [("id", np.dtype("<u8"), ())]
        parts += [(f.name, f.dtype, f.shape) for f in schema.fields if f.name in self._ghost_fields]
        self._ghost_dtype = np.dtype(parts)
        #: This zone's replication bookkeeping (what its observers last got), per entity.
        self._local_fields = [n for n in (Q_LAST, SHADOW) if schema.get(n) is not None]
        self._apply_map(cellmap)

        zone.link = self
        zone.sink = self
        zone.message_sink = self._message_out
        zone.primary = self.index == 0
        zone.align_to_wall_clock = True

    # --- the map ---------------------------------------------------------------------------

    def _apply_map(self, cellmap: CellMap) -> None:
        old = getattr(self, "cellmap", None)
        if old is not None and cellmap.zones[: len(old.zones)] != old.zones:
            # Messages name zones by index: the list may grow, never reorder or shrink.
            raise ValueError(
                f"cell map epoch {cellmap.epoch} renames zones {old.zones} -> {cellmap.zones}"
            )
        self.cellmap = cellmap
        self.index = cellmap.zone_index(self.name)
        self._owner_flat = np.ascontiguousarray(cellmap.owner.reshape(-1)).astype(np.int16)
        cfg = self.zone.config
        reach = cfg.interest_radius + cfg.interest_hysteresis
        self._ghost_masks = cellmap.ghost_cells(self.index, reach)
        self._sent = {n: v for n, v in getattr(self, "_sent", {}).items() if n in self._ghost_masks}
        if old is not None:
            # Ghosts of zones that are no longer neighbours stop coming: drop them now.
            for src in [s for s in self._ghost_ids if s not in self._ghost_masks]:
                gone = self._ghost_ids.pop(src)
                self._ghost_seen.pop(src, None)
                self.zone.ghosts.despawn(gone)
            new = [z for z in cellmap.zones[len(old.zones) :]]
            if new:
                self._tasks.append(asyncio.ensure_future(self._open_zones(new)))

    async def _open_zones(self, names: list[str]) -> None:
        specs = [
            spec
            for spec in self.topics.zone_specs(tuple(names))
            if spec.name not in (self.topics.heartbeat, self.topics.control)
        ]
        try:
            await self.bus.create_topics(specs)
        except BusError as exc:
            log.error("zone %s: cannot open topics of zones %s: %s", self.name, names, exc)
            return
        for n in names:
            self._zones_ready.add(self.cellmap.zone_index(n))

    def apply_map(self, cellmap: CellMap) -> None:
        """Take a newer cell map (at a tick boundary). Older or equal epochs are refused.

        Entities standing in cells that are no longer ours are handed to their new owner at
        the end of this tick, like any entity that walks out.
        """
        if cellmap.epoch <= self.cellmap.epoch:
            raise ValueError(
                f"cell map epoch {cellmap.epoch} is not newer than {self.cellmap.epoch}"
            )
        before = int(np.count_nonzero(self._owner_flat == self.index))
        self._apply_map(cellmap)
        after = int(np.count_nonzero(self._owner_flat == self.index))
        self.stats.maps_applied += 1
        log.info(
            "zone %s: cell map epoch %d: %d cells -> %d", self.name, cellmap.epoch, before, after
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the zone's lease (with a store), create the world's topics, subscribe to
        ours, and start the heartbeat."""
        if self.store is not None:
            await self._take_lease()
            # Renew from now on: creating topics and subscribing can take longer than a TTL.
            self._tasks.append(asyncio.create_task(self._keep_lease(), name=f"lease-{self.name}"))
        zones = self.cellmap.zones
        await self.bus.create_topics(self.topics.zone_specs(zones))
        self._zones_ready.update(range(len(zones)))
        self._control = await self.bus.subscribe(self.topics.control, "latest")
        self._beats = await self.bus.subscribe(self.topics.heartbeat, "latest")
        self._own = await self.bus.subscribe(self.topics.zone_own(self.name), "latest")
        self._rt = await self.bus.subscribe(self.topics.zone_rt(self.name), "latest")
        self._tasks.append(asyncio.create_task(self._heartbeats(), name=f"beat-{self.name}"))
        log.info(
            "zone %s (%d of %d) on %s, map epoch %d, %d neighbours",
            self.name,
            self.index,
            len(zones),
            self.bus.url,
            self.cellmap.epoch,
            len(self._ghost_masks),
        )

    async def wait_for_peers(self, timeout: float = 60.0) -> None:
        """Wait until every zone of the map has announced itself (its topics are read).

        Handoffs sent to a zone before it subscribes would wait unread in its topic, so
        nobody ticks before everybody listens.
        """
        # Zones that own no cells (merged away and stopped, or not split onto yet) send us
        # nothing and get nothing from us: no need to wait for them.
        owned = np.bincount(self._owner_flat, minlength=len(self.cellmap.zones))
        want = {i for i in range(len(self.cellmap.zones)) if owned[i]} | {self.index}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_log = loop.time() + 2.0
        while not want <= set(self.peers):
            if loop.time() > deadline:
                missing = [self.cellmap.zones[i] for i in sorted(want - set(self.peers))]
                raise TimeoutError(f"zone {self.name}: zones {missing} did not show up")
            if loop.time() > next_log:
                missing = [self.cellmap.zones[i] for i in sorted(want - set(self.peers))]
                log.info("zone %s: waiting for zones %s", self.name, ", ".join(missing))
                next_log = loop.time() + 5.0
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        """Start, wait for the other zones, then tick until stopped."""
        await self.start()
        await self.wait_for_peers()
        await self.zone.run()

    async def close(self) -> None:
        self._closing = True
        for sub in (self._rt, self._own, self._beats, self._control, *self._adopted):
            if sub is not None:
                await sub.close()
        if self._saving is not None:
            await asyncio.wait([self._saving], timeout=5.0)
        if self.zone.players is not None:
            await self.zone.players.close(timeout=5.0)
        tasks, self._tasks = self._tasks, []
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=2.0)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)

    async def _heartbeats(self) -> None:
        assert self._beats is not None
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        while not self._closing:
            now = loop.time()
            announce = now >= next_beat
            try:
                records = self._beats.poll()
            except BusError:
                return
            for rec in records:
                try:
                    hb = wire.decode(rec.value)
                except wire.WireError:
                    self.stats.wire_errors += 1
                    continue
                if isinstance(hb, wire.Heartbeat):
                    if hb.zone not in self.peers and hb.zone != self.index:
                        announce = True  # a newcomer: tell it at once that we are here
                    self.peers[hb.zone] = hb
                    self._peer_seen_at[hb.zone] = now
            if announce:
                self._send(self.topics.heartbeat, self._heartbeat())
                next_beat = now + 1.0
            try:
                await self._beats.wait(0.25)
            except BusError:
                return

    def beat(self) -> None:
        """Send a heartbeat (with this zone's load report) now."""
        self._send(self.topics.heartbeat, self._heartbeat())

    def _heartbeat(self) -> wire.Heartbeat:
        z = self.zone
        report = z.stats.report()
        report.pop("phase_ms", None)
        report["p99_ms"] = z.stats.recent_p99()  # the last two seconds, not the whole window
        # Load per cell, for the rebalancer: entities, observers weighing more (they cost
        # interest and encoding), as sparse (cell, load) columns.
        ents = z.entities
        if len(ents):
            cells = self.cellmap.cell_of(ents["pos"])
            weight = 1.0 + OBSERVER_LOAD_WEIGHT * (ents["observer"] != 0)
            load = np.bincount(cells, weights=weight, minlength=self.cellmap.n_cells)
            nz = np.flatnonzero(load)
            report["cell_ids"] = nz.astype("<i4").tobytes()
            report["cell_load"] = load[nz].astype("<f4").tobytes()
        return wire.Heartbeat(
            self.index,
            self.name,
            self.cellmap.epoch,
            z.tick,
            len(z.entities),
            {**report, "node": self.stats.report()},
        )

    # --- sending ---------------------------------------------------------------------------

    def _send(self, topic: str, msg: wire.Message) -> int:
        data = wire.encode(msg)
        try:
            self.bus.send(topic, data)
        except BusError as exc:
            self.stats.bus_errors += 1
            self._log_once(f"send:{topic}", "zone %s: cannot send to %s: %s", topic, exc)
            return 0
        return len(data)

    def _log_once(self, key: str, fmt: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(fmt, self.name, *args)

    def _to_zone(self, index: int, msg: wire.Message, own: bool = False) -> bool:
        name = self.cellmap.zones[index]
        topic = self.topics.zone_own(name) if own else self.topics.zone_rt(name)
        return self._send(topic, msg) > 0

    def _to_gateway(self, gateway: int, msg: wire.Message) -> None:
        if gateway in self._gateways:
            self._send(self.topics.gateway(gateway), msg)
            return
        # A gateway we have not written to yet: open its topic first (async), keeping the
        # replies; snapshots are not worth keeping, the next ones supersede them.
        pending = self._opening.get(gateway)
        if pending is None:
            pending = self._opening[gateway] = []
            self._tasks.append(asyncio.ensure_future(self._open_gateway(gateway)))
        if isinstance(msg, SnapshotBatch):
            # Dropped: their next snapshot must be a full one, or the gateway (which waits
            # for a RESET) would have nothing to start from.
            self.stats.undeliverable += 1
            for oid in msg.observer_ids.tolist():
                self.zone.request_resync(oid)
        else:
            pending.append(msg)

    async def _open_gateway(self, gateway: int) -> None:
        topic = self.topics.gateway(gateway)
        try:
            await self.bus.create_topics([TopicSpec(topic)])
        except BusError as exc:
            log.error("zone %s: cannot open gateway %d's topic: %s", self.name, gateway, exc)
            self._opening.pop(gateway, None)
            return
        self._gateways.add(gateway)
        pending = self._opening.pop(gateway, [])
        log.info("zone %s: writing to gateway %d", self.name, gateway)
        for msg in pending:
            self._send(topic, msg)

    # --- before the tick: what the bus brought ---------------------------------------------

    def before_tick(self, zone: Zone) -> None:
        if self._control is not None:
            for rec in self._control.poll():
                self._dispatch(rec.value)
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            for msg in deferred:
                self._on_handoff(msg)
        if self._own is not None:
            for rec in self._own.poll():
                self._dispatch(rec.value)
        if self._restore is not None:
            self._import_restored(zone, self._restore)
            self._restore = None
        if self._rt is not None:
            for rec in self._rt.poll():
                self._dispatch(rec.value)
        for sub in self._adopted:
            # A dead zone's topics, now ours: its late handoffs, its players' inputs.
            for rec in sub.poll():
                self._dispatch(rec.value)
        if self._joining:
            self._finish_joins()
        self._expire(zone.tick)

    def _dispatch(self, data: bytes) -> None:
        try:
            msg = wire.decode(data)
        except wire.WireError as exc:
            self.stats.wire_errors += 1
            self._log_once("wire", "zone %s: dropped a malformed bus message: %s", exc)
            return
        try:
            t = type(msg)
            if t is wire.Inputs:
                assert isinstance(msg, wire.Inputs)
                self._on_inputs(msg)
            elif t is wire.Ghosts:
                assert isinstance(msg, wire.Ghosts)
                self._on_ghosts(msg)
            elif t is wire.Handoff:
                assert isinstance(msg, wire.Handoff)
                self._on_handoff(msg)
            elif t is wire.Join:
                assert isinstance(msg, wire.Join)
                self._on_join(msg)
            elif t is wire.Leave:
                assert isinstance(msg, wire.Leave)
                if not self._forwarded(msg.entity, msg):
                    self.zone.leave_player(msg.entity)
            elif t is wire.PlayerMessageIn:
                assert isinstance(msg, wire.PlayerMessageIn)
                if not self._forwarded(msg.entity, msg):
                    self.zone.post_message(msg.entity, msg.kind, msg.body)
            elif t is wire.MapUpdate:
                assert isinstance(msg, wire.MapUpdate)
                if msg.cellmap.epoch > self.cellmap.epoch:
                    self.apply_map(msg.cellmap)
            elif t is wire.Left:
                pass  # our own note (see _hand_off); only an adopter reads them
            elif t is wire.Adopt:
                assert isinstance(msg, wire.Adopt)
                if msg.adopter == self.index and msg.dead not in self._adopting:
                    self._adopting.add(msg.dead)
                    self._tasks.append(asyncio.ensure_future(self._adopt(msg.dead)))
            elif t is wire.Resync:
                assert isinstance(msg, wire.Resync)
                if not self._forwarded(msg.entity, msg):
                    self.zone.request_resync(msg.entity)
            else:
                self.stats.wire_errors += 1
                self._log_once(f"kind:{t.__name__}", "zone %s: unexpected %s", t.__name__)
        except (ValueError, KeyError) as exc:
            self.stats.wire_errors += 1
            self._log_once(f"bad:{type(msg).__name__}", "zone %s: refused a message: %s", exc)

    def _forwarded(self, entity: int, msg: wire.Message) -> bool:
        """Send ``msg`` on if ``entity`` left us lately; False if it is ours (or unknown)."""
        if self.zone.entities.rows_of([entity])[0] >= 0:
            return False
        dst = self._forward.get(entity)
        if dst is None:
            return False
        self.stats.forwarded += 1
        self._to_zone(dst[0], msg)
        return True

    def _on_inputs(self, msg: wire.Inputs) -> None:
        ids = msg.ids
        if len(ids) == 0:
            return
        ours = self.zone.entities.contains(ids)
        if np.all(ours):
            self.zone.inputs.push_many(ids, msg.seq, msg.intent, msg.actions)
            return
        self.zone.inputs.push_many(ids[ours], msg.seq[ours], msg.intent[ours], msg.actions[ours])
        away = np.flatnonzero(~ours)
        dst = np.array([self._forward.get(int(i), (-1, 0))[0] for i in ids[away]], np.int64)
        for d in np.unique(dst[dst >= 0]):
            sel = away[dst == d]
            self.stats.forwarded += len(sel)
            self._to_zone(
                int(d), wire.Inputs(ids[sel], msg.seq[sel], msg.intent[sel], msg.actions[sel])
            )
        # Inputs for entities we never had are left to the zone, which counts them unknown.
        lost = away[dst < 0]
        if len(lost):
            self.zone.inputs.push_many(
                ids[lost], msg.seq[lost], msg.intent[lost], msg.actions[lost]
            )

    def _on_join(self, msg: wire.Join) -> None:
        zone = self.zone
        if msg.entity is not None and self._forwarded(msg.entity, msg):
            return
        resume = msg.entity is not None and zone.entities.rows_of([msg.entity])[0] >= 0
        if zone.players is not None and not resume:
            # The record loads in the background; the join happens on the first tick after
            # it is in (or failed: then the player joins fresh), before the entity can walk
            # into another zone.
            self._joining.append((msg, zone.players.load(msg.player)))
            return
        self._join(msg, None)

    def _finish_joins(self) -> None:
        waiting: list[tuple[wire.Join, asyncio.Future[LoadResult]]] = []
        for msg, fut in self._joining:
            if not fut.done():
                waiting.append((msg, fut))
            elif fut.cancelled():
                self._join(msg, LoadResult(msg.player, None, failed=True))
            else:
                self._join(msg, fut.result())
        self._joining = waiting

    def _join(self, msg: wire.Join, loaded: LoadResult | None) -> None:
        zone = self.zone
        try:
            if msg.entity is not None and zone.entities.rows_of([msg.entity])[0] >= 0:
                zone.entities.set([msg.entity], gateway=msg.gateway)
                reply = wire.Joined(msg.request, msg.entity, True, self.index)
            else:
                eid = zone.join_player(msg.player, loaded=loaded)
                zone.entities.set([eid], gateway=msg.gateway)
                reply = wire.Joined(msg.request, eid, False, self.index)
                self.stats.joins += 1
        except Exception as exc:
            log.exception("zone %s: join of player %d failed", self.name, msg.player)
            reply = wire.Joined(msg.request, 0, False, self.index, error=str(exc)[:200])
        self._to_gateway(msg.gateway, reply)

    def _on_handoff(self, msg: wire.Handoff) -> None:
        zone = self.zone
        if msg.fingerprint != self._fingerprint:
            raise ValueError(
                f"handoff from zone {msg.source} has schema {msg.fingerprint}, "
                f"ours is {self._fingerprint}: every zone must run the same world code"
            )
        if len(msg.rows) % self._row_dtype.itemsize:
            raise ValueError("handoff rows do not match the row layout")
        if not msg.bounce and msg.epoch < self.cellmap.epoch:
            # Fencing: the sender decided under an older map. Rows standing in cells that are
            # ours under our newer map are ours either way; the rest go back so the entities
            # stay alive with their owner, which re-routes them once it has caught up.
            arrived = np.frombuffer(msg.rows, dtype=self._row_dtype)
            ours = self._owner_flat[self.cellmap.cell_of(arrived["pos"])] == self.index
            if np.any(ours):
                self._on_handoff(
                    wire.Handoff(
                        self.cellmap.epoch,
                        msg.source,
                        msg.target,
                        msg.tick,
                        msg.fingerprint,
                        arrived[ours].tobytes(),
                    )
                )
                if np.all(ours):
                    return
                msg = wire.Handoff(
                    msg.epoch,
                    msg.source,
                    msg.target,
                    msg.tick,
                    msg.fingerprint,
                    arrived[~ours].tobytes(),
                )
            refused = int(np.count_nonzero(~ours))
            self.stats.stale_refused += refused
            self.stats.bounced_out += refused
            self._log_once(
                "stale",
                "zone %s: refused a handoff of epoch %d (ours %d)",
                msg.epoch,
                self.cellmap.epoch,
            )
            back = wire.Handoff(
                self.cellmap.epoch,
                self.index,
                msg.source,
                zone.tick,
                msg.fingerprint,
                msg.rows,
                bounce=True,
            )
            self._to_zone(msg.source, back, own=True)
            return
        if msg.tick >= zone.tick:
            # The sender already simulated these entities for this tick (it ran first, or
            # its clock is a little ahead): take them in at our next tick, not twice now.
            self._deferred.append(msg)
            return
        block = np.frombuffer(msg.rows, dtype=self._row_dtype)
        if len(block) == 0:
            return
        ids = np.ascontiguousarray(block["id"])
        # What our observers last saw of these entities (as ghosts) stays our bookkeeping.
        g_rows = zone.ghosts.rows_of(ids)
        had = g_rows >= 0
        keep = {n: zone.ghosts[n][g_rows[had]].copy() for n in self._local_fields}
        zone.ghosts.despawn(ids[had])
        zone.entities.import_rows(block.copy())
        rows = zone.entities.rows_of(ids)
        for name, values in keep.items():
            zone.entities[name][rows[had]] = values
        for i in ids.tolist():
            self._forward.pop(i, None)
        if msg.bounce:
            self.stats.bounced_in += len(ids)
        else:
            self.stats.handoffs_in += len(ids)
            self.stats.handoff_ticks.extend([max(0, zone.tick - msg.tick)] * len(ids))
        obs = zone.entities["observer"][rows] != 0
        if np.any(obs):
            oids = ids[obs]
            gws = zone.entities["gateway"][rows[obs]]
            for oid in oids.tolist():
                zone.request_resync(oid)
            for g in np.unique(gws).tolist():
                self._to_gateway(int(g), wire.Route(self.index, oids[gws == g]))

    def _on_ghosts(self, msg: wire.Ghosts) -> None:
        zone = self.zone
        if msg.epoch < self.cellmap.epoch:
            self.stats.ghosts_stale += 1
            return
        if len(msg.rows) % self._ghost_dtype.itemsize:
            raise ValueError("ghost rows do not match the ghost layout")
        src = msg.source
        if src == self.index or not 0 <= src < len(self.cellmap.zones):
            raise ValueError(f"ghosts from zone {src}")
        block = np.frombuffer(msg.rows, dtype=self._ghost_dtype)
        ids = np.ascontiguousarray(block["id"])
        mine = zone.entities.contains(ids)
        if np.any(mine):
            block, ids = block[~mine], ids[~mine]
        prev = self._ghost_ids.get(src)
        kept = np.zeros(0, np.uint64)
        if not msg.full and prev is None:
            prev = np.zeros(0, np.uint64)  # we missed the keyframe: the next one completes us
        if prev is not None and len(prev):
            if msg.full:
                gone = np.setdiff1d(prev, ids, assume_unique=True)
            else:
                gone = np.intersect1d(prev, msg.removed)
            if len(gone):
                # Not gone, only not listed yet: entities we just handed to ``src`` (its list
                # was written before it took them in), and entities handed to us that wait a
                # tick to come in (their old owner no longer lists them).
                protect = self._protected(src, msg.tick)
                if len(protect):
                    hold = np.isin(gone, protect)
                    kept, gone = gone[hold], gone[~hold]
                others = [v for k, v in self._ghost_ids.items() if k != src and len(v)]
                if others:
                    gone = gone[~np.isin(gone, np.concatenate(others))]
                zone.ghosts.despawn(gone)
        if msg.full:
            self._ghost_ids[src] = np.union1d(ids, kept) if len(kept) else np.sort(ids)
        else:
            assert prev is not None
            stay = np.setdiff1d(prev, msg.removed) if len(msg.removed) else prev
            self._ghost_ids[src] = np.union1d(np.union1d(stay, ids), kept)
        self._ghost_seen[src] = zone.tick
        self.stats.ghosts_in += len(ids)
        if len(ids) == 0:
            return
        values = {name: block[name] for name in self._ghost_fields}
        lag = min(max(zone.tick - msg.tick, 0), MAX_GHOST_EXTRAPOLATION_TICKS)
        if lag:
            values["pos"] = block["pos"] + block["vel"] * np.float32(lag * zone.config.tick_period)
        zone.ghosts.upsert(ids, **values)

    def _protected(self, src: int, tick: int) -> npt.NDArray[np.uint64]:
        parts: list[npt.NDArray[np.uint64]] = []
        handed = self._handed.get(src)
        if handed:
            handed[:] = [(t, i) for t, i in handed if tick <= t + MAX_GHOST_EXTRAPOLATION_TICKS]
            parts += [i for _, i in handed]
        for m in self._deferred:
            if m.source == src and len(m.rows) % self._row_dtype.itemsize == 0:
                parts.append(np.frombuffer(m.rows, dtype=self._row_dtype)["id"])
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def _expire(self, tick: int) -> None:
        if tick % 20:
            return
        for src, seen in list(self._ghost_seen.items()):
            if tick - seen > self.ghost_timeout_ticks:
                ids = self._ghost_ids.pop(src, None)
                del self._ghost_seen[src]
                if ids is not None and len(ids):
                    others = [v for v in self._ghost_ids.values() if len(v)]
                    if others:
                        ids = ids[~np.isin(ids, np.concatenate(others))]
                    ids = ids[~self.zone.entities.contains(ids)]
                    self.stats.ghosts_expired += len(ids)
                    self.zone.ghosts.despawn(ids)
                    log.warning(
                        "zone %s: no ghosts from zone %s for %d ticks; dropped %d",
                        self.name,
                        self.cellmap.zones[src],
                        tick - seen,
                        len(ids),
                    )
        for handed in self._handed.values():
            handed[:] = [(t, i) for t, i in handed if t > tick - self.ghost_timeout_ticks]
        if self._forward:
            dead = [e for e, (_, exp) in self._forward.items() if exp < tick]
            for e in dead:
                del self._forward[e]

    # --- after the simulation: handoffs and ghosts -------------------------------------------

    def after_simulate(self, zone: Zone) -> None:
        ents = zone.entities
        if len(ents):
            cells = self.cellmap.cell_of(ents["pos"])
            owner = self._owner_flat[cells]
            away = np.flatnonzero(owner != self.index)
            if len(away):
                self._hand_off(zone, ents.ids[away], owner[away])
                cells = self.cellmap.cell_of(ents["pos"])
            self._publish_ghosts(zone, cells)
        elif self._ghost_masks:
            self._publish_ghosts(zone, np.zeros(0, np.int32))
        if self._out_messages:
            for g, items in self._out_messages.items():
                self._to_gateway(g, wire.Messages(items))
            self._out_messages = {}
        if self.store is not None and self.lease is not None:
            now = zone.clock.now()
            if now - self._last_checkpoint >= self.checkpoint_every_s and (
                self._saving is None or self._saving.done()
            ):
                self._last_checkpoint = now
                self._checkpoint(zone)

    def _hand_off(
        self, zone: Zone, ids: npt.NDArray[np.uint64], dst: npt.NDArray[np.int16]
    ) -> None:
        expiry = zone.tick + self.forward_ttl_ticks
        for d in np.unique(dst).tolist():
            sel = np.ascontiguousarray(ids[dst == d])
            if d not in self._zones_ready:
                # A zone that has just joined the map: its topics are being created. The
                # entities stay (and are simulated) here until they can be sent.
                self.stats.handoffs_held += len(sel)
                continue
            block = zone.entities.take_rows(sel)
            msg = wire.Handoff(
                self.cellmap.epoch, self.index, d, zone.tick, self._fingerprint, block.tobytes()
            )
            if not self._to_zone(d, msg, own=True):
                # The bus refused it: nothing left, so the entities stay ours.
                zone.entities.import_rows(block)
                self.stats.handoffs_held += len(sel)
                continue
            # A note in our own topic, after our checkpoint's offset: whoever adopts our
            # cells if we die knows these are no longer ours.
            self._to_zone(self.index, wire.Left(self.index, zone.tick, sel), own=True)
            self.stats.handoffs_out += len(sel)
            self.stats.handoff_messages_out += 1
            self._handed.setdefault(d, []).append((zone.tick, sel))
            for i in sel.tolist():
                self._forward[i] = (d, expiry)
            # Until the new owner's ghosts arrive, our observers keep seeing it from here.
            values: dict[str, Any] = {name: block[name] for name in self._ghost_fields}
            for name in self._local_fields:
                values[name] = block[name]
            zone.ghosts.upsert(block["id"], **values)
            prev = self._ghost_ids.get(d)
            self._ghost_ids[d] = (
                np.union1d(prev, block["id"]) if prev is not None else np.sort(block["id"])
            )
            self._ghost_seen.setdefault(d, zone.tick)

    def _publish_ghosts(self, zone: Zone, cells: npt.NDArray[np.int32]) -> None:
        """Each neighbour gets the rows in its ghost range that changed since last tick and
        the ids that left it; every ``GHOST_KEYFRAME_TICKS`` the whole set instead."""
        ents = zone.entities
        keyframe = zone.tick % GHOST_KEYFRAME_TICKS == 0
        for n, mask in self._ghost_masks.items():
            rows = np.flatnonzero(mask[cells]) if len(cells) else np.zeros(0, np.int64)
            ids = ents.ids[rows]
            order = np.argsort(ids)
            rows, ids = rows[order], ids[order]
            block = np.empty(len(rows), dtype=self._ghost_dtype)
            block["id"] = ids
            for name in self._ghost_fields:
                block[name] = ents[name][rows]
            raw = block.view(np.uint8).reshape(len(block), self._ghost_dtype.itemsize)
            prev = self._sent.get(n)
            if keyframe or prev is None:
                msg = wire.Ghosts(self.cellmap.epoch, self.index, zone.tick, block.tobytes())
                sent_rows = len(block)
            else:
                prev_ids, prev_raw = prev
                pos = np.searchsorted(prev_ids, ids)
                pos_c = np.minimum(pos, max(len(prev_ids) - 1, 0))
                same = np.zeros(len(ids), np.bool_)
                if len(prev_ids):
                    hit = prev_ids[pos_c] == ids
                    same[hit] = np.all(prev_raw[pos_c[hit]] == raw[hit], axis=1)
                removed = np.setdiff1d(prev_ids, ids, assume_unique=True)
                changed = block[~same]
                msg = wire.Ghosts(
                    self.cellmap.epoch,
                    self.index,
                    zone.tick,
                    changed.tobytes(),
                    removed,
                    full=False,
                )
                sent_rows = len(changed)
            self._sent[n] = (ids, raw.copy())
            sent = self._send(self.topics.zone_rt(self.cellmap.zones[n]), msg)
            self.stats.ghosts_out += sent_rows
            self.stats.ghost_bytes_out += sent
            self.stats.ghost_messages_out += 1

    # --- toward gateways ---------------------------------------------------------------------

    def _message_out(self, entity_id: int, kind: str, body: Any) -> None:
        row = self.zone.entities.rows_of([entity_id])[0]
        if row < 0:
            self.stats.undeliverable += 1
            return
        g = int(self.zone.entities["gateway"][row])
        self._out_messages.setdefault(g, []).append((entity_id, kind, body))

    def emit(self, batch: SnapshotBatch) -> None:
        """The zone's snapshot sink: each gateway gets the payloads of its players."""
        n = len(batch)
        if n == 0:
            return
        rows = self.zone.entities.rows_of(batch.observer_ids)
        gws = self.zone.entities["gateway"][rows]
        first = int(gws[0])
        if np.all(gws == first):
            self._to_gateway(first, batch)
            return
        for g in np.unique(gws).tolist():
            self._to_gateway(int(g), batch.select(gws == g))

    # --- lease, checkpoints, adoption (with a store) ------------------------------------------

    def _lease_name(self, name: str | None = None) -> str:
        return f"zone:{name or self.name}"

    async def _take_lease(self) -> None:
        assert self.store is not None
        import os
        import socket

        holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        waited = 0.0
        while True:
            lease = await self.store.acquire_lease(self._lease_name(), holder, self.lease_ttl_s)
            if lease is not None:
                self.lease = lease
                log.info("zone %s holds its lease (token %d)", self.name, lease.token)
                return
            if waited == 0.0 or waited % 5.0 < 0.25:
                log.info("zone %s: its lease is held elsewhere; waiting for it", self.name)
            await asyncio.sleep(0.25)
            waited += 0.25

    async def _keep_lease(self) -> None:
        assert self.store is not None
        while not self._closing and self.lease is not None:
            await asyncio.sleep(self.lease_ttl_s / 3.0)
            if self._closing:
                return
            try:
                renewed = await self.store.renew_lease(self.lease, self.lease_ttl_s)
            except StoreError as exc:
                log.error("zone %s: cannot renew its lease: %s", self.name, exc)
                continue  # it may still be ours; the next try tells
            if renewed is None:
                log.error("zone %s lost its lease: it stops simulating (fenced)", self.name)
                self.lease = None
                self.fenced = True
                if self.zone.players is not None:
                    self.zone.players.halt()  # its players are someone else's now
                self.zone.stop()
                return
            self.lease = renewed

    def _checkpoint(self, zone: Zone) -> None:
        """Snapshot our rows and our topics' positions now; save them in the background."""
        assert self.store is not None and self.lease is not None
        rows = zone.entities.export_rows(zone.entities.live_ids())
        # Handoffs taken off the topic but not yet in (deferred a tick) belong in it too.
        extra = [np.frombuffer(m.rows, dtype=self._row_dtype) for m in self._deferred]
        if extra:
            rows = np.concatenate([rows, *extra])
        data = rows.tobytes()
        meta = {
            "tick": zone.tick,
            "epoch": self.cellmap.epoch,
            "own_offset": self._own.position() if self._own is not None else 0,
            "rt_offset": self._rt.position() if self._rt is not None else 0,
            "fingerprint": self._fingerprint,
            "entities": len(rows),
        }
        token = self.lease.token
        self._saving = asyncio.ensure_future(self._save(token, data, meta))

    async def _save(self, token: int, data: bytes, meta: dict[str, Any]) -> None:
        assert self.store is not None
        try:
            await self.store.save_checkpoint(self.name, token, data, meta)
        except StoreError as exc:
            log.error("zone %s: checkpoint not saved: %s", self.name, exc)
            return
        self.stats.checkpoints += 1
        self.stats.checkpoint_bytes = len(data)

    async def _adopt(self, dead: int) -> None:
        """Take over dead zone ``dead``: its last checkpoint, then its ownership topic from
        the checkpoint's offset (handoffs it received, notes of entities it sent away)."""
        assert self.store is not None
        name = self.cellmap.zones[dead]
        loop = asyncio.get_running_loop()
        started = loop.time()
        ckpt = await self.store.load_checkpoint(name)
        if ckpt is None:
            log.error("zone %s: zone %s left no checkpoint; nothing to adopt", self.name, name)
            return
        _token, data, meta = ckpt
        if meta.get("fingerprint") != self._fingerprint or len(data) % self._row_dtype.itemsize:
            log.error("zone %s: zone %s's checkpoint has another row layout", self.name, name)
            return
        rows: dict[int, npt.NDArray[np.void]] = {}
        block = np.frombuffer(data, dtype=self._row_dtype)
        for i, r in zip(block["id"].tolist(), block, strict=True):
            rows[i] = r
        own = await self.bus.subscribe(self.topics.zone_own(name), int(meta.get("own_offset", 0)))
        end = await self.bus.end_offset(self.topics.zone_own(name))
        replayed = 0
        while own.position() < end:
            if not await own.wait(5.0):
                log.warning("zone %s: replay of %s stopped short of %d", self.name, name, end)
                break
            for rec in own.poll():
                replayed += 1
                try:
                    msg = wire.decode(rec.value)
                except wire.WireError:
                    continue
                if isinstance(msg, wire.Left) and msg.source == dead:
                    for i in msg.ids.tolist():
                        rows.pop(i, None)
                elif (
                    isinstance(msg, wire.Handoff)
                    and msg.target == dead
                    and len(msg.rows) % self._row_dtype.itemsize == 0
                ):
                    got = np.frombuffer(msg.rows, dtype=self._row_dtype)
                    for i, r in zip(got["id"].tolist(), got, strict=True):
                        rows[i] = r
        rt = await self.bus.subscribe(self.topics.zone_rt(name), "latest")
        self._adopted += [own, rt]
        restored = np.array(list(rows.values()), dtype=self._row_dtype)
        self._restore = (
            restored if self._restore is None else np.concatenate([self._restore, restored])
        )
        log.info(
            "zone %s adopts zone %s: checkpoint of tick %s with %d entities, %d records "
            "replayed, %d entities to restore (%.0f ms)",
            self.name,
            name,
            meta.get("tick"),
            len(block),
            replayed,
            len(restored),
            (loop.time() - started) * 1000.0,
        )

    def _import_restored(self, zone: Zone, block: npt.NDArray[np.void]) -> None:
        if len(block) == 0:
            return
        ids = np.ascontiguousarray(block["id"])
        fresh = ~zone.entities.contains(ids)  # one that came here meanwhile stays as it is
        block, ids = block[fresh], ids[fresh]
        zone.ghosts.despawn(ids)
        zone.entities.import_rows(block.copy())
        self.stats.adopted += len(ids)
        rows = zone.entities.rows_of(ids)
        obs = zone.entities["observer"][rows] != 0
        if np.any(obs):
            oids = ids[obs]
            gws = zone.entities["gateway"][rows[obs]]
            for oid in oids.tolist():
                zone.request_resync(oid)
            for g in np.unique(gws).tolist():
                self._to_gateway(int(g), wire.Route(self.index, oids[gws == g]))

    # --- for tests and tools ---------------------------------------------------------------

    def abandon(self) -> None:
        """Stop dead, as a killed process would: no more ticks, heartbeats or lease
        renewals, nothing released or flushed (tests and benchmarks of failover)."""
        self._closing = True
        self.zone.stop()
        if self.zone.players is not None:
            self.zone.players.halt()
        for t in self._tasks:
            t.cancel()

    async def wait_for_ownership_traffic(self, timeout: float) -> bool:
        """Until a handoff (or bounce) for this zone is ready to read, or ``timeout``."""
        if self._own is None:
            return False
        return await self._own.wait(timeout)

    def owned_ids(self) -> npt.NDArray[np.uint64]:
        return self.zone.entities.live_ids().copy()

    def wall_time(self) -> float:
        return time.time()
