"""Locust swarm of shardworld players over WebSockets (protocol v1). See docs/loadtest.md.

    locust -f loadtest/locustfile.py --headless -H ws://127.0.0.1:7700 \\
        -u 200 -r 50 -t 60s --behavior wander --summary-json swarm.json

``-H`` may list several gateways, comma-separated: players take them in turn.

Every Locust user is one player (:class:`loadtest.client.SwarmPlayer`): it joins, sends
inputs at ``--input-hz`` (default 20) and PINGs every second, reads every snapshot in its own
greenlet, and reconnects with its resume token if the server drops it. ``--behavior``
picks what players do: ``wander``, ``rush`` (to ``--hotspot``), ``commute`` (across zone
borders), ``storm`` (drop and come back every ``--storm-every`` seconds, all together) or
``mix`` (the four in turn).

What Locust's tables show (request type / name):

``JOIN join|resume|rejoin``  time to WELCOME; a failure names why (error or close code)
``SNAP age``                 snapshot age in ms (lower bound, docs/client.md); its
                             requests/s are snapshots/s, its average size bytes per snapshot
``ERROR <code>``, ``KICK <code>``, ``CLOSE <code>``
                             failures by protocol error code and by close code
``RATE ...``                 every ``--rate-every`` s per worker: snapshots/s, KiB/s and
                             players, as the "response time" column (a value, not a time)

At the end the master (or the single process) prints one JSON summary line, merged from
every worker's exact counters and histograms, and writes it to ``--summary-json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `loadtest` as a package

import gevent
import locust.runners
from gevent.lock import Semaphore
from locust import User, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.behaviors import BEHAVIORS, Border, parse_borders
from loadtest.client import Settings, SwarmPlayer
from loadtest.layout import borders_of_world
from loadtest.metrics import WorkerState, merge_states, summarize

DEFAULT_URL = "ws://127.0.0.1:7700"
TOKEN_TTL_S = 24 * 3600.0
#: Player ids of different workers never overlap: worker i signs ids from
#: --first-player-id + i * this.
IDS_PER_WORKER = 10_000_000


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser  # LocustArgumentParser: add_argument takes is_secret, include_in_web_ui
    g.add_argument(
        "--behavior",
        choices=[*BEHAVIORS, "mix"],
        default="wander",
        help="what players do: wander, rush, commute, storm, or mix (the four in turn)",
    )
    g.add_argument("--input-hz", type=float, default=20.0, help="inputs per second (20)")
    g.add_argument("--ping-interval", type=float, default=1.0, help="seconds between PINGs")
    g.add_argument(
        "--token-secret",
        default="",
        is_secret=True,
        help="sign player tokens with this secret (default: none, for a --dev gateway)",
    )
    g.add_argument("--first-player-id", type=int, default=1, help="player id of the first user")
    g.add_argument("--hotspot", default="", help="rush target X,Y in metres (world centre)")
    g.add_argument("--hotspot-radius", type=float, default=20.0, help="rush crowd radius (m)")
    g.add_argument(
        "--rush-at", type=float, default=0.0, help="seconds after the start the rush begins"
    )
    g.add_argument(
        "--borders",
        default="",
        help="zone borders for commute: x=1000,y=1000 or x=1000:0:1000,... "
        "(default: from --world-dir, else the world's middle lines)",
    )
    g.add_argument("--world-dir", default="", help="world folder to read the zone split from")
    g.add_argument("--world-zones", type=int, default=0, help="zones of that split (world.toml)")
    g.add_argument(
        "--commute-distance", type=float, default=30.0, help="metres each side of the border"
    )
    g.add_argument("--storm-every", type=float, default=15.0, help="seconds between storms")
    g.add_argument(
        "--storm-spread", type=float, default=2.0, help="seconds one storm is spread over"
    )
    g.add_argument(
        "--mirror",
        action="store_true",
        default=False,
        help="apply every snapshot to a full mirror (checks payloads, costs much more CPU)",
    )
    g.add_argument(
        "--snapshot-events",
        type=int,
        default=1,
        help="fire a SNAP age event every N snapshots per player (0: none)",
    )
    g.add_argument(
        "--reader",
        choices=("buffered", "websocket-client"),
        default="buffered",
        help="how frames are read: large reads cut into frames here (default), or "
        "websocket-client's own reader (several system calls per frame)",
    )
    g.add_argument("--rate-every", type=float, default=5.0, help="seconds between RATE entries")
    g.add_argument(
        "--heartbeat-liveness",
        type=int,
        default=10,
        help="seconds of missed worker heartbeats before the master gives a worker up "
        "(Locust's own default is 3: too few for a worker busy with hundreds of sockets)",
    )
    g.add_argument("--summary-json", default="", help="write the JSON summary to this file")
    g.add_argument(
        "--state-log",
        default="",
        help="append this process's whole state as a JSON line every --rate-every seconds "
        "and when the test stops ({pid} in the name becomes the process id)",
    )


class _Process:
    """What the players of one process share: settings, the state, the reporter."""

    def __init__(self, env: Environment) -> None:
        opts = env.parsed_options
        assert opts is not None
        self.env = env
        self.opts = opts
        self.state = WorkerState()
        self.started = time.monotonic()
        self.cpu0 = time.process_time()
        self.next_index = 0
        fire = env.events.request.fire

        def report(
            kind: str, name: str, ms: float, length: int, exc: Exception | None = None
        ) -> None:
            fire(
                request_type=kind,
                name=name,
                response_time=ms,
                response_length=length,
                exception=exc,
                context={},
            )

        self.report = report
        # Several gateways: -H ws://a:7700,ws://b:7700 spreads players over them in turn.
        self.urls = [u.strip() for u in (env.host or DEFAULT_URL).split(",") if u.strip()]
        self.settings = Settings(
            url=self.urls[0],
            behavior=opts.behavior,
            input_hz=opts.input_hz,
            ping_interval=opts.ping_interval,
            snapshot_events=opts.snapshot_events,
            mirror=opts.mirror,
            hotspot=_point(opts.hotspot) if opts.hotspot else None,
            hotspot_radius=opts.hotspot_radius,
            rush_at=self.started + opts.rush_at,
            borders=self._borders(),
            commute_distance=opts.commute_distance,
            storm_every=opts.storm_every,
            storm_spread=opts.storm_spread,
            reader=opts.reader,
        )
        runner = env.runner
        worker = getattr(runner, "worker_index", 0) if runner is not None else 0
        self.first_id = opts.first_player_id + max(0, worker) * IDS_PER_WORKER
        self.sign = _token_signer(opts.token_secret) if opts.token_secret else None
        self.state_log = opts.state_log.replace("{pid}", str(os.getpid()))
        self.log_closed = False
        if opts.rate_every > 0:
            gevent.spawn(self._rates, opts.rate_every)

    def _borders(self) -> list[Border]:
        if self.opts.borders:
            return parse_borders(self.opts.borders)
        if self.opts.world_dir:
            return borders_of_world(self.opts.world_dir, self.opts.world_zones or None)
        return []  # Commute falls back to the world's middle lines

    def new_player(self) -> SwarmPlayer:
        index = self.next_index
        self.next_index += 1
        settings = self.settings
        if len(self.urls) > 1:
            settings = replace(settings, url=self.urls[index % len(self.urls)])
        if settings.behavior == "mix":
            # Not index % 4: with two gateways that would put each behaviour on one gateway.
            turn = index // len(self.urls)
            settings = replace(settings, behavior=BEHAVIORS[turn % len(BEHAVIORS)])
        token: Callable[[], str] = _no_token
        if self.sign is not None:
            sign, pid = self.sign, self.first_id + index

            def token() -> str:
                return sign(pid)

        self.state.counts["players_started"] += 1
        return SwarmPlayer(settings, self.state, self.report, random.Random(), token)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return self.state.to_dict(now, time.process_time() - self.cpu0, now - self.started)

    def log_state(self, final: bool = False) -> None:
        """Append the state; the ``final`` line is written when the test is asked to stop,
        before players close, and is the last one (the figures after it are the ending)."""
        if self.state_log and not self.log_closed:
            self.log_closed = final
            with open(self.state_log, "a") as f:
                line = {"time": time.time(), "final": final, **self.snapshot()}
                f.write(json.dumps(line) + "\n")

    def _rates(self, every: float) -> None:
        last_t, last_n, last_b = time.monotonic(), 0, 0
        while True:
            gevent.sleep(every)
            now = time.monotonic()
            c = self.state.counts
            dt = now - last_t
            n, b = c["snapshots"], c["snapshot_bytes"]
            self.report("RATE", "snapshots/s", (n - last_n) / dt, 0)
            self.report("RATE", "KiB/s", (b - last_b) / dt / 1024.0, 0)
            self.report("RATE", "players", float(self.state.connected), 0)
            last_t, last_n, last_b = now, n, b
            self.log_state()


def _no_token() -> str:
    return ""


def _point(text: str) -> tuple[float, float]:
    x, _, y = text.partition(",")
    return float(x), float(y)


def _token_signer(secret: str) -> Callable[[int], str]:
    """``issue_token`` of shardworld/gateway/auth.py, loaded by itself: importing it through
    ``shardworld.gateway`` would pull the whole gateway (and numba) into this process."""
    spec = importlib.util.find_spec("shardworld")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("shardworld is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "gateway" / "auth.py"
    auth_spec = importlib.util.spec_from_file_location("_shardworld_auth", path)
    if auth_spec is None or auth_spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(auth_spec)
    sys.modules[auth_spec.name] = module  # dataclasses look their module up there
    auth_spec.loader.exec_module(module)
    issue: Callable[..., str] = module.issue_token

    def sign(player_id: int) -> str:
        return issue(secret, player_id, TOKEN_TTL_S, name=f"locust{player_id}")

    return sign


_process: _Process | None = None
_process_lock = Semaphore()
_worker_states: dict[str, dict[str, Any]] = {}


def _shared(env: Environment) -> _Process:
    global _process
    with _process_lock:  # the first user builds it (reading a zone layout may block)
        if _process is None:
            _process = _Process(env)
    return _process


@events.report_to_master.add_listener
def _to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if _process is not None:
        data["shardworld"] = _process.snapshot()


@events.worker_report.add_listener
def _from_worker(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if "shardworld" in data:
        _worker_states[client_id] = data["shardworld"]


@events.test_stopping.add_listener
def _stopping(**_: Any) -> None:
    if _process is not None:
        _process.state.connected_at_stop = _process.state.connected
        _process.log_state(final=True)


@events.quit.add_listener
def _summary(exit_code: int, **_: Any) -> None:
    env = _environment
    if env is None or isinstance(env.runner, WorkerRunner):
        return
    if isinstance(env.runner, MasterRunner):
        states = list(_worker_states.values())
    else:
        states = [_process.snapshot()] if _process is not None else []
    opts = env.parsed_options
    summary = summarize(
        merge_states(states),
        url=env.host or DEFAULT_URL,
        behavior=getattr(opts, "behavior", None),
        users=getattr(opts, "num_users", None),
        input_hz=getattr(opts, "input_hz", None),
        exit_code=exit_code,
    )
    line = json.dumps(summary, sort_keys=False)
    path = getattr(opts, "summary_json", "")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)


_environment: Environment | None = None


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    global _environment
    _environment = environment
    opts = environment.parsed_options
    if opts is not None and getattr(opts, "heartbeat_liveness", 0) > 0:
        # The master counts a worker's heartbeats down from this (a module constant).
        locust.runners.HEARTBEAT_LIVENESS = opts.heartbeat_liveness


class SwarmUser(User):
    """One shardworld player (see the module docstring)."""

    host = DEFAULT_URL
    # The task never returns; if it fails, Locust logs it and retries after this pause.
    wait_time = constant(1.0)

    def on_start(self) -> None:
        self.player = _shared(self.environment).new_player()

    @task
    def play(self) -> None:
        self.player.run()

    def on_stop(self) -> None:
        player = getattr(self, "player", None)
        if player is not None:
            player.stop()
