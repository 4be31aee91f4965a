"""End to end: N bots over real WebSockets against the embedded arena world.

As an operator would run them: `shardworld run zones/arena --dev` (zone and gateway in one
process) and `shardworld bots` (asyncio bots reading only snapshot headers). One bot process
saturates a core somewhere between 500 and 1000 bots, and then its own delays show up as
snapshot age, so the bots are split between `--bot-processes` processes (by default one per
500 bots) whose figures `shardworld bots --processes` merges. The bots report snapshot age,
round-trip time and disconnects; the server reports its tick times.

Snapshot age is measured by the client SDK (docs/client.md): ``snapshot_age_*`` is the
conservative upper bound (arrival time on the server's clock, estimated with PING/PONG,
minus when the tick was due, anchored at WELCOME, which can overstate by up to one snapshot
interval); ``snapshot_age_lower_*`` is the lower bound (the fastest snapshot of a
connection counted as zero).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shardworld.client.bots import BOTS_PER_PROCESS

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"no JSON summary in output: {text[-500:]!r}")


def default_bot_processes(bots: int) -> int:
    """One bot process up to BOTS_PER_PROCESS bots, else one per BOTS_PER_PROCESS."""
    return max(1, math.ceil(bots / BOTS_PER_PROCESS))


def run(
    bots: int, seconds: float, npcs: int, behavior: str, zones: int, bot_processes: int
) -> dict[str, Any]:
    port = _free_port()
    cli = [sys.executable, "-m", "shardworld.cli"]
    server = subprocess.Popen(
        [
            *cli,
            "run",
            str(ROOT / "zones" / "arena"),
            "--dev",
            "--port",
            str(port),
            "--npcs",
            str(npcs),
            "--seconds",
            str(seconds + 15),
            "--map",
            "never",
            "--zones",
            str(zones),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("the world did not start listening within 60 s")
        ramp = max(100.0, bots / 5.0)
        bot_out = subprocess.run(
            [
                *cli,
                "bots",
                "--url",
                f"ws://127.0.0.1:{port}",
                "--count",
                str(bots),
                "--behavior",
                behavior,
                "--duration",
                str(seconds),
                "--ramp",
                str(ramp),
                "--no-mirror",
                "--quiet",
                "--input-hz",
                "10",
                "--processes",
                str(bot_processes),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            cwd=ROOT,
        )
        summary = _last_json(bot_out.stdout)
    finally:
        server.send_signal(2)
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    world = _last_json(out)
    return {"bots_summary": summary, "world": world}


def _ticks(w: dict[str, Any]) -> dict[str, Any]:
    """Tick figures of the world summary: one zone, or the worst of several."""
    zones = list((w.get("zones") or {}).values()) or [w]
    return {
        "tick_p50_ms": max(float(z.get("p50_ms") or 0.0) for z in zones),
        "tick_p99_ms": max(float(z.get("p99_ms") or 0.0) for z in zones),
        "late_ticks": sum(int(z.get("late_ticks") or 0) for z in zones),
        "skipped_ticks": sum(int(z.get("skipped_ticks") or 0) for z in zones),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 bots for 20 s (under a minute)")
    ap.add_argument("--bots", type=int, default=None, help="bots (default 1000)")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds (default 60)")
    ap.add_argument("--npcs", type=int, default=2000, help="NPCs in the world (default 2000)")
    ap.add_argument("--behavior", default="wander", choices=("wander", "crowd", "commute"))
    ap.add_argument(
        "--zones",
        type=int,
        default=1,
        help="zones splitting the world (default 1; the arena's own: 4)",
    )
    ap.add_argument(
        "--bot-processes",
        type=int,
        default=None,
        help=f"bot processes (default: 1 up to {BOTS_PER_PROCESS} bots, "
        f"else one per {BOTS_PER_PROCESS})",
    )
    args = ap.parse_args()
    bots = args.bots or (300 if args.quick else 1000)
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    bot_processes = (
        default_bot_processes(bots) if args.bot_processes is None else args.bot_processes
    )
    if bot_processes < 1:
        ap.error("--bot-processes must be >= 1")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    res = run(bots, seconds, args.npcs, args.behavior, args.zones, bot_processes)
    b, w = res["bots_summary"], res["world"]
    out = {
        "benchmark": "e2e",
        "quick": args.quick,
        "bots": bots,
        # What ran: `shardworld bots` uses fewer processes than asked when there are fewer bots.
        "bot_processes": b.get("processes", bot_processes),
        "bot_process_failures": b.get("process_failures", []),
        "zones": args.zones,
        "connected": b.get("connected"),
        "seconds": seconds,
        "snapshot_age_p50_ms": b.get("snapshot_age_upper_p50_ms"),
        "snapshot_age_p99_ms": b.get("snapshot_age_upper_p99_ms"),
        "snapshot_age_lower_p50_ms": b.get("snapshot_age_p50_ms"),
        "snapshot_age_lower_p99_ms": b.get("snapshot_age_p99_ms"),
        "rtt_p50_ms": b.get("rtt_p50_ms"),
        "snapshots_per_s": b.get("snapshots_per_s"),
        "disconnects": b.get("disconnects"),
        "errors": b.get("errors"),
        **_ticks(w),
        "gateway_frames_dropped": (w.get("gateway") or {}).get("snapshots_dropped"),
        "target_p99_ms": round(1000.0 / 20.0 + 20.0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
