"""Load-aware rebalancing of the cell map: a pure planner over a k-d partition of the grid.

The zones' regions form a k-d tree (BSP) over the cell grid. Every internal node (:class:`Cut`)
divides its rectangle of cells at one cell line, across x (a vertical line: columns ``< at``
go low) or across y (a horizontal line: rows ``< at`` go low); every leaf (:class:`Leaf`) is
one zone's region. A node is named by its path from the root: ``""`` is the root, ``"0"`` its
low child, ``"01"`` the high child of that, and so on. Splitting a leaf or merging two sibling
leaves leaves every other path as it was, so a path names the same line across rounds.

:class:`Partition` is that tree over a ``rows`` x ``cols`` grid, immutable. It comes from a
:class:`~shardworld.sharding.cellmap.CellMap` (:meth:`Partition.from_cellmap`) and goes back to
one (:meth:`Partition.to_cellmap`). A tree cannot always be read back from a map unchanged (two
aligned lines read as one), so the coordinator keeps the partition it built alongside the map
and reconstructs only when it has nothing better (a fresh start, a standby taking over).

:class:`Rebalancer` turns one round of measurements into a :class:`Plan`. It does no I/O,
never reads a clock (``now`` is passed in) and is deterministic: the same calls give the same
plans. Each round the caller passes the per-cell load (any non-negative figure it wants to
balance, for example entities + w * observers + w' * interest pairs) and each zone's tick p99:

1. *Line moves.* At each node the two sides' load per zone (side total / leaves on the side)
   is compared; a line whose heavier side is ``start_imbalance`` above the lighter (relative
   to their mean) starts moving toward the heavier side, up to ``max_line_step`` cell lines
   per round (as many as bring the sides closest), and keeps moving until it is within
   ``stop_imbalance``. A move never empties a region and never worsens the node's balance
   (a strip too heavy to hand over stays where it is). A line that moved one way
   does not move back within ``reversal_hold_rounds`` rounds. At most
   ``max_moves_per_round`` lines and ``max_cells_per_round`` cells move per round, and the
   lines that move in one round touch pairwise different zones, so each move's cells go
   straight from one zone to a neighbour whatever order they are carried out in.
2. *Split.* A zone whose p99 has stayed above the high-water mark for ``split_after_s`` and
   that line moves cannot bring back under it is split at its load median, across its longer
   side, and the lighter half goes to a new zone that the caller provides.
3. *Merge.* Two sibling zones both below the low-water mark for ``merge_after_s`` become one;
   the lighter hands all its cells to the other.
4. At most one split or merge per ``structural_cooldown_s``, counted from when a structural
   change is first seen in the partition passed to :meth:`Rebalancer.plan`.

The caller applies a plan with :meth:`Partition.apply` (to the partition the plan was made
for), publishes ``partition.to_cellmap(current_map)`` through its epoch compare-and-set and
carries out the cell moves. A split needs a zone that may not exist yet: ``plan.new_zones``
says how many; ``partition.apply(plan)`` without names applies everything else, and the
rebalancer proposes the split again each round while it is still due, so the caller applies
it with ``partition.apply(plan, new_zones=[name])`` in the round its new zone is ready.

Cells are named by flat index ``row * cols + col`` (int32), as in the cell map.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from shardworld.sharding.cellmap import MAX_CELLS, MAX_ZONES, CellMap, find_zone_boxes

Axis = Literal["x", "y"]
Side = Literal["low", "high"]
I16 = npt.NDArray[np.int16]
I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------- geometry


class Rect(NamedTuple):
    """A block of cells: rows ``[row0, row1)``, columns ``[col0, col1)``."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def area(self) -> int:
        return self.height * self.width

    def extent(self, axis: Axis) -> int:
        """Cells across ``axis``: the width for x, the height for y."""
        return self.width if axis == "x" else self.height

    def halves(self, axis: Axis, at: int) -> tuple[Rect, Rect]:
        """The two sides of a line at ``at`` across ``axis`` (low, high)."""
        if axis == "x":
            return (
                Rect(self.row0, self.row1, self.col0, at),
                Rect(self.row0, self.row1, at, self.col1),
            )
        return Rect(self.row0, at, self.col0, self.col1), Rect(at, self.row1, self.col0, self.col1)

    def cells(self, cols: int) -> I32:
        """int32[area]: flat indices of the block's cells in a grid ``cols`` wide, ascending."""
        r = np.arange(self.row0, self.row1, dtype=np.int32)[:, None] * np.int32(cols)
        c = np.arange(self.col0, self.col1, dtype=np.int32)[None, :]
        out: I32 = (r + c).reshape(-1)
        return out


@dataclass(frozen=True, slots=True)
class Leaf:
    """One zone's region."""

    zone: str


@dataclass(frozen=True, slots=True)
class Cut:
    """A line at cell line ``at`` across ``axis``; ``low`` holds the cells below it."""

    axis: Axis
    at: int
    low: Node
    high: Node


Node: TypeAlias = Leaf | Cut


def _child(path: str, side: int) -> str:
    return path + ("1" if side else "0")


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _replace(root: Node, path: str, new: Node) -> Node:
    """``root`` with the node at ``path`` replaced by ``new``."""
    trail: list[Cut] = []
    node = root
    for step in path:
        if not isinstance(node, Cut):
            raise ValueError(f"no node at path {path!r}")
        trail.append(node)
        node = node.high if step == "1" else node.low
    out = new
    for cut, step in zip(reversed(trail), reversed(path), strict=True):
        out = (
            Cut(cut.axis, cut.at, cut.low, out)
            if step == "1"
            else Cut(cut.axis, cut.at, out, cut.high)
        )
    return out


class _NodeInfo(NamedTuple):
    node: Node
    rect: Rect
    leaves: int


# --------------------------------------------------------------------------------- partition


