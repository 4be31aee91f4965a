"""Messages between zones and gateways on the bus: msgpack envelopes around packed arrays.

Every message is a msgpack array whose first element is a :class:`Kind`. Bulk data (entity
rows, ids, snapshot payloads) travels as raw little-endian array bytes inside it, never as
one msgpack object per entity. Decoding checks every type and length and raises
:class:`WireError` (and nothing else) on anything malformed: a zone drops such a message,
counts it and carries on.

The layout of each message is documented in docs/sharding.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from shardworld.sharding.cellmap import CellMap
from shardworld.zone.sink import SnapshotBatch


class WireError(ValueError):
    """A bus message could not be decoded."""


class Kind(enum.IntEnum):
    # to a zone, real-time topic
    INPUTS = 1
    PLAYER_MESSAGE = 2
    JOIN = 3
    LEAVE = 4
    RESYNC = 5
    GHOSTS = 6
    # to a zone, ownership topic
    HANDOFF = 10
    BOUNCE = 11
    LEFT = 12
    # to a gateway
    SNAPSHOTS = 20
    MESSAGES = 21
    JOINED = 22
    ROUTE = 23
    # world-wide
    HEARTBEAT = 30
    MAP = 31
    ADOPT = 32


@dataclass(frozen=True, slots=True)
class Inputs:
    """Player inputs for one zone, batched by a gateway (or forwarded by a zone)."""

    ids: npt.NDArray[np.uint64]
    seq: npt.NDArray[np.uint32]
    intent: npt.NDArray[np.float32]  # (n, 2)
    actions: npt.NDArray[np.uint32]


@dataclass(frozen=True, slots=True)
class PlayerMessageIn:
    entity: int
    kind: str
    body: Any


@dataclass(frozen=True, slots=True)
class Join:
    request: int
    gateway: int
    player: int
    entity: int | None  # resume this entity if it is still alive


@dataclass(frozen=True, slots=True)
class Leave:
    entity: int


@dataclass(frozen=True, slots=True)
class Resync:
    entity: int


@dataclass(frozen=True, slots=True)
class Ghosts:
    """Every entity of ``source`` within ghost range of the receiver's region, at ``tick``."""

    epoch: int
    source: int
    tick: int
    rows: bytes  # packed rows of the ghost dtype
    removed: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    #: True: ``rows`` is the whole set (a keyframe). False: only the rows that changed since
    #: the sender's previous message, and ``removed`` lists those no longer in range.
    full: bool = True


@dataclass(frozen=True, slots=True)
class Handoff:
    """Whole rows moving from ``source`` to ``target`` (or coming back, as a BOUNCE)."""

    epoch: int
    source: int
    target: int
    tick: int
    fingerprint: str
    rows: bytes  # packed rows of the full row dtype
    bounce: bool = False


@dataclass(frozen=True, slots=True)
class Messages:
    """World → player custom messages for players on one gateway."""

    items: list[tuple[int, str, Any]]


@dataclass(frozen=True, slots=True)
class Joined:
    request: int
    entity: int
    resumed: bool
    zone: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """These entities are now simulated by ``zone``: send their inputs there."""

    zone: int
    ids: npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    zone: int
    name: str
    epoch: int
    tick: int
    entities: int
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Left:
    """A note a zone writes to its own ownership topic: these entities left at ``tick``.

    Normal operation ignores it; a zone adopting a dead zone's cells replays the dead zone's
    topic from its last checkpoint, and these notes say which checkpointed entities had
    already gone elsewhere (so they are not brought back twice)."""

    source: int
    tick: int
    ids: npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class Adopt:
    """The coordinator to every zone: ``adopter`` takes over dead zone ``dead``'s entities
    from its last checkpoint (its cells are ``adopter``'s from map ``epoch`` on)."""

    epoch: int
    dead: int
    adopter: int


@dataclass(frozen=True, slots=True)
class MapUpdate:
    """A new cell map (from the coordinator): apply it at the next tick boundary."""

    cellmap: CellMap


Message = (
    Inputs
    | PlayerMessageIn
    | Join
    | Leave
    | Resync
    | Ghosts
    | Handoff
    | SnapshotBatch
    | Messages
    | Joined
    | Route
    | Heartbeat
    | MapUpdate
    | Left
    | Adopt
)


