"""The WebSocket gateway: players connect here; the world is behind a :class:`WorldPort`.

One :class:`Gateway` serves many connections on one event loop. Each connection's protocol
rules live in a sans-I/O :class:`~shardworld.gateway.session.Session`; this module only
moves bytes and calls the port. Snapshots take a fast path: the zone calls
:meth:`Gateway.on_batch` synchronously inside its tick; the gateway builds every player's
WebSocket frame in one pass over the batch (:mod:`shardworld.gateway.frames`) and writes
each straight to its connection's transport, without a coroutine per player. See
docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol

from shardworld.gateway import frames as _frames
from shardworld.gateway.auth import TokenVerifier
from shardworld.gateway.frames import encode_snapshot_frames
from shardworld.gateway.port import WorldInfo, WorldPort
from shardworld.gateway.session import (
    Action,
    Close,
    Forward,
    Join,
    ReplyPong,
    Report,
    Send,
    Session,
    SessionLimits,
    SubmitInput,
)
from shardworld.protocol.messages import (
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    Message,
    Pong,
    Welcome,
    encode,
)
from shardworld.zone.sink import SnapshotBatch

log = logging.getLogger("shardworld.gateway")

ANONYMOUS_PLAYER_BASE = 1 << 52
"""Dev mode: players without a token get ids from here up (half of the id space that
tokens may name, 1 .. 2**53 - 1, is left to real accounts)."""

_FLAG_RESET = 0x01  # first byte of a snapshot payload (docs/snapshot-format.md)
#: Where the gateway serves the JavaScript client SDK over plain HTTP.
JS_SDK_PATH = "/shardworld.js"
_JS = "text/javascript; charset=utf-8"
_HTML = "text/html; charset=utf-8"
#: The only plain-HTTP GETs the gateway answers: path -> (file in shardworld/web, type).
#: The browser game (docs/play.md) is at ``/`` and ``/play``.
WEB_FILES: dict[str, tuple[str, str]] = {
    JS_SDK_PATH: ("shardworld.js", _JS),
    "/play.js": ("play.js", _JS),
    "/": ("play.html", _HTML),
    "/play": ("play.html", _HTML),
}
# The page loads nothing but its own scripts and talks only to this server's WebSocket.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def _web_file(name: str) -> str:
    return (resources.files("shardworld") / "web" / name).read_text("utf-8")


def _wants_upgrade(request: Request) -> bool:
    # Connection is a list ("keep-alive, Upgrade" from some browsers), and "/" is also where
    # players connect: only a request without the upgrade token gets a file.
    return any(
        t.strip().lower() == "upgrade"
        for v in request.headers.get_all("Connection")
        for t in v.split(",")
    )


#: A connection waiting for a full snapshot asks the world again after this long.
RESYNC_RETRY_S = 0.5
_BAD_KICKS = frozenset({ErrorCode.ABUSE, ErrorCode.SLOW_READER, ErrorCode.INTERNAL})


@dataclass(frozen=True)
class GatewayConfig:
    """Gateway settings. Times are seconds, sizes bytes.

    ``dev`` accepts HELLOs without a token (each gets a fresh anonymous player id); without
    ``dev`` a ``secret`` is required. ``send_buffer_limit`` bounds what may wait in a
    connection's write buffer: above it snapshots are dropped, and a connection that stays
    above it for ``slow_reader_grace_s`` is kicked. ``linger_s``: how long a disconnected
    player's entity stays in the world, resumable.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    dev: bool = False
    secret: str | bytes | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    linger_s: float = 10.0
    send_buffer_limit: int = 64 * 1024
    slow_reader_grace_s: float = 5.0
    max_connections: int = 10_000
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    close_timeout_s: float = 2.0
    max_queue: int = 4
    """Frames the WebSocket library buffers per connection before it stops reading."""
    socket_sndbuf: int | None = None
    """SO_SNDBUF for each connection's socket; None leaves the OS's autotuning (which may
    buffer megabytes in the kernel before ``send_buffer_limit`` ever sees a slow reader)."""
    log_lines_per_s: float = 10.0
    log_burst: float = 50.0
    backlog: int = 1024
    """Pending connections the listening socket queues (the OS caps it at somaxconn); a
    reconnect storm overflows asyncio's default of 100."""

    def __post_init__(self) -> None:
        if not self.dev and not self.secret:
            raise ValueError("GatewayConfig: a secret is required unless dev=True")
        if not 0 <= self.port <= 65535:
            raise ValueError("GatewayConfig.port must be 0..65535")
        if self.linger_s < 0 or self.slow_reader_grace_s < 0:
            raise ValueError("GatewayConfig: linger_s and slow_reader_grace_s must be >= 0")
        if self.close_timeout_s <= 0:
            raise ValueError("GatewayConfig.close_timeout_s must be > 0")
        if self.socket_sndbuf is not None and self.socket_sndbuf < 1024:
            raise ValueError("GatewayConfig.socket_sndbuf must be >= 1024 (or None)")
        if self.backlog < 1:
            raise ValueError("GatewayConfig.backlog must be >= 1")
        if self.send_buffer_limit < 1 or self.max_connections < 1 or self.max_queue < 1:
            raise ValueError(
                "GatewayConfig: send_buffer_limit, max_connections, max_queue must be >= 1"
            )