class Partition:
    """A k-d tree of rectangular zone regions over a ``rows`` x ``cols`` grid; immutable.

    Raises ValueError unless every line lies strictly inside its node's rectangle (so every
    region has at least one cell) and zone names are unique non-empty strings.
    """

    __slots__ = ("_code", "_cols", "_edges", "_info", "_leaf_path", "_root", "_rows", "_zones")

    def __init__(self, rows: int, cols: int, root: Node) -> None:
        self._rows = _check_int(rows, "rows")
        self._cols = _check_int(cols, "cols")
        if self._rows < 1 or self._cols < 1 or self._rows * self._cols > MAX_CELLS:
            raise ValueError(f"a grid must have 1 to {MAX_CELLS} cells, got {rows} x {cols}")
        self._root = root
        info: dict[str, _NodeInfo] = {}
        leaf_path: dict[str, str] = {}
        code: list[tuple[str, int | str]] = []
        order: list[str] = []
        stack: list[tuple[str, Node, Rect]] = [("", root, Rect(0, self._rows, 0, self._cols))]
        while stack:
            path, node, rect = stack.pop()
            order.append(path)
            if isinstance(node, Leaf):
                if not isinstance(node.zone, str) or not node.zone:
                    raise ValueError(f"zone names must be non-empty strings, got {node.zone!r}")
                if node.zone in leaf_path:
                    raise ValueError(f"zone {node.zone!r} has two regions")
                leaf_path[node.zone] = path
                code.append(("leaf", node.zone))
                info[path] = _NodeInfo(node, rect, 1)
                continue
            if not isinstance(node, Cut):
                raise ValueError(f"a node must be a Leaf or a Cut, got {node!r}")
            if node.axis not in ("x", "y"):
                raise ValueError(f"a cut's axis must be 'x' or 'y', got {node.axis!r}")
            at = _check_int(node.at, "a cut's position")
            lo, hi = (rect.col0, rect.col1) if node.axis == "x" else (rect.row0, rect.row1)
            if not lo < at < hi:
                raise ValueError(
                    f"the line at {node.axis}={at} of node {path!r} must lie strictly inside "
                    f"its rectangle {tuple(rect)}"
                )
            code.append((node.axis, at))
            info[path] = _NodeInfo(node, rect, 0)
            low, high = rect.halves(node.axis, at)
            # Pushed high first so that the preorder (and the zone order) is low before high.
            stack.append((_child(path, 1), node.high, high))
            stack.append((_child(path, 0), node.low, low))
        if len(leaf_path) > MAX_ZONES:
            raise ValueError(f"at most {MAX_ZONES} zones, got {len(leaf_path)}")
        for path in reversed(order):
            entry = info[path]
            if isinstance(entry.node, Cut):
                n = info[_child(path, 0)].leaves + info[_child(path, 1)].leaves
                info[path] = entry._replace(leaves=n)
        self._info = info
        self._leaf_path = leaf_path
        self._zones = tuple(leaf_path)
        self._code = (self._rows, self._cols, tuple(code))
        self._edges: dict[tuple[str, Axis, bool], list[tuple[str, Rect]]] = {}

    # ----------------------------------------------------------------- building

    @classmethod
    def from_cellmap(cls, cmap: CellMap) -> Partition:
        """The k-d tree whose leaves are the regions of ``cmap``'s zones.

        Works for every map :meth:`CellMap.split` makes and every map :meth:`to_cellmap`
        writes. Zones of the map that own no cell are left out. Where several trees fit
        (lines that line up across a node), each node takes a line across its longer side
        (x on a tie) if one fits, and of those the one leaving the low side closest to half
        its zones; for a map from :meth:`CellMap.split` that is usually the split's own tree.

        Raises ValueError if some zone's cells are not a rectangle, or the rectangles cannot
        be cut apart by a sequence of whole lines (they do not form a k-d partition).
        """
        owner = np.ascontiguousarray(cmap.owner)
        n = len(cmap.zones)
        counts = np.bincount(owner.reshape(-1).astype(np.int64), minlength=n)
        boxes = find_zone_boxes(owner, n).astype(np.int64)
        area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
        present = np.flatnonzero(counts > 0)
        bad = present[counts[present] != area[present]]
        if bad.size:
            raise ValueError(
                f"zone {cmap.zones[int(bad[0])]!r} does not own a rectangle of cells, so the map "
                "is not a k-d partition"
            )
        built: dict[str, Node] = {}
        cuts: dict[str, tuple[Axis, int]] = {}
        order: list[str] = []
        stack: list[tuple[str, Rect, npt.NDArray[np.int64]]] = [
            ("", Rect(0, cmap.rows, 0, cmap.cols), present.astype(np.int64))
        ]
        while stack:
            path, rect, members = stack.pop()
            order.append(path)
            if members.size == 1:
                built[path] = Leaf(cmap.zones[int(members[0])])
                continue
            found = _find_cut(rect, boxes[members], members.size)
            if found is None:
                raise ValueError(
                    f"the regions inside rows [{rect.row0}, {rect.row1}) columns "
                    f"[{rect.col0}, {rect.col1}) cannot be cut apart by one line, so the map is "
                    "not a k-d partition"
                )
            axis, at = found
            cuts[path] = (axis, at)
            hi_edge = boxes[members, 3] if axis == "x" else boxes[members, 1]
            low_side = hi_edge <= at
            stack.append((_child(path, 1), rect.halves(axis, at)[1], members[~low_side]))
            stack.append((_child(path, 0), rect.halves(axis, at)[0], members[low_side]))
        for path in reversed(order):
            if path in cuts:
                axis, at = cuts[path]
                built[path] = Cut(axis, at, built[_child(path, 0)], built[_child(path, 1)])
        return cls(cmap.rows, cmap.cols, built[""])

    def to_cellmap(self, previous: CellMap) -> CellMap:
        """This partition as the map that follows ``previous`` (epoch + 1, same grid).

        Zone indices stay put where they can: a zone of ``previous`` that is still here keeps
        its index; a new zone (in :attr:`zones` order) takes the lowest index a removed zone
        left free, or goes at the end; an index still free after that is taken by the zone at
        the end of the list (lowest free index first), so the list stays dense. With one
        structural change per map (as the rebalancer plans them) that means: after a split the
        new zone is appended; after a merge the removed zone's index goes to the last zone.
        """
        if (previous.rows, previous.cols) != (self._rows, self._cols):
            raise ValueError(
                f"the partition is {self._rows} x {self._cols} cells but the map is "
                f"{previous.rows} x {previous.cols}"
            )
        names = self._map_zones(previous.zones)
        return previous.with_owner(self.owner_grid(names), names)

    def _map_zones(self, previous: Sequence[str]) -> tuple[str, ...]:
        mine = set(self._zones)
        names: list[str | None] = [z if z in mine else None for z in previous]
        before = set(previous)
        for zone in self._zones:
            if zone in before:
                continue
            if None in names:
                names[names.index(None)] = zone
            else:
                names.append(zone)
        while None in names:
            last = names.pop()
            if last is not None:
                names[names.index(None)] = last
        return tuple(z for z in names if z is not None)

    def apply(self, plan: Plan, new_zones: Sequence[str] = ()) -> Partition:
        """The partition after ``plan``, which must have been made for this partition.

        ``new_zones`` names the zones that take the split-off halves, one per split in plan
        order; leave it empty to apply the plan without its splits (while the new zone is not
        ready yet). Raises ValueError for a plan made for another partition, a wrong number of
        names, or a name already in use.
        """
        if plan.basis != self:
            raise ValueError("the plan was made for a different partition")
        names = tuple(new_zones)
        if isinstance(new_zones, str) or (names and len(names) != len(plan.splits)):
            raise ValueError(
                f"give a name for each of the plan's {len(plan.splits)} new zones, or none"
            )
        taken = set(self._zones)
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"zone names must be non-empty strings, got {name!r}")
            if name in taken:
                raise ValueError(f"zone name {name!r} is already in use")
            taken.add(name)
        root = self._root
        for merge in plan.merges:
            root = _replace(root, merge.node, Leaf(merge.keep))
        lines: dict[str, int] = {}
        for move in plan.moves:
            if lines.setdefault(move.node, move.new_at) != move.new_at:
                raise ValueError(f"the plan moves line {move.node!r} to two places")
        for path, at in lines.items():
            cut = self.node(path)
            if not isinstance(cut, Cut):
                raise ValueError(f"node {path!r} is not a line")
            root = _replace(
                root,
                path,
                Cut(cut.axis, at, _node_at(root, path + "0"), _node_at(root, path + "1")),
            )
        for split, name in zip(plan.splits, names, strict=False):
            old, new = Leaf(split.zone), Leaf(name)
            pair = (new, old) if split.new_side == "low" else (old, new)
            root = _replace(root, split.node, Cut(split.axis, split.at, *pair))
        return Partition(self._rows, self._cols, root)

    # ----------------------------------------------------------------- attributes

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    @property
    def root(self) -> Node:
        return self._root

    @property
    def zones(self) -> tuple[str, ...]:
        """Zone names in tree order (low side before high side at every line)."""
        return self._zones

    @property
    def n_zones(self) -> int:
        return len(self._zones)

    def node(self, path: str) -> Node:
        """The node at ``path`` (KeyError if there is none)."""
        return self._info[path].node

    def node_rect(self, path: str) -> Rect:
        """The rectangle of the node at ``path`` (KeyError if there is none)."""
        return self._info[path].rect

    def leaves_under(self, path: str) -> int:
        """How many zones the node at ``path`` holds."""
        return self._info[path].leaves

    def path_of(self, zone: str) -> str:
        """The path of ``zone``'s leaf (KeyError if it is not here)."""
        return self._leaf_path[zone]

    def region(self, zone: str) -> Rect:
        """``zone``'s rectangle of cells (KeyError if it is not here)."""
        return self._info[self._leaf_path[zone]].rect

    def regions(self) -> dict[str, Rect]:
        """Every zone's rectangle, in :attr:`zones` order."""
        return {z: self._info[p].rect for z, p in self._leaf_path.items()}

    def lines(self) -> Iterator[tuple[str, Cut, Rect]]:
        """Every internal node, root first (preorder): (path, cut, rectangle)."""
        for path, entry in self._info.items():
            if isinstance(entry.node, Cut):
                yield path, entry.node, entry.rect

    def owner_grid(self, zones: Sequence[str] | None = None) -> I16:
        """int16[rows, cols]: each cell's zone as an index into ``zones`` (default
        :attr:`zones`), which must name every zone of the partition."""
        order = self._zones if zones is None else tuple(zones)
        index = {z: i for i, z in enumerate(order)}
        missing = [z for z in self._zones if z not in index]
        if missing:
            raise ValueError(f"zones must name every zone of the partition, missing {missing!r}")
        if len(order) > MAX_ZONES:
            raise ValueError(f"at most {MAX_ZONES} zones, got {len(order)}")
        out = np.empty((self._rows, self._cols), np.int16)
        for zone, path in self._leaf_path.items():
            r = self._info[path].rect
            out[r.row0 : r.row1, r.col0 : r.col1] = index[zone]
        return out

    def zone_loads(self, cell_load: npt.ArrayLike) -> dict[str, float]:
        """Each zone's total of ``cell_load`` (float[rows, cols]), in :attr:`zones` order."""
        sat = _summed_area(_check_load(cell_load, self._rows, self._cols))
        return {z: _rect_sum(sat, self._info[p].rect) for z, p in self._leaf_path.items()}

    def edge_leaves(self, path: str, axis: Axis, high: bool) -> list[tuple[str, Rect]]:
        """The zones under ``path`` whose regions touch its rectangle's high (or low) edge
        across ``axis``, in order along that edge."""
        key = (path, axis, high)
        cached = self._edges.get(key)
        if cached is not None:
            return cached
        out: list[tuple[str, Rect]] = []
        stack = [path]
        while stack:
            p = stack.pop()
            node = self._info[p].node
            if isinstance(node, Leaf):
                out.append((node.zone, self._info[p].rect))
            elif node.axis == axis:
                stack.append(_child(p, 1 if high else 0))
            else:
                stack.append(_child(p, 1))
                stack.append(_child(p, 0))
        self._edges[key] = out
        return out

    # ----------------------------------------------------------------- the rest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return self is other or self._code == other._code

    def __hash__(self) -> int:
        return hash(self._code)

    def __repr__(self) -> str:
        return f"Partition({self._rows}x{self._cols} cells, {len(self._zones)} zones)"


