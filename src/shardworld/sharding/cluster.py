"""Several zones of one world in this process, on one bus: the embedded sharded world.

``shardworld run`` uses it with the memory bus; tests use it with memory and with Kafka.
Each zone here is exactly what ``shardworld zone`` runs in a process of its own: the same
:class:`~shardworld.sharding.node.ZoneNode`, the same bus messages. Only the bus differs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.bus import Bus, open_bus
from shardworld.gateway.port import WorldInfo, world_info
from shardworld.sharding.cellmap import CellMap
from shardworld.sharding.node import ZoneNode
from shardworld.sharding.port import BusWorld
from shardworld.store import Store, open_store
from shardworld.zone.clock import Clock
from shardworld.zone.world import World
from shardworld.zone.zone import Zone

log = logging.getLogger("shardworld.sharding")


def zone_names(count: int) -> tuple[str, ...]:
    """The names of a world's zones: z0, z1, ..."""
    return tuple(f"z{i}" for i in range(count))


def initial_map(world: World, zones: int | None = None, cell_size: float | None = None) -> CellMap:
    """The world's starting cell map: a k-d split into ``zones`` equal rectangles."""
    n = zones if zones is not None else world.sharding.zones
    cell = cell_size if cell_size is not None else world.sharding.cell_size
    return CellMap.split(world.config.world, cell, zone_names(n), epoch=1)


def make_zone(
    world: World,
    cellmap: CellMap,
    name: str,
    clock: Clock | None = None,
    **changes: Any,
) -> Zone:
    """One zone of ``world``: its own id tag and random seed, the world's handler."""
    index = cellmap.zone_index(name)
    cfg = world.config.with_(
        name=name,
        zone_tag=index + 1,
        seed=world.config.seed + index,
        **changes,
    )
    return Zone(cfg, world.make_handler(), clock=clock)


def sharded_world_info(world: World, zone: Zone) -> WorldInfo:
    """WELCOME's description of the world (its name, not the zone's)."""
    info = world_info(zone)
    return WorldInfo(
        name=world.config.name,
        world=info.world,
        tick_hz=info.tick_hz,
        snapshot_hz=info.snapshot_hz,
        pos_quantum=info.pos_quantum,
        pub_fields=info.pub_fields,
        own_fields=info.own_fields,
        pub_width=info.pub_width,
        own_width=info.own_width,
        k_max=info.k_max,
    )


