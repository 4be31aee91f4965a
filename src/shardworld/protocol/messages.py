"""Protocol v1 between players and gateways: messages, their bytes, their errors. Sans-I/O.

Every WebSocket message is one binary frame holding one msgpack array whose first element
is the message type::

    [type, field1, field2, ...]

Bulk entity data never appears as msgpack maps: a snapshot carries the zone's packed
payload (docs/snapshot-format.md) as one msgpack ``bin``. This module imports no asyncio,
websockets, Kafka or Redis: ``decode_client`` / ``decode_server`` turn bytes into message
objects (or raise :class:`ProtocolError` with a code), ``encode`` turns them back into bytes.
docs/protocol.md documents every message byte by byte.

The same field rules serve both directions: :func:`encode` checks a message with the
decoder's own rules before it writes a byte, so whatever this side sends, the other side's
decoder accepts (and decodes to an equal message).
"""

from __future__ import annotations

import contextlib
import enum
import math
import numbers
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Union

import msgpack

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

PROTOCOL_VERSION = 1
#: Largest body of a server -> client MESSAGE, in msgpack bytes (:func:`encode` enforces it).
MAX_CUSTOM_BODY = 16 * 1024
#: Longest MESSAGE kind, in UTF-8 bytes.
MAX_KIND_LEN = 64
#: Longest HELLO token, resume token or client string, in UTF-8 bytes.
MAX_HELLO_STR = 1024
#: Deepest nesting of arrays and maps inside a MESSAGE body (a scalar body has depth 0).
MAX_BODY_DEPTH = 32
#: Default size limit of one client -> server frame (gateways may configure another).
MAX_CLIENT_MESSAGE = 4096
#: Default size limit of one server -> client frame when a client decodes it.
MAX_SERVER_MESSAGE = 16 * 1024 * 1024

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_I64_MIN = -(2**63)
# Intents are stored as float32 by the zone; anything larger would turn into infinity there.
_F32_MAX = 3.4028234663852886e38


class MsgType(enum.IntEnum):
    HELLO = 1  # client -> server
    WELCOME = 2  # server -> client
    INPUT = 3  # client -> server
    SNAPSHOT = 4  # server -> client
    MESSAGE = 5  # both ways: the world's custom messages
    PING = 6  # client -> server
    PONG = 7  # server -> client
    ERROR = 8  # server -> client
    KICK = 9  # server -> client, then the server closes the connection


class ErrorCode(enum.IntEnum):
    """Codes in ERROR and KICK messages. The text says more; the code is the contract."""

    MALFORMED = 1  # not msgpack, not an array, or trailing bytes
    UNKNOWN_TYPE = 2  # a message type this side never receives
    BAD_FIELD = 3  # wrong field count, type or range
    TOO_LARGE = 4  # a frame over the size limit
    RATE_LIMITED = 5  # too many messages or bytes per second
    UNSUPPORTED_VERSION = 6  # hello with a protocol version the server does not speak
    AUTH_FAILED = 7  # missing, bad or expired token
    NOT_JOINED = 8  # anything but HELLO before WELCOME
    ALREADY_JOINED = 9  # a second HELLO
    OUT_OF_ORDER = 10  # input sequence number not newer than the last one
    FROM_THE_FUTURE = 11  # input sequence number too far ahead
    TEXT_FRAME = 12  # a text frame: the protocol is binary
    SLOW_READER = 13  # the client did not read its snapshots in time
    RESUME_FAILED = 14  # resume token unknown or expired: joined as a new entity instead
    SERVER_FULL = 15
    SHUTTING_DOWN = 16
    INTERNAL = 17
    ABUSE = 18  # too many errors: kicked


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 and the 4000-4999 private range)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # text frames
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    AUTH_FAILED = 4001
    UNSUPPORTED_VERSION = 4002
    ABUSE = 4003
    SLOW_READER = 4004
    HANDSHAKE_TIMEOUT = 4005
    KICKED = 4006


class ProtocolError(Exception):
    """Bytes that are not a valid message. ``code`` is what goes back in the ERROR message."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code
        self.text = text


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """Where one replicated field sits inside a public or owner-scoped blob."""

    name: str
    dtype: str
    """numpy dtype string: ``|b1 |u1 |i1 <u2 <i2 <f2 <u4 <i4 <f4 <u8 <i8 <f8``."""
    shape: tuple[int, ...]
    offset: int
    """Byte offset inside the blob."""
    size: int
    """Bytes: the dtype's size times the product of ``shape``."""


