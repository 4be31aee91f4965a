"""One player connection's protocol state machine. Sans-I/O: no asyncio, no sockets.

The gateway feeds a :class:`Session` every frame it receives with the current time, and
carries out the actions it gets back, in order::

    actions = session.receive(frame, now)      # bytes: a binary frame; str: a text frame
    for a in actions:
        match a:
            case Send(data): ...                 # one binary WebSocket message
            case Join(...): ...                  # then session.joined() or .join_failed()
            case SubmitInput(...) | Forward(...) | ReplyPong(...): ...   # world calls
            case Report(...): ...                # count it; log it when ``first``
            case Close(code, reason, kick): ...  # close the connection; nothing follows

States: ``AWAITING_HELLO`` (until ``deadline``; :meth:`Session.poll` closes with 4005 after
it) → ``JOINING`` (the gateway is attaching the player to the world) → ``JOINED`` →
``CLOSING`` (everything received is ignored). Nothing here raises on bad input: every
problem becomes an ERROR message with its code, and either the message is dropped or the
connection is closed. Every error spends from an error budget; a connection that runs it
dry is kicked (``ABUSE``, close 4003).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardworld.gateway.auth import AuthError, Claims
from shardworld.protocol.messages import (
    PROTOCOL_VERSION,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Input,
    Kick,
    Message,
    Ping,
    ProtocolError,
    decode_client,
    encode,
)

_F32_MAX = 3.4028234663852886e38


class State(enum.IntEnum):
    AWAITING_HELLO = 0
    JOINING = 1
    JOINED = 2
    CLOSING = 3


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits. One instance is shared by every session of a gateway.

    Rates are token buckets: ``*_per_s`` is the sustained rate, ``*_burst`` how much may
    arrive at once. A message over either bucket is answered with ERROR RATE_LIMITED and
    dropped. The error budget works the same way: ``error_burst`` errors at once, refilled
    at ``errors_per_s``; the error that finds it empty gets the connection kicked (ABUSE).
    """

    max_message_bytes: int = 4096
    messages_per_s: float = 60.0
    message_burst: float = 120.0
    bytes_per_s: float = 16384.0
    byte_burst: float = 65536.0
    max_seq_jump: int = 1024
    """An input's sequence number may be at most this far past the last accepted one."""
    hello_timeout_s: float = 5.0
    error_burst: float = 20.0
    errors_per_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("messages_per_s", "message_burst", "bytes_per_s", "byte_burst"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SessionLimits.{name} must be > 0")
        if self.max_message_bytes < 16:
            raise ValueError("SessionLimits.max_message_bytes must be >= 16")
        if self.byte_burst < self.max_message_bytes:
            raise ValueError("SessionLimits.byte_burst must be >= max_message_bytes")
        if self.message_burst < 1:
            raise ValueError("SessionLimits.message_burst must be >= 1")
        if self.max_seq_jump < 1:
            raise ValueError("SessionLimits.max_seq_jump must be >= 1")
        if not self.hello_timeout_s > 0:
            raise ValueError("SessionLimits.hello_timeout_s must be > 0")
        if self.error_burst < 0 or self.errors_per_s < 0:
            raise ValueError("SessionLimits error budget must be >= 0")


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` as one binary WebSocket message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with ``code``. ``kick`` is set when a KICK message went first."""

    code: int
    reason: str
    kick: ErrorCode | None = None


@dataclass(frozen=True, slots=True)
class Join:
    """Attach the player to the world, then call :meth:`Session.joined` (or ``join_failed``).

    ``player_id`` is None for an anonymous player (dev mode without a token): the gateway
    picks one, or takes the one its ``resume`` token names.
    """

    player_id: int | None
    name: str
    resume: str
    client: str


@dataclass(frozen=True, slots=True)
class SubmitInput:
    seq: int
    ix: float
    iy: float
    actions: int


@dataclass(frozen=True, slots=True)
class Forward:
    """A custom message for the world's handler."""

    kind: str
    body: Any


@dataclass(frozen=True, slots=True)
class ReplyPong:
    """Answer a PING: PONG with the nonce, the client's time and the server's time."""

    nonce: int
    client_time: float


@dataclass(frozen=True, slots=True)
class Report:
    """An error happened (count it). ``first``: the first of this code on this connection
    (log it; later ones are only counted)."""

    code: ErrorCode
    text: str
    first: bool


Action = Send | Close | Join | SubmitInput | Forward | ReplyPong | Report

Verifier = Callable[[str], Claims]
"""Checks a token (raising :class:`~shardworld.gateway.auth.AuthError`), e.g. a
:class:`~shardworld.gateway.auth.TokenVerifier`."""


class Session:
    """The protocol state of one connection (see the module docstring).

    Args:
        limits: the shared per-connection limits.
        now: the time the connection opened (seconds, any monotonic scale; the same scale
            as every later ``now``).
        verify: token check; may be None only in dev mode.
        dev: accept HELLOs without a token (anonymous players). A token that is present is
            still checked when ``verify`` is given.
    """

    __slots__ = (
        "_byte_tokens",
        "_err_t",
        "_err_tokens",
        "_logged",
        "_msg_tokens",
        "_t",
        "bytes_in",
        "deadline",
        "dev",
        "entity_id",
        "errors",
        "inputs",
        "last_seq",
        "limits",
        "messages_in",
        "player_id",
        "state",
        "verify",
    )

    def __init__(
        self, limits: SessionLimits, now: float, verify: Verifier | None = None, dev: bool = False
    ) -> None:
        if verify is None and not dev:
            raise ValueError("a session needs a token verifier unless in dev mode")
        self.limits = limits
        self.verify = verify
        self.dev = dev
        self.state = State.AWAITING_HELLO
        self.deadline: float | None = now + limits.hello_timeout_s
        self._t = now
        self._msg_tokens = float(limits.message_burst)
        self._byte_tokens = float(limits.byte_burst)
        self._err_t = now
        self._err_tokens = float(limits.error_burst)
        self._logged = 0
        self.errors: dict[ErrorCode, int] | None = None
        self.messages_in = 0
        self.bytes_in = 0
        self.inputs = 0
        self.last_seq = 0
        self.player_id = 0
        self.entity_id = 0

    # --- fed by the gateway ------------------------------------------------------------------

    def receive(self, data: bytes | str, now: float) -> list[Action]:
        """Handle one received message (``str``: it came in a text frame)."""
        if self.state is State.CLOSING:
            return []
        try:
            return self._receive(data, now)
        except Exception as exc:  # a bug here must not take the gateway down
            return self._fatal(
                ErrorCode.INTERNAL,
                f"internal error: {type(exc).__name__}",
                CloseCode.INTERNAL,
                now,
            )

    def poll(self, now: float) -> list[Action]:
        """Time passed: close a connection that sent no HELLO by :attr:`deadline`."""
        deadline = self.deadline
        if self.state is State.AWAITING_HELLO and deadline is not None and now >= deadline:
            return self.kick(
                ErrorCode.NOT_JOINED, "no HELLO in time", CloseCode.HANDSHAKE_TIMEOUT, now
            )
        return []

    def joined(self, player_id: int, entity_id: int, last_seq: int = 0) -> None:
        """The gateway attached the player: inputs flow from now on. ``last_seq`` is the last
        input sequence number accepted for this entity (when resuming), so numbering goes on."""
        if self.state is not State.JOINING:
            return
        self.state = State.JOINED
        self.player_id = player_id
        self.entity_id = entity_id
        self.last_seq = last_seq

    def join_failed(self, code: ErrorCode, text: str, close_code: int, now: float) -> list[Action]:
        """The gateway could not attach the player: ERROR, then close."""
        return self._fatal(code, text, close_code, now)

    def error(self, code: ErrorCode, text: str, now: float) -> list[Action]:
        """An error the gateway found (e.g. RESUME_FAILED): ERROR, counted like any other."""
        if self.state is State.CLOSING:
            return []
        return self._error(code, text, now)

    def kick(self, code: ErrorCode, reason: str, close_code: int, now: float) -> list[Action]:
        """KICK with ``code``, then close with ``close_code``. (Kicks are counted by the
        gateway from the Close action; the error that led to one was reported already.)"""
        if self.state is State.CLOSING:
            return []
        self.state = State.CLOSING
        self.deadline = None
        return [Send(encode(Kick(int(code), reason))), Close(int(close_code), reason, code)]

    def note(self, code: ErrorCode, text: str) -> Report:
        """Count an error the gateway saw when no ERROR can be sent any more (the WebSocket
        library already closed the connection, e.g. 1009 for an oversized frame)."""
        return self._report(code, text)

    def closed(self) -> None:
        """The connection is gone (or going): ignore anything that still arrives."""
        self.state = State.CLOSING
        self.deadline = None

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state.name,
            "player_id": self.player_id,
            "entity_id": self.entity_id,
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "inputs": self.inputs,
            "last_seq": self.last_seq,
            "errors": {c.name: n for c, n in (self.errors or {}).items()},
        }

    # --- internals ------------------------------------------------------------------------------

    def _receive(self, data: bytes | str, now: float) -> list[Action]:
        if isinstance(data, str):
            self.messages_in += 1
            return self._fatal(
                ErrorCode.TEXT_FRAME,
                "text frames are not part of the protocol: send binary frames",
                CloseCode.UNSUPPORTED_DATA,
                now,
            )
        n = len(data)
        self.messages_in += 1
        self.bytes_in += n
        limits = self.limits
        if n > limits.max_message_bytes:
            return self._error(ErrorCode.TOO_LARGE, f"{n} bytes > {limits.max_message_bytes}", now)
        if now > self._t:
            dt = now - self._t
            self._msg_tokens = min(
                float(limits.message_burst), self._msg_tokens + dt * limits.messages_per_s
            )
            self._byte_tokens = min(
                float(limits.byte_burst), self._byte_tokens + dt * limits.bytes_per_s
            )
            self._t = now
        if self._msg_tokens < 1.0 or self._byte_tokens < n:
            return self._error(ErrorCode.RATE_LIMITED, "message dropped: slow down", now)
        self._msg_tokens -= 1.0
        self._byte_tokens -= n
        try:
            msg = decode_client(data, limits.max_message_bytes)
        except ProtocolError as exc:
            return self._error(exc.code, exc.text, now)

        if isinstance(msg, Hello):
            if self.state is not State.AWAITING_HELLO:
                return self._error(ErrorCode.ALREADY_JOINED, "HELLO was already sent", now)
            return self._hello(msg, now)
        if self.state is not State.JOINED:
            return self._error(ErrorCode.NOT_JOINED, "send HELLO and wait for WELCOME", now)
        if isinstance(msg, Input):
            return self._input(msg, now)
        if isinstance(msg, Message):
            return [Forward(msg.kind, msg.body)]
        if isinstance(msg, Ping):
            return [ReplyPong(msg.nonce, msg.client_time)]
        raise AssertionError(f"unhandled client message {type(msg).__name__}")  # pragma: no cover

    def _hello(self, msg: Hello, now: float) -> list[Action]:
        if msg.version != PROTOCOL_VERSION:
            return self._fatal(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {msg.version} is not supported; this server speaks "
                f"{PROTOCOL_VERSION}",
                CloseCode.UNSUPPORTED_VERSION,
                now,
            )
        player_id: int | None = None
        name = ""
        if msg.token and self.verify is not None:
            try:
                claims = self.verify(msg.token)
            except AuthError as exc:
                return self._fatal(
                    ErrorCode.AUTH_FAILED,
                    f"token refused: {exc.reason}",
                    CloseCode.AUTH_FAILED,
                    now,
                )
            player_id, name = claims.player_id, claims.name
        elif not self.dev:
            return self._fatal(ErrorCode.AUTH_FAILED, "token required", CloseCode.AUTH_FAILED, now)
        self.state = State.JOINING
        self.deadline = None
        return [Join(player_id, name, msg.resume, msg.client)]

    def _input(self, msg: Input, now: float) -> list[Action]:
        seq = msg.seq
        if seq <= self.last_seq:
            return self._error(
                ErrorCode.OUT_OF_ORDER, f"input seq {seq} is not after {self.last_seq}", now
            )
        if seq - self.last_seq > self.limits.max_seq_jump:
            return self._error(
                ErrorCode.FROM_THE_FUTURE,
                f"input seq {seq} jumps more than {self.limits.max_seq_jump} past {self.last_seq}",
                now,
            )
        # decode_client guarantees finite values; float32 (the zone's columns) must hold them too.
        if abs(msg.ix) > _F32_MAX or abs(msg.iy) > _F32_MAX or not math.isfinite(msg.ix + msg.iy):
            return self._error(ErrorCode.BAD_FIELD, "Input intent out of range", now)
        self.last_seq = seq
        self.inputs += 1
        return [SubmitInput(seq, msg.ix, msg.iy, msg.actions)]

    def _report(self, code: ErrorCode, text: str) -> Report:
        errors = self.errors
        if errors is None:
            errors = self.errors = {}
        errors[code] = errors.get(code, 0) + 1
        bit = 1 << int(code)
        first = not self._logged & bit
        self._logged |= bit
        return Report(code, text, first)

    def _error(self, code: ErrorCode, text: str, now: float) -> list[Action]:
        out: list[Action] = [self._report(code, text), Send(encode(Error(int(code), text)))]
        limits = self.limits
        if now > self._err_t:
            self._err_tokens = min(
                float(limits.error_burst),
                self._err_tokens + (now - self._err_t) * limits.errors_per_s,
            )
            self._err_t = now
        if self._err_tokens >= 1.0:
            self._err_tokens -= 1.0
            return out
        out.extend(
            self.kick(ErrorCode.ABUSE, f"too many errors (last: {code.name})", CloseCode.ABUSE, now)
        )
        return out

    def _fatal(self, code: ErrorCode, text: str, close_code: int, now: float) -> list[Action]:
        self.state = State.CLOSING
        self.deadline = None
        return [
            self._report(code, text),
            Send(encode(Error(int(code), text))),
            Close(int(close_code), text[:120]),
        ]
