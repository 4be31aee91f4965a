"""Clocks the zone is given (never one it reaches for).

The zone asks its clock for the time and to sleep until a deadline. Production uses
:class:`LoopClock` (the event loop's monotonic time); tests and studios' own tests use
:class:`ManualClock` from :mod:`shardworld.testing`, which only moves when told to.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    """What a zone needs of time."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline`` (at once if it already is)."""
        ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            # Still yield, so a zone that is always late cannot starve the loop.
            await asyncio.sleep(0)
