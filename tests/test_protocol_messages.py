"""Protocol v1 messages: round trips, every malformed case, fuzzing, the doc's examples and
the shared test vectors in tests/vectors/protocol_v1.json.

Run this file as a script to rewrite the vectors from the codec::

    .venv/bin/python tests/test_protocol_messages.py
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shardworld.entities import Field, Schema, Scope
from shardworld.kernels import snapshot as ksnap
from shardworld.protocol import messages as pm
from shardworld.protocol.messages import (
    FIELD_DTYPES,
    MAX_BODY_DEPTH,
    MAX_CUSTOM_BODY,
    MAX_HELLO_STR,
    MAX_KIND_LEN,
    PROTOCOL_VERSION,
    AnyMessage,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Input,
    Kick,
    Message,
    MsgType,
    Ping,
    Pong,
    ProtocolError,
    Snapshot,
    Welcome,
    blob_layout,
    blob_width,
    decode_client,
    decode_server,
    encode,
    encode_snapshot,
    snapshot_prefix,
)
from shardworld.protocol.snapshot import SnapshotMirror, decode_snapshot

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"
SNAPSHOT_DOC = ROOT / "docs" / "snapshot-format.md"
VECTORS = ROOT / "tests" / "vectors" / "protocol_v1.json"

U32 = 2**32 - 1
U64 = 2**64 - 1
F32_MAX = float(np.finfo(np.float32).max)

pack = msgpack.Packer(use_bin_type=True).pack

CLIENT_TYPES = {MsgType.HELLO, MsgType.INPUT, MsgType.MESSAGE, MsgType.PING}
SERVER_TYPES = {
    MsgType.WELCOME,
    MsgType.SNAPSHOT,
    MsgType.MESSAGE,
    MsgType.PONG,
    MsgType.ERROR,
    MsgType.KICK,
}
TYPE_OF: dict[type, MsgType] = {
    Hello: MsgType.HELLO,
    Welcome: MsgType.WELCOME,
    Input: MsgType.INPUT,
    Snapshot: MsgType.SNAPSHOT,
    Message: MsgType.MESSAGE,
    Ping: MsgType.PING,
    Pong: MsgType.PONG,
    Error: MsgType.ERROR,
    Kick: MsgType.KICK,
}


def decode(direction: str, data: bytes) -> AnyMessage:
    return decode_client(data) if direction == "client" else decode_server(data)


# --- plain JSON form of a message (used by the doc examples and the vectors) -----------

# JSON numbers lose precision above 2**53 in JavaScript, so 64-bit fields are strings.
U64_FIELDS = frozenset({"entity_id", "player_id", "nonce"})


def to_json(msg: AnyMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"type": TYPE_OF[type(msg)].name}
    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        if f.name in U64_FIELDS:
            v = str(v)
        elif isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return json.loads(json.dumps(out))


# --- round trips ------------------------------------------------------------------------

u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
finite = st.floats(allow_nan=False, allow_infinity=False)
intent = st.floats(-F32_MAX, F32_MAX, allow_nan=False)


def text_upto(n: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=n).filter(lambda s: min_size <= len(s.encode()) <= n)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | finite
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
bodies = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
kinds = text_upto(MAX_KIND_LEN, 1)
field_descs = st.fixed_dictionaries(
    {
        "name": st.text(min_size=1, max_size=10),
        "dtype": st.sampled_from(FIELD_DTYPES),
        "shape": st.lists(st.integers(1, 5), max_size=2),
        "scope": st.sampled_from(["public", "owner"]),
    }
)

hellos = st.builds(
    Hello,
    version=st.just(PROTOCOL_VERSION),
    token=text_upto(MAX_HELLO_STR),
    resume=text_upto(MAX_HELLO_STR),
    client=text_upto(MAX_HELLO_STR),
)
inputs = st.builds(Input, seq=u32, ix=intent, iy=intent, actions=u32)
client_msgs = st.builds(Message, kind=kinds, body=bodies)
pings = st.builds(Ping, nonce=u64, client_time=finite)

welcomes = st.builds(
    Welcome,
    version=u32,
    entity_id=u64,
    player_id=u64,
    world=st.tuples(finite, finite, finite, finite),
    tick_hz=st.floats(1e-3, 1e4),
    snapshot_hz=st.floats(1e-3, 1e4),
    pos_quantum=st.floats(1e-6, 10.0),
    server_time=finite,
    resume_token=text_upto(MAX_HELLO_STR),
    resumed=st.booleans(),
    pub_fields=st.lists(field_descs, max_size=4).map(tuple),
    own_fields=st.lists(field_descs, max_size=4).map(tuple),
    world_name=st.text(max_size=20),
)
snapshots = st.builds(Snapshot, tick=u32, ack=u32, payload=st.binary(max_size=600))
pongs = st.builds(Pong, nonce=u64, client_time=finite, server_time=finite)
codes = st.one_of(st.sampled_from(list(ErrorCode)), u32)
errors = st.builds(Error, code=codes, text=st.text(max_size=50))
kicks = st.builds(Kick, code=codes, reason=st.text(max_size=50))


@settings(max_examples=80, deadline=None)
@given(msg=st.one_of(hellos, inputs, client_msgs, pings))
def test_client_messages_round_trip(msg: AnyMessage) -> None:
    data = encode(msg)
    assume(len(data) <= pm.MAX_CLIENT_MESSAGE)
    back = decode_client(data)
    assert type(back) is type(msg)
    assert back == msg
    assert encode(back) == data
    assert msgpack.unpackb(data)[0] == TYPE_OF[type(msg)]


@settings(max_examples=80, deadline=None)
@given(msg=st.one_of(welcomes, snapshots, client_msgs, pongs, errors, kicks))
def test_server_messages_round_trip(msg: AnyMessage) -> None:
    data = encode(msg)
    back = decode_server(data)
    assert type(back) is type(msg)
    assert back == msg
    assert encode(back) == data


@settings(max_examples=60, deadline=None)
@given(msg=st.one_of(hellos, inputs, pings, welcomes, snapshots, pongs, errors, kicks))
def test_each_message_is_refused_in_the_wrong_direction(msg: AnyMessage) -> None:
    wrong = decode_server if TYPE_OF[type(msg)] in CLIENT_TYPES else decode_client
    with pytest.raises(ProtocolError) as err:
        wrong(encode(msg))
    assert err.value.code in (ErrorCode.UNKNOWN_TYPE, ErrorCode.TOO_LARGE)


@settings(max_examples=60, deadline=None)
@given(msg=st.one_of(hellos, inputs, client_msgs, pings, welcomes, pongs, errors, kicks))
def test_encoding_is_plain_msgpack(msg: AnyMessage) -> None:
    """Any msgpack library reads every message as [type, fields...] in declaration order."""
    obj = msgpack.unpackb(encode(msg), raw=False)
    assert obj[0] == TYPE_OF[type(msg)]
    names = [f.name for f in dataclasses.fields(msg)]
    assert len(obj) == 1 + len(names)
    for name, value in zip(names, obj[1:], strict=True):
        want = getattr(msg, name)
        if isinstance(want, tuple):
            assert tuple(value) == want
        else:
            assert value == want


def test_float_fields_always_travel_as_float64() -> None:
    data = encode(Input(1, 1, 0))
    assert data == bytes.fromhex("9503 01 cb3ff0000000000000 cb0000000000000000 00")
    assert decode_client(data) == Input(1, 1.0, 0.0, 0)


def test_decoders_accept_any_number_form_for_floats() -> None:
    # What a JavaScript encoder writes: whole numbers as ints, others as float32 or float64.
    assert decode_client(pack([3, 5, 1, -1, 2])) == Input(5, 1.0, -1.0, 2)
    as_f32 = b"\x94\x03\x05\xca" + struct.pack(">f", 0.5) + b"\xca" + struct.pack(">f", -0.25)
    assert decode_client(as_f32) == Input(5, 0.5, -0.25, 0)
    assert decode_client(pack([6, 9, 3])) == Ping(9, 3.0)
    assert decode_server(pack([7, 9, 3, 4])) == Pong(9, 3.0, 4.0)


def test_non_minimal_ints_and_strings_decode() -> None:
    # uint64 and str8 forms where msgpack would pick shorter ones are still valid.
    data = b"\x93\x06\xcf" + (7).to_bytes(8, "big") + b"\xcb" + struct.pack(">d", 1.5)
    assert decode_client(data) == Ping(7, 1.5)
    assert decode_client(b"\x92\x05\xd9\x04chat") == Message("chat")


def test_optional_trailing_fields_of_client_messages() -> None:
    assert decode_client(pack([1, 1])) == Hello()
    assert decode_client(pack([1, 1, "t"])) == Hello(1, "t")
    assert decode_client(pack([3, 4, 0.5, 0.5])) == Input(4, 0.5, 0.5, 0)
    assert decode_client(pack([5, "emote"])) == Message("emote", None)
    assert decode_client(pack([6, 3])) == Ping(3, 0.0)


def test_hello_of_another_version_decodes_to_its_version_only() -> None:
    # Whatever else a future HELLO holds, the server must be able to say UNSUPPORTED_VERSION.
    assert decode_client(pack([1, 2, {"x": 1}, 5, 6, 7, 8])) == Hello(2)
    assert decode_client(pack([1, 0])) == Hello(0)
    assert decode_client(pack([1, -(2**63)])) == Hello(-(2**63))
    assert decode_client(encode(Hello(7, "tok"))) == Hello(7)


def test_encode_takes_numpy_numbers() -> None:
    # What a gateway reads from the zone's columns and batches.
    msg = Input(np.uint32(5), np.float32(0.5), np.float64(-1), np.uint32(3))  # type: ignore[arg-type]
    assert decode_client(encode(msg)) == Input(5, 0.5, -1.0, 3)
    assert encode(msg) == encode(Input(5, 0.5, -1.0, 3))
    w = dataclasses.replace(
        WELCOME_EXAMPLE, entity_id=np.uint64(2**63 + 3), pos_quantum=np.float32(0.5)
    )
    assert decode_server(encode(w)) == dataclasses.replace(w, entity_id=2**63 + 3, pos_quantum=0.5)
    buf = np.arange(300, dtype=np.uint8) % 251
    snap = Snapshot(np.int64(9), np.uint32(4), buf[10:290])  # type: ignore[arg-type]
    want = Snapshot(9, 4, buf[10:290].tobytes())
    assert encode(snap) == encode(want) == encode_snapshot(9, 4, buf[10:290])
    assert decode_server(encode(snap)) == want
    assert decode_server(encode(Pong(np.uint64(U64), np.float16(1.5), 2))) == Pong(U64, 1.5, 2.0)  # type: ignore[arg-type]


def test_message_bodies_keep_nan_and_bytes() -> None:
    body = [math.nan, b"\x00\xff", {"a": [None, True, -1]}]
    back = decode_client(encode(Message("x", body)))
    assert isinstance(back, Message)
    assert math.isnan(back.body[0]) and back.body[1:] == body[1:]


def test_text_frames() -> None:
    for dec in (decode_client, decode_server):
        with pytest.raises(ProtocolError) as err:
            dec("[1, 1]")  # type: ignore[arg-type]
        assert err.value.code == ErrorCode.TEXT_FRAME


def test_decoders_take_bytearray_and_memoryview() -> None:
    data = encode(Ping(5, 2.0))
    assert decode_client(bytearray(data)) == decode_client(memoryview(data)) == Ping(5, 2.0)


# --- the snapshot envelope --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_snapshot_envelope_is_plain_msgpack(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    data = encode_snapshot(0x12345, 17, payload)
    assert msgpack.unpackb(data, raw=False) == [4, 0x12345, 17, payload]
    prefix = snapshot_prefix(0x12345, 17, size)
    assert data == prefix + payload
    assert len(prefix) == (14 if size < 256 else 15 if size < 65536 else 17)
    assert prefix[:12] == bytes.fromhex("9404ce00012345ce00000011")
    assert decode_server(data) == Snapshot(0x12345, 17, payload)


@settings(max_examples=60, deadline=None)
@given(tick=st.integers(0, 2**40), ack=st.integers(0, 2**40), payload=st.binary(max_size=300))
def test_snapshot_envelope_wraps_to_uint32(tick: int, ack: int, payload: bytes) -> None:
    data = encode_snapshot(tick, ack, payload)
    assert msgpack.unpackb(data) == [4, tick & U32, ack & U32, payload]
    assert decode_server(data) == Snapshot(tick & U32, ack & U32, payload)
    assert encode_snapshot(tick, ack, bytearray(payload)) == data
    assert encode_snapshot(tick, ack, np.frombuffer(payload, np.uint8).data) == data


def test_snapshot_prefix_refuses_impossible_lengths() -> None:
    with pytest.raises(ValueError):
        snapshot_prefix(0, 0, -1)
    with pytest.raises(ValueError):
        snapshot_prefix(0, 0, 2**32)


# --- malformed input --------------------------------------------------------------------

MAL, UNK, BAD, BIG = (
    ErrorCode.MALFORMED,
    ErrorCode.UNKNOWN_TYPE,
    ErrorCode.BAD_FIELD,
    ErrorCode.TOO_LARGE,
)
DEEP_33 = pack([5, "k", json.loads("[" * (MAX_BODY_DEPTH + 1) + "]" * (MAX_BODY_DEPTH + 1))])
DEEP_32 = pack([5, "k", json.loads("[" * MAX_BODY_DEPTH + "]" * MAX_BODY_DEPTH)])
WELCOME_OK = [
    2,
    1,
    2,
    3,
    [0.0, 0.0, 10.0, 10.0],
    20.0,
    10.0,
    0.01,
    5.0,
    "r",
    False,
    [{"name": "hp", "dtype": "<u2", "shape": [], "scope": "public"}],
    [],
    "w",
]


def welcome_with(i: int, value: Any) -> bytes:
    fields = list(WELCOME_OK)
    fields[i] = value
    return pack(fields)


def desc_with(**kv: Any) -> bytes:
    desc = {"name": "hp", "dtype": "<u2", "shape": [], "scope": "public", **kv}
    return welcome_with(11, [{k: v for k, v in desc.items() if v is not ...}])


CLIENT_CASES: list[tuple[str, bytes, ErrorCode]] = [
    ("empty", b"", MAL),
    ("reserved byte", b"\xc1", MAL),
    ("truncated array", b"\x93\x03\x01", MAL),
    ("truncated float", b"\x94\x03\x01\xcb\x00", MAL),
    ("bad utf-8", b"\x92\x05\xa2\xff\xfe", MAL),
    ("int map key", b"\x93\x05\xa1k\x81\x01\x02", MAL),
    ("an int", pack(3), MAL),
    ("a map", pack({"type": 3}), MAL),
    ("a string", pack("hello"), MAL),
    ("empty array", pack([]), MAL),
    ("string type", pack(["3", 1, 0.0, 0.0]), MAL),
    ("float type", pack([3.0, 1, 0.0, 0.0]), MAL),
    ("nil type", pack([None]), MAL),
    ("bool type", pack([True, 1]), MAL),
    ("trailing bytes", encode(Ping(1, 0.0)) + b"\x00", MAL),
    ("two messages", encode(Ping(1, 0.0)) * 2, MAL),
    ("unknown type", pack([99, 1]), UNK),
    ("type zero", pack([0]), UNK),
    ("negative type", pack([-1, 1]), UNK),
    ("huge type", pack([U64]), UNK),
    ("server type", pack([2, 1]), UNK),
    ("snapshot from a client", encode_snapshot(1, 1, b""), UNK),
    ("pong from a client", encode(Pong(1, 0.0, 0.0)), UNK),
    ("hello no fields", pack([1]), BAD),
    ("hello too many", pack([1, 1, "", "", "", ""]), BAD),
    ("hello version string", pack([1, "1"]), BAD),
    ("hello version float", pack([1, 1.0]), BAD),
    ("hello version bool", pack([1, True]), BAD),
    ("hello token int", pack([1, 1, 5]), BAD),
    ("hello token bin", pack([1, 1, b"tok"]), BAD),
    ("hello token nil", pack([1, 1, None]), BAD),
    ("hello token too long", pack([1, 1, "t" * (MAX_HELLO_STR + 1)]), BAD),
    ("hello resume too long", pack([1, 1, "", "r" * (MAX_HELLO_STR + 1)]), BAD),
    ("hello client too long", pack([1, 1, "", "", "é" * (MAX_HELLO_STR // 2 + 1)]), BAD),
    ("input two fields", pack([3, 1, 0.0]), BAD),
    ("input five fields", pack([3, 1, 0.0, 0.0, 0, 0]), BAD),
    ("input seq string", pack([3, "1", 0.0, 0.0]), BAD),
    ("input seq float", pack([3, 1.0, 0.0, 0.0]), BAD),
    ("input seq bool", pack([3, True, 0.0, 0.0]), BAD),
    ("input seq negative", pack([3, -1, 0.0, 0.0]), BAD),
    ("input seq over uint32", pack([3, 2**32, 0.0, 0.0]), BAD),
    ("input ix string", pack([3, 1, "0", 0.0]), BAD),
    ("input ix nil", pack([3, 1, None, 0.0]), BAD),
    ("input ix bool", pack([3, 1, True, 0.0]), BAD),
    ("input iy bool", pack([3, 1, 0.0, False]), BAD),
    ("input ix nan", pack([3, 1, math.nan, 0.0]), BAD),
    ("input iy inf", pack([3, 1, 0.0, math.inf]), BAD),
    ("input ix -inf", pack([3, 1, -math.inf, 0.0]), BAD),
    ("input ix over float32", pack([3, 1, 1e39, 0.0]), BAD),
    ("input actions float", pack([3, 1, 0.0, 0.0, 1.5]), BAD),
    ("input actions bool", pack([3, 1, 0.0, 0.0, False]), BAD),
    ("input actions negative", pack([3, 1, 0.0, 0.0, -1]), BAD),
    ("input actions over uint32", pack([3, 1, 0.0, 0.0, 2**32]), BAD),
    ("message no fields", pack([5]), BAD),
    ("message three fields", pack([5, "k", 1, 2]), BAD),
    ("message kind int", pack([5, 7, None]), BAD),
    ("message kind bin", pack([5, b"chat", None]), BAD),
    ("message kind empty", pack([5, "", None]), BAD),
    ("message kind too long", pack([5, "k" * (MAX_KIND_LEN + 1)]), BAD),
    ("message kind too many bytes", pack([5, "é" * (MAX_KIND_LEN // 2 + 1)]), BAD),
    ("message body ext", pack([5, "k", msgpack.ExtType(1, b"x")]), BAD),
    ("message body timestamp", b"\x93\x05\xa1k\xd6\xff\x00\x00\x00\x01", BAD),
    ("message body bin key", pack([5, "k", {b"key": 1}]), BAD),
    ("message body too deep", DEEP_33, BAD),
    ("message body deeper than msgpack allows", b"\x93\x05\xa1k" + b"\x91" * 3000 + b"\xc0", MAL),
    ("ping no fields", pack([6]), BAD),
    ("ping three fields", pack([6, 1, 0.0, 0.0]), BAD),
    ("ping nonce string", pack([6, "1"]), BAD),
    ("ping nonce bool", pack([6, False]), BAD),
    ("ping nonce negative", pack([6, -1]), BAD),
    ("ping nonce float", pack([6, 1.0]), BAD),
    ("ping time string", pack([6, 1, "now"]), BAD),
    ("ping time bool", pack([6, 1, True]), BAD),
    ("ping time nan", pack([6, 1, math.nan]), BAD),
    ("ping time inf", pack([6, 1, math.inf]), BAD),
    ("over the size limit", pack([5, "k", "x" * 4100]), BIG),
]

SERVER_CASES: list[tuple[str, bytes, ErrorCode]] = [
    ("empty", b"", MAL),
    ("not an array", pack({"a": 1}), MAL),
    ("bool type", pack([False]), MAL),
    ("trailing bytes", encode_snapshot(1, 2, b"ab") + b"\xc0", MAL),
    ("truncated payload", encode_snapshot(1, 2, b"abcdef")[:-1], MAL),
    ("hello to a client", encode(Hello()), UNK),
    ("input to a client", encode(Input(1, 0.0, 0.0)), UNK),
    ("ping to a client", encode(Ping(1)), UNK),
    ("unknown type", pack([10, 1]), UNK),
    ("snapshot two fields", pack([4, 1, 2]), BAD),
    ("snapshot four fields", pack([4, 1, 2, b"", 0]), BAD),
    ("snapshot tick negative", pack([4, -1, 2, b""]), BAD),
    ("snapshot tick over uint32", pack([4, 2**32, 2, b""]), BAD),
    ("snapshot ack bool", pack([4, 1, True, b""]), BAD),
    ("snapshot payload str", pack([4, 1, 2, "payload"]), BAD),
    ("snapshot payload array", pack([4, 1, 2, [1, 2]]), BAD),
    ("welcome twelve fields", pack(WELCOME_OK[:-1]), BAD),
    ("welcome fourteen fields", pack([*WELCOME_OK, ""]), BAD),
    ("welcome version bool", welcome_with(1, True), BAD),
    ("welcome entity negative", welcome_with(2, -1), BAD),
    ("welcome player float", welcome_with(3, 1.0), BAD),
    ("welcome world three", welcome_with(4, [0.0, 0.0, 1.0]), BAD),
    ("welcome world string", welcome_with(4, "0,0,1,1"), BAD),
    ("welcome world nan", welcome_with(4, [0.0, math.nan, 1.0, 1.0]), BAD),
    ("welcome tick_hz zero", welcome_with(5, 0.0), BAD),
    ("welcome snapshot_hz negative", welcome_with(6, -1.0), BAD),
    ("welcome quantum zero", welcome_with(7, 0), BAD),
    ("welcome quantum inf", welcome_with(7, math.inf), BAD),
    ("welcome server time string", welcome_with(8, "now"), BAD),
    ("welcome resume token int", welcome_with(9, 5), BAD),
    ("welcome resume token too long", welcome_with(9, "r" * (MAX_HELLO_STR + 1)), BAD),
    ("welcome resumed int", welcome_with(10, 1), BAD),
    ("welcome pub fields map", welcome_with(11, {"hp": "<u2"}), BAD),
    ("welcome own fields string", welcome_with(12, "ammo"), BAD),
    ("welcome field not a map", welcome_with(11, ["hp"]), BAD),
    ("welcome field without name", desc_with(name=...), BAD),
    ("welcome field empty name", desc_with(name=""), BAD),
    ("welcome field dtype unknown", desc_with(dtype="<f16"), BAD),
    ("welcome field dtype big-endian", desc_with(dtype=">u2"), BAD),
    ("welcome field dtype missing", desc_with(dtype=...), BAD),
    ("welcome field shape int", desc_with(shape=2), BAD),
    ("welcome field shape zero", desc_with(shape=[0]), BAD),
    ("welcome field shape bool", desc_with(shape=[True]), BAD),
    ("welcome field shape too long", desc_with(shape=[1] * 9), BAD),
    ("welcome field scope missing", desc_with(scope=...), BAD),
    ("welcome world name nil", welcome_with(13, None), BAD),
    ("message one field", pack([5, "k"]), BAD),
    ("message kind empty", pack([5, "", 1]), BAD),
    ("message body too deep", DEEP_33, BAD),
    ("pong two fields", pack([7, 1, 0.0]), BAD),
    ("pong nonce negative", pack([7, -1, 0.0, 0.0]), BAD),
    ("pong server time nan", pack([7, 1, 0.0, math.nan]), BAD),
    ("pong client time bool", pack([7, 1, False, 0.0]), BAD),
    ("error one field", pack([8, 3]), BAD),
    ("error code string", pack([8, "BAD_FIELD", ""]), BAD),
    ("error code negative", pack([8, -3, ""]), BAD),
    ("error text int", pack([8, 3, 3]), BAD),
    ("kick code bool", pack([9, True, ""]), BAD),
    ("kick reason nil", pack([9, 18, None]), BAD),
    ("kick three fields", pack([9, 18, "", ""]), BAD),
]


@pytest.mark.parametrize(("name", "data", "code"), CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_malformed_client_messages(name: str, data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_client(data)
    assert err.value.code == code, err.value


@pytest.mark.parametrize(("name", "data", "code"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_malformed_server_messages(name: str, data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_server(data)
    assert err.value.code == code, err.value


def test_the_limits_are_inclusive() -> None:
    assert decode_client(pack([5, "k" * MAX_KIND_LEN])) == Message("k" * MAX_KIND_LEN)
    assert decode_client(pack([5, "é" * (MAX_KIND_LEN // 2)])).kind == "é" * 32  # type: ignore[union-attr]
    assert decode_client(pack([1, 1, "t" * MAX_HELLO_STR])) == Hello(1, "t" * MAX_HELLO_STR)
    assert isinstance(decode_client(DEEP_32), Message)
    assert decode_client(pack([3, U32, F32_MAX, -F32_MAX, U32])) == Input(
        U32, F32_MAX, -F32_MAX, U32
    )
    assert decode_client(pack([6, U64])) == Ping(U64)
    frame = pack([5, "k", "x" * (4096 - 7)])
    assert len(frame) == 4096 and isinstance(decode_client(frame), Message)
    with pytest.raises(ProtocolError) as err:
        decode_client(frame + b"", max_size=4095)
    assert err.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as err:
        decode_server(encode_snapshot(1, 1, bytes(100)), max_size=100)
    assert err.value.code == ErrorCode.TOO_LARGE


def test_field_descriptions_may_carry_more_keys() -> None:
    desc = {"name": "hp", "dtype": "<u2", "shape": [], "scope": "public", "doc": "0..100"}
    msg = decode_server(welcome_with(11, [desc]))
    assert isinstance(msg, Welcome) and msg.pub_fields == (desc,) and msg.pub_width == 2


def test_protocol_error_carries_code_and_text() -> None:
    with pytest.raises(ProtocolError) as err:
        decode_client(pack([3, -1, 0.0, 0.0]))
    assert err.value.code is ErrorCode.BAD_FIELD
    assert "seq" in err.value.text and str(err.value).startswith("BAD_FIELD: ")


# --- encode refuses what the other side would refuse ------------------------------------

ENCODE_REFUSED: list[tuple[str, AnyMessage]] = [
    ("hello token too long", Hello(1, "t" * (MAX_HELLO_STR + 1))),
    ("hello token not str", Hello(1, 5)),  # type: ignore[arg-type]
    ("hello lone surrogate", Hello(1, "\ud800")),
    ("input seq negative", Input(-1, 0.0, 0.0)),
    ("input seq too big", Input(2**32, 0.0, 0.0)),
    ("input nan", Input(1, math.nan, 0.0)),
    ("input over float32", Input(1, 0.0, 1e39)),
    ("input actions negative", Input(1, 0.0, 0.0, -1)),
    ("input seq bool", Input(True, 0.0, 0.0)),
    ("message kind empty", Message("")),
    ("message kind too long", Message("k" * (MAX_KIND_LEN + 1))),
    ("message body set", Message("k", {1, 2})),
    ("message body ext", Message("k", msgpack.ExtType(1, b""))),
    ("message body int key", Message("k", {1: 2})),
    ("message body too deep", Message("k", json.loads("[" * 33 + "]" * 33))),
    ("message body too big int", Message("k", 2**64)),
    ("message body over the limit", Message("k", "x" * MAX_CUSTOM_BODY)),
    ("message body numpy", Message("k", np.int64(3))),
    ("ping nonce negative", Ping(-1)),
    ("ping time nan", Ping(1, math.nan)),
    ("pong time inf", Pong(1, 0.0, math.inf)),
    ("error code negative", Error(-1)),
    ("kick reason not str", Kick(18, None)),  # type: ignore[arg-type]
    ("snapshot tick over uint32", Snapshot(2**32, 0, b"")),
    ("snapshot payload str", Snapshot(1, 0, "x")),  # type: ignore[arg-type]
    ("welcome quantum zero", Welcome(1, 1, 1, (0, 0, 1, 1), 20, 20, 0.0, 0.0, "", False)),
    ("welcome world short", Welcome(1, 1, 1, (0, 0, 1), 20, 20, 0.1, 0.0, "", False)),  # type: ignore[arg-type]
    (
        "welcome bad dtype",
        Welcome(
            1,
            1,
            1,
            (0, 0, 1, 1),
            20,
            20,
            0.1,
            0.0,
            "",
            False,
            ({"name": "x", "dtype": "<c8", "shape": [], "scope": "public"},),
        ),
    ),
]


@pytest.mark.parametrize(("name", "msg"), ENCODE_REFUSED, ids=[c[0] for c in ENCODE_REFUSED])
def test_encode_refuses_what_the_peer_would_refuse(name: str, msg: AnyMessage) -> None:
    with pytest.raises(ValueError):
        encode(msg)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode([1, 1])  # type: ignore[arg-type]


def test_the_largest_body_is_allowed() -> None:
    body = "x" * (MAX_CUSTOM_BODY - 3)  # str16 header: 3 bytes
    assert len(pack(body)) == MAX_CUSTOM_BODY
    assert decode_server(encode(Message("k", body))) == Message("k", body)


# --- blob layout from WELCOME field descriptions ------------------------------------------


def test_blob_layout_matches_numpy_and_the_schema() -> None:
    fields = (
        Field("hp", "uint16"),
        Field("alive", "bool"),
        Field("color", "uint8", 3),
        Field("heading", "float32"),
        Field("grid", "int16", (2, 3)),
        Field("gold", "uint64", scope=Scope.OWNER),
        Field("speed", "float64"),
        Field("half", "float16"),
        Field("tiny", "int8"),
    )
    descs = Schema(fields).describe()
    layout = blob_layout(descs)
    ref = np.dtype([(f.name, f.dtype, f.shape) for f in fields])  # packed: no padding
    assert [x.name for x in layout] == [f.name for f in fields]
    assert [x.offset for x in layout] == [ref.fields[f.name][1] for f in fields]
    assert [x.size for x in layout] == [f.nbytes for f in fields]
    assert [x.shape for x in layout] == [f.shape for f in fields]
    assert blob_width(descs) == ref.itemsize == sum(f.nbytes for f in fields)
    assert {np.dtype(d).str for d in FIELD_DTYPES} == set(FIELD_DTYPES)
    assert blob_width([]) == 0
    with pytest.raises(ValueError):
        blob_layout([{"name": "x", "dtype": "<c8", "shape": [], "scope": "public"}])


# --- fuzzing ----------------------------------------------------------------------------

SEED_MESSAGES: list[AnyMessage] = [
    Hello(1, "token", "resume", "sdk/1"),
    Hello(),
    Input(17, 0.6, -0.8, 1),
    Message("chat", {"text": "hi", "to": [1, 2], "x": 1.5, "b": b"\x01"}),
    Ping(7, 12.25),
    Welcome(
        1,
        2**60 + 5,
        42,
        (0.0, 0.0, 100.0, 100.0),
        20.0,
        10.0,
        0.05,
        3.5,
        "r-1",
        True,
        ({"name": "hp", "dtype": "<u2", "shape": [2], "scope": "public"},),
        ({"name": "ammo", "dtype": "|u1", "shape": [], "scope": "owner"},),
        "arena",
    ),
    Snapshot(5, 4, bytes(range(40))),
    Pong(7, 12.25, 99.5),
    Error(3, "bad"),
    Kick(18, "bye"),
]
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0x90, 0x91, 0x9F, 0xA0, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4]
INTERESTING += [0xCA, 0xCB, 0xCC, 0xCF, 0xD0, 0xD3, 0xD4, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[at % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[at % len(b)] = rng.choice(INTERESTING)
        elif op == 2:
            del b[at:]
        elif op == 3:
            b[at:at] = bytes([rng.choice(INTERESTING)]) * rng.randint(1, 3)
        elif op == 4 and b:
            end = min(len(b), at + rng.randint(1, 8))
            b[at:at] = b[at:end]
        else:
            del b[at : at + rng.randint(1, 4)]
    return bytes(b)


def check_only_protocol_errors(data: bytes) -> int:
    accepted = 0
    for dec, cls in ((decode_client, pm.ClientMessage), (decode_server, pm.ServerMessage)):
        try:
            msg = dec(data)
        except ProtocolError as exc:
            assert isinstance(exc.code, ErrorCode)
            continue
        assert isinstance(msg, cls)
        # Whatever was accepted re-encodes to bytes that decode to the same message.
        again = encode(msg)
        assert encode(dec(again)) == again
        accepted += 1
    return accepted


def test_fuzz_random_bytes_only_raise_protocol_error() -> None:
    rng = random.Random(1234)
    for _ in range(2500):
        n = rng.choice([0, 1, 2, 3, 5, 8, 16, 40, 200])
        data = rng.randbytes(n)
        if rng.random() < 0.5 and data:
            # A plausible start: an array header and a known type.
            data = bytes([0x90 | rng.randint(1, 15), rng.randint(0, 10)]) + data
        check_only_protocol_errors(data)


def test_fuzz_mutated_messages_only_raise_protocol_error() -> None:
    rng = random.Random(99)
    corpus = [encode(m) for m in SEED_MESSAGES]
    accepted = 0
    for i in range(4000):
        accepted += check_only_protocol_errors(mutate(rng, corpus[i % len(corpus)]))
    assert accepted > 100  # the mutations also reach the field checks, not only msgpack


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=64))
def test_fuzz_hypothesis_bytes(data: bytes) -> None:
    check_only_protocol_errors(data)


# --- the documentation ------------------------------------------------------------------

EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[a-z_]+) (?P<dir>client|server) -->\s*"
    r"```text\n(?P<hex>.*?)```\s*"
    r"```json\n(?P<json>.*?)```\s*"
    r"(?P<table>\|.*?)(?:\n\n|\Z)",
    re.S,
)


def doc_examples() -> list[dict[str, Any]]:
    text = DOC.read_text(encoding="utf-8")
    out = []
    for m in EXAMPLE.finditer(text):
        rows = [r for r in m["table"].splitlines() if r.startswith("| `")]
        table_hex = "".join(re.match(r"\| `([0-9a-f ]*)`", r)[1] for r in rows)  # type: ignore[index]
        out.append(
            {
                "name": m["name"],
                "direction": m["dir"],
                "data": bytes.fromhex(m["hex"]),
                "json": json.loads(m["json"]),
                "table": bytes.fromhex(table_hex),
            }
        )
    return out


def test_doc_examples_decode_to_what_the_doc_says() -> None:
    examples = doc_examples()
    assert len(examples) >= 11
    seen = set()
    for ex in examples:
        msg = decode(ex["direction"], ex["data"])
        assert to_json(msg) == ex["json"], ex["name"]
        assert encode(msg) == ex["data"], ex["name"]  # the hex is what the encoder writes
        assert ex["table"] == ex["data"], f"{ex['name']}: the byte table differs from the hex"
        seen.add((ex["direction"], TYPE_OF[type(msg)]))
    want = {("client", t) for t in CLIENT_TYPES} | {("server", t) for t in SERVER_TYPES}
    assert want <= seen


def test_doc_snapshot_example_payload_decodes_as_the_snapshot_doc_says() -> None:
    (ex,) = [e for e in doc_examples() if e["name"] == "snapshot"]
    msg = decode_server(ex["data"])
    assert isinstance(msg, Snapshot)
    assert msg.payload == worked_example_payload()


def worked_example_payload() -> bytes:
    text = SNAPSHOT_DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- worked-example-payload -->\s*```text\n(.*?)```", text, re.S)
    assert m is not None
    return bytes.fromhex(m[1])


def doc_table(heading: str) -> dict[str, int]:
    """``| value | NAME | ...`` rows of the first table after ``heading``."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(heading)
    block = text[start:].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    out = {}
    for row in ("|" + block).splitlines():
        m = re.match(r"\| *(\d+) *\| *`?([A-Z_]+)`? *\|", row)
        if m:
            out[m[2]] = int(m[1])
    return out


