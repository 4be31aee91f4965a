"""The client SDK against a small protocol v1 server written here (real snapshot encoder)."""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shardworld.client import (
    BlobDecoder,
    ClockSync,
    HandshakeError,
    LatencyHistogram,
    Metrics,
    Player,
    PlayerClosed,
    connect,
    error_name,
)
from shardworld.kernels.snapshot import encode_snapshots, warm_up
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
    decode_client,
    encode,
)

PUB_FIELDS = (
    {"name": "hp", "dtype": "<u2", "shape": [], "scope": "public"},
    {"name": "vel", "dtype": "<f4", "shape": [2], "scope": "public"},
)
OWN_FIELDS = ({"name": "ammo", "dtype": "|u1", "shape": [], "scope": "owner"},)
W, W2 = 10, 1
WORLD = (0.0, 0.0, 100.0, 100.0)
QUANTUM = 0.01
CLOCK_OFFSET = 1000.0  # the fake server's clock runs this far ahead of time.monotonic()


@pytest.fixture(autouse=True, scope="module")
def _encoder_loaded() -> None:
    # Loading the compiled encoder takes most of a second: not inside a timed test.
    warm_up()


@dataclass
class Ent:
    id: int
    kind: int
    qx: int
    qy: int
    hp: int = 100
    vel: tuple[float, float] = (0.0, 0.0)
    ammo: int = 0
    owner: int = 0

    def pub(self) -> bytes:
        return struct.pack("<Hff", self.hp, *self.vel)

    def own(self) -> bytes:
        return bytes([self.ammo])


@dataclass
class View:
    """One observer's handles and what it was last sent, kept the plain way."""

    handles: dict[int, int] = field(default_factory=dict)
    last: dict[int, tuple[int, int, bytes, bytes, int]] = field(default_factory=dict)

    def payload(
        self, tick: int, base: tuple[int, int], ents: list[Ent], player: int, reset: bool
    ) -> bytes:
        cur = sorted(ents, key=lambda e: e.id)
        ids = {e.id for e in cur}
        if reset:
            self.handles = {}
        leaving = sorted(i for i in self.handles if i not in ids)
        leave_handles = [self.handles.pop(i) for i in leaving]
        entering = [e.id for e in cur if e.id not in self.handles]
        free = (h for h in range(256) if h not in set(self.handles.values()))
        for i in entering:
            self.handles[i] = next(free)
        state = [1 if (reset or e.id in entering) else 0 for e in cur]
        moved, updated = [], []
        for e in cur:
            old = self.last.get(e.id)
            moved.append(int(old is None or (old[0], old[1]) != (e.qx, e.qy)))
            updated.append(
                int(old is None or (old[2], old[3], old[4]) != (e.pub(), e.own(), e.owner))
            )
        n = len(cur)
        buf, off = encode_snapshots(
            tick,
            np.array([int(reset)], np.uint8),
            np.array([base], np.int32),
            np.array([0, n], np.int64),
            np.arange(n, dtype=np.int32),
            np.array([self.handles[e.id] for e in cur], np.uint16),
            np.array(state, np.uint8),
            np.array([0, 0 if reset else len(leave_handles)], np.int64),
            np.array([] if reset else leave_handles, np.uint16),
            np.array([e.id for e in cur], np.uint64),
            np.array([e.kind for e in cur], np.uint16),
            np.array([(e.qx, e.qy) for e in cur], np.int32).reshape(n, 2),
            np.array(moved, np.uint8),
            np.array(updated, np.uint8),
            np.frombuffer(b"".join(e.pub() for e in cur), np.uint8).reshape(n, W),
            np.frombuffer(b"".join(e.own() for e in cur), np.uint8).reshape(n, W2),
            np.array([e.owner for e in cur], np.uint64),
            np.array([player], np.uint64),
            False,
        )
        self.last = {e.id: (e.qx, e.qy, e.pub(), e.own(), e.owner) for e in cur}
        return bytes(buf[off[0] : off[1]])


@dataclass
class Conn:
    ws: ServerConnection
    hello: Hello
    welcome: Welcome
    view: View = field(default_factory=View)
    inputs: list[Input] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    pings: int = 0
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    tick: int = 100

    async def send(self, msg: Any) -> None:
        await self.ws.send(encode(msg))

    async def snapshot(
        self, ents: list[Ent], *, tick: int | None = None, ack: int = 0, reset: bool = False
    ) -> None:
        self.tick = self.tick + 1 if tick is None else tick
        me = next((e for e in ents if e.id == self.welcome.entity_id), None)
        base = (me.qx, me.qy) if me is not None else (0, 0)
        payload = self.view.payload(self.tick, base, ents, self.welcome.player_id, reset)
        await self.ws.send(encode(Snapshot(self.tick, ack, payload)))


