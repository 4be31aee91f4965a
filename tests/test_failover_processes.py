"""Failover with real processes, a real Kafka broker and a real Redis: SIGKILL a zone.

Two zone processes, a gateway and a coordinator. A player stands in zone z1; z1 is killed
with SIGKILL. Its lease lapses, the coordinator gives its cells to z0, which restores z1's
last checkpoint and replays its topic. The player's WebSocket never drops, its entity keeps
its id and moves again; no entity is lost.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from procs import free_port as _free_port
from procs import start_cli as _start
from procs import stop_process as _stop
from procs import wait_for_line as _wait_for_line
from shardworld.client import connect
from shardworld.sharding.cluster import initial_map
from shardworld.zone import load_world
from test_sharding_processes import WORLD, _drain


async def test_sigkill_of_a_zone_loses_nothing_and_its_player_moves_on(
    kafka_url: str, redis_url: str
) -> None:
    name = f"fo{uuid.uuid4().hex[:10]}"
    port = _free_port()
    common = ["--bus", kafka_url, "--world-name", name]
    zone_args = ["--store", redis_url, "--lease-ttl", "1.5", "--checkpoint-every", "0.5"]
    coord = await _start(
        "coordinator",
        str(WORLD),
        *common,
        "--store",
        redis_url,
        "--period",
        "0.5",
        "--lease-ttl",
        "2",
        "--no-rebalance",
    )
    z0 = await _start("zone", str(WORLD), "--zone", "z0", *common, *zone_args)
    z1 = await _start("zone", str(WORLD), "--zone", "z1", *common, *zone_args)
    gw = await _start("gateway", str(WORLD), "--port", str(port), "--dev", *common)
    procs = [coord, z0, z1, gw]
    outputs: list[str] = []
    drains: dict[int, asyncio.Task[None]] = {}
    try:
        await asyncio.gather(
            _wait_for_line(coord, "Ctrl-C stops", 90.0),
            _wait_for_line(z0, "ticking", 90.0),
            _wait_for_line(z1, "ticking", 90.0),
            _wait_for_line(gw, "players connect", 90.0),
        )
        drains = {id(p): asyncio.create_task(_drain(p)) for p in procs}
        border = initial_map(load_world(WORLD)).region_bounds(0)[2]
        async with connect(f"ws://127.0.0.1:{port}") as me:
            errors: list[BaseException] = []
            ticks: list[int] = []

            async def read() -> None:
                try:
                    async for snap in me.snapshots():
                        ticks.append(snap.tick)
                except Exception as exc:
                    errors.append(exc)

            reader = asyncio.create_task(read())
            loop = asyncio.get_running_loop()

            async def walk_to(x_goal: float, timeout: float) -> None:
                end = loop.time() + timeout
                while loop.time() < end:
                    pos = me.visible().get(me.entity_id)
                    if pos is not None and abs(pos[1] - x_goal) < 1.0:
                        await me.send_input(0.0, 0.0)
                        return
                    direction = 1.0 if pos is None or pos[1] < x_goal else -1.0
                    await me.send_input(direction * 0.5, 0.0)
                    await asyncio.sleep(0.05)
                raise AssertionError(
                    f"did not reach x={x_goal}: {me.visible()} {me.entity_id} {ticks[-3:]} {errors}"
                )

            await walk_to(border + 20.0, 20.0)  # into z1's cells
            await asyncio.sleep(2.0)  # z1 checkpoints with the player in it
            eid = me.entity_id
            z1.kill()  # SIGKILL: no goodbye, the lease just stops being renewed
            killed = loop.time()
            await z1.wait()
            start_x = me.visible()[eid][1]
            # Keep asking to walk east; recovery is when the entity moves again.
            recovered = None
            while loop.time() - killed < 30.0:
                await me.send_input(1.0, 0.0)
                await asyncio.sleep(0.05)
                pos = me.visible().get(eid)
                if pos is not None and pos[1] > start_x + 1.0:
                    recovered = loop.time() - killed
                    break
            assert recovered is not None, "the player never moved again"
            assert me.entity_id == eid
            assert not errors, errors
            print(json.dumps({"failover_recovery_s": round(recovered, 2)}))
            assert recovered < 10.0
            reader.cancel()
    finally:
        for t in drains.values():
            t.cancel()
        await asyncio.gather(*drains.values(), return_exceptions=True)
        for p in procs:
            outputs.append(await _stop(p))
    z0_summary = json.loads(outputs[1].strip().splitlines()[-1])
    # 40 NPCs (strip world [demo]) and the player: all alive in z0, nothing lost.
    assert z0_summary["entities"] == 41, z0_summary
    assert z0_summary["node"]["adopted"] >= 1
    coord_summary = json.loads(outputs[0].strip().splitlines()[-1])
    assert coord_summary["failovers"] == 1
