"""A clock that moves only when a test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class ManualClock:
    """Deterministic time for tests: ``await clock.advance(dt)`` wakes sleepers in order.

    ``work(seconds)`` lets a test pretend a tick's computation took that long (the zone reads
    ``now()`` before and after its work).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def work(self, seconds: float) -> None:
        """Move time forward without waking anyone (simulated CPU time)."""
        self._now += seconds

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its deadline, in order.

        Before each step the event loop gets a few turns, so tasks that are about to sleep
        register their deadlines first (nobody misses a wake-up because it was late to bed).
        """
        target = self._now + seconds
        while True:
            await _let_others_run()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
        self._now = max(self._now, target)
        await _let_others_run()


async def _let_others_run(turns: int = 8) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
