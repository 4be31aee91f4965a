"""Interest management: which candidates each observer can see.

:func:`compute_interest` is the one entry point (the zone tick and the benchmark both call
it). It indexes the candidates in a uniform grid (:mod:`shardworld.kernels.grid`, cells at
least one query distance wide, so an observer's candidates all lie in the 3x3 cells
around its own; each row of three cells is one contiguous slot range) and sorts the
observers into the same cells.

Plain queries (no hysteresis, no binding cap: the benchmark's case) copy the 3x3
neighbourhood of each cell that holds observers into small contiguous buffers once and
take two passes:

1. ``count_in_range``: per observer and per 64 block candidates, one explicit 64-lane
   vector comparison (:func:`mask_in_range`) yields a uint64 word of hit bits; the words
   are kept and their popcounts are the list lengths;
2. ``place_lists`` turns lengths into CSR offsets, the result is allocated exactly once,
   and ``fill_in_range`` compress-stores the candidate indices each word selects
   (:func:`store_selected`; no distance is computed twice), prefetching the output lines
   of the lists a few observers ahead.

The zone's query (hysteresis against previous lists, a ``k_max`` cap) is one pass,
``select_interest``, over the observers in cell order. Each observer scans the three
row ranges of its neighbourhood in place, 64 slots per vector compare
(:func:`mask_in_ranges` gives the bits within the radius and within radius + hysteresis
from one distance computation). Annulus candidates are looked up in the observer's
previous list: their ids were gathered into slot order beforehand, so the lookups read
next to the rows just scanned; short lists are compared whole, long ones
binary-searched. When ``k_max`` candidates already lie within the radius the annulus is
skipped, since none of it could be kept. A binding cap brackets the cut-off distance by
counting with vector compares and selects exactly among the few candidates inside the
bracket. Lists go slot after slot into scratch; ``move_lists`` puts them in observer
order. Where the result would be huge, ``count_interest`` and ``fill_interest`` run the
same scan twice and write every list in place instead.

The vector helpers are LLVM intrinsics behind plain Python functions of the same meaning
(``numba.extending.overload``), so the pure-Python bodies of the kernels still run.

Scratch arrays are kept per thread from call to call (:class:`_Workspace`): a tick that
allocated them afresh would page-fault on every 4 KiB it touches, which at 100k entities
costs as much as the query. Memory is the result plus O(N + M + list bound) scratch.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
from llvmlite import ir  # type: ignore[import-untyped]
from llvmlite.binding import get_host_cpu_features  # type: ignore[import-untyped]
from numba import types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import intrinsic, overload

from shardworld.kernels._jit import kernel
from shardworld.kernels.grid import plan_grid, prefetch_read, prefetch_write, sort_into_cells_xy

# Hot loops index with uint64: numba wraps negative signed indices (an extra compare and
# select per access), which also keeps LLVM from vectorising the loop.
_U = np.uint64
_cgutils: Any = cgutils
_UniTuple: Any = types.UniTuple
# Index arguments of the vector helpers: Python ints, or uint64 inside kernels.
Index = int | np.integer[Any]

# Block copies move whole chunks of this many entries; arrays they read from carry this
# many padding entries past their end.
_CHUNK = 8
# How many observer slots ahead the fill pass prefetches output lines.
_AHEAD = 8
# How many slots ahead the gather of ids in slot order prefetches.
_PREFETCH_IDS = 32
# Readable padding past the end of the cell-ordered candidate columns: the row scans read
# whole words of 64 slots from wherever a row starts.
_PAD = 64
# The k-nearest selection narrows its distance bracket until at most this many marked
# candidates lie inside it, in at most this many counting steps.
_FEW = 32
_NARROW_STEPS = 64
# Previous lists up to this long are searched by comparing every entry, longer ones by
# binary search.
_SCAN_LIST = 64
# What scan_interest does with each observer's list.
_COUNT = 0
_FILL = 1
_PACK = 2
# The one-pass query keeps its lists in scratch of up to this many entries per
# candidate and observer, or _LIST_SCRATCH_MIN entries; beyond, it counts first.
_LIST_SCRATCH = 16
_LIST_SCRATCH_MIN = 1 << 22


def _count_trailing_zeros_typer(typingctx: Any, word: Any) -> Any:
    if word != types.uint64:
        return None
    sig = types.uint64(word)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64, ir.IntType(1)])
        fn = _cgutils.get_or_insert_function(builder.module, fnty, "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

    return sig, codegen


_count_trailing_zeros: Any = intrinsic(_count_trailing_zeros_typer)


def lowest_bit(word: np.uint64) -> np.uint64:
    """Index of the lowest set bit of a non-zero uint64 (one instruction when compiled)."""
    w = int(word)
    return np.uint64((w & -w).bit_length() - 1)


@overload(lowest_bit)
def _lowest_bit_impl(word: Any) -> Any:
    def impl(word: Any) -> Any:
        return _count_trailing_zeros(word)

    return impl


def _count_bits_typer(typingctx: Any, word: Any) -> Any:
    if word != types.uint64:
        return None
    sig = types.uint64(word)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64])
        fn = _cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return sig, codegen


_count_bits: Any = intrinsic(_count_bits_typer)


def count_bits(word: np.uint64) -> np.uint64:
    """Number of set bits of a uint64 (one instruction when compiled)."""
    return np.uint64(int(word).bit_count())


@overload(count_bits)
def _count_bits_impl(word: Any) -> Any:
    def impl(word: Any) -> Any:
        return _count_bits(word)

    return impl


def _store_selected_typer(
    typingctx: Any, out: Any, start: Any, src: Any, base: Any, word: Any
) -> Any:
    ints = (out, src)
    if not all(isinstance(a, types.Array) and a.dtype == types.int32 for a in ints):
        return None
    sig = types.none(out, start, src, base, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        dst_arr = context.make_array(signature.args[0])(context, builder, args[0])
        src_arr = context.make_array(signature.args[2])(context, builder, args[2])
        at = context.cast(builder, args[1], signature.args[1], types.intp)
        base_idx = context.cast(builder, args[3], signature.args[3], types.intp)
        i32 = ir.IntType(32)
        vty = ir.VectorType(i32, 64)
        src_ptr = builder.bitcast(builder.gep(src_arr.data, [base_idx]), vty.as_pointer())
        values = builder.load(src_ptr, align=4)
        lanes = builder.bitcast(args[4], ir.VectorType(ir.IntType(1), 64))
        dst = builder.gep(dst_arr.data, [at])
        fnty = ir.FunctionType(ir.VoidType(), [vty, dst.type, lanes.type])
        name = "llvm.masked.compressstore.v64i32"
        fn = _cgutils.get_or_insert_function(builder.module, fnty, name)
        builder.call(fn, [values, dst, lanes])
        return context.get_dummy_value()

    return sig, codegen


_store_selected: Any = intrinsic(_store_selected_typer)


def store_selected(
    out: npt.NDArray[np.int32],
    start: Index,
    src: npt.NDArray[np.int32],
    base: Index,
    word: np.uint64,
) -> None:
    """Append ``src[base + t]`` for every set bit ``t`` of ``word`` to ``out[start:]``.

    src: int32 with at least ``base + 64`` entries; writes exactly ``count_bits(word)``
    entries, lowest bit first. Compiled for an AVX-512 target this is LLVM's masked
    compress-store (four vpcompressd); elsewhere :func:`store_selected_bits`.
    """
    bits = np.unpackbits(np.array([word], "<u8").view(np.uint8), bitorder="little")
    chosen = src[int(base) : int(base) + 64][bits.astype(bool)]
    out[int(start) : int(start) + chosen.shape[0]] = chosen


def _target_has_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512F (its host unless configured)."""
    if getattr(numba_config, "CPU_NAME", None):
        return "+avx512f" in (getattr(numba_config, "CPU_FEATURES", None) or "")
    try:
        return bool(get_host_cpu_features().get("avx512f", False))
    except RuntimeError:
        return False


