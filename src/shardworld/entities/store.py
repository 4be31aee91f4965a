"""Structure-of-arrays entity storage.

One numpy column per field (shape ``(capacity, *field.shape)``), rows ``0..n-1`` live, dense.
Spawn appends, despawn swap-removes (the last rows fill the holes), so every live row is
contiguous and kernels run over ``column[:n]`` views without gathers. Every operation takes a
batch and costs O(batch) — never O(n) — except growth, which doubles the capacity and so
happens O(log n) times in a zone's life (give ``capacity`` up front to avoid it entirely).

Rows move when others are removed: hold entity ids, never row numbers, across ticks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.entities.ids import IdAllocator, IdArray, IdIndex
from shardworld.entities.schema import Schema

Rows = npt.NDArray[np.int32]


class StaleIdError(KeyError):
    """An id that is not (or no longer) held by this store was used where one was required."""


class EntityStore:
    """The entities one zone holds (or the ghosts it mirrors), as numpy columns.

    ``allocator`` issues ids for :meth:`spawn`; a ghost store, which only ever imports rows
    issued elsewhere, has none.
    """

    def __init__(
        self,
        schema: Schema,
        capacity: int = 1024,
        allocator: IdAllocator | None = None,
    ) -> None:
        self.schema = schema
        self.allocator = allocator
        self._cap = max(16, int(capacity))
        self._n = 0
        self.ids: npt.NDArray[np.uint64] = np.zeros(self._cap, dtype=np.uint64)
        self._cols: dict[str, npt.NDArray[Any]] = {
            f.name: np.zeros((self._cap, *f.shape), dtype=f.dtype) for f in schema
        }
        self.index = IdIndex(self._cap)
        self.grow_events = 0

    # --- size -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def n(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return self._cap

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` rows now (do it outside ticks to keep them flat)."""
        if capacity <= self._cap:
            return
        cap = self._cap
        while cap < capacity:
            cap *= 2
        self.grow_events += 1
        n = self._n
        ids = np.zeros(cap, dtype=np.uint64)
        ids[:n] = self.ids[:n]
        self.ids = ids
        for name, col in self._cols.items():
            grown = np.zeros((cap, *col.shape[1:]), dtype=col.dtype)
            grown[:n] = col[:n]
            self._cols[name] = grown
        self._cap = cap

    # --- columns ----------------------------------------------------------------------

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        """The live part of a column: a view of rows ``0..n-1`` (writes go to the store)."""
        return self._cols[name][: self._n]

    def column(self, name: str) -> npt.NDArray[Any]:
        """The whole column including spare capacity (for kernels that need fixed buffers)."""
        return self._cols[name]

    def live_ids(self) -> IdArray:
        """Ids of the live rows, in row order (a view)."""
        return self.ids[: self._n]

    # --- lookup -----------------------------------------------------------------------

    def rows_of(self, ids: npt.ArrayLike) -> Rows:
        """Row of each id, -1 where the id is stale or not held here."""
        return self.index.lookup(np.atleast_1d(np.asarray(ids, dtype=np.uint64)))

    def contains(self, ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        rows: npt.NDArray[np.bool_] = self.rows_of(ids) >= 0
        return rows

    def require_rows(self, ids: npt.ArrayLike) -> Rows:
        """Rows of ``ids``; raises :class:`StaleIdError` naming the first missing id."""
        ids_arr = np.atleast_1d(np.asarray(ids, dtype=np.uint64))
        rows = self.rows_of(ids_arr)
        bad = np.flatnonzero(rows < 0)
        if len(bad):
            raise StaleIdError(f"entity {int(ids_arr[bad[0]]):#x} is not held here")
        return rows

    # --- spawn / insert ----------------------------------------------------------------

    def _append(self, ids: IdArray) -> Rows:
        k = len(ids)
        if self._n + k > self._cap:
            self.reserve(self._n + k)
        rows = np.arange(self._n, self._n + k, dtype=np.int32)
        self.ids[self._n : self._n + k] = ids
        for col in self._cols.values():
            col[self._n : self._n + k] = 0
        self._n += k
        self.index.insert(ids, rows)
        return rows

    def spawn(self, count: int = 1, **values: npt.ArrayLike) -> IdArray:
        """Create ``count`` entities; each keyword sets a field (broadcast to all of them).

        Unset fields are zero. Returns the new ids. Needs an allocator.
        """
        if self.allocator is None:
            raise RuntimeError("this store has no id allocator (a ghost store cannot spawn)")
        unknown = set(values) - set(self._cols)
        if unknown:
            raise KeyError(f"unknown fields: {sorted(unknown)}")
        ids = self.allocator.allocate(count)
        start = self._n
        self._append(ids)
        for name, value in values.items():
            self._cols[name][start : self._n] = value
        return ids

    def set(self, ids: npt.ArrayLike, **values: npt.ArrayLike) -> None:
        """Write fields of existing entities."""
        rows = self.require_rows(ids)
        for name, value in values.items():
            self._cols[name][rows] = value

    # --- despawn / remove -------------------------------------------------------------

    def _remove_rows(self, rows: Rows) -> None:
        """Swap-remove ``rows`` (unique, valid): tail rows that survive fill the holes."""
        k = len(rows)
        if k == 0:
            return
        n = self._n
        new_n = n - k
        # Holes below new_n get filled by survivors from the tail [new_n, n).
        holes = np.sort(rows[rows < new_n])
        tail = np.arange(new_n, n, dtype=np.int32)
        tail_doomed = np.zeros(k, dtype=np.bool_)
        tail_doomed[rows[rows >= new_n] - new_n] = True
        movers = tail[~tail_doomed]
        if len(holes):
            self.ids[holes] = self.ids[movers]
            for col in self._cols.values():
                col[holes] = col[movers]
            self.index.insert(self.ids[holes], holes.astype(np.int32))
        self._n = new_n

    def despawn(self, ids: npt.ArrayLike) -> int:
        """Remove entities by id. Stale and unknown ids are ignored; returns how many went.

        Their ids go back to the allocator (if this store issued them), never to be reissued
        while anything may still hold them.
        """
        ids_arr = np.unique(np.atleast_1d(np.asarray(ids, dtype=np.uint64)))
        rows = self.rows_of(ids_arr)
        keep = rows >= 0
        ids_arr, rows = ids_arr[keep], rows[keep]
        self.index.remove(ids_arr)
        self._remove_rows(rows)
        if self.allocator is not None:
            self.allocator.release(ids_arr)
        return len(ids_arr)

    def clear(self) -> None:
        if self.allocator is not None:
            self.allocator.release(self.ids[: self._n])
        self.index.clear()
        self._n = 0

    # --- packed rows (handoffs, checkpoints) ------------------------------------------

    def export_rows(self, ids: npt.ArrayLike) -> npt.NDArray[np.void]:
        """Whole rows of ``ids`` (id plus every field) as one packed structured array.

        ``block.tobytes()`` is the wire form; :meth:`import_rows` on any store with the same
        schema (see :meth:`Schema.fingerprint`) recreates the entities exactly. Unknown ids
        raise :class:`StaleIdError`.
        """
        rows = self.require_rows(ids)
        block = np.empty(len(rows), dtype=self.schema.row_dtype())
        block["id"] = self.ids[rows]
        for name, col in self._cols.items():
            block[name] = col[rows]
        return block

    def take_rows(self, ids: npt.ArrayLike) -> npt.NDArray[np.void]:
        """Export the rows of ``ids`` and remove them here (the entity moves on, alive).

        The issuing zone frees the slot (its generation moves on), but the id stays valid
        wherever the row is imported.
        """
        ids_arr = np.unique(np.atleast_1d(np.asarray(ids, dtype=np.uint64)))
        block = self.export_rows(ids_arr)
        rows = self.rows_of(ids_arr)
        self.index.remove(ids_arr)
        self._remove_rows(rows)
        if self.allocator is not None:
            self.allocator.release(ids_arr)
        return block

    def import_rows(self, block: npt.NDArray[np.void] | bytes) -> IdArray:
        """Insert packed rows (from :meth:`export_rows`, or its ``tobytes()``).

        Ids already held here are overwritten in place rather than duplicated (an entity is
        never in one store twice). Returns the ids imported.
        """
        dtype = self.schema.row_dtype()
        if isinstance(block, bytes | bytearray | memoryview):
            if len(block) % dtype.itemsize:
                raise ValueError(
                    f"row block of {len(block)} bytes is not a multiple of {dtype.itemsize}"
                )
            block = np.frombuffer(block, dtype=dtype)
        elif block.dtype != dtype:
            raise ValueError("row block does not match this store's schema")
        ids = np.ascontiguousarray(block["id"], dtype=np.uint64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("row block holds the same id twice")
        if np.any(ids == 0):
            raise ValueError("row block holds id 0")
        rows = self.rows_of(ids)
        new = rows < 0
        if np.any(new):
            rows[new] = self._append(ids[new])
        for name, col in self._cols.items():
            col[rows] = block[name]
        return ids

    def upsert(self, ids: npt.ArrayLike, **values: npt.ArrayLike) -> Rows:
        """Write some fields of ``ids``, appending the ids not held yet (other fields zero).

        This is how ghosts arrive: a neighbour's copy refreshes the fields it carries and
        leaves the rest (this zone's own bookkeeping for the entity) alone. Returns the rows.
        """
        ids_arr = np.ascontiguousarray(np.atleast_1d(np.asarray(ids, dtype=np.uint64)))
        if len(np.unique(ids_arr)) != len(ids_arr):
            raise ValueError("upsert of the same id twice")
        if np.any(ids_arr == 0):
            raise ValueError("upsert of id 0")
        unknown = set(values) - set(self._cols)
        if unknown:
            raise KeyError(f"unknown fields: {sorted(unknown)}")
        rows = self.rows_of(ids_arr)
        new = rows < 0
        if np.any(new):
            rows[new] = self._append(ids_arr[new])
        for name, value in values.items():
            self._cols[name][rows] = value
        return rows

    def snapshot_columns(self) -> Mapping[str, npt.NDArray[Any]]:
        """Live views of every column by name (read-only use)."""
        return {name: col[: self._n] for name, col in self._cols.items()}
