"""Benchmark: shardworld interest query against scipy's cKDTree.

Every entity is an observer and a candidate (the zone's common case), radius fixed, no
k-nearest cap, no hysteresis. For each case the same float32 positions go to

* ours: ``shardworld.kernels.interest.compute_interest(pos, pos, r, 0.0, 0)`` - the very
  function the zone tick calls. The time includes planning and building the grid, both
  passes and allocating the CSR result (every observer's list, including itself).
* kdtree_pairs: ``cKDTree(pos64).query_pairs(r, output_type="ndarray")`` - tree
  construction included; returns each unordered pair once.
* kdtree_ball: ``cKDTree(pos64).query_ball_point(pos64, r, return_sorted=False,
  workers=1)`` - tree construction included; returns per-observer Python lists (the
  same shape of answer as ours).

``pos64`` (the float64 copy scipy needs) is made once per case, outside all timings.
Times are the best of several runs (fewer for big cases). ``match`` compares our
neighbour sets, self excluded, with the query_pairs result exactly, as sorted arrays of
``i * n + j`` keys with ``i < j``.

The world side is chosen so that a uniform distribution has ``k`` neighbours on average
(``k = density * pi * r**2``); "crowd" puts 20% of the entities uniformly inside one disc
of radius ``r`` in the middle of the world and the rest uniformly everywhere. Crowd cases
grow quadratically (a 1M-entity crowd would produce ~2e10 visibility entries), so cases
or single measurements whose estimated result exceeds the memory budget are skipped with
``null`` values and a note.

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from shardworld.kernels import grid, interest

RADIUS = 50.0
CROWD_FRACTION = 0.2
# Probability that two points uniform in a disc of radius r are within r of each other.
DISC_PAIR_FRACTION = 0.5865
# Rough peak bytes per result entry: ours int32 + masks; query_pairs keeps the pair list
# twice (C++ vector, then the int64 array); query_ball_point builds Python int objects in
# Python lists.
BYTES_OURS = 5
BYTES_PAIRS = 40
BALL_MAX_ENTRIES = 60_000_000


def make_positions(n: int, k: int, dist: str, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    side = math.sqrt(n * math.pi * RADIUS * RADIUS / k)
    pos = rng.random((n, 2)) * side
    if dist == "crowd":
        m = int(CROWD_FRACTION * n)
        rad = RADIUS * np.sqrt(rng.random(m))
        ang = 2.0 * math.pi * rng.random(m)
        pos[:m, 0] = side / 2 + rad * np.cos(ang)
        pos[:m, 1] = side / 2 + rad * np.sin(ang)
        pos = pos[rng.permutation(n)]
    return pos.astype(np.float32)


def estimate_pairs(n: int, k: int, dist: str) -> float:
    pairs = n * k / 2.0
    if dist == "crowd":
        m = CROWD_FRACTION * n
        pairs += m * (m - 1) / 2.0 * DISC_PAIR_FRACTION
    return pairs


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time in ms over ``repeats`` runs, and the last result."""
    best = math.inf
    result: Any = None
    for _ in range(repeats):
        result = None
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best * 1e3, result


def canonical_ours(vis_off: npt.NDArray[np.int64], vis_idx: npt.NDArray[np.int32]) -> Any:
    n = vis_off.shape[0] - 1
    obs = np.repeat(np.arange(n, dtype=np.int64), np.diff(vis_off))
    keep = obs < vis_idx
    return np.sort(obs[keep] * n + vis_idx[keep]), int(np.count_nonzero(obs != vis_idx))


def canonical_pairs(pairs: npt.NDArray[np.int64], n: int) -> Any:
    lo = np.minimum(pairs[:, 0], pairs[:, 1]).astype(np.int64)
    hi = np.maximum(pairs[:, 0], pairs[:, 1]).astype(np.int64)
    return np.sort(lo * n + hi)


def speedup(theirs: float | None, ours: float | None) -> float | None:
    if theirs is None or ours is None:
        return None
    return round(theirs / ours, 2)


