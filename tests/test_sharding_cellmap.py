"""Tests for shardworld.sharding.cellmap against plain references written out here."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardworld.kernels._jit import py_func
from shardworld.sharding.cellmap import (
    MAX_EPOCH,
    CellMap,
    find_near_zones,
    find_run_ends,
    find_zone_boxes,
    locate_cells,
    mark_ghost_cells,
    warm_up,
)

Mask = npt.NDArray[np.bool_]
NAMES = tuple(f"z{i}" for i in range(64))


def names(n: int) -> tuple[str, ...]:
    return tuple(f"zone-{i}" for i in range(n))


def random_map(
    rng: np.random.Generator,
    cols: int,
    rows: int,
    n: int,
    cell: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> CellMap:
    x0, y0 = origin
    owner = rng.integers(0, n, size=(rows, cols)).astype(np.int16)
    return CellMap((x0, y0, x0 + cols * cell, y0 + rows * cell), cell, names(n), owner, 3)


# ----------------------------------------------------------------------------- construction


def test_grid_size_is_the_ceiling_of_world_over_cell() -> None:
    m = CellMap.split((0.0, 0.0, 10.0, 4.5), 2.0, ["a"])
    assert (m.cols, m.rows, m.n_cells) == (5, 3, 15)
    assert m.owner.shape == (3, 5) and m.owner.dtype == np.int16
    m = CellMap.split((-3.0, 7.0, -2.0, 7.25), 0.3, ["a"])
    assert (m.cols, m.rows) == (4, 1)


def test_float_rounding_adds_no_sliver_cell() -> None:
    # 4.2 / 0.6 == 7.000000000000001 and 0.3 / 0.1 == 2.9999999999999996 in float64.
    assert 4.2 / 0.6 > 7
    m = CellMap.split((0.0, 0.0, 4.2, 0.3), 0.6, ["a"])
    assert (m.cols, m.rows) == (7, 1)
    m = CellMap.split((0.0, 0.0, 0.3, 0.7), 0.1, ["a"])
    assert (m.cols, m.rows) == (3, 7)
    # The last column ends at the world's edge, whatever the rounding.
    assert m.cell_rect(m.cols - 1)[2] == 0.3
    assert m.cell_rect(m.n_cells - 1)[3] == 0.7


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cell_size": 0.0},
        {"cell_size": -1.0},
        {"cell_size": math.nan},
        {"cell_size": math.inf},
        {"cell_size": True},
        {"cell_size": "1"},
        {"world": (0.0, 0.0, 0.0, 4.0)},
        {"world": (5.0, 0.0, 4.0, 4.0)},
        {"world": (0.0, 0.0, 4.0, -1.0)},
        {"world": (0.0, 0.0, math.inf, 4.0)},
        {"world": (math.nan, 0.0, 4.0, 4.0)},
        {"world": (0.0, 0.0, 4.0)},
        {"world": "abcd"},
        {"world": (-1e308, 0.0, 1e308, 4.0)},
        {"world": (0.0, 0.0, 1e9, 1e9), "cell_size": 1e-3},
        {"zones": []},
        {"zones": ["a", "a", "b"]},
        {"zones": ["a", ""]},
        {"zones": ["a", 3]},
        {"zones": "ab"},
        {"epoch": -1},
        {"epoch": 1.0},
        {"epoch": True},
        {"epoch": MAX_EPOCH + 1},
        {"owner": np.zeros((3, 4), np.int16)},
        {"owner": np.zeros((4, 3), np.int16)},
        {"owner": np.zeros(12, np.int16)},
        {"owner": np.full((4, 4), 2, np.int16)},
        {"owner": np.full((4, 4), -1, np.int16)},
        {"owner": np.full((4, 4), 70000, np.int64)},
        {"owner": np.zeros((4, 4), np.float32)},
        {"owner": np.zeros((4, 4), object)},
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "world": (0.0, 0.0, 4.0, 4.0),
        "cell_size": 1.0,
        "zones": ["a", "b"],
        "owner": np.zeros((4, 4), np.int16),
        "epoch": 0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        CellMap(**args)


def test_owner_is_a_read_only_copy() -> None:
    owner = np.zeros((2, 3), np.int64)
    owner[1, 2] = 1
    m = CellMap((0.0, 0.0, 3.0, 2.0), 1.0, ["a", "b"], owner, 0)  # type: ignore[arg-type]
    owner[:] = 0
    assert m.owner[1, 2] == 1 and m.owner.dtype == np.int16
    assert not m.owner.flags.writeable
    with pytest.raises(ValueError):
        m.owner[0, 0] = 1
    assert m.zones == ("a", "b") and isinstance(m.zones, tuple)
    assert m.world == (0.0, 0.0, 3.0, 2.0) and m.cell_size == 1.0 and m.epoch == 0


def test_zone_index() -> None:
    m = CellMap.split((0.0, 0.0, 4.0, 4.0), 1.0, ["north", "south"])
    assert m.zone_index("north") == 0 and m.zone_index("south") == 1
    with pytest.raises(KeyError, match="east"):
        m.zone_index("east")


# ----------------------------------------------------------------------------- cell_of


def ref_axis(v: float, origin: float, cell: float, n: int) -> int:
    q = (v - origin) / cell
    if q != q:
        return 0
    if q == math.inf:
        return n - 1
    if q == -math.inf:
        return 0
    return min(max(math.floor(q), 0), n - 1)


def ref_cell_of(m: CellMap, pos: npt.NDArray[Any]) -> list[int]:
    x0, y0 = m.world[0], m.world[1]
    out = []
    for x, y in pos.tolist():
        col = ref_axis(float(x), x0, m.cell_size, m.cols)
        row = ref_axis(float(y), y0, m.cell_size, m.rows)
        out.append(row * m.cols + col)
    return out


def awkward_points(m: CellMap, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    x0, y0, x1, y1 = m.world
    cs = m.cell_size
    xs = [x0 + k * cs for k in range(m.cols + 1)] + [x0, x1, np.nextafter(x0, -1), x1 + 1e-9]
    ys = [y0 + k * cs for k in range(m.rows + 1)] + [y0, y1, np.nextafter(y1, 9e9)]
    special = [math.nan, math.inf, -math.inf, 1e38, -1e38, 1e300, -1e300, 0.0]
    pts = [(x, y) for x in xs + special for y in ys + special]
    rand = np.column_stack(
        [
            rng.uniform(x0 - 3 * (x1 - x0), x1 + 3 * (x1 - x0), 2000),
            rng.uniform(y0 - 3 * (y1 - y0), y1 + 3 * (y1 - y0), 2000),
        ]
    )
    return np.concatenate([np.array(pts, np.float64), rand])


@pytest.mark.parametrize(
    ("world", "cell"),
    [
        ((0.0, 0.0, 64.0, 48.0), 8.0),
        ((-17.3, 102.9, 250.1, 180.0), 9.7),
        ((0.0, 0.0, 4.2, 0.3), 0.6),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_of_matches_per_point_reference(
    world: tuple[float, float, float, float], cell: float, dtype: Any
) -> None:
    rng = np.random.default_rng(7)
    m = CellMap.split(world, cell, ["a", "b", "c"])
    with np.errstate(over="ignore"):  # 1e300 becomes inf in float32, as intended
        pos = awkward_points(m, rng).astype(dtype)
    cells = m.cell_of(pos)
    assert cells.dtype == np.int32 and cells.shape == (pos.shape[0],)
    assert cells.tolist() == ref_cell_of(m, pos)
    assert cells.min() >= 0 and cells.max() < m.n_cells
    owners = m.owner_of(pos)
    assert owners.dtype == np.int16
    np.testing.assert_array_equal(owners, m.owner.reshape(-1)[cells])


def test_cell_of_other_layouts_and_dtypes() -> None:
    m = CellMap.split((0.0, 0.0, 10.0, 10.0), 1.0, ["a", "b"])
    big = np.array([[1.5, 2.5, 0.0], [9.5, 0.5, 0.0], [-3.0, 30.0, 0.0]], np.float64)
    strided = big[:, :2]
    assert not strided.flags.c_contiguous
    assert m.cell_of(strided).tolist() == [21, 9, 90]
    assert m.cell_of(np.array([[1, 2], [9, 0]], np.int64)).tolist() == [21, 9]
    assert m.cell_of(np.array([[1.5, 2.5]], ">f8")).tolist() == [21]
    assert m.cell_of(np.empty((0, 2), np.float32)).shape == (0,)
    assert m.cell_of([[0.5, 0.5]]).tolist() == [0]  # type: ignore[arg-type]
    for bad in (np.zeros(4), np.zeros((3, 3)), np.array([["a", "b"]]), np.zeros((2, 2), complex)):
        with pytest.raises(ValueError):
            m.cell_of(bad)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_cell_of_any_float_is_in_range(points: list[tuple[float, float]]) -> None:
    m = CellMap.split((-50.0, 20.0, 70.0, 41.0), 7.0, ["a", "b", "c", "d"])
    pos = np.array(points, np.float64)
    assert m.cell_of(pos).tolist() == ref_cell_of(m, pos)
    with np.errstate(over="ignore"):
        pos32 = pos.astype(np.float32)
    assert m.cell_of(pos32).tolist() == ref_cell_of(m, pos32)


def test_owner_of_cells() -> None:
    rng = np.random.default_rng(3)
    m = random_map(rng, 7, 5, 4)
    cells = rng.integers(0, m.n_cells, 100).astype(np.int32)
    got = m.owner_of_cells(cells)
    assert got.dtype == np.int16
    assert got.tolist() == [int(m.owner[c // 7, c % 7]) for c in cells.tolist()]
    assert m.owner_of_cells(cells.reshape(10, 10)).shape == (10, 10)
    for bad in ([-1], [m.n_cells], [0.5]):
        with pytest.raises(ValueError):
            m.owner_of_cells(np.array(bad))


# ----------------------------------------------------------------------------- regions


def test_cell_rect_region_mask_and_bounds() -> None:
    rng = np.random.default_rng(11)
    world = (-10.0, 5.0, 12.5, 20.0)
    owner = rng.integers(0, 4, size=(8, 12)).astype(np.int16)
    owner[owner == 3] = 2  # zone 3 owns nothing
    m = CellMap(world, 2.0, names(4), owner, 1)
    assert (m.cols, m.rows) == (12, 8)
    rects = [m.cell_rect(c) for c in range(m.n_cells)]
    for c, (rx0, ry0, rx1, ry1) in enumerate(rects):
        row, col = divmod(c, m.cols)
        assert rx0 == -10.0 + 2.0 * col and ry0 == 5.0 + 2.0 * row
        assert rx1 == (12.5 if col == 11 else rx0 + 2.0)
        assert ry1 == (20.0 if row == 7 else ry0 + 2.0)
    area = sum((r[2] - r[0]) * (r[3] - r[1]) for r in rects)
    assert area == pytest.approx(22.5 * 15.0)
    for z in range(3):
        mask = m.region_mask(z)
        assert mask.dtype == np.bool_ and mask.shape == (m.n_cells,)
        assert mask.tolist() == [int(v) == z for v in owner.reshape(-1)]
        mine = [rects[c] for c in range(m.n_cells) if mask[c]]
        expected = (
            min(r[0] for r in mine),
            min(r[1] for r in mine),
            max(r[2] for r in mine),
            max(r[3] for r in mine),
        )
        assert m.region_bounds(z) == expected
    assert not m.region_mask(3).any()
    with pytest.raises(ValueError, match="owns no cells"):
        m.region_bounds(3)
    for bad in (-1, 4, 1.5):
        with pytest.raises(ValueError):
            m.region_mask(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            m.region_bounds(bad)  # type: ignore[arg-type]
    for bad_cell in (-1, m.n_cells, 2.0):
        with pytest.raises(ValueError):
            m.cell_rect(bad_cell)  # type: ignore[arg-type]
    assert m.region_mask(np.int64(1)).sum() == (owner == 1).sum()  # type: ignore[arg-type]


def test_points_fall_in_the_rect_of_their_cell() -> None:
    rng = np.random.default_rng(5)
    m = CellMap.split((-17.3, 102.9, 250.1, 180.0), 9.7, names(5))
    pos = np.column_stack([rng.uniform(-17.3, 250.1, 3000), rng.uniform(102.9, 180.0, 3000)])
    for (x, y), c in zip(pos.tolist(), m.cell_of(pos).tolist(), strict=True):
        rx0, ry0, rx1, ry1 = m.cell_rect(c)
        assert rx0 - 1e-9 <= x <= rx1 + 1e-9 and ry0 - 1e-9 <= y <= ry1 + 1e-9


# ----------------------------------------------------------------------------- split


def zone_rects(owner: npt.NDArray[np.int16], n: int) -> list[tuple[int, int, int, int]]:
    """Each zone's cells as (r0, r1, c0, c1); asserts they form exactly that rectangle."""
    out = []
    for z in range(n):
        rr, cc = np.nonzero(owner == z)
        assert rr.size >= 1, f"zone {z} owns no cell"
        r0, r1, c0, c1 = int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1
        assert (r1 - r0) * (c1 - c0) == rr.size, f"zone {z} is not a rectangle"
        out.append((r0, r1, c0, c1))
    return out


