"""Position quantisation and the per-observer snapshot encoder.

The byte layout written here is specified in ``docs/snapshot-format.md``; the pure decoder is
:mod:`shardworld.protocol.snapshot` (which cannot import this module: kernels stay free of
protocol code and the decoder free of numba, so the layout constants live in both and the
tests check that they agree).

Per snapshot tick the zone:

1. ``q, moved = quantize_positions(pos, quantum, q_last)``, then stores ``q`` as ``q_last``;
2. runs :func:`shardworld.kernels.visibility.diff_visibility`;
3. builds ``pub_blob``/``own_blob`` with :func:`pack_columns` and sets ``cand_updated`` for rows
   whose blob bytes (or owner) changed since the last snapshot;
4. calls :func:`encode_snapshots` and sends ``buf[off[i]:off[i + 1]]`` to observer ``i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shardworld.kernels._jit import kernel

FLAG_RESET = 0x01
FLAG_WIDE = 0x02
HEADER_SIZE = 21
MAX_SECTION_COUNT = 65535
#: Largest handle that fits the one-byte (narrow) encoding.
MAX_NARROW_HANDLE = 255

ENCODE_OK = 0
ENCODE_SECTION_TOO_LONG = 1
ENCODE_HANDLE_TOO_WIDE = 2

# Kernel helpers take numpy scalars as well as Python ints.
_Int = int | np.integer[Any]

_I16_MIN = -32768
_I16_MAX = 32767
_I32_MIN = -2147483648
_I32_MAX = 2147483647


@kernel
def quantize_positions(
    pos: npt.NDArray[np.float32], quantum: float, q_last: npt.NDArray[np.int32]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    """Quantise positions to integer multiples of ``quantum`` and flag the ones that changed.

    ``pos``: ``float32[N, 2]`` metres; ``quantum``: metres per step (float64, > 0);
    ``q_last``: ``int32[N, 2]``, the ``q`` stored at the previous snapshot.

    Returns ``(q int32[N, 2], moved uint8[N])`` with ``q = rint(pos / quantum)`` computed in
    float64 (ties to even), saturated to the int32 range (NaN becomes 0), and ``moved[n] == 1``
    where either coordinate differs from ``q_last``. The caller stores ``q`` as the next
    ``q_last`` after encoding this snapshot. Raises ``ValueError`` unless ``quantum > 0``.
    """
    if not quantum > 0.0:
        raise ValueError("quantum must be > 0")
    n = pos.shape[0]
    q = np.empty((n, 2), np.int32)
    moved = np.zeros(n, np.uint8)
    lo = np.float64(_I32_MIN)
    hi = np.float64(_I32_MAX)
    for r in range(n):
        for c in range(2):
            x = np.rint(np.float64(pos[r, c]) / quantum)
            if x != x:
                x = 0.0
            elif x < lo:
                x = lo
            elif x > hi:
                x = hi
            q[r, c] = np.int32(x)
        if q[r, 0] != q_last[r, 0] or q[r, 1] != q_last[r, 1]:
            moved[r] = 1
    return q, moved


@kernel
def _put_u8(buf: npt.NDArray[np.uint8], o: _Int, v: _Int) -> _Int:
    buf[o] = np.uint8(v & 0xFF)
    return o + 1


@kernel
def _put_u16(buf: npt.NDArray[np.uint8], o: _Int, v: _Int) -> _Int:
    buf[o] = np.uint8(v & 0xFF)
    buf[o + 1] = np.uint8((v >> 8) & 0xFF)
    return o + 2


@kernel
def _put_u32(buf: npt.NDArray[np.uint8], o: _Int, v: _Int) -> _Int:
    for s in range(4):
        buf[o + s] = np.uint8((v >> (8 * s)) & 0xFF)
    return o + 4


@kernel
def _put_u64(buf: npt.NDArray[np.uint8], o: _Int, v: np.uint64) -> _Int:
    mask = np.uint64(0xFF)
    for s in range(8):
        buf[o + s] = np.uint8((v >> np.uint64(8 * s)) & mask)
    return o + 8


@kernel
def _put_handle(buf: npt.NDArray[np.uint8], o: _Int, h: _Int, wide: bool) -> _Int:
    buf[o] = np.uint8(h & 0xFF)
    if wide:
        buf[o + 1] = np.uint8((h >> 8) & 0xFF)
        return o + 2
    return o + 1


@kernel
def _clamp_i16(v: _Int) -> _Int:
    if v < _I16_MIN:
        return _I16_MIN
    if v > _I16_MAX:
        return _I16_MAX
    return v


@kernel
def encode_snapshot_payloads(
    tick: _Int,
    reset: npt.NDArray[np.uint8],
    base_q: npt.NDArray[np.int32],
    cur_off: npt.NDArray[np.int64],
    cur_idx: npt.NDArray[np.int32],
    cur_handle: npt.NDArray[np.uint16],
    cur_state: npt.NDArray[np.uint8],
    leave_off: npt.NDArray[np.int64],
    leave_handle: npt.NDArray[np.uint16],
    cand_ids: npt.NDArray[np.uint64],
    cand_kind: npt.NDArray[np.uint16],
    cand_q: npt.NDArray[np.int32],
    cand_moved: npt.NDArray[np.uint8],
    cand_updated: npt.NDArray[np.uint8],
    pub_blob: npt.NDArray[np.uint8],
    own_blob: npt.NDArray[np.uint8],
    cand_owner: npt.NDArray[np.uint64],
    obs_owner: npt.NDArray[np.uint64],
    wide_handles: bool,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], _Int, _Int]:
    """Write every observer's snapshot payload into one buffer (sizes, prefix sum, write).

    Arguments (rows and offsets are NOT bounds-checked here; :func:`encode_snapshots` is the
    checked entry point):

    * ``tick``: int64, written as its low 32 bits;
    * ``reset``: ``uint8[M]`` — 1 sends observer ``i`` a full snapshot: the RESET flag, every
      visible entry as a spawn, no despawns, moves or updates;
    * ``base_q``: ``int32[M, 2]`` — the observer's own quantised position;
    * ``cur_off`` ``int64[M + 1]``, ``cur_idx`` ``int32[V]``, ``cur_handle`` ``uint16[V]``,
      ``cur_state`` ``uint8[V]`` (1 entered, 0 stayed), ``leave_off`` ``int64[M + 1]``,
      ``leave_handle`` ``uint16[L]`` — the visibility diff's output;
    * ``cand_ids`` ``uint64[N]``, ``cand_kind`` ``uint16[N]``, ``cand_q`` ``int32[N, 2]``,
      ``cand_moved`` ``uint8[N]``, ``cand_updated`` ``uint8[N]``, ``pub_blob`` ``uint8[N, W]``,
      ``own_blob`` ``uint8[N, W2]``, ``cand_owner`` ``uint64[N]`` — per candidate row;
    * ``obs_owner``: ``uint64[M]`` — the player id of each observer, 0 for none (an observer
      whose id is 0 owns nothing);
    * ``wide_handles``: handles take 2 bytes, else 1 (every handle must then be <= 255).

    Returns ``(buf uint8[total], off int64[M + 1], status, bad_observer)``; observer ``i``'s
    payload is ``buf[off[i]:off[i + 1]]``. ``status`` is ``ENCODE_OK`` or an ``ENCODE_*``
    error code (then ``buf`` is empty and ``bad_observer`` names the observer at fault).
    """
    m = cur_off.shape[0] - 1
    w = pub_blob.shape[1]
    w2 = own_blob.shape[1]
    hsz = 2 if wide_handles else 1
    hmax = 65535 if wide_handles else MAX_NARROW_HANDLE
    tick32 = tick & 0xFFFFFFFF
    n_spawn = np.zeros(m, np.int64)
    n_move = np.zeros(m, np.int64)
    n_update = np.zeros(m, np.int64)
    spawn_bytes = np.zeros(m, np.int64)
    off = np.zeros(m + 1, np.int64)
    status = ENCODE_OK
    bad = -1

    for i in range(m):
        full = reset[i] != 0
        owner = obs_owner[i]
        has_owner = owner != np.uint64(0)
        nd = np.int64(0)
        if not full:
            nd = leave_off[i + 1] - leave_off[i]
            for k in range(leave_off[i], leave_off[i + 1]):
                if np.int64(leave_handle[k]) > hmax:
                    status = ENCODE_HANDLE_TOO_WIDE
        ns = np.int64(0)
        nm = np.int64(0)
        nu = np.int64(0)
        sb = np.int64(0)
        ub = np.int64(0)
        for k in range(cur_off[i], cur_off[i + 1]):
            j = cur_idx[k]
            if np.int64(cur_handle[k]) > hmax:
                status = ENCODE_HANDLE_TOO_WIDE
            extra = w2 if (has_owner and cand_owner[j] == owner) else 0
            if full or cur_state[k] != 0:
                ns += 1
                sb += hsz + 15 + w + extra
            else:
                if cand_moved[j] != 0:
                    nm += 1
                if cand_updated[j] != 0:
                    nu += 1
                    ub += hsz + 1 + w + extra
        if status == ENCODE_OK and (
            nd > MAX_SECTION_COUNT
            or ns > MAX_SECTION_COUNT
            or nm > MAX_SECTION_COUNT
            or nu > MAX_SECTION_COUNT
        ):
            status = ENCODE_SECTION_TOO_LONG
        if status != ENCODE_OK:
            bad = i
            break
        n_spawn[i] = ns
        n_move[i] = nm
        n_update[i] = nu
        spawn_bytes[i] = sb
        off[i + 1] = off[i] + HEADER_SIZE + nd * hsz + sb + nm * (hsz + 4) + ub

    if status != ENCODE_OK:
        return np.empty(0, np.uint8), np.zeros(m + 1, np.int64), status, bad

    buf = np.empty(off[m], np.uint8)
    for i in range(m):
        full = reset[i] != 0
        owner = obs_owner[i]
        has_owner = owner != np.uint64(0)
        bx = np.int64(base_q[i, 0])
        by = np.int64(base_q[i, 1])
        la = leave_off[i]
        lb = leave_off[i + 1]
        if full:
            lb = la
        flags = FLAG_WIDE if wide_handles else 0
        if full:
            flags |= FLAG_RESET
        o = off[i]
        o = _put_u8(buf, o, flags)
        o = _put_u32(buf, o, tick32)
        o = _put_u32(buf, o, bx & 0xFFFFFFFF)
        o = _put_u32(buf, o, by & 0xFFFFFFFF)
        o = _put_u16(buf, o, lb - la)
        o = _put_u16(buf, o, n_spawn[i])
        o = _put_u16(buf, o, n_move[i])
        o = _put_u16(buf, o, n_update[i])
        for k in range(la, lb):
            o = _put_handle(buf, o, np.int64(leave_handle[k]), wide_handles)
        # Spawns, moves and updates interleave in the list, so each section gets a cursor.
        so = o
        mo = so + spawn_bytes[i]
        uo = mo + n_move[i] * (hsz + 4)
        for k in range(cur_off[i], cur_off[i + 1]):
            j = cur_idx[k]
            h = np.int64(cur_handle[k])
            owned = has_owner and cand_owner[j] == owner
            spawn = full or cur_state[k] != 0
            if spawn or cand_moved[j] != 0:
                rx = _clamp_i16(np.int64(cand_q[j, 0]) - bx) & 0xFFFF
                ry = _clamp_i16(np.int64(cand_q[j, 1]) - by) & 0xFFFF
            else:
                rx = 0
                ry = 0
            if spawn:
                so = _put_handle(buf, so, h, wide_handles)
                so = _put_u64(buf, so, cand_ids[j])
                so = _put_u16(buf, so, np.int64(cand_kind[j]))
                so = _put_u16(buf, so, rx)
                so = _put_u16(buf, so, ry)
                so = _put_u8(buf, so, 1 if owned else 0)
                for c in range(w):
                    buf[so + c] = pub_blob[j, c]
                so += w
                if owned:
                    for c in range(w2):
                        buf[so + c] = own_blob[j, c]
                    so += w2
                continue
            if cand_moved[j] != 0:
                mo = _put_handle(buf, mo, h, wide_handles)
                mo = _put_u16(buf, mo, rx)
                mo = _put_u16(buf, mo, ry)
            if cand_updated[j] != 0:
                uo = _put_handle(buf, uo, h, wide_handles)
                uo = _put_u8(buf, uo, 1 if owned else 0)
                for c in range(w):
                    buf[uo + c] = pub_blob[j, c]
                uo += w
                if owned:
                    for c in range(w2):
                        buf[uo + c] = own_blob[j, c]
                    uo += w2
    return buf, off, status, bad


def _check_len(name: str, a: npt.NDArray[np.generic], shape: tuple[int, ...]) -> None:
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")


def _check_csr(name: str, off: npt.NDArray[np.int64], m: int, n_data: int) -> None:
    if off.shape != (m + 1,):
        raise ValueError(f"{name} must have shape ({m + 1},), got {off.shape}")
    if off[0] != 0 or off[-1] != n_data or (m > 0 and bool(np.any(off[1:] < off[:-1]))):
        raise ValueError(f"{name} is not a valid CSR over {n_data} entries")


def encode_snapshots(
    tick: int,
    reset: npt.NDArray[np.uint8],
    base_q: npt.NDArray[np.int32],
    cur_off: npt.NDArray[np.int64],
    cur_idx: npt.NDArray[np.int32],
    cur_handle: npt.NDArray[np.uint16],
    cur_state: npt.NDArray[np.uint8],
    leave_off: npt.NDArray[np.int64],
    leave_handle: npt.NDArray[np.uint16],
    cand_ids: npt.NDArray[np.uint64],
    cand_kind: npt.NDArray[np.uint16],
    cand_q: npt.NDArray[np.int32],
    cand_moved: npt.NDArray[np.uint8],
    cand_updated: npt.NDArray[np.uint8],
    pub_blob: npt.NDArray[np.uint8],
    own_blob: npt.NDArray[np.uint8],
    cand_owner: npt.NDArray[np.uint64],
    obs_owner: npt.NDArray[np.uint64],
    wide_handles: bool,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Checked entry point of :func:`encode_snapshot_payloads` (same arguments).

    Returns ``(buf uint8[total], off int64[M + 1])``: observer ``i``'s payload is
    ``buf[off[i]:off[i + 1]]``. Raises ``ValueError`` on inconsistent shapes, rows outside
    ``[0, N)``, a section longer than 65535 entries (the zone's ``k_max`` must stay <= 65535),
    or, with ``wide_handles=False``, a handle above 255 (``k_max <= 256`` rules that out).
    """
    reset = np.ascontiguousarray(reset, dtype=np.uint8)
    base_q = np.ascontiguousarray(base_q, dtype=np.int32)
    cur_off = np.ascontiguousarray(cur_off, dtype=np.int64)
    cur_idx = np.ascontiguousarray(cur_idx, dtype=np.int32)
    cur_handle = np.ascontiguousarray(cur_handle, dtype=np.uint16)
    cur_state = np.ascontiguousarray(cur_state, dtype=np.uint8)
    leave_off = np.ascontiguousarray(leave_off, dtype=np.int64)
    leave_handle = np.ascontiguousarray(leave_handle, dtype=np.uint16)
    cand_ids = np.ascontiguousarray(cand_ids, dtype=np.uint64)
    cand_kind = np.ascontiguousarray(cand_kind, dtype=np.uint16)
    cand_q = np.ascontiguousarray(cand_q, dtype=np.int32)
    cand_moved = np.ascontiguousarray(cand_moved, dtype=np.uint8)
    cand_updated = np.ascontiguousarray(cand_updated, dtype=np.uint8)
    pub_blob = np.ascontiguousarray(pub_blob, dtype=np.uint8)
    own_blob = np.ascontiguousarray(own_blob, dtype=np.uint8)
    cand_owner = np.ascontiguousarray(cand_owner, dtype=np.uint64)
    obs_owner = np.ascontiguousarray(obs_owner, dtype=np.uint64)

    m = reset.shape[0]
    n = cand_ids.shape[0]
    v = cur_idx.shape[0]
    _check_len("reset", reset, (m,))
    _check_len("base_q", base_q, (m, 2))
    _check_len("obs_owner", obs_owner, (m,))
    _check_csr("cur_off", cur_off, m, v)
    _check_len("cur_handle", cur_handle, (v,))
    _check_len("cur_state", cur_state, (v,))
    _check_csr("leave_off", leave_off, m, leave_handle.shape[0])
    _check_len("leave_handle", leave_handle, (leave_handle.shape[0],))
    _check_len("cand_ids", cand_ids, (n,))
    _check_len("cand_kind", cand_kind, (n,))
    _check_len("cand_q", cand_q, (n, 2))
    _check_len("cand_moved", cand_moved, (n,))
    _check_len("cand_updated", cand_updated, (n,))
    _check_len("cand_owner", cand_owner, (n,))
    if pub_blob.ndim != 2 or pub_blob.shape[0] != n:
        raise ValueError(f"pub_blob must have shape ({n}, W), got {pub_blob.shape}")
    if own_blob.ndim != 2 or own_blob.shape[0] != n:
        raise ValueError(f"own_blob must have shape ({n}, W2), got {own_blob.shape}")
    if v and (int(cur_idx.min()) < 0 or int(cur_idx.max()) >= n):
        raise ValueError(f"cur_idx holds a row outside [0, {n})")

    buf, off, status, bad = encode_snapshot_payloads(
        np.int64(tick),
        reset,
        base_q,
        cur_off,
        cur_idx,
        cur_handle,
        cur_state,
        leave_off,
        leave_handle,
        cand_ids,
        cand_kind,
        cand_q,
        cand_moved,
        cand_updated,
        pub_blob,
        own_blob,
        cand_owner,
        obs_owner,
        bool(wide_handles),
    )
    if status == ENCODE_SECTION_TOO_LONG:
        raise ValueError(
            f"observer {bad}'s snapshot has a section over {MAX_SECTION_COUNT} entries"
        )
    if status == ENCODE_HANDLE_TOO_WIDE:
        raise ValueError(
            f"observer {bad} uses a handle above {MAX_NARROW_HANDLE}; pass wide_handles=True"
        )
    if status != ENCODE_OK:
        raise ValueError(f"snapshot encoding failed with status {status} at observer {bad}")
    return buf, off


