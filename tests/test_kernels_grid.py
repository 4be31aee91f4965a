"""Tests for the uniform grid index (shardworld.kernels.grid)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.kernels import grid
from shardworld.kernels._jit import py_func
from shardworld.kernels.grid import (
    CELL_MARGIN,
    build_cell_index,
    compute_bounds,
    plan_grid,
    sort_into_cells,
    sort_into_cells_xy,
)

F32 = npt.NDArray[np.float32]


def reference_cells(pos: F32, ox: float, oy: float, cell: float, nx: int, ny: int) -> Any:
    """Cell ids the plain way: float64 floor, clamp, NaN to the low edge."""
    p = pos.astype(np.float64)
    fx = np.floor((p[:, 0] - ox) / cell)
    fy = np.floor((p[:, 1] - oy) / cell)
    fx = np.where(np.isnan(fx), 0, fx)
    fy = np.where(np.isnan(fy), 0, fy)
    cx = np.clip(fx, 0, nx - 1).astype(np.int64)
    cy = np.clip(fy, 0, ny - 1).astype(np.int64)
    return cy * nx + cx


def check_index(pos: F32, ox: float, oy: float, cell: float, nx: int, ny: int) -> None:
    cell_start, order, sorted_pos = build_cell_index(pos, ox, oy, cell, nx, ny)
    cells = reference_cells(pos, ox, oy, cell, nx, ny)
    expected_order = np.argsort(cells, kind="stable")
    counts = np.bincount(cells, minlength=nx * ny)
    assert cell_start.dtype == np.int64 and cell_start.shape == (nx * ny + 1,)
    assert order.dtype == np.int32 and order.shape == (pos.shape[0],)
    assert sorted_pos.dtype == np.float32 and sorted_pos.shape == (pos.shape[0], 2)
    assert cell_start[0] == 0
    np.testing.assert_array_equal(np.diff(cell_start), counts)
    np.testing.assert_array_equal(order, expected_order)
    np.testing.assert_array_equal(sorted_pos, pos[expected_order])


def test_random_points_match_stable_argsort() -> None:
    rng = np.random.default_rng(1)
    pos = (rng.random((5000, 2)) * [300.0, 170.0] - 20.0).astype(np.float32)
    check_index(pos, -20.0, -20.0, 7.5, 41, 23)


def test_points_on_cell_borders_and_bounds() -> None:
    # Exact multiples of the cell size land in the cell that starts there; the far bound
    # (x == ox + nx * cell) is clamped into the last cell.
    xs = np.arange(0.0, 11.0, 1.0)
    pos = np.array([[x * 4.0, y * 4.0] for x in xs for y in xs], dtype=np.float32)
    check_index(pos, 0.0, 0.0, 4.0, 10, 10)
    cell_start, order, _ = build_cell_index(pos, 0.0, 0.0, 4.0, 10, 10)
    cells = np.repeat(np.arange(100), np.diff(cell_start))
    by_point = np.empty(len(pos), np.int64)
    by_point[order] = cells
    assert by_point[0] == 0  # (0, 0)
    assert by_point[1] == 10  # (0, 4): second row
    assert by_point[len(pos) - 1] == 99  # (40, 40): clamped corner
    # A cell size whose reciprocal is inexact: borders must still open the upper cell.
    pos75 = np.array([[k * 7.5, (k % 3) * 7.5] for k in range(12)], dtype=np.float32)
    check_index(pos75, 0.0, 0.0, 7.5, 12, 3)
    check_index(pos75 + np.float32(0.1), 0.1, 0.1, 7.5, 12, 3)


def test_points_outside_bounds_are_clamped() -> None:
    pos = np.array(
        [[-1e6, -1e6], [1e6, 1e6], [-5.0, 3.0], [3.0, 1e9], [np.inf, -np.inf], [5.0, 5.0]],
        dtype=np.float32,
    )
    check_index(pos, 0.0, 0.0, 2.0, 4, 3)


def test_non_finite_points_go_to_the_low_edge() -> None:
    pos = np.array([[np.nan, 5.0], [5.0, np.nan], [np.nan, np.nan], [3.0, 3.0]], np.float32)
    check_index(pos, 0.0, 0.0, 1.0, 8, 8)


def test_empty_single_and_coincident() -> None:
    check_index(np.empty((0, 2), np.float32), 0.0, 0.0, 1.0, 3, 2)
    check_index(np.array([[1.5, 2.5]], np.float32), 0.0, 0.0, 1.0, 3, 3)
    same = np.full((257, 2), 7.25, np.float32)
    check_index(same, 0.0, 0.0, 1.0, 9, 9)
    _, order, _ = build_cell_index(same, 0.0, 0.0, 1.0, 9, 9)
    np.testing.assert_array_equal(order, np.arange(257))


def test_sort_into_cells_xy_matches_build() -> None:
    rng = np.random.default_rng(2)
    pos = (rng.random((999, 2)) * 50.0).astype(np.float32)
    cell_start, order, sorted_pos = build_cell_index(pos, 0.0, 0.0, 3.0, 17, 17)
    cs2 = np.empty_like(cell_start)
    order2 = np.empty_like(order)
    xs = np.empty(999, np.float64)
    ys = np.empty(999, np.float64)
    sort_into_cells_xy(pos, 0.0, 0.0, 3.0, 17, 17, cs2, order2, xs, ys, np.empty(999, np.int32))
    np.testing.assert_array_equal(cs2, cell_start)
    np.testing.assert_array_equal(order2, order)
    np.testing.assert_array_equal(xs, sorted_pos[:, 0].astype(np.float64))
    np.testing.assert_array_equal(ys, sorted_pos[:, 1].astype(np.float64))


def test_buffers_are_overwritten() -> None:
    # sort_into_cells must not depend on what the buffers held before.
    rng = np.random.default_rng(3)
    pos = (rng.random((300, 2)) * 10.0).astype(np.float32)
    cell_start = np.full(26, 99, np.int64)
    order = np.full(300, -7, np.int32)
    sorted_pos = np.full((300, 2), np.nan, np.float32)
    cell_of = np.full(300, 5, np.int32)
    sort_into_cells(pos, 0.0, 0.0, 2.0, 5, 5, cell_start, order, sorted_pos, cell_of)
    ref_start, ref_order, ref_sorted = build_cell_index(pos, 0.0, 0.0, 2.0, 5, 5)
    np.testing.assert_array_equal(cell_start, ref_start)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_array_equal(sorted_pos, ref_sorted)
    np.testing.assert_array_equal(cell_of, reference_cells(pos, 0.0, 0.0, 2.0, 5, 5))


def test_compute_bounds_skips_non_finite() -> None:
    pos = np.array([[np.nan, 1.0], [2.0, -3.0], [np.inf, 0.0], [-1.0, 4.0]], np.float32)
    assert compute_bounds(pos) == (-1.0, -3.0, 2.0, 4.0, 2)
    assert compute_bounds(np.full((3, 2), np.nan, np.float32)) == (0.0, 0.0, 0.0, 0.0, 0)
    assert compute_bounds(np.empty((0, 2), np.float32))[4] == 0


def test_plan_grid_covers_box_with_large_enough_cells() -> None:
    rng = np.random.default_rng(4)
    pos = (rng.random((10_000, 2)) * [1000.0, 400.0] + [-300.0, 50.0]).astype(np.float32)
    spec = plan_grid(pos, 10.0)
    assert spec.cell_size >= 10.0 * (1.0 + CELL_MARGIN)
    assert spec.origin_x == float(pos[:, 0].min()) and spec.origin_y == float(pos[:, 1].min())
    assert spec.origin_x + spec.nx * spec.cell_size > pos[:, 0].max()
    assert spec.origin_y + spec.ny * spec.cell_size > pos[:, 1].max()
    assert spec.ncells <= 4 * 10_000 + 16
    assert spec.ncells == spec.nx * spec.ny


def test_plan_grid_grows_cells_for_sparse_huge_worlds() -> None:
    pos = np.array([[0.0, 0.0], [1e7, 1e7], [5e6, 2.0]], np.float32)
    spec = plan_grid(pos, 1.0)
    assert spec.ncells <= 4 * 3 + 16
    assert spec.cell_size > 1.0
    assert spec.origin_x + spec.nx * spec.cell_size > 1e7
    one_axis = np.stack([np.linspace(0, 1e8, 50), np.zeros(50)], 1).astype(np.float32)
    spec = plan_grid(one_axis, 0.5)
    assert spec.ncells <= 4 * 50 + 16 and spec.ny == 1


def test_plan_grid_degenerate_inputs() -> None:
    empty = plan_grid(np.empty((0, 2), np.float32), 5.0)
    assert (empty.nx, empty.ny) == (1, 1) and empty.cell_size > 5.0
    zero = plan_grid(np.array([[1.0, 1.0], [3.0, 1.0]], np.float32), 0.0)
    assert zero.cell_size > 0.0 and zero.ncells <= 4 * 2 + 16
    point = plan_grid(np.full((10, 2), 3.0, np.float32), 0.0)
    assert point.cell_size > 0.0 and (point.nx, point.ny) == (1, 1)
    infinite = plan_grid(np.array([[1.0, 2.0]], np.float32), math.inf)
    assert (infinite.nx, infinite.ny) == (1, 1)
    capped = plan_grid(np.array([[0.0, 0.0], [100.0, 100.0]], np.float32), 1.0, max_cells=9)
    assert capped.ncells <= 9
    tiny = plan_grid(np.array([[0.0, 0.0], [1.0, 3e38]], np.float32), 5e-324)
    assert tiny.ncells <= 4 * 2 + 16 and tiny.cell_size > 0.0


@settings(max_examples=80, deadline=None)
@given(
    pts=st.lists(
        st.tuples(
            st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
            st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
        ),
        min_size=1,
        max_size=60,
    ),
    radius=st.floats(0.0, 3e3),
)
def test_planned_3x3_stencil_finds_every_close_pair(
    pts: list[tuple[float, float]], radius: float
) -> None:
    pos = np.array(pts, np.float32)
    spec = plan_grid(pos, radius)
    cell_start, order, _ = build_cell_index(pos, *spec)
    cells = np.empty(len(pos), np.int64)
    cells[order] = np.repeat(np.arange(spec.ncells), np.diff(cell_start))
    cx, cy = cells % spec.nx, cells // spec.nx
    p = pos.astype(np.float64)
    d2 = (p[:, None, 0] - p[None, :, 0]) ** 2 + (p[:, None, 1] - p[None, :, 1]) ** 2
    close = d2 <= radius * radius
    near = (np.abs(cx[:, None] - cx[None, :]) <= 1) & (np.abs(cy[:, None] - cy[None, :]) <= 1)
    assert not np.any(close & ~near)
    np.testing.assert_array_equal(cells, reference_cells(pos, *spec))


@settings(max_examples=60, deadline=None)
@given(
    pts=st.lists(
        st.tuples(
            st.one_of(st.floats(-50, 150, width=32), st.sampled_from([np.nan, np.inf, -np.inf])),
            st.one_of(st.floats(-50, 150, width=32), st.sampled_from([np.nan, np.inf, -np.inf])),
        ),
        max_size=80,
    ),
    cell=st.floats(0.5, 40.0),
    nx=st.integers(1, 9),
    ny=st.integers(1, 9),
)
def test_build_matches_reference_property(
    pts: list[tuple[float, float]], cell: float, nx: int, ny: int
) -> None:
    pos = np.array(pts, np.float32).reshape(-1, 2)
    check_index(pos, -10.0, 0.0, cell, nx, ny)


def test_compiled_and_python_bodies_agree() -> None:
    rng = np.random.default_rng(5)
    pos = (rng.random((40, 2)) * 12.0 - 1.0).astype(np.float32)
    pos[3] = [np.nan, 1.0]
    args = (pos, 0.0, 0.0, 2.5, 5, 4)
    for a, b in zip(build_cell_index(*args), py_func(build_cell_index)(*args), strict=True):
        np.testing.assert_array_equal(a, b)
    outs = []
    for fn in (sort_into_cells_xy, py_func(sort_into_cells_xy)):
        bufs = (
            np.empty(21, np.int64),
            np.empty(40, np.int32),
            np.empty(40, np.float64),
            np.empty(40, np.float64),
            np.empty(40, np.int32),
        )
        fn(*args, *bufs)
        outs.append(bufs)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert compute_bounds(pos) == py_func(compute_bounds)(pos)


def test_warm_up_runs() -> None:
    grid.warm_up()


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_order_is_a_permutation(n: int) -> None:
    rng = np.random.default_rng(n)
    pos = (rng.normal(size=(n, 2)) * 30.0).astype(np.float32)
    spec = plan_grid(pos, 4.0)
    _, order, _ = build_cell_index(pos, *spec)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def reference_bounds(pos: F32) -> tuple[float, float, float, float, int]:
    ok = np.isfinite(pos).all(axis=1)
    if not ok.any():
        return 0.0, 0.0, 0.0, 0.0, 0
    p = pos[ok].astype(np.float64)
    return (p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max(), int(ok.sum()))


@settings(max_examples=80, deadline=None)
@given(
    pts=st.lists(
        st.tuples(
            st.floats(width=32, allow_nan=True, allow_infinity=True),
            st.floats(width=32, allow_nan=True, allow_infinity=True),
        ),
        max_size=50,
    )
)
def test_compute_bounds_property(pts: list[tuple[float, float]]) -> None:
    # Any float32 values: signed zeros, subnormals, the largest finite, inf and NaN.
    pos = np.array(pts, np.float32).reshape(-1, 2)
    expected = reference_bounds(pos)
    assert compute_bounds(pos) == expected
    assert py_func(compute_bounds)(pos) == expected


def test_compute_bounds_extremes() -> None:
    big = float(np.finfo(np.float32).max)
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    pos = np.array(
        [[-0.0, 0.0], [tiny, -tiny], [big, -big], [-big, big], [np.inf, 1.0], [1.0, -np.inf]],
        np.float32,
    )
    assert compute_bounds(pos) == (-big, -big, big, big, 4)
    assert compute_bounds(pos[:2]) == (0.0, -tiny, tiny, 0.0, 2)
    assert compute_bounds(np.array([[-3.5, -7.25]], np.float32)) == (-3.5, -7.25, -3.5, -7.25, 1)


def test_large_index_matches_stable_argsort() -> None:
    # Enough points that every loop runs its vector code, with clusters, outliers and
    # non-finite points.
    rng = np.random.default_rng(6)
    pos = (rng.random((70_000, 2)) * [900.0, 500.0]).astype(np.float32)
    pos[:5000] = pos[:5000] * np.float32(0.01) + np.float32(300.0)
    pos[5000:5100] = [[-1e6, 2e6]]
    pos[5100:5110] = np.nan
    spec = plan_grid(pos, 12.0)
    check_index(pos, *spec)
    n = pos.shape[0]
    bufs = [np.empty(spec.ncells + 1, np.int64), np.empty(n, np.int32)]
    cols = [np.empty(n, np.float64), np.empty(n, np.float64), np.empty(n, np.int32)]
    sort_into_cells_xy(pos, *spec, *bufs, *cols)
    cell_start, order, sorted_pos = build_cell_index(pos, *spec)
    np.testing.assert_array_equal(bufs[0], cell_start)
    np.testing.assert_array_equal(bufs[1], order)
    np.testing.assert_array_equal(cols[0], sorted_pos[:, 0])
    np.testing.assert_array_equal(cols[2], reference_cells(pos, *spec))


def test_strided_positions_are_accepted() -> None:
    rng = np.random.default_rng(7)
    base = (rng.random((600, 2)) * 40.0).astype(np.float32)
    strided = base[::3]
    assert not strided.flags.c_contiguous
    check_index(strided, 0.0, 0.0, 4.0, 10, 10)
    assert compute_bounds(strided) == compute_bounds(np.ascontiguousarray(strided))
