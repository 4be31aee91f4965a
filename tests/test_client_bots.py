"""Load bots against a tiny protocol v1 world written here: players walk along their intents."""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shardworld.client.bots import (
    Commute,
    Crowd,
    Wander,
    bots_main,
    make_behavior,
    run_bots,
    seek,
)
from shardworld.gateway.auth import AuthError, verify_token
from shardworld.protocol.messages import (
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Input,
    Kick,
    Ping,
    Pong,
    Snapshot,
    Welcome,
    decode_client,
    encode,
)

WORLD = (0.0, 0.0, 100.0, 100.0)
CENTRE = (50.0, 50.0)
QUANTUM = 0.01
TICK_HZ = 20.0
SPEED = 20.0  # m/s: a bot crosses a good part of the world in a short test


def own_payload(tick: int, entity: int, x: float, y: float, reset: bool) -> bytes:
    """A payload that shows an observer only itself, built by hand from the format spec."""
    qx, qy = round(x / QUANTUM), round(y / QUANTUM)
    if reset:
        head = struct.pack("<BIiiHHHH", 1, tick, qx, qy, 0, 1, 0, 0)
        return head + struct.pack("<BQHhhB", 0, entity, 1, 0, 0, 1)
    return struct.pack("<BIiiHHHH", 0, tick, qx, qy, 0, 0, 1, 0) + struct.pack("<Bhh", 0, 0, 0)


@dataclass
class Walker:
    entity: int
    player: int
    x: float
    y: float
    ix: float = 0.0
    iy: float = 0.0
    seq: int = 0
    start: tuple[float, float] = (0.0, 0.0)
    ws: ServerConnection | None = None
    reset: bool = True


@dataclass
class MiniWorld:
    secret: str = ""
    kick_after: float | None = None
    walkers: dict[int, Walker] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    hellos: list[Hello] = field(default_factory=list)
    out_of_order: int = 0
    kicked: int = 0
    url: str = ""
    _server: Server | None = None
    _ticker: asyncio.Task[None] | None = None
    _next: int = 0

    async def __aenter__(self) -> MiniWorld:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._ticker is not None
        self._ticker.cancel()
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        first = await ws.recv()
        assert isinstance(first, bytes)
        hello = decode_client(first)
        assert isinstance(hello, Hello)
        self.hellos.append(hello)
        player = 0
        if self.secret:
            try:
                player = verify_token(self.secret, hello.token, time.time()).player_id
            except AuthError as exc:
                await ws.send(encode(Error(ErrorCode.AUTH_FAILED, exc.reason)))
                await ws.close(CloseCode.AUTH_FAILED, "token refused")
                return
        entity = self.tokens.pop(hello.resume, None)
        resumed = entity is not None and entity in self.walkers
        if entity is None or not resumed:
            self._next += 1
            entity = 1000 + self._next
            # Start near a corner, far from the centre and from the middle line's ends.
            x, y = 10.0 + 3.0 * (self._next % 5), 10.0 + 2.0 * (self._next % 3)
            self.walkers[entity] = Walker(entity, player, x, y, start=(x, y))
        w = self.walkers[entity]
        w.ws, w.reset = ws, True
        token = f"r{entity}.{time.monotonic_ns()}"
        self.tokens[token] = entity
        welcome = Welcome(
            1, entity, player, WORLD, TICK_HZ, TICK_HZ, QUANTUM, time.monotonic(), token,
            resumed, (), (), "mini",
        )  # fmt: skip
        await ws.send(encode(welcome))
        try:
            async for data in ws:
                msg = decode_client(data)  # type: ignore[arg-type]
                if isinstance(msg, Ping):
                    await ws.send(encode(Pong(msg.nonce, msg.client_time, time.monotonic())))
                elif isinstance(msg, Input):
                    if msg.seq <= w.seq:
                        self.out_of_order += 1
                        await ws.send(encode(Error(ErrorCode.OUT_OF_ORDER, "old input")))
                        continue
                    n = math.hypot(msg.ix, msg.iy)
                    scale = 1.0 / n if n > 1.0 else 1.0
                    w.seq, w.ix, w.iy = msg.seq, msg.ix * scale, msg.iy * scale
        except ConnectionClosed:
            pass
        finally:
            if w.ws is ws:
                w.ws = None

    async def _tick(self) -> None:
        tick = 0
        started = time.monotonic()
        while True:
            await asyncio.sleep(1.0 / TICK_HZ)
            tick += 1
            for w in list(self.walkers.values()):
                w.x = min(100.0, max(0.0, w.x + w.ix * SPEED / TICK_HZ))
                w.y = min(100.0, max(0.0, w.y + w.iy * SPEED / TICK_HZ))
                ws = w.ws
                if ws is None:
                    continue
                if self.kick_after is not None and time.monotonic() - started > self.kick_after:
                    self.kick_after = None
                    self.kicked += 1
                    w.ws = None
                    await ws.send(encode(Kick(ErrorCode.ABUSE, "kicked by the test")))
                    await ws.close(CloseCode.ABUSE, "abuse")
                    continue
                payload = own_payload(tick, w.entity, w.x, w.y, w.reset)
                w.reset = False
                try:
                    await ws.send(encode(Snapshot(tick, w.seq, payload)))
                except ConnectionClosed:
                    w.ws = None


def dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


# --- behaviours on their own ------------------------------------------------------------


def test_seek_points_at_the_target_and_slows_down() -> None:
    assert seek((0.0, 0.0), (10.0, 0.0)) == pytest.approx((1.0, 0.0))
    ix, iy = seek((1.0, 1.0), (-3.0, 4.0))
    assert math.hypot(ix, iy) == pytest.approx(1.0)
    assert (ix, iy) == pytest.approx((-0.8, 0.6))
    assert seek((0.0, 0.0), (0.5, 0.0), slow_radius=2.0) == pytest.approx((0.25, 0.0))
    assert seek((3.0, 3.0), (3.0, 3.0)) == (0.0, 0.0)


def test_wander_turns_back_at_the_edge_and_changes_direction() -> None:
    w = Wander(WORLD, random.Random(1))
    for pos in ((1.0, 50.0), (99.0, 50.0), (50.0, 1.0), (50.0, 99.0), (0.5, 0.5)):
        ix, iy = w.steer(pos, 0.0)
        to_centre = (CENTRE[0] - pos[0], CENTRE[1] - pos[1])
        cos = (ix * to_centre[0] + iy * to_centre[1]) / dist(pos, CENTRE)
        assert cos >= math.cos(math.pi / 4) - 1e-9
    w = Wander(WORLD, random.Random(2))
    first = w.steer(CENTRE, 0.0)
    assert w.steer(CENTRE, 0.5) == first  # keeps its heading for at least a second
    headings = {w.steer(CENTRE, float(t)) for t in range(5, 100, 5)}
    assert len(headings) > 5
    assert all(math.hypot(*h) == pytest.approx(1.0) for h in headings)


def test_crowd_mills_around_the_centre() -> None:
    c = Crowd(WORLD, random.Random(3))
    assert c.radius == pytest.approx(5.0)
    ix, iy = c.steer((5.0, 5.0), 0.0)
    assert ix > 0.5 and iy > 0.5
    targets = set()
    for _ in range(50):
        assert c.target is not None
        targets.add(c.target)
        assert dist(c.target, CENTRE) <= c.radius + 1e-9
        c.steer(c.target, 0.0)  # arrived: picks another spot nearby
    assert len(targets) == 50


def test_commute_goes_back_and_forth_across_the_middle() -> None:
    c = Commute(WORLD, random.Random(4))
    assert c.a[0] == pytest.approx(10.0) and c.b[0] == pytest.approx(90.0)
    assert abs(c.a[1] - 50.0) <= 5.0 and c.a[1] == c.b[1]
    assert c.steer((20.0, 50.0), 0.0)[0] > 0.9  # the far end first
    assert c.target == c.b
    assert c.steer(c.b, 0.0)[0] < -0.9 and c.target == c.a
    assert c.steer(c.a, 0.0)[0] > 0.9 and c.target == c.b


def test_make_behavior_names() -> None:
    rng = random.Random(0)
    assert isinstance(make_behavior("wander", WORLD, rng), Wander)
    assert isinstance(make_behavior("crowd", WORLD, rng), Crowd)
    assert isinstance(make_behavior("commute", WORLD, rng), Commute)
    with pytest.raises(ValueError):
        make_behavior("dance", WORLD, rng)


# --- a crowd of bots against the mini world ----------------------------------------------


