"""What a gateway needs from the world, and the in-process implementation of it.

A gateway never touches a zone directly: it talks to a :class:`WorldPort`. Today the port
is :class:`EmbeddedWorld` (the zone runs in the same process and event loop); with the
sharding milestone a bus-backed port routes the same calls to whichever zone owns the
player's entity, and the gateway does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shardworld.zone.sink import SnapshotBatch
from shardworld.zone.zone import Zone

SnapshotListener = Callable[[SnapshotBatch], None]
MessageListener = Callable[[int, str, Any], None]
"""(entity id, kind, body): a custom message from the world to the player of that entity."""


@dataclass(frozen=True)
class WorldInfo:
    """What a client needs to read snapshots (sent in WELCOME)."""

    name: str
    world: tuple[float, float, float, float]
    tick_hz: float
    snapshot_hz: float
    pos_quantum: float
    pub_fields: tuple[dict[str, Any], ...]
    own_fields: tuple[dict[str, Any], ...]
    pub_width: int
    own_width: int
    k_max: int


class WorldPort(Protocol):
    """The world as a gateway sees it. Every call is non-blocking."""

    def info(self) -> WorldInfo: ...

    async def join(self, player_id: int, entity_id: int | None = None) -> tuple[int, bool]:
        """Spawn the player's entity, or reattach ``entity_id`` if it is still alive.

        Returns (entity id, resumed). Raises if the world cannot take the player.
        """
        ...

    def leave(self, entity_id: int) -> None:
        """Despawn the player's entity (after its linger period)."""
        ...

    def alive(self, entity_id: int) -> bool: ...

    def submit_input(
        self, entity_id: int, seq: int, ix: float, iy: float, actions: int
    ) -> bool: ...

    def send_message(self, entity_id: int, kind: str, body: Any) -> None:
        """A custom message from the player of ``entity_id`` to the world's handler."""
        ...

    def request_resync(self, entity_id: int) -> None: ...

    def subscribe(self, snapshots: SnapshotListener, messages: MessageListener) -> None:
        """Receive every snapshot batch and every world → player message."""
        ...

    def server_time(self) -> float: ...


def world_info(z: Zone) -> WorldInfo:
    """What WELCOME tells clients about the world ``z`` belongs to."""
    cfg = z.config
    pub = tuple(z.schema[n].describe() for n in z.public_fields)
    own = tuple(z.schema[n].describe() for n in z.owner_fields)
    return WorldInfo(
        name=cfg.name,
        world=z.bounds,
        tick_hz=cfg.tick_hz,
        snapshot_hz=cfg.snapshot_hz,
        pos_quantum=cfg.pos_quantum,
        pub_fields=pub,
        own_fields=own,
        pub_width=z.public_width,
        own_width=z.owner_width,
        k_max=cfg.k_max,
    )


class EmbeddedWorld:
    """A :class:`WorldPort` over one zone in this process (the embedded default)."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self._snapshot_listeners: list[SnapshotListener] = []
        self._message_listeners: list[MessageListener] = []
        zone.sink = self
        zone.message_sink = self._deliver_message

    # the zone's sink
    def emit(self, batch: SnapshotBatch) -> None:
        for listener in self._snapshot_listeners:
            listener(batch)

    def _deliver_message(self, entity_id: int, kind: str, body: Any) -> None:
        for listener in self._message_listeners:
            listener(entity_id, kind, body)

    def info(self) -> WorldInfo:
        return world_info(self.zone)

    async def join(self, player_id: int, entity_id: int | None = None) -> tuple[int, bool]:
        if entity_id is not None and self.alive(entity_id):
            return entity_id, True
        return self.zone.join_player(player_id), False

    def leave(self, entity_id: int) -> None:
        self.zone.leave_player(entity_id)

    def alive(self, entity_id: int) -> bool:
        return bool(self.zone.entities.rows_of([entity_id])[0] >= 0)

    def submit_input(self, entity_id: int, seq: int, ix: float, iy: float, actions: int) -> bool:
        return self.zone.inputs.push(entity_id, seq, ix, iy, actions)

    def send_message(self, entity_id: int, kind: str, body: Any) -> None:
        self.zone.post_message(entity_id, kind, body)

    def request_resync(self, entity_id: int) -> None:
        self.zone.request_resync(entity_id)

    def subscribe(self, snapshots: SnapshotListener, messages: MessageListener) -> None:
        self._snapshot_listeners.append(snapshots)
        self._message_listeners.append(messages)

    def server_time(self) -> float:
        return self.zone.clock.now()
