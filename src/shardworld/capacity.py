"""Capacity planning: how many zone and gateway processes, cores and machines a world needs.

A small model in plain arithmetic over coefficients the benchmarks measured (the shipped
``capacity_coefficients.json``, refreshed by ``benchmarks/calibrate.py``). It answers, for a
number of players at a tick rate: how many zones (one core each), gateways, coordinators,
Kafka brokers and partitions, Redis, machines, memory and bandwidth, with the reason for each
figure and the constraint that decides it. ``docs/capacity.md`` gives every formula.

>>> from shardworld.capacity import PlanInputs, load_coefficients, plan
>>> p = plan(PlanInputs(players=100_000), load_coefficients())
>>> p.zones.count, p.gateways.count, p.machines.count  # doctest: +SKIP

``shardworld plan --players 100000 --hz 20`` prints the same as a table (``--json``: as JSON).
The model is deliberately coarse (uniform density, mean zone load, the benchmark's game code):
it sizes a first deployment; the zones' load reports and the coordinator correct it live.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

#: What :func:`load_coefficients` understands (the file's ``format``).
COEFFICIENTS_FORMAT = 1
#: The file shipped in the package.
COEFFICIENTS_FILE = "capacity_coefficients.json"

#: Every coefficient the model uses, with its unit (docs/capacity.md says where each comes from).
REQUIRED_COEFFICIENTS: dict[str, str] = {
    "entity_tick_ms": "ms CPU per simulated entity per tick",
    "observer_tick_ms": "ms CPU per player per snapshot tick",
    "pair_snapshot_ms": "ms CPU per interest-list entry per snapshot",
    "payload_bytes_per_pair": "bytes of snapshot payload per interest-list entry",
    "neighbour_overhead_ms": "ms CPU per zone per neighbour per tick",
    "ghost_bytes_per_ghost": "bus bytes per ghost per tick",
    "ghost_messages_per_neighbour_tick": "bus messages per zone per neighbour per tick",
    "gateway_cpu_s_per_frame": "s CPU per snapshot frame written by a gateway",
    "gateway_bytes_per_connection": "bytes of gateway memory per connected player",
    "broker_messages_per_s": "records per second through one Kafka broker",
    "process_base_rss_bytes": "bytes resident in an idle shardworld process",
    "zone_bytes_per_entity": "bytes of zone memory per entity",
    "zone_bytes_per_observer": "extra bytes of zone memory per player (observer)",
    "checkpoint_bytes_per_entity": "bytes per entity in a zone checkpoint",
}

#: ``[sharding] zones`` accepts 1..4096 (zone/world.py).
MAX_ZONES = 4096
#: A zone's split lines move by whole cells; with fewer cells per zone the coordinator's
#: steps are coarse, so a cell size that leaves fewer is replaced by a smaller suggestion.
MIN_CELLS_PER_ZONE = 16
#: Cell maps above this are not built just to count cells per zone (memory, time).
MAX_CELLS_TO_SPLIT = 4_000_000
#: Bytes a zone sends per player per snapshot on top of the payload: the SNAPSHOTS bus
#: message's id u64, owner u64, ack u32 and offset i64 per observer (sharding/wire.py, kind 20).
WIRE_BYTES_PER_SNAPSHOT = 28
#: An INPUTS bus message per player input: id u64, seq u32, intent 2 x f32, actions u32.
WIRE_BYTES_PER_INPUT = 24
#: Processes of the coordinator: a leader and a standby that takes over within the lease.
COORDINATORS = 2
#: Topics every world has besides its zones' and gateways': heartbeat and control.
WORLD_TOPICS = 2


class PlanError(ValueError):
    """An input the model cannot work with, or a world it cannot serve; the message says
    which setting to change."""


class CoefficientsError(ValueError):
    """The coefficients file is missing, unreadable or incomplete."""


# --------------------------------------------------------------------------- coefficients


@dataclass(frozen=True)
class Coefficients:
    """The measured figures the model multiplies (units in :data:`REQUIRED_COEFFICIENTS`)."""

    entity_tick_ms: float
    observer_tick_ms: float
    pair_snapshot_ms: float
    payload_bytes_per_pair: float
    neighbour_overhead_ms: float
    ghost_bytes_per_ghost: float
    ghost_messages_per_neighbour_tick: float
    gateway_cpu_s_per_frame: float
    gateway_bytes_per_connection: float
    broker_messages_per_s: float
    process_base_rss_bytes: float
    zone_bytes_per_entity: float
    zone_bytes_per_observer: float
    checkpoint_bytes_per_entity: float
    source: str = ""
    """Where they were read from (a path, or the package file)."""
    generated: str = ""
    """When the file was written (ISO 8601)."""
    machine: str = ""
    """The machine they were measured on, in words."""

    @classmethod
    def from_mapping(cls, data: Any, source: str = "") -> Coefficients:
        """Read a coefficients document (the JSON file's content); raises CoefficientsError."""
        if not isinstance(data, dict):
            raise CoefficientsError(f"{source or 'coefficients'}: not a JSON object")
        if data.get("format") != COEFFICIENTS_FORMAT:
            raise CoefficientsError(
                f"{source or 'coefficients'}: format {data.get('format')!r}, "
                f"this shardworld reads format {COEFFICIENTS_FORMAT}"
            )
        table = data.get("coefficients")
        if not isinstance(table, dict):
            raise CoefficientsError(f"{source or 'coefficients'}: no 'coefficients' object")
        values: dict[str, float] = {}
        missing = [k for k in REQUIRED_COEFFICIENTS if k not in table]
        if missing:
            raise CoefficientsError(
                f"{source or 'coefficients'}: missing {', '.join(missing)} "
                "(run benchmarks/calibrate.py to regenerate the file)"
            )
        for name in REQUIRED_COEFFICIENTS:
            entry = table[name]
            value = entry.get("value") if isinstance(entry, dict) else None
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise CoefficientsError(
                    f"{source or 'coefficients'}: {name}.value = {value!r}: must be a number > 0"
                )
            values[name] = float(value)
        machine = data.get("machine")
        described = machine.get("description", "") if isinstance(machine, dict) else ""
        return cls(
            **values,
            source=source,
            generated=str(data.get("generated", "")),
            machine=str(described),
        )


def load_coefficients(path: str | Path | None = None) -> Coefficients:
    """The coefficients in ``path``, or the ones shipped with shardworld."""
    try:
        if path is None:
            text = resources.files("shardworld").joinpath(COEFFICIENTS_FILE).read_text("utf-8")
            source = f"shardworld/{COEFFICIENTS_FILE}"
        else:
            text = Path(path).read_text("utf-8")
            source = str(path)
    except OSError as exc:
        raise CoefficientsError(f"cannot read the coefficients: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CoefficientsError(f"{source}: not valid JSON: {exc}") from exc
    return Coefficients.from_mapping(data, source)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlanInputs:
    """What the world is and what the machines are. Defaults match the benchmarks' world."""

    players: int
    npcs: int | None = None
    """NPCs in the whole world; None: ``npcs_per_player * players``."""
    npcs_per_player: float = 1.0
    tick_hz: float = 20.0
    snapshot_hz: float | None = None
    """None: every tick. Rounded as the zone does: ``tick_hz / round(tick_hz / snapshot_hz)``."""
    world_size: tuple[float, float] | None = None
    """Metres (width, height). None: sized so that a player has ``neighbours`` in range."""
    neighbours: float | None = None
    """Entities within a player's interest radius (uniform density). None: 25 without
    ``world_size``, else computed from the density. Give one of the two, not both."""
    interest_radius: float = 50.0
    interest_hysteresis: float | None = None
    """None: a tenth of the radius (as in the arena and the benchmarks)."""
    k_max: int = 128
    cell_size: float = 100.0
    headroom: float = 0.6
    """Target utilisation of every resource (CPU, memory, network, brokers): 0 < h <= 1."""
    cores_per_machine: int = 16
    reserve_cores: int = 1
    """Cores per machine left to the OS, the network stack and monitoring."""
    memory_per_machine_gib: float = 64.0
    nic_gbps: float = 10.0
    gateway_max_players: int = 10_000
    """Connections one gateway process accepts (GatewayConfig.max_connections)."""
    zones_per_machine: int | None = None
    broker_mb_s: float = 100.0
    """Bytes one Kafka broker takes in per second, in MB (an assumption: not measured here)."""
    broker_records_s: float | None = None
    """Records one broker passes per second; None: the measured ``broker_messages_per_s``."""
    checkpoint_every_s: float = 2.0

    def validate(self) -> None:
        """Raise PlanError naming the first setting out of range."""

        def number(name: str, value: object, low: float, high: float, low_ok: bool) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PlanError(f"{name} = {value!r}: must be a number")
            v = float(value)
            if not math.isfinite(v) or not (v >= low if low_ok else v > low) or v > high:
                side = ">=" if low_ok else ">"
                raise PlanError(f"{name} = {value!r}: must be {side} {low:g} and <= {high:g}")
            return v

        def whole(name: str, value: object, low: int, high: int) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise PlanError(f"{name} = {value!r}: must be a whole number")
            if not low <= value <= high:
                raise PlanError(f"{name} = {value!r}: must be {low}..{high:,}")
            return value

        whole("players", self.players, 1, 10**9)
        if self.npcs is not None:
            whole("npcs", self.npcs, 0, 10**10)
        number("npcs per player", self.npcs_per_player, 0.0, 1e4, True)
        tick = number("tick rate (--hz)", self.tick_hz, 0.0, 1000.0, False)
        if self.snapshot_hz is not None:
            snap = number("snapshot rate", self.snapshot_hz, 0.0, 1000.0, False)
            if snap > tick * (1 + 1e-9):
                raise PlanError(
                    f"snapshot rate {snap:g} Hz is above the tick rate {tick:g} Hz: a zone "
                    "sends at most one snapshot per tick"
                )
        if self.world_size is not None and self.neighbours is not None:
            raise PlanError(
                "give the world size or the entities in view (--neighbours), not both: "
                "with a world size they follow from the density"
            )
        if self.world_size is not None:
            if len(self.world_size) != 2:
                raise PlanError(f"world size {self.world_size!r}: must be (width, height)")
            for part in self.world_size:
                number("world size", part, 0.0, 1e8, False)
        if self.neighbours is not None:
            number("neighbours", self.neighbours, 0.0, 1e7, False)
        number("interest radius", self.interest_radius, 0.0, 1e6, False)
        if self.interest_hysteresis is not None:
            number("interest hysteresis", self.interest_hysteresis, 0.0, 1e6, True)
        whole("k_max", self.k_max, 1, 65_535)
        number("cell size", self.cell_size, 0.0, 1e7, False)
        number("headroom", self.headroom, 0.0, 1.0, False)
        cores = whole("cores per machine", self.cores_per_machine, 1, 100_000)
        whole("reserved cores", self.reserve_cores, 0, 100_000)
        if self.reserve_cores >= cores:
            raise PlanError(
                f"reserved cores ({self.reserve_cores}) must leave at least one of the "
                f"{cores} cores per machine"
            )
        number("memory per machine (GiB)", self.memory_per_machine_gib, 0.0, 1e6, False)
        number("NIC (Gbit/s)", self.nic_gbps, 0.0, 1e5, False)
        whole("gateway max players", self.gateway_max_players, 1, 10**8)
        if self.zones_per_machine is not None:
            whole("zones per machine", self.zones_per_machine, 1, 100_000)
        number("broker MB/s", self.broker_mb_s, 0.0, 1e6, False)
        if self.broker_records_s is not None:
            number("broker records/s", self.broker_records_s, 0.0, 1e9, False)
        number("checkpoint interval", self.checkpoint_every_s, 0.0, 1e6, False)


# --------------------------------------------------------------------------- the plan


@dataclass
class Line:
    """One kind of process or resource in the plan."""

    count: int
    each: str
    why: str
    binding: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """The answer of :func:`plan`; :meth:`to_dict` for JSON, :func:`format_table` for people."""

    inputs: PlanInputs
    derived: dict[str, Any]
    zones: Line
    gateways: Line
    coordinators: Line
    kafka: Line
    redis: Line
    machines: Line
    bandwidth: dict[str, Any]
    memory: dict[str, Any]
    sharding: dict[str, Any]
    binding: str
    zone_processes: list[dict[str, Any]]
    gateway_processes: list[dict[str, Any]]
    coordinator_processes: list[dict[str, Any]]
    placement: list[dict[str, Any]]
    warnings: list[str]
    coefficients: Coefficients

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``shardworld plan --json`` prints)."""

        def line(x: Line) -> dict[str, Any]:
            return asdict(x)

        co = self.coefficients
        return {
            "inputs": asdict(self.inputs),
            "derived": self.derived,
            "zones": {**line(self.zones), "processes": self.zone_processes},
            "gateways": {**line(self.gateways), "processes": self.gateway_processes},
            "coordinators": {**line(self.coordinators), "processes": self.coordinator_processes},
            "kafka": line(self.kafka),
            "redis": line(self.redis),
            "machines": {**line(self.machines), "placement": self.placement},
            "bandwidth": self.bandwidth,
            "memory": self.memory,
            "sharding": self.sharding,
            "binding": self.binding,
            "warnings": self.warnings,
            "coefficients": {
                "source": co.source,
                "generated": co.generated,
                "machine": co.machine,
                "values": {k: getattr(co, k) for k in REQUIRED_COEFFICIENTS},
            },
        }


def snapshot_rate(tick_hz: float, snapshot_hz: float | None) -> float:
    """The rate a zone really sends snapshots at: every ``round(tick/snapshot)``-th tick."""
    if snapshot_hz is None:
        return tick_hz
    return tick_hz / max(1, round(tick_hz / snapshot_hz))


def neighbour_count(zones: int) -> float:
    """Mean neighbours (diagonals included) of a zone when ``zones`` split a world.

    For a sqrt(n) x sqrt(n) grid the mean is ``8 - 12/sqrt(n) + 4/n`` (8 inside, 5 on an
    edge, 3 in a corner), used for any n as a smooth estimate, and never more than n - 1.
    """
    if zones <= 1:
        return 0.0
    a = math.sqrt(zones)
    return min(zones - 1.0, 8.0 - 12.0 / a + 4.0 / zones)


def ghosts_per_zone(
    zones: int, width: float, height: float, reach: float, entities: float
) -> float:
    """Mean ghosts a zone holds: the entities within ``reach`` of its borders with others.

    The zones are taken as a ``cx x cy`` grid shaped like the world (``cx / cy = width /
    height``); each inner split line of length L has a band ``reach`` wide on both sides, so
    the world's ghosts are ``density * 2 * reach * (sum of inner line lengths)``.
    """
    if zones <= 1:
        return 0.0
    cx = math.sqrt(zones * width / height)
    cy = zones / cx
    if cx < 1.0:
        cx, cy = 1.0, float(zones)
    elif cy < 1.0:
        cx, cy = float(zones), 1.0
    band = 2.0 * reach * ((cx - 1.0) * height + (cy - 1.0) * width)
    density = entities / (width * height)
    return min(density * band / zones, entities * (zones - 1) / zones)


def zone_tick_ms(
    zones: int,
    entities: float,
    players: float,
    list_length: float,
    ghosts: float,
    co: Coefficients,
) -> dict[str, float]:
    """CPU milliseconds of one zone's snapshot tick (the costliest kind), by part."""
    parts = {
        "entities": co.entity_tick_ms * (entities / zones),
        "ghosts": co.entity_tick_ms * ghosts,
        "players": co.observer_tick_ms * (players / zones),
        "interest": co.pair_snapshot_ms * (players / zones) * list_length,
        "neighbours": co.neighbour_overhead_ms * neighbour_count(zones),
    }
    parts["total"] = sum(parts.values())
    return parts


def _nice_floor(x: float) -> float:
    """The largest of 1, 2, 2.5, 5 x 10^k not above ``x``."""
    k = math.floor(math.log10(x))
    best = 10.0**k
    for m in (2.0, 2.5, 5.0, 10.0):
        if m * 10.0**k <= x * (1 + 1e-12):
            best = m * 10.0**k
    return best


def _cells(width: float, height: float, cell: float) -> tuple[int, int]:
    def along(extent: float) -> int:
        q = extent / cell
        r = round(q)
        return max(1, r if abs(q - r) <= 1e-9 * max(1.0, q) else math.ceil(q))

    return along(width), along(height)


def _zone_cells(width: float, height: float, cell: float, zones: int) -> list[int] | None:
    """Cells per zone of the starting k-d split the world would use (None when too big)."""
    cols, rows = _cells(width, height, cell)
    if cols * rows > MAX_CELLS_TO_SPLIT or zones > cols * rows:
        return None
    import numpy as np

    from shardworld.sharding.cellmap import CellMap

    names = [f"z{i}" for i in range(zones)]
    cm = CellMap.split((0.0, 0.0, width, height), cell, names)
    return [int(c) for c in np.bincount(cm.owner.ravel(), minlength=zones)]


def _frame_overhead(payload: int) -> int:
    """Bytes a gateway adds to a payload: the SNAPSHOT message head and the WebSocket header."""
    from shardworld.protocol.messages import snapshot_prefix

    message = len(snapshot_prefix(0, 0, payload)) + payload
    ws = 2 if message < 126 else 4 if message < 65_536 else 10
    return message - payload + ws


def _gib(b: float) -> str:
    if b >= 2**30:
        return f"{b / 2**30:.1f} GiB"
    if b >= 2**20:
        return f"{b / 2**20:.0f} MiB"
    return f"{b / 2**10:.0f} KiB"


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _rate(bits_per_s: float) -> str:
    if bits_per_s >= 1e9:
        return f"{bits_per_s / 1e9:.2f} Gbit/s"
    if bits_per_s >= 1e6:
        return f"{bits_per_s / 1e6:.1f} Mbit/s"
    return f"{bits_per_s / 1e3:.1f} kbit/s"


def plan(inp: PlanInputs, co: Coefficients) -> Plan:
    """Size a world. Raises PlanError for inputs out of range or a world that cannot fit."""
    inp.validate()
    h = inp.headroom
    players = inp.players
    npcs = inp.npcs if inp.npcs is not None else round(inp.npcs_per_player * players)
    entities = players + npcs
    radius = inp.interest_radius
    reach = radius + (
        inp.interest_hysteresis if inp.interest_hysteresis is not None else radius / 10.0
    )
    disc = math.pi * radius * radius
    if inp.world_size is not None:
        width, height = (float(v) for v in inp.world_size)
        neighbours = entities / (width * height) * disc
        world_from = "given"
    else:
        neighbours = inp.neighbours if inp.neighbours is not None else 25.0
        width = height = math.sqrt(entities * disc / neighbours)
        world_from = f"sized for {neighbours:g} entities within {radius:g} m of a player"
    # The zone counts interest pairs with each player's own entry, as the benchmark does.
    list_length = min(float(inp.k_max), neighbours + 1.0)
    snap_hz = snapshot_rate(inp.tick_hz, inp.snapshot_hz)
    budget = h * 1000.0 / inp.tick_hz
    warnings: list[str] = []
    if inp.snapshot_hz is not None and abs(snap_hz - inp.snapshot_hz) > 1e-9:
        warnings.append(
            f"snapshots at {inp.snapshot_hz:g} Hz become {snap_hz:g} Hz (every "
            f"{round(inp.tick_hz / snap_hz)} ticks at {inp.tick_hz:g} Hz)"
        )
    if neighbours + 1.0 > inp.k_max:
        warnings.append(
            f"{neighbours:.0f} entities in range but k_max {inp.k_max}: snapshots carry the "
            f"{inp.k_max} nearest"
        )

    # --- zones: the fewest whose snapshot tick fits the budget --------------------------
    def cost(n: int) -> dict[str, float]:
        g = ghosts_per_zone(n, width, height, reach, entities)
        return zone_tick_ms(n, entities, players, list_length, g, co)

    zones = 0
    for n in range(1, MAX_ZONES + 1):
        if cost(n)["total"] <= budget:
            zones = n
            break
    if zones == 0:
        worst = cost(MAX_ZONES)
        raise PlanError(
            f"even {MAX_ZONES} zones (the most a world has) would tick in "
            f"{worst['total']:.1f} ms against a budget of {budget:.1f} ms "
            f"({h:.0%} of {1000.0 / inp.tick_hz:.1f} ms at {inp.tick_hz:g} Hz); "
            "lower --hz, the players or the entities in view, or raise --headroom"
        )
    tick = cost(zones)
    ghosts = ghosts_per_zone(zones, width, height, reach, entities)
    nb = neighbour_count(zones)
    if zones == 1:
        zone_binding = "one zone is enough"
        fewer = ""
    else:
        zone_binding = "zone tick CPU"
        fewer = f"; {zones - 1} zones would need {cost(zones - 1)['total']:.1f} ms"
    zone_mem = (
        co.process_base_rss_bytes
        + (entities / zones + ghosts) * co.zone_bytes_per_entity
        + players / zones * co.zone_bytes_per_observer
    )
    zone_why = (
        f"a snapshot tick costs {tick['total']:.1f} ms of CPU per zone, budget "
        f"{budget:.1f} ms ({h:.0%} of {1000.0 / inp.tick_hz:.1f} ms): "
        f"{entities / zones:,.0f} entities {tick['entities']:.1f} + "
        f"{players / zones:,.0f} players {tick['players']:.1f} + "
        f"{players / zones * list_length:,.0f} interest entries {tick['interest']:.1f} + "
        f"{ghosts:,.0f} ghosts {tick['ghosts']:.1f} + "
        f"{nb:.1f} neighbours {tick['neighbours']:.1f} ms{fewer}"
    )

    # --- the cell grid and the suggested [sharding] --------------------------------------
    cols, rows = _cells(width, height, inp.cell_size)
    cell = inp.cell_size
    # One zone never moves split lines, so its cell size does not matter.
    if zones > 1 and cols * rows < MIN_CELLS_PER_ZONE * zones:
        cell = _nice_floor(math.sqrt(width * height / (MIN_CELLS_PER_ZONE * zones)))
        cols, rows = _cells(width, height, cell)
        warnings.append(
            f"cell size {inp.cell_size:g} m leaves fewer than {MIN_CELLS_PER_ZONE} cells per "
            f"zone; suggesting {cell:g} m"
        )
    if cell < reach / 8.0:
        warnings.append(
            f"cells of {cell:g} m are small against the ghost reach of {reach:g} m: cell maps "
            "and ghost masks grow; consider fewer, larger zones or a smaller world"
        )
    zone_cells = _zone_cells(width, height, cell, zones)
    zone_processes = [
        {
            "name": f"z{i}",
            "cells": zone_cells[i] if zone_cells is not None else None,
            "entities": round(entities / zones),
            "players": round(players / zones),
        }
        for i in range(zones)
    ]
    if zone_cells is None:
        warnings.append(
            f"{cols * rows:,} cells: cell counts per zone not computed (about "
            f"{cols * rows / zones:,.0f} each)"
        )
    sharding = {
        "zones": zones,
        "cell_size": cell,
        "grid": [cols, rows],
        "world": [0.0, 0.0, round(width, 1), round(height, 1)],
        "toml": f"[sharding]\nzones = {zones}\ncell_size = {cell:g}",
    }

    # --- gateways ---------------------------------------------------------------------------
    payload = co.payload_bytes_per_pair * list_length
    frame = payload + _frame_overhead(round(payload))
    # The epsilon keeps a quotient that is whole on paper (0.24 / 0.0002) from flooring below.
    by_cpu = math.floor(h / (snap_hz * co.gateway_cpu_s_per_frame) + 1e-9)
    if by_cpu < 1:
        raise PlanError(
            f"one player at {snap_hz:g} snapshots/s needs more than {h:.0%} of a gateway's "
            "core; lower the snapshot rate or raise --headroom"
        )
    per_gw = min(by_cpu, inp.gateway_max_players)
    gateways = math.ceil(players / per_gw)
    gw_players = players / gateways
    if by_cpu <= inp.gateway_max_players:
        gw_binding = "gateway CPU"
        gw_limit = (
            f"{by_cpu:,} players fit in {h:.0%} of a core at {snap_hz:g} snapshots/s "
            f"({1.0 / co.gateway_cpu_s_per_frame:,.0f} frames per CPU-second)"
        )
    else:
        gw_binding = "gateway connection limit"
        gw_limit = (
            f"{inp.gateway_max_players:,} connections per gateway (--gateway-max-players); "
            f"its CPU would allow {by_cpu:,}"
        )
    gw_mem = co.process_base_rss_bytes + gw_players * co.gateway_bytes_per_connection
    gw_out_bps = gw_players * snap_hz * frame * 8.0
    gw_cpu = gw_players * snap_hz * co.gateway_cpu_s_per_frame
    gateway_processes = [
        {"name": f"gw{i}", "index": i, "players": len(range(i, players, gateways))}
        for i in range(gateways)
    ]

    # --- the bus: Kafka ------------------------------------------------------------------
    per_zone_players = players / zones
    batches = min(float(gateways), per_zone_players)  # gateways with players in a zone
    msgs = zones * (
        inp.tick_hz * nb * co.ghost_messages_per_neighbour_tick  # ghosts to neighbours
        + snap_hz * batches  # a snapshot batch per gateway
        + inp.tick_hz * batches  # inputs from each gateway, about once a tick
        + 1.0  # a heartbeat a second
    )
    bus_bytes = (
        players * snap_hz * (payload + WIRE_BYTES_PER_SNAPSHOT)
        + inp.tick_hz * zones * ghosts * co.ghost_bytes_per_ghost
        + players * inp.tick_hz * WIRE_BYTES_PER_INPUT
    )
    partitions = 2 * zones + gateways + WORLD_TOPICS
    records_s = (
        inp.broker_records_s if inp.broker_records_s is not None else co.broker_messages_per_s
    )
    records_from = "given" if inp.broker_records_s is not None else "measured"
    by_msgs = math.ceil(msgs / (h * records_s))
    by_bytes = math.ceil(bus_bytes / (h * inp.broker_mb_s * 1e6))
    brokers = max(1, by_msgs, by_bytes)
    if brokers == 1 and by_msgs <= 1 and by_bytes <= 1:
        kafka_binding = "one broker is enough"
    elif by_bytes >= by_msgs:
        kafka_binding = "broker bytes (assumed --broker-mb-s)"
    else:
        kafka_binding = "broker records per second"
    kafka_why = (
        f"{msgs:,.0f} records/s ({_n(by_msgs, 'broker')} at {h:.0%} of "
        f"{records_s:,.0f}/s {records_from}) and {bus_bytes / 1e6:,.1f} MB/s "
        f"({_n(by_bytes, 'broker')} at {h:.0%} of an assumed {inp.broker_mb_s:g} MB/s); "
        f"{partitions} partitions: 2 per zone, 1 per gateway, {WORLD_TOPICS} per world"
    )

    # --- Redis ------------------------------------------------------------------------------
    ckpt = entities * co.checkpoint_bytes_per_entity
    # A checkpoint is replaced whole: for a moment the old and the new are both held.
    redis_mem = 2.0 * ckpt + 64 * 2**20
    redis_why = (
        f"checkpoints of {entities:,} entities ({_gib(ckpt)}) every "
        f"{inp.checkpoint_every_s:g} s ({ckpt / inp.checkpoint_every_s / 1e6:.1f} MB/s), "
        "leases, the cell map and its audit log; a replica for failover"
    )

    # --- machines -----------------------------------------------------------------------
    usable = inp.cores_per_machine - inp.reserve_cores
    mem_cap = h * inp.memory_per_machine_gib * 2**30
    nic_cap = h * inp.nic_gbps * 1e9
    co_mem = co.process_base_rss_bytes
    procs: list[tuple[str, str, float, float]] = [
        (f"co{i}", "coordinator", co_mem, 0.0) for i in range(COORDINATORS)
    ]
    procs += [(f"gw{i}", "gateway", gw_mem, gw_out_bps) for i in range(gateways)]
    procs += [(f"z{i}", "zone", zone_mem, 0.0) for i in range(zones)]
    if zone_mem > mem_cap or gw_mem > mem_cap:
        raise PlanError(
            f"one process needs {_gib(max(zone_mem, gw_mem))}, more than {h:.0%} of a "
            f"machine's {inp.memory_per_machine_gib:g} GiB; use more zones or bigger machines"
        )
    if gw_out_bps > nic_cap:
        raise PlanError(
            f"one gateway sends {_rate(gw_out_bps)}, more than {h:.0%} of a "
            f"{inp.nic_gbps:g} Gbit/s NIC; lower --gateway-max-players"
        )
    total_mem = sum(p[2] for p in procs)
    total_out = gateways * gw_out_bps
    bounds = {
        "cores": math.ceil(len(procs) / usable),
        "memory": math.ceil(total_mem / mem_cap),
        "network": math.ceil(total_out / nic_cap),
    }
    if inp.zones_per_machine is not None:
        bounds["zones per machine"] = math.ceil(zones / inp.zones_per_machine)
    machines = max(1, *bounds.values())
    machine_binding = max(bounds, key=lambda k: bounds[k])
    placement = _place(procs, machines, usable, mem_cap, nic_cap, inp.zones_per_machine)
    while placement is None:  # whole processes did not pack: one machine more
        machines += 1
        machine_binding = "placement of whole processes"
        placement = _place(procs, machines, usable, mem_cap, nic_cap, inp.zones_per_machine)
    cores_used = len(procs)
    machine_why = (
        f"{cores_used} single-core processes ({_n(zones, 'zone')}, "
        f"{_n(gateways, 'gateway')}, {_n(COORDINATORS, 'coordinator')}) on "
        f"{usable} usable cores each "
        f"(needs {bounds['cores']}); memory {_gib(total_mem)} at {h:.0%} of "
        f"{inp.memory_per_machine_gib:g} GiB (needs {bounds['memory']}); "
        f"{_rate(total_out)} to players at {h:.0%} of {inp.nic_gbps:g} Gbit/s "
        f"(needs {bounds['network']})"
    )

    if machine_binding == "cores":
        zone_share = zones / cores_used
        kind, kind_binding = (
            ("zones", zone_binding) if zone_share >= 0.5 else ("gateways", gw_binding)
        )
        binding = (
            f"machines are bound by cores; most cores go to {kind} "
            f"({zones if kind == 'zones' else gateways} of {cores_used}), "
            f"which are bound by {kind_binding}"
        )
    else:
        binding = f"machines are bound by {machine_binding}"

    derived = {
        "npcs": npcs,
        "entities": entities,
        "world_m": [round(width, 1), round(height, 1)],
        "world_from": world_from,
        "density_per_km2": round(entities / (width * height) * 1e6, 1),
        "neighbours": round(neighbours, 2),
        "interest_list": round(list_length, 2),
        "ghost_reach_m": reach,
        "snapshot_hz": snap_hz,
        "tick_budget_ms": round(budget, 3),
        "payload_bytes": round(payload, 1),
        "frame_bytes": round(frame, 1),
    }
    return Plan(
        inputs=inp,
        derived=derived,
        zones=Line(
            zones,
            f"1 core, {_gib(zone_mem)}",
            zone_why,
            zone_binding,
            {
                "cores_each": 1,
                "tick_ms": {k: round(v, 3) for k, v in tick.items()},
                "budget_ms": round(budget, 3),
                "entities_each": round(entities / zones, 1),
                "players_each": round(players / zones, 1),
                "ghosts_each": round(ghosts, 1),
                "neighbours_each": round(nb, 2),
                "memory_bytes_each": round(zone_mem),
            },
        ),
        gateways=Line(
            gateways,
            f"1 core, {gw_players:,.0f} players, {_gib(gw_mem)}",
            f"{players:,} players; {gw_limit}",
            gw_binding,
            {
                "cores_each": 1,
                "players_each": round(gw_players, 1),
                "players_limit": per_gw,
                "cpu_each": round(gw_cpu, 4),
                "memory_bytes_each": round(gw_mem),
                "out_bits_per_s_each": round(gw_out_bps),
            },
        ),
        coordinators=Line(
            COORDINATORS,
            "leader + standby",
            "one leads (a lease in the store) and moves cells; the other takes over when it "
            "dies; both are mostly idle",
            "availability",
            {"memory_bytes_each": round(co_mem)},
        ),
        kafka=Line(
            brokers,
            f"{partitions} partitions",
            kafka_why,
            kafka_binding,
            {
                "brokers": brokers,
                "partitions": partitions,
                "topics": partitions,
                "records_per_s": round(msgs),
                "bytes_per_s": round(bus_bytes),
                "brokers_by_records": by_msgs,
                "brokers_by_bytes": by_bytes,
            },
        ),
        redis=Line(
            2,
            f"primary + replica, {_gib(redis_mem)}",
            redis_why,
            "availability",
            {
                "memory_bytes": round(redis_mem),
                "checkpoint_bytes": round(ckpt),
                "write_bytes_per_s": round(ckpt / inp.checkpoint_every_s),
            },
        ),
        machines=Line(
            machines,
            f"{inp.cores_per_machine} cores, {inp.memory_per_machine_gib:g} GiB, "
            f"{inp.nic_gbps:g} Gbit/s",
            machine_why,
            machine_binding,
            {"bounds": bounds, "usable_cores": usable, "processes": cores_used},
        ),
        bandwidth={
            "players_out_bits_per_s": round(total_out),
            "per_player_bits_per_s": round(snap_hz * frame * 8.0),
            "per_gateway_bits_per_s": round(gw_out_bps),
            "bus_bytes_per_s": round(bus_bytes),
            "checkpoint_bytes_per_s": round(ckpt / inp.checkpoint_every_s),
        },
        memory={
            "zones_bytes": round(zones * zone_mem),
            "gateways_bytes": round(gateways * gw_mem),
            "coordinators_bytes": round(COORDINATORS * co_mem),
            "redis_bytes": round(redis_mem),
            "total_bytes": round(total_mem + redis_mem),
        },
        sharding=sharding,
        binding=binding,
        zone_processes=zone_processes,
        gateway_processes=gateway_processes,
        coordinator_processes=[
            {"name": "co0", "role": "leader"},
            {"name": "co1", "role": "standby"},
        ],
        placement=placement,
        warnings=warnings,
        coefficients=co,
    )


def _place(
    procs: list[tuple[str, str, float, float]],
    machines: int,
    cores: int,
    mem_cap: float,
    nic_cap: float,
    zones_per_machine: int | None,
) -> list[dict[str, Any]] | None:
    """Each process on the machine with the most free cores that can take it (coordinators
    first, so they land on different machines; then gateways, spread for the network);
    None if some process fits nowhere."""
    free = [cores] * machines
    mem = [0.0] * machines
    out = [0.0] * machines
    nzones = [0] * machines
    names: list[list[str]] = [[] for _ in range(machines)]
    for name, kind, m, o in procs:
        best = -1
        for i in range(machines):
            if free[i] < 1 or mem[i] + m > mem_cap or out[i] + o > nic_cap:
                continue
            if kind == "zone" and zones_per_machine is not None and nzones[i] >= zones_per_machine:
                continue
            if best < 0 or free[i] > free[best]:
                best = i
        if best < 0:
            return None
        free[best] -= 1
        mem[best] += m
        out[best] += o
        nzones[best] += kind == "zone"
        names[best].append(name)
    return [
        {
            "name": f"m{i}",
            "processes": names[i],
            "cores_used": cores - free[i],
            "memory_bytes": round(mem[i]),
            "out_bits_per_s": round(out[i]),
        }
        for i in range(machines)
    ]


# --------------------------------------------------------------------------- output


def _names(items: Sequence[str]) -> str:
    if len(items) <= 8:
        return " ".join(items)
    return f"{items[0]} {items[1]} {items[2]} ... {items[-1]}"


def _machine_line(names: Sequence[str]) -> str:
    """``co0 | 8 gateways: gw0 gw3 ... | 3 zones: z0 z3 z6``."""
    groups: dict[str, list[str]] = {"co": [], "gw": [], "z": []}
    for n in names:
        groups["gw" if n.startswith("gw") else "co" if n.startswith("co") else "z"].append(n)
    parts = []
    if groups["co"]:
        parts.append(" ".join(groups["co"]))
    for key, word in (("gw", "gateway"), ("z", "zone")):
        items = groups[key]
        if items:
            parts.append(f"{len(items)} {word}{'s' if len(items) > 1 else ''}: {_names(items)}")
    return " | ".join(parts)


def format_table(p: Plan, width: int = 100) -> str:
    """The plan as a readable table (what ``shardworld plan`` prints), reasons below it
    wrapped to ``width`` columns."""
    inp, d = p.inputs, p.derived
    w, h = d["world_m"]
    co = p.coefficients
    out = [
        f"shardworld plan: {inp.players:,} players, {d['npcs']:,} NPCs, {inp.tick_hz:g} Hz "
        f"(snapshots {d['snapshot_hz']:g} Hz)",
        f"world {w / 1000:.2f} x {h / 1000:.2f} km ({d['world_from']}); "
        f"{d['neighbours']:g} entities in view, interest list {d['interest_list']:g}, "
        f"payload ~{d['payload_bytes']:.0f} B",
        f"target utilisation {inp.headroom:.0%}; coefficients {co.source}"
        + (f", measured {co.generated[:10]}" if co.generated else "")
        + (f" on {co.machine}" if co.machine else ""),
        "",
    ]
    lines = [
        ("zone processes", p.zones),
        ("gateways", p.gateways),
        ("coordinators", p.coordinators),
        ("kafka brokers", p.kafka),
        ("redis", p.redis),
        ("machines", p.machines),
    ]
    rows = [(name, str(x.count), x.each, x.binding) for name, x in lines]
    rows.append(
        (
            "bandwidth out",
            "",
            _rate(p.bandwidth["players_out_bits_per_s"]) + " to players",
            f"bus {p.bandwidth['bus_bytes_per_s'] / 1e6:,.1f} MB/s",
        )
    )
    rows.append(("memory", "", _gib(p.memory["total_bytes"]), "all processes and Redis"))
    c1 = max(len(r[0]) for r in rows)
    c3 = max(len(r[2]) for r in rows)
    out.append(f"{'what':<{c1}}  {'count':>5}  {'each':<{c3}}  binding")
    out.extend(f"{a:<{c1}}  {b:>5}  {c:<{c3}}  {e}" for a, b, c, e in rows)
    out.append("")
    out.extend(textwrap.wrap(f"binding constraint: {p.binding}", width))
    out.append("")
    out.append("why:")
    reasons = [(name, x.why) for name, x in lines]
    reasons.append(
        (
            "bandwidth out",
            f"{_rate(p.bandwidth['per_player_bits_per_s'])} per player "
            f"({d['frame_bytes']:.0f}-byte frames at {d['snapshot_hz']:g} Hz); zones to "
            f"gateways, ghosts and inputs over the bus "
            f"{p.bandwidth['bus_bytes_per_s'] / 1e6:,.1f} MB/s; checkpoints to Redis "
            f"{p.bandwidth['checkpoint_bytes_per_s'] / 1e6:,.1f} MB/s",
        )
    )
    reasons.append(
        (
            "memory",
            f"zones {_gib(p.memory['zones_bytes'])}, gateways "
            f"{_gib(p.memory['gateways_bytes'])}, coordinators "
            f"{_gib(p.memory['coordinators_bytes'])}, Redis {_gib(p.memory['redis_bytes'])}",
        )
    )
    indent = " " * (c1 + 4)
    for name, why in reasons:
        out.extend(
            textwrap.wrap(
                why,
                width,
                initial_indent=f"  {name:<{c1}}  ",
                subsequent_indent=indent,
            )
        )
    out.append("")
    out.append("processes:")
    cells = [z["cells"] for z in p.zone_processes if z["cells"] is not None]
    if len(p.zone_processes) <= 8:
        tokens = [
            f"{z['name']} ({z['cells']:,} cells)" if z["cells"] is not None else z["name"]
            for z in p.zone_processes
        ]
    else:
        tokens = [
            f"z0 .. z{p.zones.count - 1}"
            + (f" ({min(cells):,} to {max(cells):,} cells each)" if cells else "")
        ]
    # Wrapped between zones, never inside one's "(N cells)".
    line = "  zones        "
    for t in tokens:
        if len(line) + 1 + len(t) > width and line.strip() != "zones":
            out.append(line)
            line = " " * 15
        line += " " + t
    out.append(line)
    out.append(
        f"  gateways      {_names([g['name'] for g in p.gateway_processes])} "
        f"(shardworld gateway --index 0..{p.gateways.count - 1})"
    )
    out.append("  coordinators  co0 (leader) co1 (standby)")
    shown = p.placement if len(p.placement) <= 12 else [*p.placement[:10], p.placement[-1]]
    for i, m in enumerate(shown):
        if len(shown) < len(p.placement) and i == len(shown) - 1:
            out.append(f"  {'...':<12}  ({len(p.placement) - 11} more machines like these)")
        out.append(f"  {m['name']:<12}  {_machine_line(m['processes'])}")
    out.append("")
    out.append("suggested world.toml:")
    out.extend(f"  {line}" for line in p.sharding["toml"].splitlines())
    for note in p.warnings:
        out.extend(textwrap.wrap(f"note: {note}", width, subsequent_indent="      "))
    return "\n".join(out)


# --------------------------------------------------------------------------- the command

EXAMPLES = """\
examples:
  shardworld plan --players 100000 --hz 20
  shardworld plan --players 100000 --hz 20 --npcs-per-player 3 --neighbours 40
  shardworld plan --players 20000 --world-size 4000x4000 --interest-radius 60 --json
  shardworld plan --players 50000 --hz 30 --snapshot-hz 15 --cores-per-machine 32

The model and where each coefficient comes from: docs/capacity.md. Refresh the
coefficients on your own hardware with benchmarks/calibrate.py.
"""


def _world_size(text: str) -> tuple[float, float]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give metres as W or WxH, e.g. 8000 or 8000x6000"
        ) from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"{text!r}: give metres as W or WxH")