def _node_at(root: Node, path: str) -> Node:
    node = root
    for step in path:
        if not isinstance(node, Cut):
            raise ValueError(f"no node at path {path!r}")
        node = node.high if step == "1" else node.low
    return node


def _find_cut(rect: Rect, boxes: npt.NDArray[np.int64], n: int) -> tuple[Axis, int] | None:
    """A line across ``rect`` that no box (int64[m, 4]: row0, row1, col0, col1) straddles."""
    axes: tuple[Axis, Axis] = ("x", "y") if rect.width >= rect.height else ("y", "x")
    for axis in axes:
        lo, hi = (boxes[:, 2], boxes[:, 3]) if axis == "x" else (boxes[:, 0], boxes[:, 1])
        start, end = (rect.col0, rect.col1) if axis == "x" else (rect.row0, rect.row1)
        # inside[p - start]: boxes with lo < p < hi, by a difference array over the lines.
        diff = np.zeros(end - start + 2, np.int64)
        np.add.at(diff, lo - start + 1, 1)
        np.add.at(diff, hi - start, -1)
        inside = np.cumsum(diff)
        lines = np.arange(start + 1, end, dtype=np.int64)
        ok = lines[inside[1 : end - start] == 0]
        if ok.size == 0:
            continue
        low_counts = np.array([int(np.count_nonzero(hi <= p)) for p in ok], np.int64)
        mid2 = start + end
        best = min(
            range(ok.size),
            key=lambda i: (
                abs(int(low_counts[i]) - n // 2),
                abs(2 * int(ok[i]) - mid2),
                int(ok[i]),
            ),
        )
        return axis, int(ok[best])
    return None


# --------------------------------------------------------------------------------- loads


def _check_load(cell_load: npt.ArrayLike, rows: int, cols: int) -> F64:
    arr = np.asarray(cell_load)
    if arr.shape != (rows, cols):
        raise ValueError(
            f"cell load must have shape (rows, cols) = {(rows, cols)}, got {arr.shape}"
        )
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"cell load must be real numbers, got dtype {arr.dtype}")
    out = np.asarray(arr, dtype=np.float64)
    if not bool(np.isfinite(out).all()) or bool((out < 0.0).any()):
        raise ValueError("cell load must be finite and >= 0")
    return out


