"""Visibility diff: per observer, which entities entered, stayed and left, and their handles.

Each snapshot the zone knows, for ``M`` observers, which of ``N`` candidates each one sees
(CSR ``vis_off``/``vis_idx``, any order within a list) and, from the previous snapshot, each
observer's list of ``(id, handle)`` pairs sorted by id. :func:`diff_visibility` turns the two
into this snapshot's lists (sorted by id, with handles and an entered/stayed state) plus the
leaves. The caller keeps ``cur_off``/``cur_ids``/``cur_handle`` as the next snapshot's
``prev_off``/``prev_ids``/``prev_handles`` and maps each observer to its old list with
``obs_prev`` (``-1`` for an observer without one).

Handle rules (the wire format depends on them, see ``docs/snapshot-format.md``):

* a stay keeps its handle;
* enters take the lowest handles not held by this observer's stays, in ascending id order;
  handles freed by this snapshot's leaves may be reused at once, because the client applies
  despawns before spawns;
* so a handle is always smaller than the largest list length the observer ever had, and
  ``k_max <= 256`` guarantees one-byte handles.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shardworld.kernels._jit import kernel

#: Handles are ``uint16``: an observer can name at most this many entities at once.
MAX_HANDLES = 65536

DIFF_OK = 0
DIFF_TOO_MANY_HANDLES = 1
DIFF_DUPLICATE_ID = 2
DIFF_PREV_UNSORTED = 3
DIFF_BAD_PREV_INDEX = 4
DIFF_PREV_DUPLICATE_HANDLE = 5

# Sorting strategy, measured with numba 0.68 on lists of random 64-bit ids (ns per list):
#
#   length                        8     32     64    100    200
#   insertion sort (id, row)    290   1570   6580  14500  53100
#   np.argsort of the ids       960   1870   4620   7560  15900
#   radix sort of int32 ranks     -    580    730    940   1500   (N = 10 000, two passes)
#
# Ranks need one argsort of all N candidate ids per call (numpy: ~0.2 ms for N = 10 000,
# five times faster than numba's), which pays off once the lists hold about as many
# entries as there are candidates; the wrapper decides.
_INSERTION_SORT_MAX = 32
_RANK_INSERTION_MAX = 24


@kernel
def sort_ids_with_rows(
    ids: npt.NDArray[np.uint64], rows: npt.NDArray[np.int32], a: int, b: int
) -> None:
    """Sort ``ids[a:b]`` ascending in place, permuting ``rows[a:b]`` alongside.

    ``ids``: ``uint64[V]``; ``rows``: ``int32[V]``; ``0 <= a <= b <= V``. Returns nothing.
    Equal ids keep no particular order (the caller rejects duplicates anyway).
    """
    n = b - a
    if n < 2:
        return
    if n <= _INSERTION_SORT_MAX:
        for k in range(a + 1, b):
            key = ids[k]
            row = rows[k]
            t = k - 1
            while t >= a and ids[t] > key:
                ids[t + 1] = ids[t]
                rows[t + 1] = rows[t]
                t -= 1
            ids[t + 1] = key
            rows[t + 1] = row
        return
    tmp_ids = ids[a:b].copy()
    tmp_rows = rows[a:b].copy()
    order = np.argsort(tmp_ids)
    for k in range(n):
        ids[a + k] = tmp_ids[order[k]]
        rows[a + k] = tmp_rows[order[k]]


@kernel
def sort_ranks(
    keys: npt.NDArray[np.int32],
    a: int,
    b: int,
    n_passes: int,
    tmp: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int64],
) -> None:
    """Sort the non-negative ``keys[a:b]`` ascending in place (LSD radix, 8 bits a pass).

    ``keys``: ``int32[V]``; ``n_passes``: enough 8-bit digits to cover the largest key;
    ``tmp``: ``int32`` scratch of at least ``b - a`` entries; ``counts``: ``int64[257]``
    scratch. Returns nothing; ``tmp`` and ``counts`` are clobbered.
    """
    n = b - a
    if n < 2:
        return
    if n <= _RANK_INSERTION_MAX:
        for k in range(a + 1, b):
            key = keys[k]
            t = k - 1
            while t >= a and keys[t] > key:
                keys[t + 1] = keys[t]
                t -= 1
            keys[t + 1] = key
        return
    # Ping-pong between the slice and the scratch; `in_keys` says where the data is now.
    in_keys = True
    for p in range(n_passes):
        shift = 8 * p
        counts[:] = 0
        if in_keys:
            for k in range(a, b):
                counts[((keys[k] >> shift) & 255) + 1] += 1
        else:
            for k in range(n):
                counts[((tmp[k] >> shift) & 255) + 1] += 1
        for d in range(256):
            counts[d + 1] += counts[d]
        if in_keys:
            for k in range(a, b):
                d = (keys[k] >> shift) & 255
                tmp[counts[d]] = keys[k]
                counts[d] += 1
        else:
            for k in range(n):
                d = (tmp[k] >> shift) & 255
                keys[a + counts[d]] = tmp[k]
                counts[d] += 1
        in_keys = not in_keys
    if not in_keys:
        for k in range(n):
            keys[a + k] = tmp[k]


@kernel
def diff_visibility_lists(
    vis_off: npt.NDArray[np.int64],
    vis_idx: npt.NDArray[np.int32],
    cand_ids: npt.NDArray[np.uint64],
    cand_order: npt.NDArray[np.int32],
    obs_prev: npt.NDArray[np.int32],
    prev_off: npt.NDArray[np.int64],
    prev_ids: npt.NDArray[np.uint64],
    prev_handles: npt.NDArray[np.uint16],
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.int32],
    npt.NDArray[np.uint16],
    npt.NDArray[np.uint8],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.uint16],
    int,
    int,
]:
    """Diff every observer's visible list against its previous list; assign handles.

    Arguments (indices are NOT bounds-checked here; :func:`diff_visibility` checks them):

    * ``vis_off``: ``int64[M + 1]``, ``vis_idx``: ``int32[V]`` — CSR of visible candidate rows
      per observer, any order within a list;
    * ``cand_ids``: ``uint64[N]`` — id of each candidate row;
    * ``cand_order``: ``int32[N]``, ``np.argsort(cand_ids)``, to sort lists by rank (cheaper
      when the lists are long or many), or ``int32[0]`` to sort each list by id directly;
    * ``obs_prev``: ``int32[M]`` — index of each observer's previous list, ``-1`` for none;
    * ``prev_off``: ``int64[P + 1]``, ``prev_ids``: ``uint64[Q]``, ``prev_handles``:
      ``uint16[Q]`` — previous lists, each sorted by id, strictly ascending.

    Returns ``(cur_off, cur_ids, cur_idx, cur_handle, cur_state, leave_off, leave_ids,
    leave_handle, status, bad_observer)``:

    * ``cur_off``: ``int64[M + 1]`` (a copy of ``vis_off``); ``cur_ids``: ``uint64[V]``,
      ``cur_idx``: ``int32[V]`` (candidate row), ``cur_handle``: ``uint16[V]``,
      ``cur_state``: ``uint8[V]`` (1 entered, 0 stayed) — each list sorted by id;
    * ``leave_off``: ``int64[M + 1]``, ``leave_ids``: ``uint64[L]``, ``leave_handle``:
      ``uint16[L]`` — previous entries no longer visible, sorted by id;
    * ``status``: one of the ``DIFF_*`` codes; when not ``DIFF_OK`` the other outputs are
      meaningless and ``bad_observer`` is the observer at fault.

    The caller must check ``status`` (``diff_visibility`` turns it into ``ValueError``), then
    keep ``cur_*`` as the next snapshot's previous lists and feed ``cur_*``/``leave_*`` to
    the snapshot encoder.
    """
    m = vis_off.shape[0] - 1
    v = vis_idx.shape[0]
    n_prev_lists = prev_off.shape[0] - 1
    cur_off = vis_off.copy()
    cur_ids = np.empty(v, np.uint64)
    cur_idx = np.empty(v, np.int32)
    cur_handle = np.zeros(v, np.uint16)
    cur_state = np.zeros(v, np.uint8)
    leave_off = np.zeros(m + 1, np.int64)
    status = DIFF_OK
    bad = -1

    # Leaves come only from previous lists, so their total length bounds L.
    bound = 0
    for i in range(m):
        p = np.int64(obs_prev[i])
        if p < -1 or p >= n_prev_lists:
            status = DIFF_BAD_PREV_INDEX
            bad = i
            break
        if p >= 0:
            bound += prev_off[p + 1] - prev_off[p]
    if status != DIFF_OK:
        return (
            cur_off,
            cur_ids,
            cur_idx,
            cur_handle,
            cur_state,
            leave_off,
            np.empty(0, np.uint64),
            np.empty(0, np.uint16),
            status,
            bad,
        )
    leave_ids = np.empty(bound, np.uint64)
    leave_handle = np.empty(bound, np.uint16)
    # One byte per possible handle, shared by all observers and cleared after each, so
    # handle assignment is linear in the list length instead of a sort of the stays.
    used = np.zeros(MAX_HANDLES, np.uint8)
    nl = 0

    n_cand = cand_ids.shape[0]
    by_rank = cand_order.shape[0] == n_cand and n_cand > 0
    rank = np.empty(n_cand if by_rank else 0, np.int32)
    n_passes = 1
    longest = 0
    if by_rank:
        for r in range(n_cand):
            rank[cand_order[r]] = r
        while n_cand - 1 >= (1 << (8 * n_passes)) and n_passes < 4:
            n_passes += 1
        for i in range(m):
            longest = max(longest, vis_off[i + 1] - vis_off[i])
    scratch = np.empty(longest, np.int32)
    counts = np.zeros(257, np.int64)

    for i in range(m):
        a = vis_off[i]
        b = vis_off[i + 1]
        if b - a > MAX_HANDLES:
            status = DIFF_TOO_MANY_HANDLES
            bad = i
            break
        if by_rank:
            for k in range(a, b):
                cur_idx[k] = rank[vis_idx[k]]
            sort_ranks(cur_idx, a, b, n_passes, scratch, counts)
            for k in range(a, b):
                j = cand_order[cur_idx[k]]
                cur_idx[k] = j
                cur_ids[k] = cand_ids[j]
        else:
            for k in range(a, b):
                j = vis_idx[k]
                cur_idx[k] = j
                cur_ids[k] = cand_ids[j]
            sort_ids_with_rows(cur_ids, cur_idx, a, b)
        for k in range(a + 1, b):
            if cur_ids[k] == cur_ids[k - 1]:
                status = DIFF_DUPLICATE_ID
                bad = i
                break
        if status != DIFF_OK:
            break

        p = np.int64(obs_prev[i])
        pa = np.int64(0)
        pb = np.int64(0)
        if p >= 0:
            pa = prev_off[p]
            pb = prev_off[p + 1]
        for t in range(pa + 1, pb):
            if prev_ids[t] <= prev_ids[t - 1]:
                status = DIFF_PREV_UNSORTED
                bad = i
                break
        if status != DIFF_OK:
            break

        # Merge the two sorted lists.
        q = pa
        for k in range(a, b):
            cid = cur_ids[k]
            while q < pb and prev_ids[q] < cid:
                leave_ids[nl] = prev_ids[q]
                leave_handle[nl] = prev_handles[q]
                nl += 1
                q += 1
            if q < pb and prev_ids[q] == cid:
                kept = prev_handles[q]
                if used[kept] != 0:
                    status = DIFF_PREV_DUPLICATE_HANDLE
                    bad = i
                    break
                used[kept] = 1
                cur_handle[k] = kept
                cur_state[k] = 0
                q += 1
            else:
                cur_state[k] = 1
        while q < pb:
            leave_ids[nl] = prev_ids[q]
            leave_handle[nl] = prev_handles[q]
            nl += 1
            q += 1
        leave_off[i + 1] = nl

        if status == DIFF_OK:
            free = 0
            for k in range(a, b):
                if cur_state[k] == 1:
                    while free < MAX_HANDLES and used[free] != 0:
                        free += 1
                    if free >= MAX_HANDLES:
                        status = DIFF_TOO_MANY_HANDLES
                        bad = i
                        break
                    cur_handle[k] = np.uint16(free)
                    free += 1
        for k in range(a, b):
            if cur_state[k] == 0:
                used[cur_handle[k]] = 0
        if status != DIFF_OK:
            break

    return (
        cur_off,
        cur_ids,
        cur_idx,
        cur_handle,
        cur_state,
        leave_off,
        leave_ids[:nl].copy(),
        leave_handle[:nl].copy(),
        status,
        bad,
    )


def _csr_ok(off: npt.NDArray[np.int64], n_data: int) -> bool:
    return bool(
        off.ndim == 1
        and off.shape[0] >= 1
        and off[0] == 0
        and off[-1] == n_data
        and (off.shape[0] < 2 or np.all(off[1:] >= off[:-1]))
    )


def diff_visibility(
    vis_off: npt.NDArray[np.int64],
    vis_idx: npt.NDArray[np.int32],
    cand_ids: npt.NDArray[np.uint64],
    obs_prev: npt.NDArray[np.int32],
    prev_off: npt.NDArray[np.int64],
    prev_ids: npt.NDArray[np.uint64],
    prev_handles: npt.NDArray[np.uint16],
    *,
    by_rank: bool | None = None,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.int32],
    npt.NDArray[np.uint16],
    npt.NDArray[np.uint8],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.uint16],
]:
    """Checked entry point of :func:`diff_visibility_lists` (dtypes coerced).

    Same arguments except ``cand_order``, which is computed here when ``by_rank`` is true;
    ``None`` (the default) sorts by rank when the lists hold at least as many entries as
    there are candidates, where one numpy argsort of ``cand_ids`` beats sorting every list
    by id. The result does not depend on the choice.

    Returns ``(cur_off int64[M+1], cur_ids uint64[V], cur_idx int32[V], cur_handle uint16[V],
    cur_state uint8[V], leave_off int64[M+1], leave_ids uint64[L], leave_handle uint16[L])``.

    Raises ``ValueError`` on malformed CSR arrays, out-of-range rows or ``obs_prev`` entries,
    a visible list that names the same id twice (a caller bug: nothing is returned rather
    than a guess), previous lists that are not strictly ascending or reuse a handle, and an
    observer that would need more than ``MAX_HANDLES`` handles.
    """
    vis_off = np.ascontiguousarray(vis_off, dtype=np.int64)
    vis_idx = np.ascontiguousarray(vis_idx, dtype=np.int32)
    cand_ids = np.ascontiguousarray(cand_ids, dtype=np.uint64)
    obs_prev = np.ascontiguousarray(obs_prev, dtype=np.int32)
    prev_off = np.ascontiguousarray(prev_off, dtype=np.int64)
    prev_ids = np.ascontiguousarray(prev_ids, dtype=np.uint64)
    prev_handles = np.ascontiguousarray(prev_handles, dtype=np.uint16)

    if vis_idx.ndim != 1 or not _csr_ok(vis_off, vis_idx.shape[0]):
        raise ValueError("vis_off/vis_idx are not a valid CSR (off[0]==0, ascending, off[-1]==V)")
    m = vis_off.shape[0] - 1
    if obs_prev.shape != (m,):
        raise ValueError(f"obs_prev must have shape ({m},), got {obs_prev.shape}")
    if prev_ids.ndim != 1 or prev_handles.shape != prev_ids.shape:
        raise ValueError("prev_ids and prev_handles must be 1-D and the same length")
    if not _csr_ok(prev_off, prev_ids.shape[0]):
        raise ValueError("prev_off is not a valid CSR over prev_ids")
    n = cand_ids.shape[0]
    if vis_idx.shape[0] and (int(vis_idx.min()) < 0 or int(vis_idx.max()) >= n):
        raise ValueError(f"vis_idx holds a row outside [0, {n})")
    if by_rank is None:
        by_rank = vis_idx.shape[0] >= n
    if by_rank and n > 0:
        cand_order = np.argsort(cand_ids).astype(np.int32)
    else:
        cand_order = np.empty(0, np.int32)

    (
        cur_off,
        cur_ids,
        cur_idx,
        cur_handle,
        cur_state,
        leave_off,
        leave_ids,
        leave_handle,
        status,
        bad,
    ) = diff_visibility_lists(
        vis_off, vis_idx, cand_ids, cand_order, obs_prev, prev_off, prev_ids, prev_handles
    )
    if status != DIFF_OK:
        raise ValueError(_diff_error(int(status), int(bad), prev_off.shape[0] - 1))
    return cur_off, cur_ids, cur_idx, cur_handle, cur_state, leave_off, leave_ids, leave_handle


def _diff_error(status: int, observer: int, n_prev_lists: int) -> str:
    if status == DIFF_TOO_MANY_HANDLES:
        return f"observer {observer} sees more than {MAX_HANDLES} entities (handles are uint16)"
    if status == DIFF_DUPLICATE_ID:
        return f"observer {observer}'s visible list names the same entity id twice"
    if status == DIFF_PREV_UNSORTED:
        return f"observer {observer}'s previous list is not sorted strictly by id"
    if status == DIFF_BAD_PREV_INDEX:
        return f"obs_prev[{observer}] is outside [-1, {n_prev_lists})"
    if status == DIFF_PREV_DUPLICATE_HANDLE:
        return f"observer {observer}'s previous list gives one handle to two stayed entities"
    return f"visibility diff failed with status {status} at observer {observer}"


def warm_up() -> None:
    """Load (or compile) every kernel of this module on tiny arrays of the production dtypes."""
    for by_rank in (False, True):
        diff_visibility(
            np.array([0, 2, 3], np.int64),
            np.array([1, 0, 1], np.int32),
            np.array([7, 5], np.uint64),
            np.array([0, -1], np.int32),
            np.array([0, 1], np.int64),
            np.array([5], np.uint64),
            np.array([0], np.uint16),
            by_rank=by_rank,
        )
