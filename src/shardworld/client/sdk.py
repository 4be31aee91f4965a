"""An asyncio client for protocol v1: connect, join, steer, read the world.

Usage::

    from shardworld.client import connect

    async with connect("ws://127.0.0.1:7700", token=token) as player:
        print(player.entity_id, player.world, player.snapshot_hz)
        async for snap in player.snapshots():      # already applied to player.mirror
            x, y = player.position() or (0.0, 0.0)
            await player.send_input(1.0, 0.0)      # walk east

A background task reads every frame the gateway sends as soon as it arrives and applies each
snapshot to :attr:`Player.mirror` in arrival order, so a client that is busy elsewhere never
becomes a slow reader: what the application has not
consumed yet waits in bounded queues whose oldest entries are dropped (and counted) when
they overflow. The mirror itself never misses a snapshot, because the reader applies them,
not the consumer.

Timing figures (RTT, server clock offset, snapshot age) are measured on this process's
monotonic clock and are explained in docs/client.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import struct
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import Close

from shardworld.protocol.messages import (
    PROTOCOL_VERSION,
    CloseCode,
    Error,
    ErrorCode,
    FieldLayout,
    Hello,
    Input,
    Kick,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Snapshot,
    Welcome,
    blob_layout,
    decode_server,
    encode,
)
from shardworld.protocol.snapshot import (
    FLAG_RESET,
    FLAG_WIDE,
    HEADER_SIZE,
    SnapshotDecodeError,
    SnapshotHeader,
    SnapshotMirror,
)
from shardworld.protocol.snapshot import Snapshot as DecodedSnapshot

__all__ = [
    "BlobDecoder",
    "ClientError",
    "ClockSync",
    "Connecting",
    "HandshakeError",
    "LatencyHistogram",
    "Metrics",
    "Player",
    "PlayerClosed",
    "ReceivedSnapshot",
    "VisibleTable",
    "connect",
    "error_name",
]

log = logging.getLogger("shardworld.client")

#: Largest frame accepted from the server (a snapshot of a very crowded view).
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
DEFAULT_SNAPSHOT_QUEUE: Final = 64
DEFAULT_MESSAGE_QUEUE: Final = 256
DEFAULT_PING_INTERVAL: Final = 1.0
DEFAULT_OPEN_TIMEOUT: Final = 10.0
RECENT_ERRORS: Final = 64
#: Clock-offset samples kept; the estimate uses the one with the smallest RTT among them.
CLOCK_SAMPLES: Final = 16
_U32: Final = 1 << 32
_ABNORMAL_CLOSE: Final = 1006


def error_name(code: int) -> str:
    """``ErrorCode`` name of ``code`` (``"RATE_LIMITED"``), or its digits if the code is new."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


# --- errors -----------------------------------------------------------------------------


class ClientError(Exception):
    """Anything the SDK reports about the connection (never a bug in the caller's code)."""


class HandshakeError(ClientError):
    """Could not join: no connection, no WELCOME in time, a KICK, or the server closed.

    ``code`` is the ``ErrorCode`` of the KICK (or of the last ERROR) when the server gave
    one; ``close_code``/``close_reason`` are the WebSocket close frame's, when there was one.
    The caller fixes what the code names (token, version) or retries later.
    """

    def __init__(
        self,
        text: str,
        *,
        code: int | None = None,
        close_code: int | None = None,
        close_reason: str = "",
    ) -> None:
        super().__init__(text)
        self.code = code
        self.close_code = close_code
        self.close_reason = close_reason


class PlayerClosed(ClientError):
    """A send on a connection that is closed. ``Player.kick`` and ``Player.close_code`` say why;
    the caller may :meth:`Player.resume`."""


# --- field layouts ----------------------------------------------------------------------


