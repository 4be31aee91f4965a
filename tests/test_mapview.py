"""The live map's data (state JSON from known owners and loads, rates, statuses, the event
ring) and its HTTP server (the page, the state, the live feed, refusals)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import time
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.bus import open_bus
from shardworld.cli import _start_map
from shardworld.coordinator.coordinator import Coordinator, ZoneView
from shardworld.coordinator.mapview import (
    MAX_DENSITY_CELLS,
    STATE_EVENTS,
    MapServer,
    MapView,
    decode_density,
    encode_density,
    rle,
    unrle,
)
from shardworld.sharding.cellmap import CellMap
from shardworld.store import open_store

WORLD = (0.0, 0.0, 100.0, 50.0)  # 10 x 5 cells of 10 m


def _cellmap(epoch: int = 1) -> CellMap:
    owner = np.zeros((5, 10), np.int16)
    owner[:, 4:] = 1
    owner[3:, 7:] = 2
    return CellMap(WORLD, 10.0, ("z0", "z1", "z2"), owner, epoch)


def _view(
    name: str,
    index: int,
    seen_at: float,
    loads: dict[int, float],
    *,
    tick: int = 1000,
    entities: int | None = None,
    handoffs: tuple[int, int] = (0, 0),
    **report: Any,
) -> ZoneView:
    ids = np.array(sorted(loads), np.int32)
    return ZoneView(
        name=name,
        index=index,
        seen_at=seen_at,
        tick=tick,
        epoch=1,
        entities=int(sum(loads.values())) if entities is None else entities,
        p99_ms=report.pop("p99_ms", 4.0),
        cell_ids=ids,
        cell_load=np.array([loads[i] for i in ids.tolist()], np.float32),
        report={
            "p50_ms": 1.5,
            "observers": 0,
            "ghosts": 0,
            "late_ticks": 0,
            "node": {"handoffs_in": handoffs[0], "handoffs_out": handoffs[1]},
            **report,
        },
    )


# --- the state ---------------------------------------------------------------------------


def test_state_matches_the_owners_loads_and_reports() -> None:
    cm = _cellmap(epoch=7)
    now = 1000.0
    zones = {
        "z0": _view("z0", 0, now, {0: 3.0, 11: 5.0}, observers=1, ghosts=4, p99_ms=12.5),
        "z1": _view("z1", 1, now - 1.0, {5: 2.0, 26: 7.0}, ghosts=2, late_ticks=3),
        "z2": _view("z2", 2, now, {49: 1.0}),
    }
    view = MapView(tick_hz=25.0, clock=lambda: now)
    view.world = "w"
    view.update_from(cm, zones, now=now, node="n1", leader=True, maps_published=6)
    s = json.loads(view.state_json())
    assert s == view.state()
    assert s["ready"] and s["version"] == 1 and s["world"] == "w" and s["epoch"] == 7
    assert (s["node"], s["leader"], s["maps_published"]) == ("n1", True, 6)
    assert s["bounds"] == list(WORLD) and s["cell_size"] == 10.0
    assert (s["rows"], s["cols"]) == (5, 10)
    assert s["tick_budget_ms"] == 40.0
    assert s["owner"]["encoding"] == "rle"
    assert unrle(s["owner"]["runs"]).tolist() == cm.owner.reshape(-1).tolist()
    grid = decode_density(s["density"])
    want = np.zeros(50)
    want[[0, 11, 5, 26, 49]] = [3, 5, 2, 7, 1]
    assert grid.reshape(-1).tolist() == want.tolist()
    assert s["density"]["total"] == 18.0 and s["density"]["max"] == 7.0
    by = {z["name"]: z for z in s["zones"]}
    assert [z["index"] for z in s["zones"]] == [0, 1, 2]
    assert [z["colour"] for z in s["zones"]] == [0, 1, 2]
    assert {n: z["cells"] for n, z in by.items()} == {"z0": 20, "z1": 24, "z2": 6}
    assert {n: z["entities"] for n, z in by.items()} == {"z0": 8, "z1": 9, "z2": 1}
    assert by["z0"]["observers"] == 1 and by["z0"]["ghosts"] == 4
    assert by["z0"]["p99_ms"] == 12.5 and by["z0"]["p50_ms"] == 1.5
    assert by["z1"]["late_ticks"] == 3 and by["z1"]["age_s"] == 1.0
    assert all(z["status"] == "up" and z["alive"] for z in s["zones"])
    assert s["totals"] == {
        "zones": 3,
        "zones_alive": 3,
        "entities": 18,
        "observers": 1,
        "ghosts": 6,
        "handoffs_per_s": 0.0,
        "max_p99_ms": 12.5,
    }
    # Heartbeats arriving made each zone "up" once.
    assert [(e["type"], e["zone"]) for e in s["events"]] == [
        ("zone_up", "z0"),
        ("zone_up", "z1"),
        ("zone_up", "z2"),
    ]


def test_handoff_rates_come_from_counter_deltas_over_ticks() -> None:
    cm = _cellmap()
    view = MapView(tick_hz=20.0)
    z = {"z0": _view("z0", 0, 10.0, {0: 1.0}, tick=100, handoffs=(10, 4))}
    view.update_from(cm, z, now=10.0)
    assert view.state()["zones"][0]["handoffs_in_per_s"] == 0.0  # one heartbeat: no rate
    # 40 ticks (2 s at 20 Hz) later: 30 more in, 8 more out.
    z = {"z0": _view("z0", 0, 11.0, {0: 1.0}, tick=140, handoffs=(40, 12))}
    view.update_from(cm, z, now=11.0)
    row = view.state()["zones"][0]
    assert (row["handoffs_in_per_s"], row["handoffs_out_per_s"]) == (15.0, 4.0)
    assert view.state()["totals"]["handoffs_per_s"] == 15.0
    # The same heartbeat again (a round without a new one): the rate stays.
    view.update_from(cm, z, now=11.5)
    assert view.state()["zones"][0]["handoffs_in_per_s"] == 15.0
    # A restarted zone (its tick and counters went back): no rate until the next beat.
    z = {"z0": _view("z0", 0, 12.0, {0: 1.0}, tick=5, handoffs=(1, 0))}
    view.update_from(cm, z, now=12.0)
    assert view.state()["zones"][0]["handoffs_in_per_s"] == 0.0


def test_zone_statuses_and_liveness_events() -> None:
    cm = _cellmap()
    view = MapView(stale_after_s=5.0)
    view.update_from(cm, {}, now=0.0, starting=["z2"])
    s = view.state()
    assert [z["status"] for z in s["zones"]] == ["silent", "silent", "starting"]
    assert s["events"] == []  # never heard of is not news
    beats = {n: _view(n, i, 1.0, {i: 2.0}) for i, n in enumerate(cm.zones)}
    view.update_from(cm, beats, now=1.0)
    assert [z["status"] for z in view.state()["zones"]] == ["up", "up", "up"]
    # z1 goes quiet; z2 is failed over; an owner-less zone with heartbeats is a spare.
    owner = np.asarray(cm.owner).copy()
    owner[owner == 2] = 0
    cm2 = cm.with_owner(owner)
    beats["z0"].seen_at = beats["z2"].seen_at = 9.0
    view.update_from(cm2, beats, now=9.0, failed=["z2"])
    s = view.state()
    assert [z["status"] for z in s["zones"]] == ["up", "silent", "failed"]
    assert [z["alive"] for z in s["zones"]] == [True, False, False]
    assert s["zones"][1]["entities"] == 0  # a silent zone's last figures are not load
    assert s["totals"]["entities"] == beats["z0"].entities
    assert decode_density(s["density"]).reshape(-1)[1] == 0.0
    view.update_from(cm2, beats, now=9.0)
    assert view.state()["zones"][2]["status"] == "spare"
    types = [(e["type"], e.get("zone")) for e in view.state()["events"]]
    assert types[-3:] == [("zone_silent", "z1"), ("zone_up", "z2")] or types[-2:] == [
        ("zone_silent", "z1"),
        ("zone_up", "z2"),
    ]
    assert ("zone_silent", "z2") not in types  # a failover has the coordinator's own event
    view.update_from(cm2, beats, now=9.0, retired=["z2"])
    assert view.state()["zones"][2]["status"] == "retired"


def test_event_ring_is_bounded_and_events_are_compact() -> None:
    view = MapView(max_events=5, clock=lambda: 42.0)
    for i in range(20):
        view.add_event({"type": "cell_move", "cells": list(range(i)), "from": "z0", "to": "z1"})
    assert len(view.events) == 5
    assert [e["seq"] for e in view.events] == [16, 17, 18, 19, 20]
    assert view.events[-1] == {
        "seq": 20,
        "type": "cell_move",
        "cells": 19,
        "from": "z0",
        "to": "z1",
        "time": 42.0,
    }
    ev = view.add_event(
        {
            "type": "x" * 1000,
            "time": 1.5,
            "obj": {"nested": 1},
            "arr": np.arange(3),
            "nan": float("nan"),
            "n": np.int64(3),
            "seq": 999,
            **{f"k{i}": i for i in range(40)},
        }
    )
    assert len(ev["type"]) == 160 and ev["time"] == 1.5 and ev["arr"] == 3 and ev["n"] == 3
    assert "obj" not in ev and "nan" not in ev and ev["seq"] == 21
    assert len(ev) <= 16
    view.update_from(_cellmap(), {}, now=0.0)
    assert len(view.state()["events"]) == 5
    many = MapView(max_events=1000)
    for _ in range(300):
        many.add_event({"type": "leader"})
    many.update_from(_cellmap(), {}, now=0.0)
    s = many.state()
    assert len(s["events"]) == STATE_EVENTS and s["events"][-1]["seq"] == s["last_event_seq"]
    json.dumps(s, allow_nan=False)


async def test_a_coordinator_feeds_its_view() -> None:
    name = f"map-{uuid.uuid4().hex[:8]}"
    bus = open_bus(f"memory://{name}")
    await bus.start()
    store = open_store(f"memory://{name}", name)
    await store.start()
    cm = CellMap.split(WORLD, 10.0, ("z0", "z1"), epoch=1)
    coord = Coordinator(bus, store, name, cm, "node-a")
    view = coord.view = MapView()
    try:
        await coord.start()
        await coord.round()  # takes the lease
        assert coord.leader
        owner = np.asarray(cm.owner).copy()
        moved = np.flatnonzero(owner.reshape(-1) == 0)[:5]
        owner.reshape(-1)[moved] = 1
        change = {"type": "cell_move", "cells": moved.tolist(), "from": "z0", "to": "z1"}
        assert await coord.publish(cm.with_owner(owner), [change])
        coord.update_view()
        s = view.state()
        assert s["epoch"] == 2 and s["world"] == name and s["node"] == "node-a" and s["leader"]
        assert unrle(s["owner"]["runs"]).tolist() == owner.reshape(-1).tolist()
        ev = {e["type"]: e for e in s["events"]}
        assert ev["leader"]["epoch"] == 1
        assert ev["cell_move"]["cells"] == 5 and ev["cell_move"]["epoch"] == 2
        assert (ev["cell_move"]["from"], ev["cell_move"]["to"]) == ("z0", "z1")
        # The audit trail in the store holds the whole list; the view only its length.
        stored = await store.events()
        assert [e.data["type"] for e in stored] == ["leader", "cell_move"]
        assert stored[-1].data["cells"] == moved.tolist()
    finally:
        await coord.close()
        await store.close()
        await bus.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=300))
def test_rle_round_trips(values: list[int]) -> None:
    arr = np.asarray(values, np.int16)
    code = rle(arr)
    assert unrle(code).tolist() == values
    assert all(code[i] != code[i + 2] for i in range(0, len(code) - 2, 2))


def test_big_density_grids_are_summed_over_blocks() -> None:
    rng = np.random.default_rng(3)
    grid = rng.integers(0, 50, (700, 900)).astype(np.float64)
    d = encode_density(grid)
    assert d["block"] == 4 and (d["rows"], d["cols"]) == (175, 225)
    assert d["rows"] * d["cols"] <= MAX_DENSITY_CELLS
    assert d["total"] == float(grid.sum())
    back = decode_density(d)
    assert back.sum() == grid.sum()
    assert back[0, 0] == grid[:4, :4].sum()
    assert len(base64.b64decode(d["data"])) == 2 * 175 * 225
    # Values past uint16 are scaled, not wrapped.
    huge = np.zeros((2, 2))
    huge[0, 0] = 1e6
    dh = encode_density(huge)
    assert abs(decode_density(dh)[0, 0] - 1e6) <= dh["scale"]


def test_update_cost_is_small_for_a_large_world() -> None:
    cm = CellMap.split((0.0, 0.0, 5120.0, 5120.0), 10.0, [f"z{i}" for i in range(16)])
    rng = np.random.default_rng(1)
    zones = {}
    for i, n in enumerate(cm.zones):
        cells = np.flatnonzero(cm.owner.reshape(-1) == i)
        zones[n] = _view(n, i, 0.0, dict.fromkeys(rng.choice(cells, 2000).tolist(), 3.0))
    view = MapView()
    t0 = time.process_time()
    for _ in range(5):
        view.update_from(cm, zones, now=0.0)
    per_update = (time.process_time() - t0) / 5
    assert per_update < 0.1, per_update  # 262,144 cells, once a second
    assert len(view.state_json()) < 700_000


# --- the HTTP server -------------------------------------------------------------------------


@pytest.fixture
async def server() -> Any:
    view = MapView()
    view.world = "w"
    view.update_from(_cellmap(), {}, now=1.0)
    srv = MapServer(view, port=0, timeout_s=1.0, max_streams=2, keepalive_s=0.2)
    await srv.start()
    yield srv
    await srv.stop()


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await _request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_http_serves_the_page_script_and_state(server: MapServer) -> None:
    for path in ("/", "/map", "/map?x=1"):
        status, headers, body = await _get(server.port, path)
        assert status == 200, path
        assert headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in headers["content-security-policy"]
        assert b'<canvas id="map">' in body and b'src="map.js"' in body
        assert int(headers["content-length"]) == len(body)
    status, headers, body = await _get(server.port, "/map.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"window.shardworldMap" in body and b'EventSource("map/events")' in body
    status, headers, body = await _get(server.port, "/map/state")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == server.view.state()
    assert server.url == f"http://127.0.0.1:{server.port}/map"


async def test_http_refuses_everything_else(server: MapServer) -> None:
    for path in ("/metrics", "/map/", "/map/state/x", "/../etc/passwd", "/map.html"):
        status, _, _ = await _get(server.port, path)
        assert status == 404, path
    for method in ("POST", "HEAD", "PUT", "DELETE"):
        status, headers, _ = await _get(server.port, "/map/state", method)
        assert status == 405 and headers["allow"] == "GET", method
    status, _, _ = await _request(server.port, b"nonsense\r\n\r\n")
    assert status == 400
    status, _, _ = await _request(server.port, b"GET /map HTTP/1.1\r\nX: " + b"a" * 9000)
    assert status == 431
    # A client that never finishes its request is dropped after timeout_s.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /map")
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    writer.close()
    assert server.bad_requests == 2
    status, _, _ = await _get(server.port, "/map/state")
    assert status == 200


async def _open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /map/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    return reader, writer


async def _next_state(reader: asyncio.StreamReader) -> dict[str, Any]:
    while True:
        block = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5.0)
        if block.startswith(b"event: state\n"):
            line = block.split(b"\n")[1]
            assert line.startswith(b"data: ")
            out: dict[str, Any] = json.loads(line[len(b"data: ") :])
            return out


async def test_live_feed_sends_each_new_state(server: MapServer) -> None:
    reader, writer = await _open_stream(server.port)
    first = await _next_state(reader)
    assert first == server.view.state()
    # Nothing new: keep-alive comments only, no repeated state.
    await asyncio.sleep(0.5)
    server.view.add_event({"type": "cell_move", "cells": [1, 2], "from": "z0", "to": "z1"})
    server.view.update_from(_cellmap(epoch=2), {}, now=2.0)
    second = await _next_state(reader)
    assert second["version"] == first["version"] + 1 and second["epoch"] == 2
    assert second["events"][-1]["cells"] == 2
    # Two feeds at most (max_streams=2): a third is refused.
    other = await _open_stream(server.port)
    status, _, _ = await _get(server.port, "/map/events")
    assert status == 503
    other[1].close()
    # Stopping the server ends the feed.
    await server.stop()
    rest = await asyncio.wait_for(reader.read(), 5.0)
    assert b"event: state" not in rest
    writer.close()


async def test_connection_limit(server: MapServer) -> None:
    server.max_connections = 2
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /map/state HTTP/1.1\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(), 5.0)
    except ConnectionResetError:  # closed with the request unread
        answer = b""
    assert answer == b""  # closed unanswered
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    status, _, _ = await _get(server.port, "/map/state")
    assert status == 200


# --- the command line's wiring ---------------------------------------------------------------


async def test_a_busy_default_port_only_warns() -> None:
    name = f"map-{uuid.uuid4().hex[:8]}"
    bus = open_bus(f"memory://{name}")
    await bus.start()
    store = open_store(f"memory://{name}", name)
    await store.start()
    coord = Coordinator(bus, store, name, _cellmap(), "n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = argparse.Namespace(map_port=None, map_host="127.0.0.1")
        assert await _start_map(coord, args, 20.0, port) is None
        assert coord.view is None
        args.map_port = port
        with pytest.raises(OSError):
            await _start_map(coord, args, 20.0, 0)
        args.map_port = 0
        assert await _start_map(coord, args, 20.0, port) is None
    args.map_port = None
    srv = await _start_map(coord, args, 20.0, 0)
    assert srv is None  # default 0: off
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    srv = await _start_map(coord, args, 25.0, free)
    try:
        assert srv is not None and srv.port == free and coord.view is srv.view
        assert srv.view.tick_hz == 25.0 and srv.view.state()["ready"]
        status, _, body = await _get(free, "/map/state")
        assert status == 200 and json.loads(body)["rows"] == 5
    finally:
        await srv.stop()
        await store.close()
        await bus.close()