def check_kd(
    owner: npt.NDArray[np.int16],
    rect: tuple[int, int, int, int],
    z0: int,
    n: int,
    drift: Fraction,
    balanced: bool,
    report: dict[int, tuple[Fraction, bool]],
) -> None:
    """Recover the cut tree from the map alone and check every cut against the promise.

    ``drift`` is the sum of the bounds ``L / (2 * n_side)`` along the path so far, valid
    when every cut on the path was at the balancing line (``balanced``).
    """
    r0, r1, c0, c1 = rect
    sub = owner[r0:r1, c0:c1]
    assert set(np.unique(sub).tolist()) == set(range(z0, z0 + n))
    if n == 1:
        report[z0] = (drift, balanced)
        return
    height, width = r1 - r0, c1 - c0
    across_x = width >= height
    view = sub if across_x else sub.T  # view[:, j] is line j of the cut axis
    line, length = view.shape
    n_half = n // 2
    lo = max(1, math.ceil(n_half / line))
    hi = min(length - 1, length - math.ceil((n - n_half) / line))

    def low_side(m: int) -> int | None:
        cells = int((view < z0 + m).sum())
        if cells % line:
            return None
        k = cells // line
        low_ok = bool((view[:, :k] < z0 + m).all() and (view[:, k:] >= z0 + m).all())
        return k if 0 < k < length and low_ok else None

    if lo <= hi:
        m = n_half
        k = low_side(m)
        assert k is not None, f"zones {z0}..{z0 + m - 1} are not the low side of {rect}"
        best = min(range(lo, hi + 1), key=lambda j: (abs(j * n - length * m), j))
        assert k == best
        free = min(range(1, length), key=lambda j: (abs(j * n - length * m), j))
        cut_balanced = free == k
        if cut_balanced:
            per_a = Fraction(k * line, m)
            per_b = Fraction((length - k) * line, n - m)
            assert abs(per_a - per_b) <= Fraction(line * n, 2 * m * (n - m))
            assert abs(per_a - per_b) <= line
    else:
        # No line suits n // 2 zones: the documented fallback, by brute force over every
        # (cut, zones on the low side) that leaves each side a cell per zone.
        options = [
            (
                Fraction(abs(j * line * (n - mm) - (length - j) * line * mm), mm * (n - mm)),
                abs(mm - n_half),
                j,
                mm,
            )
            for j in range(1, length)
            for mm in range(1, n)
            if mm <= j * line and n - mm <= (length - j) * line
        ]
        _, _, k, m = min(options)
        assert low_side(m) == k, f"{rect}: expected zones {z0}..{z0 + m - 1} in {k} lines"
        cut_balanced = False
    if across_x:
        rect_a, rect_b = (r0, r1, c0, c0 + k), (r0, r1, c0 + k, c1)
    else:
        rect_a, rect_b = (r0, r0 + k, c0, c1), (r0 + k, r1, c0, c1)
    ok = balanced and cut_balanced
    check_kd(owner, rect_a, z0, m, drift + Fraction(line, 2 * m), ok, report)
    check_kd(owner, rect_b, z0 + m, n - m, drift + Fraction(line, 2 * (n - m)), ok, report)


