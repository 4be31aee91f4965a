"""The coordinator: one leader (under a lease in the store) that owns the cell map.

Every ``period_s`` the leader

1. reads the zones' heartbeats from the bus (tick p99, per-cell load),
2. asks its planner for a better map (moving split lines toward balance, with damping),
3. writes the new map to the store with compare-and-set on the epoch (so two coordinators
   that both believe they lead cannot both win), then announces it on the control topic,
   where every zone applies it at its next tick boundary and hands off the cells it lost,
4. appends every ownership change to the store's event log and the structured log: the
   audit trail of which zone simulated which cells when.

Standbys run the same loop and try to take the lease each period; when the leader dies its
lease lapses after ``lease_ttl_s`` and one standby takes over, reading the current map from
the store. Leadership is fenced twice: by the lease token and by the map epoch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from shardworld.bus import Bus, BusError, Subscription
from shardworld.coordinator.elastic import ElasticPlanner, ScalingSettings
from shardworld.coordinator.mapview import MapView
from shardworld.coordinator.provider import NodeProvider, ProviderError
from shardworld.sharding import wire
from shardworld.sharding.cellmap import CellMap
from shardworld.sharding.node import Topics
from shardworld.store import Lease, Store, StoreError

log = logging.getLogger("shardworld.coordinator")

LEADER_LEASE = "coordinator"


class Planner(Protocol):
    """Decides the next cell map from the current one and the measured load."""

    def next_map(
        self,
        cellmap: CellMap,
        cell_load: npt.NDArray[np.float64],
        zone_p99_ms: dict[str, float],
        now: float,
    ) -> tuple[CellMap, list[dict[str, Any]]] | None:
        """A newer map (epoch + 1) and what changed, or None to keep the current one."""
        ...


@dataclass
class ZoneView:
    """What the coordinator last heard from a zone."""

    name: str
    index: int
    seen_at: float
    tick: int
    epoch: int
    entities: int
    p99_ms: float
    cell_ids: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    cell_load: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    report: dict[str, Any] = field(default_factory=dict)


class Coordinator:
    """One coordinator process (leader or standby) of a world.

    Args:
        bus: a started bus.
        store: a started store (the map and the leader lease live there).
        world: the world's name.
        initial: the map to start from when the store has none yet.
        node_id: who this coordinator is (shows in the lease and the audit trail).
        planner: decides map changes; None only watches (no rebalancing).
        period_s: how often the leader looks at the load.
        lease_ttl_s: how long a silent leader keeps the lease.
        clock: Unix time (tests may pass their own).
        provider: starts and stops zone processes; with one, the planner must be an
            :class:`~shardworld.coordinator.elastic.ElasticPlanner` and the coordinator
            scales the world out and in (see :meth:`_scale_round`).
        scaling: timings of starting and stopping zones (with a provider).
    """

    def __init__(
        self,
        bus: Bus,
        store: Store,
        world: str,
        initial: CellMap,
        node_id: str,
        planner: Planner | None = None,
        period_s: float = 1.0,
        lease_ttl_s: float = 3.0,
        stale_after_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        provider: NodeProvider | None = None,
        scaling: ScalingSettings | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.world = world
        self.topics = Topics(world)
        self.cellmap = initial
        self.node_id = node_id
        self.planner = planner
        self.period_s = period_s
        self.lease_ttl_s = lease_ttl_s
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.lease: Lease | None = None
        self.zones: dict[str, ZoneView] = {}
        self.maps_published = 0
        self.terms = 0
        self._beats: Subscription | None = None
        self._stopping = False
        self._alive: set[str] = set()
        self._failed: dict[str, float] = {}  # zone -> when it was failed over
        self.failovers = 0
        # --- elastic zones (only used with a provider) ---
        if provider is not None and not isinstance(planner, ElasticPlanner):
            raise ValueError("a coordinator with a node provider needs an ElasticPlanner")
        self.provider = provider
        self.scaling = scaling or ScalingSettings()
        self._starting: dict[str, float] = {}  # zone -> when its process was asked for
        self._added_epoch: dict[str, int] = {}  # zone -> the map epoch that added it
        self._retiring: dict[str, _Retiring] = {}  # merged away, not stopped yet
        self._retired: set[str] = set()  # stopped, being stopped, or given up: never reused
        self._spare_since: dict[str, float] = {}  # up, owning no cells, since
        self._scaling_tasks: dict[str, asyncio.Task[None]] = {}
        self.zones_started = 0
        self.zones_stopped = 0
        self.peak_zones = _zones_with_cells(initial)
        #: The live map (docs/map.md), fed once per round and with every audit event.
        self.view: MapView | None = None

    @property
    def leader(self) -> bool:
        return self.lease is not None

    async def start(self) -> None:
        await self.bus.create_topics(self.topics.zone_specs(self.cellmap.zones))
        self._beats = await self.bus.subscribe(self.topics.heartbeat, "latest")

    async def close(self) -> None:
        self._stopping = True
        await self._finish_scaling_tasks()
        if self.lease is not None:
            try:
                await self.store.release_lease(self.lease)
            except StoreError as exc:
                log.warning("coordinator %s: could not release the lease: %s", self.node_id, exc)
            self.lease = None
        if self._beats is not None:
            await self._beats.close()
            self._beats = None

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        """Lead or stand by until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                await self.round()
            except StoreError as exc:
                # An unreachable store: a leader that cannot renew must assume it lost.
                log.error("coordinator %s: store unavailable: %s", self.node_id, exc)
                self.lease = None
            self.update_view()
            await asyncio.sleep(max(0.0, self.period_s - (loop.time() - started)))

    # --- one round -------------------------------------------------------------------------

    async def round(self) -> None:
        """Read heartbeats, keep or take the lease, and (as leader) rebalance once."""
        self._read_heartbeats()
        await self._elect()
        if self.lease is None:
            return
        # Say the current map every round: gateways and zones that started since (or missed
        # an announcement) catch up within a period; the others ignore an epoch they have.
        self._announce(self.cellmap)
        await self._check_zones()
        if self.planner is None:
            return
        now = self.clock()
        load, p99 = self.load_grid(now)
        if not p99:
            return
        if self.provider is not None:
            await self._scale_round(load, p99, now)
            return
        planned = self.planner.next_map(self.cellmap, load, p99, now)
        if planned is not None:
            new, changes = planned
            await self.publish(new, changes)

    def _read_heartbeats(self) -> None:
        if self._beats is None:
            return
        for rec in self._beats.poll():
            try:
                hb = wire.decode(rec.value)
            except wire.WireError:
                continue
            if not isinstance(hb, wire.Heartbeat):
                continue
            rep = hb.report
            ids = _array(rep.get("cell_ids"), "<i4")
            load = _array(rep.get("cell_load"), "<f4")
            if len(ids) != len(load):
                ids, load = ids[:0], load[:0]
            p99 = rep.get("p99_ms", 0.0)
            self.zones[hb.name] = ZoneView(
                name=hb.name,
                index=hb.zone,
                seen_at=self.clock(),
                tick=hb.tick,
                epoch=hb.epoch,
                entities=hb.entities,
                p99_ms=float(p99) if isinstance(p99, int | float) else 0.0,
                cell_ids=ids.astype(np.int32),
                cell_load=load.astype(np.float32),
                report={k: v for k, v in rep.items() if k not in ("cell_ids", "cell_load")},
            )

    async def _elect(self) -> None:
        if self.lease is not None:
            renewed = await self.store.renew_lease(self.lease, self.lease_ttl_s)
            if renewed is None:
                log.warning("coordinator %s: lost the leader lease", self.node_id)
                await self._event({"type": "leader_lost", "token": self.lease.token})
                self.lease = None
            else:
                self.lease = renewed
            return
        lease = await self.store.acquire_lease(LEADER_LEASE, self.node_id, self.lease_ttl_s)
        if lease is None:
            return
        self.lease = lease
        self.terms += 1
        stored = await self.store.get_map()
        if stored is None and not await self.store.cas_map(
            None, self.cellmap.epoch, self.cellmap.to_bytes()
        ):
            stored = await self.store.get_map()  # another coordinator stored one first
        if stored is not None:
            self.cellmap = CellMap.from_bytes(stored[1])
        log.info(
            "coordinator %s leads world %s (lease token %d), map epoch %d",
            self.node_id,
            self.world,
            lease.token,
            self.cellmap.epoch,
        )
        await self._event({"type": "leader", "token": lease.token, "epoch": self.cellmap.epoch})
        # Zones that missed an announcement catch up with the current map.
        self._announce(self.cellmap)

    async def _check_zones(self) -> None:
        """Fail over every zone that owns cells and whose lease has lapsed."""
        cm = self.cellmap
        owned = np.bincount(np.asarray(cm.owner).reshape(-1), minlength=len(cm.zones))
        for i, name in enumerate(cm.zones):
            if owned[i] == 0:
                continue
            if await self.store.get_lease(f"zone:{name}") is not None:
                self._alive.add(name)
                self._failed.pop(name, None)
                continue
            # Never seen alive (not started yet) is not dead, unless it left a checkpoint.
            if name in self._alive or await self.store.load_checkpoint(name) is not None:
                await self.fail_over(i)
                cm = self.cellmap

    def _pick_adopter(self, dead: int) -> int | None:
        """The zone that takes a dead zone's cells: its k-d sibling if alive (the merged
        region stays a rectangle), else the least loaded live zone touching it."""
        cm = self.cellmap
        name = cm.zones[dead]
        live = {n for n in self._alive if n != name and n not in self._failed}
        try:
            from shardworld.coordinator.rebalancer import Leaf, Partition

            part = Partition.from_cellmap(cm)
            path = part.path_of(name)
            if path:
                sib = part.node(path[:-1] + ("1" if path[-1] == "0" else "0"))
                if isinstance(sib, Leaf) and sib.zone in live:
                    return cm.zone_index(sib.zone)
        except (ValueError, KeyError):
            pass
        touching = [cm.zones[i] for i in cm.neighbours(dead, 0.0)]
        pool = [n for n in touching if n in live] or sorted(live)
        if not pool:
            return None
        best = min(pool, key=lambda n: self.zones[n].entities if n in self.zones else 0)
        return cm.zone_index(best)

    async def fail_over(self, dead: int) -> bool:
        """Give dead zone ``dead``'s cells to another zone, which restores its checkpoint."""
        cm = self.cellmap
        name = cm.zones[dead]
        adopter = self._pick_adopter(dead)
        if adopter is None:
            log.error(
                "coordinator %s: zone %s is dead and no zone can adopt it", self.node_id, name
            )
            return False
        owner = np.asarray(cm.owner).copy()
        cells = np.flatnonzero(owner.reshape(-1) == dead)
        owner[owner == dead] = adopter
        log.warning(
            "coordinator %s: zone %s lost its lease; %s adopts its %d cells",
            self.node_id,
            name,
            cm.zones[adopter],
            len(cells),
        )
        change = {
            "type": "failover",
            "dead": name,
            "adopter": cm.zones[adopter],
            "from": name,
            "to": cm.zones[adopter],
            "cells": cells.tolist(),
        }
        if not await self.publish(cm.with_owner(owner), [change]):
            return False
        try:
            self.bus.send(
                self.topics.control, wire.encode(wire.Adopt(self.cellmap.epoch, dead, adopter))
            )
        except BusError as exc:
            log.error("coordinator %s: cannot announce the adoption: %s", self.node_id, exc)
        self._failed[name] = self.clock()
        self._alive.discard(name)
        self.failovers += 1
        return True

    def load_grid(self, now: float) -> tuple[npt.NDArray[np.float64], dict[str, float]]:
        """Per-cell load (rows, cols) from the live zones' reports, and their tick p99."""
        cm = self.cellmap
        flat = np.zeros(cm.n_cells, np.float64)
        p99: dict[str, float] = {}
        for z in self.zones.values():
            if now - z.seen_at > self.stale_after_s:
                continue
            ok = (z.cell_ids >= 0) & (z.cell_ids < cm.n_cells)
            np.add.at(flat, z.cell_ids[ok], z.cell_load[ok])
            p99[z.name] = z.p99_ms
        return flat.reshape(cm.rows, cm.cols), p99

    async def publish(self, new: CellMap, changes: list[dict[str, Any]]) -> bool:
        """Compare-and-set ``new`` in the store, announce it, log the changes. False if
        another coordinator changed the map first (this one then reloads it)."""
        if self.lease is None:
            return False
        old = self.cellmap
        if new.epoch <= old.epoch:
            raise ValueError(f"map epoch {new.epoch} is not newer than {old.epoch}")
        if not await self.store.cas_map(old.epoch, new.epoch, new.to_bytes()):
            stored = await self.store.get_map()
            if stored is not None:
                self.cellmap = CellMap.from_bytes(stored[1])
            log.warning(
                "coordinator %s: map epoch %d was taken by someone else; now at %d",
                self.node_id,
                new.epoch,
                self.cellmap.epoch,
            )
            return False
        if len(new.zones) > len(old.zones):
            await self.bus.create_topics(self.topics.zone_specs(new.zones))
        self.cellmap = new
        self._announce(new)
        self.maps_published += 1
        moved = np.flatnonzero(
            np.asarray(old.owner).reshape(-1) != np.asarray(new.owner).reshape(-1)
        )
        base = {"epoch": new.epoch, "node": self.node_id, "token": self.lease.token}
        if not changes:
            changes = [{"type": "cell_move", "cells": moved.tolist()}]
        for ch in changes:
            await self._event({**base, **ch})
        src = np.asarray(old.owner).reshape(-1)[moved]
        dst = np.asarray(new.owner).reshape(-1)[moved]
        for a, b in sorted({(int(x), int(y)) for x, y in zip(src, dst, strict=True)}):
            sel = moved[(src == a) & (dst == b)]
            log.info(
                "cell move epoch %d: %d cells %s -> %s (%s)",
                new.epoch,
                len(sel),
                new.zones[a] if a < len(new.zones) else a,
                new.zones[b],
                _cells_text(sel),
            )
        return True

    def _announce(self, cm: CellMap) -> None:
        try:
            self.bus.send(self.topics.control, wire.encode(wire.MapUpdate(cm)))
        except BusError as exc:
            log.error("coordinator %s: cannot announce map %d: %s", self.node_id, cm.epoch, exc)

    def update_view(self) -> None:
        """Rebuild the live map's state (if there is a view); never raises."""
        if self.view is not None:
            try:
                self.view.update(self)
            except Exception:
                log.exception("coordinator %s: the live map failed to update", self.node_id)

    async def _event(self, data: dict[str, Any]) -> None:
        if self.view is not None:
            self.view.add_event({"time": self.clock(), **data})
        try:
            await self.store.append_event({"time": self.clock(), **data})
        except StoreError as exc:
            log.error("coordinator %s: audit event lost: %s (%s)", self.node_id, data, exc)

    def status(self) -> dict[str, Any]:
        """A plain summary (logs, the live map, tests)."""
        return {
            "node": self.node_id,
            "leader": self.leader,
            "token": self.lease.token if self.lease else None,
            "epoch": self.cellmap.epoch,
            "maps_published": self.maps_published,
            "failovers": self.failovers,
            "zones": {
                n: {"p99_ms": z.p99_ms, "entities": z.entities, "epoch": z.epoch}
                for n, z in sorted(self.zones.items())
            },
        }

    # --- elastic zones (with a provider) ---------------------------------------------------

    async def _scale_round(
        self, load: npt.NDArray[np.float64], p99: dict[str, float], now: float
    ) -> None:
        """One round of an elastic leader, after the failover check:

        1. zones whose processes were asked for: up yet (lease held, heartbeats on the map
           that added them, ticking), or given up after ``scaling.start_timeout_s``;
        2. merged-away zones that have reported no entities for ``scaling.retire_quiet_s``:
           their processes are stopped (in the background);
        3. zones that are up but have owned no cells for ``scaling.spare_idle_s``: stopped;
        4. the planner's next map, offered the zones that are up and own no cells: a
           ``zone_added`` change (the new name appended, owning nothing) is published before
           the provider starts the process, which reads that map from the store; a ``split``
           gives cells to a zone that is up; a ``merge`` starts retiring the removed zone.

        The zone list only grows: a stopped zone keeps its slot, owning no cells, and since
        it owns none its lapsed lease is no failover (:meth:`_check_zones` skips it).
        """
        assert self.provider is not None and isinstance(self.planner, ElasticPlanner)
        up = await self._zones_up(now)
        await self._track_starting(up, now)
        await self._track_retiring(now)
        self._retire_idle_spares(up, now)
        ready = {n for n in up if n not in self._retiring and n not in self._retired}
        planned = self.planner.next_map(
            self.cellmap,
            load,
            p99,
            now,
            ready=ready,
            starting=set(self._starting),
            stoppable=self.provider.running(),
        )
        if planned is None:
            return
        new, changes = planned
        if not await self.publish(new, changes):
            return
        self.peak_zones = max(self.peak_zones, _zones_with_cells(new))
        for ch in changes:
            kind = ch.get("type")
            if kind == "zone_added":
                self._start_zone(str(ch["zone"]), new.epoch, now)
            elif kind == "merge":
                self._retiring[str(ch["remove"])] = _Retiring(new.epoch, now)
            elif kind == "split":
                self._spare_since.pop(str(ch["new_zone"]), None)

    async def _zones_up(self, now: float) -> set[str]:
        """The zones owning no cells whose process is up: it holds its lease, and its
        heartbeats (sent once it reads its topics) come from a map that names it and show
        it ticking (so it has stopped waiting for its peers and takes handoffs in)."""
        cm = self.cellmap
        owned = np.bincount(np.asarray(cm.owner).reshape(-1), minlength=len(cm.zones))
        up: set[str] = set()
        for i, name in enumerate(cm.zones):
            if owned[i] or name in self._retired:
                continue
            view = self.zones.get(name)
            if view is None or now - view.seen_at > self.stale_after_s:
                continue
            if view.epoch < self._added_epoch.get(name, 0) or view.tick <= 0:
                continue
            if await self.store.get_lease(f"zone:{name}") is not None:
                up.add(name)
        return up

    def _start_zone(self, name: str, epoch: int, now: float) -> None:
        assert self.provider is not None
        self._starting[name] = now
        self._added_epoch[name] = epoch
        log.info("coordinator %s: starting zone %s (map epoch %d)", self.node_id, name, epoch)
        self._scaling_tasks[f"start:{name}"] = asyncio.ensure_future(self.provider.start_zone(name))

    async def _track_starting(self, up: set[str], now: float) -> None:
        assert self.provider is not None
        for name, since in list(self._starting.items()):
            if name in up:
                del self._starting[name]
                self._spare_since[name] = now
                self.zones_started += 1
                log.info(
                    "coordinator %s: zone %s is up after %.1f s", self.node_id, name, now - since
                )
                await self._event(
                    {
                        "type": "zone_started",
                        "zone": name,
                        "epoch": self.cellmap.epoch,
                        "node": self.node_id,
                        "startup_s": round(now - since, 3),
                    }
                )
                continue
            failed = None
            task = self._scaling_tasks.get(f"start:{name}")
            if task is not None and task.done():
                exc = task.exception() if not task.cancelled() else None
                if task.cancelled() or exc is not None:
                    failed = f"the provider could not start it: {exc!r}"
                elif name not in self.provider.running():
                    failed = "its process exited"
            if failed is None and now - since > self.scaling.start_timeout_s:
                failed = f"not up {self.scaling.start_timeout_s:g} s after its start"
            if failed is not None:
                del self._starting[name]
                log.error("coordinator %s: zone %s gave up: %s", self.node_id, name, failed)
                await self._event(
                    {
                        "type": "zone_start_failed",
                        "zone": name,
                        "epoch": self.cellmap.epoch,
                        "node": self.node_id,
                        "reason": failed,
                    }
                )
                self._stop_zone(name, "start failed")

    async def _track_retiring(self, now: float) -> None:
        assert self.provider is not None
        cm = self.cellmap
        owned = np.bincount(np.asarray(cm.owner).reshape(-1), minlength=len(cm.zones))
        for name, r in list(self._retiring.items()):
            if name in self._retired or owned[cm.zone_index(name)]:
                # It owns cells again (an adopter after a failover, say): it stays.
                del self._retiring[name]
                continue
            view = self.zones.get(name)
            if view is None or now - view.seen_at > self.stale_after_s:
                if name not in self.provider.running() and now - r.since > self.stale_after_s:
                    del self._retiring[name]
                    self._retired.add(name)
                    self._alive.discard(name)
                    log.warning(
                        "coordinator %s: merged-away zone %s went silent before it was stopped",
                        self.node_id,
                        name,
                    )
                    await self._event(
                        {
                            "type": "zone_stopped",
                            "zone": name,
                            "epoch": cm.epoch,
                            "node": self.node_id,
                            "reason": "gone by itself",
                        }
                    )
                continue
            if view.epoch >= r.epoch and view.entities == 0 and view.seen_at >= r.since:
                if r.empty_since is None:
                    r.empty_since = now
                if now - r.empty_since >= self.scaling.retire_quiet_s:
                    del self._retiring[name]
                    self._stop_zone(name, "merged")
            else:
                r.empty_since = None

    def _retire_idle_spares(self, up: set[str], now: float) -> None:
        for name in [n for n in self._spare_since if n not in up]:
            del self._spare_since[name]
        for name in up:
            if name in self._starting or name in self._retiring or name in self._retired:
                continue
            since = self._spare_since.setdefault(name, now)
            view = self.zones.get(name)
            if now - since >= self.scaling.spare_idle_s and view is not None and not view.entities:
                self._stop_zone(name, "idle spare")

    def _stop_zone(self, name: str, reason: str) -> None:
        """Stop zone ``name``'s process in the background; its name is never used again."""
        self._retired.add(name)
        self._alive.discard(name)
        self._spare_since.pop(name, None)
        key = f"stop:{name}"
        if key not in self._scaling_tasks:
            self._scaling_tasks[key] = asyncio.ensure_future(self._stop_and_log(name, reason))

    async def _stop_and_log(self, name: str, reason: str) -> None:
        assert self.provider is not None
        if name not in self.provider.running():
            log.warning(
                "coordinator %s: zone %s is not running under this coordinator's provider; "
                "it is not stopped (%s)",
                self.node_id,
                name,
                reason,
            )
            return
        log.info("coordinator %s: stopping zone %s (%s)", self.node_id, name, reason)
        try:
            await self.provider.stop_zone(name)
        except ProviderError as exc:
            log.error("coordinator %s: cannot stop zone %s: %s", self.node_id, name, exc)
            return
        self.zones_stopped += 1
        await self._event(
            {
                "type": "zone_stopped",
                "zone": name,
                "epoch": self.cellmap.epoch,
                "node": self.node_id,
                "reason": reason,
            }
        )

    async def _finish_scaling_tasks(self, timeout: float = 30.0) -> None:
        tasks = [t for t in self._scaling_tasks.values() if not t.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for t in self._scaling_tasks.values():
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.warning("coordinator %s: %s", self.node_id, t.exception())

    def elastic_status(self) -> dict[str, Any]:
        """What the elastic part is doing (logs, the CLI's summary, tests)."""
        return {
            "zones_with_cells": _zones_with_cells(self.cellmap),
            "peak_zones": self.peak_zones,
            "zones_started": self.zones_started,
            "zones_stopped": self.zones_stopped,
            "starting": sorted(self._starting),
            "retiring": sorted(self._retiring),
            "retired": sorted(self._retired),
            "running": sorted(self.provider.running()) if self.provider is not None else [],
        }


@dataclass
class _Retiring:
    """A zone merged away at map ``epoch`` (at ``since``), waiting to be empty."""

    epoch: int
    since: float
    empty_since: float | None = None


def _zones_with_cells(cm: CellMap) -> int:
    return int(np.count_nonzero(np.bincount(np.asarray(cm.owner).reshape(-1))))


def _array(v: Any, dtype: str) -> npt.NDArray[Any]:
    if not isinstance(v, bytes) or len(v) % np.dtype(dtype).itemsize:
        return np.zeros(0, dtype)
    return np.frombuffer(v, dtype=dtype)


def _cells_text(cells: npt.NDArray[np.int64], limit: int = 8) -> str:
    shown = ", ".join(str(int(c)) for c in cells[:limit])
    return shown + (f", … ({len(cells)} cells)" if len(cells) > limit else "")
