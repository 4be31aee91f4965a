"""Load bots against a tiny protocol v1 world written here: players walk along their intents."""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shardworld.client.bots import (
    Commute,
    Crowd,
    Wander,
    _parser,
    _run_processes,
    bots_main,
    empty_state,
    make_behavior,
    merge_states,
    run_bots,
    seek,
    split_count,
    summary_of_state,
)
from shardworld.client.sdk import LatencyHistogram
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
    inputs: int = 0
    snapshots_sent: int = 0
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
                    self.inputs += 1
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
                    self.snapshots_sent += 1
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
    assert summary["processes"] == 1 and "procs=" not in err


def test_bots_main_usage_errors() -> None:
    assert bots_main(["--behavior", "dance"]) == 2
    assert bots_main(["--count", "-1"]) == 2
    assert bots_main(["--processes", "0"]) == 2


# --- several bot processes -----------------------------------------------------------------


def hist_of(samples: np.ndarray) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in samples:
        h.record(float(v))
    return h


def nearest_rank(samples: np.ndarray, q: float) -> float:
    """The reference: the smallest sample with at least q % of all samples at or below it."""
    return float(np.percentile(samples, q, method="inverted_cdf"))


def test_histogram_merge_equals_one_histogram_of_the_union() -> None:
    rng = np.random.default_rng(11)
    parts = [
        rng.lognormal(math.log(2e-3), 0.5, 3000),
        rng.lognormal(math.log(2e-2), 1.0, 500),  # a slow process: shifts the tail
        rng.uniform(1e-4, 5e-4, 40),
        np.array([]),
    ]
    union = np.concatenate(parts)
    merged = LatencyHistogram()
    for part in parts:
        # Through JSON, as a child's state travels.
        merged.merge(LatencyHistogram.from_dict(json.loads(json.dumps(hist_of(part).to_dict()))))
    whole = hist_of(union)
    assert merged.count == union.size and np.array_equal(merged.counts, whole.counts)
    assert merged.min == union.min() and merged.max == union.max()
    assert merged.total == pytest.approx(union.sum())
    for q in (0, 1, 10, 50, 90, 99, 99.9, 100):
        got = merged.percentile(q)
        assert got == whole.percentile(q)
        assert got == pytest.approx(nearest_rank(union, q), rel=0.011)
    # Averaging the parts' percentiles would be far off: the slow process is 14 % of samples.
    p99 = [p for h in map(hist_of, parts[:3]) if (p := h.percentile(99)) is not None]
    assert abs(float(np.mean(p99)) - nearest_rank(union, 99)) > 0.1 * nearest_rank(union, 99)


def test_histogram_dict_round_trip_and_validation() -> None:
    empty = LatencyHistogram.from_dict(json.loads(json.dumps(LatencyHistogram().to_dict())))
    assert empty.count == 0 and empty.percentile(50) is None and empty.min == math.inf
    h = hist_of(np.array([1e-6, 3e-3, 3e-3, 250.0]))  # both clamped end buckets
    back = LatencyHistogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert np.array_equal(back.counts, h.counts) and (back.min, back.max) == (1e-6, 250.0)
    assert [back.percentile(q) for q in (0, 50, 100)] == [h.percentile(q) for q in (0, 50, 100)]
    good = h.to_dict()
    for bad in (
        {**good, "count": 5},
        {**good, "buckets": [[LatencyHistogram.BUCKETS, 4]]},
        {**good, "buckets": [[3, -1], [4, 5]]},
        {k: v for k, v in good.items() if k != "total"},
    ):
        with pytest.raises(ValueError):
            LatencyHistogram.from_dict(bad)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.floats(1e-6, 90.0, allow_nan=False), max_size=40), min_size=1, max_size=5),
    st.floats(0.0, 100.0),
)
def test_merged_percentiles_are_those_of_the_union(parts: list[list[float]], q: float) -> None:
    arrays = [np.array(p, dtype=np.float64) for p in parts]
    union = np.concatenate(arrays)
    merged = LatencyHistogram()
    for a in arrays:
        merged.merge(hist_of(a))
    got = merged.percentile(q)
    if union.size == 0:
        assert got is None
        return
    assert got == hist_of(union).percentile(q)
    ref = nearest_rank(union, q)
    if ref > LatencyHistogram.LOW:  # below 10 us everything shares the first bucket
        assert got == pytest.approx(ref, rel=0.011)


def fake_state(bots: int, samples: np.ndarray, **counts: Any) -> dict[str, Any]:
    s = empty_state(bots)
    s.update(counts)
    s["snapshot_age"] = hist_of(samples).to_dict()
    s["snapshot_age_upper"] = hist_of(samples * 2.0).to_dict()
    s["rtt"] = hist_of(samples / 2.0).to_dict()
    return s