def check_split(cols: int, rows: int, n: int, cell: float = 1.0) -> CellMap:
    world = (0.0, 0.0, cols * cell, rows * cell)
    m = CellMap.split(world, cell, names(n))
    assert (m.cols, m.rows, m.epoch) == (cols, rows, 1)
    owner = np.asarray(m.owner)
    zone_rects(owner, n)
    report: dict[int, tuple[Fraction, bool]] = {}
    check_kd(owner, (0, rows, 0, cols), 0, n, Fraction(0), True, report)
    counts = np.bincount(owner.reshape(-1), minlength=n)
    mean = Fraction(cols * rows, n)
    for z, (drift, balanced) in report.items():
        if balanced:
            assert abs(counts[z] - mean) <= drift
    assert m == CellMap.split(world, cell, names(n))
    return m


def test_split_every_small_grid_and_zone_count() -> None:
    for cols in range(1, 8):
        for rows in range(1, 8):
            for n in range(1, cols * rows + 1):
                check_split(cols, rows, n)


@pytest.mark.parametrize(
    ("cols", "rows", "n"),
    [(256, 256, 64), (256, 256, 63), (37, 19, 4), (200, 3, 17), (3, 200, 17), (50, 41, 1000)],
)
def test_split_larger_grids(cols: int, rows: int, n: int) -> None:
    check_split(cols, rows, n)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.data())
