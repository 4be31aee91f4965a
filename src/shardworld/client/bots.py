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
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from shardworld.client.sdk import (
    ClientError,
    HandshakeError,
    LatencyHistogram,
    Metrics,
    Player,
    error_name,
)
from shardworld.gateway.auth import SECRET_ENV, issue_token
from shardworld.steering import Behavior, Vec, Wander, World, centre, margin, seek

__all__ = [
    "BEHAVIORS",
    "BOTS_PER_PROCESS",
    "Behavior",
    "Commute",
    "Crowd",
    "Wander",
    "bots_main",
    "empty_state",
    "make_behavior",
    "merge_states",
    "run_bots",
    "seek",
    "split_count",
    "summary_of_state",
]

BEHAVIORS: Final = ("wander", "crowd", "commute")
DEFAULT_URL: Final = "ws://127.0.0.1:7700"
TOKEN_TTL_S: Final = 24 * 3600.0
_BACKOFF_MIN: Final = 0.5
_BACKOFF_MAX: Final = 5.0


@dataclass
class Crowd:
    """Head for a point near the centre; once there, pick another one nearby (mill around)."""

    world: World
    rng: random.Random
    radius: float = 0.0
    target: Vec | None = None

    def __post_init__(self) -> None:
        if self.radius <= 0.0:
            self.radius = max(2.0, margin(self.world))

    def _new_target(self) -> Vec:
        cx, cy = centre(self.world)
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
    *,
    elapsed: float,
    connected: int,
    count: int,
    joined: int,
    snaps_per_s: float,
    age: LatencyHistogram,
    rtt: LatencyHistogram,
    errors: Mapping[str, int],
    disconnects: int,
    connect_failures: int,
    procs: str = "",
) -> str:
    p50, p99, rtt50 = age.percentile(50), age.percentile(99), rtt.percentile(50)

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.1f}ms"

    errs = ",".join(f"{k}={v}" for k, v in sorted(errors.items())) or "none"
    return (
        f"bots t={elapsed:6.1f}s {procs}connected={connected}/{count} "
        f"joined={joined} snaps/s={snaps_per_s:.0f} "
        f"age p50={ms(p50)} p99={ms(p99)} rtt p50={ms(rtt50)} errors={errs} "
        f"disconnects={disconnects} connect_failures={connect_failures}"
    )


async def _report(crowd: _Crowd, count: int, stop: asyncio.Event, out: TextIO) -> None:
    m = crowd.metrics
    start = last_t = time.monotonic()
    last_snaps, last_age = m.snapshots, m.snapshot_age.copy()
    while not await _sleep_or_stop(stop, 1.0):
        now = time.monotonic()
        dt = now - last_t
        line = _progress_line(
            elapsed=now - start,
            connected=crowd.connected,
            count=count,
            joined=len(crowd.joined),
            snaps_per_s=(m.snapshots - last_snaps) / dt if dt > 0 else 0.0,
            age=m.snapshot_age.since(last_age),
            rtt=m.rtt,
            errors=m.errors_by_name(),
            disconnects=crowd.disconnects,
            connect_failures=sum(crowd.connect_failures.values()),
        )
        print(line, file=out, flush=True)
        last_t, last_snaps, last_age = now, m.snapshots, m.snapshot_age.copy()


def _write_state(out: TextIO, state: Mapping[str, Any]) -> bool:
    """False when nobody reads ``out`` any more (a parent that is gone)."""
    try:
        print(json.dumps(state, separators=(",", ":")), file=out, flush=True)
    except BrokenPipeError:
        return False
    return True