def test_merge_states_adds_counts_and_merges_percentiles() -> None:
    rng = np.random.default_rng(5)
    fast, slow = rng.uniform(1e-3, 2e-3, 900), rng.uniform(0.1, 0.2, 100)
    a = fake_state(
        6, fast, elapsed=10.0, connected=6, joined=6, snapshots=900, inputs_sent=450,
        disconnects=1, reconnects=1, connect_failures={"ConnectionRefusedError": 2},
        errors={"RATE_LIMITED": 3}, kicks={}, mirror_errors=1, snapshots_dropped=4, final=True,
    )  # fmt: skip
    b = fake_state(
        4, slow, elapsed=10.5, connected=3, joined=4, snapshots=100, inputs_sent=50,
        disconnects=2, reconnects=0, connect_failures={"AUTH_FAILED": 1},
        errors={"RATE_LIMITED": 1, "OUT_OF_ORDER": 2}, kicks={"ABUSE": 1}, final=True,
    )  # fmt: skip
    merged = merge_states([a, json.loads(json.dumps(b))])
    assert merged["final"] and not merge_states([a, empty_state(3)])["final"]
    s = summary_of_state(merged, "ws://x", "crowd")
    assert (s["bots"], s["connected"], s["joined"]) == (10, 9, 10)
    assert (s["snapshots"], s["inputs_sent"], s["disconnects"], s["reconnects"]) == (
        1000, 500, 3, 1,
    )  # fmt: skip
    assert s["connect_failures"] == {"AUTH_FAILED": 1, "ConnectionRefusedError": 2}
    assert s["errors"] == {"OUT_OF_ORDER": 2, "RATE_LIMITED": 4} and s["kicks"] == {"ABUSE": 1}
    assert (s["mirror_errors"], s["snapshots_dropped"]) == (1, 4)
    assert s["duration_s"] == 10.5 and s["snapshots_per_s"] == round(1000 / 10.5, 2)
    union = np.concatenate([fast, slow])
    for key, scale, q in (
        ("snapshot_age_p50_ms", 1.0, 50),
        ("snapshot_age_p99_ms", 1.0, 99),
        ("snapshot_age_upper_p50_ms", 2.0, 50),
        ("snapshot_age_upper_p99_ms", 2.0, 99),
        ("rtt_p50_ms", 0.5, 50),
    ):
        assert s[key] == pytest.approx(nearest_rank(union * scale, q) * 1e3, rel=0.011)
    # The p99 lies among the slow process's samples, p50 among the fast one's.
    assert s["snapshot_age_p99_ms"] > 100.0 and s["snapshot_age_p50_ms"] < 2.1
    with pytest.raises(ValueError):
        merge_states([{"elapsed": 1.0}])


def test_split_count() -> None:
    assert split_count(10, 3) == [4, 3, 3]
    assert split_count(2, 2) == [1, 1]
    assert split_count(1001, 4) == [251, 250, 250, 250]
    for count in range(0, 40):
        for parts in range(1, 8):
            sizes = split_count(count, parts)
            assert sum(sizes) == count and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        split_count(3, 0)


async def test_processes_split_the_bots_and_merge_their_summaries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with MiniWorld(secret="s3cret") as world:
        argv = [
            "--url", world.url, "--count", "5", "--processes", "2", "--behavior", "crowd",
            "--duration", "2.5", "--token-secret", "s3cret", "--first-player-id", "40",
        ]  # fmt: skip
        rc = await asyncio.to_thread(bots_main, argv)
        await asyncio.sleep(0.2)  # the world reads the last inputs of the closed connections
        players = sorted(w.player for w in world.walkers.values())
        inputs, sent = world.inputs, world.snapshots_sent
    out, err = capsys.readouterr()
    assert rc == 0
    s: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert s["processes"] == 2 and s["process_failures"] == []
    assert s["bots"] == 5 and s["joined"] == 5 and s["connected"] == 5
    assert players == [40, 41, 42, 43, 44]  # distinct player id ranges: 40-42 and 43-44
    # Every process's inputs counted once: the world received what the bots sent, give or
    # take one input per bot sent while the summary was being taken.
    assert s["inputs_sent"] > 0 and 0 <= inputs - s["inputs_sent"] <= 5
    assert 0.8 * sent <= s["snapshots"] <= sent
    assert s["errors"] == {} and s["connect_failures"] == {} and s["disconnects"] == 0
    assert 0 <= s["snapshot_age_p50_ms"] <= s["snapshot_age_p99_ms"] < 500
    assert s["rtt_p50_ms"] is not None
    assert s["duration_s"] == pytest.approx(2.5, abs=0.5)
    assert re.search(
        r"bots: 2 processes: pid \d+ \(players 40-42\), pid \d+ \(players 43-44\)", err
    )
    assert "procs=2/2 connected=5/5" in err


