"""Refresh the capacity model's coefficients (src/shardworld/capacity_coefficients.json).

``shardworld plan`` multiplies figures the benchmarks measure. This script gets those
figures and writes them, each with the benchmark and the JSON key(s) it came from, the
formula, the clock, the machine and the date; the benchmarks' whole JSON outputs are kept in
the file too (``sources``), so every value can be recomputed from what was printed.

Where the outputs come from, per benchmark:

- run here (default), with ``--quick`` unless ``--full``: ``bench_tick.py`` and
  ``bench_handoff.py`` run with the zone's tick timer switched to the thread's CPU time
  (``Zone(timer=time.thread_time)``; the same code, the same JSON keys), so other load on the
  machine hardly moves them; ``bench_gateway.py`` measures CPU seconds itself;
  ``bench_bus.py`` needs a Kafka broker (``--kafka URL`` or ``$SHARDWORLD_KAFKA_URL``);
- read from files given on the command line: what the benchmark printed (its last JSON
  line is used; the benchmark is recognised from the JSON). Figures printed by a plain run
  of bench_tick or bench_handoff are wall-clock times; the file records that;
- kept from the existing coefficients file (``--keep NAME``, or ``bus`` when there is no
  broker): the coefficients keep their old provenance and date.

A probe of this script's own (``--probe``, run in a fresh process) measures memory: the
resident size of an idle shardworld process, a zone's bytes per entity and per player, and
the checkpoint row size.

    .venv/bin/python benchmarks/calibrate.py                       # everything, 2-3 minutes
    .venv/bin/python benchmarks/calibrate.py --kafka kafka://127.0.0.1:19092
    .venv/bin/python benchmarks/calibrate.py tick.json gateway.json --keep handoff,bus,probe
    .venv/bin/python benchmarks/calibrate.py --out /tmp/mine.json   # then:
    .venv/bin/shardworld plan --players 100000 --coefficients /tmp/mine.json

docs/capacity.md explains each coefficient.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = ROOT / "src" / "shardworld" / "capacity_coefficients.json"
FORMAT = 1

#: source name -> the benchmark script that prints it
SCRIPTS = {
    "tick": "bench_tick.py",
    "handoff": "bench_handoff.py",
    "gateway": "bench_gateway.py",
    "bus": "bench_bus.py",
    "probe": "calibrate.py",
}

# Runs a benchmark's own main() after giving every Zone the thread CPU clock as its timer.
_CPU_TIMER_RUNNER = """\
import runpy, sys, time
from shardworld.zone import zone as _zone
_init = _zone.Zone.__init__
def _cpu_timed(self, *args, **kwargs):
    if len(args) < 5:  # config, handler, sink, clock, timer
        kwargs.setdefault("timer", time.thread_time)
    _init(self, *args, **kwargs)
_zone.Zone.__init__ = _cpu_timed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# A whole-run in the tick benchmark's 100k uniform case, snapshots on (also in --full).
_T = "cases[n=100000,dist=uniform,snapshots=true]."
_O = "raw.overhead."


@dataclass(frozen=True)
class Spec:
    """How one coefficient is computed from one benchmark's JSON output."""

    name: str
    source: str
    keys: tuple[str, ...]
    formula: str
    unit: str
    what: str
    compute: Callable[..., float]


