"""The ``shardworld`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("shardworld")

DESCRIPTION = """\
shardworld: one seamless, sharded world for massively multiplayer games.

Commands:
  run PATH     run the world in PATH (world.toml + handler.py) in this process: its zones,
               a gateway, and optionally bots; players connect over WebSockets
  zone PATH    run one zone of the world as its own process, on a Kafka bus
  gateway PATH run a WebSocket gateway for a world whose zones run elsewhere (Kafka bus)
  coordinator PATH
               watch the zones' load and move cells between them (leader or standby)
  bots         drive N simulated players against a running gateway
  token        issue a signed, expiring player token
  plan         size a world: zone and gateway processes, cores and machines for N players
  warmup       compile every numba kernel into the on-disk cache (done once per machine)
  new NAME     create a new world folder to start from, e.g. `shardworld new meadow`
               (zones/meadow/: world.toml, handler.py, test_world.py, README.md)

Run `shardworld COMMAND --help` for the options of each command.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardworld",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("SHARDWORLD_LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line with the same fields everywhere "
        "(default text, or $SHARDWORLD_LOG_FORMAT)",
    )
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
        "--zones",
        type=int,
        help="split the world between this many zones (default: world.toml [sharding])",
    )
    run.add_argument(
        "--bus",
        default="memory://",
        help="bus between the zones: memory:// (default, in this process) or kafka://HOST:PORT",
    )
    run.add_argument(
        "--store",
        default="memory://",
        help="the world's store (coordinator state, player records): memory:// (default) or "
        "redis://HOST:PORT/DB",
    )
    run.add_argument(
        "--no-coordinator",
        action="store_true",
        help="keep the starting cell map (no rebalancing) in a world of several zones",
    )
    run.add_argument(
        "--map",
        choices=("auto", "always", "never"),
        default="auto",
        help="draw a live density map (auto: only on an interactive terminal)",
    )
    _add_gateway_args(run)
    _add_metrics_args(run)
    _add_map_args(
        run,
        f"serve the live world map on http://HOST:PORT/map (default {DEFAULT_MAP_PORT} when "
        "the world has a coordinator, i.e. several zones; 0: off)",
    )

    zone = sub.add_parser(
        "zone",
        help="run one zone of a world as its own process (Kafka bus)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run one zone of the world in PATH. Every zone process of a world must use the\n"
            "same world folder, --zones and bus; each waits until all zones are up, then ticks.\n"
            "Entities walk from zone to zone through the bus (handoffs), neighbours see each\n"
            "other's entities near borders (ghosts). Players connect to `shardworld gateway`.\n\n"
            "example (a world of 2 zones and a gateway; `make kafka` runs a broker):\n"
            "  shardworld zone zones/arena --zones 2 --zone z0 --bus kafka://127.0.0.1:9092 &\n"
            "  shardworld zone zones/arena --zones 2 --zone z1 --bus kafka://127.0.0.1:9092 &\n"
            "  shardworld gateway zones/arena --zones 2 --bus kafka://127.0.0.1:9092 --dev"
        ),
    )
    zone.add_argument("path", help="world folder, e.g. zones/arena")
    zone.add_argument("--zone", required=True, help="which zone: its name (z0, z1, ...)")
    _add_world_args(zone)
    zone.add_argument(
        "--store",
        help="the coordinator's store (redis://HOST:PORT/DB): start from its current cell map, "
        "hold a lease there and checkpoint to it (failover needs this); player records",
    )
    zone.add_argument(
        "--lease-ttl", type=float, default=3.0, help="seconds a silent zone keeps its cells"
    )
    zone.add_argument(
        "--checkpoint-every", type=float, default=2.0, help="seconds between checkpoints"
    )
    zone.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    _add_metrics_args(zone)

    gw = sub.add_parser(
        "gateway",
        help="run a WebSocket gateway for a world whose zones run elsewhere",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Accept players over WebSockets and route them to whichever zone simulates their\n"
            "entity; a player stays connected here while its entity crosses zones.\n"
            "Each gateway of a world needs its own --index."
        ),
    )
    gw.add_argument("path", help="world folder, e.g. zones/arena")
    _add_world_args(gw)
    gw.add_argument("--index", type=int, default=0, help="this gateway's number (default 0)")
    gw.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    gw.add_argument("--port", type=int, default=7700, help="port (default 7700)")
    gw.add_argument("--dev", action="store_true", help="accept players without a token")
    gw.add_argument("--secret", default=None, help="token secret (default: $SHARDWORLD_SECRET)")
    gw.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    _add_gateway_args(gw)
    _add_metrics_args(gw)

    co = sub.add_parser(
        "coordinator",
        help="move cells between zones as the load shifts (leader or standby)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Watch the zones' load reports and move split lines between zones toward\n"
            "balance. Several coordinators may run: one leads (a lease in the store), the\n"
            "others stand by and take over within the lease time when it dies. Every\n"
            "change of the cell map is written to the store's event log (the audit trail).\n\n"
            "With --elastic it also adds zones when a zone stays too busy for line moves to\n"
            "help (starting `shardworld zone` processes here) and merges cold neighbours,\n"
            "stopping the zone merged away, between --min-zones and --max-zones.\n\n"
            "examples:\n"
            "  shardworld coordinator zones/arena --bus kafka://127.0.0.1:9092 \\\n"
            "      --store redis://127.0.0.1:6379/0\n"
            "  shardworld coordinator zones/arena --bus kafka://127.0.0.1:9092 \\\n"
            "      --store redis://127.0.0.1:6379/0 --elastic --max-zones 8 --zone-logs logs/"
        ),
    )
    co.add_argument("path", help="world folder, e.g. zones/arena")
    _add_world_args(co)
    co.add_argument("--store", required=True, help="redis://HOST:PORT/DB")
    co.add_argument("--node-id", help="this coordinator's name (default: host:pid)")
    co.add_argument("--period", type=float, default=1.0, help="seconds between rounds")
    co.add_argument("--lease-ttl", type=float, default=3.0, help="leader lease in seconds")
    co.add_argument("--no-rebalance", action="store_true", help="lead, but never move cells")
    co.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    _add_metrics_args(co)
    _add_map_args(co, "serve the live world map on http://HOST:PORT/map (default 0: off)")
    co.add_argument(
        "--high-water-ms",
        type=float,
        help="a zone whose tick p99 stays above this is split (default: half the tick budget)",
    )
    co.add_argument(
        "--low-water-ms",
        type=float,
        help="two sibling zones whose tick p99 stays below this merge (default: 15%% of the "
        "tick budget)",
    )
    co.add_argument(
        "--split-after", type=float, help="seconds a zone must stay hot before a split (5)"
    )
    co.add_argument(
        "--merge-after", type=float, help="seconds two zones must stay cold before a merge (60)"
    )
    co.add_argument(
        "--cooldown", type=float, help="seconds between two splits or merges (default 15)"
    )
    co.add_argument(
        "--rebalance-config",
        metavar="FILE",
        help="a JSON object of rebalancer settings (RebalanceConfig fields, or high_water_ms "
        "and low_water_ms) over the options above; with --elastic it is read again whenever "
        "it changes",
    )
    el = co.add_argument_group("elastic zones")
    el.add_argument(
        "--elastic",
        action="store_true",
        help="add and remove zones as the load needs, running them as processes here",
    )
    el.add_argument("--min-zones", type=int, help="never fewer zones with cells (default: --zones)")
    el.add_argument(
        "--max-zones", type=int, help="never more zones with cells (default: 2 x --zones)"
    )
    el.add_argument(
        "--zone-args",
        default="",
        help="more arguments for the zone processes, e.g. '--lease-ttl 2' "
        "(--tick-hz, --zones and --cell-size are passed on already)",
    )
    el.add_argument(
        "--zone-logs", metavar="DIR", help="write each started zone's output to DIR/zone-NAME.log"
    )
    el.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds a new zone has to come up before it is given up (default 60)",
    )
    el.add_argument(
        "--retire-quiet",
        type=float,
        default=2.0,
        help="seconds a merged-away zone must report no entities before it is stopped (2)",
    )
    el.add_argument(
        "--spare-idle",
        type=float,
        default=60.0,
        help="seconds a started zone that got no cells waits for a split before it stops (60)",
    )
    el.add_argument(
        "--stop-zones-on-exit",
        action="store_true",
        help="stop the zones this coordinator started when it exits (default: they keep "
        "serving the world, whoever coordinates it next)",
    )

    sub.add_parser(
        "bots", help="drive simulated players (see `shardworld bots --help`)", add_help=False
    )
    sub.add_parser(
        "token", help="issue a player token (see `shardworld token --help`)", add_help=False
    )
    sub.add_parser(
        "plan",
        help="size a world for N players (see `shardworld plan --help`)",
        add_help=False,
    )
    sub.add_parser(
        "warmup",
        help="compile and cache every kernel",
        description="Compile every numba kernel into the on-disk cache; report how long it took.",
    )
    from shardworld.scaffold import add_parser as add_new_parser

    add_new_parser(sub)
    return p