def pack_columns(columns: Sequence[npt.ArrayLike], n: int) -> npt.NDArray[np.uint8]:
    """Pack fixed-size columns row-wise, little-endian, in the given order.

    Each column is an array of ``n`` rows: shape ``(n,)`` or ``(n, k, ...)`` of a numeric or
    bool dtype (bool packs as one byte 0/1). Returns ``uint8[n, W]`` where ``W`` is the sum
    of the columns' bytes per row; row ``r`` is column 0's row ``r`` bytes, then column 1's,
    and so on (a ``(n, k)`` column contributes its ``k`` elements in order). Work is per
    column, never per row.
    """
    arrays: list[npt.NDArray[np.uint8]] = []
    for c, col in enumerate(columns):
        a = np.asarray(col)
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"column {c} must have {n} rows, got shape {a.shape}")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"column {c} has unsupported dtype {a.dtype}")
        if a.dtype.kind == "b":
            a = a.astype(np.uint8)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        row_bytes = a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
        arrays.append(a.reshape(-1).view(np.uint8).reshape(n, row_bytes))
    width = sum(a.shape[1] for a in arrays)
    out = np.empty((n, width), np.uint8)
    at = 0
    for a in arrays:
        out[:, at : at + a.shape[1]] = a
        at += a.shape[1]
    return out


def warm_up() -> None:
    """Load (or compile) every kernel of this module on tiny arrays of the production dtypes."""
    q, moved = quantize_positions(np.zeros((2, 2), np.float32), 0.01, np.zeros((2, 2), np.int32))
    for wide in (False, True):
        encode_snapshots(
            1,
            np.array([0, 1], np.uint8),
            np.zeros((2, 2), np.int32),
            np.array([0, 2, 3], np.int64),
            np.array([0, 1, 1], np.int32),
            np.array([0, 1, 0], np.uint16),
            np.array([1, 0, 0], np.uint8),
            np.array([0, 1, 1], np.int64),
            np.array([2], np.uint16),
            np.array([5, 9], np.uint64),
            np.array([1, 2], np.uint16),
            q,
            moved,
            np.array([1, 1], np.uint8),
            np.zeros((2, 3), np.uint8),
            np.zeros((2, 1), np.uint8),
            np.array([7, 0], np.uint64),
            np.array([7, 0], np.uint64),
            wide,
        )