def run_case(
    n: int, k: int, dist: str, args: argparse.Namespace, budget: int, notes: list[str]
) -> dict[str, Any]:
    tag = f"n={n} k={k} {dist}"
    pos = make_positions(n, k, dist, args.seed)
    pos64 = pos.astype(np.float64)
    est_pairs = estimate_pairs(n, k, dist)
    est_entries = 2 * est_pairs + n
    case: dict[str, Any] = {
        "n": n,
        "k": k,
        "dist": dist,
        "pairs": None,
        "ours_ms": None,
        "kdtree_pairs_ms": None,
        "kdtree_ball_ms": None,
        "speedup_vs_pairs": None,
        "speedup_vs_ball": None,
        "match": None,
    }
    if est_entries > 5e7:
        reps = 1
    elif est_entries > 5e6:
        reps = min(args.repeats, 3)
    else:
        reps = args.repeats

    ours_keys = None
    if est_entries * BYTES_OURS > budget:
        notes.append(f"{tag}: skipped entirely, ~{est_entries:.2g} result entries exceed memory")
        print(f"[{tag}] skipped (~{est_entries:.2g} entries)", file=sys.stderr)
        return case

    ours_ms, (vis_off, vis_idx) = best_time(
        lambda: interest.compute_interest(pos, pos, RADIUS, 0.0, 0), reps
    )
    case["ours_ms"] = round(ours_ms, 3)
    ours_keys, non_self = canonical_ours(vis_off, vis_idx)
    del vis_off, vis_idx
    case["pairs"] = int(ours_keys.shape[0])
    symmetric = non_self == 2 * ours_keys.shape[0]

    if est_pairs * BYTES_PAIRS <= budget:
        pairs_ms, ref = best_time(
            lambda: cKDTree(pos64).query_pairs(RADIUS, output_type="ndarray"), reps
        )
        case["kdtree_pairs_ms"] = round(pairs_ms, 3)
        ref_keys = canonical_pairs(ref, n)
        del ref
        case["pairs"] = int(ref_keys.shape[0])
        case["match"] = bool(symmetric and np.array_equal(ours_keys, ref_keys))
        del ref_keys
    else:
        notes.append(f"{tag}: query_pairs skipped, ~{est_pairs:.2g} pairs exceed memory")
    del ours_keys

    if est_entries <= BALL_MAX_ENTRIES and est_entries * BYTES_PAIRS <= budget:
        ball_reps = 1 if n >= 100_000 else reps
        ball_ms, _ = best_time(
            lambda: cKDTree(pos64).query_ball_point(pos64, RADIUS, return_sorted=False, workers=1),
            ball_reps,
        )
        case["kdtree_ball_ms"] = round(ball_ms, 3)
    else:
        notes.append(
            f"{tag}: query_ball_point skipped, ~{est_entries:.2g} entries as Python lists"
            f" (limit {BALL_MAX_ENTRIES:.0e}) would take minutes and many GB"
        )

    case["speedup_vs_pairs"] = speedup(case["kdtree_pairs_ms"], case["ours_ms"])
    case["speedup_vs_ball"] = speedup(case["kdtree_ball_ms"], case["ours_ms"])
    print(
        f"[{tag}] pairs={case['pairs']} ours={case['ours_ms']}ms "
        f"pairs={case['kdtree_pairs_ms']}ms ball={case['kdtree_ball_ms']}ms "
        f"x{case['speedup_vs_pairs']} vs pairs, x{case['speedup_vs_ball']} vs ball, "
        f"match={case['match']}",
        file=sys.stderr,
        flush=True,
    )
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the uniform 10k and 100k cases (k = 20 and 100); under a minute",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs per measurement, best kept (default 5)"
    )
    parser.add_argument("--seed", type=int, default=12345, help="data seed (default 12345)")
    parser.add_argument(
        "--memory-gb",
        type=float,
        default=None,
        help="memory budget for one result (default: 40%% of available memory)",
    )
    args = parser.parse_args(argv)

    budget = int(args.memory_gb * 2**30) if args.memory_gb else int(0.4 * available_bytes())
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    dists = ["uniform"] if args.quick else ["uniform", "crowd"]
    ks = [20, 100]

    t0 = time.perf_counter()
    grid.warm_up()
    interest.warm_up()
    # One small untimed round so every code path and scipy are loaded.
    warm = make_positions(2000, 20, "uniform", 1)
    interest.compute_interest(warm, warm, RADIUS, 0.0, 0)
    cKDTree(warm.astype(np.float64)).query_pairs(RADIUS, output_type="ndarray")
    print(f"warm-up {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    notes: list[str] = [
        f"radius {RADIUS} m; world side sqrt(n*pi*r^2/k); every entity observes; k_max 0,"
        " hysteresis 0; single thread everywhere",
        "ours_ms: compute_interest(pos, pos, ...) incl. grid plan + build, count and fill"
        " passes and the int64/int32 CSR allocation (lists include self)",
        "kdtree_pairs_ms: cKDTree(pos64) construction + query_pairs(output_type='ndarray');"
        " kdtree_ball_ms: construction + query_ball_point(pos64, return_sorted=False,"
        " workers=1); the float64 copy pos64 is made outside the timings",
        f"best of {args.repeats} runs for small cases, 3 for >5e6 result entries, 1 for"
        " >5e7 and for query_ball_point at n >= 100k",
        "match: our non-self neighbour sets equal query_pairs exactly (sorted i<j keys)",
    ]
    cases = []
    for dist in dists:
        for n in sizes:
            for k in ks:
                cases.append(run_case(n, k, dist, args, budget, notes))
                gc.collect()
    total = time.perf_counter() - t0
    notes.append(
        f"numpy {np.__version__}, scipy {__import__('scipy').__version__}, numba "
        f"{__import__('numba').__version__}; total {total:.1f}s"
    )

    print(f"{'n':>8} {'k':>4} {'dist':>8} {'pairs':>11} {'ours':>10} {'pairs':>10} "
          f"{'ball':>10} {'xpairs':>7} {'xball':>7} match")  # fmt: skip
    for c in cases:
        cells = [
            f"{c[key]:>10.2f}" if c[key] is not None else f"{'-':>10}"
            for key in ("ours_ms", "kdtree_pairs_ms", "kdtree_ball_ms")
        ]
        ratios = [
            f"{c[key]:>7.1f}" if c[key] is not None else f"{'-':>7}"
            for key in ("speedup_vs_pairs", "speedup_vs_ball")
        ]
        pairs = f"{c['pairs']:>11}" if c["pairs"] is not None else f"{'-':>11}"
        print(f"{c['n']:>8} {c['k']:>4} {c['dist']:>8} {pairs} {' '.join(cells)} "
              f"{' '.join(ratios)} {c['match']}")  # fmt: skip
    report = {"benchmark": "interest", "quick": bool(args.quick), "cases": cases}
    report["notes"] = "; ".join(notes)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
