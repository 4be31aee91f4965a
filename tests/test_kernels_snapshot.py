"""Quantisation, column packing and the snapshot encoder against struct-based references."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shardworld.kernels import snapshot as snap
from shardworld.kernels._jit import py_func

I32 = st.integers(-(2**31), 2**31 - 1)


# --- quantize_positions ---------------------------------------------------------------


def reference_quantize(
    pos: npt.NDArray[np.float32], quantum: float, q_last: npt.NDArray[np.int32]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    with np.errstate(invalid="ignore", over="ignore"):
        x = np.rint(pos.astype(np.float64) / quantum)
    x = np.where(np.isnan(x), 0.0, np.clip(x, -(2.0**31), 2.0**31 - 1))
    q = x.astype(np.int32)
    return q, (q != q_last).any(axis=1).astype(np.uint8)


@settings(max_examples=80, deadline=None)
@given(
    pos=hnp.arrays(np.float32, st.tuples(st.integers(0, 30), st.just(2))),
    quantum=st.sampled_from([0.01, 0.05, 0.25, 0.5, 1.0, 1e-30]),
    data=st.data(),
)
def test_quantize_matches_reference(
    pos: npt.NDArray[np.float32], quantum: float, data: st.DataObject
) -> None:
    q_last = data.draw(hnp.arrays(np.int32, pos.shape, elements=st.integers(-3, 3)))
    ref_q, ref_moved = reference_quantize(pos, quantum, q_last)
    # Half the time compare against the previous result itself: nothing moved.
    if data.draw(st.booleans()):
        q_last = ref_q.copy()
        ref_moved = np.zeros_like(ref_moved)
    q, moved = snap.quantize_positions(pos, quantum, q_last)
    assert q.dtype == np.int32 and moved.dtype == np.uint8
    assert np.array_equal(q, ref_q)
    assert np.array_equal(moved, ref_moved)


def test_quantize_edges() -> None:
    pos = np.array(
        [[0.25, -0.25], [0.75, -0.75], [np.nan, np.inf], [-np.inf, 1e30], [1.0, 2.0]],
        np.float32,
    )
    q, moved = snap.quantize_positions(pos, 0.5, np.zeros((5, 2), np.int32))
    # Ties go to even; NaN becomes 0; infinities saturate.
    assert q.tolist() == [[0, 0], [2, -2], [0, 2**31 - 1], [-(2**31), 2**31 - 1], [2, 4]]
    assert moved.tolist() == [0, 1, 1, 1, 1]
    with pytest.raises(ValueError):
        snap.quantize_positions(pos, 0.0, np.zeros((5, 2), np.int32))


# --- pack_columns ---------------------------------------------------------------------


def test_pack_columns_matches_struct() -> None:
    rng = np.random.default_rng(1)
    n = 7
    a = rng.integers(-(2**15), 2**15, n).astype(np.int16)
    b = rng.normal(size=(n, 2)).astype(np.float32)
    c = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2)
    d = rng.random(n) < 0.5
    e = rng.integers(-(2**31), 2**31, n).astype(">i4")  # big-endian input still packs LE
    out = snap.pack_columns([a, b, c, d, e], n)
    assert out.dtype == np.uint8 and out.shape == (n, 2 + 8 + 8 + 1 + 4)
    for r in range(n):
        want = struct.pack(
            "<hffQ?i", int(a[r]), float(b[r, 0]), float(b[r, 1]), int(c[r]), bool(d[r]), int(e[r])
        )
        assert out[r].tobytes() == want


def test_pack_columns_edges() -> None:
    assert snap.pack_columns([], 3).shape == (3, 0)
    assert snap.pack_columns([np.zeros(0, np.int32), np.zeros((0, 3), np.uint8)], 0).shape == (
        0,
        7,
    )
    with pytest.raises(ValueError):
        snap.pack_columns([np.zeros(4, np.int32)], 3)
    with pytest.raises(ValueError):
        snap.pack_columns([np.int32(4)], 1)
    with pytest.raises(TypeError):
        snap.pack_columns([np.array(["x"], object)], 1)


# --- encode_snapshots -----------------------------------------------------------------


@dataclass
class EncodeCase:
    tick: int
    reset: npt.NDArray[np.uint8]
    base_q: npt.NDArray[np.int32]
    cur_off: npt.NDArray[np.int64]
    cur_idx: npt.NDArray[np.int32]
    cur_handle: npt.NDArray[np.uint16]
    cur_state: npt.NDArray[np.uint8]
    leave_off: npt.NDArray[np.int64]
    leave_handle: npt.NDArray[np.uint16]
    cand_ids: npt.NDArray[np.uint64]
    cand_kind: npt.NDArray[np.uint16]
    cand_q: npt.NDArray[np.int32]
    cand_moved: npt.NDArray[np.uint8]
    cand_updated: npt.NDArray[np.uint8]
    pub_blob: npt.NDArray[np.uint8]
    own_blob: npt.NDArray[np.uint8]
    cand_owner: npt.NDArray[np.uint64]
    obs_owner: npt.NDArray[np.uint64]
    wide_handles: bool

    def args(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)


def reference_encode(c: EncodeCase) -> list[bytes]:
    """One payload per observer, built field by field with struct."""
    h = "<H" if c.wide_handles else "<B"
    payloads = []
    for i in range(c.reset.shape[0]):
        full = bool(c.reset[i])
        bx, by = int(c.base_q[i, 0]), int(c.base_q[i, 1])
        me = int(c.obs_owner[i])
        leaves = [] if full else c.leave_handle[c.leave_off[i] : c.leave_off[i + 1]].tolist()
        spawns, moves, updates = [], [], []
        for k in range(c.cur_off[i], c.cur_off[i + 1]):
            j = int(c.cur_idx[k])
            handle = int(c.cur_handle[k])
            owned = me != 0 and int(c.cand_owner[j]) == me
            rx = max(-32768, min(32767, int(c.cand_q[j, 0]) - bx))
            ry = max(-32768, min(32767, int(c.cand_q[j, 1]) - by))
            fields = c.pub_blob[j].tobytes() + (c.own_blob[j].tobytes() if owned else b"")
            if full or c.cur_state[k] == 1:
                spawns.append(
                    struct.pack(h, handle)
                    + struct.pack("<QHhhB", int(c.cand_ids[j]), int(c.cand_kind[j]), rx, ry, owned)
                    + fields
                )
                continue
            if c.cand_moved[j]:
                moves.append(struct.pack(h, handle) + struct.pack("<hh", rx, ry))
            if c.cand_updated[j]:
                updates.append(struct.pack(h, handle) + struct.pack("<B", owned) + fields)
        flags = (1 if full else 0) | (2 if c.wide_handles else 0)
        head = struct.pack(
            "<BIiiHHHH",
            flags,
            c.tick & 0xFFFFFFFF,
            bx,
            by,
            len(leaves),
            len(spawns),
            len(moves),
            len(updates),
        )
        body = b"".join(struct.pack(h, x) for x in leaves)
        payloads.append(head + body + b"".join(spawns) + b"".join(moves) + b"".join(updates))
    return payloads


@st.composite
def encode_cases(draw: st.DrawFn, wide: bool | None = None) -> EncodeCase:
    n = draw(st.integers(0, 12))
    m = draw(st.integers(0, 5))
    w = draw(st.integers(0, 4))
    w2 = draw(st.integers(0, 3))
    wide = draw(st.booleans()) if wide is None else wide
    handle = st.integers(0, 65535 if wide else 255)
    small = st.integers(-40_000, 40_000)
    coord = st.one_of(small, I32)

    def arr(dtype: Any, shape: Any, elements: st.SearchStrategy[Any]) -> Any:
        return draw(hnp.arrays(dtype, shape, elements=elements))

    cur_lists, leave_lists = [], []
    for _ in range(m):
        rows = draw(st.lists(st.integers(0, n - 1), unique=True)) if n else []
        handles = draw(st.lists(handle, min_size=len(rows), max_size=len(rows), unique=True))
        states = draw(st.lists(st.integers(0, 1), min_size=len(rows), max_size=len(rows)))
        cur_lists.append(list(zip(rows, handles, states, strict=True)))
        leave_lists.append(draw(st.lists(handle, max_size=4, unique=True)))
    cur_off = np.zeros(m + 1, np.int64)
    cur_off[1:] = np.cumsum([len(x) for x in cur_lists]) if m else []
    leave_off = np.zeros(m + 1, np.int64)
    leave_off[1:] = np.cumsum([len(x) for x in leave_lists]) if m else []
    flat = [e for x in cur_lists for e in x]
    owner = st.integers(0, 3)
    return EncodeCase(
        tick=draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(-(2**40), 2**62))),
        reset=arr(np.uint8, m, st.integers(0, 1)),
        base_q=arr(np.int32, (m, 2), coord),
        cur_off=cur_off,
        cur_idx=np.array([e[0] for e in flat], np.int32),
        cur_handle=np.array([e[1] for e in flat], np.uint16),
        cur_state=np.array([e[2] for e in flat], np.uint8),
        leave_off=leave_off,
        leave_handle=np.array([x for y in leave_lists for x in y], np.uint16),
        cand_ids=arr(np.uint64, n, st.integers(0, 2**64 - 1)),
        cand_kind=arr(np.uint16, n, st.integers(0, 65535)),
        cand_q=arr(np.int32, (n, 2), coord),
        cand_moved=arr(np.uint8, n, st.integers(0, 1)),
        cand_updated=arr(np.uint8, n, st.integers(0, 1)),
        pub_blob=arr(np.uint8, (n, w), st.integers(0, 255)),
        own_blob=arr(np.uint8, (n, w2), st.integers(0, 255)),
        cand_owner=arr(np.uint64, n, owner),
        obs_owner=arr(np.uint64, m, owner),
        wide_handles=wide,
    )


def payloads(buf: npt.NDArray[np.uint8], off: npt.NDArray[np.int64]) -> list[bytes]:
    assert buf.dtype == np.uint8 and off.dtype == np.int64
    assert off[0] == 0 and off[-1] == buf.shape[0]
    return [buf[off[i] : off[i + 1]].tobytes() for i in range(off.shape[0] - 1)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encode_cases())
def test_encoder_matches_struct_reference(case: EncodeCase) -> None:
    assert payloads(*snap.encode_snapshots(*case.args())) == reference_encode(case)


def _case(wide: bool = False) -> EncodeCase:
    rng = np.random.default_rng(5)
    n = 6
    return EncodeCase(
        tick=2**32 + 77,
        reset=np.array([0, 1], np.uint8),
        base_q=np.array([[100, -100], [0, 0]], np.int32),
        cur_off=np.array([0, 4, 7], np.int64),
        cur_idx=np.array([3, 0, 5, 1, 2, 4, 0], np.int32),
        cur_handle=np.array([0, 1, 2, 3, 7, 3, 1], np.uint16),
        cur_state=np.array([1, 0, 0, 0, 0, 1, 0], np.uint8),
        leave_off=np.array([0, 2, 3], np.int64),
        leave_handle=np.array([4, 5, 9], np.uint16),
        cand_ids=rng.integers(0, 2**64 - 1, n, dtype=np.uint64),
        cand_kind=np.arange(n, dtype=np.uint16),
        cand_q=np.array([[100, -100], [40000, -40000], [5, 5], [0, 0], [1, 2], [-3, 9]], np.int32),
        cand_moved=np.array([1, 1, 0, 1, 0, 1], np.uint8),
        cand_updated=np.array([1, 0, 1, 1, 0, 0], np.uint8),
        pub_blob=rng.integers(0, 256, (n, 3), dtype=np.uint8),
        own_blob=rng.integers(0, 256, (n, 2), dtype=np.uint8),
        cand_owner=np.array([7, 0, 7, 1, 0, 7], np.uint64),
        obs_owner=np.array([7, 0], np.uint64),
        wide_handles=wide,
    )


@pytest.mark.parametrize("wide", [False, True])
def test_fixed_case_matches_reference(wide: bool) -> None:
    case = _case(wide)
    got = payloads(*snap.encode_snapshots(*case.args()))
    assert got == reference_encode(case)
    # Observer 1 is a reset: flags say so, and every visible entry is a spawn.
    assert got[1][0] == snap.FLAG_RESET | (snap.FLAG_WIDE if wide else 0)
    assert struct.unpack_from("<HHHH", got[1], 13) == (0, 3, 0, 0)


def test_compiled_matches_py_func() -> None:
    for wide in (False, True):
        args = _case(wide).args()
        c_buf, c_off, c_status, c_bad = snap.encode_snapshot_payloads(*args)
        p_buf, p_off, p_status, p_bad = py_func(snap.encode_snapshot_payloads)(*args)
        assert (c_status, c_bad) == (p_status, p_bad) == (snap.ENCODE_OK, -1)
        assert np.array_equal(c_off, p_off) and np.array_equal(c_buf, p_buf)
    pos = np.array([[0.3, -7.25], [1e12, np.nan], [0.0, 0.0]], np.float32)
    q_last = np.array([[30, -725], [0, 0], [1, 0]], np.int32)
    c = snap.quantize_positions(pos, 0.01, q_last)
    p = py_func(snap.quantize_positions)(pos, 0.01, q_last)
    assert np.array_equal(c[0], p[0]) and np.array_equal(c[1], p[1])


def _size_args(c: EncodeCase) -> tuple[Any, ...]:
    return (
        c.reset,
        c.cur_off,
        c.cur_idx,
        c.cur_handle,
        c.cur_state,
        c.leave_off,
        c.leave_handle,
        c.cand_moved,
        c.cand_updated,
        c.cand_owner,
        c.obs_owner,
        c.pub_blob.shape[1],
        c.own_blob.shape[1],
        c.wide_handles,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encode_cases())
def test_two_passes_compiled_match_py_func(case: EncodeCase) -> None:
    # The sizing and writing passes on their own, compiled and as plain Python.
    m = case.reset.shape[0]
    results = []
    for size, write in (
        (snap.size_snapshot_payloads, snap.write_snapshot_payloads),
        (py_func(snap.size_snapshot_payloads), py_func(snap.write_snapshot_payloads)),
    ):
        off = np.full(m + 1, -1, np.int64)
        counts = np.full((m, 4), -1, np.int64)
        status, bad = size(*_size_args(case), off, counts)
        if status != snap.ENCODE_OK:
            results.append((status, bad, None, None))
            continue
        buf = np.full(int(off[m]), 0xEE, np.uint8)
        write(np.int64(case.tick), *case.args()[1:], off, counts, buf)
        results.append((status, bad, off, buf))
    (cs, cb, c_off, c_buf), (ps, pb, p_off, p_buf) = results
    assert (cs, cb) == (ps, pb)
    if cs == snap.ENCODE_OK:
        assert cb == -1
        assert np.array_equal(c_off, p_off) and np.array_equal(c_buf, p_buf)
        assert [c_buf[c_off[i] : c_off[i + 1]].tobytes() for i in range(m)] == reference_encode(
            case
        )


def test_sizing_reports_the_first_bad_observer() -> None:
    case = _case(wide=False)
    m = case.reset.shape[0]
    off, counts = np.empty(m + 1, np.int64), np.empty((m, 4), np.int64)
    assert snap.size_snapshot_payloads(*_size_args(case), off, counts) == (snap.ENCODE_OK, -1)
    assert off.tolist() == [0, *np.cumsum([len(p) for p in reference_encode(case)]).tolist()]
    # Observer 1 is a reset: a wide leave handle there is dropped, a wide visible one is not.
    case.leave_handle = np.array([4, 5, 300], np.uint16)
    assert snap.size_snapshot_payloads(*_size_args(case), off, counts) == (snap.ENCODE_OK, -1)
    case.cur_handle = case.cur_handle.copy()
    case.cur_handle[6] = 256
    assert snap.size_snapshot_payloads(*_size_args(case), off, counts) == (
        snap.ENCODE_HANDLE_TOO_WIDE,
        1,
    )
    case.leave_handle = np.array([4, 256, 9], np.uint16)
    assert snap.size_snapshot_payloads(*_size_args(case), off, counts) == (
        snap.ENCODE_HANDLE_TOO_WIDE,
        0,
    )


def test_long_sections_and_wide_blobs() -> None:
    # Lists far longer than one cache line of entries, blobs wider than a machine word,
    # every kind of entry at once, against the struct reference.
    rng = np.random.default_rng(9)
    n, m = 3000, 12
    lists = [rng.choice(n, size=int(rng.integers(0, 700)), replace=False) for _ in range(m)]
    cur_off = np.zeros(m + 1, np.int64)
    cur_off[1:] = np.cumsum([len(x) for x in lists])
    v = int(cur_off[-1])
    leave_n = rng.integers(0, 50, m)
    leave_off = np.zeros(m + 1, np.int64)
    leave_off[1:] = np.cumsum(leave_n)
    for wide in (False, True):
        case = EncodeCase(
            tick=2**40 + 3,
            reset=(rng.random(m) < 0.2).astype(np.uint8),
            base_q=rng.integers(-(2**31), 2**31, (m, 2)).astype(np.int32),
            cur_off=cur_off,
            cur_idx=np.concatenate(lists).astype(np.int32),
            cur_handle=rng.integers(0, 65536 if wide else 256, v).astype(np.uint16),
            cur_state=(rng.random(v) < 0.1).astype(np.uint8),
            leave_off=leave_off,
            leave_handle=rng.integers(0, 65536 if wide else 256, int(leave_off[-1])).astype(
                np.uint16
            ),
            cand_ids=rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
            cand_kind=rng.integers(0, 65536, n).astype(np.uint16),
            cand_q=rng.integers(-(2**31), 2**31, (n, 2)).astype(np.int32),
            cand_moved=(rng.random(n) < 0.7).astype(np.uint8),
            cand_updated=(rng.random(n) < 0.3).astype(np.uint8),
            pub_blob=rng.integers(0, 256, (n, 37), dtype=np.uint8),
            own_blob=rng.integers(0, 256, (n, 11), dtype=np.uint8),
            cand_owner=rng.integers(0, 4, n).astype(np.uint64),
            obs_owner=rng.integers(0, 4, m).astype(np.uint64),
            wide_handles=wide,
        )
        assert payloads(*snap.encode_snapshots(*case.args())) == reference_encode(case)


@pytest.mark.parametrize("wide", [False, True])
def test_moved_entity_costs_at_most_8_bytes(wide: bool) -> None:
    n = 50
    rng = np.random.default_rng(2)
    case = EncodeCase(
        tick=1,
        reset=np.zeros(1, np.uint8),
        base_q=np.zeros((1, 2), np.int32),
        cur_off=np.array([0, n], np.int64),
        cur_idx=np.arange(n, dtype=np.int32),
        cur_handle=np.arange(n, dtype=np.uint16),
        cur_state=np.zeros(n, np.uint8),
        leave_off=np.zeros(2, np.int64),
        leave_handle=np.zeros(0, np.uint16),
        cand_ids=np.arange(n, dtype=np.uint64),
        cand_kind=np.zeros(n, np.uint16),
        cand_q=rng.integers(-1000, 1000, (n, 2)).astype(np.int32),
        cand_moved=np.ones(n, np.uint8),
        cand_updated=np.zeros(n, np.uint8),
        pub_blob=np.zeros((n, 16), np.uint8),
        own_blob=np.zeros((n, 8), np.uint8),
        cand_owner=np.zeros(n, np.uint64),
        obs_owner=np.zeros(1, np.uint64),
        wide_handles=wide,
    )
    _, off = snap.encode_snapshots(*case.args())
    per_move = (int(off[1]) - snap.HEADER_SIZE) / n
    assert per_move == (6 if wide else 5)
    assert per_move <= 8


def test_encoder_rejects_bad_input() -> None:
    case = _case(wide=False)
    case.cur_handle = case.cur_handle.copy()
    case.cur_handle[2] = 256
    with pytest.raises(ValueError, match="wide_handles"):
        snap.encode_snapshots(*case.args())
    case = _case(wide=False)
    case.leave_handle = np.array([4, 300, 9], np.uint16)
    with pytest.raises(ValueError, match="wide_handles"):
        snap.encode_snapshots(*case.args())
    # A reset drops despawns, so a wide leave handle there is harmless.
    case.leave_handle = np.array([4, 5, 300], np.uint16)
    snap.encode_snapshots(*case.args())

    case = _case(wide=True)
    case.leave_off = np.array([0, 65536, 65536], np.int64)
    case.leave_handle = np.zeros(65536, np.uint16)
    with pytest.raises(ValueError, match="65535"):
        snap.encode_snapshots(*case.args())

    case = _case()
    case.cur_idx = case.cur_idx.copy()
    case.cur_idx[0] = 6
    with pytest.raises(ValueError, match="outside"):
        snap.encode_snapshots(*case.args())
    case = _case()
    case.cur_off = np.array([0, 8, 7], np.int64)
    with pytest.raises(ValueError, match="CSR"):
        snap.encode_snapshots(*case.args())
    case = _case()
    case.pub_blob = case.pub_blob[:-1]
    with pytest.raises(ValueError, match="pub_blob"):
        snap.encode_snapshots(*case.args())
    case = _case()
    case.base_q = case.base_q[:1]
    with pytest.raises(ValueError, match="base_q"):
        snap.encode_snapshots(*case.args())


def test_no_observers() -> None:
    case = _case()
    empty = EncodeCase(
        **{
            **case.__dict__,
            "reset": np.zeros(0, np.uint8),
            "base_q": np.zeros((0, 2), np.int32),
            "cur_off": np.zeros(1, np.int64),
            "cur_idx": np.zeros(0, np.int32),
            "cur_handle": np.zeros(0, np.uint16),
            "cur_state": np.zeros(0, np.uint8),
            "leave_off": np.zeros(1, np.int64),
            "leave_handle": np.zeros(0, np.uint16),
            "obs_owner": np.zeros(0, np.uint64),
        }
    )
    buf, off = snap.encode_snapshots(*empty.args())
    assert buf.shape == (0,) and off.tolist() == [0]


def test_warm_up_runs() -> None:
    snap.warm_up()