def test_doc_tables_list_every_type_and_code() -> None:
    assert doc_table("### Message types") == {t.name: int(t) for t in MsgType}
    assert doc_table("## Error codes") == {c.name: int(c) for c in ErrorCode}
    assert doc_table("## Close codes") == {c.name: int(c) for c in CloseCode}


def test_doc_mentions_every_limit_with_its_value() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in ("MAX_KIND_LEN", "MAX_HELLO_STR", "MAX_BODY_DEPTH", "MAX_CUSTOM_BODY"):
        assert re.search(rf"`{name}` *\| *{getattr(pm, name)}\b", text), name
    assert f"PROTOCOL_VERSION = {PROTOCOL_VERSION}" in text or "version `1`" in text


# --- shared test vectors ----------------------------------------------------------------

# The payload of the worked example in docs/snapshot-format.md.
WORKED_EXAMPLE = bytes.fromhex(
    "0045230100e80300000cfeffff0100010001000100"
    "01"
    "01130000000000010003 00fbfffbff006400"
    "000a001400"
    "0201fa0007"
)

WELCOME_EXAMPLE = Welcome(
    version=1,
    entity_id=0x0001000000000012,
    player_id=42,
    world=(0.0, 0.0, 2000.0, 2000.0),
    tick_hz=20.0,
    snapshot_hz=20.0,
    pos_quantum=0.05,
    server_time=1234.5,
    resume_token="r-5f2a",
    resumed=False,
    pub_fields=({"name": "hp", "dtype": "<u2", "shape": [], "scope": "public"},),
    own_fields=({"name": "ammo", "dtype": "|u1", "shape": [], "scope": "owner"},),
    world_name="arena",
)