def _add_world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bus",
        required=True,
        help="the world's bus, e.g. kafka://127.0.0.1:9092 (memory:// only works in one process)",
    )
    p.add_argument("--zones", type=int, help="zones in the world (default: world.toml)")
    p.add_argument("--cell-size", type=float, help="cell edge in metres (default: world.toml)")
    p.add_argument("--tick-hz", type=float, help="override the world's tick rate")
    p.add_argument(
        "--world-name", help="topic prefix (default: the world's name); one per running world"
    )


def _add_gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket-sndbuf",
        type=int,
        default=None,
        metavar="BYTES",
        help="SO_SNDBUF per player socket (default: the OS autotunes, which can hide a slow "
        "reader behind megabytes of kernel buffer; docs/gateway.md)",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=1024,
        help="pending connections the listening socket queues (default 1024, capped by "
        "net.core.somaxconn)",
    )


def _gateway_config(args: argparse.Namespace, secret: str | None) -> Any:
    from shardworld.gateway import GatewayConfig

    return GatewayConfig(
        host=args.host,
        port=args.port,
        dev=args.dev,
        secret=secret or None,
        socket_sndbuf=args.socket_sndbuf,
        backlog=args.backlog,
    )


def _add_metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default 0: off)",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="metrics address (default 127.0.0.1)"
    )