class FakeGateway:
    """Speaks protocol v1 on 127.0.0.1; each test scripts what its connections receive."""

    def __init__(self, tick_hz: float = 20.0, snapshot_hz: float = 20.0) -> None:
        self.tick_hz = tick_hz
        self.snapshot_hz = snapshot_hz
        self.conns: asyncio.Queue[Conn] = asyncio.Queue()
        self.tokens: dict[str, tuple[int, int]] = {}
        self.next_entity = 1 << 48
        self.refuse: tuple[Any, int] | None = None
        self.silent = False
        self.server: Server | None = None
        self.url = ""

    @staticmethod
    def now() -> float:
        return time.monotonic() + CLOCK_OFFSET

    async def __aenter__(self) -> FakeGateway:
        self.server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def next_conn(self) -> Conn:
        return await asyncio.wait_for(self.conns.get(), 5.0)

    async def _handle(self, ws: ServerConnection) -> None:
        first = await ws.recv()
        assert isinstance(first, bytes)
        hello = decode_client(first)
        assert isinstance(hello, Hello)
        if self.silent:
            await ws.wait_closed()
            return
        if self.refuse is not None:
            msg, close_code = self.refuse
            await ws.send(encode(msg))
            await ws.close(close_code, "refused")
            return
        pending = []
        if hello.resume and hello.resume in self.tokens:
            entity, player = self.tokens.pop(hello.resume)
            resumed = True
        else:
            if hello.resume:
                pending.append(Error(ErrorCode.RESUME_FAILED, "unknown resume token"))
            self.next_entity += 1
            entity, player, resumed = self.next_entity, 42, False
        token = f"resume-{entity}-{time.monotonic_ns()}"
        self.tokens[token] = (entity, player)
        welcome = Welcome(
            1,
            entity,
            player,
            WORLD,
            self.tick_hz,
            self.snapshot_hz,
            QUANTUM,
            self.now(),
            token,
            resumed,
            PUB_FIELDS,
            OWN_FIELDS,
            "testworld",
        )
        for m in pending:
            await ws.send(encode(m))
        await ws.send(encode(welcome))
        conn = Conn(ws, hello, welcome)
        await self.conns.put(conn)
        try:
            async for data in ws:
                msg = decode_client(data)  # type: ignore[arg-type]
                if isinstance(msg, Ping):
                    conn.pings += 1
                    await ws.send(encode(Pong(msg.nonce, msg.client_time, self.now())))
                elif isinstance(msg, Input):
                    conn.inputs.append(msg)
                elif isinstance(msg, Message):
                    conn.messages.append(msg)
        except ConnectionClosed:
            pass
        finally:
            conn.close_code = ws.close_code
            conn.closed.set()


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


async def next_snapshot(player: Player) -> Any:
    return await asyncio.wait_for(anext(player.snapshots()), 5.0)


def crowd(me: int) -> list[Ent]:
    return [
        Ent(me, 1, 1000, 2000, hp=90, vel=(1.5, -2.0), ammo=7, owner=42),
        Ent(5, 2, 1100, 2050, hp=30),
        Ent(9, 3, 950, 1900, hp=60, vel=(0.25, 0.5)),
    ]


# --- handshake --------------------------------------------------------------------------


async def test_handshake_exposes_the_welcome() -> None:
    gw = FakeGateway(tick_hz=30.0, snapshot_hz=15.0)
    async with gw, connect(gw.url, token="tok", client="tests", ping_interval=0) as player:
        conn = await gw.next_conn()
        assert conn.hello == Hello(1, "tok", "", "tests")
        assert player.entity_id == conn.welcome.entity_id
        assert player.player_id == 42
        assert player.world == WORLD
        assert player.world_name == "testworld"
        assert (player.tick_hz, player.snapshot_hz, player.pos_quantum) == (30.0, 15.0, QUANTUM)
        assert player.resume_token == conn.welcome.resume_token
        assert not player.resumed
        assert player.pub_fields.names == ("hp", "vel")
        assert player.own_fields.names == ("ammo",)
        assert (player.mirror.pub_width, player.mirror.own_width) == (W, W2)
        assert player.position() is None
        # The handshake is the first clock sample: offset within half its round trip.
        assert player.clock.samples == 1
        assert abs(player.clock.offset - CLOCK_OFFSET) <= player.clock.uncertainty + 1e-6
        assert not player.closed


