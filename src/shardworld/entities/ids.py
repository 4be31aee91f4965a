"""Entity ids: issued by a generational slot allocator, found through a batched hash index.

An id is a ``uint64``::

    bits 63..48  zone tag   (which zone issued it; ids are unique world-wide)
    bits 47..28  generation (bumped each time the slot is freed)
    bits 27..0   slot

An entity keeps its id for life, across handoffs. The issuing zone frees the slot when the
entity leaves it (despawn or handoff) and bumps the generation, so the same 64 bits are never
issued twice while anything might still hold them: a stale id simply finds no row. Freed slots
go to the back of a FIFO queue and are only reused once the queue holds ``reuse_delay`` of them,
so a generation wraps only after about 2^20 * reuse_delay spawns from one zone.

:class:`IdIndex` maps ids to rows of whichever store holds the entity now (own and foreign ids
alike): an open-addressing table with linear probing and backward-shift deletion, kept in two
numpy arrays and driven by numba kernels a whole batch at a time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shardworld.kernels._jit import kernel

TAG_BITS = 16
GEN_BITS = 20
SLOT_BITS = 28
MAX_TAG = (1 << TAG_BITS) - 1
MAX_SLOTS = 1 << SLOT_BITS
GEN_MASK = (1 << GEN_BITS) - 1
SLOT_MASK = (1 << SLOT_BITS) - 1

IdArray = npt.NDArray[np.uint64]


def make_ids(tag: int, gen: npt.ArrayLike, slot: npt.ArrayLike) -> IdArray:
    """Pack (tag, generation, slot) into ids."""
    g = np.asarray(gen, dtype=np.uint64) & np.uint64(GEN_MASK)
    s = np.asarray(slot, dtype=np.uint64) & np.uint64(SLOT_MASK)
    t = np.uint64(tag & MAX_TAG)
    out: IdArray = (t << np.uint64(48)) | (g << np.uint64(SLOT_BITS)) | s
    return out


def split_ids(ids: IdArray) -> tuple[npt.NDArray[np.int64], ...]:
    """(tag, generation, slot) of each id, as int64 arrays."""
    ids = np.asarray(ids, dtype=np.uint64)
    tag = (ids >> np.uint64(48)).astype(np.int64)
    gen = ((ids >> np.uint64(SLOT_BITS)) & np.uint64(GEN_MASK)).astype(np.int64)
    slot = (ids & np.uint64(SLOT_MASK)).astype(np.int64)
    return tag, gen, slot


class IdAllocator:
    """Issues ids for one zone (``tag``), in batches, O(count) per call."""

    def __init__(self, tag: int, reuse_delay: int = 1024, capacity: int = 1024) -> None:
        if not 0 <= tag <= MAX_TAG:
            raise ValueError(f"zone tag {tag} out of range 0..{MAX_TAG}")
        self.tag = tag
        self.reuse_delay = max(0, reuse_delay)
        # Generations start at 1 so that no id is ever 0 (0 means "none" everywhere).
        self._gen = np.ones(max(16, capacity), dtype=np.int64)
        self._next_slot = 0
        self._free = np.empty(max(16, capacity), dtype=np.int64)  # FIFO ring of freed slots
        self._free_head = 0
        self._free_len = 0

    @property
    def issued_slots(self) -> int:
        return self._next_slot

    @property
    def free_slots(self) -> int:
        return self._free_len

    def allocate(self, count: int) -> IdArray:
        """``count`` fresh ids. Reuses freed slots only beyond the reuse delay."""
        if count < 0:
            raise ValueError("count must be >= 0")
        reuse = min(count, max(0, self._free_len - self.reuse_delay))
        fresh = count - reuse
        if self._next_slot + fresh > MAX_SLOTS:
            raise OverflowError("zone ran out of entity slots (2^28 live at once)")
        cap = self._free.shape[0]
        idx = (self._free_head + np.arange(reuse, dtype=np.int64)) % cap
        reused = self._free[idx]
        self._free_head = (self._free_head + reuse) % cap
        self._free_len -= reuse
        new = np.arange(self._next_slot, self._next_slot + fresh, dtype=np.int64)
        self._next_slot += fresh
        if self._next_slot > self._gen.shape[0]:
            grown = np.ones(max(self._next_slot, 2 * self._gen.shape[0]), dtype=np.int64)
            grown[: self._gen.shape[0]] = self._gen
            self._gen = grown
        slots = np.concatenate([reused, new])
        return make_ids(self.tag, self._gen[slots], slots)

    def is_current(self, ids: IdArray) -> npt.NDArray[np.bool_]:
        """True where an id of this zone is the slot's current generation (not freed)."""
        tag, gen, slot = split_ids(ids)
        ok = (tag == self.tag) & (slot < self._next_slot)
        cur = np.zeros(len(slot), dtype=np.bool_)
        cur[ok] = (self._gen[slot[ok]] & GEN_MASK) == gen[ok]
        return cur

    def release(self, ids: IdArray) -> int:
        """Free the slots of ``ids`` that this zone issued and that are still current.

        Ids of other zones, and stale ids, are ignored (an entity that left and came back
        must not free a slot that has since been reissued). Returns how many were freed.
        """
        ids = np.unique(np.asarray(ids, dtype=np.uint64))
        cur = self.is_current(ids)
        _, _, slot = split_ids(ids[cur])
        k = len(slot)
        if k == 0:
            return 0
        self._gen[slot] += 1
        cap = self._free.shape[0]
        if self._free_len + k > cap:
            new_cap = max(2 * cap, self._free_len + k)
            order = (self._free_head + np.arange(self._free_len)) % cap
            grown = np.empty(new_cap, dtype=np.int64)
            grown[: self._free_len] = self._free[order]
            self._free = grown
            self._free_head = 0
            cap = new_cap
        tail = (self._free_head + self._free_len + np.arange(k)) % cap
        self._free[tail] = slot
        self._free_len += k
        return k


