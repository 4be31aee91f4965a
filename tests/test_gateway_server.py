"""The gateway over real WebSocket connections on 127.0.0.1, in front of a real zone."""

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode

from shardworld.entities import Field, Scope
from shardworld.gateway import EmbeddedWorld, Gateway, GatewayConfig, SessionLimits, issue_token
from shardworld.gateway import frames as frames_module
from shardworld.gateway.frames import (
    binary_frame_header,
    encode_snapshot_frames,
    snapshot_frame_header,
)
from shardworld.gateway.server import ANONYMOUS_PLAYER_BASE, _RateLimitedLog
from shardworld.kernels._jit import py_func
from shardworld.protocol.messages import (
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Input,
    Kick,
    Message,
    Ping,
    Pong,
    Snapshot,
    Welcome,
    decode_server,
    encode,
    encode_snapshot,
)
from shardworld.protocol.snapshot import SnapshotMirror, SnapshotMirrorError
from shardworld.zone import MODE_IDLE, InputBatch, Zone, ZoneConfig, ZoneHandler
from shardworld.zone.handler import PlayerMessage

SECRET = "gateway-test-secret"
RADIUS, HYSTERESIS = 50.0, 5.0


class Handler(ZoneHandler):
    """Players spawn where the test says; optional NPCs whose public blob changes every tick
    (big snapshots); custom messages are echoed back."""

    def __init__(
        self,
        spots: dict[int, tuple[float, float]] | None = None,
        npcs: int = 0,
        churn: bool = False,
        swing: int = 0,
    ) -> None:
        self.spots = spots or {}
        self.npcs = npcs
        self.churn = churn
        self.swing = swing
        if churn:
            self.fields = (Field("blob", np.uint8, (48,), Scope.PUBLIC),)

    def on_start(self, world: Zone) -> None:
        if self.npcs:
            rng = np.random.default_rng(3)
            pos = rng.uniform(470.0, 530.0, (self.npcs, 2)).astype(np.float32)
            world.spawn(self.npcs, pos=pos, kind=2, mode=MODE_IDLE)
        if self.swing:
            pos = np.full((self.swing, 2), 500.0, np.float32)
            world.spawn(self.swing, pos=pos, kind=3, mode=MODE_IDLE)

    def on_join(self, world: Zone, player_id: int) -> int:
        return world.spawn_player(player_id, self.spots.get(player_id, (500.0, 500.0)))

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        if self.churn:
            world.entities["blob"][:] = tick % 251
        if self.swing:
            # These swing across the interest boundary of a player at (500, 500): they
            # enter and leave its view all the time (spawns and despawns in every snapshot).
            rows = np.flatnonzero(world.entities["kind"] == 3)
            phase = np.arange(len(rows)) * 0.7 + tick * 0.25
            world.entities["pos"][rows, 0] = 552.0 + 12.0 * np.sin(phase)

    def on_messages(self, world: Zone, tick: int, messages: list[PlayerMessage]) -> None:
        for m in messages:
            world.send_message(m.entity_id, "echo", {"kind": m.kind, "body": m.body})


