"""`shardworld new`: the generated world loads, runs, passes its own tests, and nothing a
studio wrote is ever overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardworld.cli import main
from shardworld.scaffold import FILES, ScaffoldError, new_world, render, validate_name
from shardworld.zone import load_world

ROOT = Path(__file__).resolve().parents[1]


def test_new_writes_the_four_files_with_the_name_filled_in(tmp_path: Path) -> None:
    folder = new_world("meadow", tmp_path)
    assert folder == tmp_path / "meadow"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES.values())
    for path in folder.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "${" not in text and "$name" not in text, path.name
    world = load_world(folder)
    assert world.config.name == "meadow"
    assert world.handler_class.__name__ == "Handler"
    assert [f.name for f in world.handler_class.fields] == ["energy"]
    assert "# meadow" in (folder / "README.md").read_text(encoding="utf-8")


def test_the_generated_world_passes_its_own_tests(tmp_path: Path) -> None:
    folder = new_world("meadow", tmp_path)
    # A fresh interpreter in the new folder, with no configuration of this repository.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_the_generated_world_runs_headless(tmp_path: Path) -> None:
    folder = new_world("meadow", tmp_path)
    cmd = [sys.executable, "-m", "shardworld.cli", "run", str(folder)]
    done = subprocess.run(
        [*cmd, "--no-gateway", "--seconds", "2", "--map", "never"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["world"] == "meadow"
    assert summary["entities"] == 200  # [demo] npcs
    assert summary["ticks"] >= 20


def test_the_generated_files_are_lint_clean(tmp_path: Path) -> None:
    folder = new_world("meadow", tmp_path)
    config = str(ROOT / "pyproject.toml")
    for args in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--config", config, str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_an_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    mine = tmp_path / "meadow"
    mine.mkdir()
    (mine / "handler.py").write_text("# my game\n")
    with pytest.raises(ScaffoldError, match="already exists"):
        new_world("meadow", tmp_path)
    assert (mine / "handler.py").read_text() == "# my game\n"
    assert sorted(p.name for p in mine.iterdir()) == ["handler.py"]
    # An empty folder, or a file of that name, is refused too.
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    for name in ("empty", "afile"):
        with pytest.raises(ScaffoldError):
            new_world(name, tmp_path)
    assert list((tmp_path / "empty").iterdir()) == []
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(
    "name", ["", "Meadow", "1world", "-x", "a/b", "..", "a b", "é", "w" * 41, "a.b"]
)
def test_bad_names_are_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    with pytest.raises(ScaffoldError, match="not a world name"):
        new_world(name, tmp_path / "worlds")
    assert not (tmp_path / "worlds").exists()


def test_good_names() -> None:
    for name in ("meadow", "sky-islands", "w2", "big_world", "w" * 40):
        assert validate_name(name) == name
        assert f'name = "{name}"' in render(name)["world.toml"]


def test_cli_new_prints_next_steps_and_refuses_a_second_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "forest", "--dir", str(tmp_path / "zones")]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "zones" / "forest"
    assert (folder / "handler.py").is_file()
    assert f"shardworld run {folder} --dev" in out
    assert f"python -m pytest {folder}" in out

    assert main(["new", "forest", "--dir", str(tmp_path / "zones")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["new", "Forest!", "--dir", str(tmp_path / "zones")]) == 2
    assert "not a world name" in capsys.readouterr().err


def test_cli_help_lists_new(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "new NAME" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["new", "--help"])
    assert "shardworld new meadow" in capsys.readouterr().out
