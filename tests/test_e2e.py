"""The whole path: SDK players over real WebSockets, the real gateway, the arena world."""

import asyncio
from pathlib import Path

from shardworld.client import connect
from shardworld.gateway import EmbeddedWorld, Gateway, GatewayConfig
from shardworld.zone import Zone, load_world

ROOT = Path(__file__).resolve().parents[1]


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_sdk_players_on_the_arena_see_each_other_move_chat_and_resume() -> None:
    world = load_world(ROOT / "zones" / "arena")
    cfg = world.config.with_(extra={"npcs": 50}, tick_hz=50.0, snapshot_hz=50.0)
    zone = Zone(cfg, world.make_handler())
    zone.warm_up()
    gw = Gateway(EmbeddedWorld(zone), GatewayConfig(port=0, dev=True, linger_s=5.0))
    await gw.start()
    ticking = asyncio.create_task(zone.run())
    try:
        async with connect(gw.url) as a, connect(gw.url) as b:
            # Put them 30 m apart: well inside each other's interest radius.
            zone.entities.set([a.entity_id], pos=(500.0, 500.0))
            zone.entities.set([b.entity_id], pos=(530.0, 500.0))

            async def drain(p):  # type: ignore[no-untyped-def]
                async for _ in p.snapshots():
                    pass

            readers = [asyncio.create_task(drain(p)) for p in (a, b)]
            await _until(lambda: b.entity_id in a.visible() and a.entity_id in b.visible())
            # a walks east; b sees it move and a's inputs are acknowledged.
            x0 = b.visible()[a.entity_id][1]
            for _ in range(10):
                seq = await a.send_input(1.0, 0.0)
                await asyncio.sleep(0.02)
            await _until(lambda: a.last_ack >= seq)
            await _until(lambda: b.visible()[a.entity_id][1] > x0 + 0.5)
            # Chat reaches the other player.
            await a.send_message("chat", {"text": "hello"})
            got = await asyncio.wait_for(anext(b.messages()), 5.0)
            assert got.kind == "chat" and got.body == {"from": a.entity_id, "text": "hello"}
            # b's connection dies; it resumes the same entity and a never lost sight of it.
            eid = b.entity_id
            b._ws.transport.abort()  # a TCP reset, as a network would do
            await asyncio.sleep(0.2)
            assert eid in a.visible()
            assert await b.resume()
            assert b.entity_id == eid
            await _until(lambda: a.entity_id in b.visible())
            for t in readers:
                t.cancel()
        stats = gw.stats()
        assert stats["resumes"] >= 1
        assert not any(stats["errors"].values())
    finally:
        await gw.stop()
        zone.stop()
        await asyncio.wait_for(ticking, 5.0)