@dataclass
class Env:
    zone: Zone
    port: EmbeddedWorld
    gw: Gateway
    clients: list["Client"] = field(default_factory=list)

    async def connect(self, rcvbuf: int | None = None) -> "Client":
        sock = None
        if rcvbuf is not None:
            host, port = self.gw.url.removeprefix("ws://").split(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        ws = await connect(
            self.gw.url, compression=None, max_size=None, ping_interval=None, sock=sock
        )
        c = Client(ws, SnapshotMirror(self.zone.public_width, self.zone.owner_width))
        self.clients.append(c)
        return c

    async def join(
        self,
        pid: int | None = None,
        resume: str = "",
        token: str | None = None,
        rcvbuf: int | None = None,
    ) -> "Client":
        c = await self.connect(rcvbuf)
        if token is None:
            token = issue_token(SECRET, pid, 60) if pid is not None else ""
        await c.send(Hello(token=token, resume=resume, client="tests"))
        await c.until(lambda: c.welcome is not None or c.closed.is_set(), what="WELCOME")
        return c


class Client:
    """A test player: reads everything in the background and mirrors its snapshots."""

    def __init__(self, ws: ClientConnection, mirror: SnapshotMirror) -> None:
        self.ws = ws
        self.mirror = mirror
        self.welcome: Welcome | None = None
        self.errors: list[int] = []
        self.kicks: list[int] = []
        self.messages: list[Message] = []
        self.pongs: list[Pong] = []
        self.ticks: list[int] = []
        self.acks: list[int] = []
        self.resets: list[bool] = []
        self.mirror_errors = 0
        self.seen: dict[int, frozenset[int]] = {}  # tick -> the entities in view
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, bytes)
                msg = decode_server(raw)
                if isinstance(msg, Snapshot):
                    try:
                        snap = self.mirror.apply(msg.payload)
                    except SnapshotMirrorError:
                        self.mirror_errors += 1
                        continue
                    self.resets.append(snap.header.reset)
                    self.seen[msg.tick] = frozenset(self.mirror.ids())
                    self.ticks.append(msg.tick)
                    self.acks.append(msg.ack)
                elif isinstance(msg, Welcome):
                    self.welcome = msg
                elif isinstance(msg, Error):
                    self.errors.append(msg.code)
                elif isinstance(msg, Kick):
                    self.kicks.append(msg.code)
                elif isinstance(msg, Message):
                    self.messages.append(msg)
                elif isinstance(msg, Pong):
                    self.pongs.append(msg)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    @property
    def entity(self) -> int:
        assert self.welcome is not None
        return self.welcome.entity_id

    async def send(self, msg: Any) -> None:
        data = msg if isinstance(msg, bytes | str) else encode(msg)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(data)

    async def until(self, pred: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or pred}")
            await asyncio.sleep(0.005)

    async def closed_with(self, code: int, timeout: float = 3.0) -> None:
        await self.until(self.closed.is_set, timeout, what=f"close {code}")
        assert self.close_code == code

    async def snapshots_after(self, tick: int, count: int = 1) -> None:
        await self.until(
            lambda: sum(1 for t in self.ticks if t > tick) >= count, what=f"snapshots after {tick}"
        )


@contextlib.asynccontextmanager
async def running(
    handler: Handler | None = None,
    limits: SessionLimits | None = None,
    **changes: Any,
) -> AsyncIterator[Env]:
    zone = Zone(
        ZoneConfig(
            tick_hz=50.0,
            snapshot_hz=50.0,
            interest_radius=RADIUS,
            interest_hysteresis=HYSTERESIS,
        ),
        handler or Handler(),
    )
    zone.warm_up()
    port = EmbeddedWorld(zone)
    settings: dict[str, Any] = {"port": 0, "secret": SECRET, "linger_s": 5.0}
    settings.update(changes)
    if limits is not None:
        settings["limits"] = limits
    gw = Gateway(port, GatewayConfig(**settings))
    await gw.start()
    ticking = asyncio.create_task(zone.run())
    env = Env(zone, port, gw)
    try:
        yield env
    finally:
        for c in env.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.ws.close(), 1.0)
            c.task.cancel()
        zone.stop()
        await ticking
        await gw.stop()


@contextlib.asynccontextmanager
async def with_witness(**kwargs: Any) -> AsyncIterator[tuple[Env, Client]]:
    """An environment with one well-behaved player whose snapshot stream must not suffer."""
    async with running(**kwargs) as env:
        witness = await env.join(1000)
        await witness.until(lambda: len(witness.ticks) >= 2, what="witness snapshots")
        yield env, witness
        seen = len(witness.ticks)
        await witness.until(lambda: len(witness.ticks) >= seen + 5, what="witness still served")
        assert witness.mirror_errors == 0
        assert not witness.closed.is_set()
        assert witness.errors == [] and witness.kicks == []
        assert witness.entity in witness.mirror.ids()


# --- the happy path -----------------------------------------------------------------------


