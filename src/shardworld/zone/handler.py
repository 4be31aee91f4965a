"""The studio's side of a zone: a handler with a few hooks, systems over arrays.

A world's game code subclasses :class:`ZoneHandler`::

    class Handler(ZoneHandler):
        fields = (Field("health", "uint16", scope=Scope.PUBLIC),)

        def on_start(self, world: World) -> None:
            world.spawn_npcs(500, kind=2)

        def on_tick(self, world: World, tick: int, inputs: InputBatch) -> None:
            hp = world.entities["health"]
            hp[hp < 100] += 1          # whole columns at once, never a loop over entities

Hooks receive whole batches; there is no per-entity or per-message callback on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shardworld.entities.schema import Field

if TYPE_CHECKING:
    from shardworld.zone.zone import Zone


@dataclass(frozen=True, slots=True)
class PlayerMessage:
    """A world-specific message from the player who controls ``entity_id``."""

    entity_id: int
    kind: str
    body: Any


@dataclass(frozen=True)
class InputBatch:
    """The player inputs applied this tick, in arrival order (arrays of equal length).

    ``rows`` are rows of ``world.entities`` at the start of this tick's systems: use them
    before you spawn or despawn anything.
    """

    ids: npt.NDArray[np.uint64]
    rows: npt.NDArray[np.int32]
    seq: npt.NDArray[np.uint32]
    intent: npt.NDArray[np.float32]
    actions: npt.NDArray[np.uint32]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def empty(cls) -> InputBatch:
        return cls(
            np.zeros(0, np.uint64),
            np.zeros(0, np.int32),
            np.zeros(0, np.uint32),
            np.zeros((0, 2), np.float32),
            np.zeros(0, np.uint32),
        )


class ZoneHandler:
    """Override the hooks your world needs; every default does nothing.

    ``fields`` are the world's own component fields, added after the built-in ones.
    ``persistent`` names the fields saved per player in the store (loaded on join, saved on
    leave and every ``persist_every_s``). Methods decorated with
    :func:`shardworld.zone.timers.every` run periodically in every zone.
    """

    fields: tuple[Field, ...] = ()
    persistent: tuple[str, ...] = ()

    def on_start(self, world: Zone) -> None:
        """Called once before the first tick: spawn the world's NPCs, load data."""

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        """Called every tick after movement: the world's systems, over whole columns."""

    def on_join(self, world: Zone, player_id: int) -> int:
        """A player joins: spawn its entity and return the id. Default: a random free spot."""
        pos = world.random_points(1, margin=1.0)[0]
        return world.spawn_player(player_id, (float(pos[0]), float(pos[1])))

    def on_leave(self, world: Zone, entity_id: int) -> None:
        """A player's entity is about to be removed (its linger period is over).

        Its ``persistent`` fields are saved after this returns.
        """

    def on_player_loaded(self, world: Zone, entity_id: int, record: dict[str, Any]) -> None:
        """A returning player's saved fields were just applied to ``entity_id``.

        ``record`` is the saved record: ``{field: value}`` as plain Python values (lists for
        fields with a shape), plus ``"_v"`` (record format) and ``"_tick"`` (when it was
        saved). Runs once per join, only when a record was found; use it to derive state
        that is not saved itself, or to migrate records of an older layout.
        """

    def on_messages(self, world: Zone, tick: int, messages: list[PlayerMessage]) -> None:
        """The custom messages players sent since the last tick, in arrival order.

        Answer with ``world.send_message(entity_id, kind, body)``.
        """

    def on_stop(self, world: Zone) -> None:
        """Called once when the zone stops."""
