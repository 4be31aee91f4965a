"""Snapshot decoder and client mirror: round trips, a multi-tick simulation, fuzzing."""

from __future__ import annotations

import contextlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardworld.kernels import snapshot as ksnap
from shardworld.kernels.visibility import diff_visibility
from shardworld.protocol import snapshot as psnap
from shardworld.protocol.snapshot import (
    Move,
    Snapshot,
    SnapshotDecodeError,
    SnapshotMirror,
    SnapshotMirrorError,
    Spawn,
    Update,
    decode_snapshot,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "snapshot-format.md"


def test_layout_constants_agree() -> None:
    assert psnap.FLAG_RESET == ksnap.FLAG_RESET
    assert psnap.FLAG_WIDE == ksnap.FLAG_WIDE
    assert psnap.HEADER_SIZE == ksnap.HEADER_SIZE == 21


# --- a hand-written payload builder (independent of the encoder) ------------------------


def build(
    *,
    flags: int = 0,
    tick: int = 0,
    base: tuple[int, int] = (0, 0),
    despawns: tuple[int, ...] = (),
    spawns: tuple[Spawn, ...] = (),
    moves: tuple[Move, ...] = (),
    updates: tuple[Update, ...] = (),
) -> bytes:
    h = "<H" if flags & psnap.FLAG_WIDE else "<B"
    out = [
        struct.pack(
            "<BIiiHHHH", flags, tick, *base, len(despawns), len(spawns), len(moves), len(updates)
        )
    ]
    out += [struct.pack(h, x) for x in despawns]
    for s in spawns:
        out.append(
            struct.pack(h, s.handle) + struct.pack("<QHhhB", s.id, s.kind, s.rx, s.ry, s.owned)
        )
        out.append(s.pub + (s.own or b""))
    for m in moves:
        out.append(struct.pack(h, m.handle) + struct.pack("<hh", m.rx, m.ry))
    for u in updates:
        out.append(struct.pack(h, u.handle) + struct.pack("<B", u.owned) + u.pub + (u.own or b""))
    return b"".join(out)


def spawn(handle: int, ident: int, *, rx: int = 0, ry: int = 0, own: bytes | None = None) -> Spawn:
    return Spawn(handle, ident, 1, rx, ry, own is not None, b"pp", own)


# --- random encoder inputs -----------------------------------------------------------


@dataclass
class Case:
    args: dict[str, Any]
    w: int
    w2: int


def random_case(rng: np.random.Generator, wide: bool) -> Case:
    n = int(rng.integers(0, 15))
    m = int(rng.integers(0, 5))
    w, w2 = int(rng.integers(0, 4)), int(rng.integers(0, 3))
    hmax = 65536 if wide else 256
    lists, leaves = [], []
    for _ in range(m):
        k = int(rng.integers(0, n + 1))
        lists.append(rng.choice(n, size=k, replace=False))
        leaves.append(rng.choice(hmax, size=int(rng.integers(0, 4)), replace=False))
    handles = [rng.choice(hmax, size=len(x), replace=False) for x in lists]

    def off(parts: list[npt.NDArray[Any]]) -> npt.NDArray[np.int64]:
        o = np.zeros(len(parts) + 1, np.int64)
        o[1:] = np.cumsum([len(x) for x in parts]) if parts else []
        return o

    def cat(parts: list[npt.NDArray[Any]], dtype: Any) -> npt.NDArray[Any]:
        return np.concatenate([np.asarray(x, dtype) for x in parts] + [np.zeros(0, dtype)])

    v = sum(len(x) for x in lists)
    big = rng.random() < 0.3
    span = 2**31 - 1 if big else 30_000
    return Case(
        args={
            "tick": int(rng.integers(0, 2**40)),
            "reset": (rng.random(m) < 0.3).astype(np.uint8),
            "base_q": rng.integers(-span, span, (m, 2)).astype(np.int32),
            "cur_off": off(lists),
            "cur_idx": cat(lists, np.int32),
            "cur_handle": cat(handles, np.uint16),
            "cur_state": (rng.random(v) < 0.4).astype(np.uint8),
            "leave_off": off(leaves),
            "leave_handle": cat(leaves, np.uint16),
            "cand_ids": rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
            "cand_kind": rng.integers(0, 2**16, n).astype(np.uint16),
            "cand_q": rng.integers(-span, span, (n, 2)).astype(np.int32),
            "cand_moved": (rng.random(n) < 0.5).astype(np.uint8),
            "cand_updated": (rng.random(n) < 0.5).astype(np.uint8),
            "pub_blob": rng.integers(0, 256, (n, w)).astype(np.uint8),
            "own_blob": rng.integers(0, 256, (n, w2)).astype(np.uint8),
            "cand_owner": rng.integers(0, 3, n).astype(np.uint64),
            "obs_owner": rng.integers(0, 3, m).astype(np.uint64),
            "wide_handles": wide,
        },
        w=w,
        w2=w2,
    )


def encode(case: Case) -> list[bytes]:
    buf, off = ksnap.encode_snapshots(**case.args)
    return [buf[off[i] : off[i + 1]].tobytes() for i in range(off.shape[0] - 1)]


def expected_snapshot(case: Case, i: int) -> Snapshot:
    """What observer ``i``'s payload must decode to, straight from the encoder's inputs."""
    a = case.args
    full = bool(a["reset"][i])
    bx, by = int(a["base_q"][i, 0]), int(a["base_q"][i, 1])
    me = int(a["obs_owner"][i])
    despawns = (
        () if full else tuple(a["leave_handle"][a["leave_off"][i] : a["leave_off"][i + 1]].tolist())
    )
    spawns, moves, updates = [], [], []
    for k in range(a["cur_off"][i], a["cur_off"][i + 1]):
        j = int(a["cur_idx"][k])
        h = int(a["cur_handle"][k])
        owned = me != 0 and int(a["cand_owner"][j]) == me
        rx = max(-32768, min(32767, int(a["cand_q"][j, 0]) - bx))
        ry = max(-32768, min(32767, int(a["cand_q"][j, 1]) - by))
        pub = a["pub_blob"][j].tobytes()
        own = a["own_blob"][j].tobytes() if owned else None
        if full or a["cur_state"][k]:
            spawns.append(
                Spawn(h, int(a["cand_ids"][j]), int(a["cand_kind"][j]), rx, ry, owned, pub, own)
            )
            continue
        if a["cand_moved"][j]:
            moves.append(Move(h, rx, ry))
        if a["cand_updated"][j]:
            updates.append(Update(h, owned, pub, own))
    flags = (psnap.FLAG_RESET if full else 0) | (psnap.FLAG_WIDE if a["wide_handles"] else 0)
    header = psnap.SnapshotHeader(
        flags, a["tick"] & 0xFFFFFFFF, bx, by, len(despawns), len(spawns), len(moves), len(updates)
    )
    return Snapshot(header, despawns, tuple(spawns), tuple(moves), tuple(updates))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), wide=st.booleans())