async def _report_states(
    crowd: _Crowd, count: int, started: float, stop: asyncio.Event, out: TextIO
) -> None:
    # The first line goes out at once: it tells a parent that this process is running and
    # handles signals (it forwards Ctrl-C only then).
    while _write_state(out, _state(crowd, count, time.monotonic() - started)):
        if await _sleep_or_stop(stop, 1.0):
            return
    stop.set()  # whoever reads the states has gone: the run has no one to report to


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
    report: TextIO | None = None,
) -> dict[str, Any]:
    """Run ``count`` bots against the gateway at ``url``; returns the summary.

    Bots start ``ramp`` per second (0: all at once) and stop after ``duration`` seconds (0:
    when ``stop`` is set). Tokens: ``token_factory(player_id)`` if given, else signed with
    ``token_secret`` for player ids ``first_player_id + i``, else empty (a dev-mode gateway).
    A bot whose connection drops resumes its entity after a back-off unless ``reconnect`` is
    False. ``mirror=False`` makes bots read only snapshot headers (their own position), which
    costs a fraction of the CPU of a full mirror. ``progress``: where the per-second line goes
    (``None``: nowhere). ``report``: where a JSON line with the whole mergeable state
    (counts and histograms, see :func:`merge_states`) goes at the start, every second, and
    once more at the end with ``"final": true`` (``None``: nowhere); a parent process reads
    these from its children.

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
    reporters = []
    if progress is not None:
        reporters.append(asyncio.create_task(_report(crowd, count, stop, progress)))
    if report is not None:
        reporters.append(asyncio.create_task(_report_states(crowd, count, started, stop, report)))
    try:
        if duration > 0:
            await _sleep_or_stop(stop, duration)
        else:
            await stop.wait()
    finally:
        stop.set()
        ended = time.monotonic()
        state = _state(crowd, count, ended - started, final=True)
        summary = summary_of_state(state, url, behavior)
        await asyncio.gather(
            *(p.close() for p in list(crowd.live.values())), return_exceptions=True
        )
        _, pending = await asyncio.wait(tasks, timeout=10.0) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in reporters:
            r.cancel()
        await asyncio.gather(*reporters, return_exceptions=True)
        if report is not None:
            _write_state(report, state)
    return summary


# --- states: what a bot process reports, and how several add up ---------------------------

_HISTOGRAMS: Final = ("snapshot_age", "snapshot_age_upper", "rtt")
_COUNTS: Final = (
    "bots",
    "connected",
    "joined",
    "disconnects",
    "reconnects",
    "snapshots",
    "mirror_errors",
    "snapshots_dropped",
    "inputs_sent",
)
_BY_NAME: Final = ("connect_failures", "errors", "kicks")


def _state(crowd: _Crowd, count: int, elapsed: float, *, final: bool = False) -> dict[str, Any]:
    """Everything a summary is made of, in a form that adds up across processes: counts,
    counts by name, histograms (:meth:`LatencyHistogram.to_dict`) and the elapsed time."""
    m = crowd.metrics
    return {
        "type": "state",
        "final": final,
        "elapsed": elapsed,
        "bots": count,
        "connected": crowd.connected,
        "joined": len(crowd.joined),
        "disconnects": crowd.disconnects,
        "reconnects": crowd.reconnects,
        "snapshots": m.snapshots,
        "mirror_errors": m.mirror_errors,
        "snapshots_dropped": m.snapshots_dropped,
        "inputs_sent": m.inputs_sent,
        "connect_failures": dict(crowd.connect_failures),
        "errors": m.errors_by_name(),
        "kicks": {error_name(c): n for c, n in m.kicks.items()},
        "snapshot_age": m.snapshot_age.to_dict(),
        "snapshot_age_upper": m.snapshot_age_upper.to_dict(),
        "rtt": m.rtt.to_dict(),
    }


def empty_state(bots: int = 0) -> dict[str, Any]:
    """The state of ``bots`` bots that never ran (a process that died before reporting)."""
    return _state(_Crowd(Metrics()), bots, 0.0)


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One state for the bots of all ``states`` (of several processes run side by side).

    Counts and counts by name add up; histograms merge bucket by bucket, so percentiles of
    the result are those of every sample of every process together (never an average of
    percentiles); ``elapsed`` is the longest, ``final`` whether all were final. ``ValueError``
    on a malformed state.
    """
    out = empty_state()
    out["final"] = bool(states) and all(bool(s.get("final")) for s in states)
    hists = {h: LatencyHistogram() for h in _HISTOGRAMS}
    try:
        for s in states:
            out["elapsed"] = max(float(out["elapsed"]), float(s["elapsed"]))
            for key in _COUNTS:
                out[key] += int(s[key])
            for key in _BY_NAME:
                merged: Counter[str] = Counter(out[key])
                merged.update({str(k): int(v) for k, v in dict(s[key]).items()})
                out[key] = dict(merged)
            for h in _HISTOGRAMS:
                hists[h].merge(LatencyHistogram.from_dict(s[h]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a bots state: {exc}") from exc
    for h in _HISTOGRAMS:
        out[h] = hists[h].to_dict()
    return out


def summary_of_state(state: Mapping[str, Any], url: str, behavior: str) -> dict[str, Any]:
    """The JSON summary of :func:`run_bots` for a (merged) state."""
    age = LatencyHistogram.from_dict(state["snapshot_age"])
    upper = LatencyHistogram.from_dict(state["snapshot_age_upper"])
    rtt = LatencyHistogram.from_dict(state["rtt"])
    elapsed = float(state["elapsed"])
    snapshots = int(state["snapshots"])
    return {
        "url": url,
        "behavior": behavior,
        "bots": state["bots"],
        "connected": state["connected"],
        "joined": state["joined"],
        "disconnects": state["disconnects"],
        "reconnects": state["reconnects"],
        "connect_failures": dict(sorted(state["connect_failures"].items())),
        "snapshots": snapshots,
        "snapshots_per_s": round(snapshots / elapsed, 2) if elapsed > 0 else 0.0,
        "snapshot_age_p50_ms": _ms(age.percentile(50)),
        "snapshot_age_p99_ms": _ms(age.percentile(99)),
        "snapshot_age_upper_p50_ms": _ms(upper.percentile(50)),
        "snapshot_age_upper_p99_ms": _ms(upper.percentile(99)),
        "rtt_p50_ms": _ms(rtt.percentile(50)),
        "errors": dict(sorted(state["errors"].items())),
        "kicks": dict(sorted(state["kicks"].items())),
        "mirror_errors": state["mirror_errors"],
        "snapshots_dropped": state["snapshots_dropped"],
        "inputs_sent": state["inputs_sent"],
        "duration_s": round(elapsed, 3),
    }


# --- the command ------------------------------------------------------------------------

_HELP = f"""\
Drive many players against a gateway and measure what they get.

Each bot joins over its own WebSocket, reads its snapshots and steers its entity. A line of
live figures goes to stderr every second; the last line on stdout is a JSON summary.

behaviours:
  wander    random directions, changed every 1-4 s
  crowd     everyone heads for the world's centre and mills around it
  commute   back and forth between two points across the world's middle

Tokens are signed with --token-secret (or ${SECRET_ENV}) for player ids
--first-player-id, +1, ...; without a secret the bots send empty tokens (dev-mode gateway).

One process drives roughly 500-1000 bots that read only snapshot headers (--no-mirror),
fewer with full mirrors; --processes P splits the bots between P processes (one core each)
and merges their figures into one line and one summary.

example:
  shardworld bots --url ws://127.0.0.1:7700 --count 200 --behavior crowd --ramp 50
  shardworld bots --count 2000 --processes 4 --no-mirror --ramp 400
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
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="P",
        help="split the bots between P processes (default 1: all in this one)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-second lines on stderr")
    # A child of --processes: JSON states on stdout (run_bots(report=...)), and stop when
    # stdin reaches its end (the parent closed it, or died).
    p.add_argument("--report", action="store_true", help=argparse.SUPPRESS)
    return p


def _stop_at_eof_of_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def watch() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader can
        # abort the interpreter's shutdown.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        with contextlib.suppress(RuntimeError):  # the loop has already finished
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="bots-stdin", daemon=True).start()


def bots_main(argv: Sequence[str] | None = None) -> int:
    """``shardworld bots``: returns the exit status (0; 1 if no bot could join, or with
    ``--processes``, if a bot process failed; 2 on a usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if (
        args.count < 0
        or args.duration < 0
        or args.ramp < 0
        or not args.input_hz > 0
        or args.processes < 1
    ):
        print(
            "shardworld bots: counts, rates and durations must be positive, --processes >= 1",
            file=sys.stderr,
        )
        return 2
    secret = args.token_secret if args.token_secret is not None else os.environ.get(SECRET_ENV)
    processes = 1 if args.report else max(1, min(args.processes, args.count))
    if processes > 1:
        summary, status = _run_processes(args, processes, secret or "")
        print(json.dumps(summary, sort_keys=True), flush=True)
        return status

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows, nor outside the main thread (uvloop: ValueError).
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        if args.report:
            _stop_at_eof_of_stdin(loop, stop)
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
            progress=None if args.quiet or args.report else sys.stderr,
            stop=stop,
            report=sys.stdout if args.report else None,
        )

    try:
        import uvloop

        summary = uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        summary = asyncio.run(main())
    if args.report:  # a child's last line is its final state, which the parent reads
        for sig in (signal.SIGINT, signal.SIGTERM):
            # A forwarded stop that arrives now, after the loop's handlers are gone, must not
            # turn a finished run into a KeyboardInterrupt.
            with contextlib.suppress(ValueError):
                signal.signal(sig, signal.SIG_IGN)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            # The parent is gone: let the flush at exit write what is left to nowhere
            # instead of failing a second time.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    else:
        summary["processes"] = 1
        print(json.dumps(summary, sort_keys=True), flush=True)
    return 0 if summary["joined"] or not args.count else 1


# --- several processes --------------------------------------------------------------------

#: Bots per process that ``bench_e2e`` plans for: header-only bots (``--no-mirror``) at 20
#: snapshots/s keep about half of one core busy at this count (docs/client.md).
BOTS_PER_PROCESS: Final = 500
#: Seconds past ``--duration`` after which the parent stops children that are still running.
_OVERTIME: Final = 30.0
#: Seconds a child has between being asked to stop and being killed.
_KILL_AFTER: Final = 20.0
_POLL: Final = 0.05


def split_count(count: int, parts: int) -> list[int]:
    """``count`` split into ``parts`` sizes that differ by at most one, the larger first."""
    if parts < 1 or count < 0:
        raise ValueError("need parts >= 1 and count >= 0")
    base, extra = divmod(count, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


@dataclass
class _Child:
    """One bot process of a ``--processes`` run, and what it has reported."""

    index: int
    bots: int
    first_player_id: int
    proc: subprocess.Popen[str]
    latest: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    reader: threading.Thread | None = None
    ended: bool = False
    seen: dict[str, Any] | None = None
    rate: float = 0.0
    signalled: set[int] = field(default_factory=set)

    def read(self) -> None:
        """The reader thread: keep the newest state line of the child's stdout."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("type") == "state":
                self.latest = obj
                if obj.get("final"):
                    self.final = obj

    @property
    def players(self) -> str:
        return f"players {self.first_player_id}-{self.first_player_id + self.bots - 1}"

    @property
    def failed(self) -> bool:
        """Ended without its final state, or with a status other than 0, 1 (no bot joined,
        which its state shows) and the signal this process forwarded to it (which can land
        just after the child finished on its own, when it no longer handles it)."""
        rc = self.proc.returncode
        if rc is None:
            return False
        return self.final is None or not (rc in (0, 1) or -rc in self.signalled)

    def state(self) -> Mapping[str, Any]:
        """What to count for this child now: its final or latest state; no connections once
        it is gone without a final one."""
        s = self.final or self.latest or empty_state(self.bots)
        if self.final is None and self.proc.returncode is not None:
            return {**s, "connected": 0}
        return s


class _Fleet:
    """The children of one run, and how they are stopped: closing their stdin (which they
    watch) and forwarding the signal, or killing them on a second signal or overtime."""

    def __init__(self) -> None:
        self.children: list[_Child] = []
        self.stops = 0
        self.kill_at = math.inf

    def stop(self, signum: int) -> None:
        self.stops += 1
        for c in self.children:
            if c.proc.poll() is not None:
                continue
            if self.stops > 1:
                c.proc.kill()
                continue
            # A child that has not reported yet may not handle signals yet (it is still
            # importing); it stops at the end of its stdin instead. The signal goes first:
            # a child that stopped at the end of its stdin could be past its handlers.
            if c.latest is not None:
                with contextlib.suppress(OSError):
                    c.proc.send_signal(signum)
                    c.signalled.add(signum)
            if c.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    c.proc.stdin.close()
        self.kill_at = min(self.kill_at, time.monotonic() + _KILL_AFTER)

    def on_signal(self, signum: int, frame: object) -> None:
        self.stop(signum)

    def kill_all(self) -> None:
        for c in self.children:
            if c.proc.poll() is None:
                c.proc.kill()


def _child_argv(args: argparse.Namespace, index: int, bots: int, first: int) -> list[str]:
    ramp = args.ramp * bots / args.count if args.count else 0.0
    argv = [
        f"--url={args.url}",
        f"--count={bots}",
        f"--behavior={args.behavior}",
        f"--duration={float(args.duration)!r}",
        f"--ramp={ramp!r}",
        f"--input-hz={float(args.input_hz)!r}",
        f"--first-player-id={first}",
        f"--seed={args.seed + index}",
        "--quiet",
        "--report",
    ]
    if args.no_reconnect:
        argv.append("--no-reconnect")
    if args.no_mirror:
        argv.append("--no-mirror")
    return argv


def _fleet_progress(
    fleet: _Fleet, count: int, elapsed: float, last_age: LatencyHistogram
) -> tuple[str, LatencyHistogram]:
    """The combined per-second line, and the merged age histogram for the next line's
    window (ages over the last second). Each child's snapshot rate is measured on its own
    clock, so a report landing just before or after this line does not make it jump."""
    alive = 0
    for c in fleet.children:
        s = c.latest
        if c.proc.returncode is not None:
            c.rate = 0.0
        else:
            alive += 1
            if s is not None and c.seen is not None and s is not c.seen:
                dt = float(s["elapsed"]) - float(c.seen["elapsed"])
                if dt > 0:
                    c.rate = (int(s["snapshots"]) - int(c.seen["snapshots"])) / dt
        if s is not None:
            c.seen = s
    # A child that has finished holds no connections any more, whatever its final state says.
    merged = merge_states(
        [
            c.state() if c.proc.returncode is None else {**c.state(), "connected": 0}
            for c in fleet.children
        ]
    )
    age = LatencyHistogram.from_dict(merged["snapshot_age"])
    line = _progress_line(
        elapsed=elapsed,
        connected=int(merged["connected"]),
        count=count,
        joined=int(merged["joined"]),
        snaps_per_s=sum(c.rate for c in fleet.children),
        age=age.since(last_age),
        rtt=LatencyHistogram.from_dict(merged["rtt"]),
        errors=merged["errors"],
        disconnects=int(merged["disconnects"]),
        connect_failures=sum(merged["connect_failures"].values()),
        procs=f"procs={alive}/{len(fleet.children)} ",
    )
    return line, age


def _run_processes(
    args: argparse.Namespace,
    processes: int,
    secret: str,
    *,
    command: Sequence[str] | None = None,
    err: TextIO | None = None,
) -> tuple[dict[str, Any], int]:
    """Run ``args.count`` bots in ``processes`` child processes; returns the merged summary
    (with ``processes`` and ``process_failures``) and the exit status.

    ``command``: how to start one child, its options appended (default: this Python's
    ``-m shardworld.cli bots``). ``err``: where progress and failures go (stderr).
    """
    out = err if err is not None else sys.stderr
    cmd = list(command) if command else [sys.executable, "-m", "shardworld.cli", "bots"]
    env = dict(os.environ)
    # The secret travels in the environment, not on command lines that `ps` shows.
    if secret:
        env[SECRET_ENV] = secret
    else:
        env.pop(SECRET_ENV, None)
    popen_extra: dict[str, Any] = {}
    if os.name == "posix":
        # Their own process group: a Ctrl-C in the terminal reaches only this process, which
        # forwards it once a child can handle it (not while it is still importing).
        popen_extra["process_group"] = 0
    fleet = _Fleet()
    handlers: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no signals to forward
            handlers[sig] = signal.signal(sig, fleet.on_signal)
    started = time.monotonic()
    not_started = 0
    try:
        first = args.first_player_id
        for i, n in enumerate(split_count(args.count, processes)):
            if fleet.stops:
                not_started += n
                continue
            proc = subprocess.Popen(
                [*cmd, *_child_argv(args, i, n, first)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                **popen_extra,
            )
            child = _Child(i, n, first, proc)
            child.reader = threading.Thread(target=child.read, name=f"bots-{i}", daemon=True)
            child.reader.start()
            fleet.children.append(child)
            first += n
        if not args.quiet:
            pids = ", ".join(f"pid {c.proc.pid} ({c.players})" for c in fleet.children)
            print(f"bots: {len(fleet.children)} processes: {pids}", file=out, flush=True)
        overtime_at = started + args.duration + _OVERTIME if args.duration > 0 else math.inf
        next_line = started + 1.0
        last_age = LatencyHistogram()
        while True:
            for c in fleet.children:
                if c.ended or c.proc.poll() is None:
                    continue
                c.ended = True
                if c.reader is not None:
                    c.reader.join(5.0)  # its last lines, the final state among them
                if c.failed:
                    how = "without a summary" if c.final is None else "after its summary"
                    print(
                        f"shardworld bots: process {c.index} (pid {c.proc.pid}, {c.players}) "
                        f"exited with status {c.proc.returncode} {how}",
                        file=out,
                        flush=True,
                    )
            if all(c.ended for c in fleet.children):
                break
            now = time.monotonic()
            if now >= overtime_at:
                overtime_at = math.inf
                fleet.stop(signal.SIGTERM)
            if now >= fleet.kill_at:
                fleet.kill_all()
            if now >= next_line:
                next_line = max(next_line + 1.0, now + 0.5)
                if not args.quiet:
                    line, last_age = _fleet_progress(fleet, args.count, now - started, last_age)
                    print(line, file=out, flush=True)
            time.sleep(_POLL)
    finally:
        for signum, old in handlers.items():
            signal.signal(signum, old)
        fleet.kill_all()
        for c in fleet.children:
            c.proc.wait()
            if c.reader is not None:
                c.reader.join(5.0)
            for pipe in (c.proc.stdin, c.proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
    states = [c.state() for c in fleet.children]
    if not_started:
        states.append(empty_state(not_started))
    summary = summary_of_state(merge_states(states), args.url, args.behavior)
    failures = [
        {"process": c.index, "exit_code": c.proc.returncode, "bots": c.bots}
        for c in fleet.children
        if c.failed
    ]
    summary["processes"] = processes
    summary["process_failures"] = failures
    ok = not failures and (summary["joined"] or not args.count)
    return summary, 0 if ok else 1
