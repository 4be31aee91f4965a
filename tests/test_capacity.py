"""The capacity model (shardworld.capacity), `shardworld plan`, and the shipped coefficients
with their trail back to the benchmarks (benchmarks/calibrate.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shardworld import capacity
from shardworld.capacity import (
    REQUIRED_COEFFICIENTS,
    Coefficients,
    CoefficientsError,
    PlanError,
    PlanInputs,
    load_coefficients,
    plan,
    plan_main,
)
from shardworld.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SHIPPED = ROOT / "src" / "shardworld" / "capacity_coefficients.json"


def _module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def calibrate() -> ModuleType:
    return _module("calibrate")


# Round numbers, so the expected figures below can be worked out by hand.
ROUND = Coefficients(
    entity_tick_ms=0.001,
    observer_tick_ms=0.002,
    pair_snapshot_ms=0.0001,
    payload_bytes_per_pair=5.0,
    neighbour_overhead_ms=0.5,
    ghost_bytes_per_ghost=36.0,
    ghost_messages_per_neighbour_tick=1.0,
    gateway_cpu_s_per_frame=1e-5,
    gateway_bytes_per_connection=10_000.0,
    broker_messages_per_s=10_000.0,
    process_base_rss_bytes=200e6,
    zone_bytes_per_entity=200.0,
    zone_bytes_per_observer=1000.0,
    checkpoint_bytes_per_entity=80.0,
    source="test",
)

# 10,000 players, no NPCs, 9 others in view (interest list 10), 20 Hz, a budget of 24 % of
# 50 ms = 12 ms per tick, machines of 4 cores (3 usable) and 4 GiB.
HAND = PlanInputs(
    players=10_000,
    npcs=0,
    neighbours=9.0,
    headroom=0.24,
    cores_per_machine=4,
    reserve_cores=1,
    memory_per_machine_gib=4.0,
)


def test_hand_computed_zones_gateways_kafka_machines() -> None:
    p = plan(HAND, ROUND)
    # World side from 9 neighbours within 50 m: 10,000 * pi * 50^2 / 9 square metres.
    side = math.sqrt(10_000 * math.pi * 2500 / 9)
    assert p.derived["world_m"][0] == pytest.approx(side, abs=0.1)
    # 3 zones: 3,333.3 entities * 0.001 + 3,333.3 players * 0.002 + 33,333 entries * 0.0001
    # + 2 neighbours * 0.5 = 3.333 + 6.667 + 3.333 + 1 = 14.33 ms (+ ghosts) > 12.
    # 4 zones (a 2 x 2 grid, 3 neighbours each): 2.5 + 5 + 2.5 + 1.5 = 11.5 ms, plus ghosts:
    # the two split lines (2 * side long) with a 55 m band on each side hold
    # 10,000 / side^2 * 2 * 55 * 2 * side entities, a quarter of them per zone.
    ghosts = 10_000 / side**2 * 2 * 55 * 2 * side / 4
    assert p.zones.count == 4
    assert p.zones.binding == "zone tick CPU"
    assert p.zones.details["ghosts_each"] == pytest.approx(ghosts, abs=0.1)
    assert p.zones.details["tick_ms"]["total"] == pytest.approx(11.5 + ghosts * 0.001, abs=1e-3)
    assert p.zones.details["neighbours_each"] == 3.0
    assert [z["name"] for z in p.zone_processes] == ["z0", "z1", "z2", "z3"]
    # Gateways: 0.24 of a core / (20 frames/s * 10 us) = 1,200 players each; 10,000 -> 9.
    assert p.gateways.details["players_limit"] == 1200
    assert p.gateways.count == 9
    assert p.gateways.binding == "gateway CPU"
    assert [g["name"] for g in p.gateway_processes][-1] == "gw8"
    assert sum(g["players"] for g in p.gateway_processes) == 10_000
    # Kafka: 2 topics per zone + 1 per gateway + heartbeat and control = 19 partitions.
    # Records/s: 4 zones * (20 * 3 ghosts + 20 * 9 batches + 20 * 9 inputs + 1 heartbeat).
    assert p.kafka.details["partitions"] == 19
    assert p.kafka.details["records_per_s"] == 4 * (60 + 180 + 180 + 1)
    # Bytes/s: snapshots 10,000 * 20 * (50 + 28) + ghosts 20 * 4 * g * 36 + inputs
    # 10,000 * 20 * 24.
    want = 10_000 * 20 * 78 + 20 * 4 * ghosts * 36 + 10_000 * 20 * 24
    assert p.kafka.details["bytes_per_s"] == pytest.approx(want, rel=1e-6)
    assert p.kafka.count == 1  # 1,684 records/s < 0.24 * 10,000; 21 MB/s < 0.24 * 100 MB/s
    # Machines: 4 zones + 9 gateways + 2 coordinators = 15 single-core processes on 3
    # usable cores = 5 machines; memory ~3.1 GB fits 4 (0.24 * 4 GiB each); cores bind.
    assert p.machines.count == 5
    assert p.machines.binding == "cores"
    assert p.machines.details["bounds"] == {"cores": 5, "memory": 4, "network": 1}
    assert sorted(n for m in p.placement for n in m["processes"]) == sorted(
        [f"z{i}" for i in range(4)] + [f"gw{i}" for i in range(9)] + ["co0", "co1"]
    )
    assert all(m["cores_used"] <= 3 for m in p.placement)
    # Redis: 10,000 entities * 80 bytes, held twice while replaced, + 64 MiB.
    assert p.redis.details["memory_bytes"] == 2 * 800_000 + 64 * 2**20
    # Bandwidth to players: 10,000 * 20 Hz * (50-byte payload + frame head) * 8 bits.
    frame = 50 + capacity._frame_overhead(50)
    assert p.bandwidth["players_out_bits_per_s"] == pytest.approx(10_000 * 20 * frame * 8, rel=1e-6)
    assert p.sharding["zones"] == 4
    assert "zones = 4" in p.sharding["toml"]


def test_hand_computed_one_zone_and_placement_by_memory() -> None:
    # 1,000 players: 1 + 2 + 1 = 4 ms in one zone, well inside 12 ms.
    p = plan(dataclasses.replace(HAND, players=1000), ROUND)
    assert p.zones.count == 1
    assert p.zones.binding == "one zone is enough"
    assert p.zones.details["tick_ms"]["total"] == pytest.approx(4.0)
    assert p.zones.details["ghosts_each"] == 0
    # Machines of 2 GiB: 0.24 * 2 GiB = 515 MB holds two ~200 MB processes, not three, so
    # the 15 processes of the first case need 8 machines, more than any total allows.
    q = plan(dataclasses.replace(HAND, memory_per_machine_gib=2.0), ROUND)
    assert q.machines.details["bounds"]["memory"] == 7
    assert q.machines.count == 8
    assert q.machines.binding == "placement of whole processes"
    assert all(len(m["processes"]) <= 2 for m in q.placement)


def test_gateway_connection_limit_and_snapshot_rate() -> None:
    # At 5 Hz snapshots a gateway's CPU allows 4,800 players; a limit of 2,000 binds.
    inp = dataclasses.replace(HAND, snapshot_hz=5.0, gateway_max_players=2000)
    p = plan(inp, ROUND)
    assert p.derived["snapshot_hz"] == 5.0
    assert p.gateways.details["players_limit"] == 2000
    assert p.gateways.count == 5
    assert p.gateways.binding == "gateway connection limit"
    # 20 Hz / 6 Hz rounds to every 3rd tick: 6.67 Hz, with a note.
    r = plan(dataclasses.replace(HAND, snapshot_hz=6.0), ROUND)
    assert r.derived["snapshot_hz"] == pytest.approx(20 / 3)
    assert any("6.66667 Hz" in w for w in r.warnings)


def test_world_size_gives_density_and_cells() -> None:
    # 40,000 entities on 4 km x 2 km: 5,000 per km^2; within 50 m: 0.005 * pi * 2500.
    inp = PlanInputs(players=20_000, npcs=20_000, world_size=(4000.0, 2000.0), cell_size=100.0)
    p = plan(inp, ROUND)
    assert p.derived["neighbours"] == pytest.approx(40_000 / 8e6 * math.pi * 2500, abs=0.01)
    assert p.sharding["grid"] == [40, 20]
    cells = [z["cells"] for z in p.zone_processes]
    assert sum(cells) == 800
    assert max(cells) - min(cells) <= 20  # a k-d split: within a line or so of the mean
    # Cells too big for the zones: a smaller, round cell size is suggested.
    q = plan(dataclasses.replace(inp, cell_size=1000.0), ROUND)
    assert q.sharding["cell_size"] < 1000.0
    grid = q.sharding["grid"]
    assert grid[0] * grid[1] >= capacity.MIN_CELLS_PER_ZONE * q.zones.count
    assert any("suggesting" in w for w in q.warnings)


@pytest.mark.parametrize("coefficients", ["round", "shipped"])
def test_more_players_never_fewer_processes(coefficients: str) -> None:
    co = ROUND if coefficients == "round" else load_coefficients()
    bases = [
        PlanInputs(players=1),
        PlanInputs(players=1, npcs_per_player=3.0, neighbours=60.0, tick_hz=30.0),
        PlanInputs(players=1, world_size=(6000.0, 3000.0), snapshot_hz=10.0),
    ]
    for base in bases:
        last: tuple[int, ...] | None = None
        players = 500
        while players <= 2_000_000:
            p = plan(dataclasses.replace(base, players=players), co)
            now = (
                p.zones.count,
                p.gateways.count,
                p.kafka.count,
                p.machines.count,
                p.kafka.details["partitions"],
            )
            if last is not None:
                assert all(a >= b for a, b in zip(now, last, strict=True)), (players, now, last)
            last = now
            players = int(players * 1.37) + 1


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"players": 0}, "players = 0"),
        ({"players": -5}, "players"),
        ({"players": True}, "whole number"),
        ({"npcs": -1}, "npcs"),
        ({"tick_hz": 0.0}, "tick rate"),
        ({"tick_hz": float("nan")}, "tick rate"),
        ({"snapshot_hz": 30.0}, "above the tick rate"),
        ({"world_size": (100.0, 100.0), "neighbours": 5.0}, "not both"),
        ({"world_size": (100.0, -1.0)}, "world size"),
        ({"neighbours": 0.0}, "neighbours"),
        ({"interest_radius": 0.0}, "interest radius"),
        ({"k_max": 0}, "k_max"),
        ({"cell_size": -1.0}, "cell size"),
        ({"headroom": 0.0}, "headroom"),
        ({"headroom": 1.5}, "headroom"),
        ({"cores_per_machine": 4, "reserve_cores": 4}, "reserved cores"),
        ({"memory_per_machine_gib": 0.0}, "memory per machine"),
        ({"gateway_max_players": 0}, "gateway max players"),
        ({"zones_per_machine": 0}, "zones per machine"),
        ({"broker_records_s": -1.0}, "broker records"),
        ({"checkpoint_every_s": 0.0}, "checkpoint"),
    ],
)
def test_bad_inputs_are_refused_by_name(changes: dict[str, Any], words: str) -> None:
    inp = dataclasses.replace(PlanInputs(players=1000), **changes)
    with pytest.raises(PlanError, match=re.escape(words)):
        plan(inp, ROUND)


def test_worlds_that_cannot_fit() -> None:
    # 1,000 Hz leaves 0.6 ms a tick: 8 neighbours at 0.5 ms never fit, however many zones.
    with pytest.raises(PlanError, match="even 4096 zones"):
        plan(PlanInputs(players=1_000_000, tick_hz=1000.0), ROUND)
    # A zone bigger than a machine.
    huge = dataclasses.replace(ROUND, process_base_rss_bytes=5 * 2**30)
    with pytest.raises(PlanError, match="more than 60% of a machine"):
        plan(PlanInputs(players=1000, memory_per_machine_gib=8.0), huge)
    # One player's snapshots need more than a gateway core.
    slow = dataclasses.replace(ROUND, gateway_cpu_s_per_frame=1.0)
    with pytest.raises(PlanError, match="gateway's core"):
        plan(PlanInputs(players=1000), slow)


def test_coefficients_file_errors(tmp_path: Path) -> None:
    doc = json.loads(SHIPPED.read_text())
    broken = tmp_path / "c.json"
    del doc["coefficients"]["pair_snapshot_ms"]
    broken.write_text(json.dumps(doc))
    with pytest.raises(CoefficientsError, match="missing pair_snapshot_ms"):
        load_coefficients(broken)
    doc = json.loads(SHIPPED.read_text())
    doc["coefficients"]["entity_tick_ms"]["value"] = 0
    broken.write_text(json.dumps(doc))
    with pytest.raises(CoefficientsError, match="entity_tick_ms"):
        load_coefficients(broken)
    doc["format"] = 99
    broken.write_text(json.dumps(doc))
    with pytest.raises(CoefficientsError, match="format 99"):
        load_coefficients(broken)
    with pytest.raises(CoefficientsError, match="cannot read"):
        load_coefficients(tmp_path / "absent.json")


# --------------------------------------------------------------------------- the command


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["plan", "--players", "100000", "--hz", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inputs"]["players"] == 100_000
    for key in ("zones", "gateways", "coordinators", "kafka", "redis", "machines"):
        assert out[key]["count"] >= 1 and out[key]["why"] and out[key]["binding"]
    assert len(out["zones"]["processes"]) == out["zones"]["count"]
    assert out["zones"]["processes"][0]["name"] == "z0"
    assert out["gateways"]["processes"][-1]["name"] == f"gw{out['gateways']['count'] - 1}"
    assert [c["name"] for c in out["coordinators"]["processes"]] == ["co0", "co1"]
    assert out["sharding"]["zones"] == out["zones"]["count"]
    assert out["binding"]
    assert set(out["coefficients"]["values"]) == set(REQUIRED_COEFFICIENTS)
    placed = [n for m in out["machines"]["placement"] for n in m["processes"]]
    assert len(placed) == out["zones"]["count"] + out["gateways"]["count"] + 2


def test_cli_table_names_the_binding_constraint(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_main(["--players", "100000", "--hz", "20"]) == 0
    text = capsys.readouterr().out
    p = plan(PlanInputs(players=100_000), load_coefficients())
    assert "binding constraint:" in text
    assert p.zones.binding in text and p.gateways.binding in text
    assert re.search(rf"zone processes\s+{p.zones.count}\s", text)
    assert re.search(rf"gateways\s+{p.gateways.count}\s", text)
    assert "[sharding]" in text and f"zones = {p.zones.count}" in text
    assert "z0" in text and "gw0" in text and "co0 (leader)" in text


def test_cli_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_main(["--players", "0"]) == 2
    assert "players = 0" in capsys.readouterr().err
    assert plan_main(["--players", "10", "--world-size", "100", "--headroom", "2"]) == 2
    assert "headroom" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plan_main(["--players", "10", "--world-size", "1x2x3"])
    assert "WxH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        cli_main(["plan", "--help"])
    assert ex.value.code == 0
    helptext = capsys.readouterr().out
    assert "shardworld plan --players 100000 --hz 20" in helptext
    assert "docs/capacity.md" in helptext


# --------------------------------------------------------------------------- coefficients


def test_shipped_coefficients_are_complete() -> None:
    doc = json.loads(SHIPPED.read_text())
    assert doc["format"] == capacity.COEFFICIENTS_FORMAT
    assert doc["machine"]["description"] and doc["notes"]
    assert set(doc["coefficients"]) == set(REQUIRED_COEFFICIENTS)
    scripts = {p.name for p in BENCH.glob("*.py")}
    for name, c in doc["coefficients"].items():
        assert isinstance(c["value"], int | float) and c["value"] > 0, name
        assert math.isfinite(c["value"]), name
        assert c["unit"] == REQUIRED_COEFFICIENTS[name], name
        assert c["benchmark"] in scripts, name
        assert c["keys"] and all(isinstance(k, str) and k for k in c["keys"]), name
        assert c["formula"] and c["clock"] and c["machine"] and c["what"], name
        dt.date.fromisoformat(c["date"])
    co = load_coefficients()
    assert co.source.endswith("capacity_coefficients.json")
    assert co.generated and co.machine


def test_every_coefficient_comes_from_its_benchmark_output(calibrate: ModuleType) -> None:
    """Each named key exists in the benchmark output kept in the file, and the formula over
    it gives the shipped value."""
    doc = json.loads(SHIPPED.read_text())
    by_name = {s.name: s for s in calibrate.SPECS}
    assert set(by_name) == set(REQUIRED_COEFFICIENTS)
    for name, c in doc["coefficients"].items():
        spec = by_name[name]
        assert c["benchmark"] == calibrate.SCRIPTS[spec.source]
        assert c["keys"] == list(spec.keys)
        output = doc["sources"][spec.source]["output"]
        assert calibrate.identify(output) == spec.source
        for key in c["keys"]:
            calibrate.lookup(output, key)  # raises KeyError if absent
        assert calibrate.derive(spec, output) == pytest.approx(c["value"], rel=1e-3), name


def test_keys_are_what_the_benchmarks_print(calibrate: ModuleType) -> None:
    """Every name in a key path is written as a JSON key by that benchmark's source (phase
    names come from the zone's stats), so a renamed key fails here, not at calibration."""
    stats = (ROOT / "src" / "shardworld" / "zone" / "stats.py").read_text()
    for spec in calibrate.SPECS:
        source = (BENCH / calibrate.SCRIPTS[spec.source]).read_text()
        for key in spec.keys:
            for part in key.split("."):
                name, _, select = part.partition("[")
                names = [name] + [kv.split("=")[0] for kv in select.rstrip("]").split(",") if kv]
                for n in names:
                    quoted = f'"{n}"'
                    assert quoted in source or quoted in stats, (spec.name, key, n)