VALID_MESSAGES: list[tuple[str, str, AnyMessage]] = [
    ("hello", "client", Hello(1, "abc.123", "", "sdk-js/1.0")),
    ("hello_resume", "client", Hello(1, "abc.123", "r-5f2a", "sdk-js/1.0")),
    ("hello_unicode", "client", Hello(1, "tök€n", "", "クライアント")),
    ("input", "client", Input(17, 0.6, -0.8, 1)),
    ("input_max", "client", Input(U32, -1.0, 1.0, U32)),
    ("message_client", "client", Message("chat", {"text": "hi"})),
    ("message_client_nil_body", "client", Message("emote", None)),
    ("ping", "client", Ping(7, 12.25)),
    ("ping_u64_nonce", "client", Ping(U64, 0.0)),
    ("welcome", "server", WELCOME_EXAMPLE),
    (
        "welcome_resumed_big_ids",
        "server",
        dataclasses.replace(
            WELCOME_EXAMPLE,
            entity_id=0xBEEF000300000007,
            player_id=2**63 + 1,
            resumed=True,
            pub_fields=(
                {"name": "heading", "dtype": "<f4", "shape": [], "scope": "public"},
                {"name": "color", "dtype": "|u1", "shape": [3], "scope": "public"},
            ),
            own_fields=(),
        ),
    ),
    ("snapshot", "server", Snapshot(0x12345, 17, WORKED_EXAMPLE)),
    ("snapshot_bin16", "server", Snapshot(U32, 0, bytes(range(256)) * 2)),
    ("message_server", "server", Message("chat", {"from": 42, "text": "hi", "at": [1.5, -2]})),
    ("pong", "server", Pong(7, 12.25, 1240.5)),
    ("error", "server", Error(ErrorCode.OUT_OF_ORDER, "input 16 is not newer than 17")),
    ("error_unknown_code", "server", Error(999, "codes unknown to a client are still errors")),
    ("kick", "server", Kick(ErrorCode.ABUSE, "too many errors")),
]