class BlobDecoder:
    """Reads the fields that WELCOME describes out of public or owner-scoped blobs.

    The layout (offsets, widths, which dtypes are allowed) is the protocol's
    :func:`~shardworld.protocol.messages.blob_layout`: fields packed in order, little-endian,
    no padding. :attr:`width` is the ``pub_width``/``own_width`` of the mirror.
    """

    def __init__(self, descriptions: Sequence[Mapping[str, Any]] = ()) -> None:
        """Raises ``ValueError`` on a description the protocol does not allow."""
        self.fields: tuple[FieldLayout, ...] = blob_layout(descriptions)
        self.width: int = sum(f.size for f in self.fields)
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in {names}")
        self.dtype: np.dtype[np.void] = np.dtype(
            {
                "names": names,
                "formats": [(f.dtype, f.shape) if f.shape else f.dtype for f in self.fields],
                "offsets": [f.offset for f in self.fields],
                "itemsize": self.width,
            }
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def decode(self, blob: bytes) -> dict[str, Any]:
        """Field name -> value: a numpy scalar, or an array for fields with a shape."""
        if len(blob) != self.width:
            raise ValueError(f"blob of {len(blob)} bytes, layout is {self.width} wide")
        if not self.fields:
            return {}
        row = np.frombuffer(blob, dtype=self.dtype, count=1)[0]
        return {f.name: row[f.name].copy() if f.shape else row[f.name] for f in self.fields}

    def decode_many(self, blobs: Sequence[bytes]) -> npt.NDArray[np.void]:
        """A structured array with one row per blob (``out["hp"]`` is a column)."""
        joined = b"".join(blobs)
        if len(joined) != self.width * len(blobs):
            raise ValueError(f"every blob must be {self.width} bytes wide")
        if self.width == 0:
            return np.zeros(len(blobs), dtype=self.dtype)
        return np.frombuffer(joined, dtype=self.dtype).copy()


# --- timing -----------------------------------------------------------------------------


class LatencyHistogram:
    """Durations in log-spaced buckets (2 % wide, 10 µs .. 100 s): fixed memory for any run.

    Percentiles are the geometric middle of the bucket holding the nearest-rank sample,
    clamped to the exact min and max, so they are within about 1 % of the exact value (the
    smallest and largest ranks give the min and max themselves). Histograms subtract
    (:meth:`since`), which gives the figures of a time window, add up (:meth:`merge`), and
    travel between processes as JSON (:meth:`to_dict`, :meth:`from_dict`).
    """

    LOW: Final = 1e-5
    GROWTH: Final = 1.02
    BUCKETS: Final = 2 + math.ceil(math.log(1e2 / 1e-5) / math.log(1.02))

    def __init__(self) -> None:
        self.counts: npt.NDArray[np.int64] = np.zeros(self.BUCKETS, np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    _INV_LOG_G: Final = 1.0 / math.log(1.02)

    def record(self, seconds: float) -> None:
        """Add one duration (seconds; <= 10 µs lands in the first bucket)."""
        if not math.isfinite(seconds):
            return
        if seconds <= self.LOW:
            i = 0
        else:
            i = min(self.BUCKETS - 1, 1 + int(math.log(seconds / self.LOW) * self._INV_LOG_G))
        self.counts[i] += 1
        self.count += 1
        self.total += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100) in seconds, ``None`` when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        if rank == 1:
            return self.min
        if rank >= self.count:
            return self.max
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        mid = self.LOW / 2 if i == 0 else self.LOW * self.GROWTH ** (i - 0.5)
        return min(max(mid, self.min), self.max)

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out.counts = self.counts.copy()
        out.count, out.total, out.min, out.max = self.count, self.total, self.min, self.max
        return out

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The samples added after ``earlier`` (a :meth:`copy` of this histogram) was taken.

        A window's min and max cannot be subtracted: they are the edges of its lowest and
        highest non-empty buckets (clamped to the whole histogram's), so its figures are
        within one bucket (2 %) of the exact ones.
        """
        out = LatencyHistogram()
        out.counts = self.counts - earlier.counts
        out.count = self.count - earlier.count
        out.total = self.total - earlier.total
        used = np.flatnonzero(out.counts)
        if used.size:
            lo, hi = int(used[0]), int(used[-1])
            low_edge = 0.0 if lo == 0 else self.LOW * self.GROWTH ** (lo - 1)
            high_edge = math.inf if hi == self.BUCKETS - 1 else self.LOW * self.GROWTH**hi
            out.min = max(self.min, low_edge)
            out.max = min(self.max, high_edge)
        return out

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this one (histograms of several players or processes).

        Buckets add up exactly, so the merged percentiles are those of one histogram that
        recorded every sample of both.
        """
        self.counts += other.counts
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (only the non-empty buckets) that :meth:`from_dict` reads back
        exactly, for sending a histogram to another process."""
        used = np.flatnonzero(self.counts)
        empty = self.count == 0
        return {
            "count": self.count,
            "total": self.total,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "buckets": [[int(i), int(self.counts[i])] for i in used],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """The histogram that :meth:`to_dict` described; ``ValueError`` if it is inconsistent
        (bucket out of range, negative or mismatched counts)."""
        out = cls()
        try:
            for i, n in data["buckets"]:
                if not (0 <= int(i) < cls.BUCKETS and int(n) >= 0):
                    raise ValueError(f"bucket {i}: {n} is out of range")
                out.counts[int(i)] += int(n)
            out.count = int(data["count"])
            out.total = float(data["total"])
            if out.count:
                out.min, out.max = float(data["min"]), float(data["max"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a histogram: {exc}") from exc
        if int(out.counts.sum()) != out.count:
            raise ValueError("bucket counts do not add up to the histogram's count")
        return out


class ClockSync:
    """The server clock as seen from here, from request/response pairs that carry its time.

    Each sample is (local send time, server time, local receive time): the server read its
    clock somewhere between send and receive, so ``offset = server - (send + recv) / 2`` is
    off by at most RTT / 2. The estimate is the offset of the sample with the smallest RTT
    among the last :data:`CLOCK_SAMPLES` (the one a queue delayed least).
    """

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=CLOCK_SAMPLES)
        self.offset: float = 0.0
        """Server clock minus local monotonic clock, seconds."""
        self.uncertainty: float = math.inf
        """Half the RTT of the sample behind :attr:`offset` (its worst-case error)."""

    def add(self, sent: float, server_time: float, received: float) -> None:
        rtt = max(0.0, received - sent)
        self._samples.append((rtt, server_time - (sent + received) / 2.0))
        best_rtt, best_offset = min(self._samples)
        self.offset = best_offset
        self.uncertainty = best_rtt / 2.0

    def reset(self) -> None:
        self._samples.clear()
        self.offset = 0.0
        self.uncertainty = math.inf

    @property
    def samples(self) -> int:
        return len(self._samples)

    def to_server(self, local: float) -> float:
        """The server clock reading at local monotonic time ``local``."""
        return local + self.offset


@dataclass
class Metrics:
    """Counters and latency histograms. Several players may share one (bots do)."""

    started: float = field(default_factory=time.monotonic)
    snapshots: int = 0
    snapshot_bytes: int = 0
    snapshots_dropped: int = 0
    """Snapshots the application did not take from :meth:`Player.snapshots` before the
    queue overflowed (the mirror still applied them)."""
    messages: int = 0
    messages_dropped: int = 0
    inputs_sent: int = 0
    pings_sent: int = 0
    pongs: int = 0
    mirror_errors: int = 0
    """Payloads the mirror rejected (malformed, or not matching its state)."""
    protocol_errors: int = 0
    """Frames from the server that are not valid protocol v1 server messages."""
    errors: Counter[int] = field(default_factory=Counter)
    """ERROR messages received, by code."""
    kicks: Counter[int] = field(default_factory=Counter)
    """KICK messages received, by code."""
    snapshot_age: LatencyHistogram = field(default_factory=LatencyHistogram)
    """:attr:`ReceivedSnapshot.age` of every snapshot (a lower bound of the true age)."""
    snapshot_age_upper: LatencyHistogram = field(default_factory=LatencyHistogram)
    """:attr:`ReceivedSnapshot.age_upper` of every snapshot."""
    rtt: LatencyHistogram = field(default_factory=LatencyHistogram)

    def snapshots_per_s(self, now: float | None = None) -> float:
        """Snapshots received per second since :attr:`started`."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return self.snapshots / elapsed if elapsed > 0 else 0.0

    def rtt_p50_ms(self) -> float | None:
        p = self.rtt.percentile(50)
        return None if p is None else p * 1e3

    def snapshot_age_ms(self, q: float) -> float | None:
        p = self.snapshot_age.percentile(q)
        return None if p is None else p * 1e3

    def errors_by_name(self) -> dict[str, int]:
        return {error_name(c): n for c, n in sorted(self.errors.items())}

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-ready summary (milliseconds, rounded)."""

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "snapshots": self.snapshots,
            "snapshots_per_s": round(self.snapshots_per_s(now), 2),
            "snapshot_bytes": self.snapshot_bytes,
            "snapshots_dropped": self.snapshots_dropped,
            "snapshot_age_p50_ms": ms(self.snapshot_age_ms(50)),
            "snapshot_age_p99_ms": ms(self.snapshot_age_ms(99)),
            "snapshot_age_upper_p50_ms": ms(_ms(self.snapshot_age_upper.percentile(50))),
            "snapshot_age_upper_p99_ms": ms(_ms(self.snapshot_age_upper.percentile(99))),
            "rtt_p50_ms": ms(self.rtt_p50_ms()),
            "messages": self.messages,
            "messages_dropped": self.messages_dropped,
            "inputs_sent": self.inputs_sent,
            "mirror_errors": self.mirror_errors,
            "protocol_errors": self.protocol_errors,
            "errors": self.errors_by_name(),
            "kicks": {error_name(c): n for c, n in sorted(self.kicks.items())},
        }


# --- what the application receives ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedSnapshot:
    """One SNAPSHOT as it arrived; :attr:`Player.mirror` already contains it."""

    tick: int
    """The zone tick (low 32 bits)."""
    ack: int
    """The last input sequence number the zone had applied at this tick."""
    data: DecodedSnapshot
    """The decoded payload (header, despawns, spawns, moves, updates); only the header when
    the player keeps no mirror."""
    received_at: float
    """Local monotonic time the frame was read."""
    age: float
    """Seconds from the moment this tick was due on the server's schedule to
    ``received_at``, measured from the fastest snapshot so far (which counts as 0): a lower
    bound of the true age. See docs/client.md, "snapshot age"."""
    age_upper: float
    """The same, with the first snapshot's tick taken as due at WELCOME's ``server_time``:
    an upper bound while the zone keeps time (>= :attr:`age`)."""
    size: int
    """Bytes of the whole SNAPSHOT frame."""

    @property
    def reset(self) -> bool:
        return self.data.header.reset


@dataclass(frozen=True, slots=True)
class VisibleTable:
    """Every visible entity as columns, rows in ascending id order."""

    ids: npt.NDArray[np.uint64]
    kinds: npt.NDArray[np.uint16]
    pos: npt.NDArray[np.float64]
    """``float64[n, 2]`` metres."""
    owned: npt.NDArray[np.bool_]
    pub: npt.NDArray[np.void]
    """Structured array of the public fields (``table.pub["hp"]``)."""


_CLOSED = object()


class _DropOldest:
    """A bounded FIFO that never blocks the producer: when full the oldest entry goes."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("queue size must be >= 1")
        self.items: deque[Any] = deque(maxlen=maxlen)
        self.ready = asyncio.Event()
        self.closed = True

    def put(self, item: Any) -> bool:
        """Append; returns False when an older entry had to be dropped for it."""
        full = len(self.items) == self.items.maxlen
        self.items.append(item)
        self.ready.set()
        return not full

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    async def get(self) -> Any:
        """The oldest entry, or ``_CLOSED`` once empty and closed."""
        while True:
            if self.items:
                return self.items.popleft()
            if self.closed:
                return _CLOSED
            self.ready.clear()
            await self.ready.wait()


# --- the player -------------------------------------------------------------------------


class Player:
    """One player's connection to a gateway. Create it with :func:`connect` or
    :meth:`Player.connect`; both return only after WELCOME.

    After joining, the caller reads :meth:`snapshots` (and :meth:`messages` if the world
    sends any), sends intents with :meth:`send_input`, and finally calls :meth:`close` (an
    ``async with`` block does it). When the server ends the connection the iterators stop;
    :attr:`kick`, :attr:`close_code` and :attr:`close_reason` then say why, and
    :meth:`resume` rejoins the same entity if the server still holds it.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str = "",
        client: str = "sdk",
        snapshot_queue: int = DEFAULT_SNAPSHOT_QUEUE,
        message_queue: int = DEFAULT_MESSAGE_QUEUE,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        metrics: Metrics | None = None,
        use_proxy: bool = False,
        mirror: bool = True,
    ) -> None:
        """Settings only; nothing connects until :meth:`connect` (or ``await connect(...)``).

        ``ping_interval`` seconds between PINGs (0 sends none; RTT and the clock offset then
        come from the handshake alone). ``metrics`` may be shared between players.
        ``mirror=False`` reads only each snapshot's header (see :attr:`track_mirror`).
        """
        self.url = url
        self.token = token
        self.client = client
        self.ping_interval = float(ping_interval)
        self.open_timeout = float(open_timeout)
        self.use_proxy = use_proxy
        self.track_mirror = mirror
        """False: snapshots are not applied to :attr:`mirror`; only their headers are read
        (tick, the player's own position). Load bots use it to spend less CPU per bot."""
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = ClockSync()
        self.welcome: Welcome | None = None
        self.pub_fields = BlobDecoder()
        """Decodes public blobs (``player.pub_fields.decode(entity.pub)``)."""
        self.own_fields = BlobDecoder()
        """Decodes owner-scoped blobs."""
        self.mirror = SnapshotMirror(0, 0)
        self.last_ack = 0
        """Last input sequence number the server applied (from the latest snapshot)."""
        self.last_seq = 0
        """Last input sequence number sent."""
        self.last_snapshot: ReceivedSnapshot | None = None
        self.kick: Kick | None = None
        """The KICK that ended the connection, if one did."""
        self.close_code: int | None = None
        """The WebSocket close code once closed (1006: the connection was lost)."""
        self.close_reason = ""
        self.recent_errors: deque[Error] = deque(maxlen=RECENT_ERRORS)
        """The latest ERROR messages (all of them are counted in ``metrics.errors``)."""
        self._snapshots = _DropOldest(snapshot_queue)
        self._messages = _DropOldest(message_queue)
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._closed.set()
        self._closing_by_us = False
        self._nonce = 0
        self._pending_pings: dict[int, asyncio.Future[float]] = {}
        self._anchor: tuple[int, float] | None = None
        self._first_tick: int | None = None
        self._base_q: tuple[int, int] | None = None

    # -- joining -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str = "",
        resume: str = "",
        client: str = "sdk",
        **options: Any,
    ) -> Player:
        """Connect, send HELLO and wait for WELCOME; returns the joined player.

        ``options`` are :class:`Player`'s keyword settings. Raises :class:`HandshakeError`
        on any failure (the connection is closed again). Then read :meth:`snapshots`.
        """
        player = cls(url, token=token, client=client, **options)
        await player._open(resume)
        return player

    async def _open(self, resume: str) -> None:
        proxy: Literal[True] | None = True if self.use_proxy else None
        try:
            ws = await ws_connect(
                self.url,
                compression=None,
                max_size=MAX_MESSAGE_SIZE,
                open_timeout=self.open_timeout,
                close_timeout=2.0,
                proxy=proxy,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise HandshakeError(f"cannot connect to {self.url}: {exc!r}") from exc
        kick: Kick | None = None
        last_error: Error | None = None
        welcome: Welcome | None = None
        sent = received = time.monotonic()
        try:
            await ws.send(encode(Hello(PROTOCOL_VERSION, self.token, resume, self.client)))
            async with asyncio.timeout(self.open_timeout):
                while True:
                    data = await ws.recv()
                    received = time.monotonic()
                    if isinstance(data, str):
                        self.metrics.protocol_errors += 1
                        continue
                    try:
                        msg = decode_server(data, MAX_MESSAGE_SIZE)
                    except ProtocolError:
                        self.metrics.protocol_errors += 1
                        continue
                    if isinstance(msg, Welcome):
                        welcome = msg
                        break
                    if isinstance(msg, Error):
                        last_error = msg
                        self._record_error(msg)
                    elif isinstance(msg, Kick):
                        kick = msg
                        self.metrics.kicks[msg.code] += 1
                    else:
                        self.metrics.protocol_errors += 1
        except ConnectionClosed as exc:
            code, reason = _close_info(exc.rcvd)
            self._note_close(kick, code, reason)
            why = kick or last_error
            text = f"{error_name(why.code)}: " if why is not None else ""
            detail = kick.reason if kick else (last_error.text if last_error else reason)
            raise HandshakeError(
                f"{self.url} closed the connection before WELCOME ({code}): {text}{detail}",
                code=why.code if why is not None else None,
                close_code=code,
                close_reason=reason,
            ) from exc
        except TimeoutError as exc:
            await _close_quietly(ws, CloseCode.POLICY, "no welcome")
            self._note_close(kick, CloseCode.POLICY, "no welcome")
            raise HandshakeError(
                f"no WELCOME from {self.url} within {self.open_timeout:g} s",
                code=kick.code if kick else None,
            ) from exc
        except BaseException:
            await _close_quietly(ws, CloseCode.GOING_AWAY, "")
            raise
        assert welcome is not None
        if welcome.version != PROTOCOL_VERSION:
            await _close_quietly(ws, CloseCode.POLICY, "unsupported version")
            raise HandshakeError(
                f"server speaks protocol {welcome.version}, not {PROTOCOL_VERSION}"
            )
        try:
            pub = BlobDecoder(welcome.pub_fields)
            own = BlobDecoder(welcome.own_fields)
        except ValueError as exc:
            await _close_quietly(ws, CloseCode.POLICY, "bad field layout")
            raise HandshakeError(f"WELCOME describes its fields wrongly: {exc}") from exc
        self._adopt(ws, welcome, pub, own, resumed_asked=bool(resume), sent=sent, received=received)

    def _adopt(
        self,
        ws: ClientConnection,
        welcome: Welcome,
        pub: BlobDecoder,
        own: BlobDecoder,
        *,
        resumed_asked: bool,
        sent: float,
        received: float,
    ) -> None:
        self.welcome = welcome
        self.pub_fields, self.own_fields = pub, own
        if (self.mirror.pub_width, self.mirror.own_width) != (pub.width, own.width):
            self.mirror = SnapshotMirror(pub.width, own.width)
        # A resumed entity keeps the server's last applied sequence number; a new one
        # starts from zero, where a continued count could look like one from the future.
        if resumed_asked and welcome.resumed:
            self.last_seq = max(self.last_seq, self.last_ack)
        else:
            self.last_seq = 0
            self.last_ack = 0
        self.clock.reset()
        self.clock.add(sent, welcome.server_time, received)
        self._anchor = None
        self._first_tick = None
        self._base_q = None
        self.kick = None
        self.close_code = None
        self.close_reason = ""
        self._closing_by_us = False
        self._ws = ws
        self._closed = asyncio.Event()
        self._snapshots.closed = self._messages.closed = False
        self._reader = asyncio.create_task(self._read_loop(ws), name=f"shardworld-read-{id(self)}")
        self._pinger = (
            asyncio.create_task(self._ping_loop(ws), name=f"shardworld-ping-{id(self)}")
            if self.ping_interval > 0
            else None
        )

    def _note_close(self, kick: Kick | None, code: int | None, reason: str) -> None:
        self.kick = kick
        self.close_code = code
        self.close_reason = reason

    async def resume(self) -> bool:
        """Reconnect with :attr:`resume_token` to take the same entity back.

        Call it after the connection dropped (an open one is closed first with 1001). Returns
        True if the server resumed the entity; False if it joined a new one instead (it then
        also sends ERROR ``RESUME_FAILED``; :attr:`entity_id` changes and input sequence
        numbers start again at 1, where a resumed entity's go on). Either way the mirror is
        rebuilt by the RESET snapshot that follows and :meth:`snapshots` can be iterated
        again. Raises :class:`HandshakeError` like :meth:`connect`.
        """
        token = self.resume_token
        if not self.closed:
            await self.close(CloseCode.GOING_AWAY, "resume")
        await self._open(token)
        return self.resumed

    # -- welcome information ---------------------------------------------------------------

    def _w(self) -> Welcome:
        if self.welcome is None:
            raise ClientError("not joined yet: use connect() or Player.connect()")
        return self.welcome

    @property
    def entity_id(self) -> int:
        """The id of this player's own entity."""
        return self._w().entity_id

    @property
    def player_id(self) -> int:
        return self._w().player_id

    @property
    def world(self) -> tuple[float, float, float, float]:
        """World bounds in metres: (x0, y0, x1, y1)."""
        return self._w().world

    @property
    def world_name(self) -> str:
        return self._w().world_name

    @property
    def tick_hz(self) -> float:
        return self._w().tick_hz

    @property
    def snapshot_hz(self) -> float:
        return self._w().snapshot_hz

    @property
    def pos_quantum(self) -> float:
        """Metres per quantised position step."""
        return self._w().pos_quantum

    @property
    def resume_token(self) -> str:
        return self._w().resume_token

    @property
    def resumed(self) -> bool:
        """True if the last WELCOME reattached an entity that was still alive."""
        return self._w().resumed

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def closed_by_client(self) -> bool:
        """True once :meth:`close` was called for the current connection."""
        return self._closing_by_us

    # -- sending ---------------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        ws = self._ws
        if ws is None or self.closed:
            raise PlayerClosed(self._closed_text())
        try:
            await ws.send(data)
        except ConnectionClosed as exc:
            raise PlayerClosed(self._closed_text()) from exc

    def _closed_text(self) -> str:
        if self.kick is not None:
            return f"kicked: {error_name(self.kick.code)}: {self.kick.reason}"
        return f"connection closed ({self.close_code}): {self.close_reason}"

    async def send_input(self, ix: float, iy: float, actions: int = 0) -> int:
        """Send a movement intent (a direction of length <= 1; the server clamps longer ones)
        and action bits. Returns its sequence number; a later snapshot's ``ack`` (and
        :attr:`last_ack`) reaching it means the zone applied it. Raises :class:`PlayerClosed`
        once the connection is gone, ``ValueError`` on a non-finite intent."""
        fx, fy = float(ix), float(iy)
        if not (math.isfinite(fx) and math.isfinite(fy)):
            raise ValueError("intent must be finite")
        if not 0 <= actions <= 0xFFFFFFFF:
            raise ValueError("actions must fit in 32 bits")
        if self.last_seq >= 0xFFFFFFFF:
            raise ClientError("input sequence numbers exhausted: reconnect as a new player")
        seq = self.last_seq + 1
        await self._send(encode(Input(seq, fx, fy, int(actions))))
        self.last_seq = seq
        self.metrics.inputs_sent += 1
        return seq

    async def send_message(self, kind: str, body: Any = None) -> None:
        """Send a custom message to the world's handler: ``kind`` of 1..64 UTF-8 bytes, ``body``
        made of strings, numbers, booleans, bytes, lists and string-keyed maps. Raises
        :class:`PlayerClosed`, or ``ValueError`` for a message the protocol does not allow."""
        await self._send(encode(Message(kind, body)))

    async def ping(self, timeout: float = 5.0) -> float:
        """Send a PING and wait for its PONG; returns the round-trip time in seconds (also
        recorded in ``metrics.rtt`` and used for the clock offset). Raises ``TimeoutError``
        or :class:`PlayerClosed`."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        nonce = self._next_nonce()
        self._pending_pings[nonce] = fut
        try:
            await self._send(encode(Ping(nonce, time.monotonic())))
            self.metrics.pings_sent += 1
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending_pings.pop(nonce, None)

    def _next_nonce(self) -> int:
        self._nonce = (self._nonce + 1) & 0xFFFFFFFFFFFFFFFF
        return self._nonce

    # -- receiving -------------------------------------------------------------------------

    async def snapshots(self) -> AsyncIterator[ReceivedSnapshot]:
        """Yield snapshots in arrival order, each already applied to :attr:`mirror`; ends when
        the connection closes. If the caller falls more than ``snapshot_queue`` snapshots
        behind, the oldest are skipped (``metrics.snapshots_dropped``) while the mirror stays
        current."""
        while True:
            item = await self._snapshots.get()
            if item is _CLOSED:
                return
            yield item

    async def messages(self) -> AsyncIterator[Message]:
        """Yield the world's custom messages (kind, body); ends when the connection closes."""
        while True:
            item = await self._messages.get()
            if item is _CLOSED:
                return
            yield item

    async def wait_closed(self) -> None:
        """Return once the connection is closed (by either side)."""
        await self._closed.wait()

    async def _read_loop(self, ws: ClientConnection) -> None:
        code, reason = _ABNORMAL_CLOSE, "connection lost"
        try:
            while True:
                data = await ws.recv()
                self._handle(data, time.monotonic())
        except ConnectionClosed as exc:
            code, reason = _close_info(exc.rcvd)
        except Exception:  # keep the player usable: the loop's failure is the connection's end
            log.exception("reader of %s failed", self.url)
            await _close_quietly(ws, CloseCode.INTERNAL, "client reader failed")
        finally:
            self._mark_closed(ws, code, reason)

    def _handle(self, data: bytes | str, now: float) -> None:
        if isinstance(data, str):
            self.metrics.protocol_errors += 1
            return
        try:
            msg = decode_server(data, MAX_MESSAGE_SIZE)
        except ProtocolError as exc:
            self.metrics.protocol_errors += 1
            log.debug("undecodable frame from %s: %s", self.url, exc)
            return
        if isinstance(msg, Snapshot):
            self._on_snapshot(msg, now, len(data))
        elif isinstance(msg, Pong):
            self._on_pong(msg, now)
        elif isinstance(msg, Message):
            self.metrics.messages += 1
            if not self._messages.put(msg):
                self.metrics.messages_dropped += 1
        elif isinstance(msg, Error):
            self._record_error(msg)
        elif isinstance(msg, Kick):
            self.kick = msg
            self.metrics.kicks[msg.code] += 1
        else:
            self.metrics.protocol_errors += 1

    def _record_error(self, msg: Error) -> None:
        self.metrics.errors[msg.code] += 1
        self.recent_errors.append(msg)
        log.debug("ERROR %s from %s: %s", error_name(msg.code), self.url, msg.text)

    def _on_snapshot(self, msg: Snapshot, now: float, size: int) -> None:
        try:
            if self.track_mirror:
                decoded = self.mirror.apply(msg.payload)
            else:
                decoded = _header_only(msg.payload)
        except SnapshotDecodeError as exc:
            # The mirror kept its state; a later RESET snapshot brings it back in step.
            self.metrics.mirror_errors += 1
            log.debug("snapshot %d from %s not applied: %s", msg.tick, self.url, exc)
            return
        h = decoded.header
        self._base_q = (h.base_qx, h.base_qy)
        age, upper = self._snapshot_age(msg.tick, now)
        self.last_ack = msg.ack
        snap = ReceivedSnapshot(msg.tick, msg.ack, decoded, now, age, upper, size)
        self.last_snapshot = snap
        m = self.metrics
        m.snapshots += 1
        m.snapshot_bytes += size
        m.snapshot_age.record(age)
        m.snapshot_age_upper.record(upper)
        if not self._snapshots.put(snap):
            m.snapshots_dropped += 1

    def _snapshot_age(self, tick: int, received: float) -> tuple[float, float]:
        """(age, age_upper) in seconds of a snapshot of ``tick`` read at local ``received``.

        Both place the zone's ticks ``1 / tick_hz`` apart on the server clock; the server
        sends no tick with its time, so they differ in where that schedule starts. ``age``:
        a snapshot cannot arrive before its tick was due, so the schedule is anchored on
        the fastest snapshot so far, whose age is 0 (the first snapshot starts it; one that
        would come out negative moves it). ``age_upper``: the first snapshot's tick is taken
        as due at WELCOME's ``server_time``, before which it cannot have been made.
        """
        w = self._w()
        arrival = self.clock.to_server(received)
        if self._anchor is None or self._first_tick is None:
            self._anchor = (tick, arrival)
            self._first_tick = tick
        t0, s0 = self._anchor
        age = arrival - (s0 + _tick_delta(tick, t0) / w.tick_hz)
        if age < 0.0:
            self._anchor = (tick, arrival)
            age = 0.0
        upper = arrival - (w.server_time + _tick_delta(tick, self._first_tick) / w.tick_hz)
        return age, max(age, upper)

    def _on_pong(self, msg: Pong, now: float) -> None:
        self.metrics.pongs += 1
        rtt = now - msg.client_time
        if not 0.0 <= rtt < 3600.0:  # not one of our clock readings
            self.metrics.protocol_errors += 1
            return
        self.metrics.rtt.record(rtt)
        self.clock.add(msg.client_time, msg.server_time, now)
        fut = self._pending_pings.pop(msg.nonce, None)
        if fut is not None and not fut.done():
            fut.set_result(rtt)

    async def _ping_loop(self, ws: ClientConnection) -> None:
        # Jitter keeps many players started together from pinging in lockstep.
        rng = random.Random()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(encode(Ping(self._next_nonce(), time.monotonic())))
                self.metrics.pings_sent += 1
                await asyncio.sleep(self.ping_interval * rng.uniform(0.9, 1.1))

    def _mark_closed(self, ws: ClientConnection, code: int, reason: str) -> None:
        if ws is not self._ws:
            return
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._closed.set()
        self._snapshots.close()
        self._messages.close()
        if self._pinger is not None:
            self._pinger.cancel()
        for fut in self._pending_pings.values():
            if not fut.done():
                fut.set_exception(PlayerClosed(self._closed_text()))
        self._pending_pings.clear()

    # -- closing ---------------------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection (WebSocket close ``code``) and stop the background tasks.
        Safe to call more than once; the iterators end after what is already queued."""
        self._closing_by_us = True
        ws = self._ws
        if ws is not None:
            await _close_quietly(ws, code, reason)
        if self._pinger is not None:
            self._pinger.cancel()
        tasks = [t for t in (self._reader, self._pinger) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for t in tasks:
            if not t.done():
                t.cancel()
        if ws is not None:
            self._mark_closed(ws, int(code), reason)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- reading the world -----------------------------------------------------------------

    def position(self) -> tuple[float, float] | None:
        """This player's entity in metres, from the mirror (or the latest snapshot header's
        own position when the entity is not in the mirror); ``None`` before the first snapshot
        of this connection."""
        q = self.pos_quantum
        me = self.mirror.by_id(self.entity_id)
        if me is not None:
            return me.qx * q, me.qy * q
        if self._base_q is not None:
            return self._base_q[0] * q, self._base_q[1] * q
        return None

    def visible(self) -> dict[int, tuple[int, float, float]]:
        """Entity id -> (kind, x metres, y metres) for everything in view."""
        q = self.pos_quantum
        return {e.id: (e.kind, e.qx * q, e.qy * q) for e in self.mirror.entities.values()}

    def fields(self, entity_id: int) -> dict[str, Any] | None:
        """The decoded public fields of a visible entity, plus its owner-scoped fields when
        this player owns it; ``None`` if the entity is not in view."""
        e = self.mirror.by_id(entity_id)
        if e is None:
            return None
        out = self.pub_fields.decode(e.pub)
        if e.own is not None:
            out.update(self.own_fields.decode(e.own))
        return out

    def visible_table(self) -> VisibleTable:
        """Everything in view as numpy columns (one Python pass over the mirror)."""
        ents = sorted(self.mirror.entities.values(), key=lambda e: e.id)
        q = self.pos_quantum
        return VisibleTable(
            ids=np.array([e.id for e in ents], dtype=np.uint64),
            kinds=np.array([e.kind for e in ents], dtype=np.uint16),
            pos=np.array([(e.qx, e.qy) for e in ents], dtype=np.float64).reshape(-1, 2) * q,
            owned=np.array([e.own is not None for e in ents], dtype=np.bool_),
            pub=self.pub_fields.decode_many([e.pub for e in ents]),
        )


_HEADER = struct.Struct("<BIiiHHHH")  # docs/snapshot-format.md, "Header (21 bytes)"


def _header_only(payload: bytes) -> DecodedSnapshot:
    """A payload's header alone, its sections left empty (for players without a mirror)."""
    if len(payload) < HEADER_SIZE:
        raise SnapshotDecodeError(f"payload of {len(payload)} bytes has no whole header")
    flags, tick, bqx, bqy, nd, ns, nm, nu = _HEADER.unpack_from(payload, 0)
    if flags & ~(FLAG_RESET | FLAG_WIDE):
        raise SnapshotDecodeError(f"reserved flag bits set: {flags:#04x}")
    header = SnapshotHeader(flags, tick, bqx, bqy, nd, ns, nm, nu)
    return DecodedSnapshot(header, (), (), (), ())


def _tick_delta(tick: int, since: int) -> int:
    """``tick - since`` for 32-bit wrapping tick numbers."""
    return ((tick - since + (_U32 >> 1)) % _U32) - (_U32 >> 1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _close_info(frame: Close | None) -> tuple[int, str]:
    if frame is None:
        return _ABNORMAL_CLOSE, "connection lost"
    return int(frame.code), frame.reason


async def _close_quietly(ws: ClientConnection, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(int(code), reason)


class Connecting:
    """What :func:`connect` returns: ``await`` it for a :class:`Player`, or use it in
    ``async with`` to close the player on the way out."""

    def __init__(self, url: str, token: str, resume: str, client: str, options: Any) -> None:
        self._args = (url, token, resume, client)
        self._options: dict[str, Any] = dict(options)
        self._player: Player | None = None

    def __await__(self) -> Generator[Any, None, Player]:
        return Player.connect(*self._args, **self._options).__await__()

    async def __aenter__(self) -> Player:
        self._player = await Player.connect(*self._args, **self._options)
        return self._player

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._player is not None:
            await self._player.close()


def connect(
    url: str, token: str = "", resume: str = "", client: str = "sdk", **options: Any
) -> Connecting:
    """Join the world behind the gateway at ``url`` (``ws://host:port``).

    ``async with connect(url, token=...) as player:`` closes the player at the end of the
    block; ``player = await connect(url)`` leaves that to the caller. ``resume`` rejoins an
    entity from an earlier connection. ``options`` are :class:`Player`'s keyword settings.
    Raises :class:`HandshakeError` if the player cannot join.
    """
    return Connecting(url, token, resume, client, options)