@kernel
def store_selected_bits(
    out: npt.NDArray[np.int32],
    start: Index,
    src: npt.NDArray[np.int32],
    base: Index,
    word: np.uint64,
) -> None:
    """:func:`store_selected` one set bit at a time (for CPUs without compress-store)."""
    at = _U(start)
    while word != _U(0):
        out[at] = src[_U(base) + lowest_bit(word)]
        at += _U(1)
        word &= word - _U(1)


@overload(store_selected)
def _store_selected_impl(out: Any, start: Any, src: Any, base: Any, word: Any) -> Any:
    if not _target_has_avx512():
        # Without AVX-512 LLVM expands the compress-store into 64 conditional stores,
        # slower than walking the set bits.
        def bitwise(out: Any, start: Any, src: Any, base: Any, word: Any) -> None:
            store_selected_bits(out, start, src, base, word)

        return bitwise

    def impl(out: Any, start: Any, src: Any, base: Any, word: Any) -> None:
        _store_selected(out, start, src, base, word)

    return impl


def _squared_distances_ir(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """IR for the 64 squared distances of ``xb/yb[base:base + 64]`` to ``(xi, yi)``."""
    xa = context.make_array(signature.args[0])(context, builder, args[0])
    ya = context.make_array(signature.args[1])(context, builder, args[1])
    idx = context.cast(builder, args[2], signature.args[2], types.intp)
    vty = ir.VectorType(ir.DoubleType(), 64)
    vx = builder.load(builder.bitcast(builder.gep(xa.data, [idx]), vty.as_pointer()), align=8)
    vy = builder.load(builder.bitcast(builder.gep(ya.data, [idx]), vty.as_pointer()), align=8)
    dx = builder.fsub(vx, _splat(builder, args[3]))
    dy = builder.fsub(vy, _splat(builder, args[4]))
    # Plain fmul/fadd without fast-math flags: LLVM may not contract them into FMAs,
    # so every lane rounds exactly like the scalar reference.
    return builder.fadd(builder.fmul(dx, dx), builder.fmul(dy, dy))


def _splat(builder: Any, value: Any) -> Any:
    """A 64-lane vector with every lane ``value`` (a double)."""
    vty = ir.VectorType(ir.DoubleType(), 64)
    undef = ir.Constant(vty, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        one, undef, ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64)
    )


def _float64_columns(*arrays: Any) -> bool:
    return all(isinstance(a, types.Array) and a.dtype == types.float64 for a in arrays)


