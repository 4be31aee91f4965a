"""Helpers for tests that run shardworld commands as real OS processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    """``python -m shardworld.cli ARGS`` with stdout and stderr merged into one pipe."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shardworld.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def wait_for_line(proc: asyncio.subprocess.Process, needle: str, timeout: float) -> None:
    """Read the process's output until a line contains ``needle``; fail with what it said."""
    assert proc.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stdout.readline()).decode(errors="replace")
            if not line:
                raise AssertionError(f"process ended before {needle!r}:\n{''.join(seen)}")
            seen.append(line)
            if needle in line:
                return


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 30.0) -> str:
    """SIGINT (a clean stop), SIGKILL after ``grace`` seconds; returns the rest of its output."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        out, _ = await proc.communicate()
    return (out or b"").decode(errors="replace")