async def test_players_see_each_other_enter_move_and_leave_at_the_right_distances() -> None:
    handler = Handler(spots={1: (100.0, 100.0), 2: (170.0, 100.0)})
    async with running(handler, linger_s=0.3) as env:
        a = await env.join(1)
        b = await env.join(2)
        assert a.welcome is not None and b.welcome is not None
        assert (a.welcome.player_id, b.welcome.player_id) == (1, 2)
        assert a.welcome.world == env.zone.bounds and a.welcome.pos_quantum == 0.01
        assert a.welcome.resumed is False and a.welcome.resume_token
        ea, eb = a.entity, b.entity
        zone = env.zone

        async def view_of_a(bx: float) -> set[int]:
            zone.entities.set([eb], pos=(bx, 100.0), vel=(0.0, 0.0))
            await a.snapshots_after(zone.tick)
            return a.mirror.ids()

        assert await view_of_a(170.0) == {ea}
        assert await view_of_a(150.0) == {ea, eb}  # 50 m: enters
        assert await view_of_a(154.0) == {ea, eb}  # hysteresis keeps it
        assert await view_of_a(156.0) == {ea}  # beyond r + h: leaves
        assert await view_of_a(152.0) == {ea}  # not back until within r
        assert await view_of_a(149.0) == {ea, eb}
        seen = a.mirror.by_id(eb)
        assert seen is not None and seen.qx * 0.01 == pytest.approx(149.0, abs=0.006)
        assert a.resets[0] and not any(a.resets[1:])

        # B walks east: A sees it move, and B's snapshots acknowledge the input.
        await b.send(Input(1, 1.0, 0.0))
        await b.until(lambda: bool(b.acks) and b.acks[-1] == 1, what="ack 1")

        def b_seen_x() -> float:
            e = a.mirror.by_id(eb)
            return e.qx * 0.01 if e is not None else 0.0

        await a.until(lambda: b_seen_x() > 150.0, what="B moving")
        assert a.acks[-1] == 0

        # B leaves: its entity lingers, then despawns and A sees it go.
        await b.ws.close()
        await a.until(lambda: env.gw.stats()["lingering"] == 1, what="lingering")
        assert eb in a.mirror.ids() and env.port.alive(eb)
        await a.until(lambda: eb not in a.mirror.ids(), timeout=3.0, what="B despawned")
        assert not env.port.alive(eb)
        st = env.gw.stats()
        assert (st["leaves"], st["lingering"], st["joined"]) == (1, 0, 1)
        assert a.mirror_errors == 0 and b.mirror_errors == 0


async def test_ping_and_custom_messages_both_ways() -> None:
    async with running() as env:
        c = await env.join(5)
        await c.send(Ping(77, 1.5))
        await c.until(lambda: bool(c.pongs), what="PONG")
        pong = c.pongs[0]
        assert (pong.nonce, pong.client_time) == (77, 1.5)
        assert abs(pong.server_time - env.zone.clock.now()) < 1.0
        await c.send(Message("chat", {"text": "hi"}))
        await c.until(lambda: bool(c.messages), what="echo")
        assert c.messages[0] == Message("echo", {"kind": "chat", "body": {"text": "hi"}})
        # World messages for an entity without a connection are counted, not sent.
        env.zone.send_message(123, "lost", None)
        st = env.gw.stats()
        assert st["messages_in"] == 1 and st["messages_out"] == 1
        assert st["messages_undeliverable"] == 1


async def test_resume_after_a_dropped_connection_keeps_the_entity() -> None:
    async with with_witness(linger_s=5.0) as (env, witness):
        a = await env.join(1)
        await a.until(lambda: len(a.ticks) >= 2, what="snapshots")
        await a.send(Input(1, 0.0, 1.0))
        await a.until(lambda: bool(a.acks) and a.acks[-1] == 1, what="ack")
        assert a.welcome is not None
        entity, token = a.entity, a.welcome.resume_token
        a.ws.transport.abort()  # a TCP reset: no closing handshake
        await witness.until(lambda: env.gw.stats()["lingering"] == 1, what="lingering")
        assert env.port.alive(entity)

        b = await env.join(1, resume=token)
        assert b.welcome is not None and b.welcome.resumed is True
        assert b.entity == entity and b.welcome.resume_token != token
        await b.until(lambda: len(b.ticks) >= 3, what="snapshots after resume")
        assert b.resets[0] and entity in b.mirror.ids()  # the first one is a full snapshot
        # Input numbering continues where the old connection left it.
        await b.send(Input(1, 0.0, 0.0))
        await b.until(lambda: ErrorCode.OUT_OF_ORDER in b.errors, what="OUT_OF_ORDER")
        await b.send(Input(2, 0.0, 0.0))
        await b.until(lambda: b.acks[-1] == 2, what="ack 2")
        st = env.gw.stats()
        assert (st["resumes"], st["lingering"], st["leaves"]) == (1, 0, 0)


async def test_linger_expiry_despawns_and_the_token_no_longer_resumes() -> None:
    async with running(linger_s=0.3) as env:
        a = await env.join(1)
        assert a.welcome is not None
        entity, token = a.entity, a.welcome.resume_token
        a.ws.transport.abort()
        await asyncio.sleep(0.1)
        assert env.port.alive(entity)
        await a.until(lambda: not env.port.alive(entity), timeout=2.0, what="despawn")
        assert env.gw.stats()["leaves"] == 1
        b = await env.join(1, resume=token)
        assert b.welcome is not None and b.welcome.resumed is False
        assert b.entity != entity
        assert b.errors == [ErrorCode.RESUME_FAILED]
        assert env.gw.stats()["errors"]["RESUME_FAILED"] == 1


async def test_signing_in_again_takes_over_the_entity() -> None:
    async with running() as env:
        first = await env.join(3)
        second = await env.join(3)
        await first.closed_with(CloseCode.KICKED)
        assert first.kicks == [ErrorCode.ALREADY_JOINED]
        assert second.welcome is not None and second.welcome.resumed
        assert second.entity == first.entity
        await second.until(lambda: len(second.ticks) >= 2 and second.resets[0], what="snapshots")
        assert env.gw.stats()["joined"] == 1 and len(env.zone.entities) == 1


async def test_dev_mode_anonymous_players_resume_by_token() -> None:
    async with running(secret=None, dev=True) as env:
        a = await env.join()
        assert a.welcome is not None and a.welcome.player_id >= ANONYMOUS_PLAYER_BASE
        other = await env.join()
        assert other.welcome is not None and other.welcome.player_id != a.welcome.player_id
        a.ws.transport.abort()
        await other.until(lambda: env.gw.stats()["lingering"] == 1, what="lingering")
        b = await env.join(resume=a.welcome.resume_token)
        assert b.welcome is not None and b.welcome.resumed
        assert (b.welcome.player_id, b.entity) == (a.welcome.player_id, a.entity)


async def test_stop_kicks_everyone_and_removes_their_entities() -> None:
    async with running() as env:
        a = await env.join(1)
        b = await env.join(2)
        idle = await env.connect()
        await env.gw.stop()
        for c in (a, b, idle):
            await c.closed_with(CloseCode.GOING_AWAY)
            assert c.kicks == [ErrorCode.SHUTTING_DOWN]
        assert len(env.zone.entities) == 0
        st = env.gw.stats()
        assert st["connections"] == 0 and st["kicks"] == {"SHUTTING_DOWN": 3}


async def test_connections_over_the_limit_are_refused() -> None:
    async with running(max_connections=1) as env:
        await env.join(1)
        with pytest.raises(InvalidStatus) as exc:
            await connect(env.gw.url)
        assert exc.value.response.status_code == 503
        assert env.gw.stats()["rejected"] == 1


async def test_stats_has_the_documented_counters() -> None:
    async with running() as env:
        c = await env.join(1)
        await c.until(lambda: len(c.ticks) >= 3, what="snapshots")
        st = env.gw.stats()
        for key in (
            "connections",
            "joined",
            "frames_sent",
            "frames_dropped",
            "bytes_out",
            "errors",
            "kicks",
            "resumes",
        ):
            assert key in st
        assert st["connections"] == 1 and st["joined"] == 1
        assert st["snapshots_sent"] >= 3 and st["frames_sent"] >= st["snapshots_sent"] + 1
        assert st["bytes_out"] > 0 and st["frames_dropped"] == 0
        assert env.gw.url.startswith("ws://127.0.0.1:")


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="secret"):
        GatewayConfig()
    GatewayConfig(dev=True)
    for bad in (
        {"port": 70000},
        {"linger_s": -1.0},
        {"close_timeout_s": 0.0},
        {"socket_sndbuf": 10},
        {"max_queue": 0},
        {"send_buffer_limit": 0},
        {"backlog": 0},
    ):
        with pytest.raises(ValueError):
            GatewayConfig(secret="s", **bad)  # type: ignore[arg-type]