def _summed_area(load: F64) -> F64:
    """float64[rows + 1, cols + 1]: ``sat[r, c]`` is the load of rows < r, columns < c."""
    sat = np.zeros((load.shape[0] + 1, load.shape[1] + 1), np.float64)
    np.cumsum(np.cumsum(load, axis=0), axis=1, out=sat[1:, 1:])
    return sat


def _rect_sum(sat: F64, r: Rect) -> float:
    total = sat[r.row1, r.col1] - sat[r.row0, r.col1] - sat[r.row1, r.col0] + sat[r.row0, r.col0]
    # Differences of large prefix sums can come out a hair below zero.
    return max(float(total), 0.0)


# --------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RebalanceConfig:
    """Targets and limits of the rebalancer. Every field is validated on construction."""

    #: The zone tick interval in milliseconds (50 ms at 20 Hz); the water marks are fractions.
    tick_budget_ms: float = 50.0
    #: A zone whose tick p99 is above this fraction of the budget is hot (a split candidate).
    high_water: float = 0.5
    #: A zone whose tick p99 is below this fraction of the budget is cold (a merge candidate).
    #: Keep it under half of ``high_water`` so that two merged cold zones are not hot.
    low_water: float = 0.15
    #: A line at rest starts moving when the heavier side's load per zone exceeds the
    #: lighter's by this fraction of their mean. Tolerances compound down the tree, which is
    #: why a moving line carries on to the tighter ``stop_imbalance``.
    start_imbalance: float = 0.2
    #: A moving line stops once its sides are within this fraction of their mean.
    stop_imbalance: float = 0.05
    #: After a line moves one way it may not move back for this many rounds (plan() calls).
    reversal_hold_rounds: int = 5
    #: A line moves up to this many cell lines in one round: as many as bring its sides
    #: closest to even. 1 is BigWorld's one row at a time: smoothest, slowest to converge.
    max_line_step: int = 8
    #: At most this many lines move per round.
    max_moves_per_round: int = 16
    #: At most this many cells change zone through line moves per round. A line longer than
    #: this never moves, so keep it at least the longer side of the grid. Splits and merges
    #: are limited by ``structural_cooldown_s`` instead.
    max_cells_per_round: int = 4096
    #: A zone must stay hot this long (seconds) before it is split.
    split_after_s: float = 5.0
    #: Two sibling zones must both stay cold this long (seconds) before they merge.
    merge_after_s: float = 60.0
    #: At least this long (seconds) between structural changes (splits and merges).
    structural_cooldown_s: float = 15.0
    #: Never merge below this many zones.
    min_zones: int = 1
    #: Never split above this many zones.
    max_zones: int = 64

    def __post_init__(self) -> None:
        for name in (
            "tick_budget_ms",
            "high_water",
            "low_water",
            "start_imbalance",
            "stop_imbalance",
            "split_after_s",
            "merge_after_s",
            "structural_cooldown_s",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)) or float(value) < 0.0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        for name in ("reversal_hold_rounds", "max_moves_per_round", "max_cells_per_round"):
            if _check_int(getattr(self, name), name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if _check_int(self.max_line_step, "max_line_step") < 1:
            raise ValueError(f"max_line_step must be >= 1, got {self.max_line_step!r}")
        if self.tick_budget_ms <= 0.0:
            raise ValueError(f"tick_budget_ms must be > 0, got {self.tick_budget_ms!r}")
        if not self.low_water < self.high_water:
            raise ValueError(
                f"low_water ({self.low_water}) must be below high_water ({self.high_water})"
            )
        if self.stop_imbalance > self.start_imbalance:
            raise ValueError(
                f"stop_imbalance ({self.stop_imbalance}) must not exceed start_imbalance "
                f"({self.start_imbalance})"
            )
        lo = _check_int(self.min_zones, "min_zones")
        hi = _check_int(self.max_zones, "max_zones")
        if not 1 <= lo <= hi <= MAX_ZONES:
            raise ValueError(f"need 1 <= min_zones <= max_zones <= {MAX_ZONES}, got {lo}, {hi}")

    @property
    def high_water_ms(self) -> float:
        return self.tick_budget_ms * self.high_water

    @property
    def low_water_ms(self) -> float:
        return self.tick_budget_ms * self.low_water


# --------------------------------------------------------------------------------- plans


def _frozen_cells(cells: I32) -> I32:
    out = np.array(cells, dtype=np.int32, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class CellMove:
    """One line's step, as seen by one pair of zones: ``cells`` go from ``from_zone`` to
    ``to_zone``. A line step that runs along several zones gives one move per pair; all of
    them share ``node``, ``axis``, ``old_at`` and ``new_at``.

    ``cells``: int32, ascending flat indices; one run of one column (axis x) or one row
    (axis y) next to the line, all owned by ``from_zone`` and next to ``to_zone``'s region.
    """

    node: str
    axis: Axis
    old_at: int
    new_at: int
    cells: I32
    from_zone: str
    to_zone: str
    reason: str

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CellMove):
            return NotImplemented
        return (self.node, self.axis, self.old_at, self.new_at, self.from_zone, self.to_zone) == (
            other.node,
            other.axis,
            other.old_at,
            other.new_at,
            other.from_zone,
            other.to_zone,
        ) and bool(np.array_equal(self.cells, other.cells))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class ZoneSplit:
    """``zone``'s leaf (at ``node``) becomes a line at ``at`` across ``axis``; the
    ``new_side`` half, ``cells`` (int32, ascending), goes to a new zone the caller names when
    it applies the plan (:meth:`Partition.apply`)."""

    node: str
    zone: str
    axis: Axis
    at: int
    new_side: Side
    cells: I32
    reason: str

    @property
    def from_zone(self) -> str:
        return self.zone

    @property
    def to_zone(self) -> None:
        """The new zone has no name until the caller applies the split."""
        return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ZoneSplit):
            return NotImplemented
        return (self.node, self.zone, self.axis, self.at, self.new_side) == (
            other.node,
            other.zone,
            other.axis,
            other.at,
            other.new_side,
        ) and bool(np.array_equal(self.cells, other.cells))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class ZoneMerge:
    """The two leaves under ``node`` become one: ``remove`` hands all its ``cells`` (int32,
    ascending) to ``keep``, and its zone can be stopped once the move is done."""

    node: str
    keep: str
    remove: str
    cells: I32
    reason: str

    @property
    def from_zone(self) -> str:
        return self.remove

    @property
    def to_zone(self) -> str:
        return self.keep

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ZoneMerge):
            return NotImplemented
        return (self.node, self.keep, self.remove) == (
            other.node,
            other.keep,
            other.remove,
        ) and bool(np.array_equal(self.cells, other.cells))

    __hash__ = None  # type: ignore[assignment]


Action: TypeAlias = CellMove | ZoneSplit | ZoneMerge


@dataclass(frozen=True, eq=False)
class Plan:
    """What to change this round, for the partition ``basis``.

    The actions touch pairwise different zones, so they can be carried out in any order or
    at once. ``held`` lists the lines that wanted to move back but are held by damping.
    """

    basis: Partition
    now: float
    moves: tuple[CellMove, ...] = ()
    splits: tuple[ZoneSplit, ...] = ()
    merges: tuple[ZoneMerge, ...] = ()
    held: tuple[str, ...] = ()

    @property
    def new_zones(self) -> int:
        """How many new zones the caller must provide to apply the splits."""
        return len(self.splits)

    @property
    def actions(self) -> tuple[Action, ...]:
        return (*self.merges, *self.moves, *self.splits)

    @property
    def lines_moved(self) -> int:
        return len({m.node for m in self.moves})

    @property
    def cells_moved(self) -> int:
        """Cells that change zone through line moves (splits and merges not counted)."""
        return sum(int(m.cells.size) for m in self.moves)

    def is_empty(self) -> bool:
        return not (self.moves or self.splits or self.merges)

    def without_splits(self) -> Plan:
        return Plan(self.basis, self.now, self.moves, (), self.merges, self.held)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return (
            self.basis == other.basis
            and self.now == other.now
            and self.moves == other.moves
            and self.splits == other.splits
            and self.merges == other.merges
            and self.held == other.held
        )

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------- rebalancer


@dataclass
class _Line:
    """What the rebalancer remembers about one line between rounds."""

    at: int
    #: +1 / -1: the direction it was last seen to move, 0 never.
    last_dir: int = 0
    last_move_round: int = 0
    #: The direction it is moving toward balance, 0 while at rest.
    settling: int = 0


class _Candidate(NamedTuple):
    priority: float
    path: str
    cut: Cut
    rect: Rect
    direction: int
    steps: int
    #: Cells in one line of the node's rectangle (one step moves this many).
    line_cells: int
    zones: frozenset[str]
    reason: str


