"""How a swarm player steers: pure functions of its position and the time.

Every behaviour answers ``steer(pos, now) -> (ix, iy)``, an intent of length <= 1, called
at the player's input rate with its own position in metres (from the latest snapshot
header) and the local monotonic time.

``wander``   a random heading, changed every 1-4 s, turned back inside near the edges;
``rush``     wander until the rush time, then everyone heads for one hot spot and mills
             around it (a crowd forming in one place: interest sets and one zone explode);
``commute``  walk to the nearest zone border and back and forth across it (handoffs,
             ghosts and the gateway's rerouting, all the time);
``storm``    wander; the reconnect storm itself (drops, resumes, new joins) is the player's
             job, on the schedule :func:`storm_slot` gives.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from shardworld.steering import Vec, Wander, World, centre, seek

BEHAVIORS: Final = ("wander", "rush", "commute", "storm")


@dataclass(frozen=True, slots=True)
class Border:
    """An axis-aligned piece of border between two zones: ``axis`` "x" is the vertical line
    x = ``at`` between y = ``lo`` and ``hi``; "y" the horizontal line y = ``at``."""

    axis: str
    at: float
    lo: float = -math.inf
    hi: float = math.inf

    def clamp(self, world: World) -> Border:
        """This border cut to the world's bounds."""
        lo_w, hi_w = (world[1], world[3]) if self.axis == "x" else (world[0], world[2])
        return Border(self.axis, self.at, max(self.lo, lo_w), min(self.hi, hi_w))


@dataclass
class Rush:
    """Wander until ``rush_at`` (local monotonic time), then mill within ``radius`` metres
    of ``hotspot``: a fresh random point near it each time the last one is reached."""

    world: World
    rng: random.Random
    hotspot: Vec
    radius: float
    rush_at: float
    wander: Wander = field(init=False)
    target: Vec | None = None

    def __post_init__(self) -> None:
        self.wander = Wander(self.world, self.rng)

    def steer(self, pos: Vec, now: float) -> Vec:
        if now < self.rush_at:
            return self.wander.steer(pos, now)
        if self.target is None or math.dist(pos, self.target) < 1.0:
            r = self.radius * math.sqrt(self.rng.random())
            a = self.rng.uniform(-math.pi, math.pi)
            self.target = (self.hotspot[0] + r * math.cos(a), self.hotspot[1] + r * math.sin(a))
        return seek(pos, self.target)


@dataclass
class Commute:
    """Back and forth across the border nearest to where the player first stands:
    ``distance`` metres to each side, along the border's normal. ``crossings`` counts the
    times the player changed sides (with 0.5 m of hysteresis)."""

    world: World
    rng: random.Random
    borders: Sequence[Border]
    distance: float = 30.0
    ends: tuple[Vec, Vec] | None = None
    target: int = 0
    side: int = 0
    crossings: int = 0
    _border: Border | None = None

    def _choose(self, pos: Vec) -> None:
        best: tuple[float, Border, Vec] | None = None
        cx, cy = centre(self.world)
        # Without a layout: the middle lines, the borders of a 2- or 4-zone k-d split.
        for raw in self.borders or (Border("x", cx), Border("y", cy)):
            b = raw.clamp(self.world)
            if b.hi <= b.lo:
                continue
            # The closest point on the border, kept a little away from its ends so the
            # walk crosses this border and not a corner where three zones meet.
            inset = min(self.distance, (b.hi - b.lo) / 4.0)
            along = pos[1] if b.axis == "x" else pos[0]
            along = min(max(along, b.lo + inset), b.hi - inset)
            point = (b.at, along) if b.axis == "x" else (along, b.at)
            d = math.dist(pos, point)
            if best is None or d < best[0]:
                best = (d, b, point)
        if best is None:  # no border inside the world: commute across the middle
            best = (0.0, Border("x", cx).clamp(self.world), (cx, cy))
        _, b, (px, py) = best
        self._border = b
        n = (1.0, 0.0) if b.axis == "x" else (0.0, 1.0)
        a = (px - n[0] * self.distance, py - n[1] * self.distance)
        c = (px + n[0] * self.distance, py + n[1] * self.distance)
        self.ends = (a, c)
        # Start toward the far end, so the first leg already crosses.
        self.target = 0 if math.dist(pos, a) > math.dist(pos, c) else 1

    def steer(self, pos: Vec, now: float) -> Vec:
        if self.ends is None:
            self._choose(pos)
        assert self.ends is not None and self._border is not None
        b = self._border
        off = (pos[0] if b.axis == "x" else pos[1]) - b.at
        side = 1 if off > 0.5 else -1 if off < -0.5 else 0
        if side and self.side and side != self.side:
            self.crossings += 1
        if side:
            self.side = side
        goal = self.ends[self.target]
        if math.dist(pos, goal) < 2.0:
            self.target ^= 1
            goal = self.ends[self.target]
        return seek(pos, goal)


def storm_slot(wall_time: float, every: float, offset: float) -> int:
    """Which storm a player is in at ``wall_time`` (Unix seconds): storms happen every
    ``every`` seconds on the wall clock, so players on every worker and machine drop at
    the same moments; ``offset`` (0 .. spread) staggers one player inside its storm."""
    return math.floor((wall_time - offset) / every)


def parse_borders(spec: str) -> list[Border]:
    """``"x=1000,y=1000"``: full lines (cut to the world later); ``"x=1000:0:1000"``: the
    line x = 1000 from y = 0 to 1000. Raises ``ValueError`` on anything else."""
    out: list[Border] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        axis, eq, rest = part.partition("=")
        if not eq or axis.strip() not in ("x", "y"):
            raise ValueError(f"border {part!r}: expected x=VALUE or y=VALUE[:FROM:TO]")
        nums = [float(v) for v in rest.split(":")]
        if len(nums) == 1:
            out.append(Border(axis.strip(), nums[0]))
        elif len(nums) == 3 and nums[1] < nums[2]:
            out.append(Border(axis.strip(), nums[0], nums[1], nums[2]))
        else:
            raise ValueError(f"border {part!r}: expected x=VALUE or x=VALUE:FROM:TO")
    return out


def borders_of_rects(rects: Sequence[World]) -> list[Border]:
    """The pieces of border between zone rectangles that touch (a k-d split's zones)."""
    out: list[Border] = []
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            for lo_r, hi_r in ((a, b), (b, a)):
                if math.isclose(lo_r[2], hi_r[0]):  # lo_r's right edge is hi_r's left
                    lo, hi = max(lo_r[1], hi_r[1]), min(lo_r[3], hi_r[3])
                    if hi > lo:
                        out.append(Border("x", lo_r[2], lo, hi))
                if math.isclose(lo_r[3], hi_r[1]):  # lo_r's top edge is hi_r's bottom
                    lo, hi = max(lo_r[0], hi_r[0]), min(lo_r[2], hi_r[2])
                    if hi > lo:
                        out.append(Border("y", lo_r[3], lo, hi))
    return out


def format_borders(borders: Sequence[Border]) -> str:
    """The ``--borders`` form of ``borders`` (what :func:`parse_borders` reads back)."""
    parts = []
    for b in borders:
        if math.isinf(b.lo) and math.isinf(b.hi):
            parts.append(f"{b.axis}={b.at:g}")
        else:
            parts.append(f"{b.axis}={b.at:g}:{b.lo:g}:{b.hi:g}")
    return ",".join(parts)