def test_split_property(cols: int, rows: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, min(cols * rows, 80)))
    check_split(cols, rows, n)


def test_split_examples() -> None:
    m = CellMap.split((0.0, 0.0, 8.0, 4.0), 1.0, ["w", "e"])
    assert (m.owner[:, :4] == 0).all() and (m.owner[:, 4:] == 1).all()
    m = CellMap.split((0.0, 0.0, 4.0, 8.0), 1.0, ["s", "n"])
    assert (m.owner[:4] == 0).all() and (m.owner[4:] == 1).all()
    m = CellMap.split((0.0, 0.0, 5.0, 1.0), 1.0, ["a", "b"])  # 2.5 columns each: ties go low
    assert m.owner.tolist() == [[0, 0, 1, 1, 1]]
    m = CellMap.split((0.0, 0.0, 64.0, 64.0), 1.0, names(4))
    assert np.bincount(m.owner.reshape(-1)).tolist() == [1024] * 4
    m = CellMap.split((0.0, 0.0, 3.0, 3.0), 1.0, names(9), epoch=5)
    assert sorted(m.owner.reshape(-1).tolist()) == list(range(9)) and m.epoch == 5
    m = CellMap.split((0.0, 0.0, 3.0, 3.0), 1.0, ["only"])
    assert (m.owner == 0).all()


def test_split_rejects_more_zones_than_cells() -> None:
    with pytest.raises(ValueError, match="zones"):
        CellMap.split((0.0, 0.0, 3.0, 3.0), 1.0, names(10))
    with pytest.raises(ValueError):
        CellMap.split((0.0, 0.0, 3.0, 3.0), 1.0, [])


# ----------------------------------------------------------------------------- ghosts


