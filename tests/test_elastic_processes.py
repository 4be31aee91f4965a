"""Elastic zones with real processes, a real Kafka broker and a real Redis.

Two zone processes, a gateway, and a coordinator run with ``--elastic``: its local provider
starts and stops further ``shardworld zone`` processes. SDK players walk about, spread over
the world; wandering NPCs keep crossing every border. With a high-water mark below any tick
time every zone is hot: the coordinator scales out to 4 zones with cells (2 zone processes
started by it). Then the test rewrites the coordinator's settings file so that every zone
is cold: it merges back to 2 and stops the 2 zones merged away. Then hot again, up to 3
zones: the new zone gets a fresh name and starts although the zones before it in the list
are gone. Throughout, no player is disconnected and every player's inputs keep being
applied; no entity is lost; every step is in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from procs import free_port as _free_port
from procs import start_cli as _start
from procs import stop_process as _stop
from procs import wait_for_line as _wait_for_line
from shardworld.client import Player, connect
from shardworld.sharding.cellmap import CellMap
from shardworld.store import open_store
from test_sharding_processes import _drain

WORLD = Path(__file__).resolve().parent / "worlds" / "elastic"
NPCS = 120  # world.toml [demo]
PLAYERS = 6
#: Every tick takes longer than this: every zone is hot.
HOT = {"high_water_ms": 0.001, "low_water_ms": 0.0}
#: Every tick takes less than this, however busy the machine: every zone is cold and none
#: is hot (with a high water near the budget, a loaded CI machine split a zone again).
COLD = {"high_water_ms": 60_000.0, "low_water_ms": 30_000.0}
#: Hot again, but only up to 3 zones.
HOT_AGAIN = {**HOT, "max_zones": 3}


class Walker:
    """A player that walks a small square around its spot and watches its inputs land."""

    def __init__(self, player: Player) -> None:
        self.player = player
        self.errors: list[BaseException] = []
        self.acks: list[tuple[float, int]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._walk())]

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for _ in self.player.snapshots():
                self.acks.append((loop.time(), self.player.last_ack))
        except Exception as exc:
            self.errors.append(exc)

    async def _walk(self) -> None:
        sides = [(0.4, 0.0), (0.0, 0.4), (-0.4, 0.0), (0.0, -0.4)]
        i = 0
        try:
            while True:
                for _ in range(10):
                    await self.player.send_input(*sides[i % 4])
                    await asyncio.sleep(0.1)
                i += 1
        except Exception as exc:
            self.errors.append(exc)

    def applied_since(self, t: float) -> bool:
        """Whether the zone simulating it applied an input of it after loop time ``t``."""
        before = [a for when, a in self.acks if when <= t]
        after = [a for when, a in self.acks if when > t]
        return bool(after) and max(after) > (max(before) if before else 0)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _wait_for_events(
    store: Any, want: dict[str, int], timeout: float
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        events = [e.data for e in await store.events()]
        kinds = [str(e["type"]) for e in events]
        if all(kinds.count(k) >= n for k, n in want.items()):
            return events
        if loop.time() > end:
            raise AssertionError(f"wanted {want} in the audit log, got {kinds}")
        await asyncio.sleep(0.5)


async def _zones_with_cells(store: Any) -> int:
    stored = await store.get_map()
    assert stored is not None
    cm = CellMap.from_bytes(stored[1])
    import numpy as np

    return int(np.count_nonzero(np.bincount(np.asarray(cm.owner).reshape(-1))))


async def _players_play(walkers: list[Walker], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    t = loop.time()
    end = t + seconds
    while loop.time() < end:
        await asyncio.sleep(0.25)
        if all(w.applied_since(t) for w in walkers):
            return
    stuck = [w.player.entity_id for w in walkers if not w.applied_since(t)]
    raise AssertionError(f"players whose inputs no zone applies for {seconds} s: {stuck}")


def _summary(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            out: dict[str, Any] = json.loads(line)
            return out
    raise AssertionError(f"no JSON summary in:\n{text[-3000:]}")


async def test_the_world_scales_out_to_four_zone_processes_and_back_in_while_players_play(
    kafka_url: str, redis_url: str, tmp_path: Path
) -> None:
    name = f"el{uuid.uuid4().hex[:10]}"
    port = _free_port()
    settings = tmp_path / "rebalance.json"
    settings.write_text(json.dumps(HOT))
    zone_logs = tmp_path / "zones"
    common = ["--bus", kafka_url, "--world-name", name]
    zone_args = ["--store", redis_url, "--lease-ttl", "2", "--checkpoint-every", "1"]
    coord = await _start(
        "coordinator",
        str(WORLD),
        *common,
        "--store",
        redis_url,
        "--period",
        "0.5",
        "--elastic",
        "--min-zones",
        "2",
        "--max-zones",
        "4",
        "--split-after",
        "0.5",
        "--merge-after",
        "0.5",
        "--cooldown",
        "1",
        "--retire-quiet",
        "1",
        "--start-timeout",
        "40",
        "--rebalance-config",
        str(settings),
        "--zone-args",
        "--lease-ttl 2 --checkpoint-every 1",
        "--zone-logs",
        str(zone_logs),
        "--stop-zones-on-exit",
    )
    z0 = await _start("zone", str(WORLD), "--zone", "z0", *common, *zone_args)
    z1 = await _start("zone", str(WORLD), "--zone", "z1", *common, *zone_args)
    gw = await _start("gateway", str(WORLD), "--port", str(port), "--dev", *common)
    procs = [coord, z0, z1, gw]
    drains: list[asyncio.Task[None]] = []
    walkers: list[Walker] = []
    store = open_store(redis_url, name)
    await store.start()
    loop = asyncio.get_running_loop()
    timings: dict[str, float] = {}
    outputs: dict[str, str] = {}
    try:
        t0 = loop.time()
        await asyncio.gather(
            _wait_for_line(coord, "Ctrl-C stops", 90.0),
            _wait_for_line(z0, "ticking", 90.0),
            _wait_for_line(z1, "ticking", 90.0),
            _wait_for_line(gw, "players connect", 90.0),
        )
        timings["processes_up_s"] = loop.time() - t0
        drains = [asyncio.create_task(_drain(p)) for p in procs]
        url = f"ws://127.0.0.1:{port}"
        for _ in range(PLAYERS):
            w = Walker(await connect(url))
            w.start()
            walkers.append(w)
        await _players_play(walkers, 15.0)

        # Scale out: every zone is hot, so splits until 4 zones own cells.
        t1 = loop.time()
        events = await _wait_for_events(store, {"split": 2}, 60.0)
        timings["scale_out_s"] = loop.time() - t1
        assert await _zones_with_cells(store) == 4
        await _players_play(walkers, 10.0)

        # Scale in: every zone is cold, so merges back to 2 and the zones merged away stop.
        settings.write_text(json.dumps(COLD))
        t2 = loop.time()
        events = await _wait_for_events(store, {"merge": 2, "zone_stopped": 2}, 60.0)
        timings["scale_in_s"] = loop.time() - t2
        assert await _zones_with_cells(store) == 2
        await _players_play(walkers, 10.0)

        # Out again: a new zone after two were stopped.
        settings.write_text(json.dumps(HOT_AGAIN))
        t3 = loop.time()
        events = await _wait_for_events(store, {"split": 3}, 60.0)
        timings["scale_out_again_s"] = loop.time() - t3
        assert await _zones_with_cells(store) == 3
        await _players_play(walkers, 10.0)
        for w in walkers:
            assert not w.errors, w.errors
            assert not w.player.closed
    finally:
        print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
        for t in drains:
            t.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        # The coordinator first: with no coordinator, no failover when the zones stop.
        outputs["coord"] = await _stop(coord)
        # Both zones at once while the players are still connected: their entities count.
        outputs["z0"], outputs["z1"] = await asyncio.gather(_stop(z0), _stop(z1))
        for w in walkers:
            await w.stop()
            await w.player.close()
        outputs["gw"] = await _stop(gw)
        await store.close()

    coord_summary = _summary(outputs["coord"])
    assert coord_summary["failovers"] == 0
    elastic = coord_summary["elastic"]
    assert elastic["peak_zones"] == 4 and elastic["zones_with_cells"] == 3
    assert elastic["zones_started"] == 3 and elastic["zones_stopped"] == 2
    assert elastic["running"] == ["z4"]  # stopped on exit (--stop-zones-on-exit)

    kinds = [str(e["type"]) for e in events]
    added = [e["zone"] for e in events if e["type"] == "zone_added"]
    # Appended under fresh names: never a stopped zone's slot.
    assert added == ["z2", "z3", "z4"]
    assert added == [e["zone"] for e in events if e["type"] == "zone_started"]
    assert [e["to"] for e in events if e["type"] == "split"] == added
    assert kinds.index("split") < kinds.index("merge")
    removed = {e["remove"] for e in events if e["type"] == "merge"}
    assert removed == {"z2", "z3"}
    assert removed == {e["zone"] for e in events if e["type"] == "zone_stopped"}

    # Every entity is somewhere: in a zone (the 2 stopped ones own none) or in a handoff
    # between two of them when they stopped.
    summaries = [_summary(outputs["z0"]), _summary(outputs["z1"])]
    for zone in added:
        summaries.append(_summary((zone_logs / f"zone-{zone}.log").read_text()))
    for zone in removed:
        stopped = next(s for s in summaries if s["zone"] == zone)
        assert stopped["entities"] == 0, stopped
    nodes = [s["node"] for s in summaries]
    in_flight = sum(n["handoffs_out"] + n["bounced_out"] for n in nodes) - sum(
        n["handoffs_in"] + n["bounced_in"] + n["stale_refused"] for n in nodes
    )
    entities = sum(int(s["entities"]) for s in summaries)
    assert entities + in_flight == NPCS + PLAYERS, (entities, in_flight, summaries)
    assert all(n["adopted"] == 0 for n in nodes)
    assert sum(n["handoffs_in"] for n in nodes) > 0
    gw_summary = _summary(outputs["gw"])
    assert gw_summary["kicks"] == {}, gw_summary