def test_cli_gateway_flags_reach_the_config() -> None:
    from shardworld.cli import _gateway_config, _parser

    argv = "gateway zones/arena --bus memory://x --dev --socket-sndbuf 65536 --backlog 2048"
    args = _parser().parse_args(argv.split())
    cfg = _gateway_config(args, None)
    assert (cfg.socket_sndbuf, cfg.backlog, cfg.dev) == (65536, 2048, True)
    run = _parser().parse_args(["run", "zones/arena", "--dev"])
    assert _gateway_config(run, None).backlog == 1024


async def test_each_error_code_is_logged_once_per_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="shardworld.gateway")
    async with running() as env:
        c = await env.join(1)
        for _ in range(3):
            await c.send(b"\xc1")
        await c.send(msgpack.packb([99]))
        await c.until(lambda: len(c.errors) == 4, what="errors")
        d = await env.join(2)
        await d.send(b"\xc1")
        await d.until(lambda: len(d.errors) == 1, what="error")
    lines = [
        r for r in caplog.records if getattr(r, "shardworld", {}).get("event") == "client_error"
    ]
    assert sorted((r.shardworld["player"], r.shardworld["code"]) for r in lines) == [  # type: ignore[attr-defined]
        (1, "MALFORMED"),
        (1, "UNKNOWN_TYPE"),
        (2, "MALFORMED"),
    ]
    assert "client_error" in lines[0].getMessage() and "code='MALFORMED'" in lines[0].getMessage()
    assert env.gw.stats()["errors"] == {"MALFORMED": 4, "UNKNOWN_TYPE": 1}


def test_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.ratelimit")
    out = _RateLimitedLog(logging.getLogger("test.ratelimit"), rate=0.001, burst=2.0)
    for i in range(5):
        out(logging.INFO, "evt", n=i)
    assert [r.shardworld["n"] for r in caplog.records] == [0, 1]  # type: ignore[attr-defined]
    assert out.suppressed == 3


# --- hostile clients ----------------------------------------------------------------------


async def test_malformed_wrong_types_and_unknown_types_are_errors_not_disconnects() -> None:
    async with with_witness() as (env, _):
        c = await env.join(1)
        bad = [
            (b"\xc1", ErrorCode.MALFORMED),
            (msgpack.packb({"not": "an array"}), ErrorCode.MALFORMED),
            (msgpack.packb([3, "seq", "x", None]), ErrorCode.BAD_FIELD),
            (msgpack.packb([6]), ErrorCode.BAD_FIELD),
            (msgpack.packb([99, 1, 2]), ErrorCode.UNKNOWN_TYPE),
            (encode(Pong(1, 0.0, 0.0)), ErrorCode.UNKNOWN_TYPE),
        ]
        for data, _code in bad:
            await c.send(data)
        await c.until(lambda: len(c.errors) == len(bad), what="errors")
        assert c.errors == [code for _, code in bad]
        n = len(c.ticks)
        await c.until(lambda: len(c.ticks) >= n + 3, what="still served")
        assert not c.closed.is_set()
        errors = env.gw.stats()["errors"]
        assert (errors["MALFORMED"], errors["BAD_FIELD"], errors["UNKNOWN_TYPE"]) == (2, 2, 2)


async def test_an_oversized_frame_is_closed_with_1009() -> None:
    async with with_witness() as (env, _):
        c = await env.join(1)
        await c.send(bytes(5000))
        await c.closed_with(CloseCode.TOO_BIG)
        await c.until(lambda: env.gw.stats()["errors"].get("TOO_LARGE") == 1, what="counted")


async def test_a_text_frame_is_closed_with_1003() -> None:
    async with with_witness() as (env, _):
        c = await env.join(1)
        await c.send("hello")
        await c.closed_with(CloseCode.UNSUPPORTED_DATA)
        assert c.errors == [ErrorCode.TEXT_FRAME]