def test_tick_keys_in_a_live_run(calibrate: ModuleType) -> None:
    """bench_tick's run_case at a tiny size prints every field the tick coefficients use."""
    bench_tick = _module("bench_tick")
    case = bench_tick.run_case(2000, 25.0, False, 6, True)  # tick 25 samples payloads
    assert case["bytes_per_payload"] is not None
    for spec in calibrate.SPECS:
        if spec.source != "tick":
            continue
        for key in spec.keys:
            head, _, rest = key.partition("].")
            selector = head.split("[", 1)[1]
            for kv in selector.split(","):
                assert kv.split("=")[0] in case
            calibrate.lookup(case, rest)
    doc = {"benchmark": "tick", "cases": [case]}
    assert calibrate.lookup(doc, "cases[n=2000,dist=uniform,snapshots=true].n") == 2000


def test_lookup_and_identify(calibrate: ModuleType) -> None:
    doc = {"a": {"b": [{"k": 1, "v": "x"}, {"k": 2, "v": "y"}, {"k": 2, "v": "z"}]}}
    assert calibrate.lookup(doc, "a.b[k=1].v") == "x"
    assert calibrate.lookup(doc, "a.b[k=2,v=z].v") == "z"
    with pytest.raises(KeyError, match="2 elements"):
        calibrate.lookup(doc, "a.b[k=2].v")
    with pytest.raises(KeyError, match="no 'c'"):
        calibrate.lookup(doc, "a.c")
    assert calibrate.identify({"bench": "bus"}) == "bus"
    assert calibrate.identify({"benchmark": "gateway"}) == "gateway"
    assert calibrate.identify({"benchmark": "other"}) is None
    assert calibrate.last_json('progress\n{"x": 1}\n') == {"x": 1}


