"""Movement: one tick of steering, integration and collision for N entities.

Every entity steers toward a desired velocity (braking to rest, a client's movement intent, or
seeking a target point), its velocity changes by at most ``max_accel * dt`` per tick and never
exceeds ``max_speed``, and it moves by ``vel * dt`` (semi-implicit Euler: the new velocity
moves the entity). The move is then confined to the world bounds and swept through a grid of
blocked cells, so no speed and no ``dt`` carries an entity through a wall.

Arithmetic is float64 throughout (stored values are rounded to float32 at the end).

Collision model (positions are points):

* Cell ``(i, j)`` of the grid covers ``[bx0 + i*bcell, bx0 + (i+1)*bcell)`` along x (likewise
  y); a point belongs to the cell ``floor((x - bx0) / bcell)``, computed in float64 from the
  float32 coordinate. Cells outside the grid are free.
* The straight segment from the old to the new position is traversed cell by cell. At the
  first blocked cell the entity stops a small epsilon inside its current cell, the velocity
  component into that face is zeroed, and the rest of the tick's motion continues along the
  other axis (sliding along the wall), swept the same way. If the straight chord from the old
  position to the slid position would clip a blocked cell (it can, around a corner), the entity
  stays at the contact point instead: every tick's chord is clear, so clients interpolating
  linearly between snapshots never see an entity cut through a wall.
* Passing exactly through a grid vertex counts as touching all three cells beyond it, so a pair
  of diagonally touching blocked cells is a closed wall.
* The cell an entity starts the tick in is never treated as an obstacle, so an entity spawned
  inside a blocked cell can walk out of it (but never into another one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from numba.extending import register_jitable

from shardworld.kernels._jit import kernel

__all__ = [
    "MODE_IDLE",
    "MODE_PLAYER",
    "MODE_SEEK",
    "integrate_motion",
    "rasterize_rects",
    "warm_up",
]

MODE_IDLE = 0
"""``mode`` value: brake to a stop (also used for any unknown mode value)."""
MODE_PLAYER = 1
"""``mode`` value: steer toward ``intent * max_speed`` (intent magnitude clamped to 1)."""
MODE_SEEK = 2
"""``mode`` value: head for ``target`` and come to rest exactly on it."""

# Stop distance in front of a blocked face, as a fraction of a cell: large enough to survive
# float32 rounding near the origin, small enough to be invisible. Far from the origin float32
# spacing is coarser than this and the stop point is moved to the nearest float32 inside the
# cell instead.
_EPS_CELL = 1e-4
# Two boundary crossings closer than this (in units of the tick's segment) are treated as one
# pass through a vertex, so rounding can never let a segment slip between diagonal walls.
_TIE = 1e-12

F = TypeVar("F", bound=Callable[..., Any])


def _inline(fn: F) -> F:
    # Helpers compile into the kernels that call them but stay plain Python when a kernel's
    # ``py_func`` runs, so the pure-Python path is Python all the way down.
    return register_jitable(fn)


@_inline
def _f32_clamp(x: float, lo: float, hi: float) -> float:
    """The float32 value nearest ``x`` that lies within ``[lo, hi]`` (when one exists)."""
    v = np.float32(min(max(x, lo), hi))
    if np.float64(v) < lo:
        v = np.nextafter(v, np.float32(np.inf))
    elif np.float64(v) > hi:
        v = np.nextafter(v, np.float32(-np.inf))
    return np.float64(v)


@_inline
def _f32_in_cell(x: float, origin: float, cell: float, k: int) -> float:
    """The float32 value nearest ``x`` whose cell index (by the floor rule) is ``k``."""
    v = np.float32(x)
    for _ in range(64):
        kk = math.floor((np.float64(v) - origin) / cell)
        if kk == k:
            break
        v = np.nextafter(v, np.float32(-np.inf if kk > k else np.inf))
    return np.float64(v)


@_inline
def _is_blocked(blocked: npt.NDArray[np.uint8], i: int, j: int) -> bool:
    gy, gx = blocked.shape
    return 0 <= i < gx and 0 <= j < gy and bool(blocked[j, i] != 0)


@_inline
def _sweep(
    u0: float, v0: float, u1: float, v1: float, blocked: npt.NDArray[np.uint8]
) -> tuple[float, int, int, int]:
    """Traverse the segment ``(u0, v0) -> (u1, v1)`` (in cell units) through ``blocked``.

    Returns ``(t, axis, ci, cj)``: ``axis`` is -1 when the segment meets no blocked cell
    (besides the one it starts in); otherwise the segment enters a blocked cell at parameter
    ``t`` through an x face (``axis`` 0), a y face (1) or a corner where both are blocked (2),
    and ``(ci, cj)`` is the cell it is in just before that.
    """
    gy, gx = blocked.shape
    if gx == 0 or gy == 0:
        return 1.0, -1, 0, 0
    if np.floor(u0) == np.floor(u1) and np.floor(v0) == np.floor(v1):
        return 1.0, -1, 0, 0
    du = u1 - u0
    dv = v1 - v0
    # Only the part of the segment over the grid can meet a blocked cell; clipping first also
    # bounds the loop below by gx + gy steps whatever the segment's length.
    t_lo = 0.0
    t_hi = 1.0
    enter = -1
    if du != 0.0:
        ta = -u0 / du
        tb = (gx - u0) / du
        if ta > tb:
            ta, tb = tb, ta
        if ta > t_lo:
            t_lo = ta
            enter = 0
        t_hi = min(t_hi, tb)
    elif u0 < 0.0 or u0 > gx:
        return 1.0, -1, 0, 0
    if dv != 0.0:
        ta = -v0 / dv
        tb = (gy - v0) / dv
        if ta > tb:
            ta, tb = tb, ta
        if ta > t_lo:
            t_lo = ta
            enter = 1
        t_hi = min(t_hi, tb)
    elif v0 < 0.0 or v0 > gy:
        return 1.0, -1, 0, 0
    if t_lo > t_hi:
        return 1.0, -1, 0, 0

    si = 1 if du > 0.0 else (-1 if du < 0.0 else 0)
    sj = 1 if dv > 0.0 else (-1 if dv < 0.0 else 0)
    if enter == -1:
        i = math.floor(u0)
        j = math.floor(v0)
    else:
        uu = u0 + t_lo * du
        vv = v0 + t_lo * dv
        if enter == 0:
            i = 0 if si > 0 else gx - 1
            j = min(max(math.floor(vv), 0), gy - 1)
            if blocked[j, i] != 0:
                return t_lo, 0, i - si, j
        else:
            j = 0 if sj > 0 else gy - 1
            i = min(max(math.floor(uu), 0), gx - 1)
            if blocked[j, i] != 0:
                return t_lo, 1, i, j - sj

    inf = np.inf
    if si > 0:
        tmu = (i + 1 - u0) / du
    elif si < 0:
        tmu = (i - u0) / du
    else:
        tmu = inf
    if sj > 0:
        tmv = (j + 1 - v0) / dv
    elif sj < 0:
        tmv = (j - v0) / dv
    else:
        tmv = inf
    tdu = 1.0 / abs(du) if si != 0 else inf
    tdv = 1.0 / abs(dv) if sj != 0 else inf

    while True:
        if tmu < tmv - _TIE:
            if tmu > t_hi:
                return 1.0, -1, 0, 0
            if _is_blocked(blocked, i + si, j):
                return tmu, 0, i, j
            i += si
            tmu += tdu
        elif tmv < tmu - _TIE:
            if tmv > t_hi:
                return 1.0, -1, 0, 0
            if _is_blocked(blocked, i, j + sj):
                return tmv, 1, i, j
            j += sj
            tmv += tdv
        else:
            tm = min(tmu, tmv)
            if tm > t_hi:
                return 1.0, -1, 0, 0
            bx = _is_blocked(blocked, i + si, j)
            by = _is_blocked(blocked, i, j + sj)
            bd = _is_blocked(blocked, i + si, j + sj)
            if bx or by or bd:
                if bx and by:
                    return tm, 2, i, j
                if bx:
                    return tm, 0, i, j
                if by:
                    return tm, 1, i, j
                # Grazing a lone corner: keep the larger velocity component (slide past it).
                return tm, (1 if abs(du) >= abs(dv) else 0), i, j
            i += si
            j += sj
            tmu += tdu
            tmv += tdv


@_inline
def _contact(
    sx: float,
    sy: float,
    ex: float,
    ey: float,
    t: float,
    axis: int,
    ci: int,
    cj: int,
    bx0: float,
    by0: float,
    bcell: float,
) -> tuple[float, float]:
    """Where a move ``(sx, sy) -> (ex, ey)`` stops after :func:`_sweep` reported a hit.

    The point lies a small epsilon inside cell ``(ci, cj)`` on the blocked side(s) and on the
    segment otherwise, rounded to float32 values that stay in that cell.
    """
    x = sx + t * (ex - sx)
    y = sy + t * (ey - sy)
    if axis != 1:
        if ex > sx:
            x = max(bx0 + (ci + 1 - _EPS_CELL) * bcell, sx)
        else:
            x = min(bx0 + (ci + _EPS_CELL) * bcell, sx)
    if axis != 0:
        if ey > sy:
            y = max(by0 + (cj + 1 - _EPS_CELL) * bcell, sy)
        else:
            y = min(by0 + (cj + _EPS_CELL) * bcell, sy)
    return _f32_in_cell(x, bx0, bcell, ci), _f32_in_cell(y, by0, bcell, cj)


@_inline
def _stop_speed(d: float, h: float, dt: float) -> float:
    """Highest speed that can still stop exactly within distance ``d``.

    Discrete, not ``sqrt(2 a d)``: moving ``v*dt`` this tick and then braking by ``h`` per tick
    (speeds ``v-h, v-2h, ...``) must not pass the target, so following this profile never
    overshoots and the last step lands exactly on the target at a speed below ``h``.
    """
    hd = h * dt
    if not hd > 0.0:
        return d / dt
    q = d / hd
    n = float(math.floor((math.sqrt(8.0 * q + 1.0) - 1.0) * 0.5))
    while (n + 1.0) * (n + 2.0) * 0.5 <= q:
        n += 1.0
    while n > 0.0 and n * (n + 1.0) * 0.5 > q:
        n -= 1.0
    r = (q - n * (n + 1.0) * 0.5) / (n + 1.0)
    return h * (n + r)


@kernel
def integrate_motion(
    pos: npt.NDArray[np.float32],
    vel: npt.NDArray[np.float32],
    mode: npt.NDArray[np.uint8],
    intent: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    max_speed: npt.NDArray[np.float32],
    max_accel: npt.NDArray[np.float32],
    dt: float,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    blocked: npt.NDArray[np.uint8],
    bx0: float,
    by0: float,
    bcell: float,
) -> int:
    """Advance N entities by one tick of ``dt`` seconds, in place.

    Args:
        pos: ``float32[N, 2]`` positions (m), updated in place. Must be finite; rows that are
            not are left untouched.
        vel: ``float32[N, 2]`` velocities (m/s), updated in place (non-finite rows count as 0).
        mode: ``uint8[N]``: ``MODE_IDLE`` (0) brake to rest, ``MODE_PLAYER`` (1) follow
            ``intent``, ``MODE_SEEK`` (2) go to ``target``; other values act as idle.
        intent: ``float32[N, 2]`` desired direction for players, read for mode 1 only. A
            magnitude above 1 is clamped to 1 (no client exceeds ``max_speed``), below 1 asks
            for that fraction of ``max_speed``; non-finite intent means "stop".
        target: ``float32[N, 2]`` seek point, read for mode 2 only. The entity accelerates
            toward it, brakes in time and comes to rest exactly on it without overshooting
            (non-finite: stop). There is no path finding: a wall in between stops it.
        max_speed: ``float32[N]`` speed limit (m/s); the new speed never exceeds it (up to
            float32 rounding; a faster entity is slowed at once). Negative or non-finite
            means 0.
        max_accel: ``float32[N]`` (m/s^2): the velocity moves toward the desired velocity by at
            most ``max_accel * dt`` per tick. Negative or non-finite means 0.
        dt: tick length (s). Nothing happens unless it is finite and > 0.
        x0, y0, x1, y1: world bounds; every new position lies in ``[x0, x1] x [y0, y1]`` (as
            float32) and a velocity component pushing past a bound is zeroed. An entity found
            outside (spawned there) is first moved to the nearest point inside, unswept.
            Requires ``x0 <= x1`` and ``y0 <= y1``.
        blocked: ``uint8[gy, gx]`` C-contiguous grid, nonzero = wall (see the module docstring
            for the collision rules); ``(0, 0)``-shaped or all zero for no obstacles. Build it
            with :func:`rasterize_rects`.
        bx0, by0: world position of the grid's corner (cell ``(0, 0)``'s minimum).
        bcell: cell size (m), > 0 (otherwise the grid is ignored).

    Returns:
        ``int64``: how many entities were stopped by a wall or a world bound this tick (had a
        velocity component zeroed). All the other outputs are ``pos`` and ``vel``.

    All per-entity arrays must have the same N and exactly these dtypes, and the scalars must
    be Python floats: anything else compiles a new specialisation on first use, inside a tick.
    The loop is sequential and runs without the GIL. The caller publishes the new ``pos``/``vel``
    (e.g. to interest management); entities blocked for many ticks in a row are worth
    re-planning (the kernel does no path finding).
    """
    if not (dt > 0.0 and math.isfinite(dt)):
        return 0
    gy, gx = blocked.shape
    has_grid = gx > 0 and gy > 0 and bcell > 0.0 and math.isfinite(bcell)
    hits = 0
    for k in range(pos.shape[0]):
        px: float = np.float64(pos[k, 0])
        py: float = np.float64(pos[k, 1])
        if not (math.isfinite(px) and math.isfinite(py)):
            continue
        # An entity found outside the world (spawned there) is put back first: every other
        # kernel may rely on positions being inside the bounds.
        if not (x0 <= px <= x1):
            px = _f32_clamp(px, x0, x1)
        if not (y0 <= py <= y1):
            py = _f32_clamp(py, y0, y1)
        vx: float = np.float64(vel[k, 0])
        vy: float = np.float64(vel[k, 1])
        if not (math.isfinite(vx) and math.isfinite(vy)):
            vx = 0.0
            vy = 0.0
        vmax: float = np.float64(max_speed[k])
        if not (vmax > 0.0 and math.isfinite(vmax)):
            vmax = 0.0
        acc: float = np.float64(max_accel[k])
        if not (acc > 0.0 and math.isfinite(acc)):
            acc = 0.0
        h = acc * dt

        # Desired velocity.
        wx = 0.0
        wy = 0.0
        m = int(mode[k])
        if m == MODE_PLAYER:
            ix: float = np.float64(intent[k, 0])
            iy: float = np.float64(intent[k, 1])
            if math.isfinite(ix) and math.isfinite(iy):
                # Branch-free: intents of magnitude ~1 fall either side of 1 by rounding.
                s = vmax / math.sqrt(max(ix * ix + iy * iy, 1.0))
                wx = ix * s
                wy = iy * s
        elif m == MODE_SEEK:
            tx: float = np.float64(target[k, 0])
            ty: float = np.float64(target[k, 1])
            if math.isfinite(tx) and math.isfinite(ty):
                ox = tx - px
                oy = ty - py
                d = math.sqrt(ox * ox + oy * oy)
                if d > 0.0:
                    # Far from the target the braking profile cannot bind: skip computing it.
                    s = vmax
                    if not (h > 0.0 and d >= dt * (vmax * vmax / (2.0 * h) + 0.5 * vmax + h)):
                        s = min(vmax, _stop_speed(d, h, dt))
                    s /= d
                    wx = ox * s
                    wy = oy * s

        # Steer: move toward the desired velocity by at most h, landing on it exactly when it
        # is within reach (seek relies on that to stop on the target).
        ddx = wx - vx
        ddy = wy - vy
        dm2 = ddx * ddx + ddy * ddy
        if dm2 > h * h:
            f = h / math.sqrt(dm2)
            vx += ddx * f
            vy += ddy * f
        else:
            vx = wx
            vy = wy
        sp2 = vx * vx + vy * vy
        if sp2 > vmax * vmax:
            f = vmax / math.sqrt(sp2)
            vx *= f
            vy *= f

        # Integrate and confine to the world bounds.
        hit = False
        ex = px + vx * dt
        ey = py + vy * dt
        if ex < x0:
            if vx < 0.0:
                vx = 0.0
                hit = True
        elif ex > x1 and vx > 0.0:
            vx = 0.0
            hit = True
        if ey < y0:
            if vy < 0.0:
                vy = 0.0
                hit = True
        elif ey > y1 and vy > 0.0:
            vy = 0.0
            hit = True
        ex = _f32_clamp(ex, x0, x1)
        ey = _f32_clamp(ey, y0, y1)

        # Sweep through the blocked cells.
        if has_grid and (ex != px or ey != py):
            u0 = (px - bx0) / bcell
            v0 = (py - by0) / bcell
            u1 = (ex - bx0) / bcell
            v1 = (ey - by0) / bcell
            # Most moving entities stay inside their cell in a tick; only the rest pay for a
            # sweep.
            if np.floor(u0) != np.floor(u1) or np.floor(v0) != np.floor(v1):
                t, axis, ci, cj = _sweep(u0, v0, u1, v1, blocked)
            else:
                t, axis, ci, cj = 1.0, -1, 0, 0
            if axis >= 0:
                hit = True
                cx, cy = _contact(px, py, ex, ey, t, axis, ci, cj, bx0, by0, bcell)
                fx = cx
                fy = cy
                if axis == 0:
                    vx = 0.0
                    if ey != cy:
                        uc = (cx - bx0) / bcell
                        t2, a2, ci2, cj2 = _sweep(
                            uc, (cy - by0) / bcell, uc, (ey - by0) / bcell, blocked
                        )
                        if a2 >= 0:
                            fx, fy = _contact(cx, cy, cx, ey, t2, a2, ci2, cj2, bx0, by0, bcell)
                            vy = 0.0
                        else:
                            fy = ey
                elif axis == 1:
                    vy = 0.0
                    if ex != cx:
                        vc = (cy - by0) / bcell
                        t2, a2, ci2, cj2 = _sweep(
                            (cx - bx0) / bcell, vc, (ex - bx0) / bcell, vc, blocked
                        )
                        if a2 >= 0:
                            fx, fy = _contact(cx, cy, ex, cy, t2, a2, ci2, cj2, bx0, by0, bcell)
                            vx = 0.0
                        else:
                            fx = ex
                else:
                    vx = 0.0
                    vy = 0.0
                # The chord actually travelled (as clients will draw it) must be clear too.
                if (fx != cx or fy != cy) and _sweep(
                    u0, v0, (fx - bx0) / bcell, (fy - by0) / bcell, blocked
                )[1] >= 0:
                    fx = cx
                    fy = cy
                if (fx == cx and fy == cy) and _sweep(
                    u0, v0, (cx - bx0) / bcell, (cy - by0) / bcell, blocked
                )[1] >= 0:
                    fx = px
                    fy = py
                    vx = 0.0
                    vy = 0.0
                ex = fx
                ey = fy

        pos[k, 0] = ex
        pos[k, 1] = ey
        vel[k, 0] = vx
        vel[k, 1] = vy
        if hit:
            hits += 1
    return hits


@kernel
def rasterize_rects(
    rects: npt.NDArray[np.float64],
    bx0: float,
    by0: float,
    bcell: float,
    gx: int,
    gy: int,
) -> npt.NDArray[np.uint8]:
    """Rasterise axis-aligned wall rectangles into a blocked-cell grid.

    Args:
        rects: ``float64[M, 4]`` rows ``(xa, ya, xb, yb)``: opposite corners in world metres
            (either order). Rows with a non-finite value are ignored.
        bx0, by0: world position of the grid's corner.
        bcell: cell size (m), > 0.
        gx, gy: grid size in cells (>= 0).

    Returns:
        ``uint8[gy, gx]``: 1 where the cell's open interior meets a rectangle, else 0 (a
        rectangle of zero width lying on a grid line blocks nothing). Pass it to
        :func:`integrate_motion` as ``blocked`` with the same ``bx0, by0, bcell``.
    """
    out = np.zeros((max(gy, 0), max(gx, 0)), np.uint8)
    if gx <= 0 or gy <= 0 or not bcell > 0.0:
        return out
    for r in range(rects.shape[0]):
        xa = rects[r, 0]
        ya = rects[r, 1]
        xb = rects[r, 2]
        yb = rects[r, 3]
        if not (
            math.isfinite(xa) and math.isfinite(ya) and math.isfinite(xb) and math.isfinite(yb)
        ):
            continue
        # Cell i's interior (i, i+1) meets [lo, hi] iff floor(lo) <= i < ceil(hi); clamp in
        # float first so far-away rectangles cannot overflow the integer conversion.
        ilo = int(max(np.floor((min(xa, xb) - bx0) / bcell), 0.0))
        ihi = int(min(np.ceil((max(xa, xb) - bx0) / bcell), float(gx)))
        jlo = int(max(np.floor((min(ya, yb) - by0) / bcell), 0.0))
        jhi = int(min(np.ceil((max(ya, yb) - by0) / bcell), float(gy)))
        for j in range(jlo, jhi):
            for i in range(ilo, ihi):
                out[j, i] = 1
    return out


def warm_up() -> None:
    """Compile or load from the disk cache every kernel in this module."""
    grid = rasterize_rects(np.array([[1.0, 0.0, 2.0, 2.0]], np.float64), 0.0, 0.0, 1.0, 2, 2)
    pos = np.array([[0.5, 0.5], [0.5, 1.5]], np.float32)
    vel = np.zeros((2, 2), np.float32)
    mode = np.array([MODE_PLAYER, MODE_SEEK], np.uint8)
    intent = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    target = np.array([[0.0, 0.0], [0.5, 0.5]], np.float32)
    speed = np.ones(2, np.float32)
    accel = np.ones(2, np.float32)
    integrate_motion(
        pos, vel, mode, intent, target, speed, accel, 0.1, 0.0, 0.0, 2.0, 2.0, grid, 0.0, 0.0, 1.0
    )
