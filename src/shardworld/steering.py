"""How simulated players steer: pure functions of a position and the time.

Shared by the SDK's asyncio bots (:mod:`shardworld.client.bots`) and the Locust swarm
(``loadtest/``, which runs under gevent): this module imports nothing but the standard
library, so either can use it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Behavior", "Vec", "Wander", "World", "centre", "margin", "seek"]

World = tuple[float, float, float, float]
Vec = tuple[float, float]


class Behavior(Protocol):
    def steer(self, pos: Vec, now: float) -> Vec:
        """The intent (length <= 1) to send, given the bot's position in metres and the
        local monotonic time."""
        ...


def seek(pos: Vec, target: Vec, slow_radius: float = 2.0) -> Vec:
    """A unit intent toward ``target``, shortened inside ``slow_radius`` metres of it so a
    bot does not overshoot by a whole snapshot interval."""
    dx, dy = target[0] - pos[0], target[1] - pos[1]
    dist = math.hypot(dx, dy)
    if dist < 1e-9:
        return 0.0, 0.0
    scale = min(1.0, dist / slow_radius) / dist
    return dx * scale, dy * scale


def margin(world: World) -> float:
    return 0.05 * min(world[2] - world[0], world[3] - world[1])


def centre(world: World) -> Vec:
    return (world[0] + world[2]) / 2.0, (world[1] + world[3]) / 2.0


@dataclass
class Wander:
    """Random headings, changed every 1-4 s; near an edge, a heading back inside."""

    world: World
    rng: random.Random
    heading: float = 0.0
    next_change: float = -math.inf

    def steer(self, pos: Vec, now: float) -> Vec:
        x0, y0, x1, y1 = self.world
        m = margin(self.world)
        if not (x0 + m <= pos[0] <= x1 - m and y0 + m <= pos[1] <= y1 - m):
            cx, cy = centre(self.world)
            back = math.atan2(cy - pos[1], cx - pos[0])
            self.heading = back + self.rng.uniform(-math.pi / 4, math.pi / 4)
            self.next_change = now + self.rng.uniform(1.0, 4.0)
        elif now >= self.next_change:
            self.heading = self.rng.uniform(-math.pi, math.pi)
            self.next_change = now + self.rng.uniform(1.0, 4.0)
        return math.cos(self.heading), math.sin(self.heading)