# --- the hash index ---------------------------------------------------------------------

_EMPTY = np.uint64(0)


@kernel
def _hash_slot(key: np.uint64, mask: np.int64) -> np.int64:
    # A 64-bit finaliser: ids differ mostly in their low bits and tag, so mix them all.
    h = key
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return np.int64(h & np.uint64(mask))


@kernel
def insert_ids(
    keys: npt.NDArray[np.uint64],
    vals: npt.NDArray[np.int32],
    ids: npt.NDArray[np.uint64],
    rows: npt.NDArray[np.int32],
) -> np.int64:
    """Insert or overwrite ``ids[i] -> rows[i]``.

    keys uint64[C], vals int32[C]: the table (C a power of two, load kept <= 1/2 by the caller).
    ids uint64[B] (never 0), rows int32[B]. Returns how many ids were new.
    """
    mask = np.int64(keys.shape[0] - 1)
    added = np.int64(0)
    for i in range(ids.shape[0]):
        k = ids[i]
        s = _hash_slot(k, mask)
        while True:
            cur = keys[s]
            if cur == _EMPTY:
                keys[s] = k
                vals[s] = rows[i]
                added += 1
                break
            if cur == k:
                vals[s] = rows[i]
                break
            s = (s + 1) & mask
    return added


@kernel
def lookup_ids(
    keys: npt.NDArray[np.uint64],
    vals: npt.NDArray[np.int32],
    ids: npt.NDArray[np.uint64],
    out: npt.NDArray[np.int32],
) -> None:
    """``out[i]`` = row of ``ids[i]``, or -1 when absent (stale, foreign or 0).

    keys uint64[C], vals int32[C]: the table; ids uint64[B]; out int32[B] written.
    """
    mask = np.int64(keys.shape[0] - 1)
    for i in range(ids.shape[0]):
        k = ids[i]
        out[i] = -1
        if k == _EMPTY:
            continue
        s = _hash_slot(k, mask)
        while True:
            cur = keys[s]
            if cur == _EMPTY:
                break
            if cur == k:
                out[i] = vals[s]
                break
            s = (s + 1) & mask