async def test_await_connect_without_a_block() -> None:
    async with FakeGateway() as gw:
        player = await connect(gw.url, ping_interval=0)
        conn = await gw.next_conn()
        assert player.entity_id == conn.welcome.entity_id
        await player.close()
        await asyncio.wait_for(conn.closed.wait(), 5.0)
        assert conn.close_code == CloseCode.NORMAL
        player2 = await Player.connect(gw.url, ping_interval=0)
        assert player2.entity_id != player.entity_id
        await player2.close()


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (Error(ErrorCode.AUTH_FAILED, "token refused: expired"), ErrorCode.AUTH_FAILED),
        (Kick(ErrorCode.SERVER_FULL, "come back later"), ErrorCode.SERVER_FULL),
    ],
)
async def test_refused_handshake_raises_with_the_code(refusal: Any, code: ErrorCode) -> None:
    async with FakeGateway() as gw:
        gw.refuse = (refusal, CloseCode.AUTH_FAILED)
        with pytest.raises(HandshakeError) as info:
            await connect(gw.url, token="bad", ping_interval=0)
        assert info.value.code == code
        assert info.value.close_code == CloseCode.AUTH_FAILED
        assert info.value.close_reason == "refused"
        assert error_name(code) in str(info.value)


async def test_no_server_and_no_welcome_raise_handshake_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HandshakeError) as info:
        await connect(f"ws://127.0.0.1:{port}", ping_interval=0)
    assert isinstance(info.value.__cause__, OSError)
    async with FakeGateway() as gw:
        gw.silent = True
        t0 = time.monotonic()
        with pytest.raises(HandshakeError, match="no WELCOME"):
            await connect(gw.url, ping_interval=0, open_timeout=0.3)
        assert time.monotonic() - t0 < 3.0


# --- snapshots and the mirror -----------------------------------------------------------


async def test_mirror_follows_spawn_move_update_despawn() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0) as player:
        conn = await gw.next_conn()
        me = player.entity_id
        ents = crowd(me)
        await conn.snapshot(ents, reset=True)
        snap = await next_snapshot(player)
        assert snap.reset and snap.tick == conn.tick
        assert len(snap.data.spawns) == 3
        vis = player.visible()
        assert {i: v[0] for i, v in vis.items()} == {me: 1, 5: 2, 9: 3}
        assert vis[me][1:] == pytest.approx((10.0, 20.0))
        assert vis[5][1:] == pytest.approx((11.0, 20.5))
        assert vis[9][1:] == pytest.approx((9.5, 19.0))
        assert player.position() == pytest.approx((10.0, 20.0))
        mine = player.fields(me)
        assert mine is not None
        assert mine["hp"] == 90 and mine["ammo"] == 7
        np.testing.assert_array_equal(mine["vel"], np.array([1.5, -2.0], np.float32))
        other = player.fields(5)
        assert other is not None and "ammo" not in other and other["hp"] == 30

        # Move one, update another, despawn a third, spawn a new one.
        ents[0].qx += 250
        ents[1].hp = 29
        del ents[2]
        ents.append(Ent(12, 4, 1300, 2300, hp=5))
        await conn.snapshot(ents)
        snap = await next_snapshot(player)
        assert not snap.reset
        assert (len(snap.data.despawns), len(snap.data.spawns)) == (1, 1)
        assert (len(snap.data.moves), len(snap.data.updates)) == (1, 1)
        assert set(player.visible()) == {me, 5, 12}
        assert player.position() == pytest.approx((12.5, 20.0))
        f5 = player.fields(5)
        assert f5 is not None and f5["hp"] == 29
        assert player.fields(9) is None

        table = player.visible_table()
        assert table.ids.tolist() == [5, 12, me]
        assert table.kinds.tolist() == [2, 4, 1]
        np.testing.assert_allclose(table.pos, [[11.0, 20.5], [13.0, 23.0], [12.5, 20.0]])
        assert table.owned.tolist() == [False, False, True]
        assert table.pub["hp"].tolist() == [29, 5, 90]
        assert player.metrics.snapshots == 2
        assert player.metrics.mirror_errors == 0


