"""Elastic zones: the planner that lets the rebalancer add and remove zones, and the
coordinator's settings for starting and stopping their processes.

A plain :class:`~shardworld.coordinator.planner.RebalancingPlanner` pins the zone count and
only moves split lines. :class:`ElasticPlanner` passes the rebalancer's splits and merges
through; the :class:`~shardworld.coordinator.coordinator.Coordinator`, given a
:class:`~shardworld.coordinator.provider.NodeProvider`, starts a process for each zone the
planner adds and stops the process of each zone merged away (docs/coordinator.md,
"Elastic zones").
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.coordinator.rebalancer import (
    Partition,
    RebalanceConfig,
    Rebalancer,
    ZoneMerge,
)
from shardworld.sharding.cellmap import MAX_ZONES, CellMap

log = logging.getLogger("shardworld.coordinator")


@dataclass(frozen=True)
class ScalingSettings:
    """How an elastic coordinator handles zone processes."""

    #: A zone that is not up (lease held, heartbeats coming) this long after its process was
    #: asked for is given up: its process is stopped and its name is never used again.
    start_timeout_s: float = 60.0
    #: A merged-away zone is stopped once its heartbeats have reported no entities for this
    #: long, on the current map (late handoffs decided under the old map bounce off it until
    #: every zone has the new one).
    retire_quiet_s: float = 2.0
    #: A zone that is up and owns no cells (a split it was started for was no longer due
    #: once it came up) waits this long for a split, then is stopped.
    spare_idle_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("start_timeout_s", "retire_quiet_s", "spare_idle_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)) or float(value) < 0.0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


class ElasticPlanner:
    """The rebalancer's whole plan, splits and merges included, for a coordinator with a
    node provider: the number of zones that own cells follows the load between the
    config's ``min_zones`` and ``max_zones``.

    Zones are named by index in every bus message, so the map's zone list only ever grows:
    names keep their index for the life of the world, a new zone is appended under a name
    never used before (``z<index>``), and a merged-away zone keeps its slot, owning no cells,
    after its process has stopped. Maps are built with
    ``partition.owner_grid(zones=full_list)`` so that holds whatever the rebalancer does.

    A split needs a zone process that is up, which takes seconds, so it goes in two steps:

    1. the rebalancer proposes a split and no zone is free for it: the next map appends a
       new name that owns no cells (change ``zone_added``); the caller starts its process,
       which reads that map from the store;
    2. once the caller reports that zone in ``ready`` (lease held, heartbeats coming), the
       split the rebalancer proposes again that round goes to it (change ``split``).

    A zone in ``ready`` that owns no cells is a *spare*: the next split takes it instead of
    adding a zone. While a zone is in ``starting`` no second one is added; line moves and
    merges carry on meanwhile. A merge (change ``merge``) leaves the removed zone owning no
    cells; the caller stops its process once it has handed off its last entity.

    ``ready=None`` means there is no provider: splits are dropped (nobody could start the
    zone), merges still happen and leave the removed zone idle.
    """

    def __init__(self, config: RebalanceConfig | None = None, prefix: str = "z") -> None:
        self.config = config or RebalanceConfig()
        self.prefix = prefix
        self._rebalancer: Rebalancer | None = None
        self._partition: Partition | None = None
        self._refused_epoch = -1

    def set_config(self, config: RebalanceConfig) -> None:
        """Use new targets and limits from the next round on (hot and cold timers stay)."""
        self.config = config
        if self._rebalancer is not None:
            self._rebalancer.config = config

    @property
    def rebalancer(self) -> Rebalancer | None:
        return self._rebalancer

    def next_map(
        self,
        cellmap: CellMap,
        cell_load: npt.NDArray[np.float64],
        zone_p99_ms: dict[str, float],
        now: float,
        *,
        ready: Collection[str] | None = None,
        starting: Collection[str] = (),
        stoppable: Collection[str] | None = None,
    ) -> tuple[CellMap, list[dict[str, Any]]] | None:
        """The next map (epoch + 1) and its changes, or None to keep ``cellmap``.

        ready: zones that are up and may take cells (the caller checked their lease and
        heartbeats; it leaves out zones it is stopping); None without a provider.
        starting: zones whose processes were asked for and are not up yet.
        stoppable: zones whose processes the caller can stop (None: every zone). A merge
        removes one of these, swapping the pair if the rebalancer picked the other one; a
        merge of two zones neither of which can be stopped is dropped, since it would save
        no process.
        """
        part = self._partition_for(cellmap)
        if part is None:
            return None
        if self._rebalancer is None:
            self._rebalancer = Rebalancer(self.config)
        plan = self._rebalancer.plan(part, cell_load, zone_p99_ms, now)
        new_zones: tuple[str, ...] = ()
        if plan.splits:
            split = plan.splits[0]
            spare = None if ready is None else _spare(cellmap, ready)
            if spare is not None:
                new_zones = (spare,)
            elif ready is not None and not starting and len(cellmap.zones) < MAX_ZONES:
                name = self._new_name(cellmap)
                zones = (*cellmap.zones, name)
                added = cellmap.with_owner(np.asarray(cellmap.owner), zones=zones)
                change = {
                    "type": "zone_added",
                    "zone": name,
                    "index": len(cellmap.zones),
                    "for_zone": split.zone,
                    "cells": [],
                    "reason": split.reason,
                }
                return added, [change]
            else:
                plan = plan.without_splits()
        if plan.merges and stoppable is not None:
            merges = tuple(
                m for m in (_stoppable_merge(part, m, stoppable) for m in plan.merges) if m
            )
            plan = dataclasses.replace(plan, merges=merges)
        if plan.is_empty():
            return None
        new_part = part.apply(plan, new_zones=new_zones)
        zones = cellmap.zones
        new = cellmap.with_owner(new_part.owner_grid(zones=zones), zones=zones)
        self._partition = new_part
        changes: list[dict[str, Any]] = [
            {
                "type": "merge",
                "keep": m.keep,
                "remove": m.remove,
                "from": m.remove,
                "to": m.keep,
                "cells": m.cells.tolist(),
                "reason": m.reason,
            }
            for m in plan.merges
        ]
        changes += [
            {
                "type": "cell_move",
                "cells": m.cells.tolist(),
                "from": m.from_zone,
                "to": m.to_zone,
                "reason": m.reason,
            }
            for m in plan.moves
        ]
        changes += [
            {
                "type": "split",
                "zone": s.zone,
                "new_zone": name,
                "from": s.zone,
                "to": name,
                "cells": s.cells.tolist(),
                "axis": s.axis,
                "at": s.at,
                "reason": s.reason,
            }
            for s, name in zip(plan.splits[: len(new_zones)], new_zones, strict=True)
        ]
        return new, changes

    def _partition_for(self, cellmap: CellMap) -> Partition | None:
        """The partition behind ``cellmap``: the one this planner built if the map still
        matches it (its lines' damping history carries on), else one read from the map."""
        part = self._partition
        if part is not None:
            try:
                same = bool(np.array_equal(part.owner_grid(zones=cellmap.zones), cellmap.owner))
            except ValueError:
                same = False
            if same:
                return part
        try:
            part = Partition.from_cellmap(cellmap)
        except ValueError as exc:
            # After a failover to a zone that was not the dead one's sibling, regions need
            # not form a k-d tree; the planner waits until they do again.
            if self._refused_epoch != cellmap.epoch:
                log.warning("planner: no rebalancing on map epoch %d: %s", cellmap.epoch, exc)
                self._refused_epoch = cellmap.epoch
            self._partition = None
            return None
        self._partition = part
        return part

    def _new_name(self, cellmap: CellMap) -> str:
        taken = set(cellmap.zones)
        i = len(cellmap.zones)
        while f"{self.prefix}{i}" in taken:
            i += 1
        return f"{self.prefix}{i}"


def _stoppable_merge(
    part: Partition, merge: ZoneMerge, stoppable: Collection[str]
) -> ZoneMerge | None:
    """``merge`` with a zone the caller can stop as the one removed, or None."""
    if merge.remove in stoppable:
        return merge
    if merge.keep not in stoppable:
        log.debug(
            "planner: no merge of %s and %s: neither process can be stopped here",
            merge.keep,
            merge.remove,
        )
        return None
    return ZoneMerge(
        merge.node,
        merge.remove,
        merge.keep,
        part.region(merge.keep).cells(part.cols),
        f"{merge.reason}; {merge.keep} goes instead, whose process can be stopped here",
    )


def _spare(cellmap: CellMap, ready: Collection[str]) -> str | None:
    """The first zone of the map (by index) that is ready and owns no cells."""
    owned = np.bincount(np.asarray(cellmap.owner).reshape(-1), minlength=len(cellmap.zones))
    for i, name in enumerate(cellmap.zones):
        if owned[i] == 0 and name in ready:
            return name
    return None


__all__ = ["ElasticPlanner", "ScalingSettings"]
