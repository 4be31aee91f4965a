"""Snapshot payloads, client side: a pure decoder and a mirror of what one observer sees.

The layout is specified in ``docs/snapshot-format.md`` and written by
:func:`shardworld.kernels.snapshot.encode_snapshots`. This module needs only the standard
library and numpy (no numba, no asyncio), so bots, tests and the client SDK can use it.

Every malformed payload — truncated, with trailing bytes, reserved flag bits set, an
``owned`` byte other than 0 or 1 — raises :class:`SnapshotDecodeError`; a payload that
decodes but does not fit the mirror's state (an unknown handle, a handle spawned twice)
raises its subclass :class:`SnapshotMirrorError` and leaves the mirror unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

FLAG_RESET = 0x01
FLAG_WIDE = 0x02
_KNOWN_FLAGS = FLAG_RESET | FLAG_WIDE
HEADER_SIZE = 21

_HEADER = struct.Struct("<BIiiHHHH")
_SPAWN_FIXED = struct.Struct("<QHhhB")
_MOVE_REL = struct.Struct("<hh")


class SnapshotDecodeError(ValueError):
    """A payload is not a well-formed snapshot for the given blob widths."""


class SnapshotMirrorError(SnapshotDecodeError):
    """A well-formed payload does not apply to the mirror's current state."""


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    flags: int
    tick: int
    """Low 32 bits of the zone tick."""
    base_qx: int
    base_qy: int
    n_despawn: int
    n_spawn: int
    n_move: int
    n_update: int

    @property
    def reset(self) -> bool:
        return bool(self.flags & FLAG_RESET)

    @property
    def wide(self) -> bool:
        return bool(self.flags & FLAG_WIDE)


@dataclass(frozen=True, slots=True)
class Spawn:
    handle: int
    id: int
    kind: int
    rx: int
    ry: int
    owned: bool
    pub: bytes
    own: bytes | None
    """Owner-scoped fields; ``None`` unless ``owned``."""


@dataclass(frozen=True, slots=True)
class Move:
    handle: int
    rx: int
    ry: int


@dataclass(frozen=True, slots=True)
class Update:
    handle: int
    owned: bool
    pub: bytes
    own: bytes | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    header: SnapshotHeader
    despawns: tuple[int, ...]
    spawns: tuple[Spawn, ...]
    moves: tuple[Move, ...]
    updates: tuple[Update, ...]


Payload = bytes | bytearray | memoryview | npt.NDArray[np.uint8]


def _as_bytes(payload: Payload) -> bytes:
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise SnapshotDecodeError("a payload array must be 1-D uint8")
        return payload.tobytes()
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise SnapshotDecodeError(f"cannot decode a payload of type {type(payload).__name__}")


def _need(data: bytes, at: int, size: int, what: str) -> None:
    if at + size > len(data):
        raise SnapshotDecodeError(
            f"payload truncated in {what}: need {size} bytes at offset {at}, have {len(data)}"
        )


def _handles(data: bytes, at: int, count: int, wide: bool) -> tuple[int, ...]:
    if wide:
        return struct.unpack_from(f"<{count}H", data, at)
    return tuple(data[at : at + count])


def decode_snapshot(payload: Payload, pub_width: int, own_width: int) -> Snapshot:
    """Parse one observer's payload.

    ``pub_width`` (W) and ``own_width`` (W2) are the byte widths of the public and
    owner-scoped field blobs, which the payload does not carry (they are fixed per zone
    schema). Raises :class:`SnapshotDecodeError` on any malformed input.
    """
    if pub_width < 0 or own_width < 0:
        raise ValueError("blob widths must be >= 0")
    data = _as_bytes(payload)
    _need(data, 0, HEADER_SIZE, "the header")
    flags, tick, bqx, bqy, n_despawn, n_spawn, n_move, n_update = _HEADER.unpack_from(data, 0)
    if flags & ~_KNOWN_FLAGS:
        raise SnapshotDecodeError(f"reserved flag bits set: {flags:#04x}")
    header = SnapshotHeader(flags, tick, bqx, bqy, n_despawn, n_spawn, n_move, n_update)
    wide = header.wide
    hsz = 2 if wide else 1
    hfmt = "<H" if wide else "<B"
    at = HEADER_SIZE

    _need(data, at, n_despawn * hsz, "despawns")
    despawns = _handles(data, at, n_despawn, wide)
    at += n_despawn * hsz

    spawns: list[Spawn] = []
    spawn_fixed = hsz + _SPAWN_FIXED.size + pub_width
    for _ in range(n_spawn):
        _need(data, at, spawn_fixed, "a spawn")
        (handle,) = struct.unpack_from(hfmt, data, at)
        ident, kind, rx, ry, owned = _SPAWN_FIXED.unpack_from(data, at + hsz)
        at += hsz + _SPAWN_FIXED.size
        if owned > 1:
            raise SnapshotDecodeError(f"spawn owned byte must be 0 or 1, got {owned}")
        pub = data[at : at + pub_width]
        at += pub_width
        own: bytes | None = None
        if owned:
            _need(data, at, own_width, "a spawn's owner fields")
            own = data[at : at + own_width]
            at += own_width
        spawns.append(Spawn(handle, ident, kind, rx, ry, bool(owned), pub, own))

    move_size = hsz + _MOVE_REL.size
    _need(data, at, n_move * move_size, "moves")
    moves: list[Move] = []
    for _ in range(n_move):
        (handle,) = struct.unpack_from(hfmt, data, at)
        rx, ry = _MOVE_REL.unpack_from(data, at + hsz)
        at += move_size
        moves.append(Move(handle, rx, ry))

    updates: list[Update] = []
    update_fixed = hsz + 1 + pub_width
    for _ in range(n_update):
        _need(data, at, update_fixed, "an update")
        (handle,) = struct.unpack_from(hfmt, data, at)
        owned = data[at + hsz]
        at += hsz + 1
        if owned > 1:
            raise SnapshotDecodeError(f"update owned byte must be 0 or 1, got {owned}")
        pub = data[at : at + pub_width]
        at += pub_width
        own = None
        if owned:
            _need(data, at, own_width, "an update's owner fields")
            own = data[at : at + own_width]
            at += own_width
        updates.append(Update(handle, bool(owned), pub, own))

    if at != len(data):
        raise SnapshotDecodeError(f"{len(data) - at} trailing bytes after the last section")
    return Snapshot(header, despawns, tuple(spawns), tuple(moves), tuple(updates))