async def test_a_player_without_a_mirror_reads_headers_only() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0, mirror=False) as player:
        conn = await gw.next_conn()
        ents = crowd(player.entity_id)
        await conn.snapshot(ents, reset=True, ack=0)
        snap = await next_snapshot(player)
        assert snap.reset and snap.data.spawns == () and snap.data.header.n_spawn == 3
        assert len(player.mirror) == 0 and player.visible() == {}
        assert player.position() == pytest.approx((10.0, 20.0))
        ents[0].qx, ents[0].qy = -500, 700
        await conn.snapshot(ents)
        snap = await next_snapshot(player)
        assert snap.data.header.n_move == 1
        assert player.position() == pytest.approx((-5.0, 7.0))
        await conn.ws.send(encode(Snapshot(1, 0, b"\x04" + bytes(20))))  # a reserved flag
        await conn.ws.send(encode(Snapshot(1, 0, b"\x00" * 20)))  # short of a header
        await conn.send(Message("after", None))
        await asyncio.wait_for(anext(player.messages()), 5.0)
        assert player.metrics.mirror_errors == 2 and player.metrics.snapshots == 2


async def test_bad_payloads_and_frames_are_counted_and_skipped() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0) as player:
        conn = await gw.next_conn()
        await conn.snapshot(crowd(player.entity_id), reset=True)
        await next_snapshot(player)
        before = player.visible()
        # A move of handle 200, which the client does not hold.
        bad = struct.pack("<BIiiHHHH", 0, 999, 0, 0, 0, 0, 1, 0) + struct.pack("<Bhh", 200, 1, 1)
        await conn.ws.send(encode(Snapshot(999, 0, bad)))
        await conn.ws.send(b"\xc1")  # never valid msgpack
        await conn.ws.send("a text frame")
        await conn.ws.send(encode(Message("after", None)))
        msg = await asyncio.wait_for(anext(player.messages()), 5.0)
        assert msg.kind == "after"
        assert player.metrics.mirror_errors == 1
        assert player.metrics.protocol_errors == 2
        assert player.metrics.snapshots == 1
        assert player.visible() == before
        assert await player.ping() > 0  # still connected


# --- inputs, messages, acks -------------------------------------------------------------


async def test_input_sequence_numbers_and_acks() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0) as player:
        conn = await gw.next_conn()
        assert [await player.send_input(1.0, 0.0), await player.send_input(0.0, -1.0, 5)] == [1, 2]
        assert await player.send_input(0.5, 0.5) == 3
        await eventually(lambda: len(conn.inputs) == 3)
        assert conn.inputs == [
            Input(1, 1.0, 0.0, 0),
            Input(2, 0.0, -1.0, 5),
            Input(3, 0.5, 0.5, 0),
        ]
        assert player.last_seq == 3 and player.last_ack == 0
        await conn.snapshot(crowd(player.entity_id), reset=True, ack=2)
        snap = await next_snapshot(player)
        assert snap.ack == 2 and player.last_ack == 2
        assert player.metrics.inputs_sent == 3
        with pytest.raises(ValueError):
            await player.send_input(math.nan, 0.0)
        with pytest.raises(ValueError):
            await player.send_input(0.0, 0.0, actions=-1)
        assert player.last_seq == 3  # a refused input takes no number


async def test_custom_messages_both_ways_and_bounded_queue() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0, message_queue=2) as player:
        conn = await gw.next_conn()
        await player.send_message("emote", {"id": 3, "tags": ["wave"]})
        await eventually(lambda: len(conn.messages) == 1)
        assert conn.messages[0] == Message("emote", {"id": 3, "tags": ["wave"]})
        with pytest.raises(ValueError):
            await player.send_message("", None)
        for i in range(5):
            await conn.send(Message("chat", {"n": i}))
        await eventually(lambda: player.metrics.messages == 5)
        got = []
        async for m in player.messages():
            got.append(m.body["n"])
            if len(got) == 2:
                break
        assert got == [3, 4]
        assert player.metrics.messages_dropped == 3


# --- timing -----------------------------------------------------------------------------


