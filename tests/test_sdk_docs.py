"""docs/sdk.md works as written.

The guide marks each code block: ``<!-- file: PATH -->`` before a block means "this is the
whole of PATH at this point of the tutorial", ``<!-- run -->`` means "a complete script".
The tutorial's files are written to an empty folder in order; after each version of the
world, the world is run (one zone and two); at the end the tutorial's own tests run under
pytest in a separate process, from that folder, as a studio would run them. Scripts run and
must print what their comments say. Shell lines that call ``shardworld`` must parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shardworld.testing import ClusterHarness, WorldHarness
from shardworld.zone import load_world

DOC = Path(__file__).resolve().parent.parent / "docs" / "sdk.md"

_BLOCK = re.compile(
    r"(?:<!-- (?P<kind>file|run)(?:: (?P<name>\S+))? -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    kind: str | None
    name: str | None
    lang: str
    code: str
    line: int


def _blocks() -> list[Block]:
    text = DOC.read_text()
    return [
        Block(
            m["kind"],
            m["name"],
            m["lang"],
            m["code"],
            text.count("\n", 0, m.start("code")) + 1,
        )
        for m in _BLOCK.finditer(text)
    ]


def test_every_python_and_toml_block_is_marked_and_so_checked() -> None:
    blocks = _blocks()
    assert len(blocks) > 10
    unchecked = [b.line for b in blocks if b.lang in ("python", "toml") and b.kind is None]
    assert unchecked == [], f"docs/sdk.md lines {unchecked}: mark them file: or run"
    assert all(b.name for b in blocks if b.kind == "file")


def test_the_scripts_run_and_print_what_they_say(monkeypatch: pytest.MonkeyPatch) -> None:
    scripts = [b for b in _blocks() if b.kind == "run"]
    assert len(scripts) >= 2
    monkeypatch.chdir(DOC.parent.parent)
    for b in scripts:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(b.code, f"docs/sdk.md:{b.line}", "exec"), {"__name__": "__doc__"})
        said = re.findall(r"^\s*print\(.*\)\s*# (.*)$", b.code, re.M)
        assert out.getvalue().splitlines() == said, f"docs/sdk.md:{b.line}"


def test_the_shardworld_commands_in_the_guide_parse() -> None:
    from shardworld.cli import _parser
    from shardworld.gateway.auth import _token_parser

    checked = 0
    for b in _blocks():
        if b.lang != "sh":
            continue
        for raw in b.code.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line.startswith(".venv/bin/shardworld "):
                continue
            argv = shlex.split(line)[1:]
            if argv[0] == "token":
                _token_parser().parse_args(argv[1:])
            elif argv[0] != "bots":
                _parser().parse_args(argv)
            checked += 1
    assert checked >= 8


async def _run_world(folder: Path) -> None:
    """A few seconds of the world as it stands: players join, walk, pick, talk, leave."""
    world = load_world(folder)
    bushes = 20 if (folder / "handler.py").exists() else 0
    async with WorldHarness(world, extra={"bushes": bushes}) as h:
        me = await h.join(1)
        for _ in range(40):
            h.input(me, (1.0, 0.0), actions=1)
            await h.step()
        h.message(me, "stats", None)
        await h.step()
        h.leave(me)
        assert len(h.world.entities) == bushes
    async with ClusterHarness(world, extra={"bushes": bushes}) as c:
        players = [await c.join(p) for p in (1, 2, 3)]
        for _ in range(40):
            for e in players:
                c.input(e, (1.0, 0.0), actions=1)
            await c.step()
        assert c.entity_count() == bushes + 3


async def test_the_tutorial_builds_a_garden_that_works_at_every_step(tmp_path: Path) -> None:
    files = [b for b in _blocks() if b.kind == "file"]
    versions = 0
    for b in files:
        assert b.name is not None
        path = tmp_path / b.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(b.code)
        if b.name.startswith("zones/garden/"):
            await _run_world(tmp_path / "zones" / "garden")
            versions += 1
    assert versions == 4  # world.toml, then three handlers

    # The tutorial's tests, run as the tutorial says: pytest, from the project folder.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_garden.py",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert re.search(r"\b5 passed\b", text), text