def _pack(obj: list[Any]) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def encode(msg: Message) -> bytes:
    """One message as bus bytes."""
    t = type(msg)
    if t is Inputs:
        assert isinstance(msg, Inputs)
        return _pack(
            [
                Kind.INPUTS,
                np.ascontiguousarray(msg.ids, "<u8").tobytes(),
                np.ascontiguousarray(msg.seq, "<u4").tobytes(),
                np.ascontiguousarray(msg.intent, "<f4").tobytes(),
                np.ascontiguousarray(msg.actions, "<u4").tobytes(),
            ]
        )
    if t is PlayerMessageIn:
        assert isinstance(msg, PlayerMessageIn)
        return _pack([Kind.PLAYER_MESSAGE, msg.entity, msg.kind, msg.body])
    if t is Join:
        assert isinstance(msg, Join)
        return _pack([Kind.JOIN, msg.request, msg.gateway, msg.player, msg.entity])
    if t is Leave:
        assert isinstance(msg, Leave)
        return _pack([Kind.LEAVE, msg.entity])
    if t is Resync:
        assert isinstance(msg, Resync)
        return _pack([Kind.RESYNC, msg.entity])
    if t is Ghosts:
        assert isinstance(msg, Ghosts)
        return _pack(
            [
                Kind.GHOSTS,
                msg.epoch,
                msg.source,
                msg.tick,
                msg.rows,
                np.ascontiguousarray(msg.removed, "<u8").tobytes(),
                msg.full,
            ]
        )
    if t is Handoff:
        assert isinstance(msg, Handoff)
        kind = Kind.BOUNCE if msg.bounce else Kind.HANDOFF
        return _pack([kind, msg.epoch, msg.source, msg.target, msg.tick, msg.fingerprint, msg.rows])
    if t is SnapshotBatch:
        assert isinstance(msg, SnapshotBatch)
        return _pack(
            [
                Kind.SNAPSHOTS,
                msg.zone,
                msg.tick,
                np.ascontiguousarray(msg.observer_ids, "<u8").tobytes(),
                np.ascontiguousarray(msg.owners, "<u8").tobytes(),
                np.ascontiguousarray(msg.input_acks, "<u4").tobytes(),
                np.ascontiguousarray(msg.off, "<i8").tobytes(),
                np.ascontiguousarray(msg.buf).tobytes(),
            ]
        )
    if t is Messages:
        assert isinstance(msg, Messages)
        return _pack([Kind.MESSAGES, [[e, k, b] for e, k, b in msg.items]])
    if t is Joined:
        assert isinstance(msg, Joined)
        return _pack([Kind.JOINED, msg.request, msg.entity, msg.resumed, msg.zone, msg.error])
    if t is Route:
        assert isinstance(msg, Route)
        return _pack([Kind.ROUTE, msg.zone, np.ascontiguousarray(msg.ids, "<u8").tobytes()])
    if t is Heartbeat:
        assert isinstance(msg, Heartbeat)
        return _pack(
            [Kind.HEARTBEAT, msg.zone, msg.name, msg.epoch, msg.tick, msg.entities, msg.report]
        )
    if t is Left:
        assert isinstance(msg, Left)
        return _pack(
            [Kind.LEFT, msg.source, msg.tick, np.ascontiguousarray(msg.ids, "<u8").tobytes()]
        )
    if t is Adopt:
        assert isinstance(msg, Adopt)
        return _pack([Kind.ADOPT, msg.epoch, msg.dead, msg.adopter])
    if t is MapUpdate:
        assert isinstance(msg, MapUpdate)
        return _pack([Kind.MAP, msg.cellmap.to_bytes()])
    raise TypeError(f"not a bus message: {t.__name__}")