async def _start_metrics(args: argparse.Namespace, *collectors: Any) -> Any:
    """A started /metrics server over ``collectors``, or None without --metrics-port."""
    port = int(getattr(args, "metrics_port", 0) or 0)
    if port <= 0:
        return None
    from shardworld.metrics import MetricsServer, Registry

    registry = Registry()
    for c in collectors:
        registry.register(c)
    server = MetricsServer(registry, args.metrics_host, port)
    await server.start()
    print(f"shardworld: Prometheus metrics on {server.url}", flush=True)
    return server


async def _stop_metrics(server: Any) -> None:
    if server is not None:
        await server.stop()


DEFAULT_MAP_PORT = 7780
"""Where `shardworld run` serves the live map of a world with a coordinator."""


def _add_map_args(p: argparse.ArgumentParser, port_help: str) -> None:
    p.add_argument("--map-port", type=int, default=None, help=port_help)
    p.add_argument("--map-host", default="127.0.0.1", help="map address (default 127.0.0.1)")


async def _start_map(coord: Any, args: argparse.Namespace, tick_hz: float, default: int) -> Any:
    """A started live map server fed by ``coord``, or None (--map-port 0). A busy default
    port only warns: the world runs without its map."""
    from shardworld.coordinator.mapview import MapServer, MapView

    port = default if args.map_port is None else int(args.map_port)
    if port <= 0:
        return None
    view = MapView(tick_hz=tick_hz, stale_after_s=coord.stale_after_s)
    coord.view = view
    coord.update_view()
    server = MapServer(view, args.map_host, port)
    try:
        await server.start()
    except OSError as exc:
        if args.map_port is not None:
            raise
        coord.view = None
        log.warning("live map not served on port %d (%s); --map-port picks another", port, exc)
        return None
    return server


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shardworld`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `bots`, `token` and `plan` own their whole argument list (and their --help).
    if argv and argv[0] == "bots":
        from shardworld.client.bots import bots_main

        return bots_main(argv[1:])
    if argv and argv[0] == "token":
        from shardworld.gateway.auth import token_main

        return token_main(argv[1:])
    if argv and argv[0] == "plan":
        from shardworld.capacity import plan_main

        return plan_main(argv[1:])
    args = _parser().parse_args(argv)
    from shardworld.logs import configure_logging

    path = getattr(args, "path", None)
    configure_logging(
        args.log_level,
        args.log_format,
        role=args.command,
        world=getattr(args, "world_name", None) or (Path(path).name if path else None),
        zone=getattr(args, "zone", None),
        gateway=getattr(args, "index", None) if args.command == "gateway" else None,
    )
    if args.command == "warmup":
        return _warmup()
    if args.command == "new":
        from shardworld.scaffold import new_main

        return new_main(args)
    if args.command in ("bots", "token", "plan"):
        raise AssertionError("handled before parsing")  # pragma: no cover
    if args.command == "run":
        return _run(args)
    if args.command == "zone":
        return _zone_main(args)
    if args.command == "gateway":
        return _gateway_main(args)
    if args.command == "coordinator":
        return _coordinator_main(args)
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
    zones = args.zones if args.zones is not None else world.sharding.zones
    if zones < 1:
        print("shardworld run: --zones must be >= 1", file=sys.stderr)
        return 2
    if zones > 1 or args.bus != "memory://":
        if args.players:
            print("shardworld run: --players needs a single zone (--zones 1)", file=sys.stderr)
            return 2
        world.config = config
        try:
            summary = _runner()(_serve_sharded(world, zones, args, secret, draw_map))
        except (OSError, ValueError) as exc:
            print(f"shardworld run: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(summary, sort_keys=True, default=str), flush=True)
        return 0
    zone = Zone(config, world.make_handler())
    try:
        summary = _runner()(_serve(zone, args, secret, draw_map))
    except OSError as exc:
        print(f"shardworld run: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


def _page_url(ws_url: str) -> str:
    """The browser game a gateway serves at ``/`` (docs/play.md)."""
    return ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rstrip("/") + "/"


def _print_how_to_join(gateway: Any, dev: bool) -> None:
    if gateway is not None:
        how = "no token needed (--dev)" if dev else "players need a token: shardworld token"
        print(
            f"shardworld: players connect to {gateway.url} ({how}).\n"
            f"            play in a browser: {_page_url(gateway.url)}  (WASD, Enter to chat)\n"
            f"            try: .venv/bin/shardworld bots --url {gateway.url} --count 20"
            f" --duration 60",
            flush=True,
        )
    print("shardworld: Ctrl-C stops.", flush=True)


def _runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run


async def _serve(
    zone: Any, args: argparse.Namespace, secret: str, draw_map: bool
) -> dict[str, Any]:
    """Run the zone (and gateway, and bots); print live figures; return a summary."""
    from shardworld.zone import MODE_PLAYER

    zone.warm_up()
    cfg = zone.config
    store = await _player_store(zone, args.store, cfg.name)
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
        from shardworld.gateway import EmbeddedWorld, Gateway

        gateway = Gateway(
            EmbeddedWorld(zone),
            _gateway_config(args, secret),
        )
        await gateway.start()

    print(
        f"shardworld: world {cfg.name!r} from {args.path}: {len(zone.entities)} entities, "
        f"{cfg.tick_hz:g} Hz ticks, {cfg.snapshot_hz:g} Hz snapshots.",
        flush=True,
    )
    _print_how_to_join(gateway, args.dev)
    from shardworld.metrics import gateway_collector, zone_collector

    metrics = await _start_metrics(
        args,
        zone_collector(zone, cfg.name),
        *([gateway_collector(gateway, cfg.name)] if gateway is not None else []),
    )

    stop = _stop_event()
    bots_proc: asyncio.subprocess.Process | None = None
    if args.bots and gateway is not None:
        bots_proc = await _start_bots(args, gateway.url, secret)

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
    bots_summary = await _stop_bots(bots_proc)
    if gateway is not None:
        await gateway.stop()
    zone.stop()
    for t in side:
        t.cancel()
    await asyncio.gather(*side, return_exceptions=True)
    await asyncio.gather(run_task, stop_wait, return_exceptions=True)
    await _stop_metrics(metrics)
    if store is not None:
        await store.close()  # after the zone's last save (the end of zone.run)
    if run_task.done() and not run_task.cancelled() and run_task.exception():
        raise run_task.exception()  # type: ignore[misc]
    out_summary: dict[str, Any] = {"summary": "run", "world": cfg.name, **zone.stats.report()}
    if gateway is not None:
        out_summary["gateway"] = gateway.stats()
    if bots_summary is not None:
        out_summary["bots"] = bots_summary
    return out_summary


async def _player_store(zone: Any, url: str | None, world: str) -> Any:
    """Open ``url`` and keep the zone's player records there, if its world has any."""
    if not url or not zone.handler.persistent:
        return None
    from shardworld.store import open_store

    store = open_store(url, world)
    await store.start()
    zone.use_store(store)
    return store


async def _start_bots(
    args: argparse.Namespace, url: str, secret: str
) -> asyncio.subprocess.Process:
    cmd = [
        sys.executable,
        "-m",
        "shardworld.cli",
        "bots",
        "--url",
        url,
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
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    print(f"shardworld: started {args.bots} bots (pid {proc.pid}).", flush=True)
    return proc


async def _stop_bots(proc: asyncio.subprocess.Process | None) -> Any:
    """Stop the bots process we started (SIGINT, then kill) and read its JSON summary."""
    if proc is None:
        return None
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 10.0)
        lines = out.decode(errors="replace").strip().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (TimeoutError, json.JSONDecodeError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def _load_for(command: str, args: argparse.Namespace) -> Any:
    """Load the world folder and apply --tick-hz; prints the problem and returns None."""
    from shardworld.zone import ConfigError, load_world

    try:
        world = load_world(args.path)
        # The world's [demo] NPCs, as `run` spawns them (on_start runs on the first zone).
        extra = {"npcs": int(world.demo.get("npcs", 0)), **world.config.extra}
        world.config = world.config.with_(extra=extra)
        if args.tick_hz:
            world.config = world.config.with_(
                tick_hz=args.tick_hz, snapshot_hz=min(world.config.snapshot_hz, args.tick_hz)
            )
    except ConfigError as exc:
        print(f"shardworld {command}: {exc}", file=sys.stderr)
        return None
    if args.zones is not None and args.zones < 1:
        print(f"shardworld {command}: --zones must be >= 1", file=sys.stderr)
        return None
    if args.bus.startswith("memory://"):
        print(
            f"shardworld {command}: a memory:// bus cannot reach other processes; "
            "use --bus kafka://HOST:PORT (or `shardworld run` for one process)",
            file=sys.stderr,
        )
        return None
    return world


def _zone_main(args: argparse.Namespace) -> int:
    world = _load_for("zone", args)
    if world is None:
        return 2
    try:
        return int(_runner()(_serve_zone(world, args)))
    except (OSError, ValueError, KeyError, TimeoutError) as exc:
        print(f"shardworld zone: {exc}", file=sys.stderr)
        return 1


async def _serve_zone(world: Any, args: argparse.Namespace) -> int:
    from shardworld.bus import open_bus
    from shardworld.sharding.cluster import initial_map, make_zone
    from shardworld.sharding.node import ZoneNode

    cellmap = initial_map(world, args.zones, args.cell_size)
    name = args.world_name or world.config.name
    if args.store:
        cellmap = await _current_map(args.store, name, cellmap)
    if args.zone not in cellmap.zones:
        raise KeyError(f"no zone {args.zone!r}: this world has {', '.join(cellmap.zones)}")
    zone = make_zone(world, cellmap, args.zone)
    bus = open_bus(args.bus)
    await bus.start()
    store = None
    if args.store:
        from shardworld.store import open_store

        store = open_store(args.store, name)
        await store.start()
    node = ZoneNode(
        zone,
        bus,
        cellmap,
        name,
        store=store,
        lease_ttl_s=args.lease_ttl,
        checkpoint_every_s=args.checkpoint_every,
    )
    if store is not None:
        zone.use_store(store)  # player records, if the world has persistent fields
    zone.warm_up()
    await node.start()
    from shardworld.metrics import zone_collector

    metrics = await _start_metrics(args, zone_collector(zone, name, node))
    stop = _stop_event()
    print(
        f"shardworld: zone {args.zone} of world {name!r} ({cellmap.describe()}); "
        f"waiting for the other zones on {args.bus}",
        flush=True,
    )
    waiting = asyncio.create_task(node.wait_for_peers(timeout=3600.0))
    await asyncio.wait(
        [waiting, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    if not waiting.done():
        waiting.cancel()
        await _stop_metrics(metrics)
        await node.close()
        await bus.close()
        if store is not None:
            await store.close()
        return 0
    waiting.result()
    print(f"shardworld: zone {args.zone}: all zones up; ticking. Ctrl-C stops.", flush=True)
    run_task = asyncio.create_task(zone.run())

    async def report() -> None:
        while True:
            await asyncio.sleep(5.0)
            st = zone.stats.report()
            ns = node.stats.report()
            log.info(
                "zone %s tick %d p50 %.2f ms p99 %.2f ms | entities %d ghosts %d observers %d | "
                "handoffs out %d in %d | ghost bytes %d",
                args.zone,
                zone.tick,
                st["p50_ms"],
                st["p99_ms"],
                st["entities"],
                st["ghosts"],
                st["observers"],
                ns["handoffs_out"],
                ns["handoffs_in"],
                ns["ghost_bytes_out"],
            )

    side = [asyncio.create_task(report())]
    if args.seconds > 0:
        side.append(asyncio.create_task(_set_later(stop, args.seconds)))
    await asyncio.wait(
        [run_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    zone.stop()
    await asyncio.gather(run_task, return_exceptions=True)
    for t in side:
        t.cancel()
    await _stop_metrics(metrics)
    await node.close()
    await bus.close()
    if store is not None:
        if node.lease is not None:
            await store.release_lease(node.lease)
        await store.close()
    summary = {"summary": "zone", "zone": args.zone, **zone.stats.report()}
    summary["node"] = node.stats.report()
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)
    if run_task.done() and not run_task.cancelled() and run_task.exception() is not None:
        return 1
    return 0


async def _current_map(store_url: str, world: str, fallback: Any) -> Any:
    """The cell map the world's store holds (a coordinator may have moved cells)."""
    from shardworld.sharding.cellmap import CellMap
    from shardworld.store import open_store

    store = open_store(store_url, world)
    await store.start()
    try:
        stored = await store.get_map()
    finally:
        await store.close()
    if stored is None:
        return fallback
    cm = CellMap.from_bytes(stored[1])
    log.info("cell map epoch %d from %s", cm.epoch, store_url)
    return cm


def _coordinator_main(args: argparse.Namespace) -> int:
    world = _load_for("coordinator", args)
    if world is None:
        return 2
    if args.store.startswith("memory://"):
        print(
            "shardworld coordinator: a memory:// store is private to one process; "
            "use --store redis://HOST:PORT/DB",
            file=sys.stderr,
        )
        return 2
    try:
        config = _rebalance_config(world, args)
    except (OSError, ValueError) as exc:
        print(f"shardworld coordinator: {exc}", file=sys.stderr)
        return 2
    try:
        return int(_runner()(_serve_coordinator(world, args, config)))
    except (OSError, ValueError) as exc:
        print(f"shardworld coordinator: {exc}", file=sys.stderr)
        return 1


def _rebalance_config(world: Any, args: argparse.Namespace, with_file: bool = True) -> Any:
    """The rebalancer's settings from the coordinator's options, and from its
    --rebalance-config file if ``with_file`` (OSError, ValueError)."""
    import dataclasses

    from shardworld.coordinator.rebalancer import RebalanceConfig

    budget = 1000.0 / float(world.config.tick_hz)
    changes: dict[str, Any] = {"tick_budget_ms": budget}
    if args.high_water_ms is not None:
        changes["high_water"] = args.high_water_ms / budget
    if args.low_water_ms is not None:
        changes["low_water"] = args.low_water_ms / budget
    if args.split_after is not None:
        changes["split_after_s"] = args.split_after
    if args.merge_after is not None:
        changes["merge_after_s"] = args.merge_after
    if args.cooldown is not None:
        changes["structural_cooldown_s"] = args.cooldown
    start = args.zones if args.zones is not None else world.sharding.zones
    lo = args.min_zones if args.min_zones is not None else start
    hi = args.max_zones if args.max_zones is not None else max(lo, 2 * start)
    changes["min_zones"], changes["max_zones"] = lo, hi
    config = RebalanceConfig()
    # Only one mark given: keep the other on its side of it.
    if "low_water" in changes and "high_water" not in changes:
        changes["high_water"] = max(config.high_water, changes["low_water"] * 2.0)
    if "high_water" in changes and "low_water" not in changes:
        changes["low_water"] = min(config.low_water, changes["high_water"] / 2.0)
    config = dataclasses.replace(config, **changes)
    if with_file and args.rebalance_config:
        config = _config_file(args.rebalance_config, config)
    return config


def _config_file(path: str, base: Any) -> Any:
    """``base`` with the settings of the JSON object in ``path`` (OSError, ValueError)."""
    import dataclasses

    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of rebalancer settings")
    data = dict(data)
    budget = float(data.get("tick_budget_ms", base.tick_budget_ms))
    for key in ("high_water_ms", "low_water_ms"):
        if key in data:
            value = data.pop(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{path}: {key} must be a number, got {value!r}")
            data[key[: -len("_ms")]] = float(value) / budget
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown rebalancer settings: {', '.join(unknown)}")
    try:
        return dataclasses.replace(base, **data)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from exc


async def _serve_coordinator(world: Any, args: argparse.Namespace, config: Any) -> int:
    import os
    import shlex
    import socket

    from shardworld.bus import open_bus
    from shardworld.coordinator.coordinator import Coordinator, Planner
    from shardworld.coordinator.elastic import ElasticPlanner, ScalingSettings
    from shardworld.coordinator.planner import RebalancingPlanner
    from shardworld.coordinator.provider import LocalProvider
    from shardworld.sharding.cluster import initial_map
    from shardworld.store import open_store

    name = args.world_name or world.config.name
    node_id = args.node_id or f"{socket.gethostname()}:{os.getpid()}"
    provider: LocalProvider | None = None
    planner: Planner | None = None
    elastic: ElasticPlanner | None = None
    if args.elastic and not args.no_rebalance:
        zone_args = []
        for flag, value in (
            ("--tick-hz", args.tick_hz),
            ("--zones", args.zones),
            ("--cell-size", args.cell_size),
        ):
            if value is not None:
                zone_args += [flag, str(value)]
        provider = LocalProvider(
            args.path,
            args.bus,
            args.store,
            extra_args=[*zone_args, *shlex.split(args.zone_args)],
            log_dir=args.zone_logs,
            world_name=args.world_name,
        )
        planner = elastic = ElasticPlanner(config)
    elif not args.no_rebalance:
        planner = RebalancingPlanner(config)
    bus = open_bus(args.bus)
    await bus.start()
    store = open_store(args.store, name)
    await store.start()
    coord = Coordinator(
        bus,
        store,
        name,
        initial_map(world, args.zones, args.cell_size),
        node_id,
        planner=planner,
        period_s=args.period,
        lease_ttl_s=args.lease_ttl,
        provider=provider,
        scaling=ScalingSettings(args.start_timeout, args.retire_quiet, args.spare_idle),
    )
    await coord.start()
    from shardworld.metrics import coordinator_collector

    metrics = await _start_metrics(args, coordinator_collector(coord, name))
    map_server = await _start_map(coord, args, world.config.tick_hz, 0)
    print(
        f"shardworld: coordinator {node_id} of world {name!r} (bus {args.bus}, store "
        f"{args.store}); leads when it holds the lease. Ctrl-C stops.",
        flush=True,
    )
    if map_server is not None:
        print(f"shardworld: live world map on {map_server.url}", flush=True)
    stop = _stop_event()
    if args.seconds > 0:
        asyncio.get_running_loop().call_later(args.seconds, stop.set)
    task = asyncio.create_task(coord.run())

    async def report() -> None:
        while True:
            await asyncio.sleep(5.0)
            st = coord.status()
            log.info(
                "coordinator %s: %s, map epoch %d, %d maps published, zones %s%s",
                node_id,
                "leader" if st["leader"] else "standby",
                st["epoch"],
                st["maps_published"],
                {n: round(z["p99_ms"], 1) for n, z in st["zones"].items()},
                f", elastic {coord.elastic_status()}" if provider is not None else "",
            )

    async def reload() -> None:
        # The rebalancer's settings follow the file (an operator retunes a running world).
        assert elastic is not None
        seen = os.stat(args.rebalance_config).st_mtime_ns
        while True:
            await asyncio.sleep(args.period)
            try:
                mtime = os.stat(args.rebalance_config).st_mtime_ns
                if mtime == seen:
                    continue
                seen = mtime
                base = _rebalance_config(world, args, with_file=False)
                elastic.set_config(_config_file(args.rebalance_config, base))
            except (OSError, ValueError) as exc:
                log.warning("coordinator %s: settings not reloaded: %s", node_id, exc)
                continue
            log.info("coordinator %s: rebalancer settings from %s", node_id, args.rebalance_config)

    side = [asyncio.create_task(report())]
    if elastic is not None and args.rebalance_config:
        side.append(asyncio.create_task(reload()))
    await asyncio.wait(
        [task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    coord.stop()
    for t in side:
        t.cancel()
    await asyncio.gather(task, *side, return_exceptions=True)
    await _stop_metrics(metrics)
    if map_server is not None:
        await map_server.stop()
    await coord.close()
    summary = {"summary": "coordinator", **coord.status()}
    if provider is not None:
        summary["elastic"] = coord.elastic_status()
        await provider.close(stop=args.stop_zones_on_exit)
    await store.close()
    await bus.close()
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0


async def _set_later(event: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    event.set()


def _gateway_main(args: argparse.Namespace) -> int:
    import os

    world = _load_for("gateway", args)
    if world is None:
        return 2
    secret = args.secret or os.environ.get("SHARDWORLD_SECRET", "")
    if not args.dev and not secret:
        print(
            "shardworld gateway: players need tokens: pass --secret (or set SHARDWORLD_SECRET), "
            "or --dev to accept anonymous players",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.index <= 0xFFFF:
        print("shardworld gateway: --index must be 0..65535", file=sys.stderr)
        return 2
    try:
        return int(_runner()(_serve_gateway(world, args, secret)))
    except (OSError, ValueError) as exc:
        print(f"shardworld gateway: {exc}", file=sys.stderr)
        return 1


async def _serve_gateway(world: Any, args: argparse.Namespace, secret: str) -> int:
    from shardworld.bus import open_bus
    from shardworld.gateway import Gateway
    from shardworld.sharding.cluster import initial_map, make_zone, sharded_world_info
    from shardworld.sharding.port import BusWorld

    cellmap = initial_map(world, args.zones, args.cell_size)
    name = args.world_name or world.config.name
    # The zone is never run: it only describes the world's fields for WELCOME.
    info = sharded_world_info(world, make_zone(world, cellmap, cellmap.zones[0]))
    bus = open_bus(args.bus)
    await bus.start()
    port = BusWorld(bus, name, info, cellmap, gateway=args.index)
    await port.start()
    gateway = Gateway(port, _gateway_config(args, secret))
    await gateway.start()
    from shardworld.metrics import gateway_collector

    metrics = await _start_metrics(args, gateway_collector(gateway, name, args.index))
    how = "no token needed (--dev)" if args.dev else "players need a token: shardworld token"
    print(
        f"shardworld: gateway {args.index} of world {name!r} on {args.bus}: "
        f"players connect to {gateway.url} ({how}); browser game at "
        f"{_page_url(gateway.url)}. Ctrl-C stops.",
        flush=True,
    )
    stop = _stop_event()
    if args.seconds > 0:
        asyncio.get_running_loop().call_later(args.seconds, stop.set)
    await stop.wait()
    await _stop_metrics(metrics)
    await gateway.stop()
    await port.close()
    await bus.close()
    print(json.dumps({"summary": "gateway", **gateway.stats()}, sort_keys=True, default=str))
    return 0


async def _serve_sharded(
    world: Any, zones: int, args: argparse.Namespace, secret: str, draw_map: bool
) -> dict[str, Any]:
    """Run every zone of the world in this process on one bus, with a gateway and bots."""
    from shardworld.sharding.cluster import Cluster

    cluster = Cluster(world, zones=zones, bus_url=args.bus, gateway=not args.no_gateway)
    await cluster.start()
    coord = None
    store = None
    if not args.no_coordinator or cluster.zones[0].handler.persistent:
        from shardworld.store import open_store

        store_url = args.store
        if store_url == "memory://":
            store_url = f"memory://{cluster.name}-{id(cluster):x}"
        store = open_store(store_url, cluster.name)
        await store.start()
        cluster.use_player_store(store)  # player records, if the world has persistent fields
    if not args.no_coordinator:
        from shardworld.coordinator.coordinator import Coordinator
        from shardworld.coordinator.planner import RebalancingPlanner

        assert store is not None
        coord = Coordinator(
            cluster.bus, store, cluster.name, cluster.cellmap, "run", RebalancingPlanner()
        )
        await coord.start()
    map_server = None
    if coord is not None:
        map_server = await _start_map(coord, args, world.config.tick_hz, DEFAULT_MAP_PORT)
    gateway = None
    if cluster.port is not None:
        from shardworld.gateway import Gateway

        gateway = Gateway(
            cluster.port,
            _gateway_config(args, secret),
        )
        await gateway.start()
    cfg = world.config
    print(
        f"shardworld: world {cfg.name!r} from {args.path}: {cluster.entity_count()} entities "
        f"in {zones} zones on {cluster.bus_url}, {cfg.tick_hz:g} Hz ticks.\n"
        f"            {cluster.cellmap.describe()}",
        flush=True,
    )
    if map_server is not None:
        print(f"shardworld: live world map on {map_server.url}", flush=True)
    _print_how_to_join(gateway, args.dev)
    from shardworld.metrics import coordinator_collector, gateway_collector, zone_collector

    metrics = await _start_metrics(
        args,
        *(zone_collector(n.zone, cluster.name, n) for n in cluster.nodes),
        *([gateway_collector(gateway, cluster.name)] if gateway is not None else []),
        *([coordinator_collector(coord, cluster.name)] if coord is not None else []),
    )
    stop = _stop_event()
    bots_proc = None
    if args.bots and gateway is not None:
        bots_proc = await _start_bots(args, gateway.url, secret)

    async def report() -> None:
        started = last_t = time.perf_counter()
        last_hand = last_frames = 0
        while not stop.is_set():
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            span = max(1e-9, now - last_t)
            reps = [z.stats.report() for z in cluster.zones]
            hand = sum(n.stats.handoffs_in for n in cluster.nodes)
            per_zone = " ".join(
                f"{z.config.name}:{len(z.entities)}/{r['p99_ms']:.1f}ms"
                for z, r in zip(cluster.zones, reps, strict=True)
            )
            line = (
                f"t={now - started:6.1f}s tick={cluster.zones[0].tick % 1_000_000:<6d} "
                f"zones(entities/p99) {per_zone} | handoffs/s={(hand - last_hand) / span:.0f} "
                f"ghosts={sum(len(z.ghosts) for z in cluster.zones)} "
                f"late={sum(z.stats.late_ticks for z in cluster.zones)}"
            )
            if coord is not None:
                line += f" map={coord.cellmap.epoch}"
            last_hand = hand
            if gateway is not None:
                gs = gateway.stats()
                frames = int(gs.get("snapshots_sent", 0))
                line += (
                    f" | players={gs.get('joined', 0)} frames/s={(frames - last_frames) / span:.0f}"
                )
                last_frames = frames
            last_t = now
            if draw_map:
                picture = density_map_of(
                    cluster.positions(), cluster.zones[0].bounds, f"{cfg.name}: {zones} zones"
                )
                sys.stdout.write("\x1b[H\x1b[2J" + picture + "\n" + line + "\n")
                sys.stdout.flush()
            else:
                print(line, flush=True)

    side = [asyncio.create_task(report())]
    if args.seconds > 0:
        side.append(asyncio.create_task(_set_later(stop, args.seconds)))
    if coord is not None:
        side.append(asyncio.create_task(coord.run()))
    run_task = asyncio.create_task(cluster.run())
    await asyncio.wait(
        [run_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    stop.set()
    await _stop_metrics(metrics)
    if map_server is not None:
        await map_server.stop()
    bots_summary = await _stop_bots(bots_proc)
    if gateway is not None:
        await gateway.stop()
    cluster.stop()
    for t in side:
        t.cancel()
    await asyncio.gather(run_task, *side, return_exceptions=True)
    out: dict[str, Any] = {
        "summary": "run",
        "world": cfg.name,
        "zones": cluster.report(),
        "entities": cluster.entity_count(),
        "in_flight": cluster.in_flight(),
    }
    if coord is not None:
        out["coordinator"] = coord.status()
        await coord.close()
    await cluster.close()
    if store is not None:
        await store.close()
    if gateway is not None:
        out["gateway"] = gateway.stats()
    if bots_summary is not None:
        out["bots"] = bots_summary
    return out


SHADES = " .:-=+*#%@"


def density_map(zone: Any, width: int = 64, height: int = 24) -> str:
    """An ASCII picture of where a zone's entities are, darker = denser."""
    observers = int(np.count_nonzero(zone.entities["observer"]))
    label = f"{zone.config.name}: {len(zone.entities)} entities, {observers} players"
    return density_map_of(zone.entities["pos"], zone.bounds, label, width, height)


def density_map_of(
    pos: Any,
    bounds: tuple[float, float, float, float],
    label: str,
    width: int = 64,
    height: int = 24,
) -> str:
    """An ASCII picture of positions over ``bounds``, darker = denser."""
    x0, y0, x1, y1 = bounds
    hist, _, _ = np.histogram2d(
        pos[:, 1], pos[:, 0], bins=(height, width), range=((y0, y1), (x0, x1))
    )
    top = max(1.0, float(hist.max()))
    levels = np.minimum((np.sqrt(hist / top) * (len(SHADES) - 1)).round().astype(int), 9)
    rows = ["".join(SHADES[v] for v in row) for row in levels[::-1]]
    return "\n".join([f"+{'-' * width}+ {label}"] + [f"|{r}|" for r in rows] + [f"+{'-' * width}+"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
