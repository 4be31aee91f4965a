"""The browser SDK (src/shardworld/web/shardworld.js) under Node's own test runner."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JS_TESTS = sorted((ROOT / "tests" / "js").glob("test_*.mjs"))


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("node is required under CI to test the JavaScript SDK")
        pytest.skip("node is not installed: the JavaScript SDK tests need Node 20+")
    return node


def test_js_sdk_passes_its_node_tests() -> None:
    node = _node()
    assert JS_TESTS, "no tests/js/test_*.mjs found"
    # Node 20's `--test <dir>` finds nothing, so the files are named one by one.
    proc = subprocess.run(
        [node, "--test", *map(str, JS_TESTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    assert "# fail 0" in proc.stdout


def test_the_module_ships_as_package_data() -> None:
    from importlib.resources import files

    assert files("shardworld").joinpath("web", "shardworld.js").is_file()


def _node_has_websocket(node: str) -> bool:
    probe = subprocess.run(
        [
            node,
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


async def test_js_player_on_a_live_gateway() -> None:
    import asyncio

    from shardworld.gateway import EmbeddedWorld, Gateway, GatewayConfig
    from shardworld.zone import Zone, load_world

    node = _node()
    if not _node_has_websocket(node):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("this node has no WebSocket, even with --experimental-websocket")
        pytest.skip("this node has no WebSocket (Node 20.10+ with --experimental-websocket)")
    world = load_world(ROOT / "zones" / "arena")
    zone = Zone(world.config.with_(tick_hz=50.0, snapshot_hz=50.0), world.make_handler())
    zone.warm_up()
    gw = Gateway(EmbeddedWorld(zone), GatewayConfig(port=0, dev=True))
    await gw.start()
    ticking = asyncio.create_task(zone.run())
    try:
        proc = await asyncio.create_subprocess_exec(
            node,
            "--experimental-websocket",
            "--no-warnings",
            str(ROOT / "tests" / "js" / "live_player.mjs"),
            gw.url,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60.0)
        assert proc.returncode == 0, out.decode(errors="replace")[-6000:]
        assert b"live ok" in out
        assert not any(gw.stats()["errors"].values()), gw.stats()["errors"]
    finally:
        await gw.stop()
        zone.stop()
        await asyncio.wait_for(ticking, 5.0)
