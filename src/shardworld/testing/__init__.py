"""Helpers for testing worlds: a manual clock, and (later) a whole cluster in one event loop.

Studios use these to test their own game code the way shardworld tests itself.
"""

from shardworld.testing.clock import ManualClock

__all__ = ["ManualClock"]