class _RateLimitedLog:
    """Structured log lines (``event key=value …``, the fields also in ``extra``), at most
    ``rate`` per second after a burst; suppressed lines are counted and reported."""

    __slots__ = ("_burst", "_rate", "_t", "_tokens", "logger", "suppressed")

    def __init__(self, logger: logging.Logger, rate: float, burst: float) -> None:
        self.logger = logger
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._t = time.monotonic()
        self.suppressed = 0

    def __call__(self, level: int, event: str, exc_info: bool = False, **fields: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._t) * self._rate)
        self._t = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        if self.suppressed:
            fields["suppressed"] = self.suppressed
            self.suppressed = 0
        text = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items()
        )
        self.logger.log(
            level,
            "%s %s",
            event,
            text,
            exc_info=exc_info,
            extra={"shardworld": {"event": event, **fields}},
        )


class _Binding:
    """A player's entity and how to get back to it (one per player)."""

    __slots__ = ("conn", "entity_id", "last_seq", "linger", "player_id", "resume_token")

    def __init__(self, player_id: int, entity_id: int) -> None:
        self.player_id = player_id
        self.entity_id = entity_id
        self.resume_token = ""
        self.conn: _Conn | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.last_seq = 0


class _Conn:
    """Gateway-side state of one connection. Kept small: there may be tens of thousands."""

    __slots__ = (
        "binding",
        "cid",
        "entity",
        "over_since",
        "protocol",
        "resync_at",
        "session",
        "stale",
        "transport",
        "ws",
    )

    def __init__(self, cid: int, ws: ServerConnection, session: Session) -> None:
        self.cid = cid
        self.ws = ws
        self.protocol: Protocol = ws.protocol
        self.transport: asyncio.Transport = ws.transport
        self.session = session
        self.binding: _Binding | None = None
        self.entity = 0
        # The client's mirror is behind (new, resumed, or a snapshot was dropped): send
        # nothing until a RESET payload comes, since every other payload is a delta.
        self.stale = True
        #: When this connection last asked the world for a full snapshot (-inf: never).
        self.resync_at = -math.inf
        self.over_since = -1.0  # when the write buffer went over the limit; -1: it is not


def _close_reason(text: str) -> str:
    """A close frame's reason is at most 123 bytes of UTF-8."""
    raw = text.encode("utf-8")[:123]
    return raw.decode("utf-8", "ignore")


def _frame_len(n: int) -> int:
    return n + (2 if n < 126 else 4 if n < 0x10000 else 10)