@dataclass(frozen=True, slots=True)
class MirrorEntity:
    """What the client knows about one visible entity."""

    id: int
    kind: int
    qx: int
    """Absolute quantised position (metres = q * pos_quantum)."""
    qy: int
    pub: bytes
    own: bytes | None
    """Owner-scoped fields; ``None`` unless this observer's player owns the entity."""


class SnapshotMirror:
    """The client's copy of one observer's visible set, fed only the payloads.

    Usage::

        mirror = SnapshotMirror(pub_width=W, own_width=W2)
        for payload in stream:
            mirror.apply(payload)
        mirror[handle].qx, mirror.handle_of(entity_id)

    ``apply`` is all-or-nothing: on any error the mirror keeps its previous state.
    """

    def __init__(self, pub_width: int, own_width: int) -> None:
        if pub_width < 0 or own_width < 0:
            raise ValueError("blob widths must be >= 0")
        self.pub_width = pub_width
        self.own_width = own_width
        self._by_handle: dict[int, MirrorEntity] = {}
        self._by_id: dict[int, int] = {}
        self.tick: int | None = None
        self.base_qx = 0
        self.base_qy = 0

    def apply(self, payload: Payload) -> Snapshot:
        """Decode ``payload`` and apply it; returns the decoded snapshot."""
        snap = decode_snapshot(payload, self.pub_width, self.own_width)
        self.apply_decoded(snap)
        return snap

    def apply_decoded(self, snap: Snapshot) -> None:
        """Apply an already decoded snapshot: reset, despawns, spawns, moves, updates."""
        h = snap.header
        by_handle = {} if h.reset else dict(self._by_handle)
        by_id = {} if h.reset else dict(self._by_id)
        for handle in snap.despawns:
            gone = by_handle.pop(handle, None)
            if gone is None:
                raise SnapshotMirrorError(f"despawn of unknown handle {handle}")
            del by_id[gone.id]
        for s in snap.spawns:
            if s.handle in by_handle:
                raise SnapshotMirrorError(f"spawn onto handle {s.handle}, which is in use")
            if s.id in by_id:
                raise SnapshotMirrorError(f"spawn of id {s.id}, already at handle {by_id[s.id]}")
            by_handle[s.handle] = MirrorEntity(
                s.id, s.kind, h.base_qx + s.rx, h.base_qy + s.ry, s.pub, s.own
            )
            by_id[s.id] = s.handle
        for mv in snap.moves:
            old = by_handle.get(mv.handle)
            if old is None:
                raise SnapshotMirrorError(f"move of unknown handle {mv.handle}")
            by_handle[mv.handle] = MirrorEntity(
                old.id, old.kind, h.base_qx + mv.rx, h.base_qy + mv.ry, old.pub, old.own
            )
        for up in snap.updates:
            old = by_handle.get(up.handle)
            if old is None:
                raise SnapshotMirrorError(f"update of unknown handle {up.handle}")
            by_handle[up.handle] = MirrorEntity(old.id, old.kind, old.qx, old.qy, up.pub, up.own)
        self._by_handle = by_handle
        self._by_id = by_id
        self.tick = h.tick
        self.base_qx = h.base_qx
        self.base_qy = h.base_qy

    def __len__(self) -> int:
        return len(self._by_handle)

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_handle)

    def __contains__(self, handle: object) -> bool:
        return handle in self._by_handle

    def __getitem__(self, handle: int) -> MirrorEntity:
        return self._by_handle[handle]

    @property
    def entities(self) -> Mapping[int, MirrorEntity]:
        """Handle -> entity (a read-only view)."""
        return MappingProxyType(self._by_handle)

    def handle_of(self, entity_id: int) -> int | None:
        """The handle naming ``entity_id`` for this observer, or ``None`` if not visible."""
        return self._by_id.get(entity_id)

    def by_id(self, entity_id: int) -> MirrorEntity | None:
        handle = self._by_id.get(entity_id)
        return None if handle is None else self._by_handle[handle]

    def ids(self) -> set[int]:
        return set(self._by_id)
