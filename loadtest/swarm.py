"""A whole world on Kafka and Redis, as processes, and a Locust swarm against it.

    python loadtest/swarm.py --users 2000 --seconds 300 --out .run/swarm/summary.json

Starts, in order: Kafka and Redis (scripts/services.sh, in --run-dir), one
`shardworld zone --store` process per zone, a coordinator, --gateways gateways (all with
Prometheus metrics), then `locust --headless --processes N` spreading the players over the
gateways. While the swarm runs it scrapes every zone's and gateway's metrics every
--scrape-every seconds and reads every process's CPU time. At the end it stops everything
it started, by pid (SIGINT, then SIGKILL after a grace period; the services through
services.sh, which stops the pids in its pid files), and prints one JSON summary: the
swarm's figures (docs/loadtest.md), each zone's tick p99 over the run, each gateway's
players, the CPU each process used, and the load average before and after.

Every step has a deadline, so the script always ends: the world must be up within
--start-timeout, the swarm ends after --seconds (Locust's -t), and each process gets
--stop-grace seconds to exit after SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Players one Locust worker process drives at 20 Hz on one core with headroom
#: (benchmarks/bench_loadtest.py measures it; docs/loadtest.md).
PLAYERS_PER_WORKER = 500


def log(text: str) -> None:
    print(f"swarm: {text}", file=sys.stderr, flush=True)


@dataclass
class Proc:
    """A process this script started: its role, its log file, and its CPU readings."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its children that have been waited for."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` plus its live descendants (Locust's forked workers)."""
    total = cpu_seconds(pid)
    if total is None:
        return None
    for child in _children(pid):
        total += tree_cpu_seconds(child) or 0.0
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


def scrape(port: int, timeout: float = 2.0) -> dict[str, float]:
    """``metric{labels}`` -> value from a Prometheus text endpoint ({} when unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float | None:
    for key, value in samples.items():
        if key.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            return value
    return None


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return dict(json.loads(line))
    return None


class Swarm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = Path(args.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.services_started = False
        #: name -> [(monotonic time, CPU seconds)] at the start and the end of the window.
        self.cpu: dict[str, list[tuple[float, float]]] = {}
        self.world_name = f"swarm{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SHARDWORLD_RUN_DIR": str(self.run_dir / "services"),
            "SHARDWORLD_KAFKA_PORT": str(args.kafka_port),
            "SHARDWORLD_REDIS_PORT": str(args.redis_port),
        }
        self.bus = f"kafka://127.0.0.1:{args.kafka_port}"
        self.store = f"redis://127.0.0.1:{args.redis_port}/0"
        self.zone_names = [f"z{i}" for i in range(args.zones)]

    # -- processes -------------------------------------------------------------------------

    def start(self, name: str, argv: Sequence[str], metrics_port: int | None = None) -> Proc:
        path = self.run_dir / f"{name}.log"
        f = path.open("wb")
        popen = subprocess.Popen(
            list(argv),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=self.env,
            # Our own process group: a Ctrl-C reaches this script, which stops them in order.
            process_group=0,
        )
        p = Proc(name, popen, path, f, metrics_port)
        self.procs.append(p)
        log(f"started {name} (pid {p.pid}), log {path}")
        return p

    def services(self, action: str) -> None:
        cmd = [str(ROOT / "scripts" / "services.sh"), action, "kafka", "redis"]
        subprocess.run(cmd, cwd=ROOT, env=self.env, check=True, timeout=180)

    def wait_for(self, proc: Proc, needle: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if needle in proc.text():
                return
            if proc.popen.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited ({proc.popen.returncode}):\n" + proc.text()[-2000:]
                )
            time.sleep(0.5)
        raise RuntimeError(f"{proc.name} did not say {needle!r} in time:\n{proc.text()[-2000:]}")

    def stop_all(self) -> None:
        """SIGINT to everything still running (swarm first, the world last), then SIGKILL
        whatever has not exited after the grace period. Only our own pids."""
        grace = self.args.stop_grace
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGINT)
                try:
                    p.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    log(f"{p.name} (pid {p.pid}) ignored SIGINT for {grace:g} s: killing it")
                    with contextlib.suppress(ProcessLookupError):
                        # The group: Locust's forked workers die with their master.
                        os.killpg(p.pid, signal.SIGKILL)
                    p.popen.wait()
            p.log_file.close()
        if self.services_started:
            self.services_started = False
            with contextlib.suppress(Exception):
                self.services("stop")

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        sw = [str(BIN / "shardworld")]
        world = str(Path(a.world).resolve())
        common = ["--bus", self.bus, "--world-name", self.world_name, "--zones", str(a.zones)]
        load0 = os.getloadavg()
        if not a.no_services:
            self.services_started = True
            self.services("start")
        t_start = time.monotonic()
        zones = [
            self.start(
                f"zone-{z}",
                [
                    *sw,
                    "zone",
                    world,
                    "--zone",
                    z,
                    *common,
                    "--store",
                    self.store,
                    "--metrics-port",
                    str(a.metrics_port + i),
                ],
                a.metrics_port + i,
            )
            for i, z in enumerate(self.zone_names)
        ]
        coord = self.start(
            "coordinator",
            [
                *sw,
                "coordinator",
                world,
                *common,
                "--store",
                self.store,
                "--metrics-port",
                str(a.metrics_port + 30),
            ],
            a.metrics_port + 30,
        )
        gateways = [
            self.start(
                f"gateway-{i}",
                [
                    *sw,
                    "gateway",
                    world,
                    *common,
                    "--index",
                    str(i),
                    "--dev",
                    "--port",
                    str(a.gateway_port + i),
                    "--metrics-port",
                    str(a.metrics_port + 20 + i),
                ],
                a.metrics_port + 20 + i,
            )
            for i in range(a.gateways)
        ]
        deadline = time.monotonic() + a.start_timeout
        for z in zones:
            self.wait_for(z, "ticking", deadline)
        for g in gateways:
            self.wait_for(g, "players connect", deadline)
        self.wait_for(coord, "Ctrl-C stops", deadline)
        world_up_s = time.monotonic() - t_start
        log(
            f"world {self.world_name!r} up in {world_up_s:.1f} s: {a.zones} zones, "
            f"{a.gateways} gateways, a coordinator"
        )

        urls = ",".join(f"ws://127.0.0.1:{a.gateway_port + i}" for i in range(a.gateways))
        workers = a.workers or max(1, math.ceil(a.users / PLAYERS_PER_WORKER))
        summary_path = self.run_dir / "locust-summary.json"
        summary_path.unlink(missing_ok=True)
        spawn_rate = a.spawn_rate or max(10.0, a.users / 20.0)
        locust_argv = [
            str(BIN / "locust"),
            "-f",
            str(ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "-H",
            urls,
            "-u",
            str(a.users),
            "-r",
            f"{spawn_rate:g}",
            "-t",
            f"{a.seconds}s",
            "--behavior",
            a.behavior,
            "--world-dir",
            world,
            "--world-zones",
            str(a.zones),
            "--storm-every",
            str(a.storm_every),
            "--summary-json",
            str(summary_path),
            "--only-summary",
            "--csv",
            str(self.run_dir / "locust"),
            "--exit-code-on-error",
            "0",
            # One worker: a single Locust process (no master to miss its heartbeats).
            *(["--processes", str(workers)] if workers > 1 else []),
            *a.locust_args,
        ]
        swarm = self.start("locust", locust_argv)
        ramp_s = a.users / spawn_rate
        samples = self.observe(swarm, zones, gateways, ramp_s)
        try:
            swarm.popen.wait(a.seconds + 120)
        except subprocess.TimeoutExpired:
            log("locust did not end in time: stopping it")
        self.stop_all()
        load1 = os.getloadavg()

        locust = None
        with contextlib.suppress(OSError, ValueError):
            locust = json.loads(summary_path.read_text())
        return {
            "users": a.users,
            "seconds": a.seconds,
            "behavior": a.behavior,
            "zones": a.zones,
            "gateways": a.gateways,
            "locust_workers": workers,
            "spawn_rate": spawn_rate,
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load0],
            "load_average_after": [round(x, 2) for x in load1],
            "world_up_s": round(world_up_s, 1),
            "swarm": locust,
            "zones_ticks": self.zone_figures(zones, samples),
            "gateway_players": self.gateway_figures(gateways, samples),
            "cpu_cores": self.cpu_figures(),
            "logs": str(self.run_dir),
        }

    def observe(
        self, swarm: Proc, zones: list[Proc], gateways: list[Proc], ramp_s: float
    ) -> list[dict[str, Any]]:
        """Scrape metrics and read CPU times until the swarm ends (bounded by --seconds)."""
        a = self.args
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        end = t0 + a.seconds + 60
        # The steady window starts once the gateways hold 95 % of the players, or a
        # minute after the planned ramp if they never get there.
        steady_at = t0 + ramp_s + 60.0
        steady = False
        players = 0.0
        while swarm.popen.poll() is None and time.monotonic() < end:
            now = time.monotonic()
            if steady or now >= steady_at or players >= 0.95 * a.users:
                steady = True
                self.read_cpu(now)
            row: dict[str, Any] = {"t": round(now - t0, 1), "steady": steady}
            for z, name in zip(zones, self.zone_names, strict=True):
                s = scrape(z.metrics_port) if z.metrics_port else {}
                row[name] = {
                    "tick_p99_ms": _ms(metric(s, "shardworld_zone_tick_p99_seconds")),
                    "entities": metric(s, "shardworld_zone_entities"),
                    "late": metric(s, "shardworld_zone_late_ticks_total"),
                    "skipped": metric(s, "shardworld_zone_skipped_ticks_total"),
                }
            for i, g in enumerate(gateways):
                s = scrape(g.metrics_port) if g.metrics_port else {}
                row[f"gateway-{i}"] = metric(s, "shardworld_gateway_players")
            if all(row[f"gateway-{i}"] is not None for i in range(len(gateways))):
                players = sum(row[f"gateway-{i}"] for i in range(len(gateways)))
            samples.append(row)
            if a.progress:
                log(json.dumps(row))
            deadline = time.monotonic() + a.scrape_every
            while swarm.popen.poll() is None and time.monotonic() < deadline:
                time.sleep(1.0)
                if steady and swarm.popen.poll() is None:
                    self.read_cpu(time.monotonic())
        return samples

    def read_cpu(self, now: float) -> None:
        """The CPU window: from once every player has joined to the last reading before
        the swarm ends (the first and the latest reading of each process)."""
        for name, pid in self.cpu_pids().items():
            c = tree_cpu_seconds(pid)
            if c is not None:
                readings = self.cpu.setdefault(name, [])
                if readings:
                    readings[1:] = [(now, c)]
                else:
                    readings.append((now, c))

    def zone_figures(self, zones: list[Proc], samples: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        steady = [r for r in samples if r["steady"]] or samples
        for z, name in zip(zones, self.zone_names, strict=True):
            p99s = [r[name]["tick_p99_ms"] for r in steady if r[name]["tick_p99_ms"] is not None]
            final = last_json(z.text()) or {}
            last = steady[-1][name] if steady else {}
            out[name] = {
                "tick_p99_ms_median": round(sorted(p99s)[len(p99s) // 2], 2) if p99s else None,
                "tick_p99_ms_max": round(max(p99s), 2) if p99s else None,
                "entities_last": last.get("entities"),
                "late_ticks": final.get("late_ticks", last.get("late")),
                "skipped_ticks": final.get("skipped_ticks", last.get("skipped")),
            }
        return out

    def gateway_figures(self, gateways: list[Proc], samples: list[dict[str, Any]]) -> list[Any]:
        out = []
        for i, g in enumerate(gateways):
            players = [r[f"gateway-{i}"] for r in samples if r.get(f"gateway-{i}") is not None]
            final = last_json(g.text()) or {}
            out.append(
                {
                    "players_max": max(players) if players else None,
                    "summary": {
                        k: final[k] for k in sorted(final) if not isinstance(final[k], dict)
                    },
                }
            )
        return out

    def cpu_pids(self) -> dict[str, int]:
        """Every process whose CPU counts: ours, and the services' from their pid files."""
        pids = {p.name: p.pid for p in self.procs if p.popen.poll() is None}
        for name in ("kafka", "redis"):
            with contextlib.suppress(OSError, ValueError):
                pids[name] = int((self.run_dir / "services" / f"{name}.pid").read_text())
        return pids

    def cpu_figures(self) -> dict[str, float]:
        """Cores each process used on average over the steady window, and their sum."""
        out: dict[str, float] = {}
        for name, readings in self.cpu.items():
            if len(readings) == 2 and readings[1][0] > readings[0][0]:
                (t0, c0), (t1, c1) = readings
                out[name] = round((c1 - c0) / (t1 - t0), 3)
        out["total"] = round(sum(out.values()), 3)
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=300, help="Locust's run time (-t)")
    ap.add_argument("--behavior", default="wander", help="wander, rush, commute, storm, mix")
    ap.add_argument("--storm-every", type=float, default=60.0)
    ap.add_argument("--world", default=str(ROOT / "zones" / "arena"))
    ap.add_argument("--zones", type=int, default=4)
    ap.add_argument("--gateways", type=int, default=2)
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help=f"Locust worker processes (default: one per {PLAYERS_PER_WORKER} players)",
    )
    ap.add_argument("--spawn-rate", type=float, default=0.0, help="players/s (users / 20)")
    ap.add_argument("--kafka-port", type=int, default=29092)
    ap.add_argument("--redis-port", type=int, default=26379)
    ap.add_argument("--gateway-port", type=int, default=7710, help="first gateway's port")
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=9410,
        help="zones at +0.., gateways at +20.., the coordinator at +30",
    )
    ap.add_argument(
        "--no-services",
        action="store_true",
        help="Kafka and Redis already run on --kafka-port/--redis-port",
    )
    ap.add_argument("--run-dir", default=str(ROOT / ".run" / "swarm"), help="logs, pid files")
    ap.add_argument("--out", default="", help="also write the JSON summary here")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--stop-grace", type=float, default=30.0)
    ap.add_argument("--scrape-every", type=float, default=5.0)
    ap.add_argument("--progress", action="store_true", help="print every scrape on stderr")
    ap.add_argument("locust_args", nargs="*", help="more Locust options, after --")
    return ap.parse_args(argv)


def _print_brief(r: dict[str, Any]) -> None:
    """A few readable lines on stderr; the JSON line on stdout has everything."""
    s = r.get("swarm") or {}
    age = s.get("snapshot_age_ms") or {}
    join = s.get("join_ms") or {}
    ticks = ", ".join(
        f"{z} {v['tick_p99_ms_median']}/{v['tick_p99_ms_max']} ms"
        for z, v in (r.get("zones_ticks") or {}).items()
    )
    log(
        f"{r['users']} players for {r['seconds']} s ({r['behavior']}): "
        f"{s.get('connected_at_stop')} connected at the end, {s.get('joins')} joins "
        f"(p50 {join.get('p50')} ms, p99 {join.get('p99')} ms), "
        f"{s.get('unexpected_disconnects')} unexpected disconnects {s.get('disconnects_by_code')}"
    )
    log(
        f"snapshot age p50 {age.get('p50')} ms, p99 {age.get('p99')} ms; "
        f"{s.get('snapshots_per_player_s')} snapshots and {s.get('inputs_per_player_s')} inputs "
        f"per player-second; errors {s.get('errors_by_code')}"
    )
    log(f"zone tick p99 (median/max of scrapes): {ticks}")
    log(
        f"CPU cores: {r.get('cpu_cores')}; load average {r['load_average_before']} before, "
        f"{r['load_average_after']} after"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    swarm = Swarm(args)
    try:
        result = swarm.run()
    except BaseException:
        swarm.stop_all()
        raise
    _print_brief(result)
    line = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    print(line, flush=True)
    s = result.get("swarm") or {}
    return 0 if s.get("joins") else 1


if __name__ == "__main__":
    sys.exit(main())