async def test_input_before_hello_and_a_second_hello() -> None:
    async with with_witness() as (env, _):
        c = await env.connect()
        await c.send(Input(1, 1.0, 0.0))
        await c.until(lambda: c.errors == [ErrorCode.NOT_JOINED], what="NOT_JOINED")
        await c.send(Hello(token=issue_token(SECRET, 8, 60)))
        await c.until(lambda: c.welcome is not None, what="WELCOME")
        await c.send(Hello(token=issue_token(SECRET, 8, 60)))
        await c.until(lambda: len(c.errors) == 2, what="ALREADY_JOINED")
        assert c.errors[1] == ErrorCode.ALREADY_JOINED
        await c.send(Input(1, 1.0, 0.0))
        await c.until(lambda: bool(c.acks) and c.acks[-1] == 1, what="ack")


async def test_out_of_order_and_future_input_sequence_numbers() -> None:
    async with with_witness() as (env, _):
        c = await env.join(1)
        await c.send(Input(10, 0.0, 1.0))
        await c.send(Input(9, 1.0, 0.0))
        await c.send(Input(10, 1.0, 0.0))
        await c.send(Input(10 + 5000, 1.0, 0.0))
        await c.until(lambda: len(c.errors) == 3, what="errors")
        assert c.errors == [
            ErrorCode.OUT_OF_ORDER,
            ErrorCode.OUT_OF_ORDER,
            ErrorCode.FROM_THE_FUTURE,
        ]
        await c.until(lambda: bool(c.acks) and c.acks[-1] == 10, what="ack 10")
        # Only the valid input reached the zone.
        row = env.zone.entities.rows_of([c.entity])[0]
        assert tuple(env.zone.entities["intent"][row]) == (0.0, 1.0)


async def test_a_flood_is_rate_limited_then_kicked() -> None:
    async with with_witness() as (env, _):
        c = await env.join(1)
        for i in range(400):
            await c.send(Ping(i))
            if c.closed.is_set():
                break
        await c.closed_with(CloseCode.ABUSE)
        assert ErrorCode.RATE_LIMITED in c.errors
        assert c.kicks == [ErrorCode.ABUSE]
        st = env.gw.stats()
        assert st["kicks"] == {"ABUSE": 1} and st["errors"]["RATE_LIMITED"] >= 20


@pytest.mark.parametrize(
    ("hello", "code", "close"),
    [
        (
            lambda: Hello(token=issue_token("wrong secret", 1, 60)),
            ErrorCode.AUTH_FAILED,
            CloseCode.AUTH_FAILED,
        ),
        (
            lambda: Hello(token=issue_token(SECRET, 1, 60, now=time.time() - 61)),
            ErrorCode.AUTH_FAILED,
            CloseCode.AUTH_FAILED,
        ),
        (lambda: Hello(token=""), ErrorCode.AUTH_FAILED, CloseCode.AUTH_FAILED),
        (
            lambda: Hello(version=2, token=issue_token(SECRET, 1, 60)),
            ErrorCode.UNSUPPORTED_VERSION,
            CloseCode.UNSUPPORTED_VERSION,
        ),
    ],
    ids=["bad token", "expired token", "no token", "unsupported version"],
)
async def test_refused_hellos(hello: Callable[[], Hello], code: int, close: int) -> None:
    async with with_witness() as (env, _):
        c = await env.connect()
        await c.send(hello())
        await c.closed_with(close)
        assert c.errors == [code] and c.welcome is None
        assert env.gw.stats()["joined"] == 1  # only the witness


async def test_no_hello_is_closed_with_4005() -> None:
    async with with_witness(limits=SessionLimits(hello_timeout_s=0.3)) as (env, _):
        c = await env.connect()
        t0 = time.monotonic()
        await c.closed_with(CloseCode.HANDSHAKE_TIMEOUT)
        assert 0.25 < time.monotonic() - t0 < 2.0
        assert c.kicks == [ErrorCode.NOT_JOINED]


# --- a client that never reads --------------------------------------------------------------


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client-to-server frame (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Complete unmasked frames at the start of ``data``."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = int.from_bytes(data[j : j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j : j + 8], "big"), j + 8
        if j + n > len(data):
            break
        out.append((op, data[j : j + n]))
        i = j + n
    return out


async def raw_client(url: str, token: str) -> socket.socket:
    """Opening handshake and HELLO by hand, on a socket with a tiny receive buffer."""
    host, port = url.removeprefix("ws://").split(":")
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)  # one byte at a time: read nothing more
    assert response.startswith(b"HTTP/1.1 101")
    await loop.sock_sendall(sock, client_frame(encode(Hello(token=token))))
    return sock


