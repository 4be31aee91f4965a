"""Prometheus metrics: the text format, values against the stats objects, the HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from shardworld.gateway import EmbeddedWorld, Gateway, GatewayConfig
from shardworld.metrics import (
    CONTENT_TYPE,
    TICK_BUCKETS_S,
    Counter,
    Family,
    Gauge,
    Histogram,
    MetricsServer,
    Registry,
    coordinator_collector,
    gateway_collector,
    zone_collector,
)
from shardworld.protocol.messages import Error, Hello, Snapshot, Welcome, decode_server, encode
from shardworld.sharding.node import NodeStats
from shardworld.testing import ManualClock
from shardworld.zone import MODE_PLAYER, Zone, ZoneConfig
from shardworld.zone.stats import PHASES, ZoneStats

ROOT = Path(__file__).resolve().parents[1]

# --- an independent parser of the text exposition format 0.0.4 ---------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
LABEL = rf"[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE}"
VALUE = r"(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|[+-]Inf|NaN)"
SAMPLE_RE = re.compile(rf"^({NAME})(\{{(?:{LABEL}(?:,{LABEL})*)?,?\}})? ({VALUE})(?: -?\d+)?$")
LABEL_RE = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})")
HELP_RE = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")


def _unescape(v: str) -> str:
    out, i = [], 0
    while i < len(v):
        if v[i] == "\\":
            nxt = v[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
            i += 2
        else:
            out.append(v[i])
            i += 1
    return "".join(out)


def parse(text: str) -> dict[str, Any]:
    """Families by name: {"type", "help", "samples": [(name, labels, value)]}; asserts the
    rules of the format (TYPE before samples, once per family, samples grouped)."""
    fams: dict[str, Any] = {}
    current: str | None = None
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):
        if m := HELP_RE.match(line):
            name = m.group(1)
            fams.setdefault(name, {"type": None, "help": None, "samples": []})
            assert fams[name]["help"] is None, f"two HELP lines for {name}"
            fams[name]["help"] = m.group(2)
            current = name
            continue
        if m := TYPE_RE.match(line):
            name = m.group(1)
            fams.setdefault(name, {"type": None, "help": None, "samples": []})
            assert fams[name]["type"] is None, f"two TYPE lines for {name}"
            assert not fams[name]["samples"], f"TYPE after samples of {name}"
            fams[name]["type"] = m.group(2)
            current = name
            continue
        assert not line.startswith("#"), line
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        sname, raw_labels, raw_value = m.group(1), m.group(2) or "", m.group(3)
        labels = {k: _unescape(v[1:-1]) for k, v in LABEL_RE.findall(raw_labels)}
        assert current is not None
        kind = fams[current]["type"]
        allowed = {current}
        if kind == "histogram":
            allowed = {current + s for s in ("_bucket", "_sum", "_count")}
        assert sname in allowed, f"{sname} outside its family {current}"
        value = float(raw_value.replace("Inf", "inf"))
        fams[current]["samples"].append((sname, labels, value))
    for name, f in fams.items():
        if f["type"] == "histogram":
            _check_histogram(name, f["samples"])
    return fams


def _check_histogram(name: str, samples: list[Any]) -> None:
    series: dict[tuple[Any, ...], dict[str, Any]] = {}
    for sname, labels, value in samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sname.endswith("_bucket"):
            s["buckets"].append((float(labels["le"].replace("Inf", "inf")), value))
        elif sname.endswith("_sum"):
            s["sum"] = value
        else:
            s["count"] = value
    for s in series.values():
        les = [le for le, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        assert les == sorted(les) and les[-1] == float("inf"), name
        assert counts == sorted(counts), f"{name}: buckets not cumulative"
        assert counts[-1] == s["count"], f"{name}: +Inf bucket != count"


def value(fams: dict[str, Any], name: str, **labels: str) -> float:
    fam = name
    if fam not in fams:
        fam = re.sub(r"_(bucket|sum|count)$", "", name)
    for sname, lab, v in fams[fam]["samples"]:
        if sname == name and all(lab.get(k) == want for k, want in labels.items()):
            return float(v)
    raise KeyError((name, labels))


def hist_series(fams: dict[str, Any], name: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for sname, lab, v in fams[name]["samples"]:
        if all(lab.get(k) == want for k, want in labels.items()):
            out[lab["le"] if sname.endswith("_bucket") else sname.rsplit("_", 1)[1]] = v
    return out


def check_naming(fams: dict[str, Any]) -> None:
    for name, f in fams.items():
        assert name.startswith("shardworld_"), name
        assert f["help"], name
        if f["type"] == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        assert "_ms" not in name and "millis" not in name, name


# --- the registry and the format ------------------------------------------------------------


def test_render_escapes_and_parses() -> None:
    reg = Registry()
    weird = 'a "quoted" back\\slash\nnewline'
    reg.register(
        lambda: [
            Family("shardworld_x_total", "counter", "help with \\ and\nnewline").add(
                3, {"who": weird}
            ),
            Family("shardworld_y", "gauge", "g").add(float("nan")).add(float("inf"), {"k": "v"}),
            Family("shardworld_z", "gauge", "empty families are left out"),
        ]
    )
    text = reg.render()
    fams = parse(text)
    assert set(fams) == {"shardworld_x_total", "shardworld_y"}
    assert fams["shardworld_x_total"]["samples"] == [("shardworld_x_total", {"who": weird}, 3.0)]
    ys = fams["shardworld_y"]["samples"]
    assert np.isnan(ys[0][2]) and ys[1][2] == float("inf")
    assert "\\n" in fams["shardworld_x_total"]["help"]
    assert Registry().render() == ""


def test_families_merge_across_collectors_and_types_must_agree() -> None:
    reg = Registry()
    reg.register(lambda: [Family("shardworld_a", "gauge", "h").add(1, {"zone": "z0"})])
    reg.register(lambda: [Family("shardworld_a", "gauge", "h").add(2, {"zone": "z1"})])
    fams = parse(reg.render())
    assert [s[2] for s in fams["shardworld_a"]["samples"]] == [1.0, 2.0]
    reg.register(lambda: [Family("shardworld_a", "counter", "h").add(1)])
    with pytest.raises(ValueError, match="shardworld_a"):
        reg.render()
    with pytest.raises(ValueError):
        Family("shardworld_b", "enum", "h")


def test_a_failing_collector_does_not_break_the_scrape() -> None:
    reg = Registry()

    def broken() -> list[Family]:
        raise RuntimeError("boom")

    reg.register(broken)
    reg.register(lambda: [Family("shardworld_ok", "gauge", "h").add(1)])
    assert value(parse(reg.render()), "shardworld_ok") == 1.0


def test_counter_and_gauge_instruments() -> None:
    reg = Registry()
    c, g = Counter("shardworld_c_total", "c"), Gauge("shardworld_g", "g")
    reg.register(c.collect)
    reg.register(g.collect)
    c.inc(zone="z0")
    c.inc(2.5, zone="z0")
    c.inc(zone="z1")
    g.set(7, zone="z0")
    g.set(-3, zone="z0")
    fams = parse(reg.render())
    assert value(fams, "shardworld_c_total", zone="z0") == 3.5
    assert value(fams, "shardworld_c_total", zone="z1") == 1.0
    assert value(fams, "shardworld_g", zone="z0") == -3.0
    with pytest.raises(ValueError):
        c.inc(-1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
        max_size=200,
    ),
    st.integers(1, 4),
)
def test_histogram_counts_match_brute_force(values: list[float], parts: int) -> None:
    h = Histogram("shardworld_h_seconds", "h")
    chunks = np.array_split(np.asarray(values, np.float64), parts)
    for chunk in chunks:
        h.observe_many(chunk, {"zone": "z"})
    if values:
        h.observe(0.001, zone="z")  # a value exactly on a bound belongs to that bucket
        values = [*values, 0.001]
    reg = Registry()
    reg.register(h.collect)
    text = reg.render()
    if not values:
        assert text == ""
        return
    series = hist_series(parse(text), "shardworld_h_seconds", zone="z")
    for le in TICK_BUCKETS_S:
        want = sum(1 for v in values if v <= le)
        assert series[str(le) if not float(le).is_integer() else str(int(le))] == want
    assert series["+Inf"] == len(values) == series["count"]
    assert series["sum"] == pytest.approx(sum(values))


# --- collectors against the stats objects --------------------------------------------------


def _stepped_zone(ticks: int, window: int | None = None) -> Zone:
    zone = Zone(ZoneConfig(tick_hz=20.0, snapshot_hz=20.0), clock=ManualClock())
    if window is not None:
        zone.stats = ZoneStats(window=window)
    rng = np.random.default_rng(5)
    zone.spawn(40, pos=zone.random_points(40), kind=2)
    players = zone.spawn(
        6,
        pos=zone.random_points(6),
        owner=np.arange(1, 7, dtype=np.uint64),
        mode=MODE_PLAYER,
        observer=1,
    )
    for t in range(ticks):
        zone.submit_input(999_999, t + 1, (0.5, 0.5))  # an unknown entity
        if t % 3 == 0:
            zone.inputs.push_many(
                players,
                np.full(len(players), t + 1, np.uint32),
                rng.uniform(-1, 1, (len(players), 2)).astype(np.float32),
                np.zeros(len(players), np.uint32),
            )
        zone.step()
    return zone


def _scrape(*collectors: Any) -> dict[str, Any]:
    reg = Registry()
    for c in collectors:
        reg.register(c)
    fams = parse(reg.render())
    check_naming(fams)
    return fams


def test_zone_metrics_match_its_stats() -> None:
    zone = _stepped_zone(30)
    collect = zone_collector(zone, "w")
    fams = _scrape(collect)
    st, lab = zone.stats, {"world": "w", "zone": zone.config.name}
    assert value(fams, "shardworld_zone_ticks_total", **lab) == st.ticks == 30
    assert value(fams, "shardworld_zone_snapshots_total", **lab) == st.snapshots > 0
    assert value(fams, "shardworld_zone_entities", **lab) == len(zone.entities) == 46
    assert value(fams, "shardworld_zone_ghosts", **lab) == 0
    assert value(fams, "shardworld_zone_observers", **lab) == st.last_observers == 6
    assert value(fams, "shardworld_zone_interest_pairs", **lab) == st.last_pairs
    assert value(fams, "shardworld_zone_sent_bytes_total", **lab) == st.bytes_out > 0
    assert value(fams, "shardworld_zone_tick", **lab) == zone.tick
    for outcome in ("applied", "dropped", "unknown", "out_of_order", "invalid"):
        got = value(fams, "shardworld_zone_inputs_total", outcome=outcome, **lab)
        assert got == getattr(st, f"inputs_{outcome}")
    assert value(fams, "shardworld_zone_inputs_total", outcome="unknown", **lab) == 30
    assert value(fams, "shardworld_zone_inputs_total", outcome="applied", **lab) > 0
    assert value(fams, "shardworld_zone_late_ticks_total", **lab) == st.late_ticks
    assert value(fams, "shardworld_zone_skipped_ticks_total", **lab) == st.skipped_ticks
    pct = st.percentiles()
    assert value(fams, "shardworld_zone_tick_p99_seconds", **lab) == pytest.approx(
        pct["p99_ms"] / 1000
    )
    assert value(fams, "shardworld_zone_tick_p50_seconds", **lab) == pytest.approx(
        pct["p50_ms"] / 1000
    )
    # The histogram, against the stats' own window of tick times.
    ms = st.tick_ms()
    series = hist_series(fams, "shardworld_zone_tick_duration_seconds", **lab)
    assert series["count"] == 30 == series["+Inf"]
    assert series["sum"] == pytest.approx(ms.sum() / 1000)
    for le in TICK_BUCKETS_S:
        key = str(int(le)) if float(le).is_integer() else str(le)
        assert series[key] == int(np.count_nonzero(ms / 1000 <= le))
    phase_ms = st._phase_ms[:30].sum(axis=0)
    for i, p in enumerate(PHASES):
        got = value(fams, "shardworld_zone_phase_seconds_total", phase=p, **lab)
        assert got == pytest.approx(phase_ms[i] / 1000)
        mean = value(fams, "shardworld_zone_phase_mean_seconds", phase=p, **lab)
        assert mean == pytest.approx(st.phase_means()[p] / 1000)
    assert "shardworld_zone_handoffs_total" not in fams  # no node: no sharding metrics


def test_tick_histogram_is_cumulative_across_scrapes_and_window_wraps() -> None:
    zone = Zone(ZoneConfig(tick_hz=20.0), clock=ManualClock())
    zone.stats = st = ZoneStats(window=8)
    collect = zone_collector(zone, "w")
    rng = np.random.default_rng(1)
    seen: list[float] = []
    ticks = 0
    for burst in (3, 5, 8, 20, 1, 0, 7):
        ms = rng.uniform(0.1, 120.0, burst)
        for v in ms:
            st.record_tick(float(v), np.full(len(PHASES), v / len(PHASES)))
        ticks += burst
        seen.extend(ms[-8:].tolist())  # older ones fell out of the window unobserved
        fams = _scrape(collect)
        series = hist_series(fams, "shardworld_zone_tick_duration_seconds", zone=zone.config.name)
        assert series["count"] == len(seen)
        assert value(fams, "shardworld_zone_ticks_total") == ticks
        assert series["sum"] == pytest.approx(sum(seen) / 1000)
        for le in TICK_BUCKETS_S:
            key = str(int(le)) if float(le).is_integer() else str(le)
            assert series[key] == sum(1 for v in seen if v / 1000 <= le)
        total_phase = sum(
            value(fams, "shardworld_zone_phase_seconds_total", phase=p) for p in PHASES
        )
        assert total_phase == pytest.approx(sum(seen) / 1000)


def test_node_metrics_match_node_stats() -> None:
    zone = _stepped_zone(2)
    ns = NodeStats()
    for i, k in enumerate(vars(ns)):
        if isinstance(getattr(ns, k), int):
            setattr(ns, k, 10 + i)
    ns.handoff_ticks.extend([1, 2, 3, 4, 100])
    node = SimpleNamespace(
        stats=ns,
        lease=SimpleNamespace(token=4),
        fenced=False,
        cellmap=SimpleNamespace(epoch=9),
    )
    lab = {"world": "w", "zone": zone.config.name}
    fams = _scrape(zone_collector(zone, "w", node))  # type: ignore[arg-type]
    assert value(fams, "shardworld_zone_handoffs_total", direction="in", **lab) == ns.handoffs_in
    assert value(fams, "shardworld_zone_handoffs_total", direction="out", **lab) == ns.handoffs_out
    assert value(fams, "shardworld_zone_bounces_total", direction="in", **lab) == ns.bounced_in
    assert value(fams, "shardworld_zone_bounces_total", direction="out", **lab) == ns.bounced_out
    for attr, name in (
        ("ghost_bytes_out", "shardworld_zone_ghost_sent_bytes_total"),
        ("ghosts_out", "shardworld_zone_ghosts_sent_total"),
        ("stale_refused", "shardworld_zone_stale_refused_total"),
        ("wire_errors", "shardworld_zone_wire_errors_total"),
        ("checkpoints", "shardworld_zone_checkpoints_total"),
        ("checkpoint_bytes", "shardworld_zone_checkpoint_bytes_total"),
        ("ghosts_expired", "shardworld_zone_ghosts_expired_total"),
        ("adopted", "shardworld_zone_adopted_total"),
    ):
        assert value(fams, name, **lab) == getattr(ns, attr), name
    assert value(fams, "shardworld_zone_lease_held", **lab) == 1.0
    assert value(fams, "shardworld_zone_fenced", **lab) == 0.0
    assert value(fams, "shardworld_zone_map_epoch", **lab) == 9
    p99 = float(np.percentile([1, 2, 3, 4, 100], 99))
    assert value(fams, "shardworld_zone_handoff_latency_ticks", quantile="0.99") == p99
    node.fenced = True
    fams = _scrape(zone_collector(zone, "w", node))  # type: ignore[arg-type]
    assert value(fams, "shardworld_zone_lease_held", **lab) == 0.0
    assert value(fams, "shardworld_zone_fenced", **lab) == 1.0


def test_coordinator_metrics_match_status() -> None:
    status = {
        "node": "host:1",
        "leader": True,
        "token": 12,
        "epoch": 5,
        "maps_published": 3,
        "failovers": 1,
        "zones": {
            "z0": {"p99_ms": 4.5, "entities": 100, "epoch": 5},
            "z1": {"p99_ms": 12.0, "entities": 7, "epoch": 4},
        },
    }
    coord = SimpleNamespace(status=lambda: status)
    fams = _scrape(coordinator_collector(coord, "w"))  # type: ignore[arg-type]
    lab = {"world": "w", "node": "host:1"}
    assert value(fams, "shardworld_coordinator_leader", **lab) == 1
    assert value(fams, "shardworld_coordinator_lease_token", **lab) == 12
    assert value(fams, "shardworld_coordinator_map_epoch", **lab) == 5
    assert value(fams, "shardworld_coordinator_maps_published_total", **lab) == 3
    assert value(fams, "shardworld_coordinator_failovers_total", **lab) == 1
    assert value(fams, "shardworld_coordinator_zone_tick_p99_seconds", zone="z1") == 0.012
    assert value(fams, "shardworld_coordinator_zone_entities", zone="z0") == 100
    status.update(leader=False, token=None)
    fams = _scrape(coordinator_collector(coord, "w"))  # type: ignore[arg-type]
    assert value(fams, "shardworld_coordinator_leader", **lab) == 0
    assert value(fams, "shardworld_coordinator_lease_token", **lab) == 0


async def test_gateway_metrics_match_its_stats() -> None:
    zone = Zone(ZoneConfig(tick_hz=50.0, snapshot_hz=50.0))
    zone.warm_up()
    gw = Gateway(EmbeddedWorld(zone), GatewayConfig(port=0, dev=True))
    await gw.start()
    ticking = asyncio.create_task(zone.run())
    try:
        async with connect(gw.url, compression=None, ping_interval=None) as ws:
            await ws.send(encode(Hello(token="", resume="", client="tests")))
            errors = 0
            snapshots = 0
            deadline = time.monotonic() + 5.0
            sent_text = False
            while time.monotonic() < deadline and (errors == 0 or snapshots < 3):
                raw = await asyncio.wait_for(ws.recv(), 2.0)
                msg = decode_server(raw) if isinstance(raw, bytes) else None
                if isinstance(msg, Welcome) and not sent_text:
                    # A second HELLO is answered with an ERROR, and the player stays.
                    await ws.send(encode(Hello(token="", resume="", client="tests")))
                    sent_text = True
                elif isinstance(msg, Error):
                    errors += 1
                elif isinstance(msg, Snapshot):
                    snapshots += 1
            assert errors == 1 and snapshots >= 3
            gs = gw.stats()
            fams = _scrape(gateway_collector(gw, "w", 3))
    finally:
        zone.stop()
        await ticking
        await gw.stop()
    lab = {"world": "w", "gateway": "3"}
    assert value(fams, "shardworld_gateway_connections", **lab) == gs["connections"] == 1
    assert value(fams, "shardworld_gateway_players", **lab) == gs["joined"] == 1
    assert value(fams, "shardworld_gateway_joins_total", **lab) == gs["joins"] == 1
    assert value(fams, "shardworld_gateway_frames_sent_total", **lab) == gs["frames_sent"]
    assert value(fams, "shardworld_gateway_sent_bytes_total", **lab) == gs["bytes_out"] > 0
    assert value(fams, "shardworld_gateway_inputs_total", **lab) == gs["inputs"]
    for outcome in ("sent", "dropped", "skipped"):
        got = value(fams, "shardworld_gateway_snapshots_total", outcome=outcome, **lab)
        assert got == gs[f"snapshots_{outcome}"]
    assert gs["errors"] == {"ALREADY_JOINED": 1}
    assert value(fams, "shardworld_gateway_errors_total", code="ALREADY_JOINED", **lab) == 1
    assert [s for s in fams.get("shardworld_gateway_kicks_total", {"samples": []})["samples"]] == [
        ("shardworld_gateway_kicks_total", {**lab, "code": c}, float(n))
        for c, n in gs["kicks"].items()
    ]


# --- the HTTP endpoint ------------------------------------------------------------------------


async def _request(port: int, data: bytes, *, close_write: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_write and writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _split(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return status, headers, body


@pytest.fixture
async def server() -> Any:
    zone = _stepped_zone(5)
    reg = Registry()
    reg.register(zone_collector(zone, "w"))
    srv = MetricsServer(reg, "127.0.0.1", 0, timeout_s=0.5)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def test_http_get_metrics_and_404(server: MetricsServer) -> None:
    resp = await _request(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = _split(resp)
    assert status == 200 and headers["content-type"] == CONTENT_TYPE
    fams = parse(body.decode("utf-8"))
    assert value(fams, "shardworld_zone_ticks_total") == 5
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    for req in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET /metricsx HTTP/1.1\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"HEAD /metrics HTTP/1.1\r\n\r\n",
        b"GET /other/metrics HTTP/1.0\r\n\r\n",
    ):
        status, _, _ = _split(await _request(server.port, req))
        assert status == 404, req
    # A query string is ignored (Prometheus may add one); so is a bare request line.
    status, _, _ = _split(await _request(server.port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"))
    assert status == 200
    status, _, _ = _split(await _request(server.port, b"GET /metrics HTTP/1.0\r\n"))
    assert status == 200
    # And through an ordinary HTTP client.
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, _urlopen, server.url)
    assert "shardworld_zone_entities" in text
    with pytest.raises(urllib.error.HTTPError) as err:
        await loop.run_in_executor(None, _urlopen, server.url.replace("/metrics", "/nope"))
    assert err.value.code == 404


def _urlopen(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"] == CONTENT_TYPE
        return str(r.read().decode("utf-8"))


async def test_http_survives_garbage(server: MetricsServer) -> None:
    port = server.port
    status, _, _ = _split(await _request(port, b"\x00\xff\xfe garbage\r\n\r\n"))
    assert status == 400
    status, _, _ = _split(await _request(port, b"GET\r\n\r\n"))
    assert status == 400
    status, _, _ = _split(await _request(port, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 3000))
    assert status == 431
    assert await _request(port, b"") == b""  # connect and close: no answer, no crash
    # A client that sends half a request and stalls is dropped after the timeout.
    t0 = time.monotonic()
    assert await _request(port, b"GET /met", close_write=False) == b""
    assert time.monotonic() - t0 < 3.0
    # Many at once, some closing at once.
    await asyncio.gather(
        *(_request(port, b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(20)),
        *(_request(port, os.urandom(64)) for _ in range(20)),
    )
    status, _, body = _split(await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert status == 200 and b"shardworld_zone_ticks_total" in body
    assert server.bad_requests >= 3


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_http_never_crashes_on_random_bytes(data: bytes) -> None:
    async def go() -> None:
        reg = Registry()
        reg.register(lambda: [Family("shardworld_up", "gauge", "h").add(1)])
        srv = MetricsServer(reg, "127.0.0.1", 0, timeout_s=0.2)
        await srv.start()
        try:
            resp = await _request(srv.port, data)
            if resp:
                assert resp.startswith(b"HTTP/1.1 ")
            status, _, body = _split(await _request(srv.port, b"GET /metrics HTTP/1.1\r\n\r\n"))
            assert status == 200 and b"shardworld_up 1" in body
        finally:
            await srv.stop()

    asyncio.run(go())


# --- the command line -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shardworld_run_serves_metrics() -> None:
    mport, gport = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shardworld.cli",
            "run",
            str(ROOT / "zones" / "arena"),
            "--dev",
            "--zones",
            "2",
            "--port",
            str(gport),
            "--metrics-port",
            str(mport),
            "--seconds",
            "6",
            "--map",
            "never",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        fams: dict[str, Any] | None = None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = _urlopen(f"http://127.0.0.1:{mport}/metrics")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
                continue
            fams = parse(text)
            if value(fams, "shardworld_zone_ticks_total", zone="z1") >= 20:
                break
            time.sleep(0.2)
        assert fams is not None, "never scraped"
        check_naming(fams)
        zones = {lab["zone"] for _, lab, _ in fams["shardworld_zone_entities"]["samples"]}
        assert zones == {"z0", "z1"}
        entities = sum(v for _, _, v in fams["shardworld_zone_entities"]["samples"])
        assert entities > 0
        assert value(fams, "shardworld_zone_tick_duration_seconds_count", zone="z0") > 0
        assert value(fams, "shardworld_zone_map_epoch", zone="z0") >= 1
        assert "shardworld_zone_handoffs_total" in fams
        assert value(fams, "shardworld_gateway_players", gateway="0") == 0
        assert value(fams, "shardworld_gateway_connections", gateway="0") == 0
        assert value(fams, "shardworld_coordinator_leader", node="run") == 1
        assert value(fams, "shardworld_coordinator_map_epoch", node="run") >= 1
        with pytest.raises(urllib.error.HTTPError) as err:
            _urlopen(f"http://127.0.0.1:{mport}/")
        assert err.value.code == 404
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert f"http://127.0.0.1:{mport}/metrics" in out.decode(errors="replace")


# --- the docs and the dashboard name only metrics that exist ----------------------------------


def _every_family() -> set[str]:
    zone = _stepped_zone(1)
    ns = NodeStats()
    ns.handoff_ticks.append(1)
    node = SimpleNamespace(stats=ns, lease=None, fenced=False, cellmap=SimpleNamespace(epoch=1))
    # A real gateway's stats (not started: all zero), so a renamed key fails here.
    gs = Gateway(EmbeddedWorld(zone), GatewayConfig(port=0, dev=True)).stats()
    gs.update(errors={"MALFORMED": 1}, kicks={"ABUSE": 1})
    status = {
        "node": "n",
        "leader": True,
        "token": 1,
        "epoch": 1,
        "maps_published": 0,
        "failovers": 0,
        "zones": {"z0": {"p99_ms": 1.0, "entities": 1, "epoch": 1}},
    }
    fams = _scrape(
        zone_collector(zone, "w", node),  # type: ignore[arg-type]
        gateway_collector(SimpleNamespace(stats=lambda: gs), "w"),  # type: ignore[arg-type]
        coordinator_collector(SimpleNamespace(status=lambda: status), "w"),  # type: ignore[arg-type]
    )
    return set(fams)


def test_docs_and_dashboard_cover_the_metrics() -> None:
    import json

    names = _every_family()
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(shardworld_[a-z0-9_]+)`", doc))
    assert names <= documented, f"undocumented: {sorted(names - documented)}"
    dash = json.loads((ROOT / "docs" / "grafana" / "shardworld.json").read_text("utf-8"))
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for n in re.findall(r"shardworld_[a-z0-9_]+", target["expr"]):
                used.add(re.sub(r"_(bucket|sum|count)$", "", n) if n not in names else n)
    assert used and used <= names, f"unknown in the dashboard: {sorted(used - names)}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ("p99", "entities", "handoffs", "ghost bytes", "players", "frames", "errors",
                 "leader", "map epoch"):  # fmt: skip
        assert want in titles, want


async def test_player_record_metrics_match_persistence_stats() -> None:
    from shardworld.entities import Field, Scope
    from shardworld.store.memory import MemoryStore
    from shardworld.zone import ZoneHandler

    class Saver(ZoneHandler):
        fields = (Field("xp", np.uint32, scope=Scope.OWNER),)
        persistent = ("xp",)

    store = MemoryStore(f"metrics-players-{os.getpid()}", "w")
    await store.start()
    zone = Zone(ZoneConfig(name="p", world=(0.0, 0.0, 100.0, 100.0)), Saver())
    zone.use_store(store)
    lab = {"world": "w", "zone": "p"}
    assert zone.players is not None
    for pid in (11, 12, 13):
        loaded = await zone.players.load(pid)
        assert loaded.record is None and not loaded.failed
        zone.join_player(pid, loaded=loaded)
    zone.leave_player(int(zone.entities.live_ids()[0]))
    await zone.save_players()
    fams = _scrape(zone_collector(zone, "w"))
    ps = zone.players.stats
    assert value(fams, "shardworld_zone_player_loads_total", **lab) == ps.loads == 3
    assert value(fams, "shardworld_zone_player_saves_total", **lab) == ps.saves >= 1
    assert value(fams, "shardworld_zone_player_load_failures_total", **lab) == 0
    assert value(fams, "shardworld_zone_player_saves_queued", **lab) == ps.queued == 0
    await store.close()
