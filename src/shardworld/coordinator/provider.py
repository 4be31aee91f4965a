"""Node providers: how an elastic coordinator gets zone processes started and stopped.

The coordinator decides *when* a world needs another zone (a hot zone that line moves cannot
cool down) and when one can go (two cold siblings merged); a :class:`NodeProvider` carries
that out on whatever runs the processes: :class:`LocalProvider` spawns ``shardworld zone``
child processes on this machine; a Kubernetes or cloud provider would create and delete pods
or instances with the same command line.

The coordinator never trusts a provider's word that a zone is up. A zone process announces
itself the way every zone does, by holding its lease ``zone:NAME`` in the store and sending
heartbeats on the bus (after it has subscribed to its topics); only then does the
coordinator give it cells. So a provider needs no health checks or callbacks of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

log = logging.getLogger("shardworld.coordinator")

#: Zone names become file names and command-line arguments: keep them plain.
_ZONE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ProviderError(Exception):
    """A provider could not start or stop a zone (the coordinator logs it and carries on)."""


@runtime_checkable
class NodeProvider(Protocol):
    """Starts and stops the processes of a world's zones.

    What an implementation must guarantee:

    * :meth:`start_zone` only *requests* a start: it returns as soon as the process (pod,
      instance) has been asked for, without waiting for it to serve. The process runs
      ``shardworld zone PATH --zone NAME --bus URL --store URL --world-name WORLD`` (plus any
      settings the deployment adds), so it reads the current cell map from the store, where
      the coordinator has already put ``NAME``; it then takes its lease ``zone:NAME`` and
      heartbeats. The coordinator waits for both before it gives the zone cells, and gives up
      (calling :meth:`stop_zone`) if they do not come within its start timeout.
    * At most one process runs per zone name. Starting a name that is already running does
      nothing. (A second process would wait for the first one's lease, never simulate.)
    * :meth:`stop_zone` asks the process to stop gracefully first (SIGINT or SIGTERM: the zone
      releases its lease and exits), forces it after a grace period, and returns once it is
      gone. Stopping a name that is not running does nothing. The coordinator stops only
      zones that own no cells and have reported no entities for a while, and it runs this
      call in the background, so taking seconds is fine.
    * :meth:`running` answers at once, without I/O, from what the provider knows: the names
      it started whose processes have not exited (or been stopped).
    * It touches only what it started: never a process, pod or instance it did not create.
    * Failures to start or stop raise :class:`ProviderError`.
    """

    async def start_zone(self, name: str) -> None:
        """Request a process for zone ``name``; return without waiting for it to serve."""
        ...

    async def stop_zone(self, name: str) -> None:
        """Stop zone ``name``'s process (gracefully, then by force); return once it is gone."""
        ...

    def running(self) -> set[str]:
        """Names of the zones whose processes this provider started and that still run."""
        ...


class LocalProvider:
    """Runs zones as child processes of this one: ``python -m shardworld.cli zone ...``.

    Args:
        world_path: the world folder every zone loads (the same as the running zones').
        bus_url: the world's bus, e.g. ``kafka://127.0.0.1:9092``.
        store_url: the coordinator's store, e.g. ``redis://127.0.0.1:6379/0``.
        extra_args: more ``shardworld zone`` arguments, e.g. ``("--lease-ttl", "1.5")``.
        log_dir: each zone's output (log lines and its final JSON summary) is appended to
            ``log_dir/zone-NAME.log``; None discards it.
        world_name: ``--world-name`` (the topic prefix), if the world runs under another name
            than its folder's.
        grace_s: seconds a stopping zone gets after SIGINT before it is killed.
        python: the interpreter to run (default: this one).

    Children run in a session of their own, so a Ctrl-C meant for the coordinator's terminal
    does not also take down the zones it started: a coordinator that steps down leaves its
    world running. :meth:`close` stops them when that is wanted.
    """

    def __init__(
        self,
        world_path: str | os.PathLike[str],
        bus_url: str,
        store_url: str,
        extra_args: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
        *,
        world_name: str | None = None,
        grace_s: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        if isinstance(extra_args, str):
            raise TypeError("extra_args must be a sequence of arguments, not one string")
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s!r}")
        self.world_path = str(world_path)
        self.bus_url = bus_url
        self.store_url = store_url
        self.extra_args = tuple(extra_args)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.world_name = world_name
        self.grace_s = grace_s
        self.python = python
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = asyncio.Lock()

    def command(self, name: str) -> list[str]:
        """The command line that runs zone ``name``."""
        cmd = [
            self.python,
            "-m",
            "shardworld.cli",
            "zone",
            self.world_path,
            "--zone",
            name,
            "--bus",
            self.bus_url,
            "--store",
            self.store_url,
        ]
        if self.world_name:
            cmd += ["--world-name", self.world_name]
        return cmd + list(self.extra_args)

    def pid(self, name: str) -> int | None:
        """The process id of zone ``name`` if this provider started it and it still runs."""
        proc = self._children.get(name)
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    def log_path(self, name: str) -> Path | None:
        """Where zone ``name``'s output goes (None: discarded)."""
        return self.log_dir / f"zone-{name}.log" if self.log_dir is not None else None

    async def start_zone(self, name: str) -> None:
        if not isinstance(name, str) or not _ZONE_NAME.match(name):
            raise ProviderError(f"illegal zone name {name!r}")
        async with self._lock:
            if self.pid(name) is not None:
                return
            path = self.log_path(name)
            try:
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                # The child keeps its own copy of the descriptor; ours closes at once.
                with contextlib.ExitStack() as stack:
                    out: IO[bytes] | int = subprocess.DEVNULL
                    if path is not None:
                        out = stack.enter_context(path.open("ab"))
                    # A plain Popen, not an asyncio subprocess: asyncio kills the children it
                    # still holds when its loop closes, and these must be able to outlive us.
                    proc = subprocess.Popen(
                        self.command(name),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                        start_new_session=True,
                    )
            except OSError as exc:
                raise ProviderError(f"cannot start zone {name}: {exc}") from exc
            self._children[name] = proc
            log.info(
                "provider: started zone %s (pid %d)%s",
                name,
                proc.pid,
                f", output in {path}" if path is not None else "",
            )

    async def stop_zone(self, name: str) -> None:
        proc = self._children.get(name)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            if not await _exited(proc, self.grace_s):
                log.warning(
                    "provider: zone %s (pid %d) still runs %.0f s after SIGINT; killing it",
                    name,
                    proc.pid,
                    self.grace_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await _exited(proc, 30.0)
        log.info("provider: zone %s (pid %d) exited with %s", name, proc.pid, proc.returncode)
        if self._children.get(name) is proc:
            del self._children[name]

    def running(self) -> set[str]:
        return {n for n, p in self._children.items() if p.poll() is None}

    async def close(self, stop: bool = False) -> None:
        """Let go of the children: stop them all first if ``stop``, else leave them running
        (they serve the world whoever coordinates it)."""
        if stop:
            await asyncio.gather(
                *(self.stop_zone(n) for n in list(self._children)), return_exceptions=True
            )
        self._children.clear()


async def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit (reaping it); True if it did."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while proc.poll() is None:
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.05)
    return True


__all__ = ["LocalProvider", "NodeProvider", "ProviderError"]
