"""The live map in headless Chromium against a running world.

`shardworld run` runs a world of 4 zones whose NPC crowd drifts from corner to corner, so the
embedded coordinator keeps moving cells after it. The page must show the same state the
server gives on /map/state, colour every zone's cells in that zone's palette colour (read
back from the canvas pixels), and log a cell move that happens while it is open. The last
screenshot is kept as ``.artifacts/map.png``.
"""

from __future__ import annotations

import colorsys
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from shardworld.coordinator.mapview import decode_density, unrle

ROOT = Path(__file__).resolve().parents[1]

WORLD_TOML = """\
# 4 zones over 20 x 20 cells; a crowd of NPCs that keeps changing corners.
[zone]
name = "tides"
world = [0.0, 0.0, 240.0, 240.0]
tick_hz = 20.0
snapshot_hz = 10.0
interest_radius = 20.0
interest_hysteresis = 2.0
k_max = 64
capacity = 4096

[sharding]
zones = 4
cell_size = 12.0

[demo]
npcs = 400
"""

HANDLER = '''\
"""A crowd that heads for one corner, then the opposite one, every 8 seconds."""

from __future__ import annotations

import numpy as np

from shardworld.zone import InputBatch, Zone, ZoneHandler

KIND_NPC = 2
PERIOD_TICKS = 160


def corner(world: Zone, which: int, n: int) -> np.ndarray:
    x0, y0, x1, y1 = world.bounds
    w, h = x1 - x0, y1 - y0
    lo = np.array([x0 + 2.0, y0 + 2.0]) if which == 0 else np.array([x0 + 0.6 * w, y0 + 0.6 * h])
    size = np.array([0.38 * w - 2.0, 0.38 * h - 2.0])
    return world.rng.uniform(lo, lo + size, (n, 2)).astype(np.float32)


class Handler(ZoneHandler):
    def on_start(self, world: Zone) -> None:
        n = int(world.config.extra.get("npcs", 0))
        if n:
            world.spawn(
                n,
                pos=world.random_points(n, margin=2.0),
                target=corner(world, 0, n),
                kind=KIND_NPC,
                mode=2,
                max_speed=world.rng.uniform(10.0, 16.0, n).astype(np.float32),
                max_accel=30.0,
            )

    def on_tick(self, world: Zone, tick: int, inputs: InputBatch) -> None:
        if tick % PERIOD_TICKS:
            return
        npc = np.flatnonzero(world.entities["kind"] == KIND_NPC)
        if npc.size:
            world.entities["target"][npc] = corner(world, (tick // PERIOD_TICKS) % 2, npc.size)
'''

