"""One swarm player: a protocol v1 connection over websocket-client, under gevent.

Locust monkeypatches the standard library, so websocket-client's blocking sockets yield to
other greenlets; one worker process holds hundreds of these players. Each connection has
a receiver greenlet that reads every frame as it arrives (a player never becomes a slow
reader, whatever its input loop does) and the player's own greenlet that sends inputs at a
fixed rate, PINGs, and for the reconnect storm drops and rejoins.

Snapshots are read cheaply: the gateway writes every SNAPSHOT as ``0x94 0x04 0xce <tick>
0xce <ack> <bin header> <payload>`` (``shardworld.protocol.encode_snapshot``), so the tick,
the ack and the payload's 21-byte header (the player's own position is its base) come from
two ``struct`` reads. Any other form falls back to the full decoder. ``mirror=True`` also
applies each payload to a :class:`~shardworld.protocol.SnapshotMirror` (much more CPU; it
checks every record).

Figures go two ways: into the worker's :class:`~loadtest.metrics.WorkerState` (exact,
merged into the JSON summary) and as Locust request events through a :class:`Reporter`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import gevent
import websocket
from gevent import Greenlet

from loadtest.behaviors import Border, Commute, Rush, storm_slot
from loadtest.metrics import AgeClock, ClockSync, WorkerState
from shardworld.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Input,
    Kick,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Snapshot,
    SnapshotDecodeError,
    SnapshotMirror,
    Welcome,
    decode_server,
    encode,
)
from shardworld.steering import Behavior, Vec, Wander, centre

MAX_MESSAGE: Final = 16 * 1024 * 1024
ABNORMAL_CLOSE: Final = 1006
_FRAME_HEAD: Final = struct.Struct(">BBBIBIB")  # 0x94 0x04 0xce tick 0xce ack bin-marker
_PAYLOAD_HEAD: Final = struct.Struct("<BIii")  # flags, tick, base_qx, base_qy
_PAYLOAD_HEADER_SIZE: Final = 21
_ACK_RING: Final = 256
_RECV_CHUNK: Final = 256 * 1024
#: Frames one read may hand over before the reader yields to the other greenlets.
_YIELD_AFTER: Final = 8
_BACKOFF_MIN: Final = 0.5
_BACKOFF_MAX: Final = 5.0


def code_name(code: int) -> str:
    """``"4004 SLOW_READER"``, ``"1006 ABNORMAL"``, ``"13 SLOW_READER"`` (error codes below
    1000), or the bare number for a code the protocol does not name."""
    if code == ABNORMAL_CLOSE:
        return "1006 ABNORMAL"
    enum: type[CloseCode] | type[ErrorCode] = CloseCode if code >= 1000 else ErrorCode
    try:
        return f"{code} {enum(code).name}"
    except ValueError:
        return str(code)


class Reporter(Protocol):
    """Where events go (Locust's request event in the locustfile)."""

    def __call__(
        self, kind: str, name: str, ms: float, length: int, exc: Exception | None = None
    ) -> None: ...


class JoinFailed(Exception):
    """No WELCOME: ``reason`` names why (an error or close code, ``http_503``, ``timeout``)."""

    def __init__(self, reason: str, text: str = "") -> None:
        super().__init__(f"{reason}: {text}" if text else reason)
        self.reason = reason


class ProtocolFailure(Exception):
    """An ERROR, a KICK or a close the server sent, as a Locust failure."""


def _fast_snapshot(buf: bytes, start: int, end: int) -> tuple[int, int, int, int, int] | None:
    """(tick, ack, payload offset, base_qx, base_qy) of a SNAPSHOT in the gateway's form held
    in ``buf[start:end]``, or ``None`` for anything else (the caller decodes it fully)."""
    if end - start < 14 + _PAYLOAD_HEADER_SIZE:
        return None
    m, t, u1, tick, u2, ack, marker = _FRAME_HEAD.unpack_from(buf, start)
    if m != 0x94 or t != 4 or u1 != 0xCE or u2 != 0xCE:
        return None
    if marker == 0xC4:
        n, off = buf[start + 13], start + 14
    elif marker == 0xC5:
        n, off = (buf[start + 13] << 8) | buf[start + 14], start + 15
    elif marker == 0xC6:
        n, off = int.from_bytes(buf[start + 13 : start + 17], "big"), start + 17
    else:
        return None
    if off + n != end or n < _PAYLOAD_HEADER_SIZE:
        return None
    flags, _, bqx, bqy = _PAYLOAD_HEAD.unpack_from(buf, off)
    if flags & ~0x03:
        return None
    return tick, ack, off, bqx, bqy


class Link:
    """One joined connection. Create with :meth:`open`; it ends when either side closes.

    ``closed`` turns true when the receiver ends; ``close_code`` then says how (1006: no
    close frame), ``kick`` holds the KICK that preceded it, ``by_us`` whether we ended it.
    """

    def __init__(
        self,
        ws: websocket.WebSocket,
        welcome: Welcome,
        state: WorkerState,
        report: Reporter,
        *,
        clock: ClockSync,
        snapshot_events: int,
        mirror: bool,
        buffered: bool = True,
    ) -> None:
        self.ws = ws
        self.buffered = buffered
        self.welcome = welcome
        self.state = state
        self.report = report
        self.clock = clock
        self.ages = AgeClock(clock, welcome.tick_hz, welcome.server_time)
        self.snapshot_events = max(0, snapshot_events)
        self.quantum = welcome.pos_quantum
        self.mirror = SnapshotMirror(welcome.pub_width, welcome.own_width) if mirror else None
        self.pos: Vec | None = None
        self.last_ack = 0
        self.last_seq = 0
        self._sent_at = [0.0] * _ACK_RING
        self._nonce = 0
        self._n = 0
        self.closed = False
        self.by_us = False
        self.close_code: int | None = None
        self.kick: Kick | None = None
        self.receiver: Greenlet | None = None

    # -- joining ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        state: WorkerState,
        report: Reporter,
        *,
        token: str = "",
        resume: str = "",
        client: str = "locust",
        open_timeout: float = 15.0,
        recv_timeout: float = 30.0,
        snapshot_events: int = 1,
        mirror: bool = False,
        buffered: bool = True,
    ) -> tuple[Link, float]:
        """Connect, HELLO, wait for WELCOME; returns the link (its receiver running) and the
        join time in seconds. Raises :class:`JoinFailed`."""
        t0 = time.monotonic()
        try:
            ws = websocket.create_connection(
                url,
                timeout=open_timeout,
                enable_multithread=True,
                skip_utf8_validation=True,
                sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            )
        except websocket.WebSocketBadStatusException as exc:
            raise JoinFailed(f"http_{exc.status_code}", str(exc)[:200]) from exc
        except (TimeoutError, websocket.WebSocketTimeoutException) as exc:
            raise JoinFailed("timeout", "no WebSocket handshake") from exc
        except ConnectionRefusedError as exc:
            raise JoinFailed("refused", str(exc)) from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise JoinFailed(type(exc).__name__, str(exc)[:200]) from exc
        clock = ClockSync()
        welcome: Welcome | None = None
        last: Error | Kick | None = None
        try:
            sent = time.monotonic()
            ws.send_binary(encode(Hello(PROTOCOL_VERSION, token, resume, client)))
            while welcome is None:
                opcode, data = ws.recv_data()
                received = time.monotonic()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005
                    why = code_name(last.code) if last is not None else code_name(code)
                    text = last.text if isinstance(last, Error) else ""
                    if isinstance(last, Kick):
                        text = last.reason
                    raise JoinFailed(why, text)
                if opcode != websocket.ABNF.OPCODE_BINARY:
                    state.counts["protocol_errors"] += 1
                    continue
                try:
                    msg = decode_server(data, MAX_MESSAGE)
                except ProtocolError:
                    state.counts["protocol_errors"] += 1
                    continue
                if isinstance(msg, Welcome):
                    welcome = msg
                    clock.add(sent, msg.server_time, received)
                elif isinstance(msg, Error):
                    # RESUME_FAILED comes before a WELCOME that joined a new entity: the
                    # caller sees resumed=False and counts it.
                    if msg.code != ErrorCode.RESUME_FAILED:
                        last = msg
                        _count_error(state, report, msg)
                elif isinstance(msg, Kick):
                    last = msg
                    _count_kick(state, report, msg)
        except JoinFailed:
            ws.shutdown()
            raise
        except (TimeoutError, websocket.WebSocketTimeoutException) as exc:
            ws.shutdown()
            raise JoinFailed("timeout", "no WELCOME") from exc
        except (OSError, websocket.WebSocketException) as exc:
            ws.shutdown()
            raise JoinFailed(type(exc).__name__, str(exc)[:200]) from exc
        joined = time.monotonic() - t0
        ws.settimeout(recv_timeout)
        # Masks from os.urandom cost a system call per frame; masking exists to protect
        # proxies from content an attacker chose, which a load generator never sends.
        ws.set_mask_key(_mask_key)
        link = cls(
            ws,
            welcome,
            state,
            report,
            clock=clock,
            snapshot_events=snapshot_events,
            mirror=mirror,
            buffered=buffered,
        )
        state.opened(id(link), time.monotonic())
        link.receiver = gevent.spawn(link._receive)
        return link, joined

    # -- sending ---------------------------------------------------------------------------

    def send_input(self, seq: int, ix: float, iy: float, now: float) -> bool:
        """False once the connection is gone."""
        if self.closed:
            return False
        try:
            self.ws.send_binary(encode(Input(seq, ix, iy, 0)))
        except (OSError, websocket.WebSocketException):
            return False
        self._sent_at[seq % _ACK_RING] = now
        self.last_seq = seq
        self.state.counts["inputs_sent"] += 1
        return True

    def send_ping(self) -> bool:
        if self.closed:
            return False
        self._nonce += 1
        try:
            self.ws.send_binary(encode(Ping(self._nonce, time.monotonic())))
        except (OSError, websocket.WebSocketException):
            return False
        self.state.counts["pings_sent"] += 1
        return True

    # -- ending ----------------------------------------------------------------------------

    def drop(self) -> None:
        """Vanish without a close frame, as a network drop does (the server sees 1006)."""
        self.by_us = True
        sock = self.ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.ws.shutdown()
        self._wait_receiver(2.0)

    def close(self, timeout: float = 2.0) -> None:
        """Close with 1000 and wait (bounded) for the server's close frame."""
        self.by_us = True
        if not self.closed:
            with contextlib.suppress(Exception):
                self.ws.send(struct.pack(">H", CloseCode.NORMAL), websocket.ABNF.OPCODE_CLOSE)
            self._wait_receiver(timeout)
        self.ws.shutdown()
        self._wait_receiver(1.0)

    def _wait_receiver(self, timeout: float) -> None:
        r = self.receiver
        if r is not None and not r.dead:
            r.join(timeout)
            if not r.dead:
                r.kill(block=True, timeout=1.0)
        # A receiver killed before it first ran never reached its own ending.
        self._ended(ABNORMAL_CLOSE)

    # -- receiving -------------------------------------------------------------------------

    def _receive(self) -> None:
        code = ABNORMAL_CLOSE
        try:
            code = self._read_buffered() if self.buffered else self._read_frames()
        except (websocket.WebSocketTimeoutException, TimeoutError):
            code = ABNORMAL_CLOSE  # no frame for recv_timeout: as good as gone
        except (OSError, websocket.WebSocketException, struct.error, AttributeError, ValueError):
            # AttributeError: the socket was shut down under the reader (ws.sock is None);
            # ValueError: a frame the WebSocket protocol does not allow.
            code = ABNORMAL_CLOSE
        finally:
            self._ended(code)

    def _read_frames(self) -> int:
        """websocket-client's own reader (``--reader websocket-client``): a few socket reads
        per frame. Returns the close code."""
        ws = self.ws
        while True:
            opcode, data = ws.recv_data()
            now = time.monotonic()
            if opcode == 2:  # binary
                self._on_frame(data, 0, len(data), now)
            elif opcode == 8:  # close (websocket-client has already answered it)
                return struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005
            else:  # a text frame: not part of the protocol
                self.state.counts["protocol_errors"] += 1

    def _read_buffered(self) -> int:
        """Read the socket in large chunks and cut them into frames here (RFC 6455, server
        frames are never masked): one system call for every frame that has arrived, where
        websocket-client makes two or three per frame. Sending, pongs and the handshake stay
        websocket-client's. Returns the close code."""
        ws = self.ws
        if ws.sock is None:  # already shut down
            return ABNORMAL_CLOSE
        recv = ws.sock.recv
        # Nothing should be left in websocket-client's buffer after WELCOME (it reads
        # exactly one frame at a time), but take it if there is.
        pending = b"".join(getattr(ws.frame_buffer, "recv_buffer", None) or [])
        parts: list[bytes] = []
        part_op = 0
        while True:
            chunk = recv(_RECV_CHUNK)
            if not chunk:
                return ABNORMAL_CLOSE
            now = time.monotonic()
            buf = pending + chunk if pending else chunk
            pos, end = 0, len(buf)
            frames = 0
            while end - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                n, hdr = b1 & 0x7F, 2
                if n == 126:
                    if end - pos < 4:
                        break
                    n, hdr = (buf[pos + 2] << 8) | buf[pos + 3], 4
                elif n == 127:
                    if end - pos < 10:
                        break
                    n, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
                if b1 & 0x80 or b0 & 0x70 or n > MAX_MESSAGE:
                    raise ValueError("a masked, extended or oversized frame from the server")
                start = pos + hdr
                stop = start + n
                if stop > end:
                    break
                pos = stop
                frames += 1
                opcode, fin = b0 & 0x0F, b0 & 0x80
                if opcode == 2 and fin:
                    self._on_frame(buf, start, stop, now)
                elif opcode >= 8:  # control frames: never fragmented
                    if opcode == 8:
                        code = (buf[start] << 8) | buf[start + 1] if n >= 2 else 1005
                        with contextlib.suppress(Exception):
                            ws.send_close(code if 1000 <= code < 5000 else 1000)
                        return code
                    if opcode == 9:
                        ws.pong(bytes(buf[start:stop]))
                elif opcode in (1, 2):  # the first piece of a fragmented message, or text
                    part_op, parts = opcode, [bytes(buf[start:stop])]
                    if fin:  # a whole text message
                        self.state.counts["protocol_errors"] += 1
                        parts = []
                elif opcode == 0 and parts:
                    parts.append(bytes(buf[start:stop]))
                    if fin:
                        data, parts = b"".join(parts), []
                        if part_op == 2:
                            self._on_frame(data, 0, len(data), now)
                        else:
                            self.state.counts["protocol_errors"] += 1
                else:
                    raise ValueError(f"unexpected opcode {opcode}")
            pending = buf[pos:] if pos < end else b""
            if frames >= _YIELD_AFTER:
                # A backlog: let the input greenlets run before reading on.
                gevent.sleep(0)

    def _ended(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.state.closed(id(self), time.monotonic())
        if not self.by_us:
            name = code_name(code)
            self.state.by_name["disconnects"][name] += 1
            why = f"kicked: {code_name(self.kick.code)}" if self.kick is not None else ""
            self.report("CLOSE", name, 0.0, 0, ProtocolFailure(why or f"closed {name}"))
        with contextlib.suppress(Exception):
            self.ws.shutdown()

    def _on_frame(self, buf: bytes, start: int, end: int, now: float) -> None:
        """One binary message, ``buf[start:end]``."""
        fast = _fast_snapshot(buf, start, end)
        if fast is not None:
            tick, ack, off, bqx, bqy = fast
            self._on_snapshot(tick, ack, bqx, bqy, buf, off, end, end - start, now)
            return
        data = buf[start:end]
        try:
            msg = decode_server(data, MAX_MESSAGE)
        except ProtocolError:
            self.state.counts["protocol_errors"] += 1
            return
        if isinstance(msg, Snapshot):
            if len(msg.payload) < _PAYLOAD_HEADER_SIZE:
                self.state.counts["mirror_errors"] += 1
                return
            _f, _t, bqx, bqy = _PAYLOAD_HEAD.unpack_from(msg.payload, 0)
            off = len(data) - len(msg.payload)
            self._on_snapshot(msg.tick, msg.ack, bqx, bqy, data, off, len(data), len(data), now)
        elif isinstance(msg, Pong):
            rtt = now - msg.client_time
            if 0.0 <= rtt < 3600.0:
                self.state.counts["pongs"] += 1
                self.state.hist["rtt"].record(rtt)
                self.clock.add(msg.client_time, msg.server_time, now)
            else:
                self.state.counts["protocol_errors"] += 1
        elif isinstance(msg, Error):
            _count_error(self.state, self.report, msg)
        elif isinstance(msg, Kick):
            self.kick = msg
            _count_kick(self.state, self.report, msg)
        elif not isinstance(msg, Message):  # a second WELCOME
            self.state.counts["protocol_errors"] += 1

    def _on_snapshot(
        self,
        tick: int,
        ack: int,
        bqx: int,
        bqy: int,
        buf: bytes,
        off: int,
        end: int,
        size: int,
        now: float,
    ) -> None:
        """A SNAPSHOT of ``size`` bytes whose payload is ``buf[off:end]``."""
        st = self.state
        q = self.quantum
        if self.mirror is not None:
            try:
                self.mirror.apply(buf[off:end])
            except SnapshotDecodeError:
                st.counts["mirror_errors"] += 1
                self.report("SNAP", "mirror", 0.0, size, ProtocolFailure("mirror refused"))
        self.pos = (bqx * q, bqy * q)
        age, upper = self.ages.ages(tick, now)
        st.counts["snapshots"] += 1
        st.counts["snapshot_bytes"] += size
        st.hist["snapshot_age"].record(age)
        st.hist["snapshot_age_upper"].record(upper)
        if ack > self.last_ack:
            sent = self._sent_at[ack % _ACK_RING]
            if 0 <= self.last_seq - ack < _ACK_RING and sent > 0.0:
                st.hist["input_ack"].record(now - sent)
            self.last_ack = ack
        if self.snapshot_events:
            self._n += 1
            if self._n >= self.snapshot_events:
                self._n = 0
                self.report("SNAP", "age", age * 1e3, size)


def _mask_key(n: int) -> bytes:
    return random.randbytes(n)


def _count_error(state: WorkerState, report: Reporter, msg: Error) -> None:
    name = code_name(msg.code)
    state.by_name["errors"][name] += 1
    report("ERROR", name, 0.0, 0, ProtocolFailure(msg.text[:200]))


def _count_kick(state: WorkerState, report: Reporter, msg: Kick) -> None:
    name = code_name(msg.code)
    state.by_name["kicks"][name] += 1
    report("KICK", name, 0.0, 0, ProtocolFailure(msg.reason[:200]))


# --- the player -----------------------------------------------------------------------------


@dataclass
class Settings:
    """What every player of a worker shares (from the command line)."""

    url: str
    behavior: str = "wander"
    input_hz: float = 20.0
    ping_interval: float = 1.0
    snapshot_events: int = 1
    mirror: bool = False
    hotspot: Vec | None = None
    hotspot_radius: float = 20.0
    rush_at: float = 0.0
    """Local monotonic time the rush starts."""
    borders: Sequence[Border] = ()
    commute_distance: float = 30.0
    storm_every: float = 15.0
    storm_spread: float = 2.0
    open_timeout: float = 15.0
    recv_timeout: float = 30.0
    client: str = "locust"
    reader: str = "buffered"
    """``buffered`` (large reads, frames cut here) or ``websocket-client`` (its reader)."""


class SwarmPlayer:
    """One player's whole life: join, steer at a fixed input rate, reconnect after drops
    (resuming its entity), and for ``storm`` drop and rejoin on the storm schedule.

    :meth:`run` never returns by itself; Locust ends it by killing the greenlet (then call
    :meth:`stop`).
    """

    def __init__(
        self,
        settings: Settings,
        state: WorkerState,
        report: Reporter,
        rng: random.Random,
        token: Callable[[], str] = lambda: "",
    ) -> None:
        self.s = settings
        self.state = state
        self.report = report
        self.rng = rng
        self.token = token
        self.link: Link | None = None
        self.behavior: Behavior | None = None
        self.entity_id: int | None = None
        self.resume_token = ""
        self.seq = 0
        self.stopping = False
        self._crossings_seen = 0
        self._storms = 0
        self._storm_offset = rng.uniform(0.0, max(0.0, settings.storm_spread))
        self._storm_slot = 0

    # -- joining ---------------------------------------------------------------------------

    def _join(self, how: str) -> bool:
        """``how``: "join" (fresh), "resume" (with the resume token) or "rejoin" (a fresh
        join after a storm drop). True when joined."""
        resume = self.resume_token if how == "resume" else ""
        try:
            link, seconds = Link.open(
                self.s.url,
                self.state,
                self.report,
                token=self.token(),
                resume=resume,
                client=self.s.client,
                open_timeout=self.s.open_timeout,
                recv_timeout=self.s.recv_timeout,
                snapshot_events=self.s.snapshot_events,
                mirror=self.s.mirror,
                buffered=self.s.reader == "buffered",
            )
        except JoinFailed as exc:
            self.state.by_name["join_failures"][exc.reason] += 1
            self.report("JOIN", how, 0.0, 0, exc)
            return False
        w = link.welcome
        if how == "resume":
            self.state.counts["resumes"] += 1
            self.state.hist["resume"].record(seconds)
            if not w.resumed or w.entity_id != self.entity_id:
                self.state.counts["resumes_lost_entity"] += 1
                self.report(
                    "JOIN",
                    how,
                    seconds * 1e3,
                    0,
                    ProtocolFailure(f"entity {self.entity_id} not resumed: got {w.entity_id}"),
                )
            else:
                self.report("JOIN", how, seconds * 1e3, 0)
        else:
            self.state.counts["joins" if how == "join" else "rejoins"] += 1
            self.state.hist["join"].record(seconds)
            self.report("JOIN", how, seconds * 1e3, 0)
        # A resumed entity remembers the last input it applied; a new one starts over.
        self.seq = self.seq if w.resumed else 0
        link.last_seq = link.last_ack = self.seq
        self.entity_id = w.entity_id
        self.resume_token = w.resume_token
        self.link = link
        if self.behavior is None or how == "rejoin":
            self.behavior = self._make_behavior(w.world)
        self._storm_slot = storm_slot(time.time(), self.s.storm_every, self._storm_offset)
        return True

    def _make_behavior(self, world: tuple[float, float, float, float]) -> Behavior:
        s = self.s
        if s.behavior == "rush":
            hotspot = s.hotspot if s.hotspot is not None else centre(world)
            return Rush(world, self.rng, hotspot, s.hotspot_radius, s.rush_at)
        if s.behavior == "commute":
            return Commute(world, self.rng, s.borders, s.commute_distance)
        return Wander(world, self.rng)

    def _connect(self, how: str) -> None:
        """Join (or resume, falling back to a fresh join), with back-off, until it works."""
        backoff = _BACKOFF_MIN
        while not self.stopping:
            if self._join(how):
                return
            if how == "resume":
                how = "join"  # the entity is gone or the token is stale: start over
            gevent.sleep(backoff * self.rng.uniform(0.5, 1.0))
            backoff = min(_BACKOFF_MAX, backoff * 2.0)

    # -- playing ---------------------------------------------------------------------------

    def run(self) -> None:
        period = 1.0 / self.s.input_hz
        st = self.state
        lateness = st.hist["input_lateness"]
        self._connect("join")
        # A random phase: players started together do not all send in the same instant.
        next_t = time.monotonic() + self.rng.uniform(0.0, period)
        next_ping = next_t
        while not self.stopping:
            link = self.link
            if link is None or link.closed:
                # The server ended it (the receiver counted the disconnect): come back.
                st.counts["reconnects"] += 1
                gevent.sleep(_BACKOFF_MIN * self.rng.uniform(0.5, 1.0))
                self._connect("resume" if self.resume_token else "join")
                next_t = time.monotonic()
                continue
            now = time.monotonic()
            if next_t > now:
                gevent.sleep(next_t - now)
                now = time.monotonic()
            late = now - next_t
            lateness.record(late)
            if late > period:
                # Behind by whole periods (this worker is overloaded): skip them rather
                # than send a burst the gateway would rate-limit.
                st.counts["inputs_skipped"] += int(late / period)
                next_t = now
            next_t += period
            pos = link.pos
            if pos is not None and self.behavior is not None:
                ix, iy = self.behavior.steer(pos, now)
                self.seq += 1
                if not link.send_input(self.seq, ix, iy, now):
                    continue
                if isinstance(self.behavior, Commute):
                    c = self.behavior.crossings
                    if c > self._crossings_seen:
                        st.counts["border_crossings"] += c - self._crossings_seen
                        self._crossings_seen = c
            if now >= next_ping and self.s.ping_interval > 0:
                link.send_ping()
                next_ping = now + self.s.ping_interval * self.rng.uniform(0.9, 1.1)
            if self.s.behavior == "storm":
                slot = storm_slot(time.time(), self.s.storm_every, self._storm_offset)
                if slot > self._storm_slot:
                    self._storm()
                    next_t = time.monotonic()  # the rejoin is not input lateness

    def _storm(self) -> None:
        """Drop the connection; come back with the resume token every other storm and as a
        fresh join (a new entity in dev mode) the others."""
        if self.link is not None:
            self.link.drop()
        self.state.counts["storm_drops"] += 1
        self._storms += 1
        self._connect("resume" if self._storms % 2 == 1 else "rejoin")

    def stop(self) -> None:
        self.stopping = True
        if self.link is not None:
            self.link.close()
