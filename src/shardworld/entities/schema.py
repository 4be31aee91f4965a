"""Component fields: declared once, and storage, ghosts, handoffs and the wire follow.

A studio declares its own fields exactly like the built-in ones::

    from shardworld.entities import Field, Scope, Schema

    schema = Schema.default().extend(
        Field("health", "uint16", scope=Scope.PUBLIC),
        Field("gold", "uint32", scope=Scope.OWNER),
        Field("speed_hacks", "uint8", scope=Scope.SERVER),
    )

Every field becomes one numpy column in :class:`~shardworld.entities.store.EntityStore`; the
scope decides who else ever sees it.
"""

from __future__ import annotations

import enum
import keyword
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np


class Scope(enum.Enum):
    """Who a field is replicated to.

    Every scope travels with the entity in handoffs and checkpoints (the whole row moves).

    - ``SERVER``: never leaves the zone except with its entity (anti-cheat state, AI memory).
    - ``GHOST``: also copied to neighbour zones (their server logic can read it), never to clients.
    - ``OWNER``: sent to the player who owns the entity (``owner`` column equals the player's id),
      and ghosted, so the owner still gets it while its entity is across a border.
    - ``PUBLIC``: sent to every player who has the entity in interest range, and ghosted.
    """

    SERVER = "server"
    GHOST = "ghost"
    OWNER = "owner"
    PUBLIC = "public"

    @property
    def ghosted(self) -> bool:
        """Whether neighbour zones receive this field in ghost updates."""
        return self is not Scope.SERVER


#: The dtypes every client language can read (see docs/protocol.md).
PORTABLE_DTYPES = (
    "|b1",
    "|u1",
    "|i1",
    "<u2",
    "<i2",
    "<f2",
    "<u4",
    "<i4",
    "<f4",
    "<u8",
    "<i8",
    "<f8",
)

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
RESERVED = frozenset({"id"})


@dataclass(frozen=True)
class Field:
    """One component field: a name, a fixed-size numpy dtype, a per-entity shape and a scope.

    ``shape`` is the per-entity shape: ``()`` for a scalar, ``(2,)`` for a 2-vector. The column
    that stores it has shape ``(capacity, *shape)``. Only fixed-size numeric dtypes are allowed
    so that a row can be packed into bytes without Python per entity.
    """

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...] = ()
    scope: Scope = Scope.PUBLIC
    doc: str = ""

    def __init__(
        self,
        name: str,
        dtype: str | type[np.generic] | np.dtype[np.generic],
        shape: tuple[int, ...] | int = (),
        scope: Scope = Scope.PUBLIC,
        doc: str = "",
    ) -> None:
        if not name or not set(name) <= _NAME_OK or name[0].isdigit() or keyword.iskeyword(name):
            raise ValueError(f"field name {name!r}: use lower_snake_case letters, digits and _")
        if name in RESERVED:
            raise ValueError(f"field name {name!r} is reserved")
        dt = np.dtype(dtype)
        if dt.kind not in "biuf" or dt.itemsize == 0:
            raise ValueError(f"field {name!r}: dtype {dt} is not a fixed-size number type")
        # Columns are little-endian so packed rows mean the same bytes on every machine.
        dt = dt.newbyteorder("<") if dt.byteorder == ">" else dt
        if dt.str not in PORTABLE_DTYPES:
            raise ValueError(
                f"field {name!r}: dtype {dt} has no portable wire form; "
                f"use one of {', '.join(PORTABLE_DTYPES)}"
            )
        shp = (shape,) if isinstance(shape, int) else tuple(shape)
        if any(s <= 0 for s in shp):
            raise ValueError(f"field {name!r}: shape {shp} must be positive")
        if not isinstance(scope, Scope):
            raise TypeError(f"field {name!r}: scope must be a Scope, not {scope!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dt)
        object.__setattr__(self, "shape", shp)
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "doc", doc)

    @property
    def nbytes(self) -> int:
        """Bytes one entity's value takes when packed."""
        return int(self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64)))

    def describe(self) -> dict[str, object]:
        """A plain description (for the welcome message and docs): name, dtype, shape, scope."""
        return {
            "name": self.name,
            "dtype": self.dtype.str,
            "shape": list(self.shape),
            "scope": self.scope.value,
        }