SPECS: tuple[Spec, ...] = (
    Spec(
        "entity_tick_ms",
        "tick",
        (_T + "phase_ms.motion", _T + "phase_ms.systems", _T + "n"),
        "(motion + systems) / n",
        "ms CPU per simulated entity per tick",
        "moving an entity and running the world's systems on it (the benchmark's wandering "
        "NPC system: a game's own systems may cost more)",
        lambda motion, systems, n: (motion + systems) / n,
    ),
    Spec(
        "observer_tick_ms",
        "tick",
        (_T + "phase_ms.inputs", _T + "phase_ms.emit", _T + "players"),
        "(inputs + emit) / players",
        "ms CPU per player per snapshot tick",
        "applying a player's input and emitting its snapshot",
        lambda inputs, emit, players: (inputs + emit) / players,
    ),
    Spec(
        "pair_snapshot_ms",
        "tick",
        (
            _T + "phase_ms.interest",
            _T + "phase_ms.diff",
            _T + "phase_ms.encode",
            _T + "interest_pairs",
        ),
        "(interest + diff + encode) / interest_pairs",
        "ms CPU per interest-list entry per snapshot",
        "interest, visibility diff and encoding, per entry of a player's interest list "
        "(the player itself included, as interest_pairs counts)",
        lambda interest, diff, encode, pairs: (interest + diff + encode) / pairs,
    ),
    Spec(
        "payload_bytes_per_pair",
        "tick",
        (_T + "bytes_per_payload", _T + "interest_pairs", _T + "players"),
        "bytes_per_payload / (interest_pairs / players)",
        "bytes of snapshot payload per interest-list entry",
        "delta snapshot size per entity in view (every entity of the benchmark moves)",
        lambda payload, pairs, players: payload / (pairs / players),
    ),
    Spec(
        "neighbour_overhead_ms",
        "handoff",
        ("multi_p50_sum_ms", "single_p50_ms", _O + "ghost_messages_per_tick"),
        "(multi_p50_sum_ms - single_p50_ms) / ghost_messages_per_tick",
        "ms CPU per zone per neighbour per tick",
        "what splitting costs: the 4 zones' ticks against one zone's for the same world, per "
        "(zone, neighbour) pair - one ghost message each way per tick",
        lambda multi, single, messages: (multi - single) / messages,
    ),
    Spec(
        "ghost_bytes_per_ghost",
        "handoff",
        (_O + "ghost_bytes_per_tick", _O + "ghosts_per_tick"),
        "ghost_bytes_per_tick / ghosts_per_tick",
        "bus bytes per ghost per tick",
        "ghost bytes sent per ghost row sent (every entity of the benchmark moves)",
        lambda nbytes, rows: nbytes / rows,
    ),
    Spec(
        "ghost_messages_per_neighbour_tick",
        "handoff",
        (_O + "ghost_messages_per_tick", _O + "multi_zone_p50_ms"),
        "ghost_messages_per_tick / (len(multi_zone_p50_ms) * 3)",
        "bus messages per zone per neighbour per tick",
        "ghost messages, per zone and neighbour (each zone of the 2 x 2 split has 3)",
        lambda messages, zones: messages / (len(zones) * 3),
    ),
    Spec(
        "gateway_cpu_s_per_frame",
        "gateway",
        ("frames_per_cpu_s",),
        "1 / frames_per_cpu_s",
        "s CPU per snapshot frame written by a gateway",
        "a gateway's CPU per frame delivered (200-byte payloads, real WebSockets)",
        lambda fps: 1.0 / fps,
    ),
    Spec(
        "gateway_bytes_per_connection",
        "gateway",
        ("bytes_per_idle_conn",),
        "bytes_per_idle_conn",
        "bytes of gateway memory per connected player",
        "resident memory a joined connection adds to the gateway",
        lambda b: float(b),
    ),
    Spec(
        "broker_messages_per_s",
        "bus",
        ("kafka.burst.n", "kafka.burst.seconds_to_last_poll"),
        "n / seconds_to_last_poll",
        "records per second through one Kafka broker",
        "a burst of 64-byte records from one producer to one consumer process, broker on "
        "the same machine (a lower bound for a broker of its own)",
        lambda n, seconds: n / seconds,
    ),
    Spec(
        "process_base_rss_bytes",
        "probe",
        ("process_base_rss_bytes",),
        "process_base_rss_bytes",
        "bytes resident in an idle shardworld process",
        "a process that imported what `shardworld zone` and `gateway` import and loaded "
        "every kernel",
        lambda b: float(b),
    ),
    Spec(
        "zone_bytes_per_entity",
        "probe",
        ("zone_bytes_per_entity",),
        "zone_bytes_per_entity",
        "bytes of zone memory per entity",
        "resident growth of a ticking zone per entity (store columns, interest and snapshot "
        "buffers), capacity = entities",
        lambda b: float(b),
    ),
    Spec(
        "zone_bytes_per_observer",
        "probe",
        ("zone_bytes_per_observer",),
        "zone_bytes_per_observer",
        "extra bytes of zone memory per player (observer)",
        "resident growth per entity turned into an observer (visibility state, payloads)",
        lambda b: float(b),
    ),
    Spec(
        "checkpoint_bytes_per_entity",
        "probe",
        ("checkpoint_row_bytes",),
        "checkpoint_row_bytes",
        "bytes per entity in a zone checkpoint",
        "one full entity row of the built-in schema (a world's own fields add to it)",
        lambda b: float(b),
    ),
)

