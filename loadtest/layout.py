"""Zone borders of a world folder, for the border commuters.

``python -m loadtest.layout zones/arena [--zones N] [--cell-size M]`` prints the borders of
the world's starting k-d split in ``--borders`` form (``x=1000:0:1000,...``).
:func:`borders_of_world` runs that in a subprocess, so a Locust worker never imports
shardworld's zone code (numba) into its gevent process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `loadtest` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.behaviors import Border, borders_of_rects, format_borders, parse_borders


def zone_rects(
    path: str, zones: int | None = None, cell_size: float | None = None
) -> list[tuple[float, float, float, float]]:
    """The bounding rectangle of each zone of the starting split (imports shardworld)."""
    from shardworld.sharding.cluster import initial_map
    from shardworld.zone import load_world

    cellmap = initial_map(load_world(path), zones, cell_size)
    return [cellmap.region_bounds(i) for i in range(len(cellmap.zones))]


def borders_of_world(
    path: str, zones: int | None = None, cell_size: float | None = None, timeout: float = 120.0
) -> list[Border]:
    """The starting split's borders, computed in a subprocess of this Python."""
    argv = [sys.executable, str(Path(__file__).resolve()), path]
    if zones is not None:
        argv += ["--zones", str(zones)]
    if cell_size is not None:
        argv += ["--cell-size", repr(cell_size)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"cannot read the zone layout of {path}: {out.stderr.strip()[-400:]}")
    return parse_borders(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path", help="world folder, e.g. zones/arena")
    ap.add_argument("--zones", type=int, default=None)
    ap.add_argument("--cell-size", type=float, default=None)
    args = ap.parse_args(argv)
    rects = zone_rects(args.path, args.zones, args.cell_size)
    print(format_borders(borders_of_rects(rects)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