class Rebalancer:
    """Plans rebalancing rounds. Keeps the damping history of each line and the hot and
    cold timers of each zone between calls; one instance per world."""

    def __init__(self, config: RebalanceConfig | None = None) -> None:
        self.config = config if config is not None else RebalanceConfig()
        self._round = 0
        self._now: float | None = None
        self._lines: dict[tuple[str, Axis], _Line] = {}
        self._hot_since: dict[str, float] = {}
        self._cold_since: dict[str, float] = {}
        self._zones: frozenset[str] | None = None
        self._last_structural = -math.inf

    @property
    def rounds(self) -> int:
        """How many times :meth:`plan` has run."""
        return self._round

    def hot_since(self, zone: str) -> float | None:
        """Since when ``zone`` has been above the high-water mark, or None."""
        return self._hot_since.get(zone)

    def cold_since(self, zone: str) -> float | None:
        """Since when ``zone`` has been below the low-water mark, or None."""
        return self._cold_since.get(zone)

    def plan(
        self,
        partition: Partition,
        cell_load: npt.ArrayLike,
        zone_p99_ms: Mapping[str, float],
        now: float,
    ) -> Plan:
        """One round: the plan for ``partition`` under this load at time ``now``.

        cell_load: float[rows, cols], >= 0, what each cell costs its zone. zone_p99_ms: tick
        p99 per zone name; a zone missing from it counts as neither hot nor cold (its timers
        restart). now: seconds on any clock that never goes back. Raises ValueError for bad
        input. The caller applies the plan (:meth:`Partition.apply`) and passes the resulting
        partition next round; a plan it drops is simply not seen again.
        """
        cfg = self.config
        load = _check_load(cell_load, partition.rows, partition.cols)
        t = _check_now(now, self._now)
        p99 = _check_p99(zone_p99_ms)
        self._round += 1
        self._now = t
        sat = _summed_area(load)
        self._update_timers(partition, p99, t)
        self._observe(partition)

        candidates, can_shed, held = self._line_candidates(partition, sat)
        structural = self._structural(partition, sat, p99, can_shed, t)
        reserved: set[str] = set()
        splits: tuple[ZoneSplit, ...] = ()
        merges: tuple[ZoneMerge, ...] = ()
        if isinstance(structural, ZoneSplit):
            splits = (structural,)
            reserved.add(structural.zone)
        elif isinstance(structural, ZoneMerge):
            merges = (structural,)
            reserved.update((structural.keep, structural.remove))

        moves: list[CellMove] = []
        budget = cfg.max_cells_per_round
        lines = 0
        for cand in sorted(candidates, key=lambda c: (-c.priority, c.path)):
            if lines >= cfg.max_moves_per_round:
                break
            steps = min(cand.steps, budget // cand.line_cells)
            if steps < 1 or cand.zones & reserved:
                continue
            reserved |= cand.zones
            budget -= steps * cand.line_cells
            lines += 1
            moves.extend(_moves_for(partition, cand._replace(steps=steps)))
        return Plan(partition, t, tuple(moves), splits, merges, tuple(held))

    # ----------------------------------------------------------------- bookkeeping

    def _update_timers(self, partition: Partition, p99: Mapping[str, float], now: float) -> None:
        cfg = self.config
        zones = set(partition.zones)
        for table in (self._hot_since, self._cold_since):
            for zone in [z for z in table if z not in zones]:
                del table[zone]
        for zone in partition.zones:
            value = p99.get(zone)
            if value is None or value <= cfg.high_water_ms:
                self._hot_since.pop(zone, None)
            else:
                self._hot_since.setdefault(zone, now)
            if value is None or value >= cfg.low_water_ms:
                self._cold_since.pop(zone, None)
            else:
                self._cold_since.setdefault(zone, now)
        current = frozenset(partition.zones)
        if self._zones is not None and current != self._zones:
            self._last_structural = now
        self._zones = current

    def _observe(self, partition: Partition) -> None:
        """Date the line moves since last round by what the partition shows."""
        seen: dict[tuple[str, Axis], _Line] = {}
        for path, cut, _rect in partition.lines():
            key = (path, cut.axis)
            line = self._lines.get(key)
            if line is None:
                line = _Line(cut.at)
            elif cut.at != line.at:
                line.last_dir = 1 if cut.at > line.at else -1
                line.last_move_round = self._round
                line.at = cut.at
            seen[key] = line
        self._lines = seen

    # ----------------------------------------------------------------- line moves

    def _line_candidates(
        self, partition: Partition, sat: F64
    ) -> tuple[list[_Candidate], set[str], list[str]]:
        cfg = self.config
        out: list[_Candidate] = []
        can_shed: set[str] = set()
        held: list[str] = []
        for path, cut, rect in partition.lines():
            line = self._lines[(path, cut.axis)]
            low_rect, high_rect = rect.halves(cut.axis, cut.at)
            n_low = partition.leaves_under(_child(path, 0))
            n_high = partition.leaves_under(_child(path, 1))
            low_total, high_total = _rect_sum(sat, low_rect), _rect_sum(sat, high_rect)
            low_pz, high_pz = low_total / n_low, high_total / n_high
            direction = 1 if high_pz > low_pz else -1 if low_pz > high_pz else 0
            heavy, light = max(low_pz, high_pz), min(low_pz, high_pz)
            imbalance = (heavy - light) / ((heavy + light) / 2.0) if heavy > 0.0 else 0.0
            if line.settling != direction:
                line.settling = 0
            threshold = cfg.stop_imbalance if line.settling else cfg.start_imbalance
            if direction == 0 or imbalance <= threshold:
                line.settling = 0
                continue
            line.settling = direction
            if (
                line.last_dir == -direction
                and self._round - line.last_move_round < cfg.reversal_hold_rounds
            ):
                held.append(path)
                continue
            # The heavy side gives up the strip of cells next to the line.
            heavy_high = direction == 1
            givers = partition.edge_leaves(
                _child(path, 1 if heavy_high else 0), cut.axis, not heavy_high
            )
            room = min(r.extent(cut.axis) for _z, r in givers) - 1
            n_heavy, n_light = (n_high, n_low) if heavy_high else (n_low, n_high)
            h_total, l_total = (high_total, low_total) if heavy_high else (low_total, high_total)
            steps = _best_step(
                sat,
                rect,
                cut,
                heavy_high,
                min(room, cfg.max_line_step),
                h_total,
                l_total,
                n_heavy,
                n_light,
            )
            if steps == 0:
                continue
            takers = partition.edge_leaves(
                _child(path, 0 if heavy_high else 1), cut.axis, heavy_high
            )
            zones = frozenset(z for z, _r in givers) | frozenset(z for z, _r in takers)
            can_shed.update(z for z, _r in givers)
            # The load that has to cross this line to even out its sides per zone.
            priority = (heavy - light) * n_low * n_high / (n_low + n_high)
            side = "high" if heavy_high else "low"
            reason = (
                f"line {path or 'root'} ({cut.axis}={cut.at}): {side} side carries "
                f"{heavy:.4g} per zone vs {light:.4g} (imbalance {imbalance:.2f} > "
                f"{threshold:.2f}); moving it toward the {side} side"
            )
            line_cells = rect.height if cut.axis == "x" else rect.width
            out.append(
                _Candidate(priority, path, cut, rect, direction, steps, line_cells, zones, reason)
            )
        return out, can_shed, held

    # ----------------------------------------------------------------- splits and merges

    def _structural(
        self,
        partition: Partition,
        sat: F64,
        p99: Mapping[str, float],
        can_shed: set[str],
        now: float,
    ) -> ZoneSplit | ZoneMerge | None:
        cfg = self.config
        if now - self._last_structural < cfg.structural_cooldown_s:
            return None
        if partition.n_zones < cfg.max_zones:
            split = self._split(partition, sat, p99, can_shed, now)
            if split is not None:
                return split
        if partition.n_zones > cfg.min_zones:
            return self._merge(partition, sat, p99, now)
        return None

    def _split(
        self,
        partition: Partition,
        sat: F64,
        p99: Mapping[str, float],
        can_shed: set[str],
        now: float,
    ) -> ZoneSplit | None:
        cfg = self.config
        total = _rect_sum(sat, Rect(0, partition.rows, 0, partition.cols))
        mean = total / partition.n_zones
        best: tuple[tuple[float, float, str], str, float] | None = None
        for zone, since in self._hot_since.items():
            if now - since < cfg.split_after_s:
                continue
            rect = partition.region(zone)
            if rect.area < 2:
                continue
            tick = p99[zone]
            zone_load = _rect_sum(sat, rect)
            # Tick time taken as proportional to load: line moves can at best bring the zone
            # to the mean load, and only if some line can still take cells off it.
            projected = tick * mean / zone_load if zone_load > 0.0 else tick
            if zone in can_shed and projected <= cfg.high_water_ms:
                continue
            key = (-tick, -zone_load, zone)
            if best is None or key < best[0]:
                best = (key, zone, projected)
        if best is None:
            return None
        _key, zone, projected = best
        rect = partition.region(zone)
        axis: Axis = "x" if rect.width >= rect.height else "y"
        at, low_load, high_load = _median_cut(sat, rect, axis)
        new_side: Side = "low" if low_load < high_load else "high"
        low, high = rect.halves(axis, at)
        cells = (low if new_side == "low" else high).cells(partition.cols)
        since = self._hot_since[zone]
        reason = (
            f"zone {zone} tick p99 {p99[zone]:.4g} ms above {cfg.high_water_ms:.4g} ms for "
            f"{now - since:.4g} s; line moves would leave it at about {projected:.4g} ms; "
            f"splitting it at its load median {axis}={at}, the {new_side} half to a new zone"
        )
        return ZoneSplit(
            partition.path_of(zone), zone, axis, at, new_side, _frozen_cells(cells), reason
        )

    def _merge(
        self, partition: Partition, sat: F64, p99: Mapping[str, float], now: float
    ) -> ZoneMerge | None:
        cfg = self.config
        best: tuple[tuple[float, str], str, str, str] | None = None
        for path, cut, _rect in partition.lines():
            if not (isinstance(cut.low, Leaf) and isinstance(cut.high, Leaf)):
                continue
            a, b = cut.low.zone, cut.high.zone
            since_a, since_b = self._cold_since.get(a), self._cold_since.get(b)
            if since_a is None or since_b is None:
                continue
            if now - max(since_a, since_b) < cfg.merge_after_s:
                continue
            combined = p99[a] + p99[b]
            # One process will run both: tick times roughly add up.
            if combined >= cfg.high_water_ms:
                continue
            ra, rb = partition.region(a), partition.region(b)
            la, lb = _rect_sum(sat, ra), _rect_sum(sat, rb)
            # The lighter zone (fewer entities to hand over) goes; ties: fewer cells, then high.
            remove = a if (la, ra.area) < (lb, rb.area) else b
            keep = b if remove == a else a
            key = (combined, path)
            if best is None or key < best[0]:
                best = (key, path, keep, remove)
        if best is None:
            return None
        (combined, _p), path, keep, remove = best
        cells = partition.region(remove).cells(partition.cols)
        reason = (
            f"zones {keep} and {remove} both below {cfg.low_water_ms:.4g} ms tick p99 for "
            f"{cfg.merge_after_s:.4g} s or more (together {combined:.4g} ms); {remove} hands "
            f"its cells to {keep}"
        )
        return ZoneMerge(path, keep, remove, _frozen_cells(cells), reason)


# --------------------------------------------------------------------------------- helpers


def _check_now(now: object, last: float | None) -> float:
    if isinstance(now, bool) or not isinstance(now, numbers.Real):
        raise ValueError(f"now must be a number, got {now!r}")
    t = float(now)
    if not math.isfinite(t):
        raise ValueError(f"now must be finite, got {t!r}")
    if last is not None and t < last:
        raise ValueError(f"now went back from {last!r} to {t!r}")
    return t


def _check_p99(zone_p99_ms: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(zone_p99_ms, Mapping):
        raise ValueError(f"zone_p99_ms must be a mapping of zone name to ms, got {zone_p99_ms!r}")
    out: dict[str, float] = {}
    for zone, value in zone_p99_ms.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"tick p99 of zone {zone!r} must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < 0.0:
            raise ValueError(f"tick p99 of zone {zone!r} must be finite and >= 0, got {v!r}")
        out[zone] = v
    return out


def _strip(rect: Rect, axis: Axis, at: int, heavy_high: bool, steps: int) -> Rect:
    """The ``steps`` lines of cells next to the line on its heavy side: what moving the line
    ``steps`` toward that side hands over."""
    lo, hi = (at, at + steps) if heavy_high else (at - steps, at)
    if axis == "x":
        return Rect(rect.row0, rect.row1, lo, hi)
    return Rect(lo, hi, rect.col0, rect.col1)


def _best_step(
    sat: F64,
    rect: Rect,
    cut: Cut,
    heavy_high: bool,
    most: int,
    heavy_total: float,
    light_total: float,
    n_heavy: int,
    n_light: int,
) -> int:
    """How many lines (0 to ``most``) to move ``cut`` toward its heavy side.

    The step that leaves the sides' loads per zone closest, and only one that brings them
    closer than now, so a strip too heavy to hand over (it would only swap the imbalance
    round) stays. A strip without load is free to hand over; among equal outcomes the
    longest step wins, which gets to where the load is sooner.
    """
    before = heavy_total / n_heavy - light_total / n_light
    tol = 1e-9 * max(heavy_total + light_total, 1e-300)
    best, best_gap = 0, math.inf
    for steps in range(1, most + 1):
        moved = _rect_sum(sat, _strip(rect, cut.axis, cut.at, heavy_high, steps))
        gap = abs((heavy_total - moved) / n_heavy - (light_total + moved) / n_light)
        if moved > tol and gap >= before - tol:
            # The gap only widens from here: each further line hands over more load.
            break
        if gap <= best_gap + tol:
            best, best_gap = steps, min(gap, best_gap)
    return best


def _moves_for(partition: Partition, cand: _Candidate) -> list[CellMove]:
    """One :class:`CellMove` per pair of zones along the strip of ``cand``."""
    path, cut, rect = cand.path, cand.cut, cand.rect
    heavy_high = cand.direction == 1
    givers = partition.edge_leaves(_child(path, 1 if heavy_high else 0), cut.axis, not heavy_high)
    takers = partition.edge_leaves(_child(path, 0 if heavy_high else 1), cut.axis, heavy_high)

    # Position along the line: rows for a line across x, columns for a line across y.
    def span(r: Rect) -> tuple[int, int]:
        return (r.row0, r.row1) if cut.axis == "x" else (r.col0, r.col1)

    src = sorted(((span(r), z) for z, r in givers), key=lambda e: e[0])
    dst = sorted(((span(r), z) for z, r in takers), key=lambda e: e[0])
    strip = _strip(rect, cut.axis, cut.at, heavy_high, cand.steps)
    new_at = cut.at + cand.direction * cand.steps
    out: list[CellMove] = []
    i = j = 0
    pos = span(rect)[0]
    while i < len(src) and j < len(dst):
        end = min(src[i][0][1], dst[j][0][1])
        if cut.axis == "x":
            block = Rect(pos, end, strip.col0, strip.col1)
        else:
            block = Rect(strip.row0, strip.row1, pos, end)
        cells = block.cells(partition.cols)
        out.append(
            CellMove(
                path,
                cut.axis,
                cut.at,
                new_at,
                _frozen_cells(cells),
                src[i][1],
                dst[j][1],
                cand.reason,
            )
        )
        pos = end
        if src[i][0][1] == end:
            i += 1
        if dst[j][0][1] == end:
            j += 1
    return out


def _median_cut(sat: F64, rect: Rect, axis: Axis) -> tuple[int, float, float]:
    """The line across ``axis`` inside ``rect`` (extent >= 2) that best halves its load.

    Ties (and a rectangle without load) go to the line nearest the middle, then the lower.
    Returns (at, low load, high load).
    """
    if axis == "x":
        lines = np.arange(rect.col0 + 1, rect.col1)
        low = (
            sat[rect.row1, lines]
            - sat[rect.row0, lines]
            - sat[rect.row1, rect.col0]
            + sat[rect.row0, rect.col0]
        )
        mid2 = rect.col0 + rect.col1
    else:
        lines = np.arange(rect.row0 + 1, rect.row1)
        low = (
            sat[lines, rect.col1]
            - sat[lines, rect.col0]
            - sat[rect.row0, rect.col1]
            + sat[rect.row0, rect.col0]
        )
        mid2 = rect.row0 + rect.row1
    total = _rect_sum(sat, rect)
    low = np.clip(low, 0.0, total)
    gap = np.abs(2.0 * low - total)
    # Summed-area differences carry rounding; treat near-equal gaps as ties.
    tol = 1e-9 * max(total, 1.0)
    candidates = np.flatnonzero(gap <= gap.min() + tol)
    best = min(candidates, key=lambda i: (abs(2 * int(lines[i]) - mid2), int(lines[i])))
    at = int(lines[best])
    low_load = float(low[best])
    return at, low_load, total - low_load


__all__ = [
    "Action",
    "Axis",
    "CellMove",
    "Cut",
    "Leaf",
    "Node",
    "Partition",
    "Plan",
    "RebalanceConfig",
    "Rebalancer",
    "Rect",
    "Side",
    "ZoneMerge",
    "ZoneSplit",
]