def _mask_in_range_typer(
    typingctx: Any, xb: Any, yb: Any, base: Any, xi: Any, yi: Any, r2: Any
) -> Any:
    if not _float64_columns(xb, yb):
        return None
    sig = types.uint64(xb, yb, base, types.float64, types.float64, types.float64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        d2 = _squared_distances_ir(context, builder, signature, args)
        inside = builder.fcmp_ordered("<=", d2, _splat(builder, args[5]))
        return builder.bitcast(inside, ir.IntType(64))

    return sig, codegen


_mask_in_range: Any = intrinsic(_mask_in_range_typer)


def mask_in_range(
    xb: npt.NDArray[np.float64],
    yb: npt.NDArray[np.float64],
    base: Index,
    xi: float,
    yi: float,
    r2: float,
) -> np.uint64:
    """Bit ``t`` set when candidate ``base + t`` (t < 64) is within ``r2`` of (xi, yi).

    xb, yb: float64 with at least ``base + 64`` entries. Squared distances are
    ``dx * dx + dy * dy`` in float64; NaN is never in range. Compiled, this is one
    explicit 64-lane vector comparison (the widest registers the CPU has) whose lane
    mask is the word itself.
    """
    return _pack_bits(_squared_distances(xb, yb, base, xi, yi) <= r2)


def _squared_distances(
    xb: npt.NDArray[np.float64], yb: npt.NDArray[np.float64], base: Index, xi: float, yi: float
) -> npt.NDArray[np.float64]:
    b = int(base)
    dx = xb[b : b + 64] - xi
    dy = yb[b : b + 64] - yi
    with np.errstate(invalid="ignore"):
        return dx * dx + dy * dy


def _pack_bits(inside: npt.NDArray[np.bool_]) -> np.uint64:
    return np.uint64(np.packbits(inside, bitorder="little").view("<u8")[0])


@overload(mask_in_range)
def _mask_in_range_impl(xb: Any, yb: Any, base: Any, xi: Any, yi: Any, r2: Any) -> Any:
    def impl(xb: Any, yb: Any, base: Any, xi: Any, yi: Any, r2: Any) -> Any:
        return _mask_in_range(xb, yb, base, xi, yi, r2)

    return impl


def _mask_in_ranges_typer(
    typingctx: Any, xb: Any, yb: Any, base: Any, xi: Any, yi: Any, r2: Any, rh2: Any
) -> Any:
    if not _float64_columns(xb, yb):
        return None
    f64 = types.float64
    sig = _UniTuple(types.uint64, 2)(xb, yb, base, f64, f64, f64, f64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        d2 = _squared_distances_ir(context, builder, signature, args)
        i64 = ir.IntType(64)
        inner = builder.fcmp_ordered("<=", d2, _splat(builder, args[5]))
        outer = builder.fcmp_ordered("<=", d2, _splat(builder, args[6]))
        words = [builder.bitcast(inner, i64), builder.bitcast(outer, i64)]
        return context.make_tuple(builder, signature.return_type, words)

    return sig, codegen


_mask_in_ranges: Any = intrinsic(_mask_in_ranges_typer)


def mask_in_ranges(
    xb: npt.NDArray[np.float64],
    yb: npt.NDArray[np.float64],
    base: Index,
    xi: float,
    yi: float,
    r2: float,
    rh2: float,
) -> tuple[np.uint64, np.uint64]:
    """:func:`mask_in_range` for two squared radii at once: (bits within r2, within rh2).

    Each distance is computed once, so both words agree exactly with single queries.
    """
    d2 = _squared_distances(xb, yb, base, xi, yi)
    return _pack_bits(d2 <= r2), _pack_bits(d2 <= rh2)


@overload(mask_in_ranges)
def _mask_in_ranges_impl(xb: Any, yb: Any, base: Any, xi: Any, yi: Any, r2: Any, rh2: Any) -> Any:
    def impl(xb: Any, yb: Any, base: Any, xi: Any, yi: Any, r2: Any, rh2: Any) -> Any:
        return _mask_in_ranges(xb, yb, base, xi, yi, r2, rh2)

    return impl


@kernel
def measure_blocks(
    cell_start: npt.NDArray[np.int64],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
) -> tuple[int, int]:
    """Sizes of the per-cell neighbourhood blocks, for the caller's buffers.

    cell_start, obs_cell_start: int64[nx*ny + 1] (candidate and observer cell indexes on the
    same grid). Returns (max_block, mask_words): the largest 3x3 neighbourhood (in
    candidates) of a cell that holds observers, and the uint64 words of hit masks the plain
    query stores (one bit per candidate of the block, per observer).
    """
    best = 0
    words = 0
    for cy in range(ny):
        y0 = max(cy - 1, 0)
        y1 = min(cy + 1, ny - 1)
        for cx in range(nx):
            c = cy * nx + cx
            nobs = obs_cell_start[c + 1] - obs_cell_start[c]
            if nobs == 0:
                continue
            x0 = max(cx - 1, 0)
            x1 = min(cx + 1, nx - 1)
            size = 0
            for yy in range(y0, y1 + 1):
                size += cell_start[yy * nx + x1 + 1] - cell_start[yy * nx + x0]
            best = max(best, size)
            words += nobs * ((size + 63) >> 6)
    return best, words


@kernel
def gather_positions(
    cell_start: npt.NDArray[np.int64],
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    nx: int,
    ny: int,
    cx: int,
    cy: int,
    xb: npt.NDArray[np.float64],
    yb: npt.NDArray[np.float64],
) -> int:
    """Copy the candidates of the 3x3 cells around (cx, cy) into contiguous buffers.

    cell_start int64[nx*ny + 1]; xs, ys float64[N + _CHUNK]: cell-ordered candidates
    followed by _CHUNK readable padding entries. xb, yb float64[>= block + _CHUNK]
    receive the coordinates; entries past the block are left undefined. Returns the block
    length; each row of three cells is one contiguous slot range.
    """
    size = _U(0)
    x0 = max(cx - 1, 0)
    x1 = min(cx + 1, nx - 1)
    chunk = _U(_CHUNK)
    for yy in range(max(cy - 1, 0), min(cy + 1, ny - 1) + 1):
        a = _U(cell_start[yy * nx + x0])
        b = _U(cell_start[yy * nx + x1 + 1])
        # Whole fixed-size chunks, overrunning the row into padding: a loop whose trip
        # count is a constant compiles to straight vector moves, where an exact-length
        # copy spends more on mispredicted loop exits than on copying.
        for k in range(_U(0), b - a, chunk):
            for u in range(chunk):
                xb[size + k + u] = xs[a + k + u]
                yb[size + k + u] = ys[a + k + u]
        size += b - a
    return int(size)


@kernel
def gather_indices(
    cell_start: npt.NDArray[np.int64],
    cand_order: npt.NDArray[np.int32],
    nx: int,
    ny: int,
    cx: int,
    cy: int,
    ib: npt.NDArray[np.int32],
) -> int:
    """Copy the original indices of the 3x3 cells around (cx, cy), in block order.

    cell_start int64[nx*ny + 1]; cand_order int32[N + _CHUNK]: slot -> original candidate,
    then padding. ib int32[>= block + _CHUNK] receives them (same order as
    :func:`gather_positions`; entries past the block undefined). Returns the length.
    """
    size = _U(0)
    x0 = max(cx - 1, 0)
    x1 = min(cx + 1, nx - 1)
    chunk = _U(_CHUNK)
    for yy in range(max(cy - 1, 0), min(cy + 1, ny - 1) + 1):
        a = _U(cell_start[yy * nx + x0])
        b = _U(cell_start[yy * nx + x1 + 1])
        for k in range(_U(0), b - a, chunk):
            for u in range(chunk):
                ib[size + k + u] = cand_order[a + k + u]
        size += b - a
    return int(size)


@kernel
def count_in_range(
    cell_start: npt.NDArray[np.int64],
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
    obs_xs: npt.NDArray[np.float64],
    obs_ys: npt.NDArray[np.float64],
    r2: float,
    max_block: int,
    counts: npt.NDArray[np.int64],
    masks: npt.NDArray[np.uint64],
) -> None:
    """Count, per observer, the candidates with squared distance <= r2, keeping hit masks.

    Candidates: cell_start int64[nx*ny + 1] and cell-ordered xs, ys float64[N + _CHUNK]
    (readable padding after the N entries); observers on the same grid: obs_cell_start
    int64[nx*ny + 1] and obs_xs, obs_ys float64[M] in slot order. r2: float64 squared
    radius (finite). max_block and the length of masks (uint64[mask_words]) come from
    :func:`measure_blocks`. Writes the count of observer slot ``s`` to counts[s]
    (int64[M]) and its hit bits to masks; the caller then calls :func:`place_lists`,
    allocates int32[vis_off[M]] and calls :func:`fill_in_range` with the same masks.
    """
    padded = ((max_block + 63) >> 6) * 64 + _CHUNK
    # Entries past a block hold whatever an earlier block left there; their bits are
    # cleared below, so only initialise once.
    xb = np.zeros(padded, np.float64)
    yb = np.zeros(padded, np.float64)
    all_bits = ~_U(0)
    mo = _U(0)
    for cy in range(ny):
        for cx in range(nx):
            c = cy * nx + cx
            oa = obs_cell_start[c]
            ob = obs_cell_start[c + 1]
            if oa == ob:
                continue
            size = _U(gather_positions(cell_start, xs, ys, nx, ny, cx, cy, xb, yb))
            nwords = (size + _U(63)) >> _U(6)
            # The scan runs over whole 64-candidate words; the bits of the slack past the
            # block are masked off the last word.
            last = nwords - _U(1)
            tail = size & _U(63)
            tail_bits = (_U(1) << tail) - _U(1) if tail != _U(0) else all_bits
            for s in range(oa, ob):
                xi = obs_xs[s]
                yi = obs_ys[s]
                hits = _U(0)
                for g in range(nwords):
                    word = mask_in_range(xb, yb, g * _U(64), xi, yi, r2)
                    if g == last:
                        word &= tail_bits
                    masks[mo + g] = word
                    hits += count_bits(word)
                mo += nwords
                # Stored in slot order: a store to a random place of a large array in
                # this loop stalls it on the cache miss.
                counts[s] = hits


@kernel
def place_lists(
    obs_order: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int64],
    vis_off: npt.NDArray[np.int64],
    dest: npt.NDArray[np.int64],
) -> None:
    """Turn per-slot list lengths into CSR offsets and per-slot write positions.

    obs_order int32[M] (slot -> original observer), counts int64[M] (list length of each
    slot). Writes vis_off int64[M + 1] (offsets by original observer, vis_off[0] = 0) and
    dest int64[M] (where the list of slot ``s`` starts). The caller allocates
    int32[vis_off[M]] for the lists.
    """
    m = obs_order.shape[0]
    vis_off[0] = 0
    # obs_order is a random permutation for a zone's entity rows: both scattered passes
    # ask for their line some iterations ahead so the misses overlap.
    for s in range(m):
        if s + 16 < m:
            prefetch_write(vis_off, obs_order[s + 16] + 1)
        vis_off[obs_order[s] + 1] = counts[s]
    for i in range(m):
        vis_off[i + 1] += vis_off[i]
    for s in range(m):
        if s + 16 < m:
            prefetch_read(vis_off, obs_order[s + 16])
        dest[s] = vis_off[obs_order[s]]


@kernel
def fill_in_range(
    cell_start: npt.NDArray[np.int64],
    cand_order: npt.NDArray[np.int32],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
    dest: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    max_block: int,
    masks: npt.NDArray[np.uint64],
    vis_idx: npt.NDArray[np.int32],
) -> None:
    """Write the candidate indices whose bits :func:`count_in_range` set.

    cell_start, obs_cell_start as for :func:`count_in_range`; cand_order int32[N +
    _CHUNK] (slot -> original candidate, then padding); dest, counts int64[M]: start and
    length of each observer slot's list (:func:`place_lists`); masks: the hit bits;
    vis_idx int32[sum(counts)] receives the lists (order within a list follows the cell
    layout). Raises if a count disagrees with the masks.
    """
    # Whole 64-entry words are read past the block, so round the buffer up.
    ib = np.zeros(((max_block + 63) >> 6) * 64 + _CHUNK, np.int32)
    m = dest.shape[0]
    mo = _U(0)
    for cy in range(ny):
        for cx in range(nx):
            c = cy * nx + cx
            oa = obs_cell_start[c]
            ob = obs_cell_start[c + 1]
            if oa == ob:
                continue
            size = _U(gather_indices(cell_start, cand_order, nx, ny, cx, cy, ib))
            nwords = (size + _U(63)) >> _U(6)
            for s in range(oa, ob):
                # Lists go to scattered places of vis_idx: ask for every line of the list
                # a few slots ahead, rather than stall on stores to lines not in cache.
                if s + _AHEAD < m and counts[s + _AHEAD] > 0:
                    ahead = dest[s + _AHEAD]
                    for q in range(ahead, ahead + counts[s + _AHEAD], 16):
                        prefetch_write(vis_idx, q)
                    prefetch_write(vis_idx, ahead + counts[s + _AHEAD] - 1)
                w = _U(dest[s])
                for g in range(nwords):
                    word = masks[mo + g]
                    store_selected(vis_idx, w, ib, g * _U(64), word)
                    w += count_bits(word)
                mo += nwords
                if w != _U(dest[s] + counts[s]):
                    raise RuntimeError("interest fill disagrees with its count pass")


@kernel
def _zero() -> int:
    """0 as a plain int64, not a compile-time constant.

    numba compiles a kernel once more for every constant it is called with: counters
    passed on start from this, and ``_zero() + mode`` lets one compiled scan_interest
    serve all its modes.
    """
    return int(np.int64(0))


@kernel
def contains_id(ids: npt.NDArray[np.uint64], lo: int, hi: int, key: np.uint64) -> bool:
    """Whether ``key`` is in the ascending slice ``ids[lo:hi]`` (binary search)."""
    n = hi - lo
    if n <= 0:
        return False
    # Branch-free halving: the trip count depends only on the length and the step is a
    # conditional move, so random keys cost no mispredictions.
    base = lo
    while n > 1:
        half = n >> 1
        base = base + half if ids[base + half] <= key else base
        n -= half
    return bool(ids[base] == key)


@kernel
def select_smallest(vals: npt.NDArray[np.float64], n: int, k: int) -> float:
    """The ``k``-th smallest (0-based) of ``vals[:n]``, partially reordering them in place.

    vals: float64 scratch (no NaN), 0 <= k < n. Quickselect, expected O(n).
    """
    lo = 0
    hi = n - 1
    while lo < hi:
        pivot = vals[(lo + hi) >> 1]
        i = lo
        j = hi
        while i <= j:
            while vals[i] < pivot:
                i += 1
            while vals[j] > pivot:
                j -= 1
            if i <= j:
                vals[i], vals[j] = vals[j], vals[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return float(vals[k])


@kernel
def write_nearest(
    hit_idx: npt.NDArray[np.int32],
    hit_d2: npt.NDArray[np.float64],
    nhits: int,
    k_max: int,
    scratch: npt.NDArray[np.float64],
    out: npt.NDArray[np.int32],
    start: int,
) -> int:
    """Write the ``k_max`` nearest hits (all when ``k_max`` is 0 or not binding).

    hit_idx int32[nhits] candidate indices (distinct), hit_d2 float64[nhits] their squared
    distances; scratch float64[>= nhits]. Ties at the cut-off distance keep the lower
    candidate indices. Writes to ``out[start:]`` and returns the number written.
    """
    if k_max <= 0 or nhits <= k_max:
        for t in range(nhits):
            out[start + t] = hit_idx[t]
        return nhits
    for t in range(nhits):
        scratch[t] = hit_d2[t]
    cutoff = select_smallest(scratch, nhits, k_max - 1)
    w = start
    # Counters passed on to other kernels start as a typed zero: from a literal 0 numba
    # would also compile each callee for the constant (twice the compile time).
    ties = _zero()
    for t in range(nhits):
        if hit_d2[t] < cutoff:
            out[w] = hit_idx[t]
            w += 1
        elif hit_d2[t] == cutoff:
            # Park tied candidate indices in scratch (exact as float64).
            scratch[ties] = hit_idx[t]
            ties += 1
    need = k_max - (w - start)
    if need < ties:
        # Keep the `need` lowest tied indices.
        last = select_smallest(scratch, ties, need - 1)
        for t in range(nhits):
            if hit_d2[t] == cutoff and hit_idx[t] <= last:
                out[w] = hit_idx[t]
                w += 1
    else:
        for t in range(ties):
            out[w] = np.int32(scratch[t])
            w += 1
    return w - start


@kernel
def gather_slot_ids(
    cand_order: npt.NDArray[np.int32],
    cand_ids: npt.NDArray[np.uint64],
    slot_ids: npt.NDArray[np.uint64],
) -> None:
    """slot_ids[s] = cand_ids[cand_order[s]] for every entry of slot_ids (uint64[<= N]).

    The annulus checks then read ids next to the coordinates they just scanned instead
    of at random places.
    """
    n = slot_ids.shape[0]
    for s in range(n):
        if s + _PREFETCH_IDS < n:
            prefetch_read(cand_ids, cand_order[s + _PREFETCH_IDS])
        slot_ids[s] = cand_ids[_U(cand_order[s])]


@kernel
def count_within(
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    bases: npt.NDArray[np.int64],
    words: npt.NDArray[np.uint64],
    nwords: int,
    xi: float,
    yi: float,
    t: float,
) -> int:
    """How many set bits of ``words[:nwords]`` are candidates with d2 <= t.

    Word ``i`` covers slots ``bases[i] .. bases[i] + 63`` of the cell-ordered xs, ys
    (float64, readable 64 entries past every base).
    """
    c = _U(0)
    for i in range(nwords):
        c += count_bits(mask_in_range(xs, ys, bases[i], xi, yi, t) & words[i])
    return int(np.int64(c))


@kernel
def write_nearest_words(
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    cand_order: npt.NDArray[np.int32],
    bases: npt.NDArray[np.int64],
    words: npt.NDArray[np.uint64],
    nwords: int,
    hits: int,
    xi: float,
    yi: float,
    top: float,
    k_max: int,
    hit_idx: npt.NDArray[np.int32],
    hit_d2: npt.NDArray[np.float64],
    scratch: npt.NDArray[np.float64],
    out: npt.NDArray[np.int32],
    start: int,
) -> int:
    """Write the ``k_max`` nearest of the ``hits`` (> k_max > 0) candidates marked in words.

    Words as in :func:`count_within`; cand_order int32 maps slots to candidates (readable
    64 entries past every base); every marked candidate has d2 <= top. hit_idx int32,
    hit_d2 and scratch float64 need ``hits`` entries. Ties at the cut-off distance keep
    the lower candidate indices. Writes to ``out[start:]`` and returns ``k_max``.

    The cut-off is bracketed by squared distances ``lo < hi`` with fewer than k_max marked
    candidates within lo and at least k_max within hi, narrowed by counting with vector
    compares: interpolation first (in 2-D the count grows about linearly with the
    squared distance), bisection when a step gains too little. Everything within lo is
    written with compress-stores; only the few between lo and hi are collected and
    selected exactly.
    """
    lo = -1.0
    c_lo = 0
    hi = top
    c_hi = hits
    half = _FEW // 2
    bisect = False
    for _ in range(_NARROW_STEPS):
        if c_hi - c_lo <= _FEW:
            break
        floor = lo if lo > 0.0 else 0.0
        if bisect:
            t = floor + (hi - floor) * 0.5
        else:
            # Aim at k_max while both ends are far from it, then just inside the far end.
            want = k_max
            if k_max - c_lo <= half:
                want = k_max + half // 2
            elif c_hi - k_max <= half:
                want = k_max - half // 2
            t = floor + (hi - floor) * ((want - c_lo) / (c_hi - c_lo))
        if not (t > lo and t < hi):
            t = floor + (hi - floor) * 0.5
            if not (t > lo and t < hi):
                # No float left between the ends: what remains are exact ties.
                break
        c = count_within(xs, ys, bases, words, nwords, xi, yi, t)
        before = c_hi - c_lo
        if c < k_max:
            lo = t
            c_lo = c
        else:
            hi = t
            c_hi = c
        bisect = 2 * (c_hi - c_lo) > before
    w = _U(start)
    nmid = _zero()
    for i in range(nwords):
        near, mid = mask_in_ranges(xs, ys, bases[i], xi, yi, lo, hi)
        near &= words[i]
        mid &= words[i] & ~near
        if near != _U(0):
            store_selected(out, w, cand_order, bases[i], near)
            w += count_bits(near)
        base = _U(bases[i])
        while mid != _U(0):
            slot = base + lowest_bit(mid)
            mid &= mid - _U(1)
            dx = xs[slot] - xi
            dy = ys[slot] - yi
            hit_idx[nmid] = cand_order[slot]
            hit_d2[nmid] = dx * dx + dy * dy
            nmid += 1
    written = int(np.int64(w - _U(start)))
    rest = write_nearest(hit_idx, hit_d2, nmid, k_max - written, scratch, out, start + written)
    return written + rest


@kernel
def scan_interest(
    mode: int,
    cell_start: npt.NDArray[np.int64],
    cand_order: npt.NDArray[np.int32],
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
    obs_order: npt.NDArray[np.int32],
    obs_xs: npt.NDArray[np.float64],
    obs_ys: npt.NDArray[np.float64],
    r2: float,
    rh2: float,
    k_max: int,
    slot_ids: npt.NDArray[np.uint64],
    obs_prev: npt.NDArray[np.int32],
    prev_off: npt.NDArray[np.int64],
    prev_ids: npt.NDArray[np.uint64],
    max_block: int,
    counts: npt.NDArray[np.int64],
    dest: npt.NDArray[np.int64],
    out: npt.NDArray[np.int32],
) -> int:
    """Visible candidates of every observer with hysteresis and a k-nearest cap.

    The engine behind :func:`select_interest` (mode ``_PACK``), :func:`count_interest`
    (``_COUNT``) and :func:`fill_interest` (``_FILL``); arguments as there, slot_ids
    uint64[N] being the candidate ids in slot order, and dest int64[M] the list starts
    (read in ``_FILL`` mode only) and out int32 where the lists go (unused in ``_COUNT``
    mode). Per observer, the rows of its 3x3 cells are scanned in place, 64 slots per
    vector compare (no copies); annulus candidates (between r2 and rh2) are looked up in
    its previous list; a binding cap selects the nearest. Returns the number of list
    entries written.

    Every step of an observer is written out here rather than called: a compiled call
    that passes arrays is bracketed with atomic reference-count updates, which per
    observer cost more than the scan.
    """
    nmax = (max_block >> 6) + 3
    bases = np.empty(nmax, np.int64)
    tails = np.empty(nmax, np.uint64)
    words = np.empty(nmax, np.uint64)
    ring = np.empty(nmax, np.uint64)
    hit_idx = np.empty(max_block + 1, np.int32)
    hit_d2 = np.empty(max_block + 1, np.float64)
    scratch = np.empty(max_block + 1, np.float64)
    m = obs_order.shape[0]
    all_bits = ~_U(0)
    total = 0
    for cy in range(ny):
        for cx in range(nx):
            c = cy * nx + cx
            oa = obs_cell_start[c]
            ob = obs_cell_start[c + 1]
            if oa == ob:
                continue
            # Each row of three cells is one slot range, cut into words of 64 slots;
            # tails[i] keeps the bits that belong to the row.
            nwords = _zero()
            x0 = max(cx - 1, 0)
            x1 = min(cx + 1, nx - 1)
            for yy in range(max(cy - 1, 0), min(cy + 1, ny - 1) + 1):
                a = cell_start[yy * nx + x0]
                b = cell_start[yy * nx + x1 + 1]
                while a < b:
                    left = b - a
                    bases[nwords] = a
                    tails[nwords] = all_bits if left >= 64 else (_U(1) << _U(left)) - _U(1)
                    nwords += 1
                    a += 64
            for s in range(oa, ob):
                # Previous lists sit at scattered places: ask for the one a few observers
                # ahead before its comparisons need it.
                if s + _AHEAD < m:
                    pa = obs_prev[obs_order[s + _AHEAD]]
                    if pa >= 0:
                        for q in range(prev_off[pa], prev_off[pa + 1], 8):
                            prefetch_read(prev_ids, q)
                p = obs_prev[obs_order[s]]
                lo = prev_off[p] if p >= 0 else 0
                hi = prev_off[p + 1] if p >= 0 else 0
                xi = obs_xs[s]
                yi = obs_ys[s]
                hits = _zero()
                for i in range(nwords):
                    inner, outer = mask_in_ranges(xs, ys, bases[i], xi, yi, r2, rh2)
                    inner &= tails[i]
                    words[i] = inner
                    ring[i] = outer & tails[i] & ~inner
                    hits += int(np.int64(count_bits(inner)))
                # With k_max already within r2, the nearest k_max are all within r2 and
                # no annulus candidate could be kept: skip the lookups.
                ringed = rh2 > r2 and hi > lo and (k_max <= 0 or hits < k_max)
                if ringed:
                    short = hi - lo <= _SCAN_LIST
                    for i in range(nwords):
                        bits = ring[i]
                        base = _U(bases[i])
                        while bits != _U(0):
                            t = lowest_bit(bits)
                            bits &= bits - _U(1)
                            key = slot_ids[base + t]
                            if short:
                                # Compare with the whole list: vector compares, and no
                                # branch on the data to mispredict.
                                f = _U(0)
                                for q in range(_U(lo), _U(hi)):
                                    f |= _U(prev_ids[q] == key)
                            else:
                                f = _U(contains_id(prev_ids, lo, hi, key))
                            words[i] |= f << t
                            hits += int(np.int64(f))
                keep = hits if k_max <= 0 or hits <= k_max else k_max
                if mode == _COUNT:
                    counts[s] = keep
                    continue
                if mode == _FILL:
                    if keep != counts[s]:
                        raise RuntimeError("interest fill disagrees with its count pass")
                    start = dest[s]
                else:
                    counts[s] = keep
                    start = total
                    if total + keep > out.shape[0]:
                        raise IndexError("interest lists overflow their buffer")
                if keep == hits:
                    w = _U(start)
                    for i in range(nwords):
                        store_selected(out, w, cand_order, bases[i], words[i])
                        w += count_bits(words[i])
                else:
                    write_nearest_words(
                        xs, ys, cand_order, bases, words, nwords, hits, xi, yi,
                        rh2 if ringed else r2, k_max, hit_idx, hit_d2, scratch, out, start,
                    )  # fmt: skip
                total += keep
    return total


@kernel
def measure_lists(
    cell_start: npt.NDArray[np.int64],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
    k_max: int,
) -> tuple[int, int]:
    """Sizes for :func:`select_interest`: (max_block, list_bound).

    cell_start, obs_cell_start: int64[nx*ny + 1] as for :func:`measure_blocks`; k_max:
    cap (0 = none). max_block is the largest 3x3 neighbourhood (in candidates) of a cell
    that holds observers; list_bound bounds the total list length (per observer its
    neighbourhood, capped at k_max), so a buffer of that length cannot overflow.
    """
    best = 0
    bound = 0
    for cy in range(ny):
        y0 = max(cy - 1, 0)
        y1 = min(cy + 1, ny - 1)
        for cx in range(nx):
            c = cy * nx + cx
            nobs = obs_cell_start[c + 1] - obs_cell_start[c]
            if nobs == 0:
                continue
            x0 = max(cx - 1, 0)
            x1 = min(cx + 1, nx - 1)
            size = 0
            for yy in range(y0, y1 + 1):
                size += cell_start[yy * nx + x1 + 1] - cell_start[yy * nx + x0]
            best = max(best, size)
            bound += nobs * (min(size, k_max) if k_max > 0 else size)
    return best, bound


@kernel
def select_interest(
    cell_start: npt.NDArray[np.int64],
    cand_order: npt.NDArray[np.int32],
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
    obs_order: npt.NDArray[np.int32],
    obs_xs: npt.NDArray[np.float64],
    obs_ys: npt.NDArray[np.float64],
    r2: float,
    rh2: float,
    k_max: int,
    slot_ids: npt.NDArray[np.uint64],
    obs_prev: npt.NDArray[np.int32],
    prev_off: npt.NDArray[np.int64],
    prev_ids: npt.NDArray[np.uint64],
    max_block: int,
    counts: npt.NDArray[np.int64],
    lists: npt.NDArray[np.int32],
) -> int:
    """Visible candidates of every observer with hysteresis and a k-nearest cap, in one pass.

    Candidates: cell_start int64[nx*ny + 1], cand_order int32[N + 64] (slot -> candidate)
    and cell-ordered xs, ys float64[N + 64] (64 readable padding entries after the N).
    Observers on the same grid: obs_cell_start int64[nx*ny + 1], obs_order int32[M] (slot
    -> observer), obs_xs, obs_ys float64[M] in slot order. r2 = radius**2, rh2 = (radius +
    hysteresis)**2 (float64; rh2 <= r2 turns hysteresis off); k_max: cap (0 = none).
    slot_ids uint64[N]: candidate ids in slot order (:func:`gather_slot_ids`; may be
    empty when no observer has a previous list); obs_prev int32[M] previous-list number
    per observer (-1 = none); prev_off int64[P + 1], prev_ids uint64[Q]: previous lists,
    each ascending. max_block from :func:`measure_lists`.

    Writes the list length of observer slot ``s`` to counts[s] (int64[M]) and the lists,
    slot after slot, to lists (int32, at least :func:`measure_lists` long). Returns the
    total length. The caller then calls :func:`place_lists` and :func:`move_lists` to put
    the lists in observer order.
    """
    return scan_interest(
        _zero() + _PACK, cell_start, cand_order, xs, ys, nx, ny, obs_cell_start, obs_order,
        obs_xs, obs_ys, r2, rh2, k_max, slot_ids, obs_prev, prev_off, prev_ids, max_block,
        counts, counts, lists,
    )  # fmt: skip


@kernel
def move_lists(
    lists: npt.NDArray[np.int32],
    counts: npt.NDArray[np.int64],
    dest: npt.NDArray[np.int64],
    vis_idx: npt.NDArray[np.int32],
) -> None:
    """Copy lists stored slot after slot to their places in observer order.

    lists int32 (slot ``s``'s list follows slot ``s - 1``'s), counts int64[M] their
    lengths, dest int64[M] where each goes (:func:`place_lists`); vis_idx int32[sum(counts)].
    """
    m = counts.shape[0]
    src = _U(0)
    for s in range(m):
        if s + _AHEAD < m:
            prefetch_write(vis_idx, dest[s + _AHEAD])
        d = _U(dest[s])
        for t in range(_U(counts[s])):
            vis_idx[d + t] = lists[src + t]
        src += _U(counts[s])


@kernel
def count_interest(
    cell_start: npt.NDArray[np.int64],
    cand_order: npt.NDArray[np.int32],
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
    obs_order: npt.NDArray[np.int32],
    obs_xs: npt.NDArray[np.float64],
    obs_ys: npt.NDArray[np.float64],
    r2: float,
    rh2: float,
    k_max: int,
    cand_ids: npt.NDArray[np.uint64],
    obs_prev: npt.NDArray[np.int32],
    prev_off: npt.NDArray[np.int64],
    prev_ids: npt.NDArray[np.uint64],
    max_block: int,
    counts: npt.NDArray[np.int64],
) -> None:
    """First of two passes that write the lists straight to their places.

    Arguments as in :func:`select_interest`, except cand_ids uint64[N] (candidate ids in
    candidate order; may be empty when no observer has a previous list). Writes
    ``min(count, k_max)`` of observer slot ``s`` to counts[s] (int64[M]); the caller then
    calls :func:`place_lists`, allocates int32[vis_off[M]] and calls
    :func:`fill_interest`. Scans twice, but needs no scratch the size of the result:
    :func:`compute_interest` uses it where a slot-order buffer would be too large.
    """
    slot_ids = np.empty(cand_ids.shape[0], np.uint64)
    gather_slot_ids(cand_order, cand_ids, slot_ids)
    scan_interest(
        _zero() + _COUNT, cell_start, cand_order, xs, ys, nx, ny, obs_cell_start, obs_order,
        obs_xs, obs_ys, r2, rh2, k_max, slot_ids, obs_prev, prev_off, prev_ids, max_block,
        counts, counts, np.empty(0, np.int32),
    )  # fmt: skip


@kernel
def fill_interest(
    cell_start: npt.NDArray[np.int64],
    cand_order: npt.NDArray[np.int32],
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    nx: int,
    ny: int,
    obs_cell_start: npt.NDArray[np.int64],
    obs_order: npt.NDArray[np.int32],
    obs_xs: npt.NDArray[np.float64],
    obs_ys: npt.NDArray[np.float64],
    r2: float,
    rh2: float,
    k_max: int,
    cand_ids: npt.NDArray[np.uint64],
    obs_prev: npt.NDArray[np.int32],
    prev_off: npt.NDArray[np.int64],
    prev_ids: npt.NDArray[np.uint64],
    max_block: int,
    dest: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    vis_idx: npt.NDArray[np.int32],
) -> None:
    """Write the lists counted by :func:`count_interest` (same arguments before them).

    dest, counts int64[M]: start and length of each observer slot's list
    (:func:`place_lists`); vis_idx int32[sum(counts)] receives the lists. Raises if a
    count disagrees.
    """
    slot_ids = np.empty(cand_ids.shape[0], np.uint64)
    gather_slot_ids(cand_order, cand_ids, slot_ids)
    scan_interest(
        _zero() + _FILL, cell_start, cand_order, xs, ys, nx, ny, obs_cell_start, obs_order,
        obs_xs, obs_ys, r2, rh2, k_max, slot_ids, obs_prev, prev_off, prev_ids, max_block,
        counts, dest, vis_idx,
    )  # fmt: skip


@kernel
def check_previous(
    obs_prev: npt.NDArray[np.int32], prev_off: npt.NDArray[np.int64], nids: int
) -> int:
    """Whether previous lists are usable: 0 yes, 1 an obs_prev entry is out of range, 2 bad offsets.

    obs_prev int32[M] must hold -1 or a list number below P; prev_off int64[P + 1] (P >=
    0) must be non-decreasing offsets from 0 or more up to ``nids`` (the length of
    prev_ids). One pass, no temporaries: the zone checks this every snapshot.
    """
    nlists = prev_off.shape[0] - 1
    for i in range(obs_prev.shape[0]):
        if obs_prev[i] < -1 or obs_prev[i] >= nlists:
            return 1
    if prev_off[0] < 0 or prev_off[nlists] > nids:
        return 2
    for p in range(nlists):
        if prev_off[p + 1] < prev_off[p]:
            return 2
    return 0


def _as_positions(name: str, pos: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.ascontiguousarray(pos, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {arr.shape}")
    return arr


class _Workspace:
    """Scratch arrays that one thread reuses from call to call.

    A tick that allocates its scratch afresh pays a page fault for every 4 KiB it
    touches, which at 100k candidates costs more than the whole query; reused arrays
    are already mapped (and often still cached). Arrays only grow, to the largest size
    asked for; nothing returned to a caller ever lives here.
    """

    __slots__ = ("_arrays",)

    def __init__(self) -> None:
        self._arrays: dict[str, npt.NDArray[Any]] = {}

    def take(self, name: str, size: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        """An uninitialised 1-D array of ``size`` entries (a view of the kept one)."""
        arr = self._arrays.get(name)
        if arr is None or arr.shape[0] < size or arr.dtype != dtype:
            # Some headroom, so slowly growing worlds do not reallocate every tick.
            arr = np.empty(size + (size >> 3) + 64, dtype)
            self._arrays[name] = arr
        return arr[:size]


_local = threading.local()


def _workspace() -> _Workspace:
    ws: _Workspace | None = getattr(_local, "workspace", None)
    if ws is None:
        ws = _Workspace()
        _local.workspace = ws
    return ws


class _CellIndex:
    """Points sorted into one grid: cell starts, slot -> original index, float64 columns.

    ``order``, ``xs`` and ``ys`` hold N entries; the padded arrays behind them carry the
    _PAD extra readable entries that block copies and row scans read past the last cell.
    With a workspace the arrays are its scratch (valid until its next use under the same
    ``tag``); without, they are fresh.
    """

    __slots__ = ("cell_start", "order", "order_padded", "xs", "xs_padded", "ys", "ys_padded")

    def __init__(
        self,
        pos: npt.NDArray[np.float32],
        ox: float,
        oy: float,
        cell: float,
        nx: int,
        ny: int,
        workspace: _Workspace | None = None,
        tag: str = "",
    ) -> None:
        n = pos.shape[0]
        ws = _Workspace() if workspace is None else workspace
        self.cell_start = ws.take(tag + "cell_start", nx * ny + 1, np.int64)
        self.order_padded = ws.take(tag + "order", n + _PAD, np.int32)
        self.xs_padded = ws.take(tag + "xs", n + _PAD, np.float64)
        self.ys_padded = ws.take(tag + "ys", n + _PAD, np.float64)
        self.order_padded[n:] = 0
        self.xs_padded[n:] = np.inf
        self.ys_padded[n:] = np.inf
        self.order = self.order_padded[:n]
        self.xs = self.xs_padded[:n]
        self.ys = self.ys_padded[:n]
        cell_of = ws.take(tag + "cell_of", n, np.int32)
        sort_into_cells_xy(
            pos, ox, oy, cell, nx, ny, self.cell_start, self.order, self.xs, self.ys, cell_of
        )


def compute_interest(
    cand_pos: npt.NDArray[np.float32],
    obs_pos: npt.NDArray[np.float32],
    radius: float,
    hysteresis: float,
    k_max: int,
    cand_ids: npt.NDArray[np.uint64] | None = None,
    obs_prev: npt.NDArray[np.int32] | None = None,
    prev_off: npt.NDArray[np.int64] | None = None,
    prev_ids: npt.NDArray[np.uint64] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Visible candidates of every observer, as CSR.

    cand_pos float32[N, 2]: candidates (own entities and ghosts, concatenated by the
    caller); obs_pos float32[M, 2]: observers (usually also candidates; pass the same array
    when they are all of them). Observer ``i`` sees candidate ``j`` when
    ``dist(obs_i, cand_j) <= radius``, or when ``hysteresis > 0``, ``dist <= radius +
    hysteresis`` and ``cand_ids[j]`` is in the observer's previous list
    ``prev_ids[prev_off[p]:prev_off[p + 1]]`` (ascending uint64) with ``p = obs_prev[i]``
    (``-1``: none). Distances are compared squared in float64 computed from the float32
    inputs, with ``<=`` (the same sets as scipy's cKDTree on the data cast to float64).
    With ``k_max > 0`` at most ``k_max`` per observer are kept, the nearest (ties: lower
    candidate index); ``k_max == 0`` means no cap.

    Returns (vis_off int64[M + 1], vis_idx int32[V]): observer ``i`` sees
    ``vis_idx[vis_off[i]:vis_off[i + 1]]`` (candidate indices, order unspecified).
    Non-finite positions see and are seen by nothing. Hysteresis needs cand_ids, obs_prev
    (int32[M]), prev_off and prev_ids together; without obs_prev it has no effect.

    Scratch (about 40 bytes per candidate and observer, plus 4 per possible list entry)
    stays with the calling thread for its next call, so a steady tick never page-faults
    it in again; the returned arrays are always fresh.
    """
    cand = _as_positions("cand_pos", cand_pos)
    obs = _as_positions("obs_pos", obs_pos)
    radius = float(radius)
    hysteresis = float(hysteresis)
    k_max = int(k_max)
    if not radius >= 0.0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if not hysteresis >= 0.0:
        raise ValueError(f"hysteresis must be >= 0, got {hysteresis}")
    if k_max < 0:
        raise ValueError(f"k_max must be >= 0, got {k_max}")
    n = cand.shape[0]
    m = obs.shape[0]
    if n >= 2**31 or m >= 2**31:
        raise ValueError("at most 2**31 - 1 candidates and observers")

    use_prev = hysteresis > 0.0 and obs_prev is not None
    if use_prev:
        if cand_ids is None or prev_off is None or prev_ids is None:
            raise ValueError("hysteresis with obs_prev needs cand_ids, prev_off and prev_ids")
        ids = np.ascontiguousarray(cand_ids, dtype=np.uint64)
        prev = np.ascontiguousarray(obs_prev, dtype=np.int32)
        poff = np.ascontiguousarray(prev_off, dtype=np.int64)
        pids = np.ascontiguousarray(prev_ids, dtype=np.uint64)
        if ids.shape != (n,) or prev.shape != (m,) or poff.ndim != 1 or poff.shape[0] < 1:
            raise ValueError("cand_ids must be [N], obs_prev [M] and prev_off [P + 1]")
        problem = check_previous(prev, poff, pids.shape[0])
        if problem == 1:
            raise ValueError("obs_prev entries must be -1 or index a previous list")
        if problem == 2:
            raise ValueError("prev_off must be non-decreasing offsets into prev_ids")
    else:
        ids = np.empty(0, np.uint64)
        prev = np.full(m, -1, np.int32)
        poff = np.zeros(1, np.int64)
        pids = np.empty(0, np.uint64)

    vis_off = np.zeros(m + 1, np.int64)
    if m == 0 or n == 0:
        return vis_off, np.empty(0, np.int32)

    dist = radius + hysteresis if use_prev else radius
    r2 = radius * radius
    rh2 = dist * dist
    spec = plan_grid(cand, dist)
    ox, oy, cell, nx, ny = spec
    ws = _workspace()
    cidx = _CellIndex(cand, ox, oy, cell, nx, ny, ws, "cand_")
    same = obs.shape == cand.shape and obs.ctypes.data == cand.ctypes.data
    oidx = cidx if same else _CellIndex(obs, ox, oy, cell, nx, ny, ws, "obs_")
    observers = (oidx.cell_start, oidx.order, oidx.xs, oidx.ys)
    counts = ws.take("counts", m, np.int64)
    dest = ws.take("dest", m, np.int64)
    if not use_prev and (k_max == 0 or k_max >= n) and math.isfinite(r2):
        max_block, mask_words = measure_blocks(cidx.cell_start, nx, ny, oidx.cell_start)
        masks = ws.take("masks", mask_words, np.uint64)
        count_in_range(
            cidx.cell_start, cidx.xs_padded, cidx.ys_padded, nx, ny, oidx.cell_start,
            oidx.xs, oidx.ys, r2, max_block, counts, masks,
        )  # fmt: skip
        place_lists(oidx.order, counts, vis_off, dest)
        vis_idx = np.empty(int(vis_off[m]), np.int32)
        fill_in_range(
            cidx.cell_start, cidx.order_padded, nx, ny, oidx.cell_start, dest, counts,
            max_block, masks, vis_idx,
        )  # fmt: skip
        return vis_off, vis_idx

    cands = (cidx.cell_start, cidx.order_padded, cidx.xs_padded, cidx.ys_padded, nx, ny)
    max_block, bound = measure_lists(cidx.cell_start, nx, ny, oidx.cell_start, k_max)
    if bound > max(_LIST_SCRATCH * (n + m), _LIST_SCRATCH_MIN):
        # So many candidates per observer that a slot-order copy of the result would be
        # a burden: count first, then write every list in place.
        count_interest(*cands, *observers, r2, rh2, k_max, ids, prev, poff, pids, max_block, counts)
        place_lists(oidx.order, counts, vis_off, dest)
        vis_idx = np.empty(int(vis_off[m]), np.int32)
        fill_interest(
            *cands, *observers, r2, rh2, k_max, ids, prev, poff, pids, max_block, dest,
            counts, vis_idx,
        )  # fmt: skip
        return vis_off, vis_idx
    slot_ids = ws.take("slot_ids", ids.shape[0], np.uint64)
    gather_slot_ids(cidx.order_padded, ids, slot_ids)
    # Lists go slot after slot into scratch that cannot overflow; only the pages written
    # are ever touched.
    lists = ws.take("lists", bound, np.int32)
    total = select_interest(
        *cands, *observers, r2, rh2, k_max, slot_ids, prev, poff, pids, max_block, counts, lists
    )
    place_lists(oidx.order, counts, vis_off, dest)
    vis_idx = np.empty(total, np.int32)
    move_lists(lists, counts, dest, vis_idx)
    return vis_off, vis_idx


def warm_up() -> None:
    """Load (or compile) every kernel of this module with the production dtypes."""
    pos = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.5], [9.0, 9.0]], dtype=np.float32)
    ids = np.arange(1, 5, dtype=np.uint64)
    compute_interest(pos, pos, 2.0, 0.0, 0)
    compute_interest(pos, pos[:2], 2.0, 0.0, 0)
    obs_prev = np.array([0, -1], np.int32)
    prev_off = np.array([0, 2], np.int64)
    prev_ids = np.array([2, 3], np.uint64)
    compute_interest(pos, pos[:2], 2.0, 1.0, 1, ids, obs_prev, prev_off, prev_ids)
    # The two-pass kernels serve only huge results; load them as compute_interest calls them.
    ox, oy, cell, nx, ny = plan_grid(pos, 3.0)
    cidx = _CellIndex(pos, ox, oy, cell, nx, ny)
    oidx = _CellIndex(pos[:2], ox, oy, cell, nx, ny)
    max_block, _ = measure_lists(cidx.cell_start, nx, ny, oidx.cell_start, 1)
    args = (
        cidx.cell_start, cidx.order_padded, cidx.xs_padded, cidx.ys_padded, nx, ny,
        oidx.cell_start, oidx.order, oidx.xs, oidx.ys, 4.0, 9.0, 1, ids, obs_prev, prev_off,
        prev_ids, max_block,
    )  # fmt: skip
    counts = np.empty(2, np.int64)
    count_interest(*args, counts)
    vis_off = np.empty(3, np.int64)
    dest = np.empty(2, np.int64)
    place_lists(oidx.order, counts, vis_off, dest)
    fill_interest(*args, dest, counts, np.empty(int(vis_off[2]), np.int32))