def _int(v: Any, what: str) -> int:
    if type(v) is not int:
        raise WireError(f"{what}: expected an integer, got {type(v).__name__}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise WireError(f"{what}: expected bytes, got {type(v).__name__}")
    return v


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise WireError(f"{what}: expected a string, got {type(v).__name__}")
    return v


def _array(data: bytes, dtype: str, what: str, width: int = 1) -> npt.NDArray[Any]:
    item = np.dtype(dtype).itemsize * width
    if len(data) % item:
        raise WireError(f"{what}: {len(data)} bytes is not a multiple of {item}")
    # A writable copy: kernels compile separately for read-only arrays.
    arr = np.frombuffer(data, dtype=dtype).astype(np.dtype(dtype).newbyteorder("="), copy=True)
    return arr.reshape(-1, width) if width > 1 else arr


def _expect(items: list[Any], n: int, name: str) -> None:
    if len(items) != n:
        raise WireError(f"{name}: expected {n} elements, got {len(items)}")


def decode(data: bytes) -> Message:
    """Bus bytes back into a message. Raises :class:`WireError` on anything malformed."""
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise WireError(f"not msgpack: {exc}") from None
    if not isinstance(items, list) or not items:
        raise WireError("a bus message is a non-empty msgpack array")
    try:
        kind = Kind(_int(items[0], "kind"))
    except ValueError:
        raise WireError(f"unknown message kind {items[0]!r}") from None
    if kind is Kind.INPUTS:
        _expect(items, 5, "INPUTS")
        ids = _array(_bytes(items[1], "ids"), "<u8", "ids")
        seq = _array(_bytes(items[2], "seq"), "<u4", "seq")
        intent = _array(_bytes(items[3], "intent"), "<f4", "intent", 2)
        actions = _array(_bytes(items[4], "actions"), "<u4", "actions")
        if not len(ids) == len(seq) == len(actions) == intent.shape[0]:
            raise WireError("INPUTS: columns of different lengths")
        return Inputs(ids, seq, intent.reshape(-1, 2), actions)
    if kind is Kind.PLAYER_MESSAGE:
        _expect(items, 4, "PLAYER_MESSAGE")
        return PlayerMessageIn(_int(items[1], "entity"), _str(items[2], "kind"), items[3])
    if kind is Kind.JOIN:
        _expect(items, 5, "JOIN")
        ent = items[4]
        return Join(
            _int(items[1], "request"),
            _int(items[2], "gateway"),
            _int(items[3], "player"),
            None if ent is None else _int(ent, "entity"),
        )
    if kind is Kind.LEAVE:
        _expect(items, 2, "LEAVE")
        return Leave(_int(items[1], "entity"))
    if kind is Kind.RESYNC:
        _expect(items, 2, "RESYNC")
        return Resync(_int(items[1], "entity"))
    if kind is Kind.GHOSTS:
        _expect(items, 7, "GHOSTS")
        if type(items[6]) is not bool:
            raise WireError("GHOSTS: full must be a boolean")
        return Ghosts(
            _int(items[1], "epoch"),
            _int(items[2], "source"),
            _int(items[3], "tick"),
            _bytes(items[4], "rows"),
            _array(_bytes(items[5], "removed"), "<u8", "removed"),
            items[6],
        )
    if kind is Kind.HANDOFF or kind is Kind.BOUNCE:
        _expect(items, 7, kind.name)
        return Handoff(
            _int(items[1], "epoch"),
            _int(items[2], "source"),
            _int(items[3], "target"),
            _int(items[4], "tick"),
            _str(items[5], "fingerprint"),
            _bytes(items[6], "rows"),
            bounce=kind is Kind.BOUNCE,
        )
    if kind is Kind.SNAPSHOTS:
        _expect(items, 8, "SNAPSHOTS")
        obs = _array(_bytes(items[3], "observers"), "<u8", "observers")
        owners = _array(_bytes(items[4], "owners"), "<u8", "owners")
        acks = _array(_bytes(items[5], "acks"), "<u4", "acks")
        off = _array(_bytes(items[6], "off"), "<i8", "off")
        buf = _array(_bytes(items[7], "buf"), "u1", "buf")
        n = len(obs)
        if len(owners) != n or len(acks) != n or len(off) != n + 1:
            raise WireError("SNAPSHOTS: columns of different lengths")
        if n and (off[0] != 0 or off[-1] != len(buf) or np.any(np.diff(off) < 0)):
            raise WireError("SNAPSHOTS: offsets do not cover the buffer")
        return SnapshotBatch(
            zone=_str(items[1], "zone"),
            tick=_int(items[2], "tick"),
            observer_ids=obs,
            owners=owners,
            input_acks=acks,
            buf=buf,
            off=off,
        )
    if kind is Kind.MESSAGES:
        _expect(items, 2, "MESSAGES")
        if not isinstance(items[1], list):
            raise WireError("MESSAGES: expected a list")
        out: list[tuple[int, str, Any]] = []
        for it in items[1]:
            if not isinstance(it, list) or len(it) != 3:
                raise WireError("MESSAGES: each item is [entity, kind, body]")
            out.append((_int(it[0], "entity"), _str(it[1], "kind"), it[2]))
        return Messages(out)
    if kind is Kind.JOINED:
        _expect(items, 6, "JOINED")
        err = items[5]
        if type(items[3]) is not bool:
            raise WireError("JOINED: resumed must be a boolean")
        return Joined(
            _int(items[1], "request"),
            _int(items[2], "entity"),
            items[3],
            _int(items[4], "zone"),
            None if err is None else _str(err, "error"),
        )
    if kind is Kind.ROUTE:
        _expect(items, 3, "ROUTE")
        return Route(_int(items[1], "zone"), _array(_bytes(items[2], "ids"), "<u8", "ids"))
    if kind is Kind.HEARTBEAT:
        _expect(items, 7, "HEARTBEAT")
        if not isinstance(items[6], dict):
            raise WireError("HEARTBEAT: report must be a map")
        return Heartbeat(
            _int(items[1], "zone"),
            _str(items[2], "name"),
            _int(items[3], "epoch"),
            _int(items[4], "tick"),
            _int(items[5], "entities"),
            items[6],
        )
    if kind is Kind.LEFT:
        _expect(items, 4, "LEFT")
        return Left(
            _int(items[1], "source"),
            _int(items[2], "tick"),
            _array(_bytes(items[3], "ids"), "<u8", "ids"),
        )
    if kind is Kind.ADOPT:
        _expect(items, 4, "ADOPT")
        return Adopt(_int(items[1], "epoch"), _int(items[2], "dead"), _int(items[3], "adopter"))
    if kind is Kind.MAP:
        _expect(items, 2, "MAP")
        try:
            return MapUpdate(CellMap.from_bytes(_bytes(items[1], "map")))
        except ValueError as exc:
            raise WireError(f"MAP: {exc}") from None
    raise WireError(f"unhandled message kind {kind!r}")  # pragma: no cover - enum is closed