class Gateway:
    """WebSocket gateway in front of a :class:`WorldPort`.

    Usage::

        gw = Gateway(EmbeddedWorld(zone), GatewayConfig(port=8765, secret=SECRET))
        await gw.start()          # listening on gw.url
        ...
        await gw.stop()           # KICK SHUTTING_DOWN, close 1001, entities leave

    Args:
        port: the world.
        config: settings (defaults: dev mode off, so pass a secret).
        wall_clock: unix time, for token expiry (tests inject one).
    """

    def __init__(
        self,
        port: WorldPort,
        config: GatewayConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.port = port
        self.config = config
        self._verify = TokenVerifier(config.secret, wall_clock) if config.secret else None
        self._log = _RateLimitedLog(log, config.log_lines_per_s, config.log_burst)
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._info: WorldInfo | None = None
        self._running = False
        self._stopping = False
        self._subscribed = False
        self._cids = itertools.count(1)
        self._anonymous = itertools.count(ANONYMOUS_PLAYER_BASE)
        self._conns: set[_Conn] = set()
        self._live: dict[int, _Conn] = {}  # entity id -> its joined, open connection
        self._by_player: dict[int, _Binding] = {}
        self._joining: set[int] = set()
        self._by_resume: dict[str, _Binding] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # counters
        self.connections_total = 0
        self.rejected = 0
        self.joins = 0
        self.resumes = 0
        self.leaves = 0
        self.snapshots_sent = 0
        self.snapshots_dropped = 0
        self.snapshots_skipped = 0
        self.other_frames_sent = 0
        self.bytes_out = 0
        self.inputs = 0
        self.inputs_refused = 0
        self.messages_in = 0
        self.messages_out = 0
        self.messages_undeliverable = 0
        self.internal_errors = 0
        self.errors: dict[ErrorCode, int] = {}
        self.kicks: dict[ErrorCode, int] = {}

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the world and start listening."""
        if self._running:
            raise RuntimeError("the gateway is already running")
        if self._stopping:
            raise RuntimeError("a stopped gateway cannot be started again")
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        _frames.warm_up()
        self._info = self.port.info()
        if not self._subscribed:
            self.port.subscribe(self.on_batch, self.on_message)
            self._subscribed = True
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            compression=None,
            max_size=cfg.limits.max_message_bytes,
            max_queue=cfg.max_queue,
            write_limit=cfg.send_buffer_limit,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            close_timeout=cfg.close_timeout_s,
            process_request=self._admit,
            backlog=cfg.backlog,
            logger=logging.getLogger("shardworld.gateway.websockets"),
        )
        self._running = True
        self._log(logging.INFO, "listening", url=self.url, dev=cfg.dev)

    async def stop(self) -> None:
        """Close every connection (KICK SHUTTING_DOWN, close 1001), stop listening, and
        remove every player entity this gateway holds from the world."""
        if not self._running:
            return
        self._running = False
        self._stopping = True
        for conn in list(self._conns):
            self._kick(conn, ErrorCode.SHUTTING_DOWN, "server shutting down", CloseCode.GOING_AWAY)
        server = self._server
        if server is not None:
            server.close()
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for b in list(self._by_player.values()):
            if b.linger is not None:
                b.linger.cancel()
                b.linger = None
            self._leave(b)
        self._by_player.clear()
        self._by_resume.clear()
        self._live.clear()
        self._log(logging.INFO, "stopped", **self._brief())

    @property
    def url(self) -> str:
        """``ws://host:port`` of the listening socket (the real port when configured 0)."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        sock = next(iter(self._server.sockets))
        host, port = sock.getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{port}"

    def stats(self) -> dict[str, Any]:
        """Counters since start (see docs/gateway.md)."""
        return {
            "connections": len(self._conns),
            "joined": len(self._live),
            "lingering": sum(1 for b in self._by_player.values() if b.conn is None),
            "connections_total": self.connections_total,
            "rejected": self.rejected,
            "joins": self.joins,
            "resumes": self.resumes,
            "leaves": self.leaves,
            "frames_sent": self.snapshots_sent + self.other_frames_sent,
            "frames_dropped": self.snapshots_dropped + self.snapshots_skipped,
            "snapshots_sent": self.snapshots_sent,
            "snapshots_dropped": self.snapshots_dropped,
            "snapshots_skipped": self.snapshots_skipped,
            "bytes_out": self.bytes_out,
            "inputs": self.inputs,
            "inputs_refused": self.inputs_refused,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "messages_undeliverable": self.messages_undeliverable,
            "internal_errors": self.internal_errors,
            "log_lines_suppressed": self._log.suppressed,
            "errors": {c.name: n for c, n in sorted(self.errors.items())},
            "kicks": {c.name: n for c, n in sorted(self.kicks.items())},
        }

    def _brief(self) -> dict[str, Any]:
        return {
            "connections": len(self._conns),
            "frames_sent": self.snapshots_sent + self.other_frames_sent,
            "frames_dropped": self.snapshots_dropped + self.snapshots_skipped,
        }

    # --- the world -> players path ------------------------------------------------------

    def on_batch(self, batch: SnapshotBatch) -> None:
        """Deliver one snapshot batch. Called synchronously inside the zone's tick: never
        blocks, never raises; a slow connection only ever costs itself."""
        live = self._live
        if not live or not self._running:
            return
        try:
            self._deliver(batch, live)
        except Exception:  # pragma: no cover - a bug must not stop the zone's tick
            self.internal_errors += 1
            self._log(logging.ERROR, "batch_failed", exc_info=True, tick=batch.tick)

    def _deliver(self, batch: SnapshotBatch, live: dict[int, _Conn]) -> None:
        ids = batch.observer_ids.tolist()
        frames, starts_a, body_a = encode_snapshot_frames(
            batch.tick & 0xFFFFFFFF,
            np.ascontiguousarray(batch.input_acks),
            np.ascontiguousarray(batch.buf),
            np.ascontiguousarray(batch.off),
        )
        # Slices of one buffer, not copies: a transport that cannot send a frame at once
        # keeps (or copies) only what it needs.
        fv = frames.data
        starts = starts_a.tolist()
        limit = self.config.send_buffer_limit
        get = live.get
        sent = nbytes = 0
        slow: list[tuple[_Conn, int]] | None = None
        # The common case costs a dict lookup, three checks and one transport.write of a
        # slice of the batch's frame buffer; anything unusual goes to _deliver_unusual.
        for i, eid in enumerate(ids):
            conn = get(eid)
            if conn is None:
                continue
            transport = conn.transport
            # (over_since >= 0 implies stale: a connection over its limit is always stale)
            if (
                conn.stale
                or conn.protocol.state is not OPEN
                or transport.get_write_buffer_size() > limit
            ):
                if slow is None:
                    slow = []
                slow.append((conn, i))
                continue
            s = starts[i]
            e = starts[i + 1]
            try:
                transport.write(fv[s:e])
            except Exception:
                self.internal_errors += 1
                self._log(logging.ERROR, "snapshot_write_failed", exc_info=True, conn=conn.cid)
                continue
            sent += 1
            nbytes += e - s
        self.snapshots_sent += sent
        self.bytes_out += nbytes
        if slow is not None:
            self._deliver_unusual(slow, ids, fv, starts, body_a.tolist())

    def _deliver_unusual(
        self,
        todo: list[tuple[_Conn, int]],
        ids: list[int],
        fv: memoryview,
        starts: list[int],
        body: list[int],
    ) -> None:
        """Connections that are closing, over their buffer limit, or waiting for a RESET."""
        assert self._loop is not None
        now = self._loop.time()
        limit = self.config.send_buffer_limit
        grace = self.config.slow_reader_grace_s
        kick: list[_Conn] = []
        for conn, i in todo:
            try:
                if conn.protocol.state is not OPEN:
                    continue
                transport = conn.transport
                if transport.get_write_buffer_size() > limit:
                    # Dropped: every later payload is a delta against one the client lacks.
                    self.snapshots_dropped += 1
                    conn.stale = True
                    conn.resync_at = -math.inf
                    if conn.over_since < 0.0:
                        conn.over_since = now
                    elif now - conn.over_since > grace:
                        kick.append(conn)
                    continue
                conn.over_since = -1.0
                if conn.stale:
                    if starts[i + 1] > body[i] and fv[body[i]] & _FLAG_RESET:
                        conn.stale = False
                    else:
                        self.snapshots_skipped += 1
                        # Ask again now and then: over a bus a request (or the full
                        # snapshot it causes) can be lost while the player changes zones.
                        if now - conn.resync_at > RESYNC_RETRY_S:
                            conn.resync_at = now
                            self.port.request_resync(ids[i])
                        continue
                s = starts[i]
                e = starts[i + 1]
                transport.write(fv[s:e])
                self.snapshots_sent += 1
                self.bytes_out += e - s
            except Exception:
                self.internal_errors += 1
                self._log(logging.ERROR, "snapshot_write_failed", exc_info=True, conn=conn.cid)
        for conn in kick:
            self._kick(
                conn,
                ErrorCode.SLOW_READER,
                f"write buffer over {limit} bytes for more than {grace:g} s",
                CloseCode.SLOW_READER,
            )

    def on_message(self, entity_id: int, kind: str, body: Any) -> None:
        """A world -> player custom message: to that player's connection, if it has one."""
        conn = self._live.get(entity_id)
        if conn is None:
            self.messages_undeliverable += 1
            return
        try:
            data = encode(Message(kind, body))
        except Exception as exc:
            self.internal_errors += 1
            self._log(logging.ERROR, "message_unencodable", kind=kind, error=type(exc).__name__)
            return
        self.messages_out += 1
        self._send(conn, data)

    # --- connections ------------------------------------------------------------------------

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        web = WEB_FILES.get(request.path.split("?", 1)[0])
        if web is not None and not _wants_upgrade(request):
            # The browser SDK and game, from the server the browser then connects to
            # (docs/js-client.md, docs/play.md).
            name, ctype = web
            resp = connection.respond(200, _web_file(name))
            del resp.headers["Content-Type"]  # respond() says text/plain
            resp.headers["Content-Type"] = ctype
            resp.headers["Cache-Control"] = "no-cache"
            resp.headers["X-Content-Type-Options"] = "nosniff"
            if ctype == _HTML:
                resp.headers["Content-Security-Policy"] = _PAGE_POLICY
                resp.headers["Referrer-Policy"] = "no-referrer"  # ?token= stays here
            return resp
        if self._stopping or len(self._conns) >= self.config.max_connections:
            self.rejected += 1
            return connection.respond(503, "server full\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        # The handshake's headers (a few KiB) are never looked at again: do not keep them
        # for the life of the connection. (``ws.request`` itself must stay: the library
        # reads it to know the handshake is over.)
        if ws.request is not None:
            ws.request.headers.clear()
        ws.response = None
        if cfg.socket_sndbuf is not None:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.socket_sndbuf)
        conn = _Conn(next(self._cids), ws, Session(cfg.limits, loop.time(), self._verify, cfg.dev))
        self._conns.add(conn)
        self.connections_total += 1
        try:
            await self._serve(conn, loop)
        except ConnectionClosed:
            pass
        except Exception:
            self.internal_errors += 1
            self._log(logging.ERROR, "connection_failed", exc_info=True, conn=conn.cid)
            ws.transport.abort()
        finally:
            self._disconnected(conn)

    async def _serve(self, conn: _Conn, loop: asyncio.AbstractEventLoop) -> None:
        session = conn.session
        ws = conn.ws
        while True:
            deadline = session.deadline
            try:
                if deadline is None:
                    data = await ws.recv()
                else:
                    async with asyncio.timeout_at(deadline):
                        data = await ws.recv()
            except TimeoutError:
                actions = session.poll(loop.time())
            else:
                actions = session.receive(data, loop.time())
            if any(type(a) is Join for a in actions):
                close = await self._run_joining(conn, actions)
            else:
                close = self._run(conn, actions)
            if close is not None:
                # Keep reading (the session ignores everything now): the peer's close frame
                # can only arrive while someone reads.
                self._spawn_close(conn, close)

    def _run(self, conn: _Conn, actions: list[Action]) -> Close | None:
        """Carry out a session's actions; returns the Close among them (nothing follows it)."""
        port = self.port
        for a in actions:
            try:
                if type(a) is SubmitInput:
                    self.inputs += 1
                    if not port.submit_input(conn.entity, a.seq, a.ix, a.iy, a.actions):
                        self.inputs_refused += 1
                elif type(a) is Send:
                    self._send(conn, a.data)
                elif type(a) is Report:
                    self._report(conn, a)
                elif type(a) is ReplyPong:
                    self._send(conn, encode(Pong(a.nonce, a.client_time, port.server_time())))
                elif type(a) is Forward:
                    self.messages_in += 1
                    port.send_message(conn.entity, a.kind, a.body)
                elif type(a) is Join:
                    raise RuntimeError("a join is carried out by _run_joining")
                elif type(a) is Close:
                    if a.kick is not None:
                        self.kicks[a.kick] = self.kicks.get(a.kick, 0) + 1
                    if a.kick is not None and a.kick is not ErrorCode.SHUTTING_DOWN:
                        self._log(
                            logging.WARNING if a.kick in _BAD_KICKS else logging.INFO,
                            "kick",
                            conn=conn.cid,
                            player=conn.session.player_id,
                            code=a.kick.name,
                            reason=a.reason,
                        )
                    if self._live.get(conn.entity) is conn:
                        del self._live[conn.entity]
                    return a
            except Exception:
                self.internal_errors += 1
                self._log(
                    logging.ERROR,
                    "action_failed",
                    exc_info=True,
                    conn=conn.cid,
                    action=type(a).__name__,
                )
        return None

    async def _run_joining(self, conn: _Conn, actions: list[Action]) -> Close | None:
        """Like :meth:`_run`, for a batch holding a join: the world answers a join later."""
        for a in actions:
            if type(a) is Join:
                try:
                    result = await self._join(conn, a)
                except Exception:
                    self.internal_errors += 1
                    self._log(logging.ERROR, "join_failed", exc_info=True, conn=conn.cid)
                    continue
                close = self._run(conn, result)
            else:
                close = self._run(conn, [a])
            if close is not None:
                return close
        return None

    def _report(self, conn: _Conn, r: Report) -> None:
        self.errors[r.code] = self.errors.get(r.code, 0) + 1
        if r.first:
            level = logging.ERROR if r.code is ErrorCode.INTERNAL else logging.INFO
            self._log(
                level,
                "client_error",
                conn=conn.cid,
                player=conn.session.player_id,
                code=r.code.name,
                text=r.text,
            )

    def _send(self, conn: _Conn, data: bytes) -> None:
        if conn.protocol.state is OPEN:
            # broadcast() writes without awaiting: no per-message coroutine, never blocks.
            broadcast((conn.ws,), data)
            self.other_frames_sent += 1
            self.bytes_out += _frame_len(len(data))

    async def _join(self, conn: _Conn, a: Join) -> list[Action]:
        session = conn.session
        port = self.port
        assert self._loop is not None and self._info is not None
        now = self._loop.time()
        if self._stopping:
            return session.join_failed(
                ErrorCode.SHUTTING_DOWN, "server shutting down", CloseCode.GOING_AWAY, now
            )
        player = a.player_id
        b: _Binding | None = None
        resume_failed = False
        if a.resume:
            cand = self._by_resume.get(a.resume)
            if (
                cand is not None
                and (player is None or cand.player_id == player)
                and port.alive(cand.entity_id)
            ):
                b = cand
            else:
                resume_failed = True
        if player is None:
            player = b.player_id if b is not None else next(self._anonymous)
        if b is None:
            # One entity per player: signing in again reclaims it (lingering or not).
            b = self._by_player.get(player)
        if b is not None and b.conn is not None and b.conn is not conn:
            old = b.conn
            b.last_seq = old.session.last_seq
            b.conn = None
            old.binding = None
            if self._live.get(b.entity_id) is old:
                del self._live[b.entity_id]
            self._kick(
                old, ErrorCode.ALREADY_JOINED, "signed in from another connection", CloseCode.KICKED
            )
        if player in self._joining:
            return session.join_failed(
                ErrorCode.ALREADY_JOINED,
                "a join for this player is in progress",
                CloseCode.KICKED,
                now,
            )
        self._joining.add(player)
        reason = "the world returned no entity"
        try:
            entity, resumed = await port.join(player, b.entity_id if b is not None else None)
        except Exception as exc:
            # The usual causes (an overloaded or unreachable zone) say enough in one line.
            entity, resumed = 0, False
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._joining.discard(player)
        now = self._loop.time()
        if entity == 0:
            self.internal_errors += 1
            self._log(logging.ERROR, "join_failed", conn=conn.cid, player=player, reason=reason)
            if b is not None and b.conn is None:
                self._forget(b)
                self._leave(b)
            return session.join_failed(
                ErrorCode.INTERNAL, "could not join the world", CloseCode.INTERNAL, now
            )
        if conn not in self._conns or self._stopping:
            # The connection went while the world answered: the entity lingers as after any
            # disconnect, so the player can still come back to it.
            if b is None:
                b = _Binding(player, entity)
                self._by_player[player] = b
            b.entity_id = entity
            if self._stopping or self.config.linger_s <= 0:
                self._expire(b)
            elif b.linger is None:
                b.linger = self._loop.call_later(self.config.linger_s, self._expire, b)
            return []
        if b is None:
            b = _Binding(player, entity)
            self._by_player[player] = b
        elif b.linger is not None:
            b.linger.cancel()
            b.linger = None
        if not resumed:
            b.entity_id = entity
            b.last_seq = 0
        if b.resume_token:
            self._by_resume.pop(b.resume_token, None)
        b.resume_token = secrets.token_urlsafe(18)
        self._by_resume[b.resume_token] = b
        b.conn = conn
        conn.binding = b
        conn.entity = entity
        conn.stale = True
        conn.resync_at = now if resumed else -math.inf
        self._live[entity] = conn
        self.joins += 1
        if resumed:
            self.resumes += 1
            port.request_resync(entity)
        info = self._info
        welcome = Welcome(
            version=PROTOCOL_VERSION,
            entity_id=entity,
            player_id=player,
            world=info.world,
            tick_hz=info.tick_hz,
            snapshot_hz=info.snapshot_hz,
            pos_quantum=info.pos_quantum,
            server_time=port.server_time(),
            resume_token=b.resume_token,
            resumed=resumed,
            pub_fields=info.pub_fields,
            own_fields=info.own_fields,
            world_name=info.name,
        )
        out: list[Action] = []
        if resume_failed:
            out.extend(
                session.error(
                    ErrorCode.RESUME_FAILED,
                    "resume token unknown or expired: joined as a new entity",
                    now,
                )
            )
        out.append(Send(encode(welcome)))
        session.joined(player, entity, b.last_seq)
        self._log(
            logging.DEBUG,
            "join",
            conn=conn.cid,
            player=player,
            entity=entity,
            resumed=resumed,
            client=a.client[:64],
        )
        return out

    def _kick(self, conn: _Conn, code: ErrorCode, reason: str, close_code: int) -> None:
        """Kick from outside the connection's own task (a tick, another join, stop)."""
        assert self._loop is not None
        close = self._run(conn, conn.session.kick(code, reason, close_code, self._loop.time()))
        if close is not None:
            self._spawn_close(conn, close)

    def _spawn_close(self, conn: _Conn, close: Close) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._close(conn, close.code, close.reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, conn: _Conn, code: int, reason: str) -> None:
        ws = conn.ws
        try:
            # close() waits for the write buffer to drain, which a client that does not read
            # never lets happen: give it a bounded time, then drop the TCP connection.
            async with asyncio.timeout(self.config.close_timeout_s + 0.5):
                await ws.close(code, _close_reason(reason))
        except Exception:
            ws.transport.abort()

    def _disconnected(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        conn.session.closed()
        sent = conn.protocol.close_sent
        if sent is not None and sent.code == CloseCode.TOO_BIG:
            # The WebSocket library refused an oversized frame itself (close 1009).
            self._report(conn, conn.session.note(ErrorCode.TOO_LARGE, "frame over max_size"))
        b = conn.binding
        conn.binding = None
        if self._live.get(conn.entity) is conn:
            del self._live[conn.entity]
        if b is None or b.conn is not conn:
            return
        b.conn = None
        b.last_seq = conn.session.last_seq
        if self._stopping:
            return
        if self.config.linger_s <= 0:
            self._expire(b)
        else:
            assert self._loop is not None
            b.linger = self._loop.call_later(self.config.linger_s, self._expire, b)

    def _expire(self, b: _Binding) -> None:
        b.linger = None
        if b.conn is not None:
            return
        self._forget(b)
        self._leave(b)

    def _forget(self, b: _Binding) -> None:
        if self._by_player.get(b.player_id) is b:
            del self._by_player[b.player_id]
        if self._by_resume.get(b.resume_token) is b:
            del self._by_resume[b.resume_token]

    def _leave(self, b: _Binding) -> None:
        try:
            self.port.leave(b.entity_id)
            self.leaves += 1
        except Exception:
            self.internal_errors += 1
            self._log(logging.ERROR, "leave_failed", exc_info=True, entity=b.entity_id)