def ref_ghost_cells(m: CellMap, zone: int, radius: float) -> dict[int, Mask]:
    """All pairs of cell rectangles, plain Euclidean gap."""
    rects = np.array([m.cell_rect(c) for c in range(m.n_cells)])
    own = m.owner.reshape(-1)
    gx = np.maximum(
        0.0,
        np.maximum(rects[:, None, 0], rects[None, :, 0])
        - np.minimum(rects[:, None, 2], rects[None, :, 2]),
    )
    gy = np.maximum(
        0.0,
        np.maximum(rects[:, None, 1], rects[None, :, 1])
        - np.minimum(rects[:, None, 3], rects[None, :, 3]),
    )
    close = np.hypot(gx, gy) <= radius
    out = {}
    for n in range(len(m.zones)):
        if n == zone:
            continue
        mask = (own == zone) & close[:, own == n].any(axis=1)
        if mask.any():
            out[n] = mask
    return out


def assert_same_ghosts(got: dict[int, Mask], want: dict[int, Mask]) -> None:
    assert sorted(got) == sorted(want)
    for n, mask in want.items():
        assert got[n].dtype == np.bool_ and got[n].shape == mask.shape
        np.testing.assert_array_equal(got[n], mask, err_msg=f"zone {n}")


# Radii in cell sizes. With a cell size that is not a binary fraction, a gap computed from
# cell coordinates is off by rounding, so radii exactly at a gap (whole cells) are only
# compared where that arithmetic is exact.
RADII_OFF_GAPS = (0.0, 0.37, 1.5, 2.2, 4.9, 30.0, math.inf)
RADII = (*RADII_OFF_GAPS, 1.0, 2.0, 3.0, 5.0)


@pytest.mark.parametrize(
    ("cell", "origin"), [(1.0, (0.0, 0.0)), (0.75, (-3.0, 6.5)), (0.3, (0.1, -2.7))]
)
def test_ghost_cells_match_all_pairs_on_random_maps(
    cell: float, origin: tuple[float, float]
) -> None:
    rng = np.random.default_rng(int(cell * 100))
    for trial in range(12):
        cols, rows = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        n = int(rng.integers(1, 6))
        m = random_map(rng, cols, rows, n, cell, origin)
        for radius in RADII if cell in (1.0, 0.75) else RADII_OFF_GAPS:
            for zone in range(n):
                got = m.ghost_cells(zone, radius * cell)
                assert_same_ghosts(got, ref_ghost_cells(m, zone, radius * cell))
                assert m.neighbours(zone, radius * cell) == sorted(got), trial


def test_ghost_cells_match_all_pairs_with_a_partial_last_cell() -> None:
    rng = np.random.default_rng(21)
    owner = rng.integers(0, 3, size=(5, 7)).astype(np.int16)
    m = CellMap((0.0, 0.0, 6.3, 4.1), 1.0, names(3), owner, 0)
    for radius in RADII:
        for zone in range(3):
            assert_same_ghosts(m.ghost_cells(zone, radius), ref_ghost_cells(m, zone, radius))


def test_ghost_cells_match_all_pairs_on_a_split() -> None:
    m = CellMap.split((0.0, 0.0, 40.0, 30.0), 1.0, names(7))
    for radius in (0.0, 2.5, 6.2):
        for zone in range(7):
            assert_same_ghosts(m.ghost_cells(zone, radius), ref_ghost_cells(m, zone, radius))


def test_ghost_radius_at_exactly_a_cell_gap_includes_it() -> None:
    m = CellMap((0.0, 0.0, 3.0, 3.0), 1.0, ["a", "b"], np.array([[0, 0, 0]] * 2 + [[0, 0, 1]]), 0)
    # Cell (0, 0) is sqrt(2) metres from cell (2, 2): gap (1, 1) cells.
    assert m.ghost_cells(0, math.sqrt(2.0))[1][0]
    assert not m.ghost_cells(0, math.sqrt(2.0) * 0.999)[1][0]
    assert m.ghost_cells(1, 0.0)[0].tolist() == [False] * 8 + [True]


def test_ghost_radius_equal_to_a_computed_gap_includes_it() -> None:
    # An entity exactly one computed gap away must be ghosted, whatever the rounding of
    # the cell coordinates.
    for cell in (0.1, 0.3, 0.7, 9.7, 1.0 / 3.0):
        for x0 in (0.1, -2.7, 1234.567, 0.0):
            for k in range(1, 7):
                owner = np.zeros((1, k + 2), np.int16)
                owner[0, -1] = 1
                world = (x0, 0.0, x0 + (k + 2) * cell, cell)
                m = CellMap(world, cell, ["a", "b"], owner, 0)
                assert m.cols == k + 2
                gap = m.cell_rect(k + 1)[0] - m.cell_rect(0)[2]
                assert m.ghost_cells(0, gap)[1][0], (cell, x0, k, gap)
                assert m.ghost_cells(1, gap)[0][k + 1]


