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
    check_previous,
    compute_interest,
    contains_id,
    count_bits,
    count_in_range,
    count_interest,
    count_within,
    fill_in_range,
    fill_interest,
    gather_slot_ids,
    lowest_bit,
    mask_in_range,
    mask_in_ranges,
    measure_blocks,
    measure_lists,
    move_lists,
    place_lists,
    scan_interest,
    select_interest,
    store_selected,
    store_selected_bits,
    write_nearest_words,
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


# --- the zone's query: one pass with hysteresis and a k-nearest cap ---------------------


def clustered(n: int, seed: int, spots: int = 4, spread: float = 6.0) -> F32:
    """Points piled around a few spots, some exactly on top of each other."""
    rng = np.random.default_rng(seed)
    centres = rng.random((spots, 2)) * 100.0
    pos = centres[rng.integers(0, spots, n)] + rng.normal(0.0, spread, (n, 2))
    pos[rng.random(n) < 0.1] = centres[0]
    return pos.astype(np.float32)


def previous_sets(
    cand: F32, obs: F32, ids: U64, radius: float, seed: int, keep: float = 0.7
) -> list[set[int]]:
    """Plausible previous lists: most of what is within radius + 8, plus some strangers."""
    rng = np.random.default_rng(seed)
    near = squared_distances(cand, obs) <= (radius + 8.0) ** 2
    sets = []
    for i in range(obs.shape[0]):
        js = np.flatnonzero(near[i] & (rng.random(cand.shape[0]) < keep))
        strangers = rng.choice(10**6, 3) + 10**7
        sets.append({int(ids[j]) for j in js} | {int(x) for x in strangers})
    return sets


def reference_ball(
    cand: F32,
    obs: F32,
    radius: float,
    hysteresis: float,
    k_max: int,
    ids: U64,
    prev_sets: list[set[int]],
) -> list[list[int]]:
    """The zone's rule with scipy doing the range queries (independent of brute_force)."""
    tree = cKDTree(cand.astype(np.float64))
    o64 = obs.astype(np.float64)
    inner = tree.query_ball_point(o64, radius)
    outer = tree.query_ball_point(o64, radius + hysteresis)
    out = []
    for i in range(obs.shape[0]):
        keep = set(inner[i]) | {j for j in outer[i] if int(ids[j]) in prev_sets[i]}
        js = np.array(sorted(keep), np.int64)
        d2 = squared_distances(cand[js], obs[i : i + 1])[0]
        js = js[np.lexsort((js, d2))]
        out.append([int(j) for j in (js[:k_max] if k_max else js)])
    return out


def test_zone_query_at_scale_matches_ckdtree() -> None:
    # 20k entities, a tenth of them observers, 50 m radius, 5 m hysteresis, k_max 128,
    # plus a crowd where the cap binds and annulus candidates compete for the last places.
    rng = np.random.default_rng(30)
    side = float(np.sqrt(20_000 * np.pi * 2500.0 / 25.0))
    pos = (rng.random((20_000, 2)) * side).astype(np.float32)
    crowd = rng.choice(20_000, 2_000, replace=False)
    ang = rng.uniform(0, 2 * np.pi, 2_000)
    rad = 50.0 * np.sqrt(rng.random(2_000))
    pos[crowd] = np.stack([side / 2 + rad * np.cos(ang), side / 2 + rad * np.sin(ang)], 1)
    ids = rng.choice(2**62, 20_000, replace=False).astype(np.uint64)
    obs_rows = np.sort(rng.choice(20_000, 2_000, replace=False))
    obs = pos[obs_rows]
    prev_sets = previous_sets(pos, obs, ids, 50.0, 31)
    off, prev_ids = prev_csr(prev_sets)
    obs_prev = np.arange(2_000, dtype=np.int32)
    obs_prev[::17] = -1
    per_obs = [prev_sets[p] if p >= 0 else set() for p in obs_prev]
    got = compute_interest(pos, obs, 50.0, 5.0, 128, ids, obs_prev, off, prev_ids)
    assert_matches(got, reference_ball(pos, obs, 50.0, 5.0, 128, ids, per_obs))
    assert np.diff(got[0]).max() == 128