@kernel
def remove_ids(
    keys: npt.NDArray[np.uint64], vals: npt.NDArray[np.int32], ids: npt.NDArray[np.uint64]
) -> np.int64:
    """Remove ``ids`` (absent ones are ignored); returns how many were removed.

    Backward-shift deletion keeps probe chains intact without tombstones, so the table never
    degrades however many entities come and go.
    """
    mask = np.int64(keys.shape[0] - 1)
    removed = np.int64(0)
    for i in range(ids.shape[0]):
        k = ids[i]
        if k == _EMPTY:
            continue
        s = _hash_slot(k, mask)
        while True:
            cur = keys[s]
            if cur == _EMPTY:
                break
            if cur == k:
                break
            s = (s + 1) & mask
        if keys[s] == _EMPTY:
            continue
        removed += 1
        hole = s
        j = (s + 1) & mask
        while keys[j] != _EMPTY:
            home = _hash_slot(keys[j], mask)
            # j may fill the hole when its home is no later than the hole along its probe path.
            if ((j - home) & mask) >= ((j - hole) & mask):
                keys[hole] = keys[j]
                vals[hole] = vals[j]
                hole = j
            j = (j + 1) & mask
        keys[hole] = _EMPTY
        vals[hole] = -1
    return removed


class IdIndex:
    """id -> row, for every entity a store holds. All operations take whole batches."""

    def __init__(self, capacity: int = 1024) -> None:
        size = 16
        while size < 2 * capacity:
            size *= 2
        self._keys = np.zeros(size, dtype=np.uint64)
        self._vals = np.full(size, -1, dtype=np.int32)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _reserve(self, extra: int) -> None:
        need = self._count + extra
        if 2 * need <= self._keys.shape[0]:
            return
        size = self._keys.shape[0]
        while size < 2 * need:
            size *= 2
        live = self._keys != _EMPTY
        old_keys, old_vals = self._keys[live], self._vals[live]
        self._keys = np.zeros(size, dtype=np.uint64)
        self._vals = np.full(size, -1, dtype=np.int32)
        insert_ids(self._keys, self._vals, old_keys, old_vals)

    def insert(self, ids: IdArray, rows: npt.NDArray[np.int32]) -> None:
        """Map ``ids`` to ``rows`` (overwriting existing entries)."""
        ids = np.ascontiguousarray(ids, dtype=np.uint64)
        rows = np.ascontiguousarray(rows, dtype=np.int32)
        if ids.shape != rows.shape:
            raise ValueError("ids and rows must have the same length")
        if np.any(ids == _EMPTY):
            raise ValueError("id 0 is reserved")
        self._reserve(len(ids))
        self._count += int(insert_ids(self._keys, self._vals, ids, rows))

    def lookup(self, ids: IdArray) -> npt.NDArray[np.int32]:
        """Rows of ``ids``; -1 where the id is not here."""
        ids = np.ascontiguousarray(ids, dtype=np.uint64)
        out = np.empty(ids.shape[0], dtype=np.int32)
        lookup_ids(self._keys, self._vals, ids, out)
        return out

    def remove(self, ids: IdArray) -> int:
        """Forget ``ids``; returns how many were present."""
        ids = np.ascontiguousarray(ids, dtype=np.uint64)
        removed = int(remove_ids(self._keys, self._vals, ids))
        self._count -= removed
        return removed

    def clear(self) -> None:
        self._keys[:] = _EMPTY
        self._vals[:] = -1
        self._count = 0


def warm_up() -> None:
    """Load the id-index kernels from the disk cache."""
    index = IdIndex(8)
    ids = make_ids(1, [1, 1], [0, 1])
    index.insert(ids, np.array([0, 1], dtype=np.int32))
    index.lookup(ids)
    index.remove(ids[:1])