async def test_ping_measures_rtt_and_the_server_clock() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0.05) as player:
        conn = await gw.next_conn()
        rtt = await player.ping()
        assert 0 < rtt < 1.0
        await eventually(lambda: player.metrics.pongs >= 4)
        assert conn.pings >= 4
        assert player.metrics.rtt.count == player.metrics.pongs
        p50 = player.metrics.rtt_p50_ms()
        assert p50 is not None and 0 < p50 < 1000
        # Same machine, same monotonic clock: the true offset is exactly CLOCK_OFFSET.
        assert abs(player.clock.offset - CLOCK_OFFSET) <= player.clock.uncertainty + 1e-6
        assert player.clock.uncertainty < 0.5


async def test_snapshot_age_follows_the_server_tick_schedule() -> None:
    async with FakeGateway(tick_hz=20.0) as gw, connect(gw.url, ping_interval=0) as player:
        conn = await gw.next_conn()
        ents = crowd(player.entity_id)
        # The first snapshot comes 0.2 s after WELCOME: it anchors the schedule (age 0),
        # while measured from WELCOME's server_time it is 0.2 s old.
        await asyncio.sleep(0.2)
        await conn.snapshot(ents, tick=100, reset=True)
        first = await next_snapshot(player)
        assert first.age == 0.0
        assert 0.15 < first.age_upper < 0.35
        # Tick 102 is due 0.1 s after tick 100; send it 0.3 s after: 0.2 s late.
        await asyncio.sleep(0.3)
        await conn.snapshot(ents, tick=102)
        late = await next_snapshot(player)
        assert 0.15 < late.age < 0.35
        assert late.age_upper - late.age == pytest.approx(first.age_upper, abs=0.03)
        # Tick 300 is due 10 s later: it cannot have arrived early, so it is the new anchor.
        await conn.snapshot(ents, tick=300)
        early = await next_snapshot(player)
        assert early.age == 0.0 and early.age_upper == 0.0
        # Later ticks are measured from there (302 is due 0.1 s after 300).
        await asyncio.sleep(0.2)
        await conn.snapshot(ents, tick=302)
        after = await next_snapshot(player)
        assert 0.05 < after.age < 0.3
        assert player.metrics.snapshot_age.count == player.metrics.snapshot_age_upper.count == 4
        # Tick numbers wrap at 2**32: tick 1 is due 0.1 s after tick 2**32 - 1.
        for t in (2**31, 2**31 + 2**30, 2**32 - 1):  # forward jumps: each a new anchor
            await conn.snapshot(ents, tick=t)
            assert (await next_snapshot(player)).age == 0.0
        await asyncio.sleep(0.2)
        await conn.snapshot(ents, tick=1)
        wrapped = await next_snapshot(player)
        assert 0.05 < wrapped.age < 0.3


# --- the end of a connection ------------------------------------------------------------


async def test_kick_ends_the_snapshots_and_is_exposed() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0) as player:
        conn = await gw.next_conn()
        await conn.snapshot(crowd(player.entity_id), reset=True)
        await conn.send(Kick(ErrorCode.ABUSE, "too many errors"))
        await conn.ws.close(CloseCode.ABUSE, "abuse")
        ticks = [s.tick async for s in player.snapshots()]  # ends by itself
        assert ticks == [conn.tick]
        assert player.closed and not player.closed_by_client
        assert player.kick == Kick(ErrorCode.ABUSE, "too many errors")
        assert (player.close_code, player.close_reason) == (CloseCode.ABUSE, "abuse")
        assert player.metrics.kicks[ErrorCode.ABUSE] == 1
        with pytest.raises(PlayerClosed, match="ABUSE"):
            await player.send_input(1.0, 0.0)
        with pytest.raises(PlayerClosed):
            await player.ping()


async def test_errors_are_counted_and_the_connection_stays() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0) as player:
        conn = await gw.next_conn()
        await conn.send(Error(ErrorCode.RATE_LIMITED, "message dropped: slow down"))
        await conn.send(Error(ErrorCode.RATE_LIMITED, "message dropped: slow down"))
        await conn.send(Error(ErrorCode.OUT_OF_ORDER, "input seq 3 is not after 4"))
        await eventually(lambda: sum(player.metrics.errors.values()) == 3)
        assert player.metrics.errors_by_name() == {"OUT_OF_ORDER": 1, "RATE_LIMITED": 2}
        assert player.recent_errors[-1] == Error(
            ErrorCode.OUT_OF_ORDER, "input seq 3 is not after 4"
        )
        assert not player.closed
        assert await player.ping() > 0


