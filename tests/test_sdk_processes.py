"""Persistent player state in real processes: ``shardworld run`` (one zone) and
``shardworld zone`` processes with a gateway, each with ``--store`` on a real Redis.

A player signs in with a token over a WebSocket, earns xp through a custom message, and the
record is in Redis afterwards; the next session (or a record put there first) is restored.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from pathlib import Path
from typing import Any

import msgpack

from procs import free_port, start_cli, stop_process, wait_for_line
from shardworld.client import connect
from shardworld.gateway.auth import issue_token
from shardworld.store import open_store

SECRET = "persist-test-secret"

HANDLER = textwrap.dedent(
    '''
    """A world whose players keep their xp between sessions."""

    from shardworld.sdk import Field, PlayerMessage, Scope, World, ZoneHandler


    class Handler(ZoneHandler):
        fields = (Field("xp", "uint32", scope=Scope.OWNER),)
        persistent = ("xp",)

        def on_join(self, world: World, player_id: int) -> int:
            return world.spawn_player(player_id, (50.0, 50.0))

        def on_messages(self, world: World, tick: int, messages: list[PlayerMessage]) -> None:
            xp = world.entities["xp"]
            for m in messages:
                row = world.entities.rows_of([m.entity_id])[0]
                if row < 0:
                    continue
                if m.kind == "gain":
                    xp[row] += int(m.body)
                elif m.kind == "whoami":
                    world.send_message(m.entity_id, "you", {"xp": int(xp[row])})
    '''
)


def _world(tmp_path: Path, name: str, zones: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "handler.py").write_text(HANDLER)
    (folder / "world.toml").write_text(
        textwrap.dedent(
            f"""
            [zone]
            name = "{name}"
            world = [0.0, 0.0, 200.0, 100.0]
            tick_hz = 20.0
            snapshot_hz = 10.0
            capacity = 256

            [sharding]
            zones = {zones}
            cell_size = 50.0
            """
        )
    )
    return folder


async def _session(url: str, player: int, gain: int) -> int:
    """Sign in as ``player``, read its xp, earn ``gain`` more; returns the xp it had."""
    token = issue_token(SECRET, player, ttl_s=300.0)
    async with asyncio.timeout(30.0), connect(url, token=token) as me:
        await me.send_message("whoami")
        had = await _answer(me)
        await me.send_message("gain", gain)
        await me.send_message("whoami")
        assert await _answer(me) == had + gain
        return had


async def _answer(me: Any) -> int:
    async for msg in me.messages():
        if msg.kind == "you":
            return int(msg.body["xp"])
    raise AssertionError("the connection closed without an answer")


async def _seed(redis_url: str, world: str, player: int, xp: int) -> None:
    store = open_store(redis_url, world)
    await store.start()
    try:
        await store.save_player(player, msgpack.packb({"_v": 1, "xp": xp}))
    finally:
        await store.close()


async def _record(redis_url: str, world: str, player: int) -> dict[str, Any] | None:
    store = open_store(redis_url, world)
    await store.start()
    try:
        data = await store.load_player(player)
    finally:
        await store.close()
    return None if data is None else msgpack.unpackb(data, raw=False)


async def test_shardworld_run_loads_and_saves_a_players_xp_in_its_store(
    redis_url: str, tmp_path: Path
) -> None:
    name = f"run{uuid.uuid4().hex[:10]}"
    folder = _world(tmp_path, name, zones=1)
    await _seed(redis_url, name, 42, 30)
    port = free_port()
    proc = await start_cli(
        "run", str(folder), "--zones", "1", "--port", str(port), "--secret", SECRET,
        "--store", redis_url, "--npcs", "0", "--map", "never",
    )  # fmt: skip
    try:
        await wait_for_line(proc, "players connect to", 60.0)
        assert await _session(f"ws://127.0.0.1:{port}", 42, 5) == 30
        # A player the store has never seen starts from on_join's values.
        assert await _session(f"ws://127.0.0.1:{port}", 44, 2) == 0
    finally:
        out = await stop_process(proc)
    assert proc.returncode == 0, out
    # Saved as the world stopped (the players had not left yet: they linger).
    assert (await _record(redis_url, name, 42) or {}).get("xp") == 35, out
    assert (await _record(redis_url, name, 44) or {}).get("xp") == 2, out


async def test_zone_processes_load_and_save_players_in_their_store(
    kafka_url: str, redis_url: str, tmp_path: Path
) -> None:
    name = f"zp{uuid.uuid4().hex[:10]}"
    folder = _world(tmp_path, name, zones=2)
    await _seed(redis_url, name, 43, 30)
    port = free_port()
    common = ["--bus", kafka_url, "--store", redis_url]
    procs = [
        await start_cli("zone", str(folder), "--zone", "z0", *common),
        await start_cli("zone", str(folder), "--zone", "z1", *common),
        await start_cli("gateway", str(folder), "--port", str(port), "--secret", SECRET,
                     "--bus", kafka_url),
    ]  # fmt: skip
    outs: list[str] = []
    try:
        await asyncio.gather(
            wait_for_line(procs[0], "ticking", 60.0),
            wait_for_line(procs[1], "ticking", 60.0),
            wait_for_line(procs[2], "players connect", 60.0),
        )
        # Player 43 enters through z1 (player id mod 2) and walks into z0's region at once.
        assert await _session(f"ws://127.0.0.1:{port}", 43, 5) == 30
    finally:
        # Gateway first: the zones then save every player they own as they stop.
        outs.append(await stop_process(procs[2]))
        outs += await asyncio.gather(stop_process(procs[0]), stop_process(procs[1]))
    rec = await _record(redis_url, name, 43)
    assert rec is not None and rec["xp"] == 35, "\n".join(outs)