def test_decode_encode_round_trip(seed: int, wide: bool) -> None:
    case = random_case(np.random.default_rng(seed), wide)
    for i, payload in enumerate(encode(case)):
        got = decode_snapshot(payload, case.w, case.w2)
        assert got == expected_snapshot(case, i)
        # Same result from the other accepted buffer types.
        assert decode_snapshot(np.frombuffer(payload, np.uint8), case.w, case.w2) == got
        assert decode_snapshot(memoryview(bytearray(payload)), case.w, case.w2) == got


# --- multi-tick simulation ----------------------------------------------------------


@dataclass
class Client:
    player: int
    mirror: SnapshotMirror
    prev: int = -1  # index of this client's list in the previous diff output, -1 for none
    visible: set[int] = field(default_factory=set)  # entity indices, the zone's truth
    joined: bool = True


def test_mirror_tracks_truth_over_many_ticks() -> None:
    rng = np.random.default_rng(2024)
    n_ent, quantum, w, w2 = 150, 0.05, 3, 2
    ids = np.unique(rng.integers(1, 2**64 - 1, 2 * n_ent, dtype=np.uint64))[:n_ent]
    rng.shuffle(ids)
    kind = rng.integers(0, 5, n_ent).astype(np.uint16)
    pos = rng.uniform(-100, 100, (n_ent, 2)).astype(np.float32)
    hp = rng.integers(0, 1000, n_ent).astype(np.uint16)
    status = rng.integers(0, 255, n_ent).astype(np.uint8)
    ammo = rng.integers(0, 50, n_ent).astype(np.uint16)
    owner = rng.integers(0, 6, n_ent).astype(np.uint64)
    q_last = np.zeros((n_ent, 2), np.int32)
    last_pub = np.zeros((n_ent, w), np.uint8)
    last_own = np.zeros((n_ent, w2), np.uint8)
    last_owner = owner.copy()

    clients: list[Client] = []
    next_player = 1
    prev_off = np.zeros(1, np.int64)
    prev_ids = np.zeros(0, np.uint64)
    prev_handles = np.zeros(0, np.uint16)
    checked = 0

    for tick in range(50):
        # The world changes: walks, field edits, ownership changes.
        step = rng.random(n_ent) < 0.4
        pos[step] += rng.normal(0, 0.3, (int(step.sum()), 2)).astype(np.float32)
        hp[rng.random(n_ent) < 0.1] += 1
        ammo[rng.random(n_ent) < 0.05] += 1
        flip = rng.random(n_ent) < 0.03
        owner[flip] = rng.integers(0, 6, int(flip.sum())).astype(np.uint64)

        # Observers come and go; a few get a resync.
        clients = [c for c in clients if rng.random() > 0.05]
        while len(clients) < 4 or (len(clients) < 8 and rng.random() < 0.2):
            player = 0 if rng.random() < 0.2 else next_player % 6
            clients.append(Client(player, SnapshotMirror(w, w2)))
            next_player += 1
        for c in clients:
            keep = {e for e in c.visible if rng.random() < 0.85}
            extra = set(rng.choice(n_ent, size=int(rng.integers(0, 20)), replace=False).tolist())
            c.visible = keep | extra if rng.random() > 0.05 else set()

        # Candidate rows are a fresh permutation each tick: the pipeline must key on ids.
        perm = rng.permutation(n_ent)
        row_of = np.empty(n_ent, np.int64)
        row_of[perm] = np.arange(n_ent)
        q, moved = ksnap.quantize_positions(pos[perm], quantum, q_last[perm])
        pub = ksnap.pack_columns([hp[perm], status[perm]], n_ent)
        own = ksnap.pack_columns([ammo[perm]], n_ent)
        updated = (
            (pub != last_pub[perm]).any(axis=1)
            | (own != last_own[perm]).any(axis=1)
            | (owner[perm] != last_owner[perm])
        ).astype(np.uint8)

        vis_lists = [rng.permutation([int(row_of[e]) for e in c.visible]) for c in clients]
        vis_off = np.zeros(len(clients) + 1, np.int64)
        vis_off[1:] = np.cumsum([len(x) for x in vis_lists])
        vis_idx = np.concatenate(
            [np.asarray(x, np.int32) for x in vis_lists] + [np.zeros(0, np.int32)]
        )
        obs_prev = np.array([c.prev for c in clients], np.int32)
        cur_off, cur_ids, cur_idx, cur_handle, cur_state, leave_off, _, leave_handle = (
            diff_visibility(vis_off, vis_idx, ids[perm], obs_prev, prev_off, prev_ids, prev_handles)
        )
        reset = np.array([c.joined or rng.random() < 0.05 for c in clients], np.uint8)
        base_q = rng.integers(-2000, 2000, (len(clients), 2)).astype(np.int32)
        wide = bool(tick % 2)
        buf, off = ksnap.encode_snapshots(
            tick, reset, base_q, cur_off, cur_idx, cur_handle, cur_state, leave_off, leave_handle,
            ids[perm], kind[perm], q, moved, updated, pub, own, owner[perm],
            np.array([c.player for c in clients], np.uint64), wide,
        )  # fmt: skip

        for i, c in enumerate(clients):
            snap = c.mirror.apply(buf[off[i] : off[i + 1]])
            assert snap.header.tick == tick and snap.header.reset == bool(reset[i])
            assert c.mirror.ids() == {int(ids[e]) for e in c.visible}
            assert len(c.mirror) == len(c.visible)
            for k in range(cur_off[i], cur_off[i + 1]):
                j = int(cur_idx[k])
                ent = c.mirror[int(cur_handle[k])]
                assert c.mirror.handle_of(int(cur_ids[k])) == int(cur_handle[k])
                assert ent.id == int(ids[perm[j]]) == int(cur_ids[k])
                assert ent.kind == int(kind[perm[j]])
                assert (ent.qx, ent.qy) == (int(q[j, 0]), int(q[j, 1]))
                assert ent.pub == pub[j].tobytes()
                is_owner = c.player != 0 and int(owner[perm[j]]) == c.player
                assert ent.own == (own[j].tobytes() if is_owner else None)
                checked += 1
            c.prev = i
            c.joined = False

        prev_off, prev_ids, prev_handles = cur_off, cur_ids, cur_handle
        q_last[perm] = q
        last_pub[perm] = pub
        last_own[perm] = own
        last_owner = owner.copy()

    assert checked > 2000  # the loop really exercised the mirror


