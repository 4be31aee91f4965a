"""Tests for shardworld.kernels.motion against plain per-entity references and properties."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.kernels._jit import py_func
from shardworld.kernels.motion import (
    MODE_IDLE,
    MODE_PLAYER,
    MODE_SEEK,
    integrate_motion,
    rasterize_rects,
    warm_up,
)

F32 = npt.NDArray[np.float32]
NO_GRID = np.zeros((0, 0), np.uint8)
BIG = 1e6


@dataclass
class World:
    """Per-entity arrays plus the tick's scalar arguments, in the kernel's dtypes."""

    pos: F32
    vel: F32
    mode: npt.NDArray[np.uint8]
    intent: F32
    target: F32
    max_speed: F32
    max_accel: F32
    dt: float = 0.05
    bounds: tuple[float, float, float, float] = (-BIG, -BIG, BIG, BIG)
    blocked: npt.NDArray[np.uint8] = field(default_factory=lambda: NO_GRID)
    origin: tuple[float, float] = (0.0, 0.0)
    cell: float = 1.0

    def step(self, fn: Any = integrate_motion) -> int:
        x0, y0, x1, y1 = self.bounds
        return int(
            fn(
                self.pos,
                self.vel,
                self.mode,
                self.intent,
                self.target,
                self.max_speed,
                self.max_accel,
                self.dt,
                x0,
                y0,
                x1,
                y1,
                self.blocked,
                self.origin[0],
                self.origin[1],
                self.cell,
            )
        )

    def copy(self) -> World:
        return World(
            self.pos.copy(),
            self.vel.copy(),
            self.mode.copy(),
            self.intent.copy(),
            self.target.copy(),
            self.max_speed.copy(),
            self.max_accel.copy(),
            self.dt,
            self.bounds,
            self.blocked.copy(),
            self.origin,
            self.cell,
        )


def make_world(
    n: int,
    *,
    pos: Any = None,
    vel: Any = None,
    mode: int | Any = MODE_PLAYER,
    intent: Any = None,
    target: Any = None,
    max_speed: float | Any = 5.0,
    max_accel: float | Any = 20.0,
    **kw: Any,
) -> World:
    def arr2(a: Any) -> F32:
        out = np.zeros((n, 2), np.float32)
        if a is not None:
            out[:] = np.asarray(a, np.float64)
        return out

    return World(
        arr2(pos),
        arr2(vel),
        np.broadcast_to(np.asarray(mode, np.uint8), (n,)).copy(),
        arr2(intent),
        arr2(target),
        np.broadcast_to(np.asarray(max_speed, np.float32), (n,)).copy(),
        np.broadcast_to(np.asarray(max_accel, np.float32), (n,)).copy(),
        **kw,
    )


def cells_of(
    pts: npt.NDArray[np.float64], origin: tuple[float, float], cell: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    i = np.floor((pts[..., 0] - origin[0]) / cell).astype(np.int64)
    j = np.floor((pts[..., 1] - origin[1]) / cell).astype(np.int64)
    return i, j


def blocked_at(
    blocked: npt.NDArray[np.uint8], i: npt.NDArray[np.int64], j: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    gy, gx = blocked.shape
    inside = (i >= 0) & (i < gx) & (j >= 0) & (j < gy)
    out = np.zeros(i.shape, bool)
    out[inside] = blocked[j[inside], i[inside]] != 0
    return out


# --------------------------------------------------------------------------- references


def reference_free_step(w: World) -> tuple[F32, F32, int]:
    """Idle/player steering, integration and bounds, one entity at a time (no grid)."""
    pos = w.pos.astype(np.float64)
    vel = w.vel.astype(np.float64)
    x0, y0, x1, y1 = w.bounds
    hits = 0
    for k in range(len(pos)):
        vmax = float(w.max_speed[k])
        h = float(w.max_accel[k]) * w.dt
        want = np.zeros(2)
        if w.mode[k] == MODE_PLAYER:
            it = w.intent[k].astype(np.float64)
            norm = float(np.hypot(*it))
            want = it * vmax / max(norm, 1.0)
        change = want - vel[k]
        size = float(np.hypot(*change))
        if size > h:
            change *= h / size
        v = vel[k] + change
        speed = float(np.hypot(*v))
        if speed > vmax:
            v *= vmax / speed
        # Spawned outside the world: put back inside first.
        start = np.clip(pos[k], [x0, y0], [x1, y1])
        p = start + v * w.dt
        hit = False
        for axis, lo, hi in ((0, x0, x1), (1, y0, y1)):
            if p[axis] < lo:
                p[axis] = lo
                if v[axis] < 0:
                    v[axis] = 0.0
                    hit = True
            elif p[axis] > hi:
                p[axis] = hi
                if v[axis] > 0:
                    v[axis] = 0.0
                    hit = True
        hits += hit
        pos[k] = p
        vel[k] = v
    return pos.astype(np.float32), vel.astype(np.float32), hits


def segment_hits_blocked_sampled(
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    blocked: npt.NDArray[np.uint8],
    origin: tuple[float, float],
    cell: float,
    samples: int = 1025,
) -> npt.NDArray[np.bool_]:
    """Per segment a[k] -> b[k]: does any of `samples` evenly spaced points lie in a wall?"""
    t = np.linspace(0.0, 1.0, samples)[None, :, None]
    pts = a[:, None, :] + t * (b - a)[:, None, :]
    i, j = cells_of(pts, origin, cell)
    return np.asarray(blocked_at(blocked, i, j).any(axis=1))


def segment_hits_blocked_exact(
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    blocked: npt.NDArray[np.uint8],
    origin: tuple[float, float],
    cell: float,
) -> npt.NDArray[np.bool_]:
    """Per segment: does it meet the open interior of any wall cell (shrunk by 1e-9 cell)?"""
    js, iis = np.nonzero(blocked)
    margin = 1e-9 * cell
    # Slab test, segments along axis 0 and wall cells along axis 1.
    lo = np.stack([origin[0] + iis * cell, origin[1] + js * cell], axis=-1)[None] + margin
    hi = lo + cell - 2 * margin
    a3 = a[:, None, :]
    d = (b - a)[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (lo - a3) / d
        tb = (hi - a3) / d
    flat = d == 0.0
    within = (lo < a3) & (a3 < hi)
    enter = np.where(flat, np.where(within, -np.inf, np.inf), np.minimum(ta, tb))
    leave = np.where(flat, np.where(within, np.inf, -np.inf), np.maximum(ta, tb))
    t0 = np.maximum(enter.max(axis=-1), 0.0)
    t1 = np.minimum(leave.min(axis=-1), 1.0)
    return np.asarray((t0 < t1).any(axis=1))


# --------------------------------------------------------------------------- steering


def random_free_world(rng: np.random.Generator, n: int, dt: float) -> World:
    w = make_world(
        n,
        pos=rng.uniform(-50, 50, (n, 2)),
        vel=rng.normal(0, 4, (n, 2)),
        mode=rng.choice([MODE_IDLE, MODE_PLAYER], n),
        intent=rng.normal(0, 1, (n, 2)) * rng.choice([0.2, 1.0, 10.0], (n, 1)),
        max_speed=rng.uniform(0.5, 8.0, n),
        max_accel=rng.uniform(0.0, 60.0, n),
        dt=dt,
        bounds=(-40.0, -45.0, 45.0, 40.0),
    )
    return w


@pytest.mark.parametrize("dt", [1 / 60, 0.05, 0.5])
def test_players_and_idle_match_reference(dt: float) -> None:
    rng = np.random.default_rng(1)
    w = random_free_world(rng, 400, dt)
    for _ in range(5):
        want_pos, want_vel, want_hits = reference_free_step(w)
        hits = w.step()
        np.testing.assert_allclose(w.vel, want_vel, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(w.pos, want_pos, rtol=1e-6, atol=1e-4)
        assert hits == want_hits


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dt=st.sampled_from([1 / 60, 0.05, 0.2, 1.0]),
    vscale=st.sampled_from([0.5, 2.0, 20.0]),
)
def test_acceleration_and_speed_limits(seed: int, dt: float, vscale: float) -> None:
    rng = np.random.default_rng(seed)
    n = 64
    w = random_free_world(rng, n, dt)
    w.bounds = (-BIG, -BIG, BIG, BIG)  # a bound may cancel velocity outright
    w.vel[:] = rng.normal(0, vscale, (n, 2))
    w.mode[:] = rng.choice([MODE_IDLE, MODE_PLAYER, MODE_SEEK], n)
    w.target[:] = rng.uniform(-60, 60, (n, 2))
    for _ in range(4):
        before = w.vel.astype(np.float64)
        w.step()
        after = w.vel.astype(np.float64)
        vmax = w.max_speed.astype(np.float64)
        h = w.max_accel.astype(np.float64) * dt
        speed = np.hypot(after[:, 0], after[:, 1])
        assert np.all(speed <= vmax * (1 + 1e-6) + 1e-7)
        # An entity already within its limit changes velocity by at most h; one above it
        # may be cut to max_speed at once (and is still steered by at most h first).
        change = np.hypot(*(after - before).T)
        was_ok = np.hypot(*before.T) <= vmax
        bound = h * (1 + 1e-5) + 1e-5
        assert np.all(change[was_ok] <= bound[was_ok])


def test_hostile_intent_is_clamped_to_max_speed() -> None:
    n = 64
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    intent = 10.0 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    w = make_world(n, intent=intent, max_speed=3.0, max_accel=50.0, dt=0.05)
    prev = w.pos.astype(np.float64)
    for _ in range(100):
        w.step()
        cur = w.pos.astype(np.float64)
        step_len = np.hypot(*(cur - prev).T)
        assert np.all(step_len <= 3.0 * 0.05 * (1 + 1e-5))
        assert np.all(np.hypot(*w.vel.T.astype(np.float64)) <= 3.0 * (1 + 1e-6))
        prev = cur
    np.testing.assert_allclose(np.hypot(*w.vel.T), 3.0, rtol=1e-6)


def test_half_intent_gives_half_speed() -> None:
    w = make_world(3, intent=[[0.5, 0.0], [0.0, -0.3], [0.3, 0.4]], max_speed=4.0)
    for _ in range(50):
        w.step()
    np.testing.assert_allclose(np.hypot(*w.vel.T), [2.0, 1.2, 2.0], rtol=1e-6)


def test_non_finite_intent_means_stop() -> None:
    intent = [[np.nan, 1.0], [np.inf, 0.0], [-np.inf, np.inf], [1e38, 1e38]]
    w = make_world(4, vel=[[2.0, 0.0]] * 4, intent=intent, max_speed=5.0, max_accel=10.0)
    for _ in range(20):
        w.step()
    assert np.all(np.isfinite(w.pos)) and np.all(np.isfinite(w.vel))
    np.testing.assert_array_equal(w.vel[:3], 0.0)
    np.testing.assert_allclose(np.hypot(*w.vel[3]), 5.0, rtol=1e-6)


def test_idle_brakes_to_a_stop_without_reversing() -> None:
    rng = np.random.default_rng(7)
    n = 50
    v0 = rng.normal(0, 3, (n, 2))
    w = make_world(n, vel=v0, mode=MODE_IDLE, max_speed=100.0, max_accel=rng.uniform(1, 10, n))
    h = w.max_accel.astype(np.float64) * w.dt
    speed = np.hypot(*w.vel.T.astype(np.float64))
    v0 = w.vel.astype(np.float64)
    for _ in range(200):
        w.step()
        v = w.vel.astype(np.float64)
        new_speed = np.hypot(*v.T)
        np.testing.assert_allclose(new_speed, np.maximum(speed - h, 0.0), rtol=1e-5, atol=1e-5)
        assert np.all(np.einsum("ij,ij->i", v, v0) >= 0.0)
        speed = new_speed
    np.testing.assert_array_equal(w.vel, 0.0)
    rest = w.pos.copy()
    w.step()
    np.testing.assert_array_equal(w.pos, rest)


def test_unknown_mode_acts_idle() -> None:
    w = make_world(2, vel=[[1.0, 0.0]] * 2, mode=[7, 255], intent=[[1.0, 0.0]] * 2)
    for _ in range(10):
        w.step()
    np.testing.assert_array_equal(w.vel, 0.0)


def test_bad_limits_mean_zero() -> None:
    w = make_world(3, vel=[[1.0, 0.0]] * 3, intent=[[1.0, 0.0]] * 3, max_speed=[np.nan, -1.0, 2.0])
    w.max_accel[2] = np.nan
    w.step()
    np.testing.assert_array_equal(w.vel[:2], 0.0)
    # No acceleration: velocity is kept (it is within the limit).
    np.testing.assert_array_equal(w.vel[2], [1.0, 0.0])


# --------------------------------------------------------------------------- seeking


def ideal_arrival_time(d: float, vmax: float, a: float) -> float:
    if d >= vmax * vmax / a:
        return d / vmax + vmax / a
    return 2.0 * math.sqrt(d / a)


@pytest.mark.parametrize("dt", [1 / 30, 0.05, 0.25])
def test_seek_from_rest_arrives_without_overshoot(dt: float) -> None:
    rng = np.random.default_rng(3)
    n = 60
    start = rng.uniform(-100, 100, (n, 2))
    dist = np.concatenate([[0.0, 1e-4, 0.01], rng.uniform(0, 120, n - 3)])
    ang = rng.uniform(0, 2 * np.pi, n)
    target = start + dist[:, None] * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    vmax = rng.uniform(1, 10, n)
    acc = rng.uniform(1, 50, n)
    w = make_world(n, pos=start, mode=MODE_SEEK, target=target, max_speed=vmax, max_accel=acc)
    w.dt = dt
    p0 = w.pos.astype(np.float64)
    tg = w.target.astype(np.float64)
    d0 = np.hypot(*(tg - p0).T)
    unit = np.where(d0[:, None] > 0, (tg - p0) / np.maximum(d0, 1e-30)[:, None], 0.0)
    arrived_at = np.full(n, -1)
    prev_d = d0
    ideal = np.array([ideal_arrival_time(*x) for x in zip(d0, vmax, acc, strict=True)])
    ticks = int(ideal.max() / dt) + 50
    for tick in range(ticks):
        w.step()
        p = w.pos.astype(np.float64)
        d = np.hypot(*(tg - p).T)
        assert np.all(d <= prev_d + 1e-5), "distance to the target grew"
        along = np.einsum("ij,ij->i", p - p0, unit)
        assert np.all(along <= d0 + 1e-4), "passed the target"
        assert np.all(np.hypot(*w.vel.T) <= w.max_speed * (1 + 1e-6))
        newly = (arrived_at < 0) & (d <= 1e-4)
        arrived_at[newly] = tick + 1
        prev_d = d
    assert np.all(arrived_at >= 0)
    assert np.all(arrived_at * dt <= ideal + 4 * dt + 1e-9), "crept toward the target"
    # At rest on the target, and staying there.
    assert np.all(np.hypot(*w.vel.T) <= 1e-3)
    rest = w.pos.copy()
    for _ in range(50):
        w.step()
    np.testing.assert_allclose(w.pos, rest, atol=1e-5)
    np.testing.assert_allclose(w.pos, w.target, atol=1e-4)


def test_seek_with_sideways_start_velocity_settles() -> None:
    rng = np.random.default_rng(11)
    n = 80
    w = make_world(
        n,
        pos=rng.uniform(-30, 30, (n, 2)),
        vel=rng.normal(0, 6, (n, 2)),
        mode=MODE_SEEK,
        target=rng.uniform(-30, 30, (n, 2)),
        max_speed=rng.uniform(2, 8, n),
        max_accel=rng.uniform(2, 30, n),
    )
    w.vel[:] = np.clip(w.vel, -2.0, 2.0)
    for _ in range(1500):
        w.step()
    np.testing.assert_allclose(w.pos, w.target, atol=1e-4)
    assert np.all(np.hypot(*w.vel.T) <= 1e-3)
    track = []
    for _ in range(100):
        w.step()
        track.append(w.pos.copy())
    spread = np.ptp(np.stack(track), axis=0)
    assert np.all(spread <= 1e-5), "oscillates around the target"


def test_seek_moving_target_is_followed() -> None:
    w = make_world(1, mode=MODE_SEEK, max_speed=5.0, max_accel=20.0)
    for k in range(400):
        w.target[0] = (0.01 * k, 10.0)
        w.step()
    np.testing.assert_allclose(w.pos[0], w.target[0], atol=0.05)


# --------------------------------------------------------------------------- world bounds


def test_entities_exactly_on_the_bounds() -> None:
    b = (-10.0, -5.0, 10.0, 5.0)
    pos = [[-10, 0], [10, 0], [0, -5], [0, 5], [-10, -5], [10, 5], [-10, 0], [10, 5]]
    # Pushing outward (plus a tangential part), then moving inward from the bound.
    vel = [[-3, 1], [3, 1], [1, -3], [1, 3], [-3, -3], [3, 3], [3, 1], [-3, -3]]
    # Intent = vel / max_speed keeps the velocity as it is, so only the bounds act.
    w = make_world(8, pos=pos, vel=vel, intent=np.array(vel) / 5.0, max_speed=5.0, bounds=b)
    hits = w.step()
    p = w.pos.astype(np.float64)
    v = w.vel.astype(np.float64)
    assert np.all((p[:, 0] >= -10) & (p[:, 0] <= 10) & (p[:, 1] >= -5) & (p[:, 1] <= 5))
    pushed_out = [[-10, 0.05], [10, 0.05], [0.05, -5], [0.05, 5], [-10, -5], [10, 5]]
    want = np.array([*pushed_out, [-9.85, 0.05], [9.85, 4.85]])
    np.testing.assert_allclose(p, want, rtol=1e-6)
    on_bound = np.isin(np.abs(want), [5.0, 10.0])
    np.testing.assert_array_equal(p[on_bound], want[on_bound])
    np.testing.assert_array_equal(v[:6], [[0, 1], [0, 1], [1, 0], [1, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(v[6:], vel[6:])
    assert hits == 6


def test_inexact_bounds_are_never_exceeded() -> None:
    rng = np.random.default_rng(5)
    n = 300
    b = (0.1, -0.3, 0.7, 0.2)  # not float32-representable
    w = make_world(
        n,
        pos=rng.uniform([0.1, -0.3], [0.7, 0.2], (n, 2)),
        intent=rng.normal(0, 1, (n, 2)),
        max_speed=rng.uniform(0.5, 5, n),
        max_accel=100.0,
        bounds=b,
        dt=0.1,
    )
    for _ in range(20):
        w.step()
        p = w.pos.astype(np.float64)
        assert np.all((p >= b[:2]) & (p <= b[2:]))
        w.intent[:] = rng.normal(0, 1, (n, 2))


def test_spawned_outside_bounds_is_brought_inside() -> None:
    g = np.zeros((12, 12), np.uint8)
    g[:, 10] = 1  # a wall between (50, -50) and the world: the bounds still win
    w = make_world(
        3,
        pos=[[50.0, -50.0], [-50.0, 3.0], [50.0, 5.0]],
        vel=[[0.0, 0.0], [0.0, 0.0], [-5.0, 1.0]],
        mode=MODE_IDLE,
        bounds=(0.0, 0.0, 10.0, 10.0),
        blocked=g,
        dt=0.1,
    )
    w.step()
    np.testing.assert_array_equal(w.pos[:2], [[10.0, 0.0], [0.0, 3.0]])
    assert 9.0 < w.pos[2, 0] < 10.0 and 5.0 < w.pos[2, 1] < 5.2


# --------------------------------------------------------------------------- walls


def wall_world(
    n: int, blocked: npt.NDArray[np.uint8], **kw: Any
) -> World:  # a World with a grid at the origin, 1 m cells
    kw.setdefault("bounds", (-5.0, -5.0, 30.0, 30.0))
    return make_world(n, blocked=blocked.astype(np.uint8), **kw)


def assert_tick_is_clear(w: World, before: F32) -> None:
    a = before.astype(np.float64)
    b = w.pos.astype(np.float64)
    i, j = cells_of(b, w.origin, w.cell)
    assert not blocked_at(w.blocked, i, j).any(), "an entity ended inside a wall"
    assert not segment_hits_blocked_sampled(a, b, w.blocked, w.origin, w.cell).any()
    assert not segment_hits_blocked_exact(a, b, w.blocked, w.origin, w.cell).any()


def test_stops_at_wall_edge_and_slides_in_the_same_tick() -> None:
    g = np.zeros((20, 20), np.uint8)
    g[:, 10] = 1  # the column x in [10, 11)
    w = wall_world(1, g, pos=[[5.5, 2.5]], vel=[[20.0, 5.0]], max_speed=30.0, max_accel=0.0)
    w.dt = 1.0
    before = w.pos.copy()
    hits = w.step()
    assert hits == 1
    assert 10.0 - 1e-3 < w.pos[0, 0] < 10.0
    # Hit at t = 4.5 / 20 of the tick, then the rest of the y motion slides along the wall.
    assert w.pos[0, 1] == pytest.approx(7.5, abs=1e-6)
    np.testing.assert_array_equal(w.vel[0], [0.0, 5.0])
    assert_tick_is_clear(w, before)


@pytest.mark.parametrize("transpose", [False, True])
def test_slides_along_a_wall_over_many_ticks(transpose: bool) -> None:
    g = np.zeros((30, 30), np.uint8)
    g[:, 10] = 1
    pos, intent = [5.5, 2.5], [1.0, 1.0]
    if transpose:
        g = np.ascontiguousarray(g.T)
        pos, intent = pos[::-1], intent[::-1]
    a, b = (1, 0) if transpose else (0, 1)  # a: the axis into the wall, b: along it
    w = wall_world(1, g, pos=[pos], intent=[intent], max_speed=4.0, max_accel=100.0)
    w.dt = 0.1
    touched = False
    along = []
    for _ in range(50):
        before = w.pos.copy()
        hit = w.step()
        assert_tick_is_clear(w, before)
        assert w.pos[0, a] < 10.0
        if hit:
            touched = True
            assert w.vel[0, a] == 0.0
        if touched:
            assert w.pos[0, a] > 10.0 - 1e-3
            along.append(float(w.pos[0, b]) - float(before[0, b]))
    assert touched
    # Pressing diagonally into the wall keeps the full along-wall share of the speed.
    np.testing.assert_allclose(along[-5:], 4.0 / math.sqrt(2) * 0.1, rtol=1e-4)


def test_slide_that_would_cut_a_corner_stops_at_contact() -> None:
    g = np.zeros((20, 20), np.uint8)
    g[:, 10] = 1
    g[12, 8] = 1  # inside the triangle start / contact / slid position
    w = wall_world(1, g, pos=[[2.5, 0.3]], vel=[[15.0, 15.0]], max_speed=30.0, max_accel=0.0)
    w.dt = 1.0
    before = w.pos.copy()
    assert w.step() == 1
    assert_tick_is_clear(w, before)
    assert 10.0 - 1e-3 < w.pos[0, 0] < 10.0
    assert w.pos[0, 1] == pytest.approx(7.8, abs=1e-5)
    np.testing.assert_array_equal(w.vel[0], [0.0, 15.0])


@pytest.mark.parametrize("vel", [(3.0, 3.0), (3.0, 3.0001), (3.0001, 3.0), (-3.0, -3.0)])
def test_diagonal_walls_are_closed(vel: tuple[float, float]) -> None:
    g = np.zeros((4, 4), np.uint8)  # indexed [j, i]
    if vel[0] > 0:
        g[0, 1] = g[1, 0] = 1  # cells (1, 0) and (0, 1): the way from (0, 0) to (1, 1)
        start = [0.5, 0.5]
    else:
        g[2, 1] = g[1, 2] = 1  # cells (1, 2) and (2, 1): the way from (2, 2) to (1, 1)
        start = [2.5, 2.5]
    w = wall_world(1, g, pos=[start], vel=[vel], max_speed=10.0, max_accel=0.0, dt=1.0)
    for _ in range(3):
        before = w.pos.copy()
        w.step()
        assert_tick_is_clear(w, before)
    i, j = cells_of(w.pos.astype(np.float64), w.origin, w.cell)
    assert (int(i[0]), int(j[0])) == ((0, 0) if vel[0] > 0 else (2, 2))


def test_grazing_a_lone_corner_exactly() -> None:
    g = np.zeros((10, 10), np.uint8)
    g[5, 5] = 1
    w = wall_world(1, g, pos=[[4.5, 4.5]], vel=[[2.0, 2.0]], max_speed=10.0, max_accel=0.0)
    w.dt = 1.0
    for _ in range(3):
        before = w.pos.copy()
        w.step()
        assert_tick_is_clear(w, before)
    assert np.all(np.isfinite(w.pos))


def test_spawned_inside_a_wall_may_leave_but_not_enter_another() -> None:
    g = np.ones((3, 3), np.uint8)
    g[1, 2] = 0  # the only free cell: (2, 1)
    w = wall_world(
        2, g, pos=[[1.5, 1.5], [1.5, 1.5]], intent=[[1.0, 0.0], [0.0, 1.0]], max_accel=1000.0
    )
    w.dt = 0.2  # 1 m per tick at full speed
    assert w.step() == 1
    i, j = cells_of(w.pos.astype(np.float64), w.origin, w.cell)
    np.testing.assert_array_equal(w.pos[0], [2.5, 1.5])
    assert (int(i[1]), int(j[1])) == (1, 1)
    assert 2.0 - 1e-3 < w.pos[1, 1] < 2.0
    assert w.vel[1, 1] == 0.0


def test_cells_outside_the_grid_are_free_and_walls_stop_entries() -> None:
    g = np.ones((3, 3), np.uint8)  # covers [10, 16) x [10, 16) with 2 m cells
    kw: dict[str, Any] = {"origin": (10.0, 10.0), "bounds": (-50.0, -50.0, 50.0, 50.0)}
    w = make_world(
        4,
        pos=[[5.0, 5.0], [5.0, 11.0], [20.0, 12.0], [12.0, 30.0]],
        vel=[[10.0, 0.0], [10.0, 0.0], [-10.0, 0.0], [0.0, -30.0]],
        max_speed=40.0,
        max_accel=0.0,
        blocked=g,
        cell=2.0,
        dt=1.0,
        **kw,
    )
    before = w.pos.copy()
    assert w.step() == 3
    assert_tick_is_clear(w, before)
    np.testing.assert_array_equal(w.pos[0], [15.0, 5.0])  # passes below the grid
    assert 10.0 - 0.01 < w.pos[1, 0] < 10.0 and w.pos[1, 1] == 11.0
    assert 16.0 < w.pos[2, 0] < 16.0 + 0.01 and w.pos[2, 1] == 12.0
    assert 16.0 < w.pos[3, 1] < 16.0 + 0.01 and w.pos[3, 0] == 12.0
    np.testing.assert_array_equal(w.vel[1:], 0.0)


def test_empty_and_all_free_grids_change_nothing() -> None:
    rng = np.random.default_rng(2)
    base = random_free_world(rng, 200, 0.1)
    runs = []
    for grid, cell in [
        (NO_GRID, 1.0),
        (np.zeros((7, 9), np.uint8), 1.0),
        (np.ones((5, 5), np.uint8), 0.0),
    ]:
        w = base.copy()
        w.blocked = grid
        w.cell = cell
        for _ in range(5):
            w.step()
        runs.append(w)
    ref = base.copy()
    for _ in range(5):
        p, v, _ = reference_free_step(ref)
        ref.pos[:] = p
        ref.vel[:] = v
    for w in runs:
        np.testing.assert_array_equal(w.pos, runs[0].pos)
        np.testing.assert_array_equal(w.vel, runs[0].vel)
    np.testing.assert_allclose(runs[0].pos, ref.pos, rtol=1e-6, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    gx=st.integers(1, 10),
    gy=st.integers(1, 10),
    density=st.floats(0.05, 0.6),
    cell=st.sampled_from([0.3, 0.5, 1.0, 2.5]),
    origin_kind=st.sampled_from(["zero", "random", "far"]),
    dt=st.sampled_from([0.05, 0.3, 1.0, 3.0]),
)
def test_nothing_ever_passes_through_a_wall(
    seed: int, gx: int, gy: int, density: float, cell: float, origin_kind: str, dt: float
) -> None:
    rng = np.random.default_rng(seed)
    blocked = (rng.random((gy, gx)) < density).astype(np.uint8)
    origin = {
        "zero": (0.0, 0.0),
        "random": tuple(rng.uniform(-3, 3, 2)),
        # float32 spacing there (~4 mm) is coarser than the stop epsilon
        "far": tuple(rng.uniform(-3, 3, 2) + np.array([30000.0, -50000.0])),
    }[origin_kind]
    ext = (origin[0] + gx * cell, origin[1] + gy * cell)
    bounds = (origin[0] - 2 * cell, origin[1] - 2 * cell, ext[0] + 2 * cell, ext[1] + 2 * cell)
    n = 40
    # Random points plus cell centres and exact cell corners (the hard cases for a sweep).
    raw = rng.uniform(bounds[:2], bounds[2:], (n, 2))
    k = rng.integers(-1, [gx + 2, gy + 2], (n, 2)) + rng.choice([0.0, 0.5], (n, 2))
    raw[::2] = np.array(origin) + k[::2] * cell
    pos = raw.astype(np.float32)
    i, j = cells_of(pos.astype(np.float64), origin, cell)
    pos = pos[~blocked_at(blocked, i, j)]
    n = len(pos)
    vmax = rng.uniform(0.5, 40.0, n)
    w = make_world(
        n,
        pos=pos,
        vel=rng.normal(0, 5, (n, 2)),
        mode=rng.choice([MODE_IDLE, MODE_PLAYER, MODE_SEEK], n, p=[0.1, 0.6, 0.3]),
        max_speed=vmax,
        max_accel=vmax / dt * rng.uniform(0.2, 5.0, n),
        target=rng.uniform(bounds[:2], bounds[2:], (n, 2)),
        dt=dt,
        bounds=bounds,
        blocked=blocked,
        origin=origin,
        cell=cell,
    )
    diagonal = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1], [1, 0], [0, -1]], np.float64)
    for _ in range(12):
        intent = rng.normal(0, 1, (n, 2)) * rng.choice([0.5, 1.0, 5.0], (n, 1))
        pick = rng.random(n) < 0.4
        intent[pick] = diagonal[rng.integers(0, len(diagonal), pick.sum())]
        w.intent[:] = intent
        before = w.pos.copy()
        w.step()
        assert_tick_is_clear(w, before)
        p = w.pos.astype(np.float64)
        assert np.all((p >= bounds[:2]) & (p <= bounds[2:]))
        assert np.all(np.hypot(*w.vel.T) <= w.max_speed * (1 + 1e-6))


def test_rasterized_rects_are_never_entered() -> None:
    rects = np.array([[2.0, 2.0, 4.0, 8.0], [6.2, 0.0, 6.4, 10.0], [0.0, 9.0, 10.0, 9.5]])
    g = rasterize_rects(rects, 0.0, 0.0, 0.5, 20, 20)
    rng = np.random.default_rng(4)
    n = 300
    pos = rng.uniform(0, 10, (n, 2)).astype(np.float32)
    i, j = cells_of(pos.astype(np.float64), (0.0, 0.0), 0.5)
    pos = pos[~blocked_at(g, i, j)]
    n = len(pos)
    w = make_world(
        n, pos=pos, blocked=g, cell=0.5, bounds=(0.0, 0.0, 10.0, 10.0), max_speed=8.0, dt=0.5
    )
    w.max_accel[:] = 100.0
    for _ in range(20):
        w.intent[:] = rng.normal(0, 1, (n, 2))
        before = w.pos.copy()
        w.step()
        assert_tick_is_clear(w, before)
        for r in rects:
            inside = (
                (w.pos[:, 0] > r[0]) & (w.pos[:, 0] < r[2])
                & (w.pos[:, 1] > r[1]) & (w.pos[:, 1] < r[3])
            )  # fmt: skip
            assert not inside.any()


# --------------------------------------------------------------------------- misc


def test_zero_and_one_entity() -> None:
    w = make_world(0)
    assert w.step() == 0
    assert w.pos.shape == (0, 2)
    g = np.zeros((2, 2), np.uint8)
    g[0, 1] = 1
    one = wall_world(1, g, pos=[[0.5, 0.5]], intent=[[1.0, 0.0]], max_accel=1000.0, dt=1.0)
    assert one.step() == 1
    assert 1.0 - 1e-3 < one.pos[0, 0] < 1.0 and one.pos[0, 1] == 0.5


@pytest.mark.parametrize("dt", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_dt_changes_nothing(dt: float) -> None:
    w = make_world(3, pos=[[1, 2]] * 3, vel=[[1, 1]] * 3, intent=[[1, 0]] * 3, dt=dt)
    assert w.step() == 0
    np.testing.assert_array_equal(w.pos, [[1, 2]] * 3)
    np.testing.assert_array_equal(w.vel, [[1, 1]] * 3)


def test_compiled_and_python_agree() -> None:
    rng = np.random.default_rng(9)
    n = 40
    g = (rng.random((8, 8)) < 0.3).astype(np.uint8)
    pos = rng.uniform(0, 8, (n, 2)).astype(np.float32)  # some start inside walls
    w = wall_world(
        n,
        g,
        pos=pos,
        vel=rng.normal(0, 3, (n, 2)),
        mode=rng.choice([MODE_IDLE, MODE_PLAYER, MODE_SEEK], n),
        intent=rng.normal(0, 2, (n, 2)),
        target=rng.uniform(-2, 10, (n, 2)),
        max_speed=rng.uniform(1, 20, n),
        max_accel=rng.uniform(1, 80, n),
        bounds=(-1.0, -1.0, 9.0, 9.0),
        dt=0.4,
    )
    c, p = w.copy(), w.copy()
    for _ in range(6):
        assert c.step() == p.step(py_func(integrate_motion))
        np.testing.assert_array_equal(c.pos, p.pos)
        np.testing.assert_array_equal(c.vel, p.vel)
    grid_c = rasterize_rects(np.array([[0.3, 0.2, 2.6, 1.0]]), 0.0, 0.0, 0.5, 8, 6)
    grid_p = py_func(rasterize_rects)(np.array([[0.3, 0.2, 2.6, 1.0]]), 0.0, 0.0, 0.5, 8, 6)
    np.testing.assert_array_equal(grid_c, grid_p)


# --------------------------------------------------------------------------- rasterize


def reference_rasterize(
    rects: npt.NDArray[np.float64], bx0: float, by0: float, cell: float, gx: int, gy: int
) -> npt.NDArray[np.uint8]:
    out = np.zeros((gy, gx), np.uint8)
    for xa, ya, xb, yb in rects:
        if not np.all(np.isfinite([xa, ya, xb, yb])):
            continue
        lx, hx, ly, hy = min(xa, xb), max(xa, xb), min(ya, yb), max(ya, yb)
        for j in range(gy):
            for i in range(gx):
                cx0, cy0 = bx0 + i * cell, by0 + j * cell
                if lx < cx0 + cell and hx > cx0 and ly < cy0 + cell and hy > cy0:
                    out[j, i] = 1
    return out


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    gx=st.integers(0, 12),
    gy=st.integers(0, 12),
    m=st.integers(0, 6),
    on_grid=st.booleans(),
)
def test_rasterize_matches_brute_force(seed: int, gx: int, gy: int, m: int, on_grid: bool) -> None:
    rng = np.random.default_rng(seed)
    cell, bx0, by0 = 0.5, -1.0, 2.0
    if on_grid:  # corners exactly on grid lines, including zero-size rectangles
        rects = np.column_stack(
            [
                bx0 + rng.integers(-2, gx + 3, m) * cell,
                by0 + rng.integers(-2, gy + 3, m) * cell,
                bx0 + rng.integers(-2, gx + 3, m) * cell,
                by0 + rng.integers(-2, gy + 3, m) * cell,
            ]
        ).astype(np.float64)
    else:
        lo = np.array([bx0, by0, bx0, by0]) - 2.0
        hi = np.array([bx0 + gx * cell, by0 + gy * cell] * 2) + 2.0
        rects = rng.uniform(lo, hi, (m, 4))
    rects = rects.reshape(m, 4)
    got = rasterize_rects(rects, bx0, by0, cell, gx, gy)
    assert got.dtype == np.uint8 and got.shape == (gy, gx)
    np.testing.assert_array_equal(got, reference_rasterize(rects, bx0, by0, cell, gx, gy))


def test_rasterize_edge_cases() -> None:
    rects = np.array(
        [
            [np.nan, 0.0, 1.0, 1.0],
            [1e300, -1e300, -1e300, 2.5],  # enormous: rows 0 to 2 entirely
            [2.5, 0.0, 2.5, 5.0],  # zero width, inside column 2
            [4.0, 0.0, 4.0, 5.0],  # zero width on a grid line: nothing
        ]
    )
    got = rasterize_rects(rects, 0.0, 0.0, 1.0, 6, 4)
    want = np.zeros((4, 6), np.uint8)
    want[:3, :] = 1
    want[:, 2] = 1
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, reference_rasterize(rects, 0.0, 0.0, 1.0, 6, 4))
    assert rasterize_rects(np.zeros((0, 4)), 0.0, 0.0, 1.0, 3, 2).shape == (2, 3)
    assert rasterize_rects(rects, 0.0, 0.0, 1.0, 0, 5).shape == (5, 0)
    assert not rasterize_rects(rects, 0.0, 0.0, 0.0, 3, 3).any()


def test_warm_up_runs() -> None:
    warm_up()