class Cluster:
    """Every zone of a world (or some of them) plus a gateway port, in this process.

    Args:
        world: the loaded world folder.
        zones: how many zones split the world (default: world.toml ``[sharding]``).
        bus_url: ``memory://`` (a private in-process bus) or ``kafka://host:port``.
        cell_size: cell edge in metres (default: world.toml).
        gateway: also open a gateway port (index 0) on the bus.
        clock: the zones' clock (tests pass a manual one).
        store_url: the world's store: zone leases, checkpoints and player records.
        player_store: a started store for player records only (when ``store_url`` is not
            given; the caller closes it).
        changes: ZoneConfig settings to override in every zone.
    """

    def __init__(
        self,
        world: World,
        zones: int | None = None,
        bus_url: str = "memory://",
        cell_size: float | None = None,
        gateway: bool = True,
        clock: Clock | None = None,
        world_name: str | None = None,
        store_url: str | None = None,
        lease_ttl_s: float = 3.0,
        checkpoint_every_s: float = 2.0,
        player_store: Store | None = None,
        **changes: Any,
    ) -> None:
        self.world = world
        self.name = world_name or world.config.name
        if bus_url == "memory://":
            bus_url = f"memory://{self.name}-{uuid.uuid4().hex[:8]}"
        self.bus_url = bus_url
        self.cellmap = initial_map(world, zones, cell_size)
        self.zones = [
            make_zone(world, self.cellmap, n, clock=clock, **changes) for n in self.cellmap.zones
        ]
        self.bus: Bus = open_bus(bus_url)
        self.store: Store | None = open_store(store_url, self.name) if store_url else None
        self.player_store = player_store
        self.lease_ttl_s = lease_ttl_s
        self.checkpoint_every_s = checkpoint_every_s
        self.dead: set[int] = set()
        self.nodes: list[ZoneNode] = []
        self.port: BusWorld | None = None
        self._want_gateway = gateway
        self._runs: list[asyncio.Task[None]] = []

    @property
    def info(self) -> WorldInfo:
        return sharded_world_info(self.world, self.zones[0])

    async def start(self) -> None:
        """Connect the bus, start every zone's node and the gateway port; wait for all."""
        await self.bus.start()
        if self.store is not None:
            await self.store.start()
        records = self.store if self.store is not None else self.player_store
        if records is not None:
            self.use_player_store(records)
        for z in self.zones:
            node = ZoneNode(
                z,
                self.bus,
                self.cellmap,
                self.name,
                store=self.store,
                lease_ttl_s=self.lease_ttl_s,
                checkpoint_every_s=self.checkpoint_every_s,
            )
            z.warm_up()  # after the node: only the first zone runs on_start
            await node.start()
            self.nodes.append(node)
        if self._want_gateway:
            self.port = BusWorld(self.bus, self.name, self.info, self.cellmap, gateway=0)
            await self.port.start()
        await asyncio.gather(*(n.wait_for_peers() for n in self.nodes))
        log.info(
            "world %s: %d zones on %s (%s)",
            self.name,
            len(self.zones),
            self.bus_url,
            self.cellmap.describe(),
        )

    def use_player_store(self, store: Store) -> None:
        """Keep the players' ``persistent`` fields in ``store`` (a started store), in every
        zone; before the zones tick."""
        for z in self.zones:
            z.use_store(store)

    def step(self) -> None:
        """One tick of every zone, in order (tests and tools; the real loop is :meth:`run`)."""
        for i, z in enumerate(self.zones):
            if i not in self.dead:
                z.step()

    async def kill(self, index: int) -> None:
        """Make zone ``index`` vanish as a SIGKILL would: no more ticks, heartbeats or lease
        renewals, nothing released (tests of failover)."""
        self.dead.add(index)
        self.nodes[index].abandon()
        if self._runs:
            self._runs[index].cancel()

    async def run(self) -> None:
        """Tick every zone at its rate until :meth:`stop`."""
        self._runs = [
            asyncio.create_task(z.run(), name=f"zone-{z.config.name}") for z in self.zones
        ]
        await asyncio.gather(*self._runs, return_exceptions=True)

    def stop(self) -> None:
        for z in self.zones:
            z.stop()

    async def close(self) -> None:
        self.stop()
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        if self.port is not None:
            await self.port.close()
        for n in self.nodes:
            await n.close()
        await self.bus.close()
        if self.store is not None:
            await self.store.close()

    # --- what tests and the live figures look at -----------------------------------------

    def owned_ids(self) -> list[npt.NDArray[np.uint64]]:
        return [z.entities.live_ids().copy() for z in self.zones]

    def entity_count(self) -> int:
        return sum(len(z.entities) for z in self.zones)

    def in_flight(self) -> int:
        """Entities sent in a handoff and not yet taken in (or bounced back and not home)."""
        out = sum(n.stats.handoffs_out + n.stats.bounced_out for n in self.nodes)
        got = sum(
            n.stats.handoffs_in + n.stats.bounced_in + n.stats.stale_refused for n in self.nodes
        )
        return out - got

    def positions(self) -> npt.NDArray[np.float32]:
        parts = [z.entities["pos"] for z in self.zones]
        return np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)

    def report(self) -> dict[str, Any]:
        return {
            z.config.name: {**z.stats.report(), "node": n.stats.report()}
            for z, n in zip(self.zones, self.nodes, strict=True)
        }


def find_zone(zones: Sequence[Zone], entity_id: int) -> int:
    """Index of the zone owning ``entity_id``, or -1."""
    for i, z in enumerate(zones):
        if z.entities.rows_of([entity_id])[0] >= 0:
            return i
    return -1
