"""The Locust swarm (loadtest/) against a real world, and its pure parts.

A world runs as a subprocess (`shardworld run zones/arena --dev`), Locust runs headless in
subprocesses (never imported here: it monkeypatches the standard library with gevent), and
the checks read its JSON summary and CSV files. One short run per behaviour.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardworld.client.sdk import LatencyHistogram

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.behaviors import (  # noqa: E402
    Border,
    Commute,
    borders_of_rects,
    format_borders,
    parse_borders,
    storm_slot,
)
from loadtest.metrics import Histogram, WorkerState, merge_states, summarize, window  # noqa: E402

LOCUST = Path(sys.executable).parent / "locust"
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def world_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "shardworld"),
            "run",
            str(ROOT / "zones" / "arena"),
            "--dev",
            "--port",
            str(port),
            "--npcs",
            "50",
            "--map",
            "never",
            "--seconds",
            "300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 90.0
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "the world exited before it listened"
            time.sleep(0.2)
        else:
            raise AssertionError("the world did not listen within 90 s")
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _locust(
    url: str, tmp: Path, users: int, seconds: int, *options: str
) -> tuple[int, dict[str, Any], dict[tuple[str, str], dict[str, str]], str]:
    """Run a headless swarm; returns (exit code, JSON summary, stats rows by (type, name),
    output)."""
    summary = tmp / "summary.json"
    cmd = [
        str(LOCUST),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-H",
        url,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--only-summary",
        "--csv",
        str(tmp / "run"),
        "--exit-code-on-error",
        "1",
        "--summary-json",
        str(summary),
        *options,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT)
    text = out.stdout + out.stderr
    assert summary.exists(), text[-3000:]
    stats: dict[tuple[str, str], dict[str, str]] = {}
    with open(tmp / "run_stats.csv") as f:
        for row in csv.DictReader(f):
            stats[(row["Type"], row["Name"])] = row
    return out.returncode, json.loads(summary.read_text()), stats, text


def _assert_healthy(s: dict[str, Any], users: int) -> None:
    assert s["players_started"] == users
    assert s["join_failures"] == {}, s
    assert s["unexpected_disconnects"] == 0, s
    assert s["errors_by_code"] == {} and s["kicks_by_code"] == {}, s
    assert s["protocol_errors"] == 0 and s["mirror_errors"] == 0, s
    # The arena snapshots at 20 Hz and players send at 20 Hz; a busy shared machine may
    # slow either, never to half.
    assert s["snapshots_per_player_s"] > 10.0, s
    assert s["inputs_per_player_s"] > 10.0, s
    age = s["snapshot_age_ms"]
    upper = s["snapshot_age_upper_ms"]
    assert 0.0 <= age["p50"] <= upper["p50"] < 2000.0, s
    assert 0.0 < s["rtt_ms"]["p50"] < 1000.0, s
    assert s["input_to_ack_ms"]["p50"] is not None, s


def test_wanderers_join_read_snapshots_and_fail_nothing(world_url: str, tmp_path: Path) -> None:
    rc, s, stats, text = _locust(world_url, tmp_path, 20, 8, "--behavior", "wander")
    assert rc == 0, text[-3000:]
    _assert_healthy(s, 20)
    assert s["joins"] == 20 and s["connected_at_stop"] == 20, s
    assert stats[("JOIN", "join")]["Request Count"] == "20"
    assert stats[("JOIN", "join")]["Failure Count"] == "0"
    snaps = stats[("SNAP", "age")]
    assert int(snaps["Request Count"]) > 20 * 5 * 10
    assert float(snaps["Average Content Size"]) > 21  # at least the payload header
    assert stats[("", "Aggregated")]["Failure Count"] == "0"
    assert s["cpu_ms_per_player_s"] is not None and s["cpu_ms_per_player_s"] > 0


def test_reconnect_storm_resumes_the_same_entity_then_joins_anew(
    world_url: str, tmp_path: Path
) -> None:
    rc, s, stats, text = _locust(
        world_url,
        tmp_path,
        10,
        10,
        "--behavior",
        "storm",
        "--storm-every",
        "2.5",
        "--storm-spread",
        "0.5",
    )
    assert rc == 0, text[-3000:]
    _assert_healthy(s, 10)
    # Every player goes through at least two storms: a resume, then a fresh join.
    assert s["storm_drops"] >= 20, s
    assert s["resumes"] >= 10 and s["rejoins"] >= 10, s
    # A resume that came back as another entity is counted and fails the run.
    assert s["resumes_lost_entity"] == 0, s
    assert stats[("JOIN", "resume")]["Failure Count"] == "0"
    assert s["resume_ms"]["p50"] is not None


def test_mixed_crowd_with_full_mirrors(world_url: str, tmp_path: Path) -> None:
    """Rush, commute, storm and wander together; every payload applied to a mirror."""
    rc, s, _stats, text = _locust(
        world_url,
        tmp_path,
        16,
        7,
        "--behavior",
        "mix",
        "--mirror",
        "--borders",
        "x=1000,y=1000",
        "--hotspot",
        "1000,1000",
        "--storm-every",
        "3",
    )
    assert rc == 0, text[-3000:]
    _assert_healthy(s, 16)
    assert s["storm_drops"] >= 4, s  # the four storm players


def test_failures_are_named_and_fail_the_run(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{_free_port()}"  # nothing listens there
    rc, s, stats, _ = _locust(url, tmp_path, 2, 2)
    assert rc == 1
    assert s["joins"] == 0
    assert s["join_failures"].get("refused", 0) >= 2, s
    assert int(stats[("JOIN", "join")]["Failure Count"]) >= 2


# --- the pure parts --------------------------------------------------------------------------


def test_histogram_matches_the_sdk_and_merges_exactly() -> None:
    rng = random.Random(1)
    samples = [rng.lognormvariate(-4.0, 1.5) for _ in range(5000)]
    ours, sdk = Histogram(), LatencyHistogram()
    for v in samples:
        ours.record(v)
        sdk.record(v)
    for q in (1, 50, 90, 99, 100):
        assert ours.percentile(q) == pytest.approx(sdk.percentile(q), rel=1e-9)
    a, b = Histogram(), Histogram()
    for i, v in enumerate(samples):
        (a if i % 2 else b).record(v)
    a.merge(Histogram.from_dict(b.to_dict()))
    assert a.percentile(99) == ours.percentile(99) and a.count == 5000
    exact = sorted(samples)[math.ceil(0.99 * 5000) - 1]
    assert ours.percentile(99) == pytest.approx(exact, rel=0.011)
    ours.record(math.nan)
    ours.record(math.inf)
    assert ours.count == 5000


def test_worker_states_add_up_and_window() -> None:
    states = []
    for w in range(3):
        st = WorkerState()
        st.opened(1, 0.0)
        st.counts["snapshots"] += 100 * (w + 1)
        st.by_name["disconnects"]["1006 ABNORMAL"] += w
        st.hist["snapshot_age"].record(0.01 * (w + 1))
        states.append(st.to_dict(10.0, 1.0, 10.0))
    merged = merge_states(states)
    s = summarize(merged)
    assert merged["workers"] == 3 and merged["connected"] == 3
    assert s["snapshots"] == 600 and s["unexpected_disconnects"] == 3
    assert s["disconnects_by_code"] == {"1006 ABNORMAL": 3}
    assert s["snapshot_age_ms"]["max"] == pytest.approx(30.0, rel=0.02)
    assert s["cpu_ms_per_player_s"] == pytest.approx(3e3 / 30.0)
    st = WorkerState()
    st.opened(1, 0.0)
    st.hist["rtt"].record(0.5)
    early = st.to_dict(1.0, 0.1, 1.0)
    st.hist["rtt"].record(0.002)
    st.counts["snapshots"] += 40
    w = summarize(window(st.to_dict(3.0, 0.3, 3.0), early))
    assert w["snapshots"] == 40 and w["player_seconds"] == pytest.approx(2.0)
    assert w["rtt_ms"]["p50"] == pytest.approx(2.0, rel=0.03)


def test_borders_of_a_four_zone_split() -> None:
    rects = [(0.0, 0.0, 10.0, 10.0), (10.0, 0.0, 20.0, 10.0), (0.0, 10.0, 20.0, 20.0)]
    got = borders_of_rects(rects)
    assert set(got) == {
        Border("x", 10.0, 0.0, 10.0),
        Border("y", 10.0, 0.0, 10.0),
        Border("y", 10.0, 10.0, 20.0),
    }
    assert parse_borders(format_borders(got)) == got
    assert parse_borders("x=5, y=7") == [Border("x", 5.0), Border("y", 7.0)]
    for bad in ("z=1", "x", "x=1:5:2", "x=a"):
        with pytest.raises(ValueError):
            parse_borders(bad)


def test_a_commuter_walks_back_and_forth_across_its_border() -> None:
    world = (0.0, 0.0, 200.0, 200.0)
    c = Commute(world, random.Random(3), [Border("x", 100.0)], distance=10.0)
    pos, dt, speed = (80.0, 50.0), 0.05, 6.0
    for step in range(int(60 / dt)):
        ix, iy = c.steer(pos, step * dt)
        assert math.hypot(ix, iy) <= 1.0 + 1e-9
        pos = (pos[0] + ix * speed * dt, pos[1] + iy * speed * dt)
        assert 85.0 <= pos[0] <= 115.0 or step < 200
    assert c.crossings >= 10  # 20 m a leg at 6 m/s: a crossing every ~3.5 s


def test_storms_happen_on_the_wall_clock_for_everyone() -> None:
    # Players whose offsets differ by less than the spread change slot within it.
    assert storm_slot(100.0, 10.0, 0.0) == 10
    assert storm_slot(100.4, 10.0, 0.5) == 9
    assert storm_slot(100.6, 10.0, 0.5) == 10