@pytest.mark.parametrize(
    ("behavior", "mirror"), [("crowd", True), ("commute", True), ("wander", True), ("crowd", False)]
)
async def test_bots_steer_and_report(behavior: str, mirror: bool) -> None:
    async with MiniWorld() as world:
        out = io.StringIO()
        s = await run_bots(
            world.url, 4, behavior, 1.6, progress=out, seed=7, ping_interval=0.2, mirror=mirror
        )
        walkers = list(world.walkers.values())
    assert s["bots"] == 4 and s["joined"] == 4 and s["connected"] == 4
    assert s["disconnects"] == 0 and s["reconnects"] == 0 and s["connect_failures"] == {}
    assert s["errors"] == {} and s["kicks"] == {} and s["mirror_errors"] == 0
    assert s["duration_s"] == pytest.approx(1.6, abs=0.3)
    # Four bots at 20 snapshots/s each, minus the time it took to join.
    assert 40 <= s["snapshots_per_s"] <= 90
    assert s["snapshots"] == pytest.approx(s["snapshots_per_s"] * s["duration_s"], rel=0.05)
    assert 0 <= s["snapshot_age_p50_ms"] <= s["snapshot_age_p99_ms"] < 500
    assert 0 < s["rtt_p50_ms"] < 500
    assert s["inputs_sent"] > 4 * 10 * 0.8  # ~10 inputs/s each
    assert world.out_of_order == 0
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("bots t=") for line in lines)
    assert "connected=4/4" in lines[-1] and "errors=none" in lines[-1]
    assert len(walkers) == 4
    for w in walkers:
        if behavior == "crowd":
            assert dist((w.x, w.y), CENTRE) < dist(w.start, CENTRE) - 15.0
        elif behavior == "commute":
            assert w.x - w.start[0] > 15.0
            assert abs(w.y - 50.0) < abs(w.start[1] - 50.0)
        else:
            assert dist((w.x, w.y), w.start) > 5.0
        assert 0.0 <= w.x <= 100.0 and 0.0 <= w.y <= 100.0


async def test_signed_tokens_and_ramp() -> None:
    async with MiniWorld(secret="s3cret") as world:
        s = await run_bots(
            world.url, 3, "wander", 1.0, token_secret="s3cret", first_player_id=500, ramp=20.0
        )
        assert s["joined"] == 3 and s["connect_failures"] == {}
        assert sorted(w.player for w in world.walkers.values()) == [500, 501, 502]
        assert {h.client for h in world.hellos} == {"shardworld-bots"}

        # Without the secret the world refuses every bot; they keep retrying with back-off.
        s = await run_bots(world.url, 2, "wander", 1.0)
        assert s["joined"] == 0 and s["connected"] == 0 and s["snapshots"] == 0
        assert s["connect_failures"]["AUTH_FAILED"] >= 2
        assert s["snapshot_age_p50_ms"] is None and s["rtt_p50_ms"] is None


async def test_a_kicked_bot_is_counted_and_resumes() -> None:
    async with MiniWorld(kick_after=0.4) as world:
        s = await run_bots(world.url, 2, "commute", 1.8, ping_interval=0.2)
        resumed = [h for h in world.hellos if h.resume]
    assert world.kicked == 1
    assert s["disconnects"] == 1 and s["reconnects"] == 1
    assert s["kicks"] == {"ABUSE": 1}
    assert s["joined"] == 2 and s["connected"] == 2
    assert len(resumed) == 1 and len(world.walkers) == 2  # the same entity came back
    # Sequence numbers went on after the resume: the world never saw an old one.
    assert world.out_of_order == 0 and s["errors"] == {}


async def test_no_server_means_connect_failures() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = await run_bots(f"ws://127.0.0.1:{port}", 2, "crowd", 0.8, reconnect=False)
    assert s["joined"] == 0 and s["connected"] == 0
    assert sum(s["connect_failures"].values()) == 2  # once each: no reconnect


async def test_stop_event_ends_an_open_ended_run() -> None:
    async with MiniWorld() as world:
        stop = asyncio.Event()
        task = asyncio.create_task(run_bots(world.url, 2, "crowd", 0.0, stop=stop))
        await asyncio.sleep(0.5)
        assert not task.done()
        stop.set()
        s = await asyncio.wait_for(task, 5.0)
    assert s["joined"] == 2 and s["duration_s"] == pytest.approx(0.5, abs=0.3)


async def test_run_bots_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await run_bots("ws://127.0.0.1:1", 1, "dance", 1.0)
    with pytest.raises(ValueError):
        await run_bots("ws://127.0.0.1:1", 1, "wander", 1.0, input_hz=0.0)


async def test_bots_main_prints_progress_and_a_json_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with MiniWorld() as world:
        argv = ["--url", world.url, "--count", "2", "--behavior", "crowd", "--duration", "1.4"]
        rc = await asyncio.to_thread(bots_main, argv)
    out, err = capsys.readouterr()
    assert rc == 0
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert summary["bots"] == 2 and summary["joined"] == 2 and summary["snapshots"] > 0
    for key in (
        "connected", "disconnects", "snapshots_per_s", "snapshot_age_p50_ms",
        "snapshot_age_p99_ms", "rtt_p50_ms", "errors", "duration_s",
    ):  # fmt: skip
        assert key in summary
    assert "bots t=" in err and "connected=2/2" in err


def test_bots_main_usage_errors() -> None:
    assert bots_main(["--behavior", "dance"]) == 2
    assert bots_main(["--count", "-1"]) == 2
