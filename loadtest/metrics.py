"""What a swarm measures, in forms that add up across players, workers and machines.

Pure Python (no numpy, no gevent): every snapshot of every player passes through
:meth:`Histogram.record`, which must stay a few hundred nanoseconds.

* :class:`Histogram` — log-spaced buckets (2 % wide, 10 µs .. 100 s), mergeable exactly;
* :class:`ClockSync` — the server clock offset from request/response pairs, as the SDK
  estimates it (docs/client.md, "Metrics"): the sample with the smallest RTT of the last 16;
* :class:`AgeClock` — snapshot age bounds of one connection, as the SDK computes them;
* :class:`WorkerState` — one worker process's counters and histograms; ``to_dict`` /
  :func:`merge_states` / :func:`summarize` turn many of them into one JSON summary.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

_LOW: Final = 1e-5
_GROWTH: Final = 1.02
_INV_LOG_G: Final = 1.0 / math.log(_GROWTH)
BUCKETS: Final = 2 + math.ceil(math.log(1e2 / _LOW) / math.log(_GROWTH))
CLOCK_SAMPLES: Final = 16
_U32: Final = 1 << 32


class Histogram:
    """Durations in seconds, in log-spaced buckets; percentiles within about 1 %.

    The layout is the SDK's ``LatencyHistogram`` (so figures compare one to one), kept as a
    plain list: incrementing a numpy element from Python costs several times more.
    """

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * BUCKETS
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, seconds: float) -> None:
        if seconds <= _LOW:
            i = 0
        elif seconds != seconds or seconds == math.inf:  # NaN or infinity: not a duration
            return
        else:
            i = min(BUCKETS - 1, 1 + int(math.log(seconds / _LOW) * _INV_LOG_G))
        self.counts[i] += 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100) in seconds; ``None`` when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        if rank == 1:
            return self.min
        if rank >= self.count:
            return self.max
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                mid = _LOW / 2 if i == 0 else _LOW * _GROWTH ** (i - 0.5)
                return min(max(mid, self.min), self.max)
        return self.max  # pragma: no cover - the counts add up to count

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def since(self, earlier: Histogram) -> Histogram:
        """The samples added after ``earlier`` (an older state of this histogram); the
        window's min and max are the edges of its outermost non-empty buckets."""
        out = Histogram()
        out.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        out.count = self.count - earlier.count
        out.total = self.total - earlier.total
        used = [i for i, n in enumerate(out.counts) if n]
        if used:
            lo, hi = used[0], used[-1]
            out.min = max(self.min, 0.0 if lo == 0 else _LOW * _GROWTH ** (lo - 1))
            out.max = min(self.max, math.inf if hi == BUCKETS - 1 else _LOW * _GROWTH**hi)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: only the non-empty buckets."""
        return {
            "count": self.count,
            "total": self.total,
            "min": None if self.count == 0 else self.min,
            "max": None if self.count == 0 else self.max,
            "buckets": [[i, n] for i, n in enumerate(self.counts) if n],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        out = cls()
        for i, n in data["buckets"]:
            if not (0 <= int(i) < BUCKETS and int(n) >= 0):
                raise ValueError(f"histogram bucket {i}: {n} is out of range")
            out.counts[int(i)] += int(n)
        out.count = int(data["count"])
        out.total = float(data["total"])
        if out.count:
            out.min, out.max = float(data["min"]), float(data["max"])
        if sum(out.counts) != out.count:
            raise ValueError("histogram buckets do not add up to its count")
        return out

    def summary_ms(self, *quantiles: float) -> dict[str, float | None]:
        """``{"p50": ms, "p99": ms, ..., "max": ms}`` rounded to 0.01 ms."""
        out: dict[str, float | None] = {}
        for q in quantiles:
            v = self.percentile(q)
            out[f"p{q:g}"] = None if v is None else round(v * 1e3, 2)
        out["max"] = None if self.count == 0 else round(self.max * 1e3, 2)
        return out


class ClockSync:
    """Server clock minus local monotonic clock, from (sent, server_time, received) samples.

    The server read its clock between send and receive, so each sample's offset is off by
    at most RTT / 2; the estimate is the sample with the smallest RTT among the last 16.
    """

    __slots__ = ("_samples", "offset")

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=CLOCK_SAMPLES)
        self.offset = 0.0

    def add(self, sent: float, server_time: float, received: float) -> None:
        rtt = max(0.0, received - sent)
        self._samples.append((rtt, server_time - (sent + received) / 2.0))
        self.offset = min(self._samples)[1]

    def reset(self) -> None:
        self._samples.clear()
        self.offset = 0.0


def tick_delta(tick: int, since: int) -> int:
    """``tick - since`` for 32-bit wrapping tick numbers."""
    return ((tick - since + (_U32 >> 1)) % _U32) - (_U32 >> 1)


class AgeClock:
    """Snapshot age bounds of one connection (docs/client.md, "Snapshot age").

    ``lower``: the schedule of ticks (``1 / tick_hz`` apart on the server clock) anchored on
    the fastest snapshot so far, which counts as age 0. ``upper``: the first snapshot's tick
    taken as due at WELCOME's ``server_time``. Both use :class:`ClockSync`'s current offset.
    """

    __slots__ = ("_anchor_arrival", "_anchor_tick", "_first_tick", "clock", "server_time", "tick_s")

    def __init__(self, clock: ClockSync, tick_hz: float, welcome_server_time: float) -> None:
        self.clock = clock
        self.tick_s = 1.0 / tick_hz
        self.server_time = welcome_server_time
        self._anchor_tick: int | None = None
        self._anchor_arrival = 0.0
        self._first_tick = 0

    def ages(self, tick: int, received: float) -> tuple[float, float]:
        """(lower, upper) age in seconds of a snapshot of ``tick`` read at ``received``."""
        arrival = received + self.clock.offset
        if self._anchor_tick is None:
            self._anchor_tick = self._first_tick = tick
            self._anchor_arrival = arrival
        age = arrival - (self._anchor_arrival + tick_delta(tick, self._anchor_tick) * self.tick_s)
        if age < 0.0:
            self._anchor_tick, self._anchor_arrival = tick, arrival
            age = 0.0
        upper = arrival - (self.server_time + tick_delta(tick, self._first_tick) * self.tick_s)
        return age, upper if upper > age else age


# --- one worker's figures -------------------------------------------------------------------

HISTOGRAMS: Final = (
    "join",
    "resume",
    "snapshot_age",
    "snapshot_age_upper",
    "rtt",
    "input_lateness",
    "input_ack",
)
COUNTS: Final = (
    "players_started",
    "joins",
    "resumes",
    "resumes_lost_entity",
    "rejoins",
    "storm_drops",
    "reconnects",
    "snapshots",
    "snapshot_bytes",
    "inputs_sent",
    "inputs_skipped",
    "pings_sent",
    "pongs",
    "protocol_errors",
    "mirror_errors",
    "border_crossings",
)
BY_NAME: Final = ("join_failures", "errors", "kicks", "disconnects")


@dataclass
class WorkerState:
    """Everything one worker process counts. Players add to it; a reporter ships it."""

    counts: Counter[str] = field(default_factory=Counter)
    by_name: dict[str, Counter[str]] = field(
        default_factory=lambda: {k: Counter() for k in BY_NAME}
    )
    hist: dict[str, Histogram] = field(default_factory=lambda: {k: Histogram() for k in HISTOGRAMS})
    connected: int = 0
    """Connections open right now (joined and not yet closed)."""
    player_seconds_closed: float = 0.0
    """Connected time of connections that have ended."""
    live_since: dict[int, float] = field(default_factory=dict)
    """Local monotonic time each open connection joined, by a key its player chooses."""
    peak: int = 0
    """Most connections open at once."""
    connected_at_stop: int | None = None
    """Connections open when the test was asked to stop (before players closed them)."""

    def opened(self, key: int, now: float) -> None:
        self.live_since[key] = now
        self.connected = len(self.live_since)
        self.peak = max(self.peak, self.connected)

    def closed(self, key: int, now: float) -> None:
        t = self.live_since.pop(key, None)
        if t is not None:
            self.player_seconds_closed += now - t
        self.connected = len(self.live_since)

    def player_seconds(self, now: float) -> float:
        return self.player_seconds_closed + sum(now - t for t in self.live_since.values())

    def to_dict(self, now: float, cpu_s: float, elapsed_s: float) -> dict[str, Any]:
        """A JSON-ready state: add up with :func:`merge_states`."""
        return {
            "workers": 1,
            "elapsed_s": elapsed_s,
            "cpu_s": cpu_s,
            "player_s": self.player_seconds(now),
            "connected": self.connected,
            "peak": self.peak,
            "connected_at_stop": self.connected
            if self.connected_at_stop is None
            else self.connected_at_stop,
            "counts": {k: int(self.counts[k]) for k in COUNTS},
            "by_name": {k: dict(v) for k, v in self.by_name.items()},
            "hist": {k: h.to_dict() for k, h in self.hist.items()},
        }


def empty_state() -> dict[str, Any]:
    return {**WorkerState().to_dict(0.0, 0.0, 0.0), "workers": 0}


def merge_states(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One state for several workers: counts add up, histograms merge bucket by bucket (so
    percentiles are those of every sample, never averages of percentiles), ``elapsed_s`` is
    the longest."""
    out = empty_state()
    hists = {k: Histogram() for k in HISTOGRAMS}
    by_name: dict[str, Counter[str]] = {k: Counter() for k in BY_NAME}
    for s in states:
        out["workers"] += int(s["workers"])
        out["elapsed_s"] = max(float(out["elapsed_s"]), float(s["elapsed_s"]))
        for key in ("cpu_s", "player_s"):
            out[key] += float(s[key])
        for key in ("connected", "peak", "connected_at_stop"):
            out[key] += int(s.get(key, 0))
        for k in COUNTS:
            out["counts"][k] += int(s["counts"].get(k, 0))
        for k in BY_NAME:
            by_name[k].update({str(n): int(v) for n, v in s["by_name"].get(k, {}).items()})
        for k in HISTOGRAMS:
            if k in s["hist"]:
                hists[k].merge(Histogram.from_dict(s["hist"][k]))
    out["by_name"] = {k: dict(sorted(v.items())) for k, v in by_name.items()}
    out["hist"] = {k: h.to_dict() for k, h in hists.items()}
    return out