# --- the worked example in docs/snapshot-format.md ------------------------------------


def doc_example_bytes() -> bytes:
    text = DOC.read_text()
    block = re.search(r"<!-- worked-example-payload -->\s*```text\n(.*?)```", text, re.S)
    assert block is not None
    return bytes.fromhex(block.group(1))


def test_doc_worked_example() -> None:
    a, b, c, d = (0x0001000000000010 + k for k in range(4))
    cand_ids = np.array([d, c, a], np.uint64)
    res = diff_visibility(
        np.array([0, 3], np.int64),
        np.array([2, 0, 1], np.int32),
        cand_ids,
        np.array([0], np.int32),
        np.array([0, 3], np.int64),
        np.array([a, b, c], np.uint64),
        np.array([0, 1, 2], np.uint16),
    )
    cur_off, _, cur_idx, cur_handle, cur_state, leave_off, _, leave_handle = res
    buf, _ = ksnap.encode_snapshots(
        0x12345, np.zeros(1, np.uint8), np.array([[1000, -500]], np.int32),
        cur_off, cur_idx, cur_handle, cur_state, leave_off, leave_handle,
        cand_ids, np.array([3, 2, 1], np.uint16),
        np.array([[995, -505], [1000, -500], [1010, -480]], np.int32),
        np.array([0, 0, 1], np.uint8), np.array([0, 1, 0], np.uint8),
        ksnap.pack_columns([np.array([100, 250, 80], np.uint16)], 3),
        ksnap.pack_columns([np.array([0, 7, 0], np.uint8)], 3),
        np.array([0, 42, 0], np.uint64), np.array([42], np.uint64), False,
    )  # fmt: skip
    payload = doc_example_bytes()
    assert len(payload) == 50
    assert buf.tobytes() == payload

    mirror = SnapshotMirror(pub_width=2, own_width=1)
    mirror.apply(
        build(
            flags=psnap.FLAG_RESET,
            base=(1000, -500),
            spawns=(
                Spawn(0, a, 1, 0, 0, False, b"\x50\x00", None),
                Spawn(1, b, 1, 3, 3, False, b"\x01\x00", None),
                Spawn(2, c, 2, 0, 0, True, b"\x10\x00", b"\x03"),
            ),
        )
    )
    got = mirror.apply(payload)
    assert got.header.tick == 0x12345 and got.despawns == (1,)
    assert (mirror[0].id, mirror[0].qx, mirror[0].qy) == (a, 1010, -480)
    assert (mirror[1].id, mirror[1].kind, mirror[1].qx, mirror[1].qy) == (d, 3, 995, -505)
    assert mirror[1].pub == b"\x64\x00" and mirror[1].own is None
    assert (mirror[2].id, mirror[2].qx, mirror[2].qy) == (c, 1000, -500)
    assert mirror[2].pub == b"\xfa\x00" and mirror[2].own == b"\x07"
    assert mirror.handle_of(b) is None and mirror.handle_of(d) == 1


