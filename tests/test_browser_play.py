"""The browser game (web/play.html) in headless Chromium, against a real ``shardworld run``.

Two players in separate browser contexts join a world of two zones. One walks with the
keyboard and chats; the other must see it move and read the line. Then the server goes
away, both pages say so, and one of them reconnects to a fresh server with a click.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shardworld.gateway import EmbeddedWorld, Gateway, GatewayConfig
from shardworld.zone import Zone, load_world

ROOT = Path(__file__).resolve().parent.parent
ARENA = ROOT / "zones" / "arena"

# The arena's own game code (chat, the wave bit), except that everyone starts in the
# central plaza: the arena spawns players anywhere in its 2 km square, where two fresh
# players would hardly ever see each other.
PLAZA_HANDLER = '''
"""The arena, with players and NPCs starting in the central plaza."""
from __future__ import annotations

import importlib.util

import numpy as np

from shardworld.zone import Zone

_spec = importlib.util.spec_from_file_location("arena_for_play_test", {arena!r})
assert _spec is not None and _spec.loader is not None
arena = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arena)
CENTRE = np.array([1000.0, 1000.0])


class Handler(arena.Handler):
    def on_start(self, world: Zone) -> None:
        n = int(world.config.extra.get("npcs", 0))
        pos = (CENTRE + world.rng.uniform(-60.0, 60.0, (n, 2))).astype(np.float32)
        world.spawn(
            n, pos=pos, target=pos[::-1].copy(), kind=arena.KIND_NPC, mode=2, health=100,
            max_speed=world.rng.uniform(1.0, 3.0, n).astype(np.float32), max_accel=4.0,
        )

    def on_join(self, world: Zone, player_id: int) -> int:
        dx, dy = world.rng.uniform(-3.0, 3.0, 2)
        return world.spawn_player(player_id, (CENTRE[0] + dx, CENTRE[1] + dy))
'''

VIEWPORT = {"width": 960, "height": 600}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers.items()), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), ""


def _plaza_world(tmp_path: Path) -> Path:
    world = tmp_path / "plaza"
    world.mkdir()
    shutil.copy(ARENA / "world.toml", world / "world.toml")
    (world / "handler.py").write_text(PLAZA_HANDLER.format(arena=str(ARENA / "handler.py")))
    return world


@contextlib.contextmanager
def _server(world: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``shardworld run`` on ``port``, up and serving the page; stopped by pid afterwards."""
    command = [sys.executable, "-m", "shardworld.cli", "run", str(world), "--dev"]
    command += ["--port", str(port), "--npcs", "50", "--zones", "2", "--map", "never"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 90.0  # the first run may compile the numba kernels
        while True:
            assert proc.poll() is None, f"shardworld run ended:\n{log.read_text()}"
            with contextlib.suppress(OSError):
                if _get(f"http://127.0.0.1:{port}/play")[0] == 200:
                    break
            assert time.monotonic() < deadline, f"no page after 90 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


def _state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("() => window.shardworld.state()")
    return state


def _wait(page: Any, js: str, arg: Any = None, timeout_s: float = 20.0) -> None:
    """Wait until ``js`` (a function of the page state ``s`` and ``arg``) is true."""
    page.wait_for_function(
        f"(arg) => {{ const s = window.shardworld && window.shardworld.state(); "
        f"return !!s && ({js}); }}",
        arg=arg,
        timeout=timeout_s * 1000,
    )


# Distinct colours in a sparse sample of the canvas, and the pixel at its centre.
CANVAS_PIXELS = """() => {
  const c = document.getElementById("view");
  const g = c.getContext("2d");
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  for (let i = 0; i < d.length; i += 4 * 37) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  const mid = g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
  return { colours: colours.size, mid: [mid[0], mid[1], mid[2]] };
}"""


def _entity(state: dict[str, Any], entity_id: str) -> dict[str, Any] | None:
    return next((v for v in state["visible"] if v["id"] == entity_id), None)


def test_two_players_walk_chat_and_reconnect_in_chromium(
    browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    world = _plaza_world(tmp_path)
    port = _free_port()
    log = tmp_path / "run.log"
    base = f"http://127.0.0.1:{port}"
    problems: list[str] = []
    with _server(world, port, log) as proc:
        pages = []
        for path in ("/", "/play"):
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
            )
            page.goto(base + path)
            pages.append(page)
        a, b = pages
        for page in pages:
            _wait(page, "s.connected && s.position !== null && s.visible.some(v => v.npc)")
        a_id = _state(a)["entityId"]
        b_id = _state(b)["entityId"]
        assert a_id != b_id
        _wait(b, "s.visible.some(v => v.id === arg && v.role === 'player')", a_id)
        _wait(a, "s.visible.some(v => v.id === arg && v.role === 'player')", b_id)

        # A walks north-east with two keys held: one diagonal intent of length 1.
        a0 = _state(a)["position"]
        a.focus("#view")
        a.keyboard.down("d")
        a.keyboard.down("ArrowUp")
        a.wait_for_timeout(300)
        held = _state(a)
        a.wait_for_timeout(1200)
        a.keyboard.up("d")
        a.keyboard.up("ArrowUp")
        assert held["intent"] == [0.7071067811865475, 0.7071067811865475], held["intent"]
        _wait(a, "s.intent[0] === 0 && s.intent[1] === 0")
        a.wait_for_timeout(400)  # it comes to a stop (accel 40 m/s²)
        a1 = _state(a)["position"]
        dx, dy = a1[0] - a0[0], a1[1] - a0[1]
        # 1.5 s at 6 m/s is 9 m along the diagonal; keep a wide margin for a busy machine.
        assert 2.0 < dx < 12.0 and 2.0 < dy < 12.0 and abs(dx - dy) < 1.0, (a0, a1)
        # B's mirror has A where A says it is.
        _wait(
            b,
            "(() => { const e = s.visible.find(v => v.id === arg.id);"
            " return !!e && Math.hypot(e.x - arg.x, e.y - arg.y) < 0.05; })()",
            {"id": a_id, "x": a1[0], "y": a1[1]},
        )

        # Both canvases show a world, each centred on its own entity (the camera follows).
        for page in pages:
            px = page.evaluate(CANVAS_PIXELS)
            assert px["colours"] >= 12, px
            assert px["mid"] == _state(page)["selfColor"], px

        # A chats; the letters typed into the chat box do not walk.
        a.keyboard.press("Enter")
        a.keyboard.type("hello from A, wasd")
        a.keyboard.press("Enter")
        line = {"from": a_id, "text": "hello from A, wasd"}
        _wait(b, "s.chat.some(c => c.from === arg.from && c.text === arg.text && !c.mine)", line)
        _wait(a, "s.chat.some(c => c.from === arg.from && c.text === arg.text && c.mine)", line)
        a2 = _state(a)["position"]
        assert abs(a2[0] - a1[0]) < 0.05 and abs(a2[1] - a1[1]) < 0.05, (a1, a2)
        for name, page in (("a", a), ("b", b)):
            hud = page.inner_text("#hud")
            assert "connected" in hud and "ms" in hud, hud
            page.screenshot(path=str(artifacts / f"play-{name}.png"))
        assert not problems, problems

        # The server goes away: both pages say so and offer to come back.
        _stop(proc)
        for page in pages:
            _wait(page, "!s.connected && s.overlay && s.closeCode === 1001", timeout_s=15.0)
        assert a.is_visible("#btn-resume") and a.is_enabled("#btn-resume")
        a.screenshot(path=str(artifacts / "play-disconnected.png"))

    # A fresh server on the same port: A's Resume finds its old entity gone and joins anew.
    with _server(world, port, log):
        a.click("#btn-resume")
        _wait(a, "s.connected && s.position !== null && !s.overlay")
        assert a.inner_text("#status") == "connected"
    assert time.monotonic() - started < 60.0


async def test_the_gateway_serves_the_page_and_nothing_else() -> None:
    world = load_world(ARENA)
    zone = Zone(world.config.with_(extra={"npcs": 0}), world.make_handler())
    gw = Gateway(EmbeddedWorld(zone), GatewayConfig(port=0, dev=True))
    await gw.start()
    try:
        http = gw.url.replace("ws://", "http://")
        page = (ROOT / "src" / "shardworld" / "web" / "play.html").read_text("utf-8")
        script = (ROOT / "src" / "shardworld" / "web" / "play.js").read_text("utf-8")
        for path in ("/", "/play", "/?token=abc"):
            status, headers, body = await asyncio.to_thread(_get, http + path)
            assert status == 200 and body == page
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            assert headers["X-Content-Type-Options"] == "nosniff"
        status, headers, body = await asyncio.to_thread(_get, http + "/play.js")
        assert status == 200 and body == script
        assert headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert 'from "/shardworld.js"' in body
        for other in ("/play.html", "/play/", "/web/play.js", "/../pyproject.toml", "/favicon.ico"):
            assert (await asyncio.to_thread(_get, http + other))[0] == 426, other

        # "/" is also where players connect: a handshake whose Connection header lists
        # several tokens (as Firefox sends it) must still upgrade, not get the page.
        host, port = gw.url.removeprefix("ws://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        status_line = await asyncio.wait_for(reader.readline(), 5.0)
        assert status_line.startswith(b"HTTP/1.1 101"), status_line
        writer.close()
    finally:
        await gw.stop()