_SEGMENT = re.compile(r"^([A-Za-z0-9_]+)(?:\[([^\]]*)\])?$")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def lookup(doc: Any, path: str) -> Any:
    """The value at ``path`` in a benchmark's JSON output.

    ``a.b.c`` walks objects; ``cases[n=100000,dist=uniform]`` picks the one element of the
    list ``cases`` whose fields have those values (compared as JSON text: ``true``, ``100``).
    Raises KeyError naming the part that is missing or ambiguous.
    """
    node = doc
    for part in path.split("."):
        m = _SEGMENT.match(part)
        if m is None:
            raise KeyError(f"{path}: malformed part {part!r}")
        name, select = m.group(1), m.group(2)
        if not isinstance(node, dict) or name not in node:
            raise KeyError(f"{path}: no {name!r}")
        node = node[name]
        if select is None:
            continue
        want = dict(item.split("=", 1) for item in select.split(","))
        if not isinstance(node, list):
            raise KeyError(f"{path}: {name!r} is not a list")
        hits = [
            e
            for e in node
            if isinstance(e, dict) and all(k in e and _as_text(e[k]) == v for k, v in want.items())
        ]
        if len(hits) != 1:
            raise KeyError(f"{path}: {len(hits)} elements of {name!r} match [{select}]")
        node = hits[0]
    return node


def derive(spec: Spec, output: Any) -> float:
    """One coefficient from its benchmark's output, rounded to 4 significant digits."""
    value = float(spec.compute(*(lookup(output, k) for k in spec.keys)))
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{spec.name} = {value!r} from {SCRIPTS[spec.source]}: not > 0")
    return float(f"{value:.4g}")


def identify(doc: Any) -> str | None:
    """Which benchmark printed ``doc`` (a source name of SCRIPTS), or None."""
    if not isinstance(doc, dict):
        return None
    if doc.get("probe") == "calibrate":
        return "probe"
    if doc.get("bench") == "bus":
        return "bus"
    name = doc.get("benchmark")
    return name if name in ("tick", "handoff", "gateway") else None