async def test_clean_close() -> None:
    async with FakeGateway() as gw:
        async with connect(gw.url) as player:
            conn = await gw.next_conn()
        await asyncio.wait_for(conn.closed.wait(), 5.0)
        assert conn.close_code == CloseCode.NORMAL
        assert player.closed and player.closed_by_client
        assert player.close_code == CloseCode.NORMAL
        await player.close()  # twice is fine
        with pytest.raises(PlayerClosed):
            await player.send_input(0.0, 1.0)
        assert [s async for s in player.snapshots()] == []


async def test_resume_takes_the_entity_back_and_continues_the_numbering() -> None:
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0) as player:
        conn = await gw.next_conn()
        entity, token = player.entity_id, player.resume_token
        await conn.snapshot(crowd(entity), reset=True, ack=2)
        await next_snapshot(player)
        for _ in range(3):
            await player.send_input(1.0, 0.0)
        await eventually(lambda: len(conn.inputs) == 3)
        conn.ws.transport.abort()  # the network drops
        await asyncio.wait_for(player.wait_closed(), 5.0)
        assert player.close_code == 1006 and not player.closed_by_client

        assert await player.resume() is True
        conn2 = await gw.next_conn()
        assert conn2.hello.resume == token
        assert player.entity_id == entity and player.resumed
        assert player.resume_token != token
        # The server resends everything with RESET; the mirror starts over from it.
        await conn2.snapshot([Ent(entity, 1, 500, 500), Ent(77, 2, 510, 490)], reset=True, ack=3)
        snap = await next_snapshot(player)
        assert snap.reset
        assert set(player.visible()) == {entity, 77}
        assert player.position() == pytest.approx((5.0, 5.0))
        assert await player.send_input(0.0, 1.0) == 4
        await eventually(lambda: len(conn2.inputs) == 1)
        assert conn2.inputs[0].seq == 4

        # A token the server no longer knows: a new entity, numbering from 1 again.
        gw.tokens.clear()
        await conn2.ws.close(CloseCode.GOING_AWAY, "restart")
        await asyncio.wait_for(player.wait_closed(), 5.0)
        assert await player.resume() is False
        await gw.next_conn()
        assert player.entity_id != entity
        assert player.metrics.errors[ErrorCode.RESUME_FAILED] == 1
        assert await player.send_input(1.0, 1.0) == 1


async def test_reader_keeps_draining_a_consumer_that_does_not_read() -> None:
    n = 300
    async with FakeGateway() as gw, connect(gw.url, ping_interval=0, snapshot_queue=8) as player:
        conn = await gw.next_conn()
        me = player.entity_id
        ents = [Ent(me, 1, 0, 0)]
        await conn.snapshot(ents, tick=1, reset=True)
        t0 = time.monotonic()
        for t in range(2, n + 1):
            ents[0].qx = t
            await conn.snapshot(ents, tick=t)
        # The application is busy elsewhere; the reader still takes every frame.
        await eventually(lambda: player.metrics.snapshots == n)
        assert time.monotonic() - t0 < 5.0
        assert player.mirror.tick == n
        assert player.position() == pytest.approx((n * QUANTUM, 0.0))
        assert player.metrics.snapshots_dropped == n - 8
        assert await player.ping() > 0
        got = []
        async for s in player.snapshots():
            got.append(s.tick)
            if len(got) == 8:
                break
        assert got == list(range(n - 7, n + 1))


# --- building blocks --------------------------------------------------------------------


def test_blob_decoder_against_struct() -> None:
    dec = BlobDecoder(PUB_FIELDS)
    assert dec.width == W and dec.names == ("hp", "vel")
    rng = np.random.default_rng(3)
    rows = [
        (int(rng.integers(0, 65536)), *rng.normal(size=2).astype(np.float32)) for _ in range(20)
    ]
    blobs = [struct.pack("<Hff", *r) for r in rows]
    for r, b in zip(rows, blobs, strict=True):
        got = dec.decode(b)
        assert got["hp"] == r[0]
        assert got["vel"].tolist() == [float(r[1]), float(r[2])]
    table = dec.decode_many(blobs)
    assert table["hp"].tolist() == [r[0] for r in rows]
    np.testing.assert_array_equal(table["vel"], np.array([r[1:] for r in rows], np.float32))
    with pytest.raises(ValueError):
        dec.decode(b"\x00" * (W - 1))
    assert BlobDecoder().width == 0 and BlobDecoder().decode(b"") == {}
    mixed = BlobDecoder(
        [
            {"name": "alive", "dtype": "|b1", "shape": [], "scope": "public"},
            {"name": "grid", "dtype": "<i2", "shape": [2, 2], "scope": "public"},
            {"name": "score", "dtype": "<u8", "shape": [], "scope": "owner"},
        ]
    )
    blob = struct.pack("<?4hQ", True, 1, -2, 3, -4, 2**63 + 5)
    got = mixed.decode(blob)
    assert got["alive"] is np.True_ and got["score"] == 2**63 + 5
    assert got["grid"].tolist() == [[1, -2], [3, -4]]
    for bad in (
        {"name": "x", "dtype": ">u2", "shape": [], "scope": "public"},
        {"name": "x", "dtype": "<c8", "shape": [], "scope": "public"},
        {"name": "x", "dtype": "<u2", "shape": [0], "scope": "public"},
    ):
        with pytest.raises(ValueError):
            BlobDecoder([bad])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-5, 50.0), min_size=1, max_size=300), st.floats(0, 100))
