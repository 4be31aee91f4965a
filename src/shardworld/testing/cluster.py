"""A whole sharded world in one event loop, ticked by the test.

Every zone is the real thing (:class:`~shardworld.sharding.node.ZoneNode` over the in-process
bus, exactly as ``shardworld run --zones N`` runs them), and players go through the bus port a
gateway uses, so joins, inputs, messages and leaves take the same path as in production:
a test sees entities handed from zone to zone, ghosts at borders, and records saved by
whichever zone owns a player when it leaves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from shardworld.sharding.cluster import Cluster
from shardworld.sharding.node import ZoneNode
from shardworld.sharding.port import BusWorld
from shardworld.store.base import Store
from shardworld.testing.clock import ManualClock
from shardworld.testing.harness import (
    SentMessage,
    WorldSpec,
    let_tasks_run,
    open_records,
    resolve_world,
)
from shardworld.zone.sink import SnapshotBatch
from shardworld.zone.zone import Zone


class ClusterHarness:
    """Every zone of a world on the in-process bus, one tick of all of them per step.

    Args:
        world: the world folder's path, a loaded folder, or a handler class.
        zones: how many zones split the world (default: world.toml ``[sharding]``).
        cell_size: edge of a cell in metres (default: world.toml).
        store: where player records live: a store URL, a started store, or None.
        changes: [zone] settings to override in every zone.

    Zones tick in order (z0, z1, ...) each step; an entity that walks out of a zone is taken
    in by its new owner on the next tick, as in a live world. ``on_start`` runs on z0 only.
    """

    def __init__(
        self,
        world: WorldSpec,
        /,
        zones: int | None = None,
        *,
        cell_size: float | None = None,
        store: Store | str | None = None,
        **changes: Any,
    ) -> None:
        self.folder = resolve_world(world, changes)
        self.clock = ManualClock()
        self._zones = zones
        self._cell_size = cell_size
        self._store_spec = store
        self.store: Store | None = None
        self._own_store = False
        self.cluster: Cluster | None = None
        self.sent: list[SentMessage] = []
        self.snapshots_seen = 0
        self._seq: dict[int, int] = {}

    async def start(self) -> ClusterHarness:
        """Open the store, start every zone and the bus port, run ``on_start`` on z0."""
        self.store, self._own_store = await open_records(self._store_spec, self.folder.config.name)
        self.cluster = Cluster(
            self.folder,
            zones=self._zones,
            cell_size=self._cell_size,
            clock=self.clock,
            player_store=self.store,
        )
        await self.cluster.start()
        assert self.cluster.port is not None
        self.cluster.port.subscribe(self._snapshot, self._collect)
        return self

    async def close(self) -> None:
        """Stop as zones do (``on_stop``, then every player saved, with a store), then
        close the zones and what the harness opened."""
        if self.cluster is not None:
            for z in self.cluster.zones:
                z.handler.on_stop(z)
                await z.save_players()
            await self.cluster.close()
        if self._own_store and self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> ClusterHarness:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the parts -------------------------------------------------------------------------

    def _live(self) -> Cluster:
        if self.cluster is None:
            raise RuntimeError("ClusterHarness is not started: use `async with` or start()")
        return self.cluster

    @property
    def zones(self) -> list[Zone]:
        return self._live().zones

    @property
    def nodes(self) -> list[ZoneNode]:
        return self._live().nodes

    @property
    def port(self) -> BusWorld:
        port = self._live().port
        assert port is not None
        return port

    @property
    def tick(self) -> int:
        return self.zones[0].tick

    # --- players ---------------------------------------------------------------------------

    async def join(self, player_id: int, max_ticks: int = 200) -> int:
        """Join ``player_id`` through the bus port as a gateway does; returns the entity id.

        Steps ticks until a zone has answered and the entity is owned by a zone (the zone
        that takes the join hands the entity on if ``on_join`` placed it in another zone's
        region)."""
        task = asyncio.ensure_future(self.port.join(player_id))
        for _ in range(max_ticks):
            await let_tasks_run()
            if task.done():
                break
            await self.step()
        if not task.done():
            task.cancel()
            raise TimeoutError(f"no zone answered the join of player {player_id}")
        entity, _resumed = task.result()
        for _ in range(max_ticks):
            if self.zone_of(entity) >= 0:
                return entity
            await self.step()
        raise TimeoutError(f"the entity of player {player_id} never arrived in a zone")

    def leave(self, entity_id: int) -> None:
        """The player leaves; the zone that owns its entity handles it next tick."""
        self.port.leave(entity_id)

    def input(
        self, entity_id: int, intent: tuple[float, float] = (0.0, 0.0), actions: int = 0
    ) -> bool:
        """Queue a player input; the owning zone applies it next tick."""
        seq = self._seq.get(entity_id, 0) + 1
        self._seq[entity_id] = seq
        return self.port.submit_input(entity_id, seq, intent[0], intent[1], actions)

    def message(self, entity_id: int, kind: str, body: Any) -> None:
        """A custom message from the player; the owning zone's ``on_messages`` gets it."""
        self.port.send_message(entity_id, kind, body)

    # --- time ------------------------------------------------------------------------------

    async def step(self, ticks: int = 1) -> None:
        """Run ``ticks`` ticks of every zone; bus traffic and background tasks get their
        turns between ticks."""
        cluster = self._live()
        period = self.folder.config.tick_period
        for _ in range(ticks):
            await let_tasks_run()
            self.clock.work(period)
            cluster.step()
        await let_tasks_run()

    async def run_for(self, seconds: float) -> None:
        await self.step(self.zones[0].ticks(seconds))

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every zone has written its queued player records."""
        ok = True
        for z in self.zones:
            if z.players is not None:
                ok = await z.players.flush(timeout) and ok
        return ok

    # --- looking ---------------------------------------------------------------------------

    def zone_of(self, entity_id: int) -> int:
        """Index of the zone that owns ``entity_id`` now, or -1 (in flight, or gone)."""
        for i, z in enumerate(self.zones):
            if z.entities.contains([entity_id])[0]:
                return i
        return -1

    def get(self, entity_id: int, name: str) -> Any:
        """A copy of one field of one entity, from the zone that owns it."""
        i = self.zone_of(entity_id)
        if i < 0:
            raise KeyError(f"entity {entity_id} is not owned by any zone now")
        ents = self.zones[i].entities
        value = ents[name][ents.rows_of([entity_id])[0]]
        return value.copy() if isinstance(value, np.ndarray) else value.item()

    def set(self, entity_id: int, **values: Any) -> None:
        """Write fields of one entity in the zone that owns it."""
        i = self.zone_of(entity_id)
        if i < 0:
            raise KeyError(f"entity {entity_id} is not owned by any zone now")
        self.zones[i].entities.set([entity_id], **values)

    def entity_count(self) -> int:
        return sum(len(z.entities) for z in self.zones)

    def messages_to(self, entity_id: int, kind: str | None = None) -> list[SentMessage]:
        return [
            m for m in self.sent if m.entity_id == entity_id and (kind is None or m.kind == kind)
        ]

    def _collect(self, entity_id: int, kind: str, body: Any) -> None:
        self.sent.append(SentMessage(int(entity_id), kind, body))

    def _snapshot(self, batch: SnapshotBatch) -> None:
        self.snapshots_seen += len(batch)