def plan_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardworld plan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Size a world: how many zone processes (one core each), gateways, coordinators,\n"
            "Kafka brokers and partitions, Redis and machines it needs, with memory and\n"
            "bandwidth, the reason for each figure and the binding constraint. The figures\n"
            "come from coefficients the benchmarks measured (a JSON file shipped with\n"
            "shardworld, or --coefficients FILE)."
        ),
        epilog=EXAMPLES,
    )
    w = p.add_argument_group("the world")
    w.add_argument("--players", type=int, required=True, metavar="N", help="players online at once")
    npc = w.add_mutually_exclusive_group()
    npc.add_argument("--npcs", type=int, metavar="N", help="NPCs in the whole world")
    npc.add_argument("--npcs-per-player", type=float, default=1.0, metavar="X", help="(default 1)")
    w.add_argument("--hz", type=float, default=20.0, metavar="HZ", help="tick rate (default 20)")
    w.add_argument(
        "--snapshot-hz", type=float, metavar="HZ", help="snapshot rate (default: the tick rate)"
    )
    where = w.add_mutually_exclusive_group()
    where.add_argument(
        "--world-size", type=_world_size, metavar="W[xH]", help="world size in metres"
    )
    where.add_argument(
        "--neighbours",
        type=float,
        metavar="N",
        help="entities within a player's interest radius (default 25; the world is sized for it)",
    )
    w.add_argument(
        "--interest-radius", type=float, default=50.0, metavar="M", help="metres (default 50)"
    )
    w.add_argument("--hysteresis", type=float, metavar="M", help="metres (default: radius / 10)")
    w.add_argument(
        "--k-max", type=int, default=128, metavar="N", help="entities per snapshot (default 128)"
    )
    w.add_argument(
        "--cell-size", type=float, default=100.0, metavar="M", help="metres (default 100)"
    )
    m = p.add_argument_group("the machines")
    m.add_argument(
        "--headroom",
        type=float,
        default=0.6,
        metavar="F",
        help="target utilisation of CPU, memory, network and brokers (default 0.6)",
    )
    m.add_argument("--cores-per-machine", type=int, default=16, metavar="N", help="default 16")
    m.add_argument(
        "--reserve-cores",
        type=int,
        default=1,
        metavar="N",
        help="cores per machine left to the OS (default 1)",
    )
    m.add_argument(
        "--memory-per-machine", type=float, default=64.0, metavar="GIB", help="GiB (default 64)"
    )
    m.add_argument(
        "--nic-gbps", type=float, default=10.0, metavar="GBPS", help="Gbit/s (default 10)"
    )
    m.add_argument(
        "--gateway-max-players",
        type=int,
        default=10_000,
        metavar="N",
        help="connections per gateway (default 10000, GatewayConfig.max_connections)",
    )
    m.add_argument(
        "--zones-per-machine", type=int, metavar="N", help="at most this many zones per machine"
    )
    m.add_argument(
        "--broker-mb-s",
        type=float,
        default=100.0,
        metavar="MB",
        help="MB/s one Kafka broker takes in (assumed; default 100)",
    )
    m.add_argument(
        "--broker-records-s",
        type=float,
        metavar="N",
        help="records/s one Kafka broker passes (default: the measured coefficient)",
    )
    m.add_argument(
        "--checkpoint-every",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between zone checkpoints (default 2)",
    )
    p.add_argument("--coefficients", metavar="FILE", help="coefficients JSON (default: shipped)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def plan_main(argv: Sequence[str] | None = None) -> int:
    """``shardworld plan``: returns the exit status (2 for bad inputs)."""
    args = plan_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    inputs = PlanInputs(
        players=args.players,
        npcs=args.npcs,
        npcs_per_player=args.npcs_per_player,
        tick_hz=args.hz,
        snapshot_hz=args.snapshot_hz,
        world_size=args.world_size,
        neighbours=args.neighbours,
        interest_radius=args.interest_radius,
        interest_hysteresis=args.hysteresis,
        k_max=args.k_max,
        cell_size=args.cell_size,
        headroom=args.headroom,
        cores_per_machine=args.cores_per_machine,
        reserve_cores=args.reserve_cores,
        memory_per_machine_gib=args.memory_per_machine,
        nic_gbps=args.nic_gbps,
        gateway_max_players=args.gateway_max_players,
        zones_per_machine=args.zones_per_machine,
        broker_mb_s=args.broker_mb_s,
        broker_records_s=args.broker_records_s,
        checkpoint_every_s=args.checkpoint_every,
    )
    try:
        result = plan(inputs, load_coefficients(args.coefficients))
    except (PlanError, CoefficientsError) as exc:
        print(f"shardworld plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result))
    return 0
