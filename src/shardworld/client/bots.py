"""Load bots: many players from one process, each a :class:`~shardworld.client.sdk.Player`.

``shardworld bots --url ws://127.0.0.1:7700 --count 500 --behavior crowd --duration 60``

Every bot is one asyncio task: it joins, reads its snapshots, and on every snapshot (at most
``input_hz`` times a second) steers toward a target computed from its own entity's position
in its mirror. All bots share one :class:`~shardworld.client.sdk.Metrics`, so the figures
printed each second on stderr and the JSON summary on stdout cover the whole crowd. The
behaviours:

``wander``
    walk in a random direction, pick a new one every 1-4 s, turn back toward the middle
    near the world's edge;
``crowd``
    everyone heads for the world's centre, then mills around within a few metres of it;
``commute``
    walk back and forth between two points left and right of the centre, across the
    world's middle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TextIO

from shardworld.client.sdk import (
    ClientError,
    HandshakeError,
    LatencyHistogram,
    Metrics,
    Player,
    error_name,
)
from shardworld.gateway.auth import SECRET_ENV, issue_token

__all__ = [
    "BEHAVIORS",
    "Behavior",
    "Commute",
    "Crowd",
    "Wander",
    "bots_main",
    "make_behavior",
    "run_bots",
    "seek",
]

BEHAVIORS: Final = ("wander", "crowd", "commute")
DEFAULT_URL: Final = "ws://127.0.0.1:7700"
TOKEN_TTL_S: Final = 24 * 3600.0
_BACKOFF_MIN: Final = 0.5
_BACKOFF_MAX: Final = 5.0

World = tuple[float, float, float, float]
Vec = tuple[float, float]


# --- behaviours -------------------------------------------------------------------------


class Behavior(Protocol):
    def steer(self, pos: Vec, now: float) -> Vec:
        """The intent (length <= 1) to send, given the bot's position in metres and the
        local monotonic time."""
        ...


def seek(pos: Vec, target: Vec, slow_radius: float = 2.0) -> Vec:
    """A unit intent toward ``target``, shortened inside ``slow_radius`` metres of it so a
    bot does not overshoot by a whole snapshot interval."""
    dx, dy = target[0] - pos[0], target[1] - pos[1]
    dist = math.hypot(dx, dy)
    if dist < 1e-9:
        return 0.0, 0.0
    scale = min(1.0, dist / slow_radius) / dist
    return dx * scale, dy * scale


def _margin(world: World) -> float:
    return 0.05 * min(world[2] - world[0], world[3] - world[1])


def _centre(world: World) -> Vec:
    return (world[0] + world[2]) / 2.0, (world[1] + world[3]) / 2.0


@dataclass
class Wander:
    """Random headings, changed every 1-4 s; near an edge, a heading back inside."""

    world: World
    rng: random.Random
    heading: float = 0.0
    next_change: float = -math.inf

    def steer(self, pos: Vec, now: float) -> Vec:
        x0, y0, x1, y1 = self.world
        m = _margin(self.world)
        if not (x0 + m <= pos[0] <= x1 - m and y0 + m <= pos[1] <= y1 - m):
            cx, cy = _centre(self.world)
            back = math.atan2(cy - pos[1], cx - pos[0])
            self.heading = back + self.rng.uniform(-math.pi / 4, math.pi / 4)
            self.next_change = now + self.rng.uniform(1.0, 4.0)
        elif now >= self.next_change:
            self.heading = self.rng.uniform(-math.pi, math.pi)
            self.next_change = now + self.rng.uniform(1.0, 4.0)
        return math.cos(self.heading), math.sin(self.heading)


@dataclass
class Crowd:
    """Head for a point near the centre; once there, pick another one nearby (mill around)."""

    world: World
    rng: random.Random
    radius: float = 0.0
    target: Vec | None = None

    def __post_init__(self) -> None:
        if self.radius <= 0.0:
            self.radius = max(2.0, _margin(self.world))

    def _new_target(self) -> Vec:
        cx, cy = _centre(self.world)
        r = self.radius * math.sqrt(self.rng.random())
        a = self.rng.uniform(-math.pi, math.pi)
        return cx + r * math.cos(a), cy + r * math.sin(a)

    def steer(self, pos: Vec, now: float) -> Vec:
        if self.target is None or math.dist(pos, self.target) < 1.0:
            self.target = self._new_target()
        return seek(pos, self.target)


@dataclass
class Commute:
    """Walk between a point on the left and one on the right of the world's middle line,
    each bot in its own lane a little above or below it."""

    world: World
    rng: random.Random
    a: Vec = (0.0, 0.0)
    b: Vec = (0.0, 0.0)
    target: Vec | None = None

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.world
        cy = (y0 + y1) / 2.0 + self.rng.uniform(-0.05, 0.05) * (y1 - y0)
        w = x1 - x0
        self.a = (x0 + 0.1 * w, cy)
        self.b = (x1 - 0.1 * w, cy)

    def steer(self, pos: Vec, now: float) -> Vec:
        if self.target is None:
            # Start toward the far end, so every bot crosses the middle.
            self.target = self.a if math.dist(pos, self.a) > math.dist(pos, self.b) else self.b
        elif math.dist(pos, self.target) < 2.0:
            self.target = self.b if self.target == self.a else self.a
        return seek(pos, self.target)


def make_behavior(name: str, world: World, rng: random.Random) -> Behavior:
    """A fresh behaviour called ``name`` (one of :data:`BEHAVIORS`) for one bot."""
    if name == "wander":
        return Wander(world, rng)
    if name == "crowd":
        return Crowd(world, rng)
    if name == "commute":
        return Commute(world, rng)
    raise ValueError(f"unknown behaviour {name!r}; choose one of {', '.join(BEHAVIORS)}")


# --- the crowd of bots ------------------------------------------------------------------


@dataclass
class _Crowd:
    """What all bots share: their metrics and their connection counts."""

    metrics: Metrics
    connected: int = 0
    joined: set[int] = field(default_factory=set)
    disconnects: int = 0
    reconnects: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    live: dict[int, Player] = field(default_factory=dict)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if ``stop`` was set meanwhile (then the caller returns)."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _failure_key(exc: HandshakeError) -> str:
    if exc.code is not None:
        return error_name(exc.code)
    if exc.close_code is not None:
        return f"close_{exc.close_code}"
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else "handshake"


async def _drive(player: Player, behavior: Behavior, input_period: float) -> None:
    """Steer on snapshots until the connection ends (the runner closes it to stop)."""
    next_input = -math.inf
    async for snap in player.snapshots():
        if snap.received_at < next_input:
            continue
        pos = player.position()
        if pos is None:
            continue
        ix, iy = behavior.steer(pos, snap.received_at)
        try:
            await player.send_input(ix, iy)
        except ClientError:
            return
        # 0.9: snapshots arrive with jitter; a full period would skip every other one.
        next_input = snap.received_at + 0.9 * input_period


async def _bot(
    index: int,
    crowd: _Crowd,
    stop: asyncio.Event,
    *,
    url: str,
    token: Callable[[int], str],
    behavior: str,
    start_delay: float,
    input_hz: float,
    seed: int,
    reconnect: bool,
    client: str,
    ping_interval: float,
    mirror: bool,
) -> None:
    if await _sleep_or_stop(stop, start_delay):
        return
    rng = random.Random(seed * 1_000_003 + index)
    player: Player | None = None
    backoff = _BACKOFF_MIN
    try:
        while not stop.is_set():
            try:
                if player is None or not player.resume_token:
                    player = await Player.connect(
                        url,
                        token=token(index),
                        client=client,
                        metrics=crowd.metrics,
                        ping_interval=ping_interval,
                        mirror=mirror,
                    )
                else:
                    await player.resume()
                    crowd.reconnects += 1
            except HandshakeError as exc:
                crowd.connect_failures[_failure_key(exc)] += 1
                if not reconnect or await _sleep_or_stop(stop, backoff):
                    return
                backoff = min(_BACKOFF_MAX, backoff * 2.0)
                continue
            backoff = _BACKOFF_MIN
            if stop.is_set():
                return
            crowd.joined.add(index)
            crowd.connected += 1
            crowd.live[index] = player
            try:
                await _drive(player, make_behavior(behavior, player.world, rng), 1.0 / input_hz)
            finally:
                crowd.connected -= 1
                crowd.live.pop(index, None)
            if stop.is_set() or player.closed_by_client:
                return
            crowd.disconnects += 1
            if not reconnect or await _sleep_or_stop(stop, backoff):
                return
    finally:
        if player is not None and not player.closed:
            await player.close()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _progress_line(
    crowd: _Crowd, count: int, elapsed: float, snaps: int, dt: float, age: LatencyHistogram
) -> str:
    m = crowd.metrics
    p50, p99, rtt = age.percentile(50), age.percentile(99), m.rtt.percentile(50)

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.1f}ms"

    errors = ",".join(f"{k}={v}" for k, v in m.errors_by_name().items()) or "none"
    failures = sum(crowd.connect_failures.values())
    return (
        f"bots t={elapsed:6.1f}s connected={crowd.connected}/{count} "
        f"joined={len(crowd.joined)} snaps/s={snaps / dt if dt > 0 else 0.0:.0f} "
        f"age p50={ms(p50)} p99={ms(p99)} rtt p50={ms(rtt)} errors={errors} "
        f"disconnects={crowd.disconnects} connect_failures={failures}"
    )


async def _report(crowd: _Crowd, count: int, stop: asyncio.Event, out: TextIO) -> None:
    m = crowd.metrics
    start = last_t = time.monotonic()
    last_snaps, last_age = m.snapshots, m.snapshot_age.copy()
    while not await _sleep_or_stop(stop, 1.0):
        now = time.monotonic()
        window = m.snapshot_age.since(last_age)
        line = _progress_line(
            crowd, count, now - start, m.snapshots - last_snaps, now - last_t, window
        )
        print(line, file=out, flush=True)
        last_t, last_snaps, last_age = now, m.snapshots, m.snapshot_age.copy()


async def run_bots(
    url: str = DEFAULT_URL,
    count: int = 10,
    behavior: str = "wander",
    duration: float = 30.0,
    *,
    token_secret: str = "",
    ramp: float = 0.0,
    input_hz: float = 10.0,
    seed: int = 0,
    first_player_id: int = 1,
    reconnect: bool = True,
    client: str = "shardworld-bots",
    ping_interval: float = 1.0,
    mirror: bool = True,
    progress: TextIO | None = None,
    stop: asyncio.Event | None = None,
    token_factory: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """Run ``count`` bots against the gateway at ``url``; returns the summary.

    Bots start ``ramp`` per second (0: all at once) and stop after ``duration`` seconds (0:
    when ``stop`` is set). Tokens: ``token_factory(player_id)`` if given, else signed with
    ``token_secret`` for player ids ``first_player_id + i``, else empty (a dev-mode gateway).
    A bot whose connection drops resumes its entity after a back-off unless ``reconnect`` is
    False. ``mirror=False`` makes bots read only snapshot headers (their own position), which
    costs a fraction of the CPU of a full mirror. ``progress``: where the per-second line goes
    (``None``: nowhere).

    The summary (docs/client.md explains each figure): ``bots``, ``connected`` (open when
    the run ended), ``joined`` (bots that joined at least once), ``disconnects``,
    ``reconnects``, ``connect_failures`` {reason: count}, ``snapshots``,
    ``snapshots_per_s``, ``snapshot_age_p50_ms``, ``snapshot_age_p99_ms`` (lower bounds),
    ``snapshot_age_upper_p50_ms``, ``snapshot_age_upper_p99_ms``, ``rtt_p50_ms``,
    ``errors`` {code name: count}, ``kicks``, ``mirror_errors``, ``snapshots_dropped``,
    ``inputs_sent``, ``duration_s``.
    """
    if behavior not in BEHAVIORS:
        raise ValueError(f"unknown behaviour {behavior!r}; choose one of {', '.join(BEHAVIORS)}")
    if count < 0 or duration < 0 or ramp < 0 or not input_hz > 0:
        raise ValueError("count, duration and ramp must be >= 0 and input_hz > 0")
    if token_factory is None:
        if token_secret:
            secret = token_secret

            def token_factory(pid: int) -> str:
                return issue_token(secret, pid, TOKEN_TTL_S, name=f"bot{pid}")
        else:

            def token_factory(pid: int) -> str:
                return ""

    make_token = token_factory

    def token_of(index: int) -> str:
        return make_token(first_player_id + index)

    stop = stop if stop is not None else asyncio.Event()
    crowd = _Crowd(Metrics())
    started = time.monotonic()
    crowd.metrics.started = started
    tasks = [
        asyncio.create_task(
            _bot(
                i,
                crowd,
                stop,
                url=url,
                token=token_of,
                behavior=behavior,
                start_delay=i / ramp if ramp > 0 else 0.0,
                input_hz=input_hz,
                seed=seed,
                reconnect=reconnect,
                client=client,
                ping_interval=ping_interval,
                mirror=mirror,
            ),
            name=f"bot-{i}",
        )
        for i in range(count)
    ]
    reporter = (
        asyncio.create_task(_report(crowd, count, stop, progress)) if progress is not None else None
    )
    try:
        if duration > 0:
            await _sleep_or_stop(stop, duration)
        else:
            await stop.wait()
    finally:
        stop.set()
        ended = time.monotonic()
        summary = _summary(crowd, count, ended - started, behavior, url)
        await asyncio.gather(
            *(p.close() for p in list(crowd.live.values())), return_exceptions=True
        )
        _, pending = await asyncio.wait(tasks, timeout=10.0) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
    return summary


def _summary(crowd: _Crowd, count: int, elapsed: float, behavior: str, url: str) -> dict[str, Any]:
    m = crowd.metrics
    return {
        "url": url,
        "behavior": behavior,
        "bots": count,
        "connected": crowd.connected,
        "joined": len(crowd.joined),
        "disconnects": crowd.disconnects,
        "reconnects": crowd.reconnects,
        "connect_failures": dict(sorted(crowd.connect_failures.items())),
        "snapshots": m.snapshots,
        "snapshots_per_s": round(m.snapshots / elapsed, 2) if elapsed > 0 else 0.0,
        "snapshot_age_p50_ms": _ms(m.snapshot_age.percentile(50)),
        "snapshot_age_p99_ms": _ms(m.snapshot_age.percentile(99)),
        "snapshot_age_upper_p50_ms": _ms(m.snapshot_age_upper.percentile(50)),
        "snapshot_age_upper_p99_ms": _ms(m.snapshot_age_upper.percentile(99)),
        "rtt_p50_ms": _ms(m.rtt.percentile(50)),
        "errors": m.errors_by_name(),
        "kicks": {error_name(c): n for c, n in sorted(m.kicks.items())},
        "mirror_errors": m.mirror_errors,
        "snapshots_dropped": m.snapshots_dropped,
        "inputs_sent": m.inputs_sent,
        "duration_s": round(elapsed, 3),
    }


# --- the command ------------------------------------------------------------------------

_HELP = f"""\
Drive many players against a gateway from this process and measure what they get.

