"""The cell map: which zone owns which part of the world, versioned by an epoch.

The world rectangle ``(x0, y0, x1, y1)`` (metres) is covered by a fixed grid of square cells
``cell_size`` wide: ``cols = ceil((x1 - x0) / cell_size)``, ``rows = ceil((y1 - y0) /
cell_size)``, where a quotient within 1e-9 (relative) of a whole number counts as that number,
so that float rounding (``4.2 / 0.6 == 7.000000000000001``) never adds a sliver column. Cell
``(row, col)`` covers ``[x0 + col * cell_size, x0 + (col + 1) * cell_size)`` in x (same in y)
and has the flat index ``row * cols + col``; the last column and row end exactly at ``x1`` /
``y1``, so the cells tile the world. Every cell is owned by exactly one zone; ``owner[row,
col]`` indexes ``zones``. A map never changes: a new split is a new map with a higher epoch
(:meth:`CellMap.with_owner`).

Positions map to cells the way the interest grid does (``kernels/grid.py``): float64
``floor((x - x0) / cell_size)``, clamped to the edge cells, NaN to the low edge. So an entity
outside the world (or with a broken position) still has exactly one owner.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from shardworld.kernels._jit import kernel

#: Version written by :meth:`CellMap.to_bytes` (the ``"v"`` field).
FORMAT_VERSION = 1
#: Owner values are int16.
MAX_ZONES = 32767
#: Flat cell indices are int32.
MAX_CELLS = 2**31 - 1
#: Epochs travel as msgpack integers and in int64 columns elsewhere.
MAX_EPOCH = 2**63 - 1

# A width / cell_size quotient this close (relative) to a whole number is that number.
_SNAP = 1e-9
# Relative slack on ghost radii: cell distances are computed in float64 from whole cell
# counts, entity distances by callers in float32; the superset promise must survive rounding.
_RADIUS_SLACK = 1e-9
_KEYS = frozenset({"v", "world", "cell", "zones", "epoch", "owner"})

World = tuple[float, float, float, float]
I16 = npt.NDArray[np.int16]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------------- kernels


@kernel
def locate_cells(
    pos: npt.NDArray[np.floating[Any]],
    x0: float,
    y0: float,
    cell_size: float,
    cols: int,
    rows: int,
) -> I32:
    """Flat cell index of every position, clamped into the grid.

    pos: float32[N, 2] or float64[N, 2] (x, y). x0, y0, cell_size: float64 grid origin and
    cell size; cols, rows: int64 grid size. Returns int32[N], ``row * cols + col`` with
    ``col = floor((x - x0) / cell_size)`` in float64, clamped to ``[0, cols - 1]``, NaN to 0
    (same in y). Index an owner array with the result (:meth:`CellMap.owner_of_cells`).
    """
    n = pos.shape[0]
    out = np.empty(n, np.int32)
    last_col = cols - 1
    last_row = rows - 1
    for i in range(n):
        fx = np.floor((np.float64(pos[i, 0]) - x0) / cell_size)
        fy = np.floor((np.float64(pos[i, 1]) - y0) / cell_size)
        # Compare as floats first: casting infinities or huge values to int is undefined.
        col = 0
        if fx >= last_col:
            col = last_col
        elif fx > 0.0:
            col = int(fx)
        row = 0
        if fy >= last_row:
            row = last_row
        elif fy > 0.0:
            row = int(fy)
        out[i] = row * cols + col
    return out


@kernel
def find_run_ends(owner: I16) -> I32:
    """Where each cell's run of equal owners along its row ends.

    owner: int16[rows, cols]. Returns int32[rows, cols]: the first column right of ``col``
    whose owner differs from ``owner[row, col]``, or ``cols``. Pass it to
    :func:`find_near_zones` / :func:`mark_ghost_cells`, which skip whole runs with it.
    """
    rows, cols = owner.shape
    out = np.empty((rows, cols), np.int32)
    for r in range(rows):
        end = cols
        for c in range(cols - 1, -1, -1):
            if c + 1 < cols and owner[r, c + 1] != owner[r, c]:
                end = c + 1
            out[r, c] = end
    return out


@kernel
def find_zone_boxes(owner: I16, n_zones: int) -> I32:
    """Bounding box of each zone's cells, in cells.

    owner: int16[rows, cols] with values in [0, n_zones); n_zones: int64. Returns
    int32[n_zones, 4], ``(row0, row1, col0, col1)`` half-open; (0, 0, 0, 0) for a zone that
    owns no cell. :func:`find_near_zones` and :func:`mark_ghost_cells` scan only the box.
    """
    rows, cols = owner.shape
    out = np.zeros((n_zones, 4), np.int32)
    seen = np.zeros(n_zones, np.bool_)
    for r in range(rows):
        for c in range(cols):
            z = owner[r, c]
            if not seen[z]:
                seen[z] = True
                out[z, 0] = r
                out[z, 1] = r + 1
                out[z, 2] = c
                out[z, 3] = c + 1
            else:
                out[z, 1] = r + 1
                out[z, 2] = min(out[z, 2], c)
                out[z, 3] = max(out[z, 3], c + 1)
    return out


@kernel
def find_near_zones(
    owner: I16, run_end: I32, box: I32, zone: int, reach: I64, n_zones: int
) -> Mask:
    """Which other zones own a cell within the ghost stencil of some cell of ``zone``.

    owner: int16[rows, cols]; run_end: int32[rows, cols] from :func:`find_run_ends`; box:
    int32[4], the zone's row of :func:`find_zone_boxes`; zone: int64; reach: int64[2R + 1],
    ``reach[R + dy]`` is the largest ``|dx|`` of the stencil in row offset ``dy`` (all >= 0);
    n_zones: int64. Returns bool[n_zones], never True at ``zone``. The caller numbers the
    True zones and calls :func:`mark_ghost_cells`.
    """
    rows, cols = owner.shape
    half = (reach.shape[0] - 1) // 2
    near = np.zeros(n_zones, np.bool_)
    found = 0
    for r in range(box[0], box[1]):
        for c in range(box[2], box[3]):
            if owner[r, c] != zone:
                continue
            for j in range(reach.shape[0]):
                rr = r + j - half
                if rr < 0 or rr >= rows:
                    continue
                k = reach[j]
                cc = max(c - k, 0)
                hi = min(c + k, cols - 1)
                while cc <= hi:
                    other = owner[rr, cc]
                    if other != zone and not near[other]:
                        near[other] = True
                        found += 1
                        if found == n_zones - 1:
                            return near
                    cc = run_end[rr, cc]
    return near


@kernel
def mark_ghost_cells(
    owner: I16, run_end: I32, box: I32, zone: int, reach: I64, slot: I32, n_slots: int
) -> npt.NDArray[np.bool_]:
    """Cells of ``zone`` whose ghost stencil reaches each other zone.

    owner, run_end, box, zone, reach: as for :func:`find_near_zones`; slot: int32[n_zones], the
    output row of each zone or -1 for zones to leave out; n_slots: int64. Returns
    bool[n_slots, rows * cols]: ``out[slot[n], cell]`` is True when ``cell`` is owned by
    ``zone`` and the stencil around it holds a cell of zone ``n``.
    """
    rows, cols = owner.shape
    half = (reach.shape[0] - 1) // 2
    out = np.zeros((n_slots, rows * cols), np.bool_)
    for r in range(box[0], box[1]):
        for c in range(box[2], box[3]):
            if owner[r, c] != zone:
                continue
            cell = r * cols + c
            marked = 0
            # Nearest rows first, and stop once every zone is marked: with a large radius a
            # cell usually sees every neighbour long before the stencil's far rows.
            for t in range(reach.shape[0]):
                dy = (t + 1) // 2
                if t % 2 == 0:
                    dy = -dy
                rr = r + dy
                if rr < 0 or rr >= rows:
                    continue
                k = reach[half + dy]
                cc = max(c - k, 0)
                hi = min(c + k, cols - 1)
                while cc <= hi:
                    other = owner[rr, cc]
                    if other != zone:
                        s = slot[other]
                        if s >= 0 and not out[s, cell]:
                            out[s, cell] = True
                            marked += 1
                    cc = run_end[rr, cc]
                if marked == n_slots:
                    break
    return out


# --------------------------------------------------------------------------------- helpers


def _real(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {out!r}")
    return out


def _cells_along(extent: float, cell_size: float, what: str) -> int:
    q = extent / cell_size
    if not math.isfinite(q) or q > MAX_CELLS:
        raise ValueError(f"the world is too many cells {what} ({q!r}; at most {MAX_CELLS} in all)")
    whole = round(q)
    if whole >= 1 and abs(q - whole) <= _SNAP * whole:
        return int(whole)
    return max(1, math.ceil(q))


def _grid(world: object, cell_size: object) -> tuple[World, float, int, int]:
    """Validated (world, cell_size, cols, rows)."""
    if isinstance(world, (str, bytes)) or not isinstance(world, Sequence) or len(world) != 4:
        raise ValueError(f"world must be (x0, y0, x1, y1), got {world!r}")
    x0, y0, x1, y1 = (_real(v, "a world coordinate") for v in world)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"world must have x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)!r}")
    cs = _real(cell_size, "cell_size")
    if cs <= 0.0:
        raise ValueError(f"cell_size must be > 0, got {cs!r}")
    cols = _cells_along(x1 - x0, cs, "across")
    rows = _cells_along(y1 - y0, cs, "down")
    if cols * rows > MAX_CELLS:
        raise ValueError(f"{cols} x {rows} cells is more than {MAX_CELLS}")
    return (x0, y0, x1, y1), cs, cols, rows


def _check_zones(zones: object) -> tuple[str, ...]:
    if isinstance(zones, (str, bytes)) or not isinstance(zones, Sequence):
        raise ValueError(f"zones must be a sequence of names, got {zones!r}")
    names = tuple(zones)
    if not names:
        raise ValueError("there must be at least one zone")
    if len(names) > MAX_ZONES:
        raise ValueError(f"at most {MAX_ZONES} zones, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"zone names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        raise ValueError(f"zone names must be unique, repeated: {dupes!r}")
    return names


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
        raise ValueError(f"epoch must be an integer, got {epoch!r}")
    value = int(epoch)
    if not 0 <= value <= MAX_EPOCH:
        raise ValueError(f"epoch must be in [0, 2**63 - 1], got {value}")
    return value


def _balanced_cut(length: int, line: int, n: int) -> tuple[int, int]:
    """Where to cut a ``length`` x ``line`` rectangle of cells for ``n >= 2`` zones.

    Returns (cut, n_low): the first ``cut`` lines (each ``line`` cells) go to ``n_low`` zones,
    the rest to ``n - n_low``. Normally ``n_low = n // 2`` and ``cut`` is the line nearest to
    ``length * n_low / n`` (ties to the lower one), clamped so that both sides keep at least
    one cell per zone. When no line with ``n // 2`` zones on the low side can do that (a
    rectangle with barely more cells than zones), the zones are divided otherwise: the
    (cut, n_low) with the smallest difference of cells per zone between the sides, then
    ``n_low`` nearest ``n // 2``, then the lowest cut.
    """
    n_low = n // 2
    n_high = n - n_low
    lo = max(1, -(-n_low // line))
    hi = min(length - 1, length - -(-n_high // line))
    if lo <= hi:
        cut, rem = divmod(length * n_low, n)
        if 2 * rem > n:
            cut += 1
        return min(max(cut, lo), hi), n_low
    best: tuple[Fraction, int, int, int] | None = None
    for cut in range(1, length):
        a_lo = max(1, n - (length - cut) * line)
        a_hi = min(n - 1, cut * line)
        if a_lo > a_hi:
            continue
        # Cells per zone fall on the low side and rise on the high side as n_low grows, so
        # the best n_low is next to where they cross, n_low = cut * n / length.
        cross = cut * n // length
        for na in {min(max(cross, a_lo), a_hi), min(max(cross + 1, a_lo), a_hi)}:
            nb = n - na
            gap = Fraction(abs(cut * line * nb - (length - cut) * line * na), na * nb)
            key = (gap, abs(na - n_low), cut, na)
            if best is None or key < best:
                best = key
    if best is None:  # unreachable when length * line >= n
        raise ValueError(f"cannot split {length * line} cells between {n} zones")
    return best[2], best[3]


# --------------------------------------------------------------------------------- the map


class CellMap:
    """Immutable. ``owner[row, col]`` is a zone index into ``zones``.

    Methods that take a zone take its index (see :meth:`zone_index`); an index out of range,
    like any other bad argument, raises ValueError.
    """

    __slots__ = (
        "_boxes",
        "_cell_size",
        "_cols",
        "_epoch",
        "_flat",
        "_hash",
        "_owner",
        "_reaches",
        "_rows",
        "_run_end",
        "_world",
        "_zones",
    )

    def __init__(
        self,
        world: tuple[float, float, float, float],
        cell_size: float,
        zones: Sequence[str],
        owner: npt.NDArray[np.int16],
        epoch: int,
    ) -> None:
        self._world, self._cell_size, self._cols, self._rows = _grid(world, cell_size)
        self._zones = _check_zones(zones)
        self._epoch = _check_epoch(epoch)
        arr = np.asarray(owner)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"owner must be an integer array, got dtype {arr.dtype}")
        if arr.shape != (self._rows, self._cols):
            raise ValueError(
                f"owner must have shape (rows, cols) = {(self._rows, self._cols)}, got {arr.shape}"
            )
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= len(self._zones):
            bad = lo if lo < 0 else hi
            raise ValueError(f"owner values must index the {len(self._zones)} zones, found {bad}")
        own = np.array(arr, dtype=np.int16, order="C", copy=True)
        own.flags.writeable = False
        self._owner: I16 = own
        self._flat: I16 = own.reshape(-1)
        self._run_end: I32 | None = None
        self._boxes: I32 | None = None
        self._reaches: dict[float, I64] = {}
        self._hash: int | None = None

    # ----------------------------------------------------------------- attributes

    @property
    def world(self) -> World:
        return self._world

    @property
    def cell_size(self) -> float:
        return self._cell_size

    @property
    def zones(self) -> tuple[str, ...]:
        return self._zones

    @property
    def owner(self) -> I16:
        """int16[rows, cols], read-only."""
        return self._owner

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def cols(self) -> int:
        return self._cols

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def n_cells(self) -> int:
        return self._cols * self._rows

    # ----------------------------------------------------------------- building

    @classmethod
    def split(
        cls,
        world: tuple[float, float, float, float],
        cell_size: float,
        zones: Sequence[str],
        epoch: int = 1,
    ) -> CellMap:
        """A k-d split of the grid into one rectangle of whole cells per zone.

        The current rectangle (first the whole grid, with all zones) is cut across its longer
        side in cells (across x on a tie); the low side (smaller x or y) gets the first
        ``n // 2`` of its zones, the high side the other ``n - n // 2``, and the cut is the
        cell line that balances cells per zone; each side is split the same way until one
        zone is left. Zones in index order therefore fill the grid from low to high.

        Balance guaranteed: at every cut, with ``n_a`` and ``n_b`` zones on the two sides and
        the cut line ``L`` cells long, the sides' average cells per zone differ by at most
        ``L * n / (2 * n_a * n_b)``, which is at most ``L`` (one line of the rectangle being
        cut). So the two zones of a last cut differ by at most one line, and each zone's cell
        count differs from the mean (cells / zones) by at most the sum, over the cuts above
        it, of ``L / (2 * n_side)`` (``n_side``: zones on its side of that cut). This holds
        for every cut whose balancing line leaves both sides at least one cell per zone; a
        rectangle with barely more cells than zones gets the nearest line that does (or, when
        none does with ``n // 2`` zones on the low side, a different division of its zones),
        trading balance for every zone keeping a cell.

        The spread of the whole map can exceed one line of the grid when cuts round the same
        way: 37 x 19 cells for 4 zones gives 162 to 190 cells per zone. Deterministic: the
        same arguments give the same map.

        Raises ValueError if there are more zones than cells.
        """
        world_t, cs, cols, rows = _grid(world, cell_size)
        names = _check_zones(zones)
        n = len(names)
        if n > cols * rows:
            raise ValueError(f"{n} zones cannot each own a cell of a {cols} x {rows} grid")
        owner = np.empty((rows, cols), np.int16)
        stack = [(0, rows, 0, cols, 0, n)]
        while stack:
            r0, r1, c0, c1, z0, k = stack.pop()
            if k == 1:
                owner[r0:r1, c0:c1] = z0
                continue
            height, width = r1 - r0, c1 - c0
            if width >= height:
                cut, k_low = _balanced_cut(width, height, k)
                stack.append((r0, r1, c0, c0 + cut, z0, k_low))
                stack.append((r0, r1, c0 + cut, c1, z0 + k_low, k - k_low))
            else:
                cut, k_low = _balanced_cut(height, width, k)
                stack.append((r0, r0 + cut, c0, c1, z0, k_low))
                stack.append((r0 + cut, r1, c0, c1, z0 + k_low, k - k_low))
        return cls(world_t, cs, names, owner, epoch)

    def with_owner(
        self, owner: npt.NDArray[np.int16], zones: Sequence[str] | None = None
    ) -> CellMap:
        """The same grid with new owners (and zones, if given), one epoch later."""
        return CellMap(
            self._world,
            self._cell_size,
            self._zones if zones is None else zones,
            owner,
            self._epoch + 1,
        )

    # ----------------------------------------------------------------- lookups

    def zone_index(self, name: str) -> int:
        try:
            return self._zones.index(name)
        except ValueError:
            raise KeyError(
                f"no zone named {name!r} in cell map epoch {self._epoch} "
                f"(zones: {', '.join(self._zones)})"
            ) from None

    def _zone(self, zone: int) -> int:
        try:
            z = operator.index(zone)
        except TypeError:
            raise ValueError(f"a zone index must be an integer, got {zone!r}") from None
        if not 0 <= z < len(self._zones):
            raise ValueError(f"zone index {z} out of range for {len(self._zones)} zones")
        return z

    def cell_of(self, pos: npt.NDArray[np.float32 | np.float64]) -> I32:
        """int32[n]: the flat cell index of each position (float[n, 2]), clamped into the grid.

        Positions outside the world fall in the nearest edge cell, a NaN coordinate counts
        as x0 (or y0), infinities clamp like any far position.
        """
        arr = np.asarray(pos)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"positions must have shape (n, 2), got {arr.shape}")
        if arr.dtype not in (np.float32, np.float64):
            if arr.dtype.kind not in "iuf":
                raise ValueError(f"positions must be real numbers, got dtype {arr.dtype}")
            arr = arr.astype(np.float64)
        arr = np.ascontiguousarray(arr)
        x0, y0 = self._world[0], self._world[1]
        return locate_cells(arr, x0, y0, self._cell_size, self._cols, self._rows)

    def owner_of(self, pos: npt.NDArray[np.float32 | np.float64]) -> I16:
        """int16[n]: the zone owning each position's cell (see :meth:`cell_of`)."""
        return self._flat[self.cell_of(pos)]

    def owner_of_cells(self, cells: npt.NDArray[np.int32]) -> I16:
        """int16, shaped like ``cells``: the zone owning each flat cell index."""
        arr = np.asarray(cells)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"cell indices must be integers, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.n_cells):
            raise ValueError(f"cell indices must be in [0, {self.n_cells})")
        return self._flat[arr]

    def region_mask(self, zone: int) -> Mask:
        """bool[n_cells]: the cells owned by ``zone``."""
        mask: Mask = self._flat == self._zone(zone)
        return mask

    def cell_rect(self, cell: int) -> World:
        """(x0, y0, x1, y1) of a flat cell, in metres; edge cells end at the world's edge."""
        try:
            c = operator.index(cell)
        except TypeError:
            raise ValueError(f"a cell index must be an integer, got {cell!r}") from None
        if not 0 <= c < self.n_cells:
            raise ValueError(f"cell {c} out of range [0, {self.n_cells})")
        row, col = divmod(c, self._cols)
        return self._rect(row, col, row, col)

    def _rect(self, row0: int, col0: int, row1: int, col1: int) -> World:
        """Metres covered by the cells rows row0..row1, cols col0..col1 (inclusive)."""
        x0, y0, x1, y1 = self._world
        cs = self._cell_size
        right = x1 if col1 == self._cols - 1 else min(x0 + (col1 + 1) * cs, x1)
        top = y1 if row1 == self._rows - 1 else min(y0 + (row1 + 1) * cs, y1)
        return (x0 + col0 * cs, y0 + row0 * cs, right, top)

    def region_bounds(self, zone: int) -> World:
        """Bounding box in metres of the cells of ``zone`` (ValueError if it owns none)."""
        z = self._zone(zone)
        row0, row1, col0, col1 = (int(v) for v in self._box_table()[z])
        if row1 == 0:
            raise ValueError(f"zone {z} ({self._zones[z]!r}) owns no cells")
        return self._rect(row0, col0, row1 - 1, col1 - 1)

    # ----------------------------------------------------------------- ghosts

    def _reach(self, radius: float) -> I64:
        """Ghost stencil: ``reach[R + dy]`` is the largest |dx| for row offset dy.

        Offset (dx, dy) is in when two cells that far apart can be within ``radius`` (a
        float >= 0, possibly inf): the gap between their rectangles is
        ``cell_size * hypot(max(|dx|-1, 0), max(|dy|-1, 0))``.
        """
        limit = radius * (1.0 + _RADIUS_SLACK)
        t = limit / self._cell_size
        if t > self._rows + self._cols:
            # Reaches every cell; also keeps t * t below overflow.
            return np.full(2 * self._rows - 1, self._cols - 1, np.int64)
        dy = np.arange(min(self._rows - 1, math.floor(t) + 1) + 1)
        gy = np.maximum(dy - 1, 0).astype(np.float64)
        gx = np.floor(np.sqrt(np.maximum(t * t - gy * gy, 0.0)))

        def inside(g: npt.NDArray[np.float64]) -> Mask:
            return np.asarray(self._cell_size * np.hypot(g, gy) <= limit)

        # The square root is only a first guess; the gap formula has the last word.
        for _ in range(2):
            gx = np.where(inside(gx + 1.0), gx + 1.0, gx)
            gx = np.where((gx >= 0.0) & ~inside(gx), gx - 1.0, gx)
        keep = inside(np.zeros_like(gy))
        n_dy = int(np.argmin(keep)) if not keep.all() else keep.size
        half = np.minimum(gx[:n_dy] + 1.0, float(self._cols - 1)).astype(np.int64)
        return np.concatenate([half[:0:-1], half])

    def _runs(self) -> I32:
        if self._run_end is None:
            self._run_end = find_run_ends(self._owner)
        return self._run_end

    def _box_table(self) -> I32:
        if self._boxes is None:
            self._boxes = find_zone_boxes(self._owner, len(self._zones))
        return self._boxes

    def _stencil(self, radius: float) -> I64:
        if isinstance(radius, bool) or not isinstance(radius, numbers.Real):
            raise ValueError(f"radius must be a number, got {radius!r}")
        r = float(radius)
        if not r >= 0.0:
            raise ValueError(f"radius must be >= 0, got {r!r}")
        # Every zone asks with the same few radii, and the map never changes.
        reach = self._reaches.get(r)
        if reach is None:
            reach = self._reach(r)
            if len(self._reaches) >= 8:
                self._reaches.clear()
            self._reaches[r] = reach
        return reach

    def ghost_cells(self, zone: int, radius: float) -> dict[int, Mask]:
        """For each other zone ``n`` near ``zone``: bool[n_cells], the cells of ``zone``
        within ``radius`` (rectangle to rectangle, touching = 0) of some cell of ``n``.

        Zones with no such cell are absent. An entity of ``zone`` within ``radius`` of any
        point of ``n``'s region lies in a masked cell of ``mask[n]``, so ghosting the
        entities of those cells to ``n`` is enough (the masks are a superset).
        """
        z = self._zone(zone)
        reach = self._stencil(radius)
        runs = self._runs()
        box = self._box_table()[z]
        near = find_near_zones(self._owner, runs, box, z, reach, len(self._zones))
        others = np.flatnonzero(near)
        if others.size == 0:
            return {}
        slot = np.full(len(self._zones), -1, np.int32)
        slot[others] = np.arange(others.size, dtype=np.int32)
        masks = mark_ghost_cells(self._owner, runs, box, z, reach, slot, int(others.size))
        return {int(n): masks[i] for i, n in enumerate(others)}

    def neighbours(self, zone: int, radius: float) -> list[int]:
        """Sorted indices of the zones :meth:`ghost_cells` would list."""
        z = self._zone(zone)
        reach = self._stencil(radius)
        box = self._box_table()[z]
        near = find_near_zones(self._owner, self._runs(), box, z, reach, len(self._zones))
        return [int(n) for n in np.flatnonzero(near)]

    # ----------------------------------------------------------------- bytes

    def to_bytes(self) -> bytes:
        """msgpack map: v, world, cell, zones, epoch, owner (int16 little-endian, row-major)."""
        out: bytes = msgpack.packb(
            {
                "v": FORMAT_VERSION,
                "world": list(self._world),
                "cell": self._cell_size,
                "zones": list(self._zones),
                "epoch": self._epoch,
                "owner": self._owner.astype("<i2").tobytes(),
            },
            use_bin_type=True,
        )
        return out

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CellMap:
        """The map :meth:`to_bytes` wrote. Anything else raises ValueError."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"cell map bytes must be bytes, got {type(data).__name__}")
        try:
            obj: Any = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
        except Exception as exc:
            # msgpack reports malformed input with several exception types.
            raise ValueError(f"cell map bytes are not one msgpack value: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError("cell map bytes must hold a msgpack map")
        if set(obj) != _KEYS:
            raise ValueError(
                f"cell map fields must be {sorted(_KEYS)}, got {sorted(map(str, obj))}"
            )
        version = obj["v"]
        if type(version) is not int or version != FORMAT_VERSION:
            raise ValueError(f"unsupported cell map version {version!r}")
        world, cell, zones, epoch, raw = (
            obj[k] for k in ("world", "cell", "zones", "epoch", "owner")
        )
        if not isinstance(world, list):
            raise ValueError("cell map world must be an array")
        if not isinstance(zones, list):
            raise ValueError("cell map zones must be an array")
        if type(epoch) is not int:
            raise ValueError(f"cell map epoch must be an integer, got {epoch!r}")
        if not isinstance(raw, bytes):
            raise ValueError("cell map owner must be binary")
        world_t, cs, cols, rows = _grid(world, cell)
        if len(raw) != 2 * cols * rows:
            raise ValueError(
                f"cell map owner must be {2 * cols * rows} bytes (int16 x {cols} x {rows}), "
                f"got {len(raw)}"
            )
        owner = np.frombuffer(raw, dtype="<i2").reshape(rows, cols)
        return cls(world_t, cs, zones, owner, epoch)

    # ----------------------------------------------------------------- the rest

    def describe(self) -> str:
        """A short summary: grid, epoch, cells per zone."""
        x0, y0, x1, y1 = self._world
        counts = np.bincount(self._flat, minlength=len(self._zones))
        shown = ", ".join(
            f"{name}={int(c)}" for name, c in zip(self._zones[:16], counts[:16], strict=False)
        )
        if len(self._zones) > 16:
            shown += f", … ({len(self._zones) - 16} more)"
        return (
            f"cell map epoch {self._epoch}: {self._cols} x {self._rows} cells of "
            f"{self._cell_size:g} m over x [{x0:g}, {x1:g}] y [{y0:g}, {y1:g}]; "
            f"{len(self._zones)} zones, cells per zone min {int(counts.min())} "
            f"max {int(counts.max())}: {shown}"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CellMap):
            return NotImplemented
        return (
            self._epoch == other._epoch
            and self._world == other._world
            and self._cell_size == other._cell_size
            and self._zones == other._zones
            and bool(np.array_equal(self._owner, other._owner))
        )

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(
                (self._epoch, self._world, self._cell_size, self._zones, self._owner.tobytes())
            )
        return self._hash

    def __repr__(self) -> str:
        return (
            f"CellMap(world={self._world!r}, cell_size={self._cell_size!r}, "
            f"grid={self._cols}x{self._rows}, zones={len(self._zones)}, epoch={self._epoch})"
        )


def warm_up() -> None:
    """Load (or compile) every kernel of this module with the production dtypes."""
    cmap = CellMap.split((0.0, 0.0, 4.0, 3.0), 1.0, ("a", "b"))
    cmap.cell_of(np.array([[0.5, 0.5], [np.nan, 9.0]], dtype=np.float32))
    cmap.cell_of(np.array([[0.5, 0.5], [np.nan, 9.0]], dtype=np.float64))
    cmap.ghost_cells(0, 1.0)
    cmap.neighbours(0, 1.0)


__all__ = [
    "FORMAT_VERSION",
    "MAX_CELLS",
    "MAX_EPOCH",
    "MAX_ZONES",
    "CellMap",
    "find_near_zones",
    "find_run_ends",
    "find_zone_boxes",
    "locate_cells",
    "mark_ghost_cells",
    "warm_up",
]