async def test_a_client_that_never_reads_is_dropped_then_kicked_without_hurting_others() -> None:
    handler = Handler(npcs=100, churn=True)
    async with with_witness(
        handler=handler,
        send_buffer_limit=2048,
        slow_reader_grace_s=0.5,
        close_timeout_s=3.0,
        socket_sndbuf=8192,
    ) as (env, witness):
        sock = await raw_client(env.gw.url, issue_token(SECRET, 9, 60))
        gw = env.gw
        try:
            await witness.until(lambda: gw.stats()["snapshots_dropped"] > 0, 8.0, "drops")
            await witness.until(lambda: gw.stats()["kicks"].get("SLOW_READER") == 1, 8.0, "kick")
            # Now read what the server had queued: the backlog, then KICK and close 4004.
            loop = asyncio.get_running_loop()
            data = b""
            deadline = time.monotonic() + 3.0
            frames: list[tuple[int, bytes]] = []
            while time.monotonic() < deadline:
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 1.0)
                except (TimeoutError, ConnectionError):
                    break
                if not chunk:
                    break
                data += chunk
                frames = server_frames(data)
                if any(op == 0x8 for op, _ in frames):
                    break
        finally:
            sock.close()
        messages = [decode_server(p) for op, p in frames if op == 0x2]
        kicks = [m for m in messages if isinstance(m, Kick)]
        assert [k.code for k in kicks] == [ErrorCode.SLOW_READER]
        closes = [p for op, p in frames if op == 0x8]
        assert closes and int.from_bytes(closes[0][:2], "big") == CloseCode.SLOW_READER
        # What it did receive is a consistent stream: no snapshot after a gap but a RESET.
        mirror = SnapshotMirror(env.zone.public_width, env.zone.owner_width)
        for m in messages:
            if isinstance(m, Snapshot):
                mirror.apply(m.payload)
        # The witness, next to the same 100 NPCs, was never starved.
        assert witness.mirror_errors == 0
        assert len(witness.mirror) > 50
        assert gw.stats()["joined"] == 1


async def test_a_reader_that_pauses_gets_a_full_snapshot_before_any_more_deltas() -> None:
    handler = Handler(npcs=60, churn=True, swing=20)
    async with with_witness(
        handler=handler,
        send_buffer_limit=2048,
        slow_reader_grace_s=5.0,
        socket_sndbuf=8192,
    ) as (env, witness):
        c = await env.join(7, rcvbuf=4096)
        await c.until(lambda: len(c.ticks) >= 5, what="snapshots")
        await witness.until(lambda: len(witness.mirror) > 60, what="the crowd")
        c.ws.transport.pause_reading()
        await witness.until(lambda: env.gw.stats()["snapshots_dropped"] >= 10, 5.0, "drops")
        gap_from = env.zone.tick
        c.ws.transport.resume_reading()
        await c.until(lambda: any(c.resets[1:]), 5.0, "a full snapshot")
        reset_tick = c.ticks[c.resets.index(True, 1)]
        # A swing takes 25 ticks: after it, hysteresis no longer remembers the gap.
        settled = reset_tick + 30
        await c.until(lambda: sum(t > settled for t in c.ticks) >= 10, 5.0, "catching up")
        st = env.gw.stats()
        assert st["snapshots_skipped"] >= 1 and st["kicks"] == {}
        # Every delta applied cleanly, and the client sees exactly what the witness next to
        # it sees, tick for tick, although entities came and went during the gap.
        assert c.mirror_errors == 0
        assert reset_tick > gap_from
        common = [t for t in c.seen if t > settled and t in witness.seen]
        assert len(common) >= 5
        for t in common:
            assert c.seen[t] == witness.seen[t]  # both players stand on the same spot


# --- frames.py: the snapshot frames written straight to the transport ---------------------
# (kept here: frames.py exists for the server's fast path)


def reference_frame(tick: int, ack: int, payload: bytes) -> bytes:
    """The same frame built by the protocol module and the WebSocket library."""
    return WsFrame(Opcode.BINARY, encode_snapshot(tick, ack, payload)).serialize(mask=False)


