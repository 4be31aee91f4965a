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
  run PATH     run the world in PATH (world.toml + handler.py) in this process: zone, gateway,
               and optionally bots; players connect over WebSockets
  bots         drive N simulated players against a running gateway
  token        issue a signed, expiring player token
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
        help="run a world in this process (zone + WebSocket gateway)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the world in PATH in this process: one zone ticking at tick_hz and a WebSocket\n"
            "gateway players connect to. Prints a line of live figures every second (and a\n"
            "density map on an interactive terminal). Ctrl-C stops; a JSON summary follows.\n\n"
            "examples:\n"
            "  shardworld run zones/arena --dev --bots 300       # what `make demo` runs\n"
            "  shardworld run zones/arena --secret S3CRET --port 7700\n"
            "  shardworld run zones/arena --no-gateway --players 500 --seconds 30   # headless"
        ),
    )
    run.add_argument("path", help="world folder, e.g. zones/arena")
    run.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=7700, help="gateway port (default 7700)")
    run.add_argument(
        "--dev", action="store_true", help="accept players without a token (development only)"
    )
    run.add_argument(
        "--secret",
        default=None,
        help="token secret (default: $SHARDWORLD_SECRET); required unless --dev",
    )
    run.add_argument("--no-gateway", action="store_true", help="run the zone headless")
    run.add_argument(
        "--npcs", type=int, help="wandering NPCs to spawn (default: world.toml [demo])"
    )
    run.add_argument(
        "--bots",
        type=int,
        default=0,
        help="start a `shardworld bots` process with this many WebSocket players",
    )
    run.add_argument(
        "--bot-behavior",
        default="wander",
        choices=("wander", "crowd", "commute"),
        help="what the bots do (default wander)",
    )
    run.add_argument(
        "--players",
        type=int,
        default=0,
        help="in-process simulated players that bypass the network (headless load)",
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
        "bots", help="drive simulated players (see `shardworld bots --help`)", add_help=False
    )
    sub.add_parser(
        "token", help="issue a player token (see `shardworld token --help`)", add_help=False
    )
    sub.add_parser(
        "warmup",
        help="compile and cache every kernel",
        description="Compile every numba kernel into the on-disk cache; report how long it took.",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shardworld`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `bots` and `token` own their whole argument list (and their --help).
    if argv and argv[0] == "bots":
        from shardworld.client.bots import bots_main

        return bots_main(argv[1:])
    if argv and argv[0] == "token":
        from shardworld.gateway.auth import token_main

        return token_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "warmup":
        return _warmup()
    if args.command in ("bots", "token"):
        raise AssertionError("handled before parsing")  # pragma: no cover
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
    import os

    from shardworld.zone import ConfigError, Zone, load_world

    try:
        world = load_world(args.path)
    except ConfigError as exc:
        print(f"shardworld run: {exc}", file=sys.stderr)
        return 2
    npcs = args.npcs if args.npcs is not None else int(world.demo.get("npcs", 0))
    if npcs < 0 or args.players < 0 or args.bots < 0:
        print("shardworld run: --npcs, --players and --bots must be >= 0", file=sys.stderr)
        return 2
    secret = args.secret or os.environ.get("SHARDWORLD_SECRET", "")
    if not args.no_gateway and not args.dev and not secret:
        print(
            "shardworld run: players need tokens: pass --secret (or set SHARDWORLD_SECRET), "
            "or --dev to accept anonymous players",
            file=sys.stderr,
        )
        return 2
    if args.bots and args.no_gateway:
        print("shardworld run: --bots needs the gateway", file=sys.stderr)
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
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        runner = asyncio.run
    try:
        summary = runner(_serve(zone, args, secret, draw_map))
    except OSError as exc:
        print(f"shardworld run: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


async def _serve(
    zone: Any, args: argparse.Namespace, secret: str, draw_map: bool
) -> dict[str, Any]:
    """Run the zone (and gateway, and bots); print live figures; return a summary."""
    from shardworld.zone import MODE_PLAYER

    zone.warm_up()
    cfg = zone.config
    players = int(args.players)
    rng = np.random.default_rng(1)
    if players:
        ids = zone.spawn(
            players,
            pos=zone.random_points(players, margin=5.0),
            owner=np.arange(1 << 40, (1 << 40) + players, dtype=np.uint64),
            kind=1,
            mode=MODE_PLAYER,
            observer=1,
        )
    else:
        ids = np.zeros(0, np.uint64)
    seq = np.zeros(players, np.uint32)

    gateway = None
    if not args.no_gateway:
        from shardworld.gateway import EmbeddedWorld, Gateway, GatewayConfig

        gateway = Gateway(
            EmbeddedWorld(zone),
            GatewayConfig(host=args.host, port=args.port, dev=args.dev, secret=secret or None),
        )
        await gateway.start()

    print(
        f"shardworld: world {cfg.name!r} from {args.path}: {len(zone.entities)} entities, "
        f"{cfg.tick_hz:g} Hz ticks, {cfg.snapshot_hz:g} Hz snapshots.",
        flush=True,
    )
    if gateway is not None:
        how = "no token needed (--dev)" if args.dev else "players need a token: shardworld token"
        print(
            f"shardworld: players connect to {gateway.url} ({how}).\n"
            f"            try: .venv/bin/shardworld bots --url {gateway.url} --count 20"
            f" --duration 60",
            flush=True,
        )
    print("shardworld: Ctrl-C stops.", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    bots_proc: asyncio.subprocess.Process | None = None
    if args.bots and gateway is not None:
        cmd = [
            sys.executable,
            "-m",
            "shardworld.cli",
            "bots",
            "--url",
            gateway.url,
            "--count",
            str(args.bots),
            "--behavior",
            args.bot_behavior,
            "--duration",
            str(args.seconds if args.seconds > 0 else 0),
            "--ramp",
            "200",
            "--quiet",
        ]
        if not args.dev:
            cmd += ["--token-secret", secret]
        bots_proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        print(f"shardworld: started {args.bots} bots (pid {bots_proc.pid}).", flush=True)

    async def drive_players() -> None:
        # Each simulated player changes direction now and then, like a person would.
        intent = rng.uniform(-1, 1, (players, 2)).astype(np.float32)
        while players and not stop.is_set():
            change = rng.random(players) < 0.3
            intent[change] = rng.uniform(-1, 1, (int(change.sum()), 2))
            seq[:] += 1
            actions = (rng.random(players) < 0.02).astype(np.uint32)
            zone.inputs.push_many(ids, seq, intent, actions)
            await asyncio.sleep(0.25)

    async def report() -> None:
        last_bytes, last_frames, last_t = 0, 0, time.perf_counter()
        started = last_t
        while not stop.is_set():
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            st = zone.stats.report()
            span = max(1e-9, now - last_t)
            rate = (int(st["bytes_out"]) - last_bytes) / span
            last_bytes = int(st["bytes_out"])
            line = (
                f"t={now - started:6.1f}s tick={zone.tick:<6d} "
                f"p50={st['p50_ms']:.2f}ms p99={st['p99_ms']:.2f}ms max={st['max_ms']:.2f}ms | "
                f"entities={st['entities']} observers={st['observers']} "
                f"pairs={st['interest_pairs']} | snapshots={rate / 1e6:.2f} MB/s | "
                f"late={st['late_ticks']} skipped={st['skipped_ticks']}"
            )
            if gateway is not None:
                gs = gateway.stats()
                frames = int(gs.get("snapshots_sent", 0))
                line += (
                    f" | players={gs.get('joined', 0)} frames/s={(frames - last_frames) / span:.0f}"
                    f" dropped={gs.get('snapshots_dropped', 0)}"
                )
                last_frames = frames
            last_t = now
            if draw_map:
                sys.stdout.write("\x1b[H\x1b[2J" + density_map(zone) + "\n" + line + "\n")
                sys.stdout.flush()
            else:
                print(line, flush=True)

    async def timer() -> None:
        if args.seconds > 0:
            await asyncio.sleep(args.seconds)
            stop.set()

    run_task = asyncio.create_task(zone.run())
    side = [asyncio.create_task(c) for c in (drive_players(), report(), timer())]
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait([run_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    bots_summary: Any = None
    if bots_proc is not None:
        if bots_proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                bots_proc.send_signal(signal.SIGINT)
        try:
            out, _ = await asyncio.wait_for(bots_proc.communicate(), 10.0)
            lines = out.decode(errors="replace").strip().splitlines()
            bots_summary = json.loads(lines[-1]) if lines else None
        except (TimeoutError, json.JSONDecodeError):
            with contextlib.suppress(ProcessLookupError):
                bots_proc.kill()
            await bots_proc.wait()
    if gateway is not None:
        await gateway.stop()
    zone.stop()
    for t in side:
        t.cancel()
    await asyncio.gather(*side, return_exceptions=True)
    await asyncio.gather(run_task, stop_wait, return_exceptions=True)
    if run_task.done() and not run_task.cancelled() and run_task.exception():
        raise run_task.exception()  # type: ignore[misc]
    out_summary: dict[str, Any] = {"summary": "run", "world": cfg.name, **zone.stats.report()}
    if gateway is not None:
        out_summary["gateway"] = gateway.stats()
    if bots_summary is not None:
        out_summary["bots"] = bots_summary
    return out_summary


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
        [f"+{'-' * width}+ {zone.config.name}: {len(zone.entities)} entities, {observers} players"]
        + [f"|{r}|" for r in rows]
        + [f"+{'-' * width}+"]
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