# Encodings the codec accepts but does not write itself (what other encoders may send).
NON_CANONICAL: list[tuple[str, str, bytes]] = [
    ("hello_version_only", "client", pack([1, 1])),
    # A future version's HELLO: only the version is read, so the server can refuse it.
    ("hello_future_version", "client", pack([1, 2, "abc.123", "", "sdk-js/2.0", {"new": 1}])),
    ("input_int_intent_no_actions", "client", pack([3, 5, 1, 0])),
    (
        "input_float32_intent",
        "client",
        b"\x95\x03\x05\xca" + struct.pack(">f", 0.5) + b"\xca" + struct.pack(">f", -0.25) + b"\x00",
    ),
    ("ping_no_time", "client", pack([6, 3])),
    ("ping_uint64_form", "client", b"\x93\x06\xcf" + (7).to_bytes(8, "big") + b"\x00"),
    ("message_str8_kind", "client", b"\x92\x05\xd9\x04chat"),
    ("pong_int_times", "server", pack([7, 7, 12, 1240])),
]

INVALID: list[tuple[str, str, bytes]] = [
    ("empty", "client", b""),
    ("not_msgpack", "client", b"\xc1"),
    ("not_an_array", "client", pack({"type": 3})),
    ("bool_type", "client", pack([True, 1])),
    ("unknown_type", "client", pack([99])),
    ("server_type_from_client", "client", encode(Pong(1, 0.0, 0.0))),
    ("input_wrong_field_count", "client", pack([3, 1, 0.0])),
    ("input_seq_bool", "client", pack([3, True, 0.0, 0.0])),
    ("input_seq_negative", "client", pack([3, -1, 0.0, 0.0])),
    ("input_nan_intent", "client", pack([3, 1, math.nan, 0.0])),
    ("input_trailing_byte", "client", encode(Input(1, 0.0, 0.0)) + b"\xc0"),
    ("hello_token_too_long", "client", pack([1, 1, "t" * (MAX_HELLO_STR + 1)])),
    ("message_kind_empty", "client", pack([5, "", None])),
    ("snapshot_payload_str", "server", pack([4, 1, 2, "x"])),
    ("welcome_bad_dtype", "server", desc_with(dtype="<f16")),
    ("client_type_from_server", "server", encode(Ping(1))),
]