def batch_arrays(sizes: list[int], seed: int = 0) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(seed)
    off = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    buf = rng.integers(0, 256, int(off[-1]), dtype=np.uint8)
    acks = rng.integers(0, 2**32, len(sizes), dtype=np.uint64).astype(np.uint32)
    return acks, buf, off


EDGE_SIZES = [0, 1, 111, 112, 113, 255, 256, 1000, 65520, 65521, 65535, 65536, 70000]


def check_frames(kernel: Callable[..., Any], tick: int, sizes: list[int], seed: int = 0) -> None:
    acks, buf, off = batch_arrays(sizes, seed)
    frames, starts, body = kernel(tick & 0xFFFFFFFF, acks, buf, off)
    assert frames.dtype == np.uint8 and starts.dtype == np.int64 and body.dtype == np.int64
    assert starts.shape == (len(sizes) + 1,) and body.shape == (len(sizes),)
    assert starts[0] == 0 and starts[-1] == frames.shape[0]
    for i, n in enumerate(sizes):
        payload = buf[off[i] : off[i + 1]].tobytes()
        want = reference_frame(tick, int(acks[i]), payload)
        assert frames[starts[i] : starts[i + 1]].tobytes() == want
        assert frames[body[i] : starts[i + 1]].tobytes() == payload
        assert starts[i + 1] - body[i] == n


def test_snapshot_frames_match_the_library_and_the_protocol_at_every_size_edge() -> None:
    check_frames(encode_snapshot_frames, 2**32 + 17, EDGE_SIZES)
    check_frames(encode_snapshot_frames, 0, [])


def test_snapshot_frame_kernel_and_its_python_body_agree() -> None:
    sizes = [0, 3, 120, 300]
    acks, buf, off = batch_arrays(sizes, 4)
    fast = encode_snapshot_frames(99, acks, buf, off)
    slow = py_func(encode_snapshot_frames)(99, acks, buf, off)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    check_frames(py_func(encode_snapshot_frames), 5, sizes, 5)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 700) | st.sampled_from(EDGE_SIZES[:8]), max_size=30),
    tick=st.integers(0, 2**40),
    seed=st.integers(0, 1000),
)
def test_snapshot_frames_property(sizes: list[int], tick: int, seed: int) -> None:
    check_frames(encode_snapshot_frames, tick, sizes, seed)


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_single_frame_headers(n: int) -> None:
    payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
    assert snapshot_frame_header(2**33 + 5, 2**32 - 1, n) + payload == reference_frame(
        2**33 + 5, 2**32 - 1, payload
    )
    data = encode_snapshot(1, 2, payload)
    assert binary_frame_header(len(data)) + data == WsFrame(Opcode.BINARY, data).serialize(
        mask=False
    )


def test_frame_header_ranges() -> None:
    with pytest.raises(ValueError):
        binary_frame_header(-1)
    with pytest.raises(ValueError):
        snapshot_frame_header(0, 0, -1)
    with pytest.raises(ValueError):
        snapshot_frame_header(0, 0, 2**32)


async def test_serving_never_compiles_a_new_frame_kernel_signature() -> None:
    frames_module.warm_up()
    before = len(encode_snapshot_frames.signatures)
    async with running() as env:
        c = await env.join(1)
        await c.until(lambda: len(c.ticks) >= 3, what="snapshots")
    assert len(encode_snapshot_frames.signatures) == before == 1


async def test_the_gateway_serves_the_javascript_sdk_over_plain_http() -> None:
    import urllib.request
    from importlib import resources

    want = (resources.files("shardworld") / "web" / "shardworld.js").read_text("utf-8")
    async with running() as env:
        http = env.gw.url.replace("ws://", "http://")

        def fetch(path: str) -> tuple[int, str, str]:
            try:
                with urllib.request.urlopen(http + path, timeout=5) as r:
                    return r.status, r.headers.get("Content-Type", ""), r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, "", ""

        status, ctype, body = await asyncio.to_thread(fetch, "/shardworld.js")
        assert status == 200 and ctype.startswith("text/javascript") and body == want
        assert "export async function connect" in body or "export function connect" in body
        # Any other plain HTTP request still gets the WebSocket library's refusal.
        status, _, _ = await asyncio.to_thread(fetch, "/other")
        assert status == 426
        # And players still connect on the same port.
        c = await env.join(7)
        assert c.welcome is not None