def window(later: Mapping[str, Any], earlier: Mapping[str, Any]) -> dict[str, Any]:
    """What happened between two states of the same worker (a steady-state window):
    counts, CPU and player-seconds subtract, histograms keep only the newer samples."""
    out = dict(later)
    out["elapsed_s"] = float(later["elapsed_s"]) - float(earlier["elapsed_s"])
    for key in ("cpu_s", "player_s"):
        out[key] = float(later[key]) - float(earlier[key])
    out["counts"] = {k: int(later["counts"][k]) - int(earlier["counts"][k]) for k in COUNTS}
    out["by_name"] = {
        k: {
            n: v - int(earlier["by_name"][k].get(n, 0))
            for n, v in later["by_name"][k].items()
            if v - int(earlier["by_name"][k].get(n, 0))
        }
        for k in BY_NAME
    }
    out["hist"] = {
        k: Histogram.from_dict(later["hist"][k])
        .since(Histogram.from_dict(earlier["hist"][k]))
        .to_dict()
        for k in HISTOGRAMS
    }
    return out


def summarize(state: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The JSON summary of a (merged) state; ``extra`` keys go first (url, users, ...)."""
    c = state["counts"]
    h = {k: Histogram.from_dict(state["hist"][k]) for k in HISTOGRAMS}
    elapsed = float(state["elapsed_s"])
    player_s = float(state["player_s"])
    cpu = float(state["cpu_s"])
    per_s = (lambda n: round(n / elapsed, 2)) if elapsed > 0 else (lambda n: 0.0)
    disconnects = state["by_name"]["disconnects"]
    return {
        **extra,
        "workers": state["workers"],
        "elapsed_s": round(elapsed, 2),
        "players_started": c["players_started"],
        "connected_at_stop": state["connected_at_stop"],
        "connected_peak": state["peak"],
        "joins": c["joins"],
        "join_failures": state["by_name"]["join_failures"],
        "join_ms": h["join"].summary_ms(50, 99),
        "resumes": c["resumes"],
        "resumes_lost_entity": c["resumes_lost_entity"],
        "resume_ms": h["resume"].summary_ms(50, 99),
        "rejoins": c["rejoins"],
        "storm_drops": c["storm_drops"],
        "unexpected_disconnects": sum(disconnects.values()),
        "disconnects_by_code": disconnects,
        "reconnects": c["reconnects"],
        "errors_by_code": state["by_name"]["errors"],
        "kicks_by_code": state["by_name"]["kicks"],
        "protocol_errors": c["protocol_errors"],
        "mirror_errors": c["mirror_errors"],
        "snapshots": c["snapshots"],
        "snapshots_per_s": per_s(c["snapshots"]),
        "snapshots_per_player_s": round(c["snapshots"] / player_s, 2) if player_s > 0 else 0.0,
        "snapshot_bytes_per_s": per_s(c["snapshot_bytes"]),
        "snapshot_bytes_mean": round(c["snapshot_bytes"] / c["snapshots"], 1)
        if c["snapshots"]
        else None,
        "snapshot_age_ms": h["snapshot_age"].summary_ms(50, 90, 99),
        "snapshot_age_upper_ms": h["snapshot_age_upper"].summary_ms(50, 90, 99),
        "rtt_ms": h["rtt"].summary_ms(50, 99),
        "inputs_sent": c["inputs_sent"],
        "inputs_per_player_s": round(c["inputs_sent"] / player_s, 2) if player_s > 0 else 0.0,
        "inputs_skipped": c["inputs_skipped"],
        "input_lateness_ms": h["input_lateness"].summary_ms(50, 99),
        "input_to_ack_ms": h["input_ack"].summary_ms(50, 99),
        "border_crossings": c["border_crossings"],
        "player_seconds": round(player_s, 1),
        "worker_cpu_s": round(cpu, 2),
        "cpu_ms_per_player_s": round(1e3 * cpu / player_s, 4) if player_s > 0 else None,
    }