def test_ghost_cells_one_zone_and_bad_arguments() -> None:
    m = CellMap.split((0.0, 0.0, 5.0, 5.0), 1.0, ["a"])
    assert m.ghost_cells(0, 100.0) == {} and m.neighbours(0, 100.0) == []
    m = CellMap.split((0.0, 0.0, 5.0, 5.0), 1.0, ["a", "b"])
    for bad in (-1.0, math.nan, "x", "1.5", None, [1.0], True):
        with pytest.raises(ValueError):
            m.ghost_cells(0, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            m.neighbours(0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.ghost_cells(2, 1.0)


def shifted_reference(m: CellMap, zone: int, radius: float) -> dict[int, Mask]:
    """Plain shifted-array dilation of each other zone's cells over the offset stencil."""
    r = radius / m.cell_size
    span = min(max(m.rows, m.cols), math.floor(r) + 1)
    own = np.asarray(m.owner)
    pad = np.full((m.rows + 2 * span, m.cols + 2 * span), -1, np.int64)
    pad[span : span + m.rows, span : span + m.cols] = own
    seen = np.zeros((len(m.zones), m.rows, m.cols), np.bool_)
    for dy in range(-span, span + 1):
        for dx in range(-span, span + 1):
            if math.hypot(max(abs(dx) - 1, 0), max(abs(dy) - 1, 0)) > r:
                continue
            shifted = pad[span + dy : span + dy + m.rows, span + dx : span + dx + m.cols]
            rr, cc = np.nonzero((own == zone) & (shifted >= 0) & (shifted != zone))
            seen[shifted[rr, cc], rr, cc] = True
    return {n: seen[n].reshape(-1) for n in range(len(m.zones)) if seen[n].any()}


def test_ghost_cells_on_a_big_split_match_shifted_arrays() -> None:
    m = CellMap.split((0.0, 0.0, 4096.0, 4096.0), 16.0, NAMES)
    for zone in (0, 17, 42, 63):
        for radius in (0.0, 40.0, 100.0):
            assert_same_ghosts(m.ghost_cells(zone, radius), shifted_reference(m, zone, radius))


def test_neighbours_symmetric() -> None:
    rng = np.random.default_rng(2)
    maps = [
        CellMap.split((0.0, 0.0, 4096.0, 4096.0), 16.0, NAMES),
        CellMap.split((0.0, 0.0, 300.0, 170.0), 7.0, names(13)),
        random_map(rng, 9, 7, 6),
    ]
    for m in maps:
        for radius in (0.0, 10.0, 37.5, 200.0):
            near = {z: m.neighbours(z, radius) for z in range(len(m.zones))}
            for z, ns in near.items():
                assert ns == sorted(set(ns)) and z not in ns
                for n in ns:
                    assert z in near[n]


def test_split_neighbours_at_radius_zero_are_the_touching_zones() -> None:
    m = CellMap.split((0.0, 0.0, 4.0, 4.0), 1.0, names(4))
    # Quadrants: 0 and 3 touch only at a corner, which counts (distance 0).
    assert m.neighbours(0, 0.0) == [1, 2, 3]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ghost_cells_superset_property(dtype: Any) -> None:
    rng = np.random.default_rng(9)
    maps = [
        random_map(rng, 8, 6, 4, 2.5, (-7.0, 3.0)),
        CellMap.split((-17.3, 102.9, 250.1, 180.0), 9.7, names(9)),
    ]
    for m in maps:
        x0, y0, x1, y1 = m.world
        n_zones = len(m.zones)
        for radius in (0.2, 1.1, 6.0, 15.3):
            p = np.column_stack([rng.uniform(x0, x1, 1500), rng.uniform(y0, y1, 1500)])
            # Partners near each point (so pairs straddle region borders), then anywhere.
            step = rng.uniform(0.0, 1.2 * radius, 1500)
            turn = rng.uniform(0.0, 2.0 * math.pi, 1500)
            near = p + np.column_stack([step * np.cos(turn), step * np.sin(turn)])
            near = np.clip(near, [x0, y0], [x1, y1])
            far = np.column_stack([rng.uniform(x0, x1, 500), rng.uniform(y0, y1, 500)])
            q = np.concatenate([near, far])
            p, q = p.astype(dtype), q.astype(dtype)
            cp = m.cell_of(p)
            own_p, own_q = m.owner_of(p), m.owner_of(q)
            d = np.hypot(
                p[:, None, 0].astype(np.float64) - q[None, :, 0],
                p[:, None, 1].astype(np.float64) - q[None, :, 1],
            )
            i, j = np.nonzero((d <= radius) & (own_p[:, None] != own_q[None, :]))
            assert i.size > 0  # the test saw real pairs
            table = np.zeros((n_zones, n_zones, m.n_cells), np.bool_)
            for z in range(n_zones):
                for n, mask in m.ghost_cells(z, radius).items():
                    # Masks only ever hold cells of the zone asked about.
                    assert (m.owner.reshape(-1)[mask] == z).all()
                    table[z, n] = mask
            covered = table[own_p[i], own_q[j], cp[i]]
            assert covered.all(), (radius, i[~covered][:5], j[~covered][:5])


# ----------------------------------------------------------------------------- bytes


def test_round_trip() -> None:
    rng = np.random.default_rng(4)
    maps = [
        CellMap.split((0.0, 0.0, 4096.0, 4096.0), 16.0, NAMES, epoch=17),
        CellMap.split((-17.3, 102.9, 250.1, 180.0), 9.7, ["ä", "zone/b", "c"]),
        random_map(rng, 5, 9, 7),
        CellMap((0.0, 0.0, 1.0, 1.0), 2.0, ["a"], np.zeros((1, 1), np.int16), MAX_EPOCH),
    ]
    for m in maps:
        data = m.to_bytes()
        assert isinstance(data, bytes)
        back = CellMap.from_bytes(data)
        assert back == m and back.epoch == m.epoch and back.zones == m.zones
        assert back.owner.dtype == np.int16 and not back.owner.flags.writeable
        assert CellMap.from_bytes(bytearray(data)) == m
        assert CellMap.from_bytes(memoryview(data)) == m


def test_bytes_layout() -> None:
    owner = np.array([[0, 1, 2], [2, 1, 0]], np.int16)
    m = CellMap((1.0, 2.0, 4.0, 4.0), 1.0, ["a", "b", "c"], owner, 9)
    obj = msgpack.unpackb(m.to_bytes(), raw=False)
    assert obj == {
        "v": 1,
        "world": [1.0, 2.0, 4.0, 4.0],
        "cell": 1.0,
        "zones": ["a", "b", "c"],
        "epoch": 9,
        "owner": bytes([0, 0, 1, 0, 2, 0, 2, 0, 1, 0, 0, 0]),
    }


def valid_fields() -> dict[str, Any]:
    m = CellMap.split((0.0, 0.0, 4.0, 3.0), 1.0, ["a", "b", "c"], epoch=2)
    fields: dict[str, Any] = msgpack.unpackb(m.to_bytes(), raw=False)
    return fields


def pack(fields: Any) -> bytes:
    out: bytes = msgpack.packb(fields, use_bin_type=True)
    return out


def with_field(**changes: Any) -> bytes:
    fields = valid_fields()
    for k, v in changes.items():
        if v is KeyError:
            del fields[k]
        else:
            fields[k] = v
    return pack(fields)


HOSTILE = [
    b"",
    b"\xc1",
    b"\x91",
    pack([1, 2, 3]),
    pack(None),
    pack({1: 2}),
    pack({"v": 1}),
    with_field(v=2),
    with_field(v="1"),
    with_field(v=True),
    with_field(v=1.0),
    with_field(v=KeyError),
    with_field(extra=1),
    with_field(world=[0.0, 0.0, 4.0]),
    with_field(world=[0.0, 0.0, 4.0, 3.0, 1.0]),
    with_field(world="abcd"),
    with_field(world=[0.0, 0.0, "4", 3.0]),
    with_field(world=[0.0, 0.0, math.nan, 3.0]),
    with_field(world=[0.0, 0.0, math.inf, 3.0]),
    with_field(world=[4.0, 0.0, 0.0, 3.0]),
    with_field(world=[0.0, 0.0, True, 3.0]),
    with_field(world=[-1e308, 0.0, 1e308, 3.0]),
    with_field(world={"x": 1}),
    with_field(world=[0, 0, 2**64 - 1, 3]),
    with_field(cell=0.0),
    with_field(cell=-1.0),
    with_field(cell="1"),
    with_field(cell=None),
    with_field(cell=1e-300),
    with_field(cell=0.5),  # 8 x 6 cells, but 12 cells of owner bytes
    with_field(zones=[]),
    with_field(zones=["a", "a", "b"]),
    with_field(zones=["a", "", "c"]),
    with_field(zones=["a", 2, "c"]),
    with_field(zones=["a", b"b", "c"]),
    with_field(zones="abc"),
    with_field(zones=["a", "b"]),  # owner refers to zone 2
    with_field(epoch=-1),
    with_field(epoch=1.0),
    with_field(epoch="2"),
    with_field(epoch=True),
    with_field(epoch=2**64 - 1),
    with_field(owner="x" * 24),
    with_field(owner=[0] * 12),
    with_field(owner=b""),
    with_field(owner=b"\x00" * 23),
    with_field(owner=b"\x00" * 25),
    with_field(owner=np.zeros(12, "<i4").tobytes()),
    with_field(owner=np.zeros(12, "<i1").tobytes()),
    with_field(owner=np.full(12, 3, "<i2").tobytes()),
    with_field(owner=np.full(12, -1, "<i2").tobytes()),
    with_field(owner=np.full(12, 3, ">i2").tobytes()),  # 768 in little-endian
    pack(valid_fields()) + b"\x00",
]


@pytest.mark.parametrize("data", HOSTILE)
def test_from_bytes_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(ValueError):
        CellMap.from_bytes(data)


def test_from_bytes_rejects_every_truncation_and_non_bytes() -> None:
    data = CellMap.split((0.0, 0.0, 4.0, 3.0), 1.0, ["a", "b", "c"]).to_bytes()
    for end in range(len(data)):
        with pytest.raises(ValueError):
            CellMap.from_bytes(data[:end])
    for bad in (None, "text", 12, [1, 2]):
        with pytest.raises(ValueError):
            CellMap.from_bytes(bad)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_from_bytes_garbage_raises_value_error_only(data: bytes) -> None:
    try:
        m = CellMap.from_bytes(data)
    except ValueError:
        return
    assert CellMap.from_bytes(m.to_bytes()) == m


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["v", "world", "cell", "zones", "epoch", "owner"]),
    msgpack_values,
    st.data(),
)
def test_from_bytes_wrong_fields_raise_value_error_only(
    key: str, value: Any, data: st.DataObject
) -> None:
    fields = valid_fields()
    fields[key] = value
    if key in ("world", "zones") and data.draw(st.booleans()):
        # A list of the right length with one wrong element.
        good = list(valid_fields()[key])
        good[data.draw(st.integers(0, len(good) - 1))] = value
        fields[key] = good
    try:
        m = CellMap.from_bytes(pack(fields))
    except ValueError:
        return
    assert CellMap.from_bytes(m.to_bytes()) == m


# ----------------------------------------------------------------------------- the rest


def test_with_owner_bumps_the_epoch() -> None:
    m = CellMap.split((0.0, 0.0, 6.0, 4.0), 1.0, ["a", "b"], epoch=4)
    owner = np.asarray(m.owner).copy()
    owner[0, 0] = 1
    m2 = m.with_owner(owner)
    assert m2.epoch == 5 and m2.zones == m.zones and m2.owner[0, 0] == 1
    assert m.epoch == 4 and m.owner[0, 0] == 0
    assert (m2.world, m2.cell_size, m2.cols, m2.rows) == (m.world, m.cell_size, m.cols, m.rows)
    m3 = m2.with_owner(np.full((4, 6), 2, np.int16), zones=["a", "b", "c"])
    assert m3.epoch == 6 and m3.zones == ("a", "b", "c")
    with pytest.raises(ValueError):
        m.with_owner(np.full((4, 6), 2, np.int16))
    with pytest.raises(ValueError):
        m.with_owner(np.zeros((6, 4), np.int16))


def test_equality_hash_repr_describe() -> None:
    a = CellMap.split((0.0, 0.0, 80.0, 60.0), 4.0, names(20), epoch=3)
    b = CellMap.split((0.0, 0.0, 80.0, 60.0), 4.0, names(20), epoch=3)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != CellMap.split((0.0, 0.0, 80.0, 60.0), 4.0, names(20), epoch=4)
    assert a != a.with_owner(a.owner)
    assert a != CellMap.split((0.0, 0.0, 80.0, 60.0), 4.0, names(19), epoch=3)
    owner = np.asarray(a.owner).copy()
    owner[0, 0] = 19
    assert a != CellMap(a.world, a.cell_size, a.zones, owner, 3)
    assert a != "map" and a != None  # noqa: E711
    text = repr(a)
    assert "20x15" in text and "epoch=3" in text
    summary = a.describe()
    assert "epoch 3" in summary and "20 x 15" in summary and "20 zones" in summary
    counts = np.bincount(a.owner.reshape(-1))
    assert f"min {counts.min()}" in summary and f"max {counts.max()}" in summary
    assert f"zone-0={counts[0]}" in summary and "4 more" in summary
    assert len(summary) < 400


