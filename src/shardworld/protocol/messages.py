"""Protocol v1 between players and gateways: messages, their bytes, their errors. Sans-I/O.

Every WebSocket message is one binary frame holding one msgpack array whose first element
is the message type::

    [type, field1, field2, ...]

Bulk entity data never appears as msgpack maps: a snapshot carries the zone's packed
payload (docs/snapshot-format.md) as one msgpack ``bin``. This module imports no asyncio,
websockets, Kafka or Redis: ``decode_client`` / ``decode_server`` turn bytes into message
objects (or raise :class:`ProtocolError` with a code), ``encode`` turns them back into bytes.
docs/protocol.md documents every message byte by byte.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_CUSTOM_BODY = 16 * 1024
MAX_KIND_LEN = 64


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


ClientMessage = Hello | Input | Message | Ping
ServerMessage = Welcome | Snapshot | Message | Pong | Error | Kick
AnyMessage = ClientMessage | ServerMessage


@dataclass
class _Spec:
    cls: type
    fields: tuple[tuple[str, tuple[type, ...]], ...]
    optional_from: int = field(default=-1)


_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_ANY = (object,)

_CLIENT_SPECS: dict[int, _Spec] = {
    MsgType.HELLO: _Spec(
        Hello,
        (("version", _INT), ("token", _STR), ("resume", _STR), ("client", _STR)),
        optional_from=1,
    ),
    MsgType.INPUT: _Spec(
        Input, (("seq", _INT), ("ix", _NUM), ("iy", _NUM), ("actions", _INT)), optional_from=3
    ),
    MsgType.MESSAGE: _Spec(Message, (("kind", _STR), ("body", _ANY)), optional_from=1),
    MsgType.PING: _Spec(Ping, (("nonce", _INT), ("client_time", _NUM)), optional_from=1),
}


# --- encoding ---------------------------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True)


def encode(msg: AnyMessage) -> bytes:
    """The bytes of one WebSocket binary message carrying ``msg``."""
    if isinstance(msg, Snapshot):
        return encode_snapshot(msg.tick, msg.ack, msg.payload)
    if isinstance(msg, Hello):
        body: list[Any] = [MsgType.HELLO, msg.version, msg.token, msg.resume, msg.client]
    elif isinstance(msg, Input):
        body = [MsgType.INPUT, msg.seq, float(msg.ix), float(msg.iy), msg.actions]
    elif isinstance(msg, Message):
        body = [MsgType.MESSAGE, msg.kind, msg.body]
    elif isinstance(msg, Ping):
        body = [MsgType.PING, msg.nonce, float(msg.client_time)]
    elif isinstance(msg, Pong):
        body = [MsgType.PONG, msg.nonce, float(msg.client_time), float(msg.server_time)]
    elif isinstance(msg, Error):
        body = [MsgType.ERROR, int(msg.code), msg.text]
    elif isinstance(msg, Kick):
        body = [MsgType.KICK, int(msg.code), msg.reason]
    elif isinstance(msg, Welcome):
        body = [
            MsgType.WELCOME,
            msg.version,
            msg.entity_id,
            msg.player_id,
            [float(v) for v in msg.world],
            float(msg.tick_hz),
            float(msg.snapshot_hz),
            float(msg.pos_quantum),
            float(msg.server_time),
            msg.resume_token,
            bool(msg.resumed),
            [dict(f) for f in msg.pub_fields],
            [dict(f) for f in msg.own_fields],
            msg.world_name,
        ]
    else:  # pragma: no cover - the type union is closed
        raise TypeError(f"not a protocol message: {msg!r}")
    return _packer.pack(body)


_SNAP_HEAD = struct.Struct(">BBBIBI")


def snapshot_prefix(tick: int, ack: int, payload_len: int) -> bytes:
    """The msgpack bytes that precede a snapshot payload (14, 15 or 17 bytes).

    ``[4, uint32 tick, uint32 ack, bin payload]``: 0x94, 0x04, 0xce + tick, 0xce + ack,
    then a bin8/16/32 header. Gateways can write this prefix and the zone's payload without
    copying the payload into a new msgpack object.
    """
    head = _SNAP_HEAD.pack(0x94, MsgType.SNAPSHOT, 0xCE, tick & 0xFFFFFFFF, 0xCE, ack & 0xFFFFFFFF)
    if payload_len < 0x100:
        return head + bytes((0xC4, payload_len))
    if payload_len < 0x10000:
        return head + b"\xc5" + payload_len.to_bytes(2, "big")
    return head + b"\xc6" + payload_len.to_bytes(4, "big")


def encode_snapshot(tick: int, ack: int, payload: bytes) -> bytes:
    """A SNAPSHOT message, built without msgpack (any msgpack decoder reads it: the ints are
    always written as uint32, where msgpack itself would pick the shortest form)."""
    return snapshot_prefix(tick, ack, len(payload)) + bytes(payload)


# --- decoding ---------------------------------------------------------------------------


def _unpack(data: bytes, max_size: int) -> list[Any]:
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(data)} bytes > {max_size}")
    if not data:
        raise ProtocolError(ErrorCode.MALFORMED, "empty message")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=4096,
            max_map_len=1024,
        )
    except msgpack.ExtraData as exc:
        raise ProtocolError(ErrorCode.MALFORMED, "trailing bytes after the message") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"not msgpack: {type(exc).__name__}") from exc
    except RecursionError as exc:  # pragma: no cover - msgpack limits nesting itself
        raise ProtocolError(ErrorCode.MALFORMED, "nested too deeply") from exc
    if not isinstance(obj, list) or not obj:
        raise ProtocolError(ErrorCode.MALFORMED, "a message is a non-empty msgpack array")
    if not isinstance(obj[0], int) or isinstance(obj[0], bool):
        raise ProtocolError(ErrorCode.MALFORMED, "the first element is the integer type")
    return obj


def _check(spec: _Spec, items: list[Any]) -> dict[str, Any]:
    n = len(spec.fields)
    low = spec.optional_from if spec.optional_from >= 0 else n
    if not low <= len(items) <= n:
        raise ProtocolError(
            ErrorCode.BAD_FIELD,
            f"{spec.cls.__name__} takes {low}..{n} fields, got {len(items)}",
        )
    out: dict[str, Any] = {}
    for (name, types), value in zip(spec.fields, items, strict=False):
        if types is not _ANY and (not isinstance(value, types) or isinstance(value, bool)):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"{spec.cls.__name__}.{name}: expected {types[0].__name__}, "
                f"got {type(value).__name__}",
            )
        out[name] = value
    return out


def decode_client(data: bytes, max_size: int = 4096) -> ClientMessage:
    """Parse one message a client sent. Raises :class:`ProtocolError` with the reply code."""
    obj = _unpack(data, max_size)
    spec = _CLIENT_SPECS.get(obj[0])
    if spec is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type {obj[0]} is not a client message")
    kw = _check(spec, obj[1:])
    if spec.cls is Input:
        seq = kw["seq"]
        if not 0 <= seq <= 0xFFFFFFFF:
            raise ProtocolError(ErrorCode.BAD_FIELD, "Input.seq must be a uint32")
        ix, iy = float(kw["ix"]), float(kw["iy"])
        if not (math.isfinite(ix) and math.isfinite(iy)):
            raise ProtocolError(ErrorCode.BAD_FIELD, "Input intent must be finite")
        actions = kw.get("actions", 0)
        if not 0 <= actions <= 0xFFFFFFFF:
            raise ProtocolError(ErrorCode.BAD_FIELD, "Input.actions must be a uint32")
        return Input(seq, ix, iy, actions)
    if spec.cls is Hello:
        for name in ("token", "resume", "client"):
            if len(kw.get(name, "")) > 1024:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"Hello.{name} longer than 1024")
        return Hello(**kw)
    if spec.cls is Message:
        kind = kw["kind"]
        if not 0 < len(kind) <= MAX_KIND_LEN:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"Message.kind must be 1..{MAX_KIND_LEN}")
        return Message(kind, kw.get("body"))
    if spec.cls is Ping:
        if not 0 <= kw["nonce"] <= 0xFFFFFFFFFFFFFFFF:
            raise ProtocolError(ErrorCode.BAD_FIELD, "Ping.nonce must be a uint64")
        return Ping(kw["nonce"], float(kw.get("client_time", 0.0)))
    raise AssertionError("unreachable")  # pragma: no cover


def decode_server(data: bytes, max_size: int = 16 * 1024 * 1024) -> ServerMessage:
    """Parse one message a server sent (clients, bots and tests use this)."""
    obj = _unpack(data, max_size)
    t, rest = obj[0], obj[1:]
    try:
        if t == MsgType.SNAPSHOT:
            tick, ack, payload = rest
            if not isinstance(payload, bytes):
                raise TypeError("payload")
            return Snapshot(int(tick), int(ack), payload)
        if t == MsgType.WELCOME:
            (ver, eid, pid, world, thz, shz, quantum, stime, resume, resumed, pub, own, name) = rest
            return Welcome(
                int(ver),
                int(eid),
                int(pid),
                tuple(float(v) for v in world),  # type: ignore[arg-type]
                float(thz),
                float(shz),
                float(quantum),
                float(stime),
                str(resume),
                bool(resumed),
                tuple(pub),
                tuple(own),
                str(name),
            )
        if t == MsgType.MESSAGE:
            kind, body = rest
            return Message(str(kind), body)
        if t == MsgType.PONG:
            nonce, ctime, stime = rest
            return Pong(int(nonce), float(ctime), float(stime))
        if t == MsgType.ERROR:
            code, text = rest
            return Error(int(code), str(text))
        if t == MsgType.KICK:
            code, reason = rest
            return Kick(int(code), str(reason))
    except (ValueError, TypeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"type {t}: {exc}") from exc
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type {t} is not a server message")