def test_calibrate_from_files_reproduces_the_shipped_values(
    calibrate: ModuleType, tmp_path: Path
) -> None:
    """`calibrate.py FILE...` with the outputs kept in the shipped file runs no benchmark and
    writes the same coefficients, loadable by the model."""
    shipped = json.loads(SHIPPED.read_text())
    files = []
    for name, src in shipped["sources"].items():
        f = tmp_path / f"{name}.json"
        f.write_text("some progress line\n" + json.dumps(src["output"]) + "\n")
        files.append(str(f))
    out = tmp_path / "coefficients.json"
    assert calibrate.main([*files, "--out", str(out), "--machine", "the test machine"]) == 0
    doc = json.loads(out.read_text())
    for name, c in doc["coefficients"].items():
        assert c["value"] == shipped["coefficients"][name]["value"], name
        assert c["machine"] == "the test machine"
    assert set(doc["sources"]) == set(shipped["sources"])
    assert all(s["command"].startswith("read from") for s in doc["sources"].values())
    co = load_coefficients(out)
    assert plan(PlanInputs(players=100_000), co).zones.count == (
        plan(PlanInputs(players=100_000), load_coefficients()).zones.count
    )


def test_calibration_runs_zones_on_the_cpu_clock(calibrate: ModuleType, tmp_path: Path) -> None:
    """The wrapper calibrate.py runs bench_tick and bench_handoff through gives every Zone
    the thread CPU clock as its tick timer, whatever else it is given."""
    import subprocess

    script = tmp_path / "show.py"
    script.write_text(
        "import sys\n"
        "from shardworld.zone import Zone, ZoneConfig\n"
        "from shardworld.testing import ManualClock\n"
        "cfg = ZoneConfig(name='x', world=(0.0, 0.0, 100.0, 100.0))\n"
        "print(Zone(cfg).timer.__name__, Zone(cfg, None, None, ManualClock()).timer.__name__,"
        " sys.argv[1:])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", calibrate._CPU_TIMER_RUNNER, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.split() == ["thread_time", "thread_time", "['--quick']"]