def test_histogram_percentiles_match_nearest_rank(values: list[float], q: float) -> None:
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    ordered = sorted(values)
    exact = ordered[max(1, math.ceil(q / 100 * len(values))) - 1]
    got = h.percentile(q)
    assert got is not None
    assert abs(got - exact) <= 0.011 * exact + 1e-12
    assert h.count == len(values)


def test_histogram_windows_and_edges() -> None:
    h = LatencyHistogram()
    assert h.percentile(50) is None and h.mean() is None
    for v in (0.001, 0.002, 0.003):
        h.record(v)
    snap = h.copy()
    for v in (0.5, 0.6):
        h.record(v)
    h.record(math.nan)  # ignored
    w = h.since(snap)
    assert w.count == 2
    assert w.percentile(50) == pytest.approx(0.5, rel=0.02)
    assert w.percentile(0) == pytest.approx(0.5, rel=0.02)  # not the whole histogram's min
    assert w.percentile(100) == pytest.approx(0.6, rel=0.02)
    assert h.since(h.copy()).percentile(50) is None
    assert h.percentile(100) == pytest.approx(0.6)
    h.record(0.0)
    h.record(1e4)
    assert h.percentile(0.1) == 0.0 and h.percentile(100) == 1e4
    assert h.mean() == pytest.approx((0.006 + 1.1 + 1e4) / 7)


def test_clock_sync_keeps_the_least_delayed_sample() -> None:
    c = ClockSync()
    c.add(10.0, 110.5, 11.0)  # rtt 1.0, offset 100.0
    c.add(20.0, 120.05, 20.1)  # rtt 0.1, offset 100.0
    c.add(30.0, 131.0, 31.0)  # rtt 1.0, offset 100.5: queued on the way back
    assert c.offset == pytest.approx(100.0) and c.uncertainty == pytest.approx(0.05)
    assert c.to_server(1.0) == pytest.approx(101.0)
    for i in range(20):  # the good sample ages out of the window
        c.add(100.0 + i, 200.0 + i + 0.25, 100.5 + i)
    assert c.offset == pytest.approx(100.0) and c.uncertainty == pytest.approx(0.25)


def test_metrics_summary_and_error_names() -> None:
    m = Metrics(started=time.monotonic() - 2.0)
    m.snapshots = 10
    m.errors[ErrorCode.RATE_LIMITED] += 2
    m.errors[999] += 1
    m.rtt.record(0.002)
    d = m.as_dict()
    assert d["errors"] == {"RATE_LIMITED": 2, "999": 1}
    assert d["rtt_p50_ms"] == pytest.approx(2.0, rel=0.011)
    assert d["snapshot_age_p50_ms"] is None
    assert 4.0 < d["snapshots_per_s"] <= 5.0
    assert error_name(ErrorCode.SLOW_READER) == "SLOW_READER" and error_name(12345) == "12345"


async def test_shared_metrics_between_players() -> None:
    shared = Metrics()
    async with FakeGateway() as gw:
        players = [await connect(gw.url, ping_interval=0, metrics=shared) for _ in range(3)]
        conns = [await gw.next_conn() for _ in players]
        for p, c in zip(players, conns, strict=True):
            await c.snapshot([Ent(p.entity_id, 1, 10, 10)], reset=True)
        await eventually(lambda: shared.snapshots == 3)
        await asyncio.gather(*(p.close() for p in players))
        assert shared.snapshot_age.count == 3
