"""Helpers for testing worlds: a manual clock, one zone or a whole cluster in one event loop.

Studios use these to test their own game code the way shardworld tests itself:

* :class:`ManualClock`: time moves only when the test says so.
* :class:`WorldHarness`: one zone of a world, ticked with ``await h.step(n)``; players join,
  send inputs and messages, leave; what the world sends them is collected.
* :class:`ClusterHarness`: every zone of a sharded world on the in-process bus, ticked
  together, so game code can be tested while entities cross zone borders.
"""

from shardworld.testing.clock import ManualClock
from shardworld.testing.cluster import ClusterHarness
from shardworld.testing.harness import SentMessage, WorldHarness

__all__ = ["ClusterHarness", "ManualClock", "SentMessage", "WorldHarness"]
