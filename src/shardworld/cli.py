"""The ``shardworld`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from typing import Any

import numpy as np

DESCRIPTION = """\
shardworld: one seamless, sharded world for massively multiplayer games.

Commands:
  run PATH     run the world in PATH (a folder with world.toml and handler.py) in this process
  warmup       compile every numba kernel into the on-disk cache (done once per machine)

Run `shardworld COMMAND --help` for the options of each command.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardworld",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a world in this process",
        description=(
            "Run the world in PATH in this process: one zone ticking at tick_hz, with the "
            "world's NPCs and (until players can connect over WebSockets) simulated players "
            "driven through the same input path real players use. Prints a line of live tick "
            "figures every second, and a density map when the terminal is interactive. "
            "Stop with Ctrl-C; a JSON summary is printed on exit."
        ),
    )
    run.add_argument("path", help="world folder, e.g. zones/arena")
    run.add_argument("--npcs", type=int, help="wandering NPCs to spawn (default: world.toml [demo])")
    run.add_argument(
        "--players", type=int, help="simulated players (observers) to spawn (default: [demo])"
    )
    run.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    run.add_argument("--tick-hz", type=float, help="override the world's tick rate")
    run.add_argument(
        "--map",
        choices=("auto", "always", "never"),
        default="auto",
        help="draw a live density map (auto: only on an interactive terminal)",
    )

    sub.add_parser(
        "warmup",
        help="compile and cache every kernel",
        description="Compile every numba kernel into the on-disk cache and report how long it took.",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shardworld`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "warmup":
        return _warmup()
    if args.command == "run":
        return _run(args)
    _parser().print_help()
    return 2


def _warmup() -> int:
    from shardworld.kernels import warm_up

    t0 = time.perf_counter()
    warm_up()
    print(json.dumps({"warmup_s": round(time.perf_counter() - t0, 3)}))
    return 0


def _run(args: argparse.Namespace) -> int:
    from shardworld.zone import ConfigError, Zone, load_world

    try:
        world = load_world(args.path)
    except ConfigError as exc:
        print(f"shardworld run: {exc}", file=sys.stderr)
        return 2
    npcs = args.npcs if args.npcs is not None else int(world.demo.get("npcs", 0))
    players = args.players if args.players is not None else int(world.demo.get("players", 0))
    if npcs < 0 or players < 0:
        print("shardworld run: --npcs and --players must be >= 0", file=sys.stderr)
        return 2
    changes: dict[str, Any] = {"extra": {**world.config.extra, "npcs": npcs}}
    if args.tick_hz:
        changes["tick_hz"] = args.tick_hz
        changes["snapshot_hz"] = min(world.config.snapshot_hz, args.tick_hz)
    try:
        config = world.config.with_(**changes)
    except ConfigError as exc:
        print(f"shardworld run: {exc}", file=sys.stderr)
        return 2
    draw_map = args.map == "always" or (args.map == "auto" and sys.stdout.isatty())
    zone = Zone(config, world.make_handler())
    print(
        f"shardworld: world {config.name!r} from {args.path}: {npcs} NPCs, {players} simulated "
        f"players, {config.tick_hz:g} Hz ticks, {config.snapshot_hz:g} Hz snapshots. Ctrl-C stops.",
        flush=True,
    )
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        runner = asyncio.run
    summary = runner(_serve(zone, players, args.seconds, draw_map))
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


async def _serve(zone: Any, players: int, seconds: float, draw_map: bool) -> dict[str, Any]:
    """Run the zone, drive simulated players, print live figures; return a summary."""
    from shardworld.zone import MODE_PLAYER

    zone.warm_up()
    rng = np.random.default_rng(1)
    owners = np.arange(1, players + 1, dtype=np.uint64)
    if players:
        ids = zone.spawn(
            players,
            pos=zone.random_points(players, margin=5.0),
            owner=owners,
            kind=1,
            mode=MODE_PLAYER,
            observer=1,
        )
    else:
        ids = np.zeros(0, np.uint64)
    seq = np.zeros(players, np.uint32)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def drive_players() -> None:
        # Each simulated player changes direction now and then, like a person would.
        intent = rng.uniform(-1, 1, (players, 2)).astype(np.float32)
        while not stop.is_set():
            change = rng.random(players) < 0.3
            intent[change] = rng.uniform(-1, 1, (int(change.sum()), 2))
            seq[:] += 1
            actions = (rng.random(players) < 0.02).astype(np.uint32)
            zone.inputs.push_many(ids, seq, intent, actions)
            await asyncio.sleep(0.25)

    async def report() -> None:
        last_bytes, last_t = 0, time.perf_counter()
        started = last_t
        while not stop.is_set():
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            st = zone.stats.report()
            rate = (int(st["bytes_out"]) - last_bytes) / max(1e-9, now - last_t)
            last_bytes, last_t = int(st["bytes_out"]), now
            line = (
                f"t={now - started:6.1f}s tick={zone.tick:<6d} "
                f"p50={st['p50_ms']:.2f}ms p99={st['p99_ms']:.2f}ms max={st['max_ms']:.2f}ms | "
                f"entities={st['entities']} observers={st['observers']} "
                f"pairs={st['interest_pairs']} | out={rate / 1e6:.2f} MB/s | "
                f"late={st['late_ticks']} skipped={st['skipped_ticks']} "
                f"walls={st['wall_hits']}"
            )
            if draw_map:
                sys.stdout.write("\x1b[H\x1b[2J" + density_map(zone) + "\n" + line + "\n")
                sys.stdout.flush()
            else:
                print(line, flush=True)

    async def timer() -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)
            stop.set()

    run_task = asyncio.create_task(zone.run())
    side = [asyncio.create_task(c) for c in (drive_players(), report(), timer())]
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait([run_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    zone.stop()
    stop.set()
    for t in side:
        t.cancel()
    await asyncio.gather(*side, return_exceptions=True)
    await asyncio.gather(run_task, stop_wait, return_exceptions=True)
    report_now = zone.stats.report()
    return {"summary": "run", "world": zone.config.name, **report_now}


SHADES = " .:-=+*#%@"


def density_map(zone: Any, width: int = 64, height: int = 24) -> str:
    """An ASCII picture of where the entities are (walls as `|`), darker = denser."""
    x0, y0, x1, y1 = zone.bounds
    pos = zone.entities["pos"]
    hist, _, _ = np.histogram2d(
        pos[:, 1], pos[:, 0], bins=(height, width), range=((y0, y1), (x0, x1))
    )
    top = max(1.0, float(hist.max()))
    levels = np.minimum((np.sqrt(hist / top) * (len(SHADES) - 1)).round().astype(int), 9)
    rows = ["".join(SHADES[v] for v in row) for row in levels[::-1]]
    observers = int(np.count_nonzero(zone.entities["observer"]))
    return "\n".join(
        [f"+{'-' * width}+ {zone.config.name}: {len(zone.entities)} entities, "
         f"{observers} players"]
        + [f"|{r}|" for r in rows]
        + [f"+{'-' * width}+"]
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
