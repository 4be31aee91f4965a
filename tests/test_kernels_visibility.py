"""Visibility diff against a plain set-based reference."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardworld.kernels import visibility as vis
from shardworld.kernels._jit import py_func

U64_MAX = 2**64 - 1

Lists = list[list[int]]


def unique_ids(rng: np.random.Generator, n: int) -> npt.NDArray[np.uint64]:
    """``n`` distinct ids spread over the whole uint64 range, in random order."""
    ids = np.unique(rng.integers(0, U64_MAX, size=2 * n + 8, dtype=np.uint64, endpoint=True))
    return rng.permutation(ids)[:n]


def csr(lists: Lists, dtype: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    off = np.zeros(len(lists) + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in lists]) if lists else []
    flat = np.array([v for x in lists for v in x], dtype=dtype)
    return off, flat


def reference_diff(
    vis_lists: Lists,
    cand_ids: list[int],
    obs_prev: list[int],
    prev_lists: list[list[tuple[int, int]]],
) -> list[dict[str, Any]]:
    """Per observer: sorted (id, row, handle, state) entries and sorted (id, handle) leaves."""
    out = []
    for rows, p in zip(vis_lists, obs_prev, strict=True):
        row_of = {cand_ids[r]: r for r in rows}
        prev = {} if p == -1 else dict(prev_lists[p])
        visible = set(row_of)
        stays = {i: prev[i] for i in visible & prev.keys()}
        taken = set(stays.values())
        free = (h for h in itertools.count() if h not in taken)
        handle = dict(stays)
        for i in sorted(visible - prev.keys()):
            handle[i] = next(free)
        out.append(
            {
                "cur": [(i, row_of[i], handle[i], int(i not in stays)) for i in sorted(visible)],
                "leave": [(i, prev[i]) for i in sorted(prev.keys() - visible)],
            }
        )
    return out


def run_diff(
    vis_lists: Lists,
    cand_ids: list[int],
    obs_prev: list[int],
    prev_lists: list[list[tuple[int, int]]],
) -> tuple[npt.NDArray[Any], ...]:
    vis_off, vis_idx = csr(vis_lists, np.int32)
    prev_off, prev_ids = csr([[i for i, _ in x] for x in prev_lists], np.uint64)
    _, prev_handles = csr([[h for _, h in x] for x in prev_lists], np.uint16)
    return vis.diff_visibility(
        vis_off,
        vis_idx,
        np.array(cand_ids, np.uint64),
        np.array(obs_prev, np.int32),
        prev_off,
        prev_ids,
        prev_handles,
    )


def as_lists(result: tuple[npt.NDArray[Any], ...]) -> list[dict[str, Any]]:
    cur_off, cur_ids, cur_idx, cur_handle, cur_state, leave_off, leave_ids, leave_handle = result
    assert cur_ids.dtype == np.uint64 and cur_idx.dtype == np.int32
    assert cur_handle.dtype == np.uint16 and cur_state.dtype == np.uint8
    assert cur_off.dtype == np.int64 and leave_off.dtype == np.int64
    assert leave_ids.dtype == np.uint64 and leave_handle.dtype == np.uint16
    out = []
    for i in range(cur_off.shape[0] - 1):
        a, b = cur_off[i], cur_off[i + 1]
        la, lb = leave_off[i], leave_off[i + 1]
        out.append(
            {
                "cur": list(
                    zip(
                        cur_ids[a:b].tolist(),
                        cur_idx[a:b].tolist(),
                        cur_handle[a:b].tolist(),
                        cur_state[a:b].tolist(),
                        strict=True,
                    )
                ),
                "leave": list(
                    zip(leave_ids[la:lb].tolist(), leave_handle[la:lb].tolist(), strict=True)
                ),
            }
        )
    return out


@st.composite
def diff_inputs(draw: st.DrawFn) -> tuple[Lists, list[int], list[int], list[list[tuple[int, int]]]]:
    # Ids span the whole uint64 range so any signed/unsigned mix-up shows.
    id_values = st.one_of(
        st.integers(0, 60), st.integers(2**63 - 5, 2**63 + 5), st.integers(0, U64_MAX)
    )
    cand_ids = draw(st.lists(id_values, max_size=40, unique=True))
    n = len(cand_ids)
    m = draw(st.integers(0, 6))
    row = st.integers(0, n - 1) if n else st.nothing()
    vis_lists = [draw(st.lists(row, max_size=n, unique=True)) for _ in range(m)]
    n_prev = draw(st.integers(0, 5))
    prev_lists = []
    foreign = st.integers(0, U64_MAX).filter(lambda v: v not in cand_ids)
    for _ in range(n_prev):
        known = draw(st.lists(st.sampled_from(cand_ids), unique=True)) if n else []
        ids = sorted(set(known) | set(draw(st.lists(foreign, max_size=4))))
        if draw(st.booleans()):
            handles = draw(st.permutations(range(len(ids))))
        else:
            handles = draw(
                st.lists(
                    st.one_of(st.integers(0, 8), st.integers(0, 65535)),
                    min_size=len(ids),
                    max_size=len(ids),
                    unique=True,
                )
            )
        prev_lists.append(list(zip(ids, handles, strict=True)))
    obs_prev = [draw(st.integers(-1, n_prev - 1)) for _ in range(m)]
    return vis_lists, cand_ids, obs_prev, prev_lists


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(diff_inputs())
def test_matches_set_reference(
    args: tuple[Lists, list[int], list[int], list[list[tuple[int, int]]]],
) -> None:
    expected = reference_diff(*args)
    assert as_lists(run_diff(*args)) == expected


def test_handle_reuse_rules() -> None:
    # prev: 10->h0, 20->h1, 30->h2. Now 20, 40, 50 visible: 20 stays on h1, the leaves free
    # h0 and h2, and the enters take them at once in id order.
    cand = [50, 40, 20]
    got = as_lists(run_diff([[0, 1, 2]], cand, [0], [[(10, 0), (20, 1), (30, 2)]]))
    assert got == [
        {
            "cur": [(20, 2, 1, 0), (40, 1, 0, 1), (50, 0, 2, 1)],
            "leave": [(10, 0), (30, 2)],
        }
    ]


def test_enters_fill_gaps_below_stays() -> None:
    # A stay on a high handle does not push enters above it; enters fill 0, 1, 2, ... skipping
    # only handles held by stays.
    cand = [5, 6, 7, 8, 100]
    got = as_lists(run_diff([[0, 1, 2, 3, 4]], cand, [0], [[(7, 1), (100, 9000)]]))
    assert [(i, h, s) for i, _, h, s in got[0]["cur"]] == [
        (5, 0, 1),
        (6, 2, 1),
        (7, 1, 0),
        (8, 3, 1),
        (100, 9000, 0),
    ]
    assert got[0]["leave"] == []


def test_no_previous_list_everything_enters() -> None:
    cand = [9, 3, 7]
    got = as_lists(run_diff([[0, 1, 2], []], cand, [-1, -1], []))
    assert got == [
        {"cur": [(3, 1, 0, 1), (7, 2, 1, 1), (9, 0, 2, 1)], "leave": []},
        {"cur": [], "leave": []},
    ]


def test_empty_inputs() -> None:
    res = run_diff([], [], [], [])
    assert [a.shape for a in res] == [(1,), (0,), (0,), (0,), (0,), (1,), (0,), (0,)]
    res = run_diff([[], []], [], [0, -1], [[(4, 0), (8, 1)]])
    assert as_lists(res) == [{"cur": [], "leave": [(4, 0), (8, 1)]}, {"cur": [], "leave": []}]


def test_long_lists_both_sort_paths() -> None:
    # One and several 32-id rank blocks, and lists past RANK_SORT_MAX (comparison sort).
    rng = np.random.default_rng(7)
    n = 70_000
    cand_ids = unique_ids(rng, n)
    cand_ids[:3] = [0, 2**63, U64_MAX]
    lengths = [0, 1, 23, 25, 33, 64, 200, 300, 1000]
    vis_lists = [rng.choice(n, size=k, replace=False).tolist() for k in lengths]
    vis_lists[-1][:3] = [0, 1, 2]
    ids = cand_ids.tolist()
    first = reference_diff(vis_lists, ids, [-1] * len(lengths), [])
    prev_lists = [[(i, h) for i, _, h, _ in obs["cur"]] for obs in first]
    # Next snapshot: keep about half of each list, add fresh rows.
    vis2 = []
    for rows in vis_lists:
        keep = [r for r in rows if rng.random() < 0.5]
        extra = rng.choice(n, size=len(rows) // 2 + 1, replace=False).tolist()
        vis2.append(list(dict.fromkeys(keep + extra)))
    obs_prev = list(range(len(lengths)))[::-1]
    expected = reference_diff(vis2, ids, obs_prev, prev_lists)
    assert as_lists(run_diff(vis2, ids, obs_prev, prev_lists)) == expected


def test_handle_limit() -> None:
    n = vis.MAX_HANDLES + 1
    cand = np.arange(n, dtype=np.uint64)[::-1].copy()
    rows = np.arange(n, dtype=np.int32)
    one = np.zeros(1, np.int32)
    no_prev = (np.zeros(1, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint16))
    ok_off = np.array([0, n - 1], np.int64)
    res = vis.diff_visibility(ok_off, rows[:-1], cand, one - 1, *no_prev)
    assert np.array_equal(np.sort(res[3]), np.arange(vis.MAX_HANDLES))
    with pytest.raises(ValueError, match="more than 65536"):
        vis.diff_visibility(np.array([0, n], np.int64), rows, cand, one - 1, *no_prev)
    # A stay parked on the top handle leaves exactly enough room for the rest.
    prev = (np.array([0, 1], np.int64), cand[:1].copy(), np.array([65535], np.uint16))
    res = vis.diff_visibility(ok_off, rows[:-1], cand, one, *prev)
    assert res[3][res[1] == cand[0]][0] == 65535
    assert np.array_equal(np.sort(res[3]), np.arange(vis.MAX_HANDLES))


def test_caller_bugs_raise() -> None:
    cand = [1, 2, 2]

    def run(vis_lists: Lists, obs_prev: list[int], prev: list[list[tuple[int, int]]]) -> None:
        run_diff(vis_lists, cand, obs_prev, prev)

    with pytest.raises(ValueError, match="same entity id twice"):
        run([[0, 0]], [-1], [])
    with pytest.raises(ValueError, match="same entity id twice"):
        run([[1, 0, 2]], [-1], [])
    with pytest.raises(ValueError, match="not sorted"):
        run([[0]], [0], [[(5, 0), (3, 1)]])
    with pytest.raises(ValueError, match="not sorted"):
        run([[0]], [0], [[(5, 0), (5, 1)]])
    with pytest.raises(ValueError, match="one handle to two"):
        run([[0, 1]], [0], [[(1, 4), (2, 4)]])
    with pytest.raises(ValueError, match="obs_prev"):
        run([[0]], [1], [[(1, 0)]])
    with pytest.raises(ValueError, match="obs_prev"):
        run([[0]], [-2], [])
    with pytest.raises(ValueError, match="outside"):
        run([[3]], [-1], [])


def test_malformed_csr_raises() -> None:
    ids = np.array([1, 2], np.uint64)
    no_prev = (np.zeros(1, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint16))
    one, none = np.array([-1], np.int32), np.zeros(0, np.int32)
    with pytest.raises(ValueError, match="CSR"):
        vis.diff_visibility(np.array([0, 2], np.int64), np.zeros(1, np.int32), ids, one, *no_prev)
    with pytest.raises(ValueError, match="CSR"):
        vis.diff_visibility(np.array([1, 1], np.int64), np.zeros(1, np.int32), ids, one, *no_prev)
    with pytest.raises(ValueError, match="obs_prev"):
        vis.diff_visibility(np.array([0, 1], np.int64), np.zeros(1, np.int32), ids, none, *no_prev)
    with pytest.raises(ValueError, match="prev_off"):
        vis.diff_visibility(
            np.array([0, 1], np.int64),
            np.zeros(1, np.int32),
            ids,
            np.array([0], np.int32),
            np.array([0, 2], np.int64),
            np.zeros(1, np.uint64),
            np.zeros(1, np.uint16),
        )


def test_multi_tick_handle_invariants() -> None:
    # Feed each output back as the next input; handles stay unique per observer, stays keep
    # theirs, and no handle ever reaches the longest list the observer has had.
    rng = np.random.default_rng(3)
    n, m = 300, 8
    cand_ids = unique_ids(rng, n)
    prev_off = np.zeros(1, np.int64)
    prev_ids = np.zeros(0, np.uint64)
    prev_handles = np.zeros(0, np.uint16)
    obs_prev = np.full(m, -1, np.int32)
    longest = np.zeros(m, np.int64)
    last: list[dict[int, int]] = [{} for _ in range(m)]
    for _tick in range(40):
        lists = [rng.choice(n, size=rng.integers(0, 120), replace=False) for _ in range(m)]
        vis_off, vis_idx = csr([x.tolist() for x in lists], np.int32)
        res = vis.diff_visibility(
            vis_off, vis_idx, cand_ids, obs_prev, prev_off, prev_ids, prev_handles
        )
        cur_off, cur_ids, _, cur_handle, cur_state, *_ = res
        for i in range(m):
            a, b = cur_off[i], cur_off[i + 1]
            longest[i] = max(longest[i], b - a)
            hs = cur_handle[a:b].astype(np.int64)
            assert len(set(hs.tolist())) == b - a
            assert (hs < max(longest[i], 1)).all()
            now = dict(zip(cur_ids[a:b].tolist(), hs.tolist(), strict=True))
            for i_d, st_ in zip(cur_ids[a:b].tolist(), cur_state[a:b].tolist(), strict=True):
                assert st_ == (i_d not in last[i])
                if st_ == 0:
                    assert now[i_d] == last[i][i_d]
            last[i] = now
        prev_off, prev_ids, prev_handles = cur_off, cur_ids, cur_handle
        obs_prev = np.arange(m, dtype=np.int32)


def run_lists_kernel(fn: Any, *inputs: npt.NDArray[Any]) -> tuple[Any, ...]:
    """Call a ``diff_visibility_lists`` body with freshly allocated outputs."""
    vis_off, vis_idx, _, obs_prev, prev_off = inputs[:5]
    v, m = vis_idx.shape[0], vis_off.shape[0] - 1
    room, bad = vis.leave_room(obs_prev, prev_off)
    assert bad == -1
    outs = (
        np.empty(v, np.uint64),
        np.empty(v, np.int32),
        np.empty(v, np.uint16),
        np.empty(v, np.uint8),
        np.empty(m + 1, np.int64),
        np.empty(room, np.uint64),
        np.empty(room, np.uint16),
    )
    n_leaves, status, bad = fn(*inputs, *outs)
    return (*outs[:5], outs[5][:n_leaves], outs[6][:n_leaves], status, bad)


def test_compiled_matches_py_func() -> None:
    rng = np.random.default_rng(11)
    n = 400
    cand_ids = unique_ids(rng, n)
    lists = [rng.choice(n, size=k, replace=False).tolist() for k in (0, 5, 40, 120, 300)]
    vis_off, vis_idx = csr(lists, np.int32)
    prev_ids = np.sort(cand_ids[rng.choice(n, size=60, replace=False)])
    prev_off = np.array([0, 20, 60], np.int64)
    prev_handles = np.concatenate([rng.permutation(20), rng.permutation(40) + 3]).astype(np.uint16)
    obs_prev = np.array([1, -1, 0, 1, 0], np.int32)
    args = (vis_off, vis_idx, cand_ids, obs_prev, prev_off, prev_ids, prev_handles)
    compiled = run_lists_kernel(vis.diff_visibility_lists, *args)
    pure = run_lists_kernel(py_func(vis.diff_visibility_lists), *args)
    assert compiled[-2:] == pure[-2:] == (vis.DIFF_OK, -1)
    for c, p in zip(compiled[:-2], pure[:-2], strict=True):
        assert c.dtype == p.dtype
        assert np.array_equal(c, p)
    assert vis.leave_room(obs_prev, prev_off) == py_func(vis.leave_room)(obs_prev, prev_off)

    ids = rng.integers(0, 2**64 - 1, 80, dtype=np.uint64)
    rows = np.arange(100, dtype=np.int32)
    a, k = np.uint64(20), np.uint64(80)
    o1, r1 = np.zeros(100, np.uint64), np.zeros(100, np.int32)
    o2, r2 = o1.copy(), r1.copy()
    assert vis.sort_long_list(ids, rows, a, k, o1, r1)
    assert py_func(vis.sort_long_list)(ids, rows, a, k, o2, r2)
    assert np.array_equal(o1, o2) and np.array_equal(r1, r2)
    assert np.array_equal(o1[20:], np.sort(ids)) and np.array_equal(ids[r1[20:] - 20], o1[20:])


@vis.kernel
def _count_below_compiled(keys: npt.NDArray[Any], base: np.uint64, key: Any) -> np.uint64:
    return vis.count_below(keys, base, key)


def test_count_below_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    edges = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1], np.uint64)
    keys = np.concatenate([edges, rng.integers(0, 2**64 - 1, 90, dtype=np.uint64, endpoint=True)])
    keys = np.concatenate([keys, keys[:32]])
    for base in (0, 7, 32, 64, 96):
        for key in [*edges.tolist(), *keys[base : base + 40].tolist()]:
            k = np.uint64(key)
            want = int(np.count_nonzero(keys[base : base + vis.RANK_LANES] < k))
            assert vis.count_below(keys, base, k) == want
            assert _count_below_compiled(keys, np.uint64(base), k) == want


@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("n", [2, 31, 32, 33, 64, 65, 256, 257, 600])
def test_duplicate_found_on_every_sort_path(n: int, spread: bool) -> None:
    # A repeated id anywhere in the list, first/last included, and two repeats at once;
    # ids within 2**32 of each other (32-bit ranks) or spread over the whole range.
    rng = np.random.default_rng(n)
    step = 2**64 // (n + 2) if spread else 3
    cand = [U64_MAX - step * i for i in range(n)]
    cand2 = [*cand, cand[0], cand[n - 1]]  # rows n and n + 1 repeat rows 0 and n - 1
    for at in {0, n // 2, n}:
        rows = rng.permutation(n).tolist()
        rows.insert(at, n)
        with pytest.raises(ValueError, match="same entity id twice"):
            run_diff([[], rows], cand2, [-1, -1], [])
    rows = [*rng.permutation(n).tolist(), n + 1, n]
    with pytest.raises(ValueError, match="same entity id twice"):
        run_diff([rows], cand2, [-1], [])
    # Without the repeat the same list sorts fine.
    got = as_lists(run_diff([rng.permutation(n).tolist()], cand, [-1], []))
    assert [i for i, *_ in got[0]["cur"]] == sorted(cand)


@pytest.mark.parametrize("width", [2**32 - 1, 2**32])
def test_id_ranges_at_the_32_bit_boundary(width: int) -> None:
    # Lists whose ids span exactly 2**32 - 1 (ranked as 32-bit offsets) or 2**32 (64-bit).
    rng = np.random.default_rng(width)
    for lo in (0, 2**63 - 7, U64_MAX - width):
        for n in (2, 32, 33, 100):
            inner = rng.choice(width - 1, size=n - 2, replace=False) + 1
            ids = [lo, lo + width, *(lo + int(x) for x in inner)]
            order = rng.permutation(n).tolist()
            prev = [[(i, h) for h, i in enumerate(sorted(ids[: n // 2]))]]
            args = ([order], ids, [0], prev)
            assert as_lists(run_diff(*args)) == reference_diff(*args)
        with pytest.raises(ValueError, match="same entity id twice"):
            run_diff([[0, 1, 2]], [lo + width, lo, lo + width], [-1], [])


def test_first_error_wins_like_a_sequential_scan() -> None:
    cand = [1, 2, 3]
    # A bad obs_prev anywhere is reported before any list is looked at.
    with pytest.raises(ValueError, match=r"obs_prev\[1\]"):
        run_diff([[0, 0], [1]], cand, [-1, 5], [])
    # Within one observer: repeated id, then unsorted previous list, then a reused handle.
    with pytest.raises(ValueError, match="same entity id twice"):
        run_diff([[0, 0, 1]], cand, [0], [[(3, 0), (2, 1)]])
    with pytest.raises(ValueError, match="not sorted"):
        run_diff([[0, 1]], cand, [0], [[(1, 4), (2, 4), (2, 5)]])
    # Observers are checked in order.
    with pytest.raises(ValueError, match="observer 0's previous list gives"):
        run_diff([[0, 1], [2, 2]], cand, [0, -1], [[(1, 4), (2, 4)]])


def test_leave_room_and_short_leave_buffers() -> None:
    prev_off = np.array([0, 3, 3, 7], np.int64)
    obs_prev = np.array([2, -1, 0, 2], np.int32)
    assert vis.leave_room(obs_prev, prev_off) == (11, -1)
    assert vis.leave_room(np.array([0, 3, -2], np.int32), prev_off) == (0, 1)
    assert vis.leave_room(np.zeros(0, np.int32), prev_off) == (0, -1)
    # The kernel refuses leave outputs shorter than leave_room says.
    ids = np.array([10, 20], np.uint64)
    out = (
        np.empty(2, np.uint64),
        np.empty(2, np.int32),
        np.empty(2, np.uint16),
        np.empty(2, np.uint8),
        np.empty(2, np.int64),
        np.empty(1, np.uint64),
        np.empty(1, np.uint16),
    )
    res = vis.diff_visibility_lists(
        np.array([0, 2], np.int64),
        np.array([0, 1], np.int32),
        ids,
        np.array([0], np.int32),
        np.array([0, 2], np.int64),
        np.array([5, 6], np.uint64),
        np.array([0, 1], np.uint16),
        *out,
    )
    assert res[1] == vis.DIFF_LEAVES_TOO_SHORT


def test_warm_up_runs() -> None:
    vis.warm_up()