# --- decoder strictness ---------------------------------------------------------------


def test_decoder_rejects_malformed() -> None:
    good = build(spawns=(spawn(0, 9, own=b"o"),), updates=(Update(0, True, b"pp", b"o"),))
    decode_snapshot(good, 2, 1)
    for i in range(len(good)):
        with pytest.raises(SnapshotDecodeError):
            decode_snapshot(good[:i], 2, 1)
    with pytest.raises(SnapshotDecodeError, match="trailing"):
        decode_snapshot(good + b"\x00", 2, 1)
    with pytest.raises(SnapshotDecodeError, match="reserved"):
        decode_snapshot(bytes([0x04]) + good[1:], 2, 1)
    owned_at = psnap.HEADER_SIZE + 1 + 14
    with pytest.raises(SnapshotDecodeError, match="owned"):
        decode_snapshot(good[:owned_at] + b"\x02" + good[owned_at + 1 :], 2, 1)
    with pytest.raises(SnapshotDecodeError, match="owned"):
        decode_snapshot(good[:-4] + b"\x05" + good[-3:], 2, 1)
    with pytest.raises(SnapshotDecodeError):  # wrong widths shift everything
        decode_snapshot(good, 3, 1)
    with pytest.raises(SnapshotDecodeError):
        decode_snapshot(np.zeros(30, np.int32), 0, 0)
    with pytest.raises(SnapshotDecodeError):
        decode_snapshot("not bytes", 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decode_snapshot(good, -1, 0)


def test_mirror_rejects_inconsistent_payloads_atomically() -> None:
    mirror = SnapshotMirror(2, 1)
    mirror.apply(build(flags=psnap.FLAG_RESET, spawns=(spawn(0, 100), spawn(1, 101, own=b"x"))))
    before = dict(mirror.entities)
    bad = [
        build(despawns=(5,)),
        build(despawns=(0, 0)),
        build(spawns=(spawn(1, 555),)),
        build(spawns=(spawn(7, 100),)),
        build(spawns=(spawn(7, 300), spawn(8, 300))),
        build(moves=(Move(9, 1, 1),)),
        build(updates=(Update(9, False, b"zz", None),)),
        # Valid steps first, then a bad one: nothing of it may stick.
        build(despawns=(0,), spawns=(spawn(2, 102),), moves=(Move(0, 1, 1),)),
    ]
    for payload in bad:
        with pytest.raises(SnapshotMirrorError):
            mirror.apply(payload)
        assert dict(mirror.entities) == before
        assert mirror.handle_of(100) == 0 and mirror.handle_of(102) is None
    # A despawn frees the handle for a spawn in the same payload.
    mirror.apply(build(tick=5, despawns=(0,), spawns=(spawn(0, 200, rx=3, ry=-4),)))
    assert mirror.handle_of(100) is None and mirror.handle_of(200) == 0
    assert (mirror[0].qx, mirror[0].qy) == (3, -4) and mirror.tick == 5
    # RESET drops everything first.
    mirror.apply(build(flags=psnap.FLAG_RESET | psnap.FLAG_WIDE, spawns=(spawn(300, 7),)))
    assert list(mirror) == [300] and mirror.ids() == {7} and 0 not in mirror


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=120), w=st.integers(0, 4), w2=st.integers(0, 3))
def test_fuzz_random_bytes(data: bytes, w: int, w2: int) -> None:
    with contextlib.suppress(SnapshotDecodeError):
        decode_snapshot(data, w, w2)
    mirror = SnapshotMirror(w, w2)
    with contextlib.suppress(SnapshotDecodeError):
        mirror.apply(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), wide=st.booleans(), edits=st.data())
def test_fuzz_mutated_payloads(seed: int, wide: bool, edits: st.DataObject) -> None:
    case = random_case(np.random.default_rng(seed), wide)
    valid = [p for p in encode(case) if p]
    if not valid:
        return
    payload = bytearray(edits.draw(st.sampled_from(valid)))
    for _ in range(edits.draw(st.integers(1, 4))):
        op = edits.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = edits.draw(st.integers(0, max(len(payload) - 1, 0)))
        if op == "flip" and payload:
            payload[at] ^= 1 << edits.draw(st.integers(0, 7))
        elif op == "set" and payload:
            payload[at] = edits.draw(st.integers(0, 255))
        elif op == "cut":
            del payload[at:]
        elif op == "insert":
            payload[at:at] = edits.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and payload:
            del payload[at]
    mirror = SnapshotMirror(case.w, case.w2)
    for target in (lambda p: decode_snapshot(p, case.w, case.w2), mirror.apply):
        with contextlib.suppress(SnapshotDecodeError):
            target(bytes(payload))
