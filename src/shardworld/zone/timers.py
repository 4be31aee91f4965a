"""Timers driven by the zone's tick: periodic handler methods, one-shots, tick deadlines.

Three kinds, all counted in ticks (so a test that steps a zone by hand sees exactly what a
live zone does, and a replay with the same inputs fires the same timers):

* ``@every(seconds)`` on a handler method: runs in every zone, every ``seconds`` of
  simulation time, for that zone's own entities. Declared on the class because in a world of
  several zones ``on_start`` runs on one zone only.
* ``world.after(seconds, callback)``: a one-shot in this zone only; it does not follow an
  entity into another zone.
* deadlines in a field: store ``world.tick + world.ticks(seconds)`` in an int64 field and ask
  ``world.due(name)`` each tick for the rows whose deadline has passed. The deadline travels
  with the entity, and tick numbers agree between the zones of a sharded world (they count
  from the Unix epoch), so it stays valid wherever the entity goes.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from shardworld.zone.handler import ZoneHandler
    from shardworld.zone.zone import Zone

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute ``@every`` sets on a method: its period in seconds.
EVERY_ATTR = "__shardworld_every__"

TimerCallback = Callable[["Zone", int], None]
"""``callback(world, tick)``: what a one-shot timer runs."""


def every(seconds: float) -> Callable[[F], F]:
    """Run a handler method every ``seconds`` of simulation time, in every zone.

    The method is called as ``method(world, tick)`` after ``on_tick``, on the ticks where
    the tick number crosses a multiple of the period (``round(seconds * tick_hz)`` ticks, at
    least one). Tick numbers are shared by the zones of a sharded world, so every zone runs
    it on the same tick. If ticks are skipped (a zone fell far behind), the timer runs once
    on the next tick, never several times in a row.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"every(seconds): a number of seconds, not {seconds!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"every({seconds!r}): the period must be a positive number of seconds")

    def mark(fn: F) -> F:
        setattr(fn, EVERY_ATTR, float(seconds))
        return fn

    return mark


def seconds_to_ticks(seconds: float, tick_hz: float) -> int:
    """``seconds`` as a whole number of ticks at ``tick_hz`` (rounded to the nearest)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"seconds must be a number, not {seconds!r}")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be >= 0 and finite, not {seconds!r}")
    return round(seconds * tick_hz)


class Timer:
    """A one-shot timer from :meth:`Zone.after`. ``cancel()`` stops it if it has not run."""

    __slots__ = ("callback", "cancelled", "due_tick", "fired")

    def __init__(self, due_tick: int, callback: TimerCallback) -> None:
        self.due_tick = due_tick
        """The tick it runs on."""
        self.callback = callback
        self.cancelled = False
        self.fired = False

    @property
    def pending(self) -> bool:
        """Neither run nor cancelled yet."""
        return not (self.cancelled or self.fired)

    def cancel(self) -> bool:
        """Stop the timer; False if it had already run (or was cancelled before)."""
        if not self.pending:
            return False
        self.cancelled = True
        return True

    def __repr__(self) -> str:
        state = "fired" if self.fired else "cancelled" if self.cancelled else "pending"
        return f"Timer(due_tick={self.due_tick}, {state})"


def periodic_methods(handler: ZoneHandler) -> list[tuple[str, float]]:
    """The ``@every`` methods of ``handler``'s class as (name, seconds), base classes first,
    each in the order it was declared. A method overridden without ``@every`` is not a timer."""
    names: dict[str, None] = {}
    for klass in reversed(type(handler).__mro__):
        for name, value in vars(klass).items():
            if callable(value) and hasattr(value, EVERY_ATTR):
                names.setdefault(name, None)
    out = []
    for name in names:
        seconds = getattr(getattr(type(handler), name, None), EVERY_ATTR, None)
        if seconds is not None:
            out.append((name, float(seconds)))
    return out


class ZoneTimers:
    """A zone's timers: the handler's ``@every`` methods and the pending one-shots."""

    def __init__(self, handler: ZoneHandler, tick_hz: float) -> None:
        self.tick_hz = tick_hz
        self.periodic: list[tuple[str, int, Callable[[Zone, int], None]]] = [
            (name, max(1, seconds_to_ticks(seconds, tick_hz)), getattr(handler, name))
            for name, seconds in periodic_methods(handler)
        ]
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._last_tick: int | None = None
        self.fired = 0

    def after(self, now_tick: int, seconds: float, callback: TimerCallback) -> Timer:
        if not callable(callback):
            raise TypeError(f"after(): callback must be callable, not {callback!r}")
        due = now_tick + max(1, seconds_to_ticks(seconds, self.tick_hz))
        timer = Timer(due, callback)
        heapq.heappush(self._heap, (due, next(self._seq), timer))
        return timer

    @property
    def pending(self) -> int:
        """One-shot timers not yet run or cancelled."""
        return sum(1 for _, _, t in self._heap if t.pending)

    def run(self, zone: Zone, tick: int) -> None:
        """Run what is due at ``tick``: periodic methods first, then one-shots by due tick."""
        prev = self._last_tick if self._last_tick is not None else tick - 1
        self._last_tick = tick
        for _name, period, method in self.periodic:
            if tick // period != prev // period:
                self.fired += 1
                method(zone, tick)
        heap = self._heap
        while heap and heap[0][0] <= tick:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.fired = True
            self.fired += 1
            timer.callback(zone, tick)


def due_rows(column: npt.NDArray[Any], tick: int) -> npt.NDArray[np.int32]:
    """Rows whose deadline (a tick number > 0) is at or before ``tick``; they are set to 0."""
    if column.ndim != 1 or column.dtype.kind not in "iu":
        raise TypeError(
            f"due(): needs a field of one integer per entity (int64), not {column.dtype}"
            f"{list(column.shape[1:]) or ''}"
        )
    hit = (column > 0) & (column <= tick)
    rows = np.flatnonzero(hit).astype(np.int32)
    if rows.size:
        column[rows] = 0
    return rows