Each bot joins over its own WebSocket, reads its snapshots and steers its entity. A line of
live figures goes to stderr every second; the last line on stdout is a JSON summary.

behaviours:
  wander    random directions, changed every 1-4 s
  crowd     everyone heads for the world's centre and mills around it
  commute   back and forth between two points across the world's middle

Tokens are signed with --token-secret (or ${SECRET_ENV}) for player ids
--first-player-id, +1, ...; without a secret the bots send empty tokens (dev-mode gateway).

example:
  shardworld bots --url ws://127.0.0.1:7700 --count 200 --behavior crowd --ramp 50
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardworld bots",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL})")
    p.add_argument("--count", type=int, default=10, help="number of bots (default 10)")
    p.add_argument("--behavior", choices=BEHAVIORS, default="wander", help="default wander")
    p.add_argument(
        "--duration",
        type=float,
        default=30.0,
        metavar="S",
        help="stop after S seconds (default 30; 0: run until Ctrl-C)",
    )
    p.add_argument(
        "--token-secret", default=None, metavar="S", help=f"token secret (default ${SECRET_ENV})"
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        metavar="R",
        help="start R bots per second (default 0: all at once)",
    )
    p.add_argument(
        "--input-hz", type=float, default=10.0, help="inputs per second per bot, at most"
    )
    p.add_argument("--first-player-id", type=int, default=1, help="player id of bot 0")
    p.add_argument("--seed", type=int, default=0, help="random seed of the behaviours")
    p.add_argument(
        "--no-reconnect",
        action="store_true",
        help="a bot whose connection drops stays down (default: it resumes)",
    )
    p.add_argument(
        "--no-mirror",
        action="store_true",
        help="read only snapshot headers (own position): much less CPU per bot, no checks of "
        "the rest of the payload",
    )
    p.add_argument("--quiet", action="store_true", help="no per-second lines on stderr")
    return p


def bots_main(argv: Sequence[str] | None = None) -> int:
    """``shardworld bots``: returns the exit status (0; 1 if no bot could join; 2 on a usage
    error)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.count < 0 or args.duration < 0 or args.ramp < 0 or not args.input_hz > 0:
        print("shardworld bots: counts, rates and durations must be positive", file=sys.stderr)
        return 2
    secret = args.token_secret if args.token_secret is not None else os.environ.get(SECRET_ENV)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows, nor outside the main thread (uvloop: ValueError).
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        return await run_bots(
            args.url,
            args.count,
            args.behavior,
            args.duration,
            token_secret=secret or "",
            ramp=args.ramp,
            input_hz=args.input_hz,
            seed=args.seed,
            first_player_id=args.first_player_id,
            reconnect=not args.no_reconnect,
            mirror=not args.no_mirror,
            progress=None if args.quiet else sys.stderr,
            stop=stop,
        )

    try:
        import uvloop

        summary = uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        summary = asyncio.run(main())
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0 if summary["joined"] or not args.count else 1
