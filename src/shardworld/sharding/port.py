"""The world as a gateway sees it when the zones are elsewhere: a WorldPort over the bus.

The gateway keeps each player's connection for the whole session; this port keeps the
route (which zone simulates the player's entity) and sends inputs, messages, leaves and
resyncs there. Routes change when a zone tells us it took an entity over (ROUTE, sent by the
new owner when the handoff lands). Snapshots from the old owner that were already on their
way after that are dropped, so a client never gets a delta against a view it no longer has:
its first snapshot from the new owner is a full one (RESET).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.bus import Bus, BusError, Subscription, TopicSpec
from shardworld.gateway.port import MessageListener, SnapshotListener, WorldInfo
from shardworld.sharding import wire
from shardworld.sharding.cellmap import CellMap
from shardworld.sharding.node import Topics
from shardworld.zone.sink import SnapshotBatch

log = logging.getLogger("shardworld.sharding.port")

#: An entity's old owner may still have snapshots in flight for this long after a reroute.
STALE_ROUTE_S = 5.0


class BusWorld:
    """A :class:`~shardworld.gateway.port.WorldPort` for a sharded world.

    Args:
        bus: a started bus.
        world: the world's name (topic prefix).
        info: what clients are told in WELCOME (the same for every zone).
        cellmap: the zones, to name topics.
        gateway: this gateway's index (each gateway of a world has its own).
        join_timeout: seconds to wait for a zone to answer a join.
    """

    def __init__(
        self,
        bus: Bus,
        world: str,
        info: WorldInfo,
        cellmap: CellMap,
        gateway: int = 0,
        join_timeout: float = 10.0,
    ) -> None:
        self.bus = bus
        self.topics = Topics(world)
        self._info = info
        self.cellmap = cellmap
        self.gateway = gateway
        self.join_timeout = join_timeout
        self._zone_of_name = {n: i for i, n in enumerate(cellmap.zones)}
        self._route: dict[int, int] = {}
        self._stale: dict[int, dict[int, float]] = {}  # zone -> {entity: until}
        self._stale_arr: dict[int, npt.NDArray[np.uint64]] = {}
        self._requests = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[wire.Joined]] = {}
        self._snapshot_listeners: list[SnapshotListener] = []
        self._message_listeners: list[MessageListener] = []
        self._pending: dict[int, list[tuple[int, int, float, float, int]]] = {}
        self._flush_scheduled = False
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._control: Subscription | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._closing = False
        self.wire_errors = 0
        self.stale_snapshots = 0
        self.bus_errors = 0
        self.reroutes = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.create_topics(
            [
                TopicSpec(self.topics.gateway(self.gateway)),
                *self.topics.zone_specs(self.cellmap.zones),
            ]
        )
        self._sub = await self.bus.subscribe(self.topics.gateway(self.gateway), "latest")
        self._task = asyncio.create_task(self._consume(), name=f"gateway-{self.gateway}-bus")
        # Zones added to the world (elastic scale-out) are named in the maps on the control
        # topic; ROUTEs and JOINs name zones by index into that list.
        # "latest": the coordinator announces the current map every round, and an old run's
        # maps on a reused topic must not count.
        self._control = await self.bus.subscribe(self.topics.control, "latest")
        self._control_task = asyncio.create_task(self._follow_maps(), name="gateway-maps")

    async def _follow_maps(self) -> None:
        sub = self._control
        assert sub is not None
        while not self._closing:
            try:
                await sub.wait(1.0)
                records = sub.poll()
            except BusError:
                return
            for rec in records:
                try:
                    msg = wire.decode(rec.value)
                except wire.WireError:
                    continue
                if not isinstance(msg, wire.MapUpdate) or msg.cellmap.epoch <= self.cellmap.epoch:
                    continue
                cm = msg.cellmap
                if cm.zones[: len(self.cellmap.zones)] != self.cellmap.zones:
                    continue
                added = cm.zones[len(self.cellmap.zones) :]
                if added:
                    try:
                        await self.bus.create_topics(self.topics.zone_specs(added))
                    except BusError as exc:
                        log.error("gateway %d: cannot open zones %s: %s", self.gateway, added, exc)
                        continue
                self.cellmap = cm
                self._zone_of_name = {n: i for i, n in enumerate(cm.zones)}

    async def close(self) -> None:
        self._closing = True
        if self._sub is not None:
            await self._sub.close()  # wakes the consumer, which sees _closing and returns
            self._sub = None
        if self._task is not None:
            await _finish(self._task)
            self._task = None
        if self._control is not None:
            await self._control.close()
            self._control = None
        if self._control_task is not None:
            await _finish(self._control_task)
            self._control_task = None
        self._flush_inputs()

    async def _consume(self) -> None:
        sub = self._sub
        assert sub is not None
        while not self._closing:
            try:
                await sub.wait(1.0)
                records = sub.poll()
            except BusError:
                if self._closing:
                    return
                raise
            for rec in records:
                try:
                    msg = wire.decode(rec.value)
                except wire.WireError as exc:
                    self.wire_errors += 1
                    log.warning(
                        "gateway %d: dropped a malformed bus message: %s", self.gateway, exc
                    )
                    continue
                try:
                    self._on_message(msg)
                except Exception:
                    log.exception("gateway %d: could not handle %s", self.gateway, type(msg))

    def _on_message(self, msg: wire.Message) -> None:
        if isinstance(msg, SnapshotBatch):
            zone = self._zone_of_name.get(msg.zone, -1)
            batch = self._drop_stale(zone, msg)
            if len(batch):
                for listener in self._snapshot_listeners:
                    listener(batch)
        elif isinstance(msg, wire.Messages):
            for eid, kind, body in msg.items:
                for ml in self._message_listeners:
                    ml(eid, kind, body)
        elif isinstance(msg, wire.Joined):
            fut = self._waiting.pop(msg.request, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, wire.Route):
            self._reroute(msg.zone, msg.ids)
        else:
            self.wire_errors += 1

    def _reroute(self, zone: int, ids: npt.NDArray[np.uint64]) -> None:
        until = time.monotonic() + STALE_ROUTE_S
        touched: set[int] = {zone}
        for e in ids.tolist():
            prev = self._route.get(e)
            self._route[e] = zone
            self._stale.get(zone, {}).pop(e, None)
            if prev is not None and prev != zone:
                self.reroutes += 1
                self._stale.setdefault(prev, {})[e] = until
                touched.add(prev)
        for z in touched:
            self._rebuild_stale(z)

    def _rebuild_stale(self, zone: int) -> None:
        now = time.monotonic()
        entries = self._stale.get(zone, {})
        for e in [e for e, t in entries.items() if t < now]:
            del entries[e]
        self._stale_arr[zone] = np.fromiter(entries, dtype=np.uint64, count=len(entries))

    def _drop_stale(self, zone: int, batch: SnapshotBatch) -> SnapshotBatch:
        stale = self._stale_arr.get(zone)
        if stale is None or len(stale) == 0:
            return batch
        bad = np.isin(batch.observer_ids, stale)
        if not np.any(bad):
            return batch
        self.stale_snapshots += int(bad.sum())
        return batch.select(~bad)

    # --- sending ---------------------------------------------------------------------------

    def _send_zone(self, zone: int, msg: wire.Message) -> bool:
        try:
            self.bus.send(self.topics.zone_rt(self.cellmap.zones[zone]), wire.encode(msg))
        except BusError as exc:
            self.bus_errors += 1
            log.warning("gateway %d: cannot reach zone %d: %s", self.gateway, zone, exc)
            return False
        return True

    def _zone_for(self, entity_id: int) -> int:
        return self._route.get(entity_id, -1)

    def _entry_zone(self, player_id: int) -> int:
        """Where a new player's join goes: spread over the zones; the handler places it
        and the first tick hands it to the zone owning its spot."""
        owned = np.bincount(
            np.asarray(self.cellmap.owner).reshape(-1), minlength=len(self.cellmap.zones)
        )
        live = np.flatnonzero(owned)
        return int(live[player_id % len(live)]) if len(live) else 0

    # --- WorldPort -------------------------------------------------------------------------

    def info(self) -> WorldInfo:
        return self._info

    async def join(self, player_id: int, entity_id: int | None = None) -> tuple[int, bool]:
        zone = self._zone_for(entity_id) if entity_id is not None else -1
        if zone < 0:
            zone = self._entry_zone(player_id)
        req = next(self._requests)
        fut: asyncio.Future[wire.Joined] = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        msg = wire.Join(req, self.gateway, player_id, entity_id)
        if not self._send_zone(zone, msg):
            self._waiting.pop(req, None)
            raise RuntimeError(f"zone {self.cellmap.zones[zone]} is unreachable")
        try:
            async with asyncio.timeout(self.join_timeout):
                res = await fut
        except TimeoutError:
            raise RuntimeError(
                f"zone {self.cellmap.zones[zone]} did not answer a join in {self.join_timeout} s"
            ) from None
        finally:
            self._waiting.pop(req, None)
        if res.error is not None:
            raise RuntimeError(f"join refused by zone {res.zone}: {res.error}")
        # A ROUTE from a newer owner may have overtaken the answer.
        self._route.setdefault(res.entity, res.zone)
        return res.entity, res.resumed

    def leave(self, entity_id: int) -> None:
        zone = self._route.pop(entity_id, -1)
        if zone >= 0:
            self._send_zone(zone, wire.Leave(entity_id))

    def alive(self, entity_id: int) -> bool:
        return entity_id in self._route

    def submit_input(self, entity_id: int, seq: int, ix: float, iy: float, actions: int) -> bool:
        zone = self._route.get(entity_id, -1)
        if zone < 0:
            return False
        self._pending.setdefault(zone, []).append((entity_id, seq, ix, iy, actions))
        if not self._flush_scheduled:
            # Every input that arrives in this turn of the event loop goes out as one message.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_inputs)
        return True

    def _flush_inputs(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for zone, items in pending.items():
            ids = np.fromiter((i[0] for i in items), dtype=np.uint64, count=len(items))
            rest = np.array([i[1:] for i in items], dtype=np.float64).reshape(-1, 4)
            self._send_zone(
                zone,
                wire.Inputs(
                    ids,
                    rest[:, 0].astype(np.uint32),
                    rest[:, 1:3].astype(np.float32),
                    rest[:, 3].astype(np.uint32),
                ),
            )

    def send_message(self, entity_id: int, kind: str, body: Any) -> None:
        zone = self._route.get(entity_id, -1)
        if zone >= 0:
            self._send_zone(zone, wire.PlayerMessageIn(entity_id, kind, body))

    def request_resync(self, entity_id: int) -> None:
        zone = self._route.get(entity_id, -1)
        if zone >= 0:
            self._send_zone(zone, wire.Resync(entity_id))

    def subscribe(self, snapshots: SnapshotListener, messages: MessageListener) -> None:
        self._snapshot_listeners.append(snapshots)
        self._message_listeners.append(messages)

    def server_time(self) -> float:
        # Zones number their ticks from the Unix epoch; WELCOME's server time must agree.
        return time.time()

    # --- for tests and tools ---------------------------------------------------------------

    def route_of(self, entity_id: int) -> int | None:
        return self._route.get(entity_id)


async def _finish(task: asyncio.Task[None], grace: float = 2.0) -> None:
    """Let a background task end by itself for ``grace`` seconds, then cancel it."""
    done, _ = await asyncio.wait([task], timeout=grace)
    if not done:
        task.cancel()
        await asyncio.wait([task], timeout=grace)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.warning("background task %s ended with %r", task.get_name(), task.exception())