@pytest.mark.parametrize("k_max", [1, 7, 40, 100])
def test_cap_with_exact_ties_keeps_lowest_indices(k_max: int) -> None:
    # 150 candidates on one spot, more on a ring at one distance: the cut-off falls
    # inside groups of equal distances, where only the lower indices may stay.
    spot = np.full((150, 2), 20.0, np.float32)
    ang = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    ring = (20.0 + 3.0 * np.stack([np.cos(ang), np.sin(ang)], 1)).astype(np.float32)
    cand = np.concatenate([uniform(100, 40.0, 40), spot, ring, spot[:40] + np.float32(1.0)])
    obs = np.concatenate([spot[:3], np.array([[21.0, 20.0], [23.0, 20.0]], np.float32)])
    ids = np.arange(cand.shape[0], dtype=np.uint64) + np.uint64(7)
    prev_sets = [set(range(7, cand.shape[0] + 7, 2))] * obs.shape[0]
    off, prev_ids = prev_csr(prev_sets[:1])
    obs_prev = np.zeros(obs.shape[0], np.int32)
    got = compute_interest(cand, obs, 6.0, 2.0, k_max, ids, obs_prev, off, prev_ids)
    expected = brute_force(cand, obs, 6.0, 2.0, k_max, ids, prev_sets)
    assert_matches(got, expected)
    assert_matches(
        compute_interest(cand, obs, 6.0, 0.0, k_max), brute_force(cand, obs, 6.0, 0.0, k_max)
    )


def test_cap_with_infinite_radius() -> None:
    cand = clustered(300, 32)
    obs = cand[:25]
    got = compute_interest(cand, obs, np.inf, 0.0, 9)
    assert_matches(got, brute_force(cand, obs, np.inf, 0.0, 9))


def test_long_previous_lists_are_binary_searched() -> None:
    # Previous lists far longer than the whole-list compare handles.
    cand = clustered(900, 33, spots=2, spread=4.0)
    obs = cand[::30]
    ids = np.random.default_rng(34).choice(10**9, 900, replace=False).astype(np.uint64)
    prev_sets = previous_sets(cand, obs, ids, 5.0, 35, keep=0.9)
    assert min(len(p) for p in prev_sets) > interest._SCAN_LIST
    off, prev_ids = prev_csr(prev_sets)
    obs_prev = np.arange(obs.shape[0], dtype=np.int32)
    for k_max in (0, 50):
        got = compute_interest(cand, obs, 5.0, 3.0, k_max, ids, obs_prev, off, prev_ids)
        assert_matches(got, brute_force(cand, obs, 5.0, 3.0, k_max, ids, prev_sets))


def test_two_pass_path_when_lists_would_be_huge(monkeypatch: pytest.MonkeyPatch) -> None:
    cand = clustered(500, 36)
    obs = cand[:120]
    ids = np.arange(500, dtype=np.uint64) * np.uint64(3)
    prev_sets = previous_sets(cand, obs, ids, 9.0, 37)
    off, prev_ids = prev_csr(prev_sets)
    obs_prev = np.arange(120, dtype=np.int32)
    args = (cand, obs, 9.0, 4.0)
    prev = (ids, obs_prev, off, prev_ids)
    one_pass = [compute_interest(*args, k, *prev) for k in (0, 12)]
    monkeypatch.setattr(interest, "_LIST_SCRATCH", 0)
    monkeypatch.setattr(interest, "_LIST_SCRATCH_MIN", 0)
    for k, first in zip((0, 12), one_pass, strict=True):
        got = compute_interest(*args, k, *prev)
        assert_matches(got, brute_force(cand, obs, 9.0, 4.0, k, ids, prev_sets))
        assert as_sets(*got) == as_sets(*first)