# Every cell's centre pixel on the canvas, with the owner the page drew it for, read in one
# go (no redraw can happen in between).
READ_PIXELS = """() => {
  const m = window.shardworldMap;
  const owners = m.owners();
  const s = m.state();
  const c = document.getElementById("map");
  const ctx = c.getContext("2d");
  const out = [];
  for (let i = 0; i < owners.length; i++) {
    const [x, y] = m.cellCenter(Math.floor(i / s.cols), i % s.cols);
    const p = ctx.getImageData(x, y, 1, 1).data;
    out.push([owners[i], p[0], p[1], p[2]]);
  }
  return { version: s.version, pixels: out };
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_state(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def test_live_map_in_chromium(browser: Any, artifacts: Path, tmp_path: Path) -> None:
    world = tmp_path / "tides"
    world.mkdir()
    (world / "world.toml").write_text(WORLD_TOML)
    (world / "handler.py").write_text(HANDLER)
    gport, mport = _free_port(), _free_port()
    out_path = tmp_path / "run.log"
    cmd = [sys.executable, "-m", "shardworld.cli", "run", str(world), "--zones", "4", "--dev"]
    cmd += ["--port", str(gport), "--map-port", str(mport), "--npcs", "400"]
    cmd += ["--seconds", "120", "--map", "never"]
    started = time.monotonic()
    cpu0 = os.times()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{mport}"
    errors: list[str] = []
    try:
        # The world is up once all 4 zones send heartbeats.
        deadline = time.monotonic() + 90.0
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            state = _get_state(base + "/map/state")
            if state and state.get("ready") and state["totals"]["zones_alive"] == 4:
                break
            time.sleep(0.25)
        assert state and state["totals"]["zones_alive"] == 4, out_path.read_text()[-3000:]
        up_s = time.monotonic() - started

        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.goto(base + "/map")
        page.wait_for_function(
            "() => document.body.dataset.zones === '4' &&"
            " Number(document.body.dataset.entities) > 0",
            timeout=30_000,
        )
        assert page.locator("#live").get_attribute("data-state") == "live"
        first = page.evaluate("() => window.shardworldMap.state()")
        assert [z["name"] for z in first["zones"]] == ["z0", "z1", "z2", "z3"]

        # The page shows what /map/state says (compared at the same state version).
        # Cells move every few seconds here, so everything the page shows is read in one go
        # (one JavaScript task), once the page has drawn the state it holds.
        snapshot_js = """() => ({
            state: window.shardworldMap.state(),
            owners: window.shardworldMap.owners(),
            entities: document.body.dataset.entities,
            zones: document.querySelectorAll('#zones .zone').length,
            totals: document.querySelector('#totals').innerText,
        })"""
        for _ in range(40):
            served = _get_state(base + "/map/state")
            assert served is not None
            page.wait_for_function(
                """(v) => {
                    const s = window.shardworldMap.state();
                    return s.version >= v
                        && document.body.dataset.entities === String(s.totals.entities);
                }""",
                arg=served["version"],
            )
            seen = page.evaluate(snapshot_js)
            if seen["state"]["version"] == served["version"]:
                break
        else:
            raise AssertionError("the page never showed the served state version")
        assert seen["state"] == served
        assert seen["owners"] == unrle(served["owner"]["runs"]).tolist()
        totals = served["totals"]
        assert totals["entities"] == sum(z["entities"] for z in served["zones"]) > 0
        # No players: the load per cell is the entity count (each zone's counted with it).
        assert decode_density(served["density"]).sum() == totals["entities"]
        assert seen["entities"] == str(totals["entities"])
        assert seen["zones"] == 4
        assert f"{totals['entities']:,}" in seen["totals"]

        # Every zone's cells are drawn in its own colour, 4 distinct ones.
        palette = page.evaluate("() => window.shardworldMap.palette")
        read = page.evaluate(READ_PIXELS)
        votes: dict[int, Counter[int]] = {}
        for owner, r, g, b in read["pixels"]:
            h, _l, s = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
            if s < 0.2:
                continue  # a label box or a grid line
            nearest = min(range(len(palette)), key=lambda k: _hue_distance(h * 360, palette[k][0]))
            votes.setdefault(owner, Counter())[nearest] += 1
        colours = {z["index"]: z["colour"] for z in seen["state"]["zones"]}
        assert set(votes) == {0, 1, 2, 3}, votes
        drawn = {owner: c.most_common(1)[0][0] for owner, c in votes.items()}
        assert drawn == colours, votes
        for c in votes.values():
            assert c.most_common(1)[0][1] >= 0.8 * sum(c.values()), votes

        # A cell move while the page is open: the epoch goes up and the log shows it.
        page.wait_for_function(
            """(e) => window.shardworldMap.state().epoch > e &&
                document.querySelector('#log .ev.fresh[data-type="cell_move"]') !== null""",
            arg=first["epoch"],
            timeout=40_000,
        )
        move = page.locator('#log .ev[data-type="cell_move"]').first.inner_text()
        assert "cell" in move and "→" in move and "epoch" in move
        # Keep a picture with cells flashing: right after the next map change if one comes.
        epoch = page.evaluate("() => window.shardworldMap.state().epoch")
        try:
            page.wait_for_function(
                "(e) => window.shardworldMap.state().epoch > e", arg=epoch, timeout=10_000
            )
            page.wait_for_timeout(150)
        except Exception:
            pass  # a settled map: the picture shows no flash
        page.screenshot(path=str(artifacts / "map.png"))
        assert not errors, errors
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log = out_path.read_text()
    assert f"live world map on {base}/map" in log
    assert proc.returncode == 0, log[-3000:]
    cpu1 = os.times()
    cpu = cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system
    print(
        f"world up in {up_s:.1f} s; whole test {time.monotonic() - started:.1f} s wall, "
        f"{cpu:.1f} s CPU in the world process"
    )
