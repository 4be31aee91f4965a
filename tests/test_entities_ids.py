import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.entities.ids import IdAllocator, IdIndex, make_ids, split_ids


def test_pack_unpack_roundtrip() -> None:
    ids = make_ids(7, [1, 2, 3], [0, 5, (1 << 28) - 1])
    tag, gen, slot = split_ids(ids)
    assert list(tag) == [7, 7, 7]
    assert list(gen) == [1, 2, 3]
    assert list(slot) == [0, 5, (1 << 28) - 1]


def test_ids_never_zero_and_unique_across_zones() -> None:
    a, b = IdAllocator(0), IdAllocator(1)
    ia, ib = a.allocate(100), b.allocate(100)
    assert np.all(ia != 0) and np.all(ib != 0)
    assert len(np.intersect1d(ia, ib)) == 0


def test_stale_ids_detected_after_reuse() -> None:
    alloc = IdAllocator(3, reuse_delay=0)
    first = alloc.allocate(4)
    assert alloc.release(first[:2]) == 2
    assert not alloc.is_current(first[:2]).any()
    again = alloc.allocate(2)
    # The same slots come back with a new generation: different ids.
    assert set(split_ids(again)[2]) == set(split_ids(first[:2])[2])
    assert not np.isin(again, first).any()
    # Releasing a stale id must not free the slot's new occupant.
    assert alloc.release(first[:2]) == 0
    assert alloc.is_current(again).all()


def test_reuse_delay_keeps_freed_slots_resting() -> None:
    alloc = IdAllocator(1, reuse_delay=10)
    ids = alloc.allocate(5)
    alloc.release(ids)
    more = alloc.allocate(5)
    assert not np.isin(split_ids(more)[2], split_ids(ids)[2]).any()


def test_foreign_ids_ignored_by_release() -> None:
    a, b = IdAllocator(1), IdAllocator(2)
    ib = b.allocate(3)
    assert a.release(ib) == 0
    assert b.is_current(ib).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ins", "del"]), st.integers(1, 300)), max_size=200))
def test_index_matches_dict(ops: list[tuple[str, int]]) -> None:
    index = IdIndex(4)
    ref: dict[int, int] = {}
    keys = make_ids(9, 1, np.arange(400))
    for op, k in ops:
        key = keys[k : k + 1]
        if op == "ins":
            index.insert(key, np.array([k * 3], np.int32))
            ref[int(key[0])] = k * 3
        else:
            assert index.remove(key) == (1 if int(key[0]) in ref else 0)
            ref.pop(int(key[0]), None)
    assert len(index) == len(ref)
    got = index.lookup(keys)
    want = np.array([ref.get(int(k), -1) for k in keys], np.int32)
    np.testing.assert_array_equal(got, want)


def test_index_heavy_churn_keeps_probe_chains() -> None:
    rng = np.random.default_rng(0)
    index = IdIndex(16)
    ref: dict[int, int] = {}
    pool = make_ids(2, rng.integers(1, 1000, 5000), rng.integers(0, 1 << 28, 5000))
    pool = np.unique(pool)
    for _ in range(30):
        ins = rng.choice(pool, 200, replace=False)
        index.insert(ins, np.arange(200, dtype=np.int32))
        ref.update({int(k): i for i, k in enumerate(ins)})
        rem = rng.choice(pool, 150, replace=False)
        index.remove(rem)
        for k in rem:
            ref.pop(int(k), None)
    got = index.lookup(pool)
    want = np.array([ref.get(int(k), -1) for k in pool], np.int32)
    np.testing.assert_array_equal(got, want)


def test_lookup_zero_is_absent() -> None:
    index = IdIndex()
    assert index.lookup(np.array([0], np.uint64))[0] == -1