def last_json(text: str) -> Any:
    """The last line of ``text`` that is a JSON object (benchmarks print progress first)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object line in the output")


# --------------------------------------------------------------------------- the probe


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe(entities: int = 100_000) -> dict[str, Any]:
    """Memory figures, measured in this (fresh) process."""
    import gc

    import numpy as np

    import shardworld.bus.kafka
    import shardworld.cli
    import shardworld.gateway
    import shardworld.sharding.node
    import shardworld.store.redis  # noqa: F401  (what a zone process holds)
    from shardworld.kernels import warm_up
    from shardworld.zone import MODE_PLAYER

    warm_up()
    gc.collect()
    base = _rss()
    sys.path.insert(0, str(HERE))
    import bench_tick

    zone, players = bench_tick.build(entities, 25.0, False, 7)
    zone.warm_up()
    rng = np.random.default_rng(7)

    def run(ids: Any, ticks: int) -> None:
        intent = rng.uniform(-1, 1, (len(ids), 2)).astype(np.float32)
        seq = np.zeros(len(ids), np.uint32)
        for _ in range(ticks):
            seq += 1
            zone.inputs.push_many(ids, seq, intent)
            zone.step()

    run(players, 30)
    gc.collect()
    with_players = _rss()
    # Turn NPCs into players too: what that adds is the per-observer part.
    ents = zone.entities
    npc_rows = np.flatnonzero(ents["observer"] == 0)[: entities * 4 // 10]
    ents["observer"][npc_rows] = 1
    ents["mode"][npc_rows] = MODE_PLAYER
    ents["owner"][npc_rows] = np.arange(len(players) + 1, len(players) + 1 + len(npc_rows))
    more = np.concatenate([players, ents.ids[npc_rows]])
    run(more, 30)
    gc.collect()
    with_more = _rss()
    per_observer = (with_more - with_players) / len(npc_rows)
    per_entity = (with_players - base - per_observer * len(players)) / entities
    return {
        "probe": "calibrate",
        "process_base_rss_bytes": base,
        "zone_entities": entities,
        "zone_players": len(players),
        "zone_rss_bytes": with_players,
        "zone_extra_players": len(npc_rows),
        "zone_rss_bytes_more_players": with_more,
        "zone_bytes_per_entity": round(per_entity, 1),
        "zone_bytes_per_observer": round(per_observer, 1),
        "checkpoint_row_bytes": int(zone.entities.schema.row_dtype().itemsize),
    }


# --------------------------------------------------------------------------- running


def _say(msg: str) -> None:
    print(f"calibrate: {msg}", file=sys.stderr, flush=True)


def run_source(name: str, full: bool, kafka: str | None) -> tuple[Any, str, str]:
    """Run one benchmark (or the probe) here; returns (output, command, clock)."""
    script = str(HERE / SCRIPTS[name])
    args: list[str] = [] if full else ["--quick"]
    if name == "probe":
        cmd = [sys.executable, script, "--probe"]
        clock = "resident memory (/proc/self/statm)"
    elif name in ("tick", "handoff"):
        cmd = [sys.executable, "-c", _CPU_TIMER_RUNNER, script, *args]
        clock = "thread CPU time (Zone timer = time.thread_time)"
    elif name == "bus":
        assert kafka is not None
        cmd = [sys.executable, script, *args, "--kafka", kafka]
        clock = "wall clock"
    else:
        cmd = [sys.executable, script, *args]
        clock = "process CPU time (the benchmark's own)"
    shown = " ".join(["python", f"benchmarks/{SCRIPTS[name]}", *cmd[cmd.index(script) + 1 :]])
    _say(f"running {shown}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{shown} failed with status {proc.returncode}")
    _say(f"  done in {time.perf_counter() - t0:.0f} s")
    return last_json(proc.stdout), shown, clock


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = os.cpu_count() or 0
    return {
        "description": f"{cores} cores ({model or platform.machine()}), {mem_gib:.0f} GiB",
        "cpu": model,
        "cores": cores,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def build(
    sources: dict[str, dict[str, Any]],
    old: dict[str, Any] | None,
    mach: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """The coefficients document from fresh sources, carrying over the rest from ``old``."""
    coefficients: dict[str, Any] = {}
    kept_sources: dict[str, Any] = {}
    for spec in SPECS:
        src = sources.get(spec.source)
        if src is None:
            if old is None or spec.name not in old.get("coefficients", {}):
                raise SystemExit(
                    f"calibrate: no output of {SCRIPTS[spec.source]} and no earlier value of "
                    f"{spec.name} to keep"
                )
            coefficients[spec.name] = old["coefficients"][spec.name]
            if spec.source in old.get("sources", {}):
                kept_sources[spec.source] = old["sources"][spec.source]
            continue
        coefficients[spec.name] = {
            "value": derive(spec, src["output"]),
            "unit": spec.unit,
            "what": spec.what,
            "benchmark": SCRIPTS[spec.source],
            "keys": list(spec.keys),
            "formula": spec.formula,
            "clock": src["clock"],
            "machine": src["machine"],
            "date": src["date"],
        }
    return {
        "format": FORMAT,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "generated_by": "benchmarks/calibrate.py",
        "machine": mach,
        "notes": notes,
        "coefficients": coefficients,
        "sources": {**kept_sources, **sources},
    }


def make_notes(doc: dict[str, Any], extra: list[str]) -> list[str]:
    """What a reader of the file should know: clocks, how each source was obtained, load."""
    notes = [
        "Zone figures (bench_tick, bench_handoff) are thread CPU time where calibrate.py ran "
        "the benchmark, so other load on a shared machine inflates them little; gateway "
        "figures are CPU seconds of the serving process; the Kafka burst rate is wall clock "
        "and moves most with other load.",
    ]
    for name, src in doc["sources"].items():
        notes.append(f"{SCRIPTS[name]}: {src['command']}; {src['clock']}; {src['date']}.")
    mach = doc["machine"]
    loads = [*mach.get("load_average_start", []), *mach.get("load_average_end", [])]
    cores = mach.get("cores") or 0
    if cores and loads and max(loads) > 0.75 * cores:
        notes.append(
            f"The machine was shared with other jobs while measuring: load average "
            f"{mach.get('load_average_start')} at the start and {mach.get('load_average_end')} "
            f"at the end (1, 5, 15 minutes) on {cores} cores."
        )
    return notes + list(extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("files", nargs="*", help="benchmark outputs to use instead of running them")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    ap.add_argument("--full", action="store_true", help="run the benchmarks at full size")
    ap.add_argument("--kafka", default=os.environ.get("SHARDWORLD_KAFKA_URL"), help="broker URL")
    ap.add_argument(
        "--keep",
        default="",
        help="comma-separated sources to keep from the existing file: " + ", ".join(SCRIPTS),
    )
    ap.add_argument("--machine", help="describe the machine the FILES were measured on")
    ap.add_argument("--note", action="append", default=[], help="a line for the file's notes")
    ap.add_argument("--dry-run", action="store_true", help="print the JSON instead of writing")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0

    keep = {k.strip() for k in args.keep.split(",") if k.strip()}
    unknown = keep - set(SCRIPTS)
    if unknown:
        ap.error(f"--keep: unknown {', '.join(sorted(unknown))} (choose from {', '.join(SCRIPTS)})")
    old: dict[str, Any] | None = None
    old_path = args.out if args.out.exists() else DEFAULT_OUT
    if old_path.exists():
        old = json.loads(old_path.read_text())
    mach = machine()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    sources: dict[str, dict[str, Any]] = {}
    ran: list[str] = []
    for f in args.files:
        doc = last_json(Path(f).read_text())
        name = identify(doc)
        if name is None:
            ap.error(f"{f}: not the output of a benchmark this script knows")
        mtime = dt.datetime.fromtimestamp(Path(f).stat().st_mtime, dt.UTC).date().isoformat()
        clock = (
            "wall clock (as printed by a plain run)"
            if name in ("tick", "handoff")
            else "process CPU time (the benchmark's own)"
            if name == "gateway"
            else "wall clock"
            if name == "bus"
            else "resident memory"
        )
        sources[name] = {
            "command": f"read from {Path(f).name}",
            "clock": clock,
            "machine": args.machine or f"unknown (read from {Path(f).name})",
            "date": mtime,
            "output": doc,
        }
    for name in SCRIPTS:
        if name in sources or name in keep:
            continue
        if name == "bus" and not args.kafka:
            _say("no Kafka broker (--kafka or $SHARDWORLD_KAFKA_URL): keeping the bus figure")
            continue
        ran.append(name)
        output, command, clock = run_source(name, args.full, args.kafka)
        sources[name] = {
            "command": command,
            "clock": clock,
            "machine": mach["description"],
            "date": today,
            "output": output,
        }
    if ran:
        mach["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    elif not sources and old is not None:
        mach = old["machine"]  # nothing measured now: the figures are still the old machine's
    else:
        mach = {"description": args.machine or "not recorded (outputs read from files)"}
    doc = build(sources, old, mach, [])
    doc["notes"] = make_notes(doc, args.note)
    text = json.dumps(doc, indent=1) + "\n"
    if args.dry_run:
        print(text, end="")
        return 0
    args.out.write_text(text)
    _say(f"wrote {args.out}")
    for name, c in doc["coefficients"].items():
        _say(f"  {name:34} {c['value']:>12.4g}  {c['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