@dataclass(frozen=True, slots=True)
class Hello:
    """First message from a client. ``token`` may be empty in dev mode."""

    version: int = PROTOCOL_VERSION
    token: str = ""
    resume: str = ""
    client: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's answer to HELLO: who you are and how to read snapshots."""

    version: int
    entity_id: int
    player_id: int
    world: tuple[float, float, float, float]
    tick_hz: float
    snapshot_hz: float
    pos_quantum: float
    server_time: float
    resume_token: str
    resumed: bool
    pub_fields: tuple[dict[str, Any], ...] = ()
    own_fields: tuple[dict[str, Any], ...] = ()
    world_name: str = ""

    @property
    def pub_width(self) -> int:
        """W: bytes of the public blob in snapshot spawns and updates."""
        return blob_width(self.pub_fields)

    @property
    def own_width(self) -> int:
        """W2: bytes of the owner-scoped blob."""
        return blob_width(self.own_fields)


@dataclass(frozen=True, slots=True)
class Input:
    """A movement intent (length <= 1, the server clamps) and action bits."""

    seq: int
    ix: float
    iy: float
    actions: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot: the zone tick, the last input sequence applied, the packed payload."""

    tick: int
    ack: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A world's own message (chat, emote, …): a short kind and any msgpack body."""

    kind: str
    body: Any = None


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int
    client_time: float = 0.0


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int
    client_time: float
    server_time: float


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class Kick:
    code: int
    reason: str = ""


#: What the decoders read: one WebSocket message's bytes.
Frame = bytes | bytearray | memoryview
#: What ``encode_snapshot`` takes as a payload.
Buffer = Union[bytes, bytearray, memoryview, "npt.NDArray[np.uint8]"]

ClientMessage = Hello | Input | Message | Ping
ServerMessage = Welcome | Snapshot | Message | Pong | Error | Kick
AnyMessage = ClientMessage | ServerMessage


# --- blob layout ------------------------------------------------------------------------

_DTYPE_SIZE = {
    "|b1": 1,
    "|u1": 1,
    "|i1": 1,
    "<u2": 2,
    "<i2": 2,
    "<f2": 2,
    "<u4": 4,
    "<i4": 4,
    "<f4": 4,
    "<u8": 8,
    "<i8": 8,
    "<f8": 8,
}
#: The dtype strings a field description may carry.
FIELD_DTYPES = tuple(_DTYPE_SIZE)


def blob_layout(fields: Sequence[Mapping[str, Any]]) -> tuple[FieldLayout, ...]:
    """Offsets of WELCOME field descriptions inside a blob: packed in order, no padding.

    Raises ``ValueError`` for a description without a known ``dtype`` or a valid ``shape``.
    """
    out: list[FieldLayout] = []
    at = 0
    for i, f in enumerate(fields):
        try:
            desc = _field_description(f, f"field {i}")
        except ProtocolError as exc:
            raise ValueError(exc.text) from exc
        count = 1
        for s in desc["shape"]:
            count *= s
        size = _DTYPE_SIZE[desc["dtype"]] * count
        out.append(FieldLayout(desc["name"], desc["dtype"], tuple(desc["shape"]), at, size))
        at += size
    return tuple(out)


def blob_width(fields: Sequence[Mapping[str, Any]]) -> int:
    """The blob's byte width (W or W2) for these field descriptions."""
    return sum(f.size for f in blob_layout(fields))


# --- field rules (shared by the decoders and by encode) ---------------------------------


