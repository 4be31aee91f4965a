"""``shardworld new NAME``: a new world folder a studio can start from.

The files come from ``shardworld/templates/world/`` (package data). Each template is the
file's final text with ``${name}`` where the world's name goes (:class:`string.Template`);
a ``.tmpl`` suffix keeps linters and test collectors away from the templates themselves.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from importlib import resources
from pathlib import Path
from string import Template

__all__ = [
    "FILES",
    "NAME_PATTERN",
    "ScaffoldError",
    "add_parser",
    "new_main",
    "new_world",
    "render",
    "validate_name",
]

#: A world name: lower-case letters, digits, ``_`` and ``-``, starting with a letter. It
#: names the folder, the world (``[zone] name``) and the world's bus topics, so it stays
#: within what every bus and file system accepts.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,39}")

# Template file -> the file it becomes, in the order they are reported.
FILES = {
    "world.toml.tmpl": "world.toml",
    "handler.py.tmpl": "handler.py",
    "test_world.py.tmpl": "test_world.py",
    "README.md.tmpl": "README.md",
}


class ScaffoldError(ValueError):
    """The name is not allowed or the folder is already there. The message says which."""


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a world; raise :class:`ScaffoldError` otherwise."""
    if not NAME_PATTERN.fullmatch(name):
        raise ScaffoldError(
            f"{name!r} is not a world name: use 1 to 40 lower-case letters, digits, '_' "
            "or '-', starting with a letter (e.g. 'meadow' or 'sky-islands')"
        )
    return name


def render(name: str) -> dict[str, str]:
    """The new world's files (file name -> text) for a world called ``name``."""
    validate_name(name)
    folder = resources.files("shardworld").joinpath("templates").joinpath("world")
    return {
        out: Template(folder.joinpath(src).read_text(encoding="utf-8")).substitute(name=name)
        for src, out in FILES.items()
    }


def new_world(name: str, parent: str | Path = "zones") -> Path:
    """Create ``parent/name/`` with a working world in it; returns the folder.

    Refuses (:class:`ScaffoldError`) if the folder exists, even empty: nothing a studio
    wrote is ever overwritten. If writing fails halfway, the new folder is removed again.
    """
    validate_name(name)
    files = render(name)
    parent_dir = Path(parent)
    target = parent_dir / name
    parent_dir.mkdir(parents=True, exist_ok=True)
    try:
        # mkdir is the check: it fails if anything by that name appeared, even just now.
        target.mkdir()
    except FileExistsError as exc:
        raise ScaffoldError(f"{target} already exists; pick another name or --dir") from exc
    try:
        for file_name, text in files.items():
            (target / file_name).write_text(text, encoding="utf-8")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``new`` subcommand's arguments (cli.py adds it to ``shardworld``)."""
    p = sub.add_parser(
        "new",
        help="create a new world folder to start from",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Create DIR/NAME/ with a small working world: world.toml (settings), handler.py\n"
            "(game code: one field, one system, one timer, one custom message), test_world.py\n"
            "(its test) and README.md (how to run it and what to edit next). Never overwrites\n"
            "an existing folder.\n\n"
            "examples:\n"
            "  shardworld new meadow                  # creates zones/meadow/\n"
            "  shardworld new meadow --dir worlds     # creates worlds/meadow/"
        ),
    )
    p.add_argument("name", help="the world's name: lower-case letters, digits, '_' or '-'")
    p.add_argument("--dir", default="zones", help="folder to create the world in (default: zones)")


def new_main(args: argparse.Namespace) -> int:
    """Run ``shardworld new``; returns the exit status."""
    try:
        target = new_world(args.name, args.dir)
    except ScaffoldError as exc:
        print(f"shardworld new: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"shardworld new: {exc}", file=sys.stderr)
        return 1
    print(f"shardworld: created {target}/ with {', '.join(FILES.values())}.")
    print(
        "\nnext steps:\n"
        f"  play:  shardworld run {target} --dev\n"
        "         then from another terminal: "
        "shardworld bots --url ws://127.0.0.1:7700 --count 20\n"
        f"  test:  python -m pytest {target}\n"
        f"  edit:  {target}/handler.py ({target}/README.md says what to change first)"
    )
    return 0
