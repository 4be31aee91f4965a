"""Test a world's game code: one zone, or a whole sharded world, in one event loop.

:class:`WorldHarness` runs one zone of a world on a :class:`ManualClock`: ticks happen only
when the test says ``await h.step(n)``, players join and send inputs and messages through
the same calls a gateway makes, and what the world sends to players is collected.
:class:`ClusterHarness` (:mod:`shardworld.testing.cluster`) does the same for every zone of a
sharded world over the in-process bus, so a test can walk an entity across a zone border.

Both step deterministically: the same test gives the same ticks, timers, random numbers and
results every run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from shardworld.store.base import Store
from shardworld.testing.clock import ManualClock
from shardworld.zone.config import ZoneConfig
from shardworld.zone.handler import ZoneHandler
from shardworld.zone.persistence import PENDING, STATE_FIELD
from shardworld.zone.sink import CollectingSink, SnapshotBatch
from shardworld.zone.world import World as WorldFolder
from shardworld.zone.world import load_world
from shardworld.zone.zone import Zone

WorldSpec = str | Path | WorldFolder | type[ZoneHandler]
"""A world folder's path, a loaded folder, or just a handler class (default settings)."""


class SentMessage(NamedTuple):
    """A custom message the world sent to the player of ``entity_id``."""

    entity_id: int
    kind: str
    body: Any


def resolve_world(world: WorldSpec, changes: dict[str, Any]) -> WorldFolder:
    """A loaded world folder with ``changes`` applied to its [zone] settings."""
    if isinstance(world, WorldFolder):
        folder = WorldFolder(
            world.path, world.config, world.handler_class, dict(world.demo), world.sharding
        )
    elif isinstance(world, type) and issubclass(world, ZoneHandler):
        folder = WorldFolder(Path("."), ZoneConfig(), world)
    elif isinstance(world, str | Path):
        folder = load_world(world)
    else:
        raise TypeError(f"world: a folder path, a loaded world or a handler class, not {world!r}")
    if changes:
        folder.config = folder.config.with_(**changes)
    return folder


