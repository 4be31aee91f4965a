"""Prometheus metrics: a small registry, collectors over the stats objects, a /metrics server.

Everything is read at scrape time from the stats the zones, nodes, gateways and coordinators
keep anyway, so metrics cost nothing per tick. The one exception to "read a value" is the tick
time histogram: Prometheus needs cumulative bucket counts, while :class:`ZoneStats` keeps only a
rolling window of tick times. Each scrape feeds the ticks recorded since the previous scrape
from that window into cumulative buckets (and per-phase time totals). Scrape at least once per
window (1200 ticks: 60 s at 20 Hz) or the oldest unscraped ticks are gone; they still count
in ``shardworld_zone_ticks_total`` but not in the histogram, whose ``_count`` is exactly the
ticks it observed.

The text format is Prometheus exposition format 0.0.4 (``docs/metrics.md`` lists every metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shardworld.zone.stats import PHASES

if TYPE_CHECKING:
    from shardworld.coordinator.coordinator import Coordinator
    from shardworld.gateway.server import Gateway
    from shardworld.sharding.node import ZoneNode
    from shardworld.zone.stats import ZoneStats
    from shardworld.zone.zone import Zone

log = logging.getLogger("shardworld.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TICK_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
"""Upper bounds of the tick time histogram (seconds); the tick budget at 20 Hz is 0.05."""

KINDS = ("counter", "gauge", "histogram")

Labels = Mapping[str, str]


def format_value(v: float) -> str:
    """A sample value as the text format spells it (``+Inf``, ``-Inf``, ``NaN``)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


@dataclass
class Family:
    """One metric family of one scrape: a name, a type, a help line and its samples."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown metric type {self.kind!r}")

    def add(self, value: float, labels: Labels | None = None) -> Family:
        """A counter or gauge sample."""
        self.samples.append((self.name, dict(labels or {}), float(value)))
        return self

    def add_histogram(
        self,
        labels: Labels,
        bounds: Iterable[float],
        cumulative: Iterable[float],
        total: float,
        count: float,
    ) -> Family:
        """A histogram's samples: ``cumulative[i]`` observations were <= ``bounds[i]``;
        the ``+Inf`` bucket is ``count``."""
        base = dict(labels)
        for le, n in zip(bounds, cumulative, strict=True):
            self.samples.append((self.name + "_bucket", {**base, "le": format_value(le)}, n))
        self.samples.append((self.name + "_bucket", {**base, "le": "+Inf"}, float(count)))
        self.samples.append((self.name + "_sum", base, float(total)))
        self.samples.append((self.name + "_count", base, float(count)))
        return self


Collector = Callable[[], Iterable[Family]]


class Counter:
    """A counter owned by the registry (for code that counts events itself)."""

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = tuple(sorted(labels.items()))
        self._values[key] = self._values.get(key, 0.0) + amount

    def collect(self) -> Iterable[Family]:
        fam = Family(self.name, "counter", self.help)
        for key, v in self._values.items():
            fam.add(v, dict(key))
        return [fam]


class Gauge:
    """A gauge owned by the registry."""

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[tuple[tuple[str, str], ...], float] = {}

    def set(self, value: float, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] = float(value)

    def collect(self) -> Iterable[Family]:
        fam = Family(self.name, "gauge", self.help)
        for key, v in self._values.items():
            fam.add(v, dict(key))
        return [fam]


class Histogram:
    """Cumulative counts over fixed bucket upper bounds (one series per label set)."""

    def __init__(self, name: str, help: str, buckets: Iterable[float] = TICK_BUCKETS_S) -> None:
        self.name, self.help = name, help
        self.bounds = np.asarray(sorted(float(b) for b in buckets), dtype=np.float64)
        if self.bounds.size == 0 or not np.all(np.isfinite(self.bounds)):
            raise ValueError("a histogram needs finite bucket bounds (+Inf is implied)")
        self._series: dict[tuple[tuple[str, str], ...], list[Any]] = {}

    def _get(self, labels: Mapping[str, str]) -> list[Any]:
        key = tuple(sorted(labels.items()))
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = [np.zeros(self.bounds.size, np.int64), 0.0, 0]
        return s

    def observe(self, value: float, **labels: str) -> None:
        self.observe_many(np.asarray([value], np.float64), labels)

    def observe_many(self, values: Any, labels: Mapping[str, str]) -> None:
        """Add many observations at once (one numpy pass, no Python loop per value)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        s = self._get(labels)
        # Bucket i counts values <= bounds[i] (non-cumulative here; rendered cumulative).
        idx = np.searchsorted(self.bounds, v, side="left")
        s[0] += np.bincount(idx, minlength=self.bounds.size + 1)[: self.bounds.size]
        s[1] += float(v.sum())
        s[2] += int(v.size)

    def collect(self) -> Iterable[Family]:
        fam = Family(self.name, "histogram", self.help)
        for key, (counts, total, n) in self._series.items():
            fam.add_histogram(dict(key), self.bounds.tolist(), np.cumsum(counts).tolist(), total, n)
        return [fam]