# ----------------------------------------------------------------------------- kernels


def test_kernels_match_their_python_bodies() -> None:
    rng = np.random.default_rng(12)
    pos = np.array([[0.5, 0.5], [np.nan, 4.0], [-1e30, np.inf], [2.99, 3.0]], np.float32)
    for arr in (pos, pos.astype(np.float64)):
        want = py_func(locate_cells)(arr, -1.0, 0.5, 0.75, 6, 5)
        np.testing.assert_array_equal(locate_cells(arr, -1.0, 0.5, 0.75, 6, 5), want)
    owner = rng.integers(0, 4, size=(6, 7)).astype(np.int16)
    owner[2, :] = 1
    runs = find_run_ends(owner)
    np.testing.assert_array_equal(runs, py_func(find_run_ends)(owner))
    for c in range(7):
        assert runs[2, c] == 7
    boxes = find_zone_boxes(owner, 5)
    np.testing.assert_array_equal(boxes, py_func(find_zone_boxes)(owner, 5))
    for z in range(4):
        rr, cc = np.nonzero(owner == z)
        assert boxes[z].tolist() == [rr.min(), rr.max() + 1, cc.min(), cc.max() + 1]
    assert boxes[4].tolist() == [0, 0, 0, 0]
    reach = np.array([1, 2, 3, 2, 1], np.int64)
    box = boxes[1]
    near = find_near_zones(owner, runs, box, 1, reach, 4)
    np.testing.assert_array_equal(near, py_func(find_near_zones)(owner, runs, box, 1, reach, 4))
    slot = np.array([0, -1, 1, -1], np.int32)
    got = mark_ghost_cells(owner, runs, box, 1, reach, slot, 2)
    want = py_func(mark_ghost_cells)(owner, runs, box, 1, reach, slot, 2)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (2, 42) and got.dtype == np.bool_


def test_warm_up_runs() -> None:
    warm_up()