async def let_tasks_run(turns: int = 8) -> None:
    """Give the event loop ``turns`` turns (background loads, saves, bus consumers)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def open_records(store: Store | str | None, world: str) -> tuple[Store | None, bool]:
    """``store`` as a started store, and whether we opened it (then we close it)."""
    if store is None or isinstance(store, Store):
        return store, False
    from shardworld.store import open_store

    opened = open_store(store, world)
    await opened.start()
    return opened, True


class WorldHarness:
    """One zone of a world, ticked by the test.

    Args:
        world: the world folder's path (``"zones/myworld"``), a loaded folder, or a handler
            class (default :class:`ZoneConfig` settings).
        store: where player records live: a store URL (``"memory://name"``,
            ``"redis://..."``), a started :class:`~shardworld.store.Store`, or None (no
            persistence).
        changes: [zone] settings to override (``tick_hz=10.0``, ``seed=3``, ``world=(x0, y0,
            x1, y1)``, ...).

    Use it as ``async with WorldHarness("zones/myworld") as h:``; ``on_start`` runs on entry.
    """

    def __init__(
        self, world: WorldSpec, /, *, store: Store | str | None = None, **changes: Any
    ) -> None:
        self.folder = resolve_world(world, changes)
        self.clock = ManualClock()
        self.sink = CollectingSink()
        self.zone = Zone(
            self.folder.config, self.folder.make_handler(), sink=self.sink, clock=self.clock
        )
        self.sent: list[SentMessage] = []
        self.zone.message_sink = self._collect
        self._store_spec = store
        self.store: Store | None = None
        self._own_store = False
        self._seq: dict[int, int] = {}

    @property
    def world(self) -> Zone:
        """The zone, as the handler sees it."""
        return self.zone

    @property
    def tick(self) -> int:
        return self.zone.tick

    @property
    def snapshots(self) -> list[SnapshotBatch]:
        """The latest snapshot batches the zone produced (oldest first)."""
        return self.sink.batches

    async def start(self) -> WorldHarness:
        """Open the store (if any) and run ``on_start``."""
        self.store, self._own_store = await open_records(self._store_spec, self.zone.config.name)
        if self.store is not None:
            self.zone.use_store(self.store)
        self.zone.warm_up()
        return self

    async def close(self) -> None:
        """Stop as a zone does (``on_stop``, then every player saved, with a store), then
        close what the harness opened."""
        self.zone.handler.on_stop(self.zone)
        await self.zone.save_players()
        if self.zone.players is not None:
            await self.zone.players.close()
        if self._own_store and self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> WorldHarness:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- players ---------------------------------------------------------------------------

    async def join(self, player_id: int, timeout: float = 5.0) -> int:
        """Join ``player_id`` as a gateway would; returns its entity id.

        With a store, returns once the player's saved record has been applied.
        """
        eid = self.zone.join_player(player_id)
        if self.zone.players is not None:
            deadline = time.monotonic() + timeout
            while self._pending(eid):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the record of player {player_id} did not load")
                await asyncio.sleep(0.001)
        return eid

    def _pending(self, entity_id: int) -> bool:
        row = self.zone.entities.rows_of([entity_id])[0]
        return bool(row >= 0 and self.zone.entities[STATE_FIELD][row] == PENDING)

    def leave(self, entity_id: int) -> None:
        """The player of ``entity_id`` leaves (``on_leave``, its record saved, despawned)."""
        self.zone.leave_player(entity_id)

    def input(
        self, entity_id: int, intent: tuple[float, float] = (0.0, 0.0), actions: int = 0
    ) -> bool:
        """Queue a player input for the next tick (sequence numbers are counted for you)."""
        seq = self._seq.get(entity_id, 0) + 1
        self._seq[entity_id] = seq
        return self.zone.submit_input(entity_id, seq, intent, actions)

    def message(self, entity_id: int, kind: str, body: Any) -> bool:
        """A custom message from the player of ``entity_id``: ``on_messages`` gets it next
        tick."""
        return self.zone.post_message(entity_id, kind, body)

    # --- time ------------------------------------------------------------------------------

    async def step(self, ticks: int = 1) -> None:
        """Run ``ticks`` ticks; the clock moves one tick period each, background tasks
        (loads, saves) get their turns between ticks."""
        period = self.zone.config.tick_period
        for _ in range(ticks):
            await let_tasks_run()
            self.clock.work(period)
            self.zone.step()
        await let_tasks_run()

    async def run_for(self, seconds: float) -> None:
        """Step ``seconds`` of simulation time."""
        await self.step(self.zone.ticks(seconds))

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued player record has been written."""
        if self.zone.players is None:
            return True
        return await self.zone.players.flush(timeout)

    # --- looking ---------------------------------------------------------------------------

    def get(self, entity_id: int, name: str) -> Any:
        """A copy of one field of one entity (a number, or an array for shaped fields)."""
        row = self.zone.entities.require_rows([entity_id])[0]
        value = self.zone.entities[name][row]
        return value.copy() if isinstance(value, np.ndarray) else value.item()

    def set(self, entity_id: int, **values: Any) -> None:
        """Write fields of one entity."""
        self.zone.entities.set([entity_id], **values)

    def alive(self, entity_id: int) -> bool:
        return bool(self.zone.entities.contains([entity_id])[0])

    def messages_to(self, entity_id: int, kind: str | None = None) -> list[SentMessage]:
        """Messages the world sent to the player of ``entity_id`` (of one kind, if given)."""
        return [
            m for m in self.sent if m.entity_id == entity_id and (kind is None or m.kind == kind)
        ]

    def _collect(self, entity_id: int, kind: str, body: Any) -> None:
        self.sent.append(SentMessage(int(entity_id), kind, body))