class Registry:
    """Collectors called at every scrape; their families are merged by name and rendered."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> Collector:
        self._collectors.append(collector)
        return collector

    def collect(self) -> list[Family]:
        merged: dict[str, Family] = {}
        for c in self._collectors:
            try:
                fams = list(c())
            except Exception:
                # One broken collector must not take down the whole scrape.
                log.exception("metrics collector %r failed", c)
                continue
            for f in fams:
                have = merged.get(f.name)
                if have is None:
                    merged[f.name] = Family(f.name, f.kind, f.help, list(f.samples))
                elif have.kind != f.kind:
                    raise ValueError(f"metric {f.name} registered as {have.kind} and {f.kind}")
                else:
                    have.samples.extend(f.samples)
        return list(merged.values())

    def render(self) -> str:
        """The text exposition format 0.0.4 of every family with at least one sample."""
        out: list[str] = []
        for f in self.collect():
            if not f.samples:
                continue
            out.append(f"# HELP {f.name} {_escape_help(f.help)}")
            out.append(f"# TYPE {f.name} {f.kind}")
            for name, labels, value in f.samples:
                out.append(f"{name}{_label_text(labels)} {format_value(value)}")
        return "\n".join(out) + "\n" if out else ""


# --- collectors over the stats objects ----------------------------------------------------


class _TickScan:
    """Feeds the ticks a ZoneStats recorded since the last scrape into cumulative series."""

    def __init__(self) -> None:
        self.seen = 0
        self.bounds = np.asarray(TICK_BUCKETS_S, np.float64)
        self.counts = np.zeros(self.bounds.size + 1, np.int64)  # last: above every bound
        self.total_s = 0.0
        self.phase_s = np.zeros(len(PHASES), np.float64)

    def update(self, stats: ZoneStats) -> None:
        ticks, window = stats.ticks, stats.window
        if ticks <= self.seen:
            self.seen = ticks  # a reset stats object: start over
            return
        first = max(self.seen, ticks - window)
        rows = np.arange(first, ticks) % window
        # The ring buffers are read directly so a scrape copies only the new ticks.
        secs = stats._tick_ms[rows] / 1000.0
        idx = np.searchsorted(self.bounds, secs, side="left")
        self.counts += np.bincount(idx, minlength=self.bounds.size + 1)
        self.total_s += float(secs.sum())
        self.phase_s += stats._phase_ms[rows].sum(axis=0) / 1000.0
        self.seen = ticks

    def family(self, labels: Labels) -> Family:
        fam = Family(
            "shardworld_zone_tick_duration_seconds",
            "histogram",
            "Time one tick took (every phase), fed from the zone's rolling window at scrape time.",
        )
        cum = np.cumsum(self.counts)
        return fam.add_histogram(
            labels, self.bounds.tolist(), cum[:-1].tolist(), self.total_s, int(cum[-1])
        )


def zone_collector(zone: Zone, world: str, node: ZoneNode | None = None) -> Collector:
    """Metrics of one zone (and its sharding node, if it has one), labelled world and zone."""
    scan = _TickScan()

    def collect() -> list[Family]:
        st = zone.stats
        scan.update(st)
        lab = {"world": world, "zone": zone.config.name}
        pct = st.percentiles()
        fams: list[Family] = []

        def counter(name: str, help: str, value: float) -> None:
            fams.append(Family(name, "counter", help).add(value, lab))

        def gauge(name: str, help: str, value: float) -> None:
            fams.append(Family(name, "gauge", help).add(value, lab))

        fams.append(scan.family(lab))
        gauge("shardworld_zone_tick_p50_seconds", "Median tick time over the last window.",
              pct["p50_ms"] / 1000.0)  # fmt: skip
        gauge("shardworld_zone_tick_p99_seconds", "99th percentile tick time, last window.",
              pct["p99_ms"] / 1000.0)  # fmt: skip
        gauge("shardworld_zone_tick_max_seconds", "Longest tick in the last window.",
              pct["max_ms"] / 1000.0)  # fmt: skip
        phase_total = Family(
            "shardworld_zone_phase_seconds_total",
            "counter",
            "Time spent in each phase of the tick (rate() gives the busy fraction).",
        )
        phase_mean = Family(
            "shardworld_zone_phase_mean_seconds", "gauge", "Mean time per tick of each phase."
        )
        means = st.phase_means()
        for i, p in enumerate(PHASES):
            phase_total.add(float(scan.phase_s[i]), {**lab, "phase": p})
            phase_mean.add(means[p] / 1000.0, {**lab, "phase": p})
        fams += [phase_total, phase_mean]
        counter("shardworld_zone_ticks_total", "Ticks simulated.", st.ticks)
        counter("shardworld_zone_snapshots_total", "Snapshot batches produced.", st.snapshots)
        counter("shardworld_zone_late_ticks_total", "Ticks that started late.", st.late_ticks)
        counter(
            "shardworld_zone_skipped_ticks_total",
            "Ticks skipped to catch up with the wall clock.",
            st.skipped_ticks,
        )
        gauge(
            "shardworld_zone_max_lateness_seconds",
            "Worst lateness of a tick start since the zone started.",
            st.max_lateness_s,
        )
        gauge("shardworld_zone_tick", "The zone's current tick number.", zone.tick)
        gauge("shardworld_zone_entities", "Entities the zone simulates.", len(zone.entities))
        gauge("shardworld_zone_ghosts", "Ghosts (neighbours' border entities) held.",
              len(zone.ghosts))  # fmt: skip
        gauge("shardworld_zone_observers", "Observers (players) at the last snapshot.",
              st.last_observers)  # fmt: skip
        gauge("shardworld_zone_interest_pairs", "Observer-entity pairs in view, last snapshot.",
              st.last_pairs)  # fmt: skip
        counter("shardworld_zone_sent_bytes_total", "Snapshot payload bytes produced.",
                st.bytes_out)  # fmt: skip
        inputs = Family("shardworld_zone_inputs_total", "counter", "Player inputs by outcome.")
        for outcome, v in (
            ("applied", st.inputs_applied),
            ("dropped", st.inputs_dropped),
            ("unknown", st.inputs_unknown),
            ("out_of_order", st.inputs_out_of_order),
            ("invalid", st.inputs_invalid),
        ):
            inputs.add(v, {**lab, "outcome": outcome})
        fams.append(inputs)
        counter("shardworld_zone_wall_hits_total", "Moves stopped by a wall.", st.wall_hits)
        gauge("shardworld_zone_input_queue_depth", "Inputs waiting for the next tick.",
              zone.inputs.count)  # fmt: skip
        counter("shardworld_zone_messages_dropped_total", "Player messages dropped (queue full).",
                zone.messages_dropped)  # fmt: skip
        players = zone.players
        if players is not None:
            ps = players.stats
            counter("shardworld_zone_player_loads_total", "Player records looked up at join.",
                    ps.loads)  # fmt: skip
            counter("shardworld_zone_player_load_failures_total",
                    "Player record loads that failed (the player joined fresh).",
                    ps.load_failures)  # fmt: skip
            counter("shardworld_zone_player_saves_total", "Player records saved.", ps.saves)
            counter("shardworld_zone_player_save_failures_total",
                    "Player record saves that failed.", ps.save_failures)  # fmt: skip
            counter("shardworld_zone_player_save_rounds_skipped_total",
                    "Periodic save rounds skipped because the last one was still writing.",
                    ps.save_rounds_skipped)  # fmt: skip
            gauge("shardworld_zone_player_saves_queued", "Player records waiting to be written.",
                  ps.queued)  # fmt: skip
        if node is not None:
            fams += _node_families(node, lab)
        return fams

    return collect


_NODE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("handoff_messages_out", "shardworld_zone_handoff_messages_sent_total",
     "Handoff messages sent (one may carry many entities)."),
    ("stale_refused", "shardworld_zone_stale_refused_total",
     "Handed-off entities refused because the sender's cell map was stale (sent back)."),
    ("ghosts_out", "shardworld_zone_ghosts_sent_total", "Ghost entity states sent."),
    ("ghost_bytes_out", "shardworld_zone_ghost_sent_bytes_total", "Ghost bytes sent."),
    ("ghost_messages_out", "shardworld_zone_ghost_messages_sent_total", "Ghost messages sent."),
    ("ghosts_in", "shardworld_zone_ghosts_received_total", "Ghost entity states received."),
    ("ghosts_stale", "shardworld_zone_ghosts_stale_total", "Ghost updates ignored as stale."),
    ("ghosts_expired", "shardworld_zone_ghosts_expired_total",
     "Ghosts dropped because their zone went quiet."),
    ("forwarded", "shardworld_zone_forwarded_total",
     "Inputs and messages forwarded to an entity's new owner."),
    ("undeliverable", "shardworld_zone_undeliverable_total",
     "Messages and snapshot batches that had nowhere to go."),
    ("wire_errors", "shardworld_zone_wire_errors_total", "Bus messages that did not decode."),
    ("bus_errors", "shardworld_zone_bus_errors_total", "Failed bus sends."),
    ("joins", "shardworld_zone_joins_total", "Players joined through the bus."),
    ("maps_applied", "shardworld_zone_maps_applied_total", "Cell maps applied."),
    ("handoffs_held", "shardworld_zone_handoffs_held_total",
     "Entities kept here because their destination was not ready or the bus refused them."),
    ("checkpoints", "shardworld_zone_checkpoints_total", "Checkpoints written to the store."),
    ("checkpoint_bytes", "shardworld_zone_checkpoint_bytes_total", "Checkpoint bytes written."),
    ("adopted", "shardworld_zone_adopted_total", "Entities adopted from a failed zone."),
)  # fmt: skip


def _node_families(node: ZoneNode, lab: dict[str, str]) -> list[Family]:
    ns = node.stats
    fams: list[Family] = []
    hand = Family("shardworld_zone_handoffs_total", "counter", "Entity handoffs by direction.")
    hand.add(ns.handoffs_in, {**lab, "direction": "in"})
    hand.add(ns.handoffs_out, {**lab, "direction": "out"})
    bounce = Family(
        "shardworld_zone_bounces_total",
        "counter",
        "Bounced entities: out = refused and sent back, in = received back.",
    )
    bounce.add(ns.bounced_in, {**lab, "direction": "in"})
    bounce.add(ns.bounced_out, {**lab, "direction": "out"})
    fams += [hand, bounce]
    for attr, name, help in _NODE_COUNTERS:
        fams.append(Family(name, "counter", help).add(getattr(ns, attr), lab))
    if ns.handoff_ticks:
        arr = np.fromiter(ns.handoff_ticks, dtype=np.int64)
        fams.append(
            Family(
                "shardworld_zone_handoff_latency_ticks",
                "gauge",
                "Ticks from a handoff leaving its old owner to being simulated here, by quantile "
                "(last 4096 handoffs).",
            )
            .add(float(np.percentile(arr, 50)), {**lab, "quantile": "0.5"})
            .add(float(np.percentile(arr, 99)), {**lab, "quantile": "0.99"})
        )
    fams.append(
        Family("shardworld_zone_lease_held", "gauge", "1 while the zone holds its lease.").add(
            1.0 if node.lease is not None and not node.fenced else 0.0, lab
        )
    )
    fams.append(
        Family("shardworld_zone_fenced", "gauge", "1 once the zone lost its lease.").add(
            1.0 if node.fenced else 0.0, lab
        )
    )
    fams.append(
        Family("shardworld_zone_map_epoch", "gauge", "Epoch of the cell map the zone uses.").add(
            node.cellmap.epoch, lab
        )
    )
    return fams


_GATEWAY_GAUGES = (
    ("connections", "shardworld_gateway_connections", "Open WebSocket connections."),
    ("joined", "shardworld_gateway_players", "Players joined (in the world) right now."),
    ("lingering", "shardworld_gateway_lingering_players",
     "Disconnected players whose entity waits for a resume."),
)  # fmt: skip

_GATEWAY_COUNTERS = (
    ("connections_total", "shardworld_gateway_connections_total", "Connections accepted."),
    ("rejected", "shardworld_gateway_rejected_total",
     "Connections refused (server full or stopping)."),
    ("joins", "shardworld_gateway_joins_total", "Players joined."),
    ("resumes", "shardworld_gateway_resumes_total", "Sessions resumed."),
    ("leaves", "shardworld_gateway_leaves_total", "Players left."),
    ("frames_sent", "shardworld_gateway_frames_sent_total", "Frames sent (all kinds)."),
    ("bytes_out", "shardworld_gateway_sent_bytes_total", "Bytes written to players."),
    ("inputs", "shardworld_gateway_inputs_total", "Inputs received from players."),
    ("inputs_refused", "shardworld_gateway_inputs_refused_total",
     "Inputs the world's input queue dropped."),
    ("messages_in", "shardworld_gateway_messages_received_total", "Player messages received."),
    ("messages_out", "shardworld_gateway_messages_sent_total", "Messages sent to players."),
    ("messages_undeliverable", "shardworld_gateway_messages_undeliverable_total",
     "Messages for players no longer here."),
    ("internal_errors", "shardworld_gateway_internal_errors_total", "Bugs caught."),
)  # fmt: skip


def gateway_collector(gateway: Gateway, world: str, index: int = 0) -> Collector:
    """Metrics of one gateway, labelled world and gateway (its index)."""

    def collect() -> list[Family]:
        gs = gateway.stats()
        lab = {"world": world, "gateway": str(index)}
        fams: list[Family] = []
        for key, name, help in _GATEWAY_GAUGES:
            fams.append(Family(name, "gauge", help).add(float(gs[key]), lab))
        for key, name, help in _GATEWAY_COUNTERS:
            fams.append(Family(name, "counter", help).add(float(gs[key]), lab))
        snaps = Family(
            "shardworld_gateway_snapshots_total", "counter", "Snapshot frames by outcome."
        )
        for outcome, key in (
            ("sent", "snapshots_sent"),
            ("dropped", "snapshots_dropped"),
            ("skipped", "snapshots_skipped"),
        ):
            snaps.add(float(gs[key]), {**lab, "outcome": outcome})
        fams.append(snaps)
        for key, name, help in (
            ("errors", "shardworld_gateway_errors_total", "ERROR frames sent, by code."),
            ("kicks", "shardworld_gateway_kicks_total", "Players kicked, by code."),
        ):
            fam = Family(name, "counter", help)
            for code, n in dict(gs[key]).items():
                fam.add(float(n), {**lab, "code": str(code)})
            fams.append(fam)
        return fams

    return collect


def coordinator_collector(coord: Coordinator, world: str) -> Collector:
    """Metrics of one coordinator, labelled world and node (its node id)."""

    def collect() -> list[Family]:
        st = coord.status()
        lab = {"world": world, "node": str(st["node"])}
        fams = [
            Family("shardworld_coordinator_leader", "gauge", "1 while this node leads.").add(
                1.0 if st["leader"] else 0.0, lab
            ),
            Family(
                "shardworld_coordinator_lease_token",
                "gauge",
                "Fencing token of the leader lease held (0: none).",
            ).add(float(st["token"] or 0), lab),
            Family(
                "shardworld_coordinator_map_epoch", "gauge", "Epoch of the current cell map."
            ).add(float(st["epoch"]), lab),
            Family(
                "shardworld_coordinator_maps_published_total", "counter", "Cell maps published."
            ).add(float(st["maps_published"]), lab),
            Family(
                "shardworld_coordinator_failovers_total", "counter", "Zone failovers handled."
            ).add(float(st["failovers"]), lab),
        ]
        p99 = Family(
            "shardworld_coordinator_zone_tick_p99_seconds",
            "gauge",
            "Each zone's tick p99 as last reported to the coordinator.",
        )
        ents = Family(
            "shardworld_coordinator_zone_entities",
            "gauge",
            "Each zone's entities as last reported to the coordinator.",
        )
        for name, z in dict(st["zones"]).items():
            p99.add(float(z["p99_ms"]) / 1000.0, {**lab, "zone": str(name)})
            ents.add(float(z["entities"]), {**lab, "zone": str(name)})
        return [*fams, p99, ents]

    return collect


# --- the HTTP endpoint -----------------------------------------------------------------------

MAX_REQUEST_BYTES = 8192
"""Request line and headers together; anything longer is answered 431 and closed."""


class BadRequest(Exception):
    """A request that gets an error answer before it is routed (oversized or malformed)."""

    def __init__(self, status: str, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class LocalHttpServer:
    """What the small HTTP endpoints (/metrics, the live map) share: where they listen and
    how a request line is read.

    Subclasses define ``path`` (shown in :attr:`url`) and ``_handle`` (one connection).
    """

    path = "/"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self.bad_requests = 0

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, str]:
        """The method and path (query dropped) of one request.

        Raises :class:`BadRequest` (431 past ``MAX_REQUEST_BYTES``, 400 for anything that is
        not ``METHOD TARGET HTTP/x``), counted in ``bad_requests``.
        """
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self.bad_requests += 1
            too_large = "431 Request Header Fields Too Large"
            raise BadRequest(too_large, b"request too large\n") from None
        except asyncio.IncompleteReadError as exc:
            # A client that sends a request line and closes (no blank line) is still served.
            head = exc.partial
            if not head.strip():
                raise
        line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self.bad_requests += 1
            raise BadRequest("400 Bad Request", b"bad request\n")
        return parts[0], parts[1].split(b"?", 1)[0].decode("latin-1")

    @property
    def port(self) -> int:
        """The bound port (the one chosen when started with 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=MAX_REQUEST_BYTES
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class MetricsServer(LocalHttpServer):
    """``GET /metrics`` over HTTP/1.x on ``host:port`` (port 0: any free port, see ``port``).

    One request per connection; every other method or path gets 404, malformed or oversized
    requests 400/431, slow clients are dropped after ``timeout_s``.
    """

    def __init__(
        self,
        registry: Registry,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout_s: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        super().__init__(host, port)
        self.registry = registry
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.scrapes = 0
        self._open = 0

    path = "/metrics"

    async def start(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > self.max_connections:
                return
            try:
                status, body, ctype = await asyncio.wait_for(self._respond(reader), self.timeout_s)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                return
            await self._send(writer, status, body, ctype)
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, bytes, str]:
        try:
            method, path = await self._read_request(reader)
        except BadRequest as exc:
            return exc.status, exc.body, "text/plain"
        if method != b"GET" or path != "/metrics":
            return "404 Not Found", b"not found\n", "text/plain"
        self.scrapes += 1
        return "200 OK", self.registry.render().encode("utf-8"), CONTENT_TYPE

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: str, body: bytes, ctype: str) -> None:
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii") + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