# The built-in fields every world has. The kernels depend on their dtypes.
POS = Field("pos", np.float32, (2,), Scope.PUBLIC, "position in metres (x, y)")
VEL = Field("vel", np.float32, (2,), Scope.GHOST, "velocity in m/s")
KIND = Field("kind", np.uint16, (), Scope.PUBLIC, "entity kind, defined by the world")
OWNER = Field("owner", np.uint64, (), Scope.GHOST, "id of the controlling player, 0 for NPCs")
INTENT = Field("intent", np.float32, (2,), Scope.SERVER, "player's movement intent, |v| <= 1")
TARGET = Field("target", np.float32, (2,), Scope.SERVER, "NPC target point")
MODE = Field("mode", np.uint8, (), Scope.GHOST, "0 idle, 1 player intent, 2 seek target")
MAX_SPEED = Field("max_speed", np.float32, (), Scope.SERVER, "m/s")
MAX_ACCEL = Field("max_accel", np.float32, (), Scope.SERVER, "m/s^2")
OBSERVER = Field("observer", np.uint8, (), Scope.GHOST, "1: a player's viewpoint, gets snapshots")
INPUT_SEQ = Field("input_seq", np.uint32, (), Scope.SERVER, "last input sequence applied")
ACTIONS = Field("actions", np.uint32, (), Scope.SERVER, "action bits of the last input")
GATEWAY = Field(
    "gateway", np.uint16, (), Scope.SERVER, "index of the gateway holding the player's connection"
)

BUILTIN_FIELDS: tuple[Field, ...] = (
    POS,
    VEL,
    KIND,
    OWNER,
    INTENT,
    TARGET,
    MODE,
    MAX_SPEED,
    MAX_ACCEL,
    OBSERVER,
    INPUT_SEQ,
    ACTIONS,
    GATEWAY,
)


@dataclass(frozen=True)
class Schema:
    """An ordered set of fields. Immutable: :meth:`extend` returns a new schema.

    The order is the order of the packed row (handoffs, checkpoints) and of the replicated
    blobs on the wire; both sides of a handoff must use the same schema, which
    :meth:`fingerprint` lets them check.
    """

    fields: tuple[Field, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate field names: {sorted(dupes)}")
        for builtin in BUILTIN_FIELDS:
            got = self.get(builtin.name)
            if got is not None and (got.dtype != builtin.dtype or got.shape != builtin.shape):
                raise ValueError(
                    f"built-in field {builtin.name!r} must stay {builtin.dtype}{builtin.shape}"
                )

    @classmethod
    def default(cls) -> Schema:
        """The built-in fields: pos, vel, kind, owner and the motion inputs."""
        return cls(BUILTIN_FIELDS)

    def extend(self, *fields: Field) -> Schema:
        """A new schema with the studio's ``fields`` appended."""
        return Schema(self.fields + tuple(fields))

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in self.fields)

    def get(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def __getitem__(self, name: str) -> Field:
        f = self.get(name)
        if f is None:
            raise KeyError(name)
        return f

    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def select(self, scopes: Iterable[Scope], exclude: Iterable[str] = ()) -> list[Field]:
        """Fields whose scope is in ``scopes``, in schema order, minus ``exclude``."""
        want = set(scopes)
        skip = set(exclude)
        return [f for f in self.fields if f.scope in want and f.name not in skip]

    @property
    def row_nbytes(self) -> int:
        """Bytes of one packed row: the entity id plus every field."""
        return 8 + sum(f.nbytes for f in self.fields)

    def row_dtype(self) -> np.dtype[np.void]:
        """A packed numpy structured dtype for whole rows (id first, then every field)."""
        parts: list[tuple[str, np.dtype[np.generic], tuple[int, ...]]] = [
            ("id", np.dtype("<u8"), ())
        ]
        parts += [(f.name, f.dtype, f.shape) for f in self.fields]
        return np.dtype(parts)

    def describe(self) -> list[dict[str, object]]:
        return [f.describe() for f in self.fields]

    def fingerprint(self) -> str:
        """A short stable string that changes whenever the row layout changes."""
        import hashlib

        text = ";".join(f"{f.name}:{f.dtype.str}:{f.shape}:{f.scope.value}" for f in self.fields)
        return hashlib.blake2s(text.encode(), digest_size=8).hexdigest()
