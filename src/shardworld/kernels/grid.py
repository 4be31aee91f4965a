"""Uniform grid over 2-D positions, built in O(N) by a counting sort.

The grid is the spatial index behind interest management: cell ``(cx, cy)`` covers
``[origin_x + cx * cell_size, origin_x + (cx + 1) * cell_size)`` (same in y), cells are
numbered row-major ``c = cy * nx + cx``, and points are stored cell after cell so that one
row of three adjacent cells is one contiguous slice of the cell-ordered arrays.

Points outside the grid are clamped to the edge cells (NaN coordinates to the low edge). Clamping
is monotone and never increases the cell distance between two points, so a 3x3 stencil query
with a query distance below ``cell_size`` stays exact for points anywhere in the plane.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.extending import intrinsic, overload

from shardworld.kernels._jit import kernel

# Relative margin added to the query distance when planning cells: the cell of a point is
# computed in float64 with rounding, so a cell exactly one query distance wide could put two
# points at exactly that distance two cells apart. 1e-6 covers the rounding of grids up to
# ~1e9 cells per axis.
CELL_MARGIN = 1e-6

_U = np.uint64
# Random scatters and gathers ask for the line this many points ahead.
_AHEAD = 32


# Software prefetch, for loops whose next addresses are known well ahead but are random
# (scatters, gathers, scattered lists); interest.py uses these too.
def _prefetch_typer(rw: int) -> Any:
    def typer(typingctx: Any, arr: Any, index: Any) -> Any:
        if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
            return None
        sig = types.none(arr, index)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            idx = context.cast(builder, args[1], signature.args[1], types.intp)
            # An i8* operand and llvmlite's own name mangling keep this valid for LLVM
            # with typed pointers and for LLVM with opaque ones.
            i8p = ir.IntType(8).as_pointer()
            ptr = builder.bitcast(builder.gep(ary.data, [idx]), i8p)
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
            # rw (0 read, 1 write), locality 3 (keep in all cache levels), data cache
            builder.call(fn, [ptr, i32(rw), i32(3), i32(1)])
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = f"_prefetch_{'write' if rw else 'read'}"
    return typer


_prefetch_read: Any = intrinsic(_prefetch_typer(0))
_prefetch_write: Any = intrinsic(_prefetch_typer(1))


def prefetch_read(arr: npt.NDArray[Any], index: int) -> None:
    """Hint that ``arr[index]`` will be read soon (a no-op outside compiled code)."""


def prefetch_write(arr: npt.NDArray[Any], index: int) -> None:
    """Hint that ``arr[index]`` will be written soon (a no-op outside compiled code)."""


@overload(prefetch_read)
def _prefetch_read_impl(arr: Any, index: Any) -> Any:
    def impl(arr: Any, index: Any) -> None:
        _prefetch_read(arr, index)

    return impl


@overload(prefetch_write)
def _prefetch_write_impl(arr: Any, index: Any) -> Any:
    def impl(arr: Any, index: Any) -> None:
        _prefetch_write(arr, index)

    return impl


class GridSpec(NamedTuple):
    """Placement of a uniform grid: origin, square cell size and cell counts per axis."""

    origin_x: float
    origin_y: float
    cell_size: float
    nx: int
    ny: int

    @property
    def ncells(self) -> int:
        return self.nx * self.ny


@kernel
def compute_bounds(pos: npt.NDArray[np.float32]) -> tuple[float, float, float, float, int]:
    """Bounding box of the finite points.

    pos: float32[N, 2]. Returns (xmin, ymin, xmax, ymax, nfinite) as float64 values and an
    int; points with a non-finite coordinate are skipped. With nfinite == 0 the box is
    (0, 0, 0, 0). The caller plans a grid from the box (see :func:`plan_grid`).
    """
    n = pos.shape[0]
    # Integer keys of the float32 bits (sign-magnitude turned into two's complement)
    # order finite values exactly as the floats; integer min/max compile to vector code,
    # float min/max with their NaN rules do not.
    bits = np.ascontiguousarray(pos).reshape(2 * n).view(np.int32)
    low31 = np.int64(0x7FFFFFFF)
    exponent = np.int64(0x7F800000)
    lo_x = low31
    lo_y = low31
    hi_x = -low31
    hi_y = -low31
    nfinite = 0
    for i in range(n):
        bx = np.int64(bits[2 * i])
        by = np.int64(bits[2 * i + 1])
        ok = ((bx & exponent) != exponent) & ((by & exponent) != exponent)
        kx = bx ^ ((bx >> 31) & low31)
        ky = by ^ ((by >> 31) & low31)
        nfinite += int(ok)
        lo_x = min(lo_x, kx if ok else low31)
        lo_y = min(lo_y, ky if ok else low31)
        hi_x = max(hi_x, kx if ok else -low31)
        hi_y = max(hi_y, ky if ok else -low31)
    if nfinite == 0:
        return 0.0, 0.0, 0.0, 0.0, 0
    keys = np.empty(4, np.int32)
    for j, k in enumerate((lo_x, lo_y, hi_x, hi_y)):
        # The key mapping is its own inverse.
        keys[j] = np.int32(k ^ ((k >> 31) & low31))
    box = keys.view(np.float32)
    return (
        np.float64(box[0]),
        np.float64(box[1]),
        np.float64(box[2]),
        np.float64(box[3]),
        nfinite,
    )


def plan_grid(
    pos: npt.NDArray[np.float32], min_cell_size: float, max_cells: int | None = None
) -> GridSpec:
    """Plan a grid covering the bounding box of ``pos`` (float32[N, 2]).

    The cell size is at least ``min_cell_size * (1 + CELL_MARGIN)``, so a 3x3 stencil finds
    every pair of points within ``min_cell_size`` (pass the largest query distance). If the
    box would need more than ``max_cells`` cells (default ``4 * N + 16``) the cells are made
    larger, so a sparse, huge world never allocates a giant grid; a larger cell only costs
    more distance checks, never correctness. A non-positive or non-finite ``min_cell_size``
    lets the box alone decide. Points outside the box later (observers) are clamped.
    """
    n = int(pos.shape[0])
    limit = 4 * n + 16 if max_cells is None else max(int(max_cells), 1)
    # Cell ids are int32 in the kernels.
    limit = min(limit, 2**31 - 1)
    xmin, ymin, xmax, ymax, _ = compute_bounds(pos)
    width = xmax - xmin
    height = ymax - ymin
    extent = max(width, height)
    cell = float(min_cell_size) * (1.0 + CELL_MARGIN)
    if math.isinf(cell) and cell > 0.0:
        return GridSpec(float(xmin), float(ymin), math.inf, 1, 1)
    if not cell > 0.0:
        # Any positive size is exact for a zero query distance; start from the box.
        cell = extent / math.sqrt(limit) if extent > 0.0 else 1.0
    while True:
        # Compare the quotients first: a tiny cell over a wide box overflows to inf.
        qx = width / cell
        qy = height / cell
        if qx < limit and qy < limit:
            nx = math.floor(qx) + 1
            ny = math.floor(qy) + 1
            if nx * ny <= limit:
                break
        # Jump close to the size that fits, then creep up: rounding in floor() may need a
        # second step.
        cell = max(cell * 1.0625, math.sqrt(width * height / limit), extent / limit)
    return GridSpec(float(xmin), float(ymin), float(cell), int(nx), int(ny))


@kernel
def count_cells(
    pos: npt.NDArray[np.float32],
    origin_x: float,
    origin_y: float,
    cell_size: float,
    nx: int,
    ny: int,
    cell_of: npt.NDArray[np.int32],
    cell_start: npt.NDArray[np.int64],
) -> None:
    """First half of the counting sort: the cell of every point and where each cell starts.

    pos: float32[N, 2]; origin_x, origin_y, cell_size: float64 grid placement; nx, ny >= 1
    cells per axis (nx * ny < 2**31). Writes cell_of int32[N] (row-major cell of each point,
    clamped to the grid; NaN goes to the low edge, infinities to their edge) and cell_start
    int64[nx*ny + 1] (exclusive prefix sum of the cell counts). The caller then scatters
    the points, advancing ``cell_start[c]`` as a cursor (see :func:`sort_into_cells`).
    """
    n = pos.shape[0]
    top_x = np.float64(nx) - 0.5
    top_y = np.float64(ny) - 0.5
    zero = np.float64(0.0)
    # Indexing a flat view with constant strides lets LLVM load pairs as vectors; 2-D
    # indexing goes through the runtime strides and stays scalar. (No copy unless pos is
    # not C-contiguous.)
    flat = np.ascontiguousarray(pos).reshape(2 * n)
    # Cells first, in a loop with no other memory traffic so that it runs as vector
    # code; the histogram, whose increments may hit the same counter, follows.
    for i in range(n):
        # A true division, not a multiply by 1/cell_size: a point exactly on a border
        # then always opens the upper cell.
        fx = (np.float64(flat[2 * i]) - origin_x) / cell_size
        fy = (np.float64(flat[2 * i + 1]) - origin_y) / cell_size
        # Selects, not branches: `f >= 0` is false for NaN, and clamping in float first
        # keeps the integer conversion in range.
        fx = fx if fx >= zero else zero
        fy = fy if fy >= zero else zero
        fx = fx if fx < top_x else top_x
        fy = fy if fy < top_y else top_y
        cell_of[i] = np.int32(np.int64(fy) * nx + np.int64(fx))
    cell_start[:] = 0
    for i in range(n):
        cell_start[_U(cell_of[i]) + _U(1)] += 1
    for c in range(nx * ny):
        cell_start[c + 1] += cell_start[c]


@kernel
def scatter_order(
    pos: npt.NDArray[np.float32],
    origin_x: float,
    origin_y: float,
    cell_size: float,
    nx: int,
    ny: int,
    cell_start: npt.NDArray[np.int64],
    order: npt.NDArray[np.int32],
    cell_of: npt.NDArray[np.int32],
) -> None:
    """Counting sort of point indices into grid cells.

    Arguments as in :func:`count_cells`; writes cell_start int64[nx*ny + 1] (cell ``c``
    holds slots ``cell_start[c]:cell_start[c+1]``), order int32[N] (slot -> original index,
    ascending within a cell) and cell_of int32[N]. The caller then gathers whatever
    per-point data it wants in slot order (``data[order]``).
    """
    count_cells(pos, origin_x, origin_y, cell_size, nx, ny, cell_of, cell_start)
    # Only the 4-byte index is scattered; callers gather the coordinates afterwards with
    # sequential writes, which is cheaper than scattering every field.
    n = pos.shape[0]
    for i in range(n):
        # The slots written are random: have the line of a later one on its way (its
        # cursor may still move, but stays within the cell's lines).
        if i + _AHEAD < n:
            prefetch_write(order, cell_start[cell_of[i + _AHEAD]])
        # Indices as uint64: numba checks signed ones for wrap-around on every access.
        cell = _U(cell_of[i])
        s = _U(cell_start[cell])
        cell_start[cell] = s + _U(1)
        order[s] = i
    # Each cursor now sits at the start of the next cell: shift back by one.
    for c in range(nx * ny, 0, -1):
        cell_start[c] = cell_start[c - 1]
    cell_start[0] = 0


@kernel
def sort_into_cells(
    pos: npt.NDArray[np.float32],
    origin_x: float,
    origin_y: float,
    cell_size: float,
    nx: int,
    ny: int,
    cell_start: npt.NDArray[np.int64],
    order: npt.NDArray[np.int32],
    sorted_pos: npt.NDArray[np.float32],
    cell_of: npt.NDArray[np.int32],
) -> None:
    """Counting sort of points into grid cells, into caller-provided buffers.

    Arguments as in :func:`build_cell_index`, plus the outputs (overwritten): cell_start
    int64[nx*ny + 1], order int32[N], sorted_pos float32[N, 2], and cell_of int32[N]
    (afterwards: the cell of each original point). For callers that reuse buffers.
    """
    scatter_order(pos, origin_x, origin_y, cell_size, nx, ny, cell_start, order, cell_of)
    n = pos.shape[0]
    flat = np.ascontiguousarray(pos).reshape(2 * n)
    for s in range(n):
        if s + _AHEAD < n:
            prefetch_read(flat, 2 * order[s + _AHEAD])
        i = _U(order[s])
        sorted_pos[s, 0] = flat[_U(2) * i]
        sorted_pos[s, 1] = flat[_U(2) * i + _U(1)]


@kernel
def sort_into_cells_xy(
    pos: npt.NDArray[np.float32],
    origin_x: float,
    origin_y: float,
    cell_size: float,
    nx: int,
    ny: int,
    cell_start: npt.NDArray[np.int64],
    order: npt.NDArray[np.int32],
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    cell_of: npt.NDArray[np.int32],
) -> None:
    """:func:`sort_into_cells` writing the cell-ordered coordinates as float64 columns.

    xs, ys: float64[N] receive x and y of slot ``s`` (exact widenings of the float32
    input); the other buffers as in :func:`sort_into_cells`. Queries that copy blocks of
    consecutive slots prefer separate contiguous columns.
    """
    scatter_order(pos, origin_x, origin_y, cell_size, nx, ny, cell_start, order, cell_of)
    n = pos.shape[0]
    flat = np.ascontiguousarray(pos).reshape(2 * n)
    for s in range(n):
        if s + _AHEAD < n:
            prefetch_read(flat, 2 * order[s + _AHEAD])
        i = _U(order[s])
        xs[s] = flat[_U(2) * i]
        ys[s] = flat[_U(2) * i + _U(1)]


@kernel
def build_cell_index(
    pos: npt.NDArray[np.float32],
    origin_x: float,
    origin_y: float,
    cell_size: float,
    nx: int,
    ny: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """Index points by grid cell with a counting sort (O(N + nx*ny)).

    pos: float32[N, 2]; origin_x, origin_y, cell_size (> 0), nx, ny (>= 1): the grid, e.g.
    from :func:`plan_grid`. Returns (cell_start int64[nx*ny + 1], order int32[N],
    sorted_pos float32[N, 2]): cell ``c = cy * nx + cx`` holds sorted slots
    ``cell_start[c]:cell_start[c+1]``, ``order[s]`` is the original index of slot ``s``
    (ascending within a cell) and ``sorted_pos[s] == pos[order[s]]``. Out-of-grid and
    non-finite points go to the clamped edge cell. Query with a 3x3 stencil of cells;
    rows of three adjacent cells are contiguous slot ranges.
    """
    n = pos.shape[0]
    cell_start = np.empty(nx * ny + 1, np.int64)
    order = np.empty(n, np.int32)
    sorted_pos = np.empty((n, 2), np.float32)
    cell_of = np.empty(n, np.int32)
    sort_into_cells(
        pos, origin_x, origin_y, cell_size, nx, ny, cell_start, order, sorted_pos, cell_of
    )
    return cell_start, order, sorted_pos


def warm_up() -> None:
    """Load (or compile) every kernel of this module with the production dtypes."""
    pos = np.array([[0.0, 0.0], [1.5, 2.5], [np.nan, 3.0]], dtype=np.float32)
    spec = plan_grid(pos, 1.0)
    build_cell_index(pos, *spec)
    n = pos.shape[0]
    sort_into_cells_xy(
        pos,
        *spec,
        np.empty(spec.ncells + 1, np.int64),
        np.empty(n, np.int32),
        np.empty(n, np.float64),
        np.empty(n, np.float64),
        np.empty(n, np.int32),
    )