def snapshot_stream(
    name: str,
    *,
    wide: bool,
    quantum: float,
    player: int,
    pub_fields: Sequence[Field],
    own_fields: Sequence[Field],
    frames: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Payloads for one observer written by the real encoder, with their decoded content.

    Each frame: ``tick``, ``reset``, ``base`` (qx, qy), ``leaves`` (handles) and ``entries``
    (handle, state 1 entered / 0 stayed, id, kind, q, moved, updated, owner, pub values,
    own values), in ascending id order.
    """
    pub_desc = [f.describe() for f in pub_fields]
    own_desc = [f.describe() for f in own_fields]
    w, w2 = blob_width(pub_desc), blob_width(own_desc)
    mirror = SnapshotMirror(w, w2)
    payloads = []
    for fr in frames:
        ents = fr["entries"]
        n = len(ents)

        def col(f: Field, key: str, ents: list[dict[str, Any]] = ents) -> np.ndarray[Any, Any]:
            return np.array([e[key][f.name] for e in ents], f.dtype).reshape((len(ents), *f.shape))

        pub_blob = ksnap.pack_columns([col(f, "pub") for f in pub_fields], n).reshape(n, w)
        own_blob = ksnap.pack_columns([col(f, "own") for f in own_fields], n).reshape(n, w2)
        buf, off = ksnap.encode_snapshots(
            fr["tick"],
            np.array([fr["reset"]], np.uint8),
            np.array([fr["base"]], np.int32),
            np.array([0, n], np.int64),
            np.arange(n, dtype=np.int32),
            np.array([e["handle"] for e in ents], np.uint16),
            np.array([e["state"] for e in ents], np.uint8),
            np.array([0, len(fr["leaves"])], np.int64),
            np.array(fr["leaves"], np.uint16),
            np.array([e["id"] for e in ents], np.uint64),
            np.array([e["kind"] for e in ents], np.uint16),
            np.array([e["q"] for e in ents], np.int32).reshape(n, 2),
            np.array([e["moved"] for e in ents], np.uint8),
            np.array([e["updated"] for e in ents], np.uint8),
            pub_blob,
            own_blob,
            np.array([e["owner"] for e in ents], np.uint64),
            np.array([player], np.uint64),
            wide,
        )
        payload = buf[off[0] : off[1]].tobytes()
        snap = mirror.apply(payload)
        payloads.append(
            {
                "hex": payload.hex(),
                "decoded": payload_json(snap),
                "mirror_after": mirror_json(mirror, pub_desc, own_desc),
            }
        )
    return {
        "name": name,
        "pos_quantum": quantum,
        "observer_player_id": str(player),
        "pub_fields": pub_desc,
        "own_fields": own_desc,
        "pub_width": w,
        "own_width": w2,
        "payloads": payloads,
    }


def hex_or_none(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def payload_json(snap: Any) -> dict[str, Any]:
    h = snap.header
    return {
        "flags": h.flags,
        "reset": h.reset,
        "wide": h.wide,
        "tick": h.tick,
        "base_qx": h.base_qx,
        "base_qy": h.base_qy,
        "despawns": list(snap.despawns),
        "spawns": [
            {
                "handle": s.handle,
                "id": str(s.id),
                "kind": s.kind,
                "rx": s.rx,
                "ry": s.ry,
                "owned": s.owned,
                "pub": s.pub.hex(),
                "own": hex_or_none(s.own),
            }
            for s in snap.spawns
        ],
        "moves": [{"handle": m.handle, "rx": m.rx, "ry": m.ry} for m in snap.moves],
        "updates": [
            {"handle": u.handle, "owned": u.owned, "pub": u.pub.hex(), "own": hex_or_none(u.own)}
            for u in snap.updates
        ],
    }


def blob_values(blob: bytes, descs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Field values of a blob, read with numpy from the descriptions (packed, in order)."""
    dt = np.dtype([(d["name"], d["dtype"], tuple(d["shape"])) for d in descs])
    row = np.frombuffer(blob, dt)[0]
    return {d["name"]: row[d["name"]].tolist() for d in descs}


def mirror_json(
    mirror: SnapshotMirror, pub: Sequence[dict[str, Any]], own: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    out = []
    for handle in sorted(mirror):
        e = mirror[handle]
        out.append(
            {
                "handle": handle,
                "id": str(e.id),
                "kind": e.kind,
                "qx": e.qx,
                "qy": e.qy,
                "pub": e.pub.hex(),
                "own": None if e.own is None else e.own.hex(),
                "pub_values": blob_values(e.pub, pub),
                "own_values": None if e.own is None else blob_values(e.own, own),
            }
        )
    return out


def entry(
    handle: int, state: int, ident: int, kind: int, q: tuple[int, int], **kw: Any
) -> dict[str, Any]:
    return {
        "handle": handle,
        "state": state,
        "id": ident,
        "kind": kind,
        "q": q,
        "moved": kw.get("moved", 0),
        "updated": kw.get("updated", 0),
        "owner": kw.get("owner", 0),
        "pub": kw.get("pub", {}),
        "own": kw.get("own", {}),
    }


def build_snapshot_streams() -> list[dict[str, Any]]:
    e10, e11, e12, e13 = (0x0001000000000010 + i for i in range(4))
    npc = {"own": {"ammo": 0}}
    mine = {"owner": 42, "own": {"ammo": 7}}
    narrow = snapshot_stream(
        "narrow_owned_fields",
        wide=False,
        quantum=0.05,
        player=42,
        pub_fields=[Field("hp", "uint16")],
        own_fields=[Field("ammo", "uint8", scope=Scope.OWNER)],
        frames=[
            {  # joined: everything in range arrives as spawns, with RESET
                "tick": 0x12344,
                "reset": 1,
                "base": (1000, -500),
                "leaves": [],
                "entries": [
                    entry(0, 1, e10, 1, (1005, -490), pub={"hp": 90}, **npc),
                    entry(1, 1, e11, 1, (980, -520), pub={"hp": 80}, **npc),
                    entry(2, 1, e12, 2, (1000, -500), pub={"hp": 200}, owner=42, own={"ammo": 9}),
                ],
            },
            {  # the worked example of docs/snapshot-format.md
                "tick": 0x12345,
                "reset": 0,
                "base": (1000, -500),
                "leaves": [1],
                "entries": [
                    entry(0, 0, e10, 1, (1010, -480), moved=1, pub={"hp": 90}, **npc),
                    entry(2, 0, e12, 2, (1000, -500), updated=1, pub={"hp": 250}, **mine),
                    entry(1, 1, e13, 3, (995, -505), pub={"hp": 100}, **npc),
                ],
            },
            {  # the observer moves: only entities whose absolute position changed get moves
                "tick": 0x12346,
                "reset": 0,
                "base": (1003, -497),
                "leaves": [],
                "entries": [
                    entry(0, 0, e10, 1, (1010, -480), pub={"hp": 90}, **npc),
                    entry(2, 0, e12, 2, (1003, -497), moved=1, pub={"hp": 250}, **mine),
                    entry(1, 0, e13, 3, (995, -505), pub={"hp": 100}, **npc),
                ],
            },
        ],
    )
    b0, b1, b2 = (0xBEEF000300000007 + (i << 28) for i in range(3))
    red = {"heading": 1.5, "color": [255, 0, 10]}
    x0, y0 = -2_000_000, 150_000
    wide = snapshot_stream(
        "wide_handles_big_ids",
        wide=True,
        quantum=0.01,
        player=0,
        pub_fields=[Field("heading", "float32"), Field("color", "uint8", 3)],
        own_fields=[],
        frames=[
            {
                "tick": 2**32 + 7,  # written as its low 32 bits
                "reset": 1,
                "base": (x0, y0),
                "leaves": [],
                "entries": [
                    entry(0, 1, b0, 7, (x0 - 32768, y0 + 32767), pub=red),  # the i16 extremes
                    entry(1, 1, b1, 8, (x0, y0), pub={"heading": -0.25, "color": [1, 2, 3]}),
                ],
            },
            {
                "tick": 8,
                "reset": 0,
                "base": (x0, y0),
                "leaves": [1],
                "entries": [
                    entry(
                        0,
                        0,
                        b0,
                        7,
                        (x0 - 100, y0 + 1),
                        moved=1,
                        updated=1,
                        pub={**red, "heading": 3.0},
                    ),
                    entry(1, 1, b2, 9, (x0 + 1, y0 - 1), pub={"heading": 0.0, "color": [9, 9, 9]}),
                ],
            },
        ],
    )
    return [narrow, wide]


def build_vectors() -> dict[str, Any]:
    messages = [
        {
            "name": n,
            "direction": d,
            "hex": encode(m).hex(),
            "canonical": True,
            "message": to_json(m),
        }
        for n, d, m in VALID_MESSAGES
    ]
    messages += [
        {
            "name": n,
            "direction": d,
            "hex": b.hex(),
            "canonical": False,
            "message": to_json(decode(d, b)),
        }
        for n, d, b in NON_CANONICAL
    ]
    invalid = []
    for n, d, b in INVALID:
        try:
            decode(d, b)
        except ProtocolError as exc:
            invalid.append(
                {
                    "name": n,
                    "direction": d,
                    "hex": b.hex(),
                    "error": exc.code.name,
                    "error_code": int(exc.code),
                }
            )
        else:  # pragma: no cover - the vector itself would be wrong
            raise AssertionError(f"invalid vector {n} decodes")
    return json.loads(
        json.dumps(
            {
                "protocol_version": PROTOCOL_VERSION,
                "notes": [
                    "Specification: docs/protocol.md (messages) and docs/snapshot-format.md "
                    "(payloads).",
                    "direction 'client': client -> server, decoded by the server; 'server': "
                    "server -> client.",
                    "hex: the whole WebSocket binary frame.",
                    "canonical: the reference encoder writes exactly these bytes for this message; "
                    "non-canonical frames (ints for floats, float32, longer int or str forms) must "
                    "decode to the same message.",
                    "message: the decoded fields by name; 'type' is the message type's name. "
                    "entity_id, player_id, nonce and snapshot ids are decimal strings (they exceed "
                    "2^53); bin fields are lowercase hex strings.",
                    "invalid: frames a decoder must refuse, with the ERROR code the server "
                    "answers.",
                    "snapshot_streams: payloads for one observer, applied in order to an empty "
                    "mirror; mirror_after is the state after each, sorted by handle; pub_values "
                    "and own_values read the blobs with pub_fields and own_fields.",
                ],
                "messages": messages,
                "invalid": invalid,
                "snapshot_streams": build_snapshot_streams(),
            }
        )
    )


def dump_vectors(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def test_vectors_file_matches_the_codec() -> None:
    # If this fails after a deliberate change: python tests/test_protocol_messages.py
    assert json.loads(VECTORS.read_text(encoding="utf-8")) == build_vectors()
    assert VECTORS.read_text(encoding="utf-8") == dump_vectors(build_vectors())


def test_vectors_cover_every_type_both_ways() -> None:
    vec = json.loads(VECTORS.read_text(encoding="utf-8"))
    seen = {(v["direction"], v["message"]["type"]) for v in vec["messages"]}
    want = {("client", t.name) for t in CLIENT_TYPES} | {("server", t.name) for t in SERVER_TYPES}
    assert want <= seen


def test_vectors_decode_to_their_content() -> None:
    vec = json.loads(VECTORS.read_text(encoding="utf-8"))
    for v in vec["messages"]:
        data = bytes.fromhex(v["hex"])
        msg = decode(v["direction"], data)
        assert to_json(msg) == v["message"], v["name"]
        assert (encode(msg) == data) == v["canonical"], v["name"]
    for v in vec["invalid"]:
        with pytest.raises(ProtocolError) as err:
            decode(v["direction"], bytes.fromhex(v["hex"]))
        assert err.value.code.name == v["error"] and err.value.code == v["error_code"]
    for stream in vec["snapshot_streams"]:
        mirror = SnapshotMirror(stream["pub_width"], stream["own_width"])
        for p in stream["payloads"]:
            payload = bytes.fromhex(p["hex"])
            dec = decode_snapshot(payload, stream["pub_width"], stream["own_width"])
            assert payload_json(dec) == p["decoded"]
            mirror.apply(payload)
            assert (
                mirror_json(mirror, stream["pub_fields"], stream["own_fields"]) == p["mirror_after"]
            )


def test_vector_payload_is_the_snapshot_docs_worked_example() -> None:
    vec = json.loads(VECTORS.read_text(encoding="utf-8"))
    narrow = vec["snapshot_streams"][0]["payloads"][1]
    assert bytes.fromhex(narrow["hex"]) == worked_example_payload() == WORKED_EXAMPLE


def test_vectors_spot_checks() -> None:
    """A few values read straight from the bytes, without the codec."""
    vec = {v["name"]: v for v in json.loads(VECTORS.read_text(encoding="utf-8"))["messages"]}
    assert vec["input"]["hex"] == "950311cb3fe3333333333333cbbfe999999999999a01"
    assert vec["ping_u64_nonce"]["message"]["nonce"] == "18446744073709551615"
    stream = json.loads(VECTORS.read_text(encoding="utf-8"))["snapshot_streams"][1]
    first = bytes.fromhex(stream["payloads"][0]["hex"])
    assert first[0] == 0x03 and struct.unpack_from("<I", first, 1)[0] == 7
    assert stream["payloads"][0]["mirror_after"][1]["pub_values"] == {
        "heading": -0.25,
        "color": [1, 2, 3],
    }


def write_vectors() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(dump_vectors(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    write_vectors()
    sys.exit(0)