# A stand-in for a bot process that starts in milliseconds: it reports like one, then
# finishes, dies, or finishes without a bot having joined, by its first player id.
FAKE_CHILD = """
import json, os, signal, sys
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
first, bots = int(opts["first-player-id"]), int(opts["count"])
s = json.loads(STATES)[str(first)]
s.update(bots=bots, connected=bots, joined=bots)
print("not a state line", flush=True)
print(json.dumps(s), flush=True)
if first == 4:
    os.kill(os.getpid(), signal.SIGKILL)
s["final"] = True
if first == 7:
    s.update(connected=0, joined=0)
print(json.dumps(s), flush=True)
sys.exit(1 if first == 7 else 0)
"""


def test_a_child_that_dies_is_reported_and_counted() -> None:
    states = {
        str(first): fake_state(
            0,
            np.full(10, first * 1e-3),
            elapsed=1.0,
            snapshots=10 * first,
            inputs_sent=first,
            errors={"RATE_LIMITED": 1},
        )
        for first in (1, 4, 7)
    }
    script = FAKE_CHILD.replace("STATES", repr(json.dumps(states)))
    args = _parser().parse_args(["--count", "9", "--duration", "5", "--quiet"])
    err = io.StringIO()
    summary, status = _run_processes(args, 3, "", command=[sys.executable, "-c", script], err=err)
    # Process 0 finished, 1 was killed after one report, 2 finished without a bot joining
    # (its status 1 is a result, not a failure).
    assert status == 1
    assert summary["process_failures"] == [{"process": 1, "exit_code": -9, "bots": 3}]
    assert "process 1 (pid" in err.getvalue() and "status -9 without a summary" in err.getvalue()
    assert summary["processes"] == 3 and summary["bots"] == 9
    assert summary["snapshots"] == 10 + 40 + 70 and summary["inputs_sent"] == 1 + 4 + 7
    assert summary["connected"] == 3 and summary["joined"] == 6  # the dead one holds nothing
    assert summary["errors"] == {"RATE_LIMITED": 3}
    assert summary["snapshot_age_p50_ms"] == pytest.approx(4.0, rel=0.011)
    assert summary["snapshot_age_p99_ms"] == pytest.approx(7.0)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def start_parent(url: str, first: int) -> tuple[asyncio.subprocess.Process, list[int]]:
    """`shardworld bots` with 4 bots in 2 processes, until all 4 are connected."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shardworld.cli", "bots", "--url", url, "--count", "4",
        "--processes", "2", "--duration", "0", "--behavior", "commute",
        "--token-secret", "s3cret", "--first-player-id", str(first),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    pids: list[int] = []
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the bots ended early"
            if line.startswith("bots: 2 processes"):
                pids = [int(p) for p in re.findall(r"pid (\d+)", line)]
            if "connected=4/4" in line:
                break
    assert len(pids) == 2 and all(alive(p) for p in pids)
    return proc, pids


async def test_ctrl_c_stops_the_children_and_so_does_the_parent_dying() -> None:
    async with MiniWorld(secret="s3cret") as world:

        def connected(min_player: int) -> int:
            return sum(w.ws is not None for w in world.walkers.values() if w.player >= min_player)

        # Two runs side by side (it saves a start-up): players 1-4 and 101-104.
        (stopped, stopped_pids), (killed, killed_pids) = await asyncio.gather(
            start_parent(world.url, 1), start_parent(world.url, 101)
        )
        assert connected(1) == 8 and connected(101) == 4  # all bots of both runs, the second
        # Only the parent gets the signal: its children are in their own process group.
        stopped.send_signal(signal.SIGINT)
        # No chance to forward anything: these children stop at the end of their stdin.
        killed.kill()
        out, err = await asyncio.wait_for(stopped.communicate(), 30)
        assert stopped.returncode == 0, err.decode()[-2000:]
        s = json.loads(out.decode().strip().splitlines()[-1])
        assert s["processes"] == 2 and s["process_failures"] == [] and s["joined"] == 4
        assert s["connected"] == 4  # open until the stop, then closed by the bots themselves
        assert not any(alive(p) for p in stopped_pids)
        await killed.wait()
        async with asyncio.timeout(20):
            while connected(1) or any(alive(p) for p in killed_pids):
                await asyncio.sleep(0.1)
