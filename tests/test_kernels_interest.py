"""Tests for interest management (shardworld.kernels.interest)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from scipy.spatial import cKDTree

from shardworld.kernels import interest
from shardworld.kernels._jit import py_func
from shardworld.kernels.grid import plan_grid
from shardworld.kernels.interest import (
    compute_interest,
    contains_id,
    count_bits,
    count_in_range,
    count_interest,
    fill_in_range,
    fill_interest,
    lowest_bit,
    mask_in_range,
    measure_blocks,
    place_lists,
    store_selected,
    store_selected_bits,
)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]


def squared_distances(cand: F32, obs: F32) -> npt.NDArray[np.float64]:
    c = cand.astype(np.float64)
    o = obs.astype(np.float64)
    with np.errstate(invalid="ignore"):
        dx = c[None, :, 0] - o[:, None, 0]
        dy = c[None, :, 1] - o[:, None, 1]
        return dx * dx + dy * dy


def brute_force(
    cand: F32,
    obs: F32,
    radius: float,
    hysteresis: float = 0.0,
    k_max: int = 0,
    cand_ids: U64 | None = None,
    prev_sets: list[set[int]] | None = None,
) -> list[list[int]]:
    """Visible lists the O(N*M) way, nearest first (ties: lower index)."""
    d2 = squared_distances(cand, obs)
    visible = d2 <= radius * radius
    if hysteresis > 0.0 and prev_sets is not None:
        assert cand_ids is not None
        annulus = (d2 <= (radius + hysteresis) ** 2) & ~visible
        for i, prev in enumerate(prev_sets):
            keep = np.array([int(x) in prev for x in cand_ids], dtype=bool)
            visible[i] |= annulus[i] & keep
    lists = []
    for i in range(obs.shape[0]):
        js = np.flatnonzero(visible[i])
        js = js[np.lexsort((js, d2[i, js]))]
        if k_max > 0:
            js = js[:k_max]
        lists.append([int(j) for j in js])
    return lists


def as_sets(vis_off: I64, vis_idx: I32) -> list[set[int]]:
    assert vis_off.dtype == np.int64 and vis_idx.dtype == np.int32
    assert vis_off[0] == 0 and vis_off[-1] == vis_idx.shape[0]
    assert np.all(np.diff(vis_off) >= 0)
    out = []
    for i in range(vis_off.shape[0] - 1):
        lst = vis_idx[vis_off[i] : vis_off[i + 1]].tolist()
        assert len(lst) == len(set(lst)), "duplicate entries in a list"
        out.append(set(lst))
    return out


def assert_matches(result: tuple[I64, I32], expected: list[list[int]]) -> None:
    got = as_sets(*result)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == set(e), f"observer {i}: got {sorted(g)}, expected {sorted(e)}"


def uniform(n: int, side: float, seed: int) -> F32:
    return (np.random.default_rng(seed).random((n, 2)) * side).astype(np.float32)


def test_random_all_observers() -> None:
    pos = uniform(400, 200.0, 1)
    res = compute_interest(pos, pos, 15.0, 0.0, 0)
    assert_matches(res, brute_force(pos, pos, 15.0))
    # Every observer sees itself.
    sets = as_sets(*res)
    assert all(i in s for i, s in enumerate(sets))


def test_separate_observers_including_outside_the_grid() -> None:
    cand = uniform(300, 100.0, 2)
    obs = np.concatenate(
        [uniform(50, 100.0, 3), np.array([[-8.0, 50.0], [108.0, 108.0], [-1e5, 0.0]], np.float32)]
    )
    assert_matches(compute_interest(cand, obs, 9.0, 0.0, 0), brute_force(cand, obs, 9.0))


def test_equal_but_distinct_observer_array() -> None:
    pos = uniform(300, 100.0, 4)
    copy = pos.copy()
    assert_matches(compute_interest(pos, copy, 7.0, 0.0, 0), brute_force(pos, copy, 7.0))
    assert_matches(compute_interest(pos, pos[::2], 7.0, 0.0, 0), brute_force(pos, pos[::2], 7.0))


def test_matches_ckdtree_ball_point() -> None:
    cand = uniform(3000, 500.0, 5)
    obs = uniform(700, 520.0, 6) - np.float32(10.0)
    tree = cKDTree(cand.astype(np.float64))
    ref = tree.query_ball_point(obs.astype(np.float64), 20.0)
    got = as_sets(*compute_interest(cand, obs, 20.0, 0.0, 0))
    assert got == [set(r) for r in ref]


def test_matches_ckdtree_query_pairs_at_scale() -> None:
    n, radius, k = 20_000, 50.0, 20
    pos = uniform(n, float(np.sqrt(n * np.pi * radius * radius / k)), 7)
    vis_off, vis_idx = compute_interest(pos, pos, radius, 0.0, 0)
    obs = np.repeat(np.arange(n), np.diff(vis_off))
    keep = obs < vis_idx
    ours = np.stack([obs[keep], vis_idx[keep]], 1)
    ours = ours[np.lexsort((ours[:, 1], ours[:, 0]))]
    ref = cKDTree(pos.astype(np.float64)).query_pairs(radius, output_type="ndarray")
    ref = ref[np.lexsort((ref[:, 1], ref[:, 0]))]
    np.testing.assert_array_equal(ours, ref)
    # Symmetric: every pair appears in both lists, plus self.
    assert vis_idx.shape[0] == 2 * ref.shape[0] + n


def test_crowd_at_one_spot() -> None:
    pos = np.concatenate([np.full((500, 2), 42.0, np.float32), uniform(200, 100.0, 8)])
    res = compute_interest(pos, pos, 5.0, 0.0, 0)
    assert_matches(res, brute_force(pos, pos, 5.0))
    assert np.all(np.diff(res[0])[:500] >= 500)


def test_entities_exactly_at_the_radius() -> None:
    # 3-4-5 triangles: distance exactly 50 is in range; the next float32 out is not.
    base = np.array([[100.0, 100.0]], np.float32)
    exact = base + np.array([[30.0, 40.0], [-30.0, 40.0], [50.0, 0.0], [0.0, -50.0]], np.float32)
    beyond = np.array([[np.nextafter(np.float32(150.0), np.float32(200.0)), 100.0]], np.float32)
    cand = np.concatenate([exact, beyond])
    vis_off, vis_idx = compute_interest(cand, base, 50.0, 0.0, 0)
    assert set(vis_idx.tolist()) == {0, 1, 2, 3}
    assert_matches((vis_off, vis_idx), brute_force(cand, base, 50.0))


def test_points_on_cell_borders_and_grid_edges() -> None:
    # Integer lattice with radius equal to the spacing: many exact distances and points
    # sitting on cell borders and on the bounding box.
    g = np.arange(0.0, 60.0, 5.0)
    pos = np.array([[x, y] for x in g for y in g], np.float32)
    tree = cKDTree(pos.astype(np.float64))
    for radius in (5.0, np.sqrt(50.0), 10.0, 25.0, 0.0):
        res = compute_interest(pos, pos, radius, 0.0, 0)
        assert_matches(res, brute_force(pos, pos, radius))
        # scipy counts distances equal to the radius as in range too.
        ref = tree.query_ball_point(pos.astype(np.float64), radius)
        assert as_sets(*res) == [set(r) for r in ref]


def test_sparse_huge_world_with_grown_cells() -> None:
    # Few entities over a million metres: the planned cells are far wider than the
    # radius (capped cell count), which must only cost time, not correctness.
    rng = np.random.default_rng(22)
    centres = rng.random((40, 2)) * 1e6
    pos = (centres[rng.integers(0, 40, 400)] + rng.normal(0, 3.0, (400, 2))).astype(np.float32)
    assert plan_grid(pos, 5.0).cell_size > 1000.0
    assert_matches(compute_interest(pos, pos, 5.0, 0.0, 0), brute_force(pos, pos, 5.0))
    assert_matches(compute_interest(pos, pos, 5.0, 0.0, 3), brute_force(pos, pos, 5.0, k_max=3))


@pytest.mark.parametrize(("n", "m"), [(0, 0), (0, 5), (5, 0), (1, 1), (1, 3), (3, 1)])
def test_empty_and_tiny(n: int, m: int) -> None:
    cand = uniform(n, 10.0, 9)
    obs = uniform(m, 10.0, 10)
    vis_off, vis_idx = compute_interest(cand, obs, 4.0, 0.0, 0)
    assert vis_off.shape == (m + 1,)
    assert_matches((vis_off, vis_idx), brute_force(cand, obs, 4.0))


def test_non_finite_positions_see_and_are_seen_by_nothing() -> None:
    pos = uniform(50, 20.0, 11)
    pos[3] = [np.nan, 1.0]
    pos[7] = [np.inf, 5.0]
    vis_off, vis_idx = compute_interest(pos, pos, 6.0, 0.0, 0)
    sets = as_sets(vis_off, vis_idx)
    assert sets[3] == set() and sets[7] == set()
    assert all(3 not in s and 7 not in s for s in sets)
    assert_matches((vis_off, vis_idx), brute_force(pos, pos, 6.0))


@pytest.mark.parametrize("k_max", [1, 3, 10])
def test_k_max_keeps_exactly_the_nearest(k_max: int) -> None:
    pos = uniform(300, 60.0, 12)
    # Duplicated positions create exact distance ties.
    pos[100:110] = pos[0]
    vis_off, vis_idx = compute_interest(pos, pos, 12.0, 0.0, k_max)
    expected = brute_force(pos, pos, 12.0, k_max=k_max)
    assert_matches((vis_off, vis_idx), expected)
    assert np.all(np.diff(vis_off) <= k_max)


def test_k_max_not_binding_equals_no_cap() -> None:
    pos = uniform(200, 50.0, 13)
    a = as_sets(*compute_interest(pos, pos, 8.0, 0.0, 0))
    assert as_sets(*compute_interest(pos, pos, 8.0, 0.0, 200)) == a
    assert as_sets(*compute_interest(pos, pos, 8.0, 0.0, 10_000)) == a


def prev_csr(prev_sets: list[set[int]]) -> tuple[I64, U64]:
    off = np.zeros(len(prev_sets) + 1, np.int64)
    off[1:] = np.cumsum([len(p) for p in prev_sets])
    ids = np.concatenate([np.sort(np.array(sorted(p), np.uint64)) for p in prev_sets] or [[]])
    return off, ids.astype(np.uint64)


def test_hysteresis_keeps_only_previously_visible() -> None:
    # Observer 0 at the origin; candidates at distances 5 (in), 11 and 12 (annulus for
    # r=10, h=3) and 14 (beyond r + h).
    cand = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 11.0], [-12.0, 0.0], [0.0, -14.0]], np.float32)
    ids = np.array([100, 101, 102, 103, 104], np.uint64)
    obs = cand[:1]
    off, prev_ids = prev_csr([{102, 104, 999}])
    _, vis_idx = compute_interest(
        cand, obs, 10.0, 3.0, 0, ids, np.array([0], np.int32), off, prev_ids
    )
    # 102 was visible and stays (annulus); 103 was not and stays out; 104 leaves (beyond).
    assert set(vis_idx.tolist()) == {0, 1, 2}
    # Without a previous list the annulus is not visible.
    _, vis_idx = compute_interest(
        cand, obs, 10.0, 3.0, 0, ids, np.array([-1], np.int32), off, prev_ids
    )
    assert set(vis_idx.tolist()) == {0, 1}
    # Without obs_prev hysteresis has no effect at all.
    _, vis_idx = compute_interest(cand, obs, 10.0, 3.0, 0)
    assert set(vis_idx.tolist()) == {0, 1}


def test_hysteresis_random_against_brute_force() -> None:
    rng = np.random.default_rng(14)
    cand = uniform(400, 80.0, 15)
    obs = cand[rng.choice(400, 60, replace=False)]
    ids = rng.choice(10**12, 400, replace=False).astype(np.uint64)
    prev_sets = [set(rng.choice(ids, rng.integers(0, 40)).tolist()) for _ in range(60)]
    # Several observers share one previous list; some have none.
    obs_prev = rng.integers(-1, 60, 60).astype(np.int32)
    per_obs = [prev_sets[p] if p >= 0 else set() for p in obs_prev]
    off, prev_ids = prev_csr(prev_sets)
    for k_max in (0, 5):
        got = compute_interest(cand, obs, 7.0, 4.0, k_max, ids, obs_prev, off, prev_ids)
        expected = brute_force(cand, obs, 7.0, 4.0, k_max, ids, per_obs)
        assert_matches(got, expected)


def test_invalid_arguments() -> None:
    pos = uniform(10, 10.0, 16)
    with pytest.raises(ValueError):
        compute_interest(pos, pos, -1.0, 0.0, 0)
    with pytest.raises(ValueError):
        compute_interest(pos, pos, float("nan"), 0.0, 0)
    with pytest.raises(ValueError):
        compute_interest(pos, pos, 1.0, -1.0, 0)
    with pytest.raises(ValueError):
        compute_interest(pos, pos, 1.0, 0.0, -1)
    with pytest.raises(ValueError):
        compute_interest(pos[:, :1], pos, 1.0, 0.0, 0)
    with pytest.raises(ValueError):
        compute_interest(pos, pos, 1.0, 2.0, 0, obs_prev=np.zeros(10, np.int32))
    off, prev_ids = prev_csr([{1}])
    ids = np.arange(10, dtype=np.uint64)
    with pytest.raises(ValueError):
        compute_interest(pos, pos, 1.0, 2.0, 0, ids, np.full(10, 1, np.int32), off, prev_ids)


def test_infinite_radius_sees_every_finite_candidate() -> None:
    pos = uniform(30, 1e4, 17)
    pos[0] = [np.nan, 0.0]
    sets = as_sets(*compute_interest(pos, pos[1:], np.inf, 0.0, 0))
    assert all(s == set(range(1, 30)) for s in sets)


finite = st.floats(-200, 200, width=32)


@settings(max_examples=80, deadline=None)
@given(
    cand=st.lists(st.tuples(finite, finite), max_size=40),
    obs=st.lists(st.tuples(finite, finite), max_size=12),
    share=st.booleans(),
    radius=st.floats(0.0, 150.0),
    hysteresis=st.floats(0.0, 60.0),
    k_max=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_against_brute_force(
    cand: list[tuple[float, float]],
    obs: list[tuple[float, float]],
    share: bool,
    radius: float,
    hysteresis: float,
    k_max: int,
    seed: int,
) -> None:
    c = np.array(cand, np.float32).reshape(-1, 2)
    o = c if share else np.array(obs, np.float32).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(1000)[: c.shape[0]].astype(np.uint64)
    prev_sets = [set(rng.choice(1000, rng.integers(0, 12)).tolist()) for _ in range(4)]
    obs_prev = rng.integers(-1, 4, o.shape[0]).astype(np.int32)
    per_obs = [prev_sets[p] if p >= 0 else set() for p in obs_prev]
    off, prev_ids = prev_csr(prev_sets)
    got = compute_interest(c, o, radius, hysteresis, k_max, ids, obs_prev, off, prev_ids)
    assert_matches(got, brute_force(c, o, radius, hysteresis, k_max, ids, per_obs))
    plain = compute_interest(c, o, radius, 0.0, 0)
    assert_matches(plain, brute_force(c, o, radius))


def build_inputs(cand: F32, obs: F32, dist: float) -> tuple[object, ...]:
    spec = plan_grid(cand, dist)
    ox, oy, cell, nx, ny = spec
    cidx = interest._CellIndex(cand, ox, oy, cell, nx, ny)
    oidx = interest._CellIndex(obs, ox, oy, cell, nx, ny)
    max_block, words = measure_blocks(cidx.cell_start, nx, ny, oidx.cell_start)
    return cidx, oidx, nx, ny, max_block, words


def test_plain_kernels_compiled_and_python_agree() -> None:
    cand = uniform(60, 30.0, 18)
    obs = uniform(15, 34.0, 19) - np.float32(2.0)
    r2 = 36.0
    cidx, oidx, nx, ny, max_block, words = build_inputs(cand, obs, 6.0)
    results = []
    for count, place, fill in (
        (count_in_range, place_lists, fill_in_range),
        (py_func(count_in_range), py_func(place_lists), py_func(fill_in_range)),
    ):
        counts = np.empty(15, np.int64)
        masks = np.empty(words, np.uint64)
        with np.errstate(over="ignore"):
            count(
                cidx.cell_start, cidx.xs_padded, cidx.ys_padded, nx, ny,
                oidx.cell_start, oidx.xs, oidx.ys, r2, max_block, counts, masks,
            )  # fmt: skip
        vis_off = np.empty(16, np.int64)
        dest = np.empty(15, np.int64)
        place(oidx.order, counts, vis_off, dest)
        vis_idx = np.empty(int(vis_off[-1]), np.int32)
        fill(
            cidx.cell_start, cidx.order_padded, nx, ny, oidx.cell_start, dest, counts,
            max_block, masks, vis_idx,
        )  # fmt: skip
        results.append((vis_off, vis_idx, masks, dest))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    assert_matches(results[0][:2], brute_force(cand, obs, 6.0))


def test_general_kernels_compiled_and_python_agree() -> None:
    cand = uniform(60, 30.0, 20)
    obs = cand[:20]
    ids = np.arange(500, 560, dtype=np.uint64)
    off, prev_ids = prev_csr([{501, 505, 530, 545}, set(range(500, 560, 3))])
    obs_prev = np.array([0, 1, -1] * 6 + [0, 1], np.int32)
    cidx, oidx, nx, ny, max_block, _ = build_inputs(cand, obs, 9.0)
    results = []
    for count, place, fill in (
        (count_interest, place_lists, fill_interest),
        (py_func(count_interest), py_func(place_lists), py_func(fill_interest)),
    ):
        args = (
            cidx.cell_start, cidx.order_padded, cidx.xs_padded, cidx.ys_padded, nx, ny,
            oidx.cell_start, oidx.order, oidx.xs, oidx.ys, 36.0, 81.0, 4,
            ids, obs_prev, off, prev_ids, max_block,
        )  # fmt: skip
        counts = np.empty(20, np.int64)
        count(*args, counts)
        vis_off = np.empty(21, np.int64)
        dest = np.empty(20, np.int64)
        place(oidx.order, counts, vis_off, dest)
        vis_idx = np.empty(int(vis_off[-1]), np.int32)
        fill(*args, dest, counts, vis_idx)
        results.append((vis_off, vis_idx))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    per_obs = [[{501, 505, 530, 545}, set(range(500, 560, 3)), set()][p] for p in obs_prev]
    assert_matches(results[0], brute_force(cand, obs, 6.0, 3.0, 4, ids, per_obs))


def test_place_lists_offsets() -> None:
    order = np.array([2, 0, 3, 1], np.int32)
    counts = np.array([5, 0, 2, 7], np.int64)
    vis_off = np.empty(5, np.int64)
    dest = np.empty(4, np.int64)
    place_lists(order, counts, vis_off, dest)
    # Observer lengths by original index: [0, 7, 5, 2].
    np.testing.assert_array_equal(vis_off, [0, 0, 7, 12, 14])
    np.testing.assert_array_equal(dest, [7, 0, 12, 0])


def test_bitwise_store_matches_compress_store() -> None:
    # The fallback used where the CPU has no compress-store.
    compiled = store_selected_bits
    rng = np.random.default_rng(24)
    src = rng.integers(0, 10**6, 200).astype(np.int32)
    for w in (0, 1, 0x8000000000000001, 0xDEADBEEFCAFEF00D, 0xFFFFFFFFFFFFFFFF):
        word = np.uint64(w)
        a = np.full(80, -1, np.int32)
        b = np.full(80, -1, np.int32)
        compiled(a, np.uint64(5), src, np.uint64(70), word)
        store_selected(b, 5, src, 70, word)
        np.testing.assert_array_equal(a, b)
        c = np.full(80, -1, np.int32)
        py_func(store_selected_bits)(c, np.uint64(5), src, np.uint64(70), word)
        np.testing.assert_array_equal(c, b)
        picked = [int(src[70 + t]) for t in range(64) if w >> t & 1]
        assert b[5 : 5 + len(picked)].tolist() == picked


def test_contains_id_matches_a_set() -> None:
    rng = np.random.default_rng(23)
    ids = np.sort(rng.choice(10**15, 300, replace=False)).astype(np.uint64)
    keys = np.concatenate([ids[::7], rng.choice(10**15, 200).astype(np.uint64)])
    keys = np.concatenate([keys, np.array([0, 2**64 - 1], np.uint64)])
    for lo, hi in [(0, 0), (5, 5), (0, 1), (0, 300), (50, 51), (10, 137), (299, 300)]:
        inside = set(ids[lo:hi].tolist())
        for key in keys:
            expected = int(key) in inside
            assert contains_id(ids, lo, hi, key) == expected
            assert py_func(contains_id)(ids, lo, hi, key) == expected


def test_bit_helpers() -> None:
    for w in (0, 1, 2, 0x80, 0x8000000000000000, 0xF0F0, 0xFFFFFFFFFFFFFFFF):
        assert int(count_bits(np.uint64(w))) == bin(w).count("1")
        if w:
            assert int(lowest_bit(np.uint64(w))) == (w & -w).bit_length() - 1


@njit(cache=False)
def _compiled_helpers(
    xb: npt.NDArray[np.float64],
    yb: npt.NDArray[np.float64],
    xi: float,
    yi: float,
    r2: float,
    src: I32,
    out: I32,
) -> tuple[np.uint64, np.uint64, np.uint64]:
    word = mask_in_range(xb, yb, np.uint64(64), xi, yi, r2)
    store_selected(out, np.uint64(3), src, np.uint64(64), word)
    return word, count_bits(word), lowest_bit(word)


def test_vector_helpers_compiled_and_python_agree() -> None:
    rng = np.random.default_rng(21)
    xb = rng.random(136) * 20.0
    yb = rng.random(136) * 20.0
    xb[70] = np.nan
    # Exactly on the radius (3-4-5) and one float64 step outside it.
    xb[80], yb[80] = 13.0, 14.0
    xb[81], yb[81] = np.nextafter(13.0, 20.0), 14.0
    src = rng.integers(0, 1000, 136).astype(np.int32)
    out_c = np.full(80, -1, np.int32)
    word_c, bits_c, low_c = _compiled_helpers(xb, yb, 10.0, 10.0, 25.0, src, out_c)
    word_p = mask_in_range(xb, yb, 64, 10.0, 10.0, 25.0)
    out_p = np.full(80, -1, np.int32)
    store_selected(out_p, 3, src, 64, word_p)
    assert word_c == word_p and bits_c == count_bits(word_p) and low_c == lowest_bit(word_p)
    np.testing.assert_array_equal(out_c, out_p)
    # Independent reference: plain float64 loop.
    expected = [t for t in range(64) if (xb[64 + t] - 10.0) ** 2 + (yb[64 + t] - 10.0) ** 2 <= 25.0]
    assert [t for t in range(64) if int(word_p) >> t & 1] == expected
    assert 16 in expected and 17 not in expected and 6 not in expected
    np.testing.assert_array_equal(out_p[3 : 3 + len(expected)], src[64:][expected])
    assert np.all(out_p[:3] == -1) and np.all(out_p[3 + len(expected) :] == -1)


def test_warm_up_runs() -> None:
    interest.warm_up()