def test_repeated_calls_reuse_scratch_but_not_results() -> None:
    # Scratch is kept between calls; results must never share it.
    first_pos = clustered(700, 38)
    first = compute_interest(first_pos, first_pos[:70], 8.0, 0.0, 5)
    kept = (first[0].copy(), first[1].copy())
    for n, seed in ((50, 39), (3000, 40), (700, 41)):
        pos = clustered(n, seed)
        for k_max in (0, 5):
            got = compute_interest(pos, pos[: n // 10], 8.0, 0.0, k_max)
            assert_matches(got, brute_force(pos, pos[: n // 10], 8.0, 0.0, k_max))
    np.testing.assert_array_equal(first[0], kept[0])
    np.testing.assert_array_equal(first[1], kept[1])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    m=st.integers(1, 30),
    spots=st.integers(1, 5),
    spread=st.sampled_from([0.0, 0.5, 3.0, 20.0]),
    radius=st.sampled_from([0.0, 2.0, 7.5, 30.0]),
    hysteresis=st.sampled_from([0.0, 1.0, 6.0]),
    k_max=st.integers(0, 80),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_crowds_against_brute_force(
    n: int,
    m: int,
    spots: int,
    spread: float,
    radius: float,
    hysteresis: float,
    k_max: int,
    seed: int,
) -> None:
    # Dense piles with exact duplicates: the cap binds far beyond k_max + the narrowing
    # bracket, and annulus candidates compete with in-range ones.
    cand = clustered(n, seed, spots, spread)
    rng = np.random.default_rng(seed)
    obs = cand[rng.integers(0, n, m)] + rng.normal(0, 1.0, (m, 2)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.uint64)
    prev_sets = previous_sets(cand, obs, ids, radius, seed + 1, keep=0.5)
    off, prev_ids = prev_csr(prev_sets)
    obs_prev = rng.integers(-1, m, m).astype(np.int32)
    per_obs = [prev_sets[p] if p >= 0 else set() for p in obs_prev]
    got = compute_interest(cand, obs, radius, hysteresis, k_max, ids, obs_prev, off, prev_ids)
    assert_matches(got, brute_force(cand, obs, radius, hysteresis, k_max, ids, per_obs))


def zone_inputs(
    n: int, m: int, seed: int
) -> tuple[object, object, int, int, int, U64, I32, I64, U64, F32, F32]:
    cand = clustered(n, seed, spots=3, spread=5.0)
    obs = cand[:: max(n // m, 1)][:m]
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, n, replace=False).astype(np.uint64)
    prev_sets = previous_sets(cand, obs, ids, 6.0, seed + 1)
    # One observer with a list longer than the whole-list compare takes.
    prev_sets[0] |= set(range(10**8, 10**8 + interest._SCAN_LIST + 5))
    off, prev_ids = prev_csr(prev_sets)
    obs_prev = np.arange(obs.shape[0], dtype=np.int32)
    obs_prev[1::5] = -1
    cidx, oidx, nx, ny, _, _ = build_inputs(cand, obs, 9.0)
    return cidx, oidx, nx, ny, obs.shape[0], ids, obs_prev, off, prev_ids, cand, obs


def test_select_interest_equals_two_pass_and_brute_force() -> None:
    cidx, oidx, nx, ny, m, ids, obs_prev, off, prev_ids, cand, obs = zone_inputs(600, 60, 42)
    max_block, bound = measure_lists(cidx.cell_start, nx, ny, oidx.cell_start, 10)
    slot_ids = np.empty(600, np.uint64)
    gather_slot_ids(cidx.order_padded, ids, slot_ids)
    np.testing.assert_array_equal(slot_ids, ids[cidx.order])
    cands = (cidx.cell_start, cidx.order_padded, cidx.xs_padded, cidx.ys_padded, nx, ny)
    observers = (oidx.cell_start, oidx.order, oidx.xs, oidx.ys)
    common = (36.0, 81.0, 10)
    counts = np.empty(m, np.int64)
    lists = np.full(bound, -1, np.int32)
    total = select_interest(
        *cands, *observers, *common, slot_ids, obs_prev, off, prev_ids, max_block, counts, lists
    )
    assert total == counts.sum() <= bound and np.all(lists[total:] == -1)
    vis_off = np.empty(m + 1, np.int64)
    dest = np.empty(m, np.int64)
    place_lists(oidx.order, counts, vis_off, dest)
    vis_idx = np.empty(total, np.int32)
    move_lists(lists, counts, dest, vis_idx)
    per_obs = [set() for _ in range(m)]
    sets = [set(prev_ids[off[p] : off[p + 1]].tolist()) if p >= 0 else set() for p in obs_prev]
    per_obs = sets
    expected = brute_force(cand, obs, 6.0, 3.0, 10, ids, per_obs)
    assert_matches((vis_off, vis_idx), expected)
    # The two-pass kernels give the same lists, written in place.
    counts2 = np.empty(m, np.int64)
    args = (*cands, *observers, *common, ids, obs_prev, off, prev_ids, max_block)
    count_interest(*args, counts2)
    np.testing.assert_array_equal(counts2, counts)
    vis_idx2 = np.empty(total, np.int32)
    fill_interest(*args, dest, counts2, vis_idx2)
    assert as_sets(vis_off, vis_idx2) == as_sets(vis_off, vis_idx)


def test_scan_interest_compiled_and_python_agree() -> None:
    cidx, oidx, nx, ny, m, ids, obs_prev, off, prev_ids, _, _ = zone_inputs(260, 25, 43)
    cands = (cidx.cell_start, cidx.order_padded, cidx.xs_padded, cidx.ys_padded, nx, ny)
    observers = (oidx.cell_start, oidx.order, oidx.xs, oidx.ys)
    slot_ids = np.empty(260, np.uint64)
    gather_slot_ids(cidx.order_padded, ids, slot_ids)
    max_block, bound = measure_lists(cidx.cell_start, nx, ny, oidx.cell_start, 6)
    for k_max in (0, 6):
        results = []
        for fn in (scan_interest, py_func(scan_interest)):
            counts = np.empty(m, np.int64)
            out = np.full(max(bound, max_block * m), -1, np.int32)
            total = fn(
                interest._PACK, *cands, *observers, 36.0, 81.0, k_max, slot_ids, obs_prev, off,
                prev_ids, max_block, counts, counts, out,
            )  # fmt: skip
            results.append((total, counts, out))
        assert results[0][0] == results[1][0]
        np.testing.assert_array_equal(results[0][1], results[1][1])
        np.testing.assert_array_equal(results[0][2], results[1][2])


def test_measure_lists_matches_numpy() -> None:
    cand = clustered(500, 44)
    obs = np.concatenate([cand[:40], np.array([[-50.0, -50.0], [400.0, 9.0]], np.float32)])
    cidx, oidx, nx, ny, max_block, _ = build_inputs(cand, obs, 7.0)
    cells = np.diff(cidx.cell_start).reshape(ny, nx)
    nobs = np.diff(oidx.cell_start).reshape(ny, nx)
    padded = np.pad(cells, 1)
    block = sum(padded[dy : dy + ny, dx : dx + nx] for dy in range(3) for dx in range(3))
    assert block[nobs > 0].max() == max_block
    for k_max in (0, 1, 17, 10**6):
        per = np.minimum(block, k_max) if k_max else block
        best, bound = measure_lists(cidx.cell_start, nx, ny, oidx.cell_start, k_max)
        assert best == max_block
        assert bound == int((per * nobs).sum())


def test_move_lists_places_every_list() -> None:
    rng = np.random.default_rng(45)
    counts = rng.integers(0, 40, 300).astype(np.int64)
    order = rng.permutation(300).astype(np.int32)
    lists = rng.integers(0, 10**6, int(counts.sum())).astype(np.int32)
    vis_off = np.empty(301, np.int64)
    dest = np.empty(300, np.int64)
    place_lists(order, counts, vis_off, dest)
    for fn in (move_lists, py_func(move_lists)):
        vis_idx = np.full(int(counts.sum()), -1, np.int32)
        fn(lists, counts, dest, vis_idx)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for s in range(300):
            i = order[s]
            np.testing.assert_array_equal(
                vis_idx[vis_off[i] : vis_off[i + 1]], lists[starts[s] : starts[s + 1]]
            )


def test_check_previous() -> None:
    off = np.array([0, 2, 2, 5], np.int64)
    cases = [
        (np.array([0, -1, 2, 1], np.int32), off, 5, 0),
        (np.array([], np.int32), off, 5, 0),
        (np.array([3], np.int32), off, 5, 1),
        (np.array([-2], np.int32), off, 5, 1),
        (np.array([0], np.int32), off, 4, 2),
        (np.array([0], np.int32), np.array([0, 3, 2], np.int64), 5, 2),
        (np.array([0], np.int32), np.array([-1, 2], np.int64), 5, 2),
        (np.array([-1], np.int32), np.array([0], np.int64), 0, 0),
    ]
    for prev, offsets, nids, expected in cases:
        assert check_previous(prev, offsets, nids) == expected
        assert py_func(check_previous)(prev, offsets, nids) == expected


def test_nearest_words_selection_against_sorting() -> None:
    # One observer, a block of 300 candidates (five words), many exact ties.
    rng = np.random.default_rng(46)
    n = 300
    xs = np.concatenate([rng.integers(0, 12, n).astype(np.float64), np.zeros(64)])
    ys = np.concatenate([rng.integers(0, 12, n).astype(np.float64), np.zeros(64)])
    cand_order = np.concatenate([rng.permutation(n).astype(np.int32), np.zeros(64, np.int32)])
    bases = np.arange(0, n, 64, dtype=np.int64)
    words = np.array(
        [int(np.packbits(rng.random(64) < 0.8, bitorder="little").view("<u8")[0]) for _ in bases],
        np.uint64,
    )
    words[-1] &= np.uint64((1 << (n - 256)) - 1)
    marked = [
        int(b) + t for b, w in zip(bases, words, strict=True) for t in range(64) if int(w) >> t & 1
    ]
    d2 = (xs[marked] - 5.0) ** 2 + (ys[marked] - 6.0) ** 2
    cand = cand_order[marked]
    for k_max in (1, 2, 33, 100, len(marked) - 1):
        keep = np.lexsort((cand, d2))[:k_max]
        expected = sorted(cand[keep].tolist())
        assert count_within(xs, ys, bases, words, len(bases), 5.0, 6.0, 50.0) == int(
            (d2 <= 50.0).sum()
        )
        for fn in (write_nearest_words, py_func(write_nearest_words)):
            out = np.full(len(marked) + 5, -1, np.int32)
            scratch = np.empty(len(marked), np.float64)
            written = fn(
                xs, ys, cand_order, bases, words, len(bases), len(marked), 5.0, 6.0,
                float(d2.max()), k_max, np.empty(len(marked), np.int32), scratch.copy(), scratch,
                out, 3,
            )  # fmt: skip
            assert written == k_max
            assert sorted(out[3 : 3 + k_max].tolist()) == expected
            assert np.all(out[:3] == -1) and np.all(out[3 + k_max :] == -1)


@njit(cache=False)
def _compiled_two_masks(
    xb: npt.NDArray[np.float64], yb: npt.NDArray[np.float64], r2: float, rh2: float
) -> tuple[np.uint64, np.uint64]:
    return mask_in_ranges(xb, yb, np.uint64(3), 1.0, 2.0, r2, rh2)


def test_two_masks_agree_with_single_masks() -> None:
    rng = np.random.default_rng(47)
    xb = rng.random(80) * 10.0
    yb = rng.random(80) * 10.0
    xb[10] = np.nan
    xb[11], yb[11] = 4.0, 6.0  # exactly 5 from (1, 2)
    for r2, rh2 in ((25.0, 36.0), (25.0, 25.0), (0.0, 1e9), (np.inf, np.inf)):
        inner, outer = _compiled_two_masks(xb, yb, r2, rh2)
        assert (inner, outer) == mask_in_ranges(xb, yb, 3, 1.0, 2.0, r2, rh2)
        assert inner == mask_in_range(xb, yb, 3, 1.0, 2.0, r2)
        assert outer == mask_in_range(xb, yb, 3, 1.0, 2.0, rh2)
    inner, _ = _compiled_two_masks(xb, yb, 25.0, 36.0)
    assert int(inner) >> 8 & 1 and not int(inner) >> 7 & 1
