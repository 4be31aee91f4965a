"""The whole zone tick: inputs + motion + systems + interest + diff + encode.

Every 10th entity is a player (an observer that gets a snapshot every tick and sends an input
every tick); the rest are NPCs walking to random targets. The world is sized so a player has
about ``--neighbours`` entities within its interest radius. The "crowd" case puts 20 % of the
entities inside one interest radius, where ``k_max`` has to cap every payload.

The peer for comparison is the same tick with the snapshot stage switched off (motion and
systems only), so the JSON shows what interest + replication cost on top of simulation.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from typing import Any

import numpy as np

from shardworld.protocol.snapshot import decode_snapshot
from shardworld.zone import MODE_PLAYER, MODE_SEEK, Zone, ZoneConfig, ZoneHandler
from shardworld.zone.zone import InputBatch

RADIUS = 50.0


class Wander(ZoneHandler):
    """NPCs pick a new random target when they arrive: the arena's system, in numpy."""

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        ents = world.entities
        npc = ents["mode"] == MODE_SEEK
        d2 = np.sum((ents["pos"] - ents["target"]) ** 2, axis=1)
        arrived = np.flatnonzero(npc & (d2 < 1.0))
        if arrived.size:
            ents["target"][arrived] = world.random_points(arrived.size)


def build(n: int, neighbours: float, crowd: bool, seed: int) -> tuple[Zone, np.ndarray]:
    side = math.sqrt(n * math.pi * RADIUS**2 / neighbours)
    config = ZoneConfig(
        name="bench",
        world=(0.0, 0.0, side, side),
        tick_hz=20.0,
        snapshot_hz=20.0,
        interest_radius=RADIUS,
        interest_hysteresis=5.0,
        k_max=128,
        pos_quantum=0.01,
        capacity=n + 16,
        input_queue=max(1024, n),
        seed=seed,
    )
    zone = Zone(config, Wander())
    rng = zone.rng
    players = n // 10
    pos = zone.random_points(n)
    if crowd:
        # A random fifth of everyone (players and NPCs alike) stands inside one radius.
        k = n // 5
        who = rng.choice(n, k, replace=False)
        ang = rng.uniform(0, 2 * np.pi, k)
        rad = RADIUS * np.sqrt(rng.uniform(0, 1, k))
        pos[who, 0] = side / 2 + rad * np.cos(ang)
        pos[who, 1] = side / 2 + rad * np.sin(ang)
    zone.spawn(
        n - players,
        pos=pos[players:],
        target=zone.random_points(n - players),
        mode=MODE_SEEK,
        kind=2,
        max_speed=rng.uniform(1.0, 3.0, n - players).astype(np.float32),
        max_accel=4.0,
    )
    ids = zone.spawn(
        players,
        pos=pos[:players],
        owner=np.arange(1, players + 1, dtype=np.uint64),
        mode=MODE_PLAYER,
        observer=1,
        kind=1,
    )
    return zone, ids


def run_case(
    n: int, neighbours: float, crowd: bool, ticks: int, snapshots: bool, seed: int = 7
) -> dict[str, Any]:
    zone, players = build(n, neighbours, crowd, seed)
    zone.replicate = snapshots
    zone.warm_up()
    rng = np.random.default_rng(seed)
    intent = rng.uniform(-1, 1, (len(players), 2)).astype(np.float32)
    seq = np.zeros(len(players), np.uint32)
    warm = 20
    moves = 0
    move_bytes = 0
    payload_bytes = 0
    payloads = 0
    for t in range(warm + ticks):
        change = rng.random(len(players)) < 0.1
        intent[change] = rng.uniform(-1, 1, (int(change.sum()), 2))
        seq += 1
        zone.inputs.push_many(players, seq, intent)
        batch = zone.step()
        if t == warm - 1:
            zone.stats = type(zone.stats)()
        if batch is not None and t >= warm and t % 25 == 0:
            wide = zone.config.k_max > 255
            for i in range(0, len(batch), max(1, len(batch) // 200)):
                snap = decode_snapshot(batch.payload(i), zone.public_width, zone.owner_width)
                moves += len(snap.moves)
                move_bytes += len(snap.moves) * ((2 if wide else 1) + 4)
                payload_bytes += len(batch.payload(i))
                payloads += 1
    st = zone.stats.report()
    t_ms = zone.stats.tick_ms()
    return {
        "n": n,
        "players": len(players),
        "dist": "crowd" if crowd else "uniform",
        "neighbours": neighbours,
        "snapshots": snapshots,
        "ticks": int(t_ms.size),
        "p50_ms": round(float(np.percentile(t_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(t_ms, 99)), 3),
        "max_ms": round(float(t_ms.max()), 3),
        "phase_ms": {k: round(v, 3) for k, v in st["phase_ms"].items()},  # type: ignore[attr-defined]
        "interest_pairs": st["interest_pairs"],
        "bytes_per_moved_entity": round(move_bytes / moves, 3) if moves else None,
        "bytes_per_payload": round(payload_bytes / payloads, 1) if payloads else None,
        "wall_hits": st["wall_hits"],
    }


def warm_start() -> dict[str, float]:
    """Seconds for a fresh process to import shardworld and load every kernel from cache."""
    code = (
        "import time; t0 = time.perf_counter();"
        "import shardworld.kernels as k; t1 = time.perf_counter();"
        "k.warm_up(); t2 = time.perf_counter();"
        "print(t1 - t0, t2 - t1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # fill cache
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    imp, load = float(out[0]), float(out[1])
    return {
        "warm_start_s": round(imp + load, 3),
        "import_s": round(imp, 3),
        "load_s": round(load, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10k and 100k only (under a minute)")
    ap.add_argument("--ticks", type=int, default=200, help="measured ticks per case (default 200)")
    ap.add_argument("--neighbours", type=float, default=25.0, help="mean entities in range")
    args = ap.parse_args()

    cases: list[tuple[int, bool, bool]] = [(10_000, False, True), (100_000, False, True)]
    if args.quick:
        cases += [(10_000, True, True)]
    else:
        cases += [(10_000, True, True), (10_000, False, False), (100_000, False, False)]
        cases += [(300_000, False, True)]
    results = []
    for n, crowd, snaps in cases:
        ticks = args.ticks if n <= 100_000 or not args.quick else 50
        t0 = time.perf_counter()
        res = run_case(n, args.neighbours, crowd, ticks, snaps)
        print(
            f"n={n:>7} {res['dist']:>7} snapshots={snaps!s:5} p50={res['p50_ms']:7.2f} ms "
            f"p99={res['p99_ms']:7.2f} ms max={res['max_ms']:7.2f} ms "
            f"({time.perf_counter() - t0:.1f}s)",
            file=sys.stderr,
            flush=True,
        )
        results.append(res)
    ws = warm_start()
    print(json.dumps({"benchmark": "tick", "quick": args.quick, "cases": results, **ws}))


if __name__ == "__main__":
    main()