def _bad(text: str) -> NoReturn:
    raise ProtocolError(ErrorCode.BAD_FIELD, text)


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    # bool is an int subclass in Python but a distinct msgpack type: never an integer field.
    if not isinstance(v, int) or isinstance(v, bool):
        _bad(f"{what}: expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        _bad(f"{what}: {v} is outside {lo}..{hi}")
    return int(v)


def _float(v: Any, what: str, limit: float = math.inf) -> float:
    # Integers are accepted wherever a float is: JavaScript encoders write 1.0 as 1.
    if not isinstance(v, int | float) or isinstance(v, bool):
        _bad(f"{what}: expected a number, got {type(v).__name__}")
    x = float(v)
    if not math.isfinite(x) or abs(x) > limit:
        _bad(f"{what}: {x!r} is not a finite number of magnitude <= {limit}")
    return x


def _str(v: Any, what: str, max_bytes: int | None = None, min_bytes: int = 0) -> str:
    if not isinstance(v, str):
        _bad(f"{what}: expected a string, got {type(v).__name__}")
    if max_bytes is not None or min_bytes:
        try:
            n = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            _bad(f"{what}: not encodable as UTF-8")
        if n < min_bytes or (max_bytes is not None and n > max_bytes):
            _bad(f"{what}: {n} UTF-8 bytes, allowed {min_bytes}..{max_bytes}")
    return v


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        _bad(f"{what}: expected a boolean, got {type(v).__name__}")
    return v


def _bin(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes):
        _bad(f"{what}: expected bin, got {type(v).__name__}")
    return v


def _body(v: Any, what: str) -> Any:
    """A MESSAGE body: nil, bool, int, float, str, bin, arrays and string-keyed maps."""
    stack: list[tuple[Any, int]] = [(v, 0)]
    while stack:
        x, depth = stack.pop()
        if x is None or isinstance(x, bool | float | str | bytes | bytearray):
            continue
        if isinstance(x, int):
            if not _I64_MIN <= x <= _U64:
                _bad(f"{what}: integer {x} does not fit msgpack")
            continue
        # ExtType is a namedtuple: refuse it before it passes for an array.
        if isinstance(x, list | tuple | dict) and not isinstance(x, msgpack.ExtType):
            if depth >= MAX_BODY_DEPTH:
                _bad(f"{what}: nested deeper than {MAX_BODY_DEPTH}")
            if isinstance(x, dict):
                for key in x:
                    if not isinstance(key, str):
                        _bad(f"{what}: map keys must be strings, got {type(key).__name__}")
                stack.extend((item, depth + 1) for item in x.values())
            else:
                stack.extend((item, depth + 1) for item in x)
            continue
        _bad(f"{what}: {type(x).__name__} is not allowed in a body")
    return v


def _field_description(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        _bad(f"{what}: a field description is a map, got {type(v).__name__}")
    _str(v.get("name"), f"{what}.name", None, 1)
    dtype = _str(v.get("dtype"), f"{what}.dtype")
    if dtype not in _DTYPE_SIZE:
        _bad(f"{what}.dtype: {dtype!r} is not one of {', '.join(_DTYPE_SIZE)}")
    shape = v.get("shape")
    if not isinstance(shape, list | tuple) or len(shape) > 8:
        _bad(f"{what}.shape: expected an array of at most 8 sizes")
    for s in shape:
        _int(s, f"{what}.shape", 1, 0xFFFF)
    _str(v.get("scope"), f"{what}.scope")
    return v


def _fields_array(v: Any, what: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(v, list | tuple):
        _bad(f"{what}: expected an array, got {type(v).__name__}")
    return tuple(_field_description(f, f"{what}[{i}]") for i, f in enumerate(v))


def _arity(name: str, items: list[Any], low: int, high: int) -> None:
    if not low <= len(items) <= high:
        want = str(low) if low == high else f"{low}..{high}"
        _bad(f"{name} takes {want} fields, got {len(items)}")


def _parse_hello(f: list[Any]) -> Hello:
    if not f:
        _bad("Hello takes 1..4 fields, got 0")
    version = _int(f[0], "Hello.version", _I64_MIN, _U64)
    if version != PROTOCOL_VERSION:
        # Only the version is common to every protocol version: the rest is not ours to
        # read, and the server must still be able to answer UNSUPPORTED_VERSION.
        return Hello(version)
    _arity("Hello", f, 1, 4)
    strs = [
        _str(v, f"Hello.{n}", MAX_HELLO_STR)
        for n, v in zip(("token", "resume", "client"), f[1:], strict=False)
    ]
    return Hello(version, *strs)


def _parse_input(f: list[Any]) -> Input:
    _arity("Input", f, 3, 4)
    seq = _int(f[0], "Input.seq", 0, _U32)
    ix = _float(f[1], "Input.ix", _F32_MAX)
    iy = _float(f[2], "Input.iy", _F32_MAX)
    actions = _int(f[3], "Input.actions", 0, _U32) if len(f) > 3 else 0
    return Input(seq, ix, iy, actions)


def _parse_client_message(f: list[Any]) -> Message:
    _arity("Message", f, 1, 2)
    kind = _str(f[0], "Message.kind", MAX_KIND_LEN, 1)
    return Message(kind, _body(f[1], "Message.body") if len(f) > 1 else None)


def _parse_server_message(f: list[Any]) -> Message:
    _arity("Message", f, 2, 2)
    return Message(_str(f[0], "Message.kind", MAX_KIND_LEN, 1), _body(f[1], "Message.body"))


def _parse_ping(f: list[Any]) -> Ping:
    _arity("Ping", f, 1, 2)
    nonce = _int(f[0], "Ping.nonce", 0, _U64)
    return Ping(nonce, _float(f[1], "Ping.client_time") if len(f) > 1 else 0.0)


def _parse_welcome(f: list[Any]) -> Welcome:
    _arity("Welcome", f, 13, 13)
    world = f[3]
    if not isinstance(world, list | tuple) or len(world) != 4:
        _bad("Welcome.world: expected an array of 4 numbers")
    x0, y0, x1, y1 = (_float(v, "Welcome.world") for v in world)
    tick_hz = _float(f[4], "Welcome.tick_hz")
    snapshot_hz = _float(f[5], "Welcome.snapshot_hz")
    pos_quantum = _float(f[6], "Welcome.pos_quantum")
    if not (tick_hz > 0 and snapshot_hz > 0 and pos_quantum > 0):
        _bad("Welcome: tick_hz, snapshot_hz and pos_quantum must be > 0")
    return Welcome(
        version=_int(f[0], "Welcome.version", 0, _U32),
        entity_id=_int(f[1], "Welcome.entity_id", 0, _U64),
        player_id=_int(f[2], "Welcome.player_id", 0, _U64),
        world=(x0, y0, x1, y1),
        tick_hz=tick_hz,
        snapshot_hz=snapshot_hz,
        pos_quantum=pos_quantum,
        server_time=_float(f[7], "Welcome.server_time"),
        resume_token=_str(f[8], "Welcome.resume_token", MAX_HELLO_STR),
        resumed=_bool(f[9], "Welcome.resumed"),
        pub_fields=_fields_array(f[10], "Welcome.pub_fields"),
        own_fields=_fields_array(f[11], "Welcome.own_fields"),
        world_name=_str(f[12], "Welcome.world_name"),
    )


def _parse_snapshot(f: list[Any]) -> Snapshot:
    _arity("Snapshot", f, 3, 3)
    return Snapshot(
        _int(f[0], "Snapshot.tick", 0, _U32),
        _int(f[1], "Snapshot.ack", 0, _U32),
        _bin(f[2], "Snapshot.payload"),
    )


def _parse_pong(f: list[Any]) -> Pong:
    _arity("Pong", f, 3, 3)
    return Pong(
        _int(f[0], "Pong.nonce", 0, _U64),
        _float(f[1], "Pong.client_time"),
        _float(f[2], "Pong.server_time"),
    )


def _parse_error(f: list[Any]) -> Error:
    _arity("Error", f, 2, 2)
    return Error(_int(f[0], "Error.code", 0, _U32), _str(f[1], "Error.text"))


def _parse_kick(f: list[Any]) -> Kick:
    _arity("Kick", f, 2, 2)
    return Kick(_int(f[0], "Kick.code", 0, _U32), _str(f[1], "Kick.reason"))


_CLIENT_PARSERS: dict[int, Callable[[list[Any]], ClientMessage]] = {
    MsgType.HELLO: _parse_hello,
    MsgType.INPUT: _parse_input,
    MsgType.MESSAGE: _parse_client_message,
    MsgType.PING: _parse_ping,
}
_SERVER_PARSERS: dict[int, Callable[[list[Any]], ServerMessage]] = {
    MsgType.WELCOME: _parse_welcome,
    MsgType.SNAPSHOT: _parse_snapshot,
    MsgType.MESSAGE: _parse_server_message,
    MsgType.PONG: _parse_pong,
    MsgType.ERROR: _parse_error,
    MsgType.KICK: _parse_kick,
}


# --- encoding ---------------------------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True)


def _fields_of(msg: AnyMessage) -> tuple[int, list[Any]]:
    if isinstance(msg, Hello):
        return MsgType.HELLO, [msg.version, msg.token, msg.resume, msg.client]
    if isinstance(msg, Input):
        return MsgType.INPUT, [msg.seq, msg.ix, msg.iy, msg.actions]
    if isinstance(msg, Ping):
        return MsgType.PING, [msg.nonce, msg.client_time]
    if isinstance(msg, Pong):
        return MsgType.PONG, [msg.nonce, msg.client_time, msg.server_time]
    if isinstance(msg, Error):
        return MsgType.ERROR, [msg.code, msg.text]
    if isinstance(msg, Kick):
        return MsgType.KICK, [msg.code, msg.reason]
    if isinstance(msg, Welcome):
        return MsgType.WELCOME, [
            msg.version,
            msg.entity_id,
            msg.player_id,
            list(msg.world),
            msg.tick_hz,
            msg.snapshot_hz,
            msg.pos_quantum,
            msg.server_time,
            msg.resume_token,
            msg.resumed,
            [dict(f) for f in msg.pub_fields],
            [dict(f) for f in msg.own_fields],
            msg.world_name,
        ]
    raise TypeError(f"not a protocol message: {msg!r}")


def _as_float(v: Any) -> Any:
    # Float fields always travel as float64, whatever real number type the caller used
    # (numpy scalars included).
    if type(v) is float:
        return v
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v


def _as_int(v: Any) -> Any:
    # numpy integers (an ack read from a uint32 column, an id from a uint64 one) are ints.
    if type(v) is int:
        return v
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v


_FLOAT_SLOTS: dict[int, tuple[int, ...]] = {
    MsgType.INPUT: (1, 2),
    MsgType.PING: (1,),
    MsgType.PONG: (1, 2),
    MsgType.WELCOME: (4, 5, 6, 7),
}
_INT_SLOTS: dict[int, tuple[int, ...]] = {
    MsgType.HELLO: (0,),
    MsgType.INPUT: (0, 3),
    MsgType.PING: (0,),
    MsgType.PONG: (0,),
    MsgType.ERROR: (0,),
    MsgType.KICK: (0,),
    MsgType.WELCOME: (0, 1, 2),
}


def _checked(parse: Callable[[list[Any]], AnyMessage], fields: list[Any]) -> None:
    try:
        parse(fields)
    except ProtocolError as exc:
        raise ValueError(exc.text) from exc


def encode(msg: AnyMessage) -> bytes:
    """The bytes of one WebSocket binary message carrying ``msg``.

    Numbers may be any Python or numpy integer or real (they are written as ints and
    float64). Raises ``ValueError`` if ``msg`` breaks a field rule the receiving decoder
    enforces (ranges, string lengths, body types and depth), or if a MESSAGE body packs to
    more than :data:`MAX_CUSTOM_BODY` bytes; ``TypeError`` if ``msg`` is not a message.
    """
    if isinstance(msg, Snapshot):
        payload: Any = msg.payload
        if not isinstance(payload, bytes | str):
            # bytearray, memoryview or a uint8 numpy array: the zone's payload as it comes.
            with contextlib.suppress(TypeError):
                payload = memoryview(payload).tobytes()
        tick, ack = _as_int(msg.tick), _as_int(msg.ack)
        _checked(_parse_snapshot, [tick, ack, payload])
        return encode_snapshot(tick, ack, payload)
    if isinstance(msg, Message):
        _checked(_parse_server_message, [msg.kind, msg.body])
        body = _packer.pack(msg.body)
        if len(body) > MAX_CUSTOM_BODY:
            raise ValueError(f"Message.body packs to {len(body)} bytes > {MAX_CUSTOM_BODY}")
        return b"\x93\x05" + _packer.pack(msg.kind) + body
    t, fields = _fields_of(msg)
    for i in _FLOAT_SLOTS.get(t, ()):
        fields[i] = _as_float(fields[i])
    for i in _INT_SLOTS[t]:
        fields[i] = _as_int(fields[i])
    if t == MsgType.WELCOME:
        fields[3] = [_as_float(v) for v in fields[3]]
    _checked(_CLIENT_PARSERS[t] if t in _CLIENT_PARSERS else _SERVER_PARSERS[t], fields)
    return _packer.pack([t, *fields])


_SNAP_HEAD = struct.Struct(">BBBIBI")


def snapshot_prefix(tick: int, ack: int, payload_len: int) -> bytes:
    """The msgpack bytes that precede a snapshot payload (14, 15 or 17 bytes).

    ``[4, uint32 tick, uint32 ack, bin payload]``: 0x94, 0x04, 0xce + tick, 0xce + ack,
    then a bin8/16/32 header. Gateways can write this prefix and the zone's payload without
    copying the payload into a new msgpack object. ``tick`` and ``ack`` are written as their
    low 32 bits.
    """
    if not 0 <= payload_len <= _U32:
        raise ValueError(f"a snapshot payload of {payload_len} bytes does not fit bin32")
    head = _SNAP_HEAD.pack(0x94, MsgType.SNAPSHOT, 0xCE, tick & _U32, 0xCE, ack & _U32)
    if payload_len < 0x100:
        return head + bytes((0xC4, payload_len))
    if payload_len < 0x10000:
        return head + b"\xc5" + payload_len.to_bytes(2, "big")
    return head + b"\xc6" + payload_len.to_bytes(4, "big")


def encode_snapshot(tick: int, ack: int, payload: Buffer) -> bytes:
    """A SNAPSHOT message, built without msgpack (any msgpack decoder reads it: the ints are
    always written as uint32, where msgpack itself would pick the shortest form).

    ``payload`` is any buffer: bytes, a memoryview or the zone's ``uint8`` array slice.
    """
    data = (
        bytes(payload) if isinstance(payload, bytes | bytearray | memoryview) else payload.tobytes()
    )
    return snapshot_prefix(tick, ack, len(data)) + data


# --- decoding ---------------------------------------------------------------------------


def _unpack(data: Frame | str, max_size: int) -> list[Any]:
    if isinstance(data, str):
        raise ProtocolError(ErrorCode.TEXT_FRAME, "text frames are not part of the protocol")
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(data)} bytes > {max_size}")
    if not len(data):
        raise ProtocolError(ErrorCode.MALFORMED, "empty message")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_ext_len=max_size,
            # Every element takes at least one byte, so these never refuse a frame that
            # fits; they stop a tiny header from announcing a huge array.
            max_array_len=max_size,
            max_map_len=max_size // 2,
        )
    except msgpack.ExtraData as exc:
        raise ProtocolError(ErrorCode.MALFORMED, "trailing bytes after the message") from exc
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        # ValueError covers truncation, bad UTF-8, reserved bytes and nesting deeper than
        # msgpack's own stack; TypeError covers map keys that cannot be dict keys.
        raise ProtocolError(ErrorCode.MALFORMED, f"not msgpack: {type(exc).__name__}") from exc
    except RecursionError as exc:  # pragma: no cover - the pure-Python msgpack fallback only
        raise ProtocolError(ErrorCode.MALFORMED, "nested too deeply") from exc
    if not isinstance(obj, list) or not obj:
        raise ProtocolError(ErrorCode.MALFORMED, "a message is a non-empty msgpack array")
    if not isinstance(obj[0], int) or isinstance(obj[0], bool):
        raise ProtocolError(ErrorCode.MALFORMED, "the first element is the integer type")
    return obj


def decode_client(data: Frame, max_size: int = MAX_CLIENT_MESSAGE) -> ClientMessage:
    """Parse one message a client sent. Raises :class:`ProtocolError` with the reply code.

    A HELLO whose version is not :data:`PROTOCOL_VERSION` decodes to ``Hello(version)``
    whatever its other fields hold, so the server can answer UNSUPPORTED_VERSION. A ``str``
    (a text frame, as WebSocket libraries deliver it) raises TEXT_FRAME.
    """
    obj = _unpack(data, max_size)
    parse = _CLIENT_PARSERS.get(obj[0])
    if parse is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type {obj[0]} is not a client message")
    return parse(obj[1:])


def decode_server(data: Frame, max_size: int = MAX_SERVER_MESSAGE) -> ServerMessage:
    """Parse one message a server sent (clients, bots and tests use this)."""
    obj = _unpack(data, max_size)
    parse = _SERVER_PARSERS.get(obj[0])
    if parse is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type {obj[0]} is not a server message")
    return parse(obj[1:])
