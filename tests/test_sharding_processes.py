"""A world as separate OS processes on a real Kafka broker: two zones and a gateway.

A player connected to the gateway walks back and forth across the border between the two
zone processes; its WebSocket never drops, its mirror never breaks, its entity never
changes id or jumps, and the other player keeps seeing it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np

from procs import free_port, start_cli, stop_process, wait_for_line
from shardworld.client import connect
from shardworld.sharding.cluster import initial_map
from shardworld.zone import load_world

WORLD = Path(__file__).resolve().parent / "worlds" / "strip"


async def test_a_player_crosses_between_zone_processes_without_noticing(kafka_url: str) -> None:
    name = f"strip{uuid.uuid4().hex[:10]}"
    port = free_port()
    common = ["--bus", kafka_url, "--world-name", name]
    drains: list[asyncio.Task[None]] = []
    procs = [
        await start_cli("zone", str(WORLD), "--zone", "z0", *common),
        await start_cli("zone", str(WORLD), "--zone", "z1", *common),
        await start_cli("gateway", str(WORLD), "--port", str(port), "--dev", *common),
    ]
    try:
        await asyncio.gather(
            wait_for_line(procs[0], "ticking", 90.0),
            wait_for_line(procs[1], "ticking", 90.0),
            wait_for_line(procs[2], "players connect", 90.0),
        )
        drains += [asyncio.create_task(_drain(p)) for p in procs]
        border = initial_map(load_world(WORLD)).region_bounds(0)[2]
        url = f"ws://127.0.0.1:{port}"
        async with connect(url) as walker, connect(url) as watcher:
            errors: list[BaseException] = []
            positions: list[tuple[float, float]] = []

            async def read(p, track: bool) -> None:  # type: ignore[no-untyped-def]
                try:
                    async for _ in p.snapshots():
                        if track and walker.entity_id in p.visible():
                            e = p.visible()[walker.entity_id]
                            positions.append((float(e[1]), float(e[2])))
                except Exception as exc:
                    errors.append(exc)

            readers = [
                asyncio.create_task(read(walker, False)),
                asyncio.create_task(read(watcher, True)),
            ]
            loop = asyncio.get_running_loop()
            crossings, side, direction = 0, None, 1.0
            end = loop.time() + 25.0
            while loop.time() < end and crossings < 10:
                me = walker.visible().get(walker.entity_id)
                if me is not None:
                    x = float(me[1])
                    now_side = x >= border
                    if side is not None and now_side != side:
                        crossings += 1
                    side = now_side
                    if x > border + 8.0:
                        direction = -1.0
                    elif x < border - 8.0:
                        direction = 1.0
                await walker.send_input(direction, 0.0)
                await asyncio.sleep(0.05)
            assert crossings >= 10, f"only {crossings} crossings"
            assert not errors, errors
            assert walker.entity_id in watcher.visible()
            # The watcher saw the walker move smoothly: never faster than its speed allows
            # between two snapshots (plus quantisation), i.e. no jump at a handoff.
            steps = np.hypot(*np.diff(np.array(positions), axis=0).T)
            assert len(steps) > 100
            assert float(steps.max()) <= 20.0 * 0.05 * 3 + 0.05, float(steps.max())
            for t in readers:
                t.cancel()
    finally:
        for t in drains:
            t.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        outputs = [await stop_process(p, 20.0) for p in procs]
    gateway_summary = outputs[2].strip().splitlines()[-1]
    assert '"summary": "gateway"' in gateway_summary, outputs[2][-2000:]
    assert '"kicks": {}' in gateway_summary


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass
