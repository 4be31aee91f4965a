"""Tick measurements a zone keeps about itself (for load reports, logs and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PHASES = ("inputs", "motion", "systems", "interest", "diff", "encode", "emit", "shard")
"""Where a tick's time goes; ``shard`` is the bus work of a sharded zone (ghosts, handoffs)."""


@dataclass
class ZoneStats:
    """Rolling tick timings (last ``window`` ticks) and running counters."""

    window: int = 1200
    ticks: int = 0
    snapshots: int = 0
    late_ticks: int = 0
    skipped_ticks: int = 0
    max_lateness_s: float = 0.0
    inputs_applied: int = 0
    inputs_dropped: int = 0
    inputs_unknown: int = 0
    inputs_out_of_order: int = 0
    inputs_invalid: int = 0
    wall_hits: int = 0
    bytes_out: int = 0
    last_pairs: int = 0
    last_observers: int = 0
    last_entities: int = 0
    last_ghosts: int = 0
    _tick_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _phase_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self._tick_ms = np.zeros(self.window, dtype=np.float64)
        self._phase_ms = np.zeros((self.window, len(PHASES)), dtype=np.float64)

    def record_tick(self, total_ms: float, phase_ms: np.ndarray) -> None:
        i = self.ticks % self.window
        self._tick_ms[i] = total_ms
        self._phase_ms[i] = phase_ms
        self.ticks += 1

    def tick_ms(self) -> np.ndarray:
        """Durations of the recorded ticks, oldest first (ms)."""
        k = min(self.ticks, self.window)
        if self.ticks <= self.window:
            return self._tick_ms[:k].copy()
        i = self.ticks % self.window
        return np.concatenate([self._tick_ms[i:], self._tick_ms[:i]])

    def percentiles(self) -> dict[str, float]:
        t = self.tick_ms()
        if t.size == 0:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {
            "p50_ms": float(np.percentile(t, 50)),
            "p99_ms": float(np.percentile(t, 99)),
            "max_ms": float(t.max()),
        }

    def recent_p99(self, ticks: int = 40) -> float:
        """p99 over the last ``ticks`` ticks (ms): what load reports use, so a zone that
        got busy (or quiet) shows it within seconds rather than over the whole window."""
        t = self.tick_ms()[-ticks:]
        return float(np.percentile(t, 99)) if t.size else 0.0

    def phase_means(self) -> dict[str, float]:
        k = min(self.ticks, self.window)
        if k == 0:
            return dict.fromkeys(PHASES, 0.0)
        means = self._phase_ms[:k].mean(axis=0)
        return {p: float(m) for p, m in zip(PHASES, means, strict=True)}

    def report(self) -> dict[str, object]:
        """A plain dict for logs and load reports."""
        return {
            "ticks": self.ticks,
            "snapshots": self.snapshots,
            **self.percentiles(),
            "late_ticks": self.late_ticks,
            "skipped_ticks": self.skipped_ticks,
            "max_lateness_ms": self.max_lateness_s * 1000.0,
            "entities": self.last_entities,
            "ghosts": self.last_ghosts,
            "observers": self.last_observers,
            "interest_pairs": self.last_pairs,
            "bytes_out": self.bytes_out,
            "inputs_applied": self.inputs_applied,
            "inputs_dropped": self.inputs_dropped,
            "inputs_unknown": self.inputs_unknown,
            "inputs_out_of_order": self.inputs_out_of_order,
            "inputs_invalid": self.inputs_invalid,
            "wall_hits": self.wall_hits,
            "phase_ms": self.phase_means(),
        }
