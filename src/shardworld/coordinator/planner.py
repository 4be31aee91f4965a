"""The coordinator's planner: the pure :class:`~shardworld.coordinator.rebalancer.Rebalancer`
fed with the zones' load reports, turned into the next cell map.

Line moves only, for now: splitting a zone needs a new zone process (a node provider) and
merging renumbers zones, which every bus message names by index; both wait for the node
provider. The zone count is therefore pinned (``min_zones = max_zones = zones``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.coordinator.rebalancer import Partition, RebalanceConfig, Rebalancer
from shardworld.sharding.cellmap import CellMap

log = logging.getLogger("shardworld.coordinator")


class RebalancingPlanner:
    """Moves split lines toward balance, with the rebalancer's damping and rate limits."""

    def __init__(self, config: RebalanceConfig | None = None) -> None:
        self.config = config or RebalanceConfig()
        self._rebalancer: Rebalancer | None = None
        self._partition: Partition | None = None
        self._epoch = -1

    def next_map(
        self,
        cellmap: CellMap,
        cell_load: npt.NDArray[np.float64],
        zone_p99_ms: dict[str, float],
        now: float,
    ) -> tuple[CellMap, list[dict[str, Any]]] | None:
        if self._epoch == cellmap.epoch and self._partition is None:
            return None
        if self._partition is None or self._epoch != cellmap.epoch:
            # A fresh start, or a map this planner did not make (a standby taking over).
            try:
                self._partition = Partition.from_cellmap(cellmap)
            except ValueError as exc:
                # After a failover to a zone that was not the dead one's sibling, regions
                # need not form a k-d tree; line moves wait until they do again.
                log.warning("planner: no rebalancing on map epoch %d: %s", cellmap.epoch, exc)
                self._partition = None
                self._epoch = cellmap.epoch
                return None
            self._epoch = cellmap.epoch
            n = len(cellmap.zones)
            cfg = dataclasses.replace(self.config, min_zones=n, max_zones=n)
            if self._rebalancer is None:
                self._rebalancer = Rebalancer(cfg)
        assert self._rebalancer is not None
        plan = self._rebalancer.plan(self._partition, cell_load, zone_p99_ms, now)
        plan = plan.without_splits()
        if not plan.moves:
            return None
        moves_only = dataclasses.replace(plan, merges=())
        part = self._partition.apply(moves_only)
        new = part.to_cellmap(cellmap)
        if new.zones[: len(cellmap.zones)] != cellmap.zones:
            log.warning("planner: the rebalancer renumbered zones; skipping this round")
            return None
        self._partition = part
        self._epoch = new.epoch
        changes = [
            {
                "type": "cell_move",
                "cells": m.cells.tolist(),
                "from": m.from_zone,
                "to": m.to_zone,
                "reason": m.reason,
            }
            for m in plan.moves
        ]
        return new, changes
