"""The live world map: what a coordinator knows about its world, as JSON and as a web page.

A :class:`MapView` is fed by the coordinator once per round (:meth:`MapView.update`) and with
every audit event (:meth:`MapView.add_event`). Each update builds one compact JSON state —
the cell map's owners (run-length coded), the load per cell, per-zone figures from the zones'
heartbeats and the most recent events — and keeps its bytes, so serving it to any number of
pages costs a copy, not a rebuild. Nothing here touches entities: the per-cell load arrives
with the heartbeats, already counted by the zones.

A :class:`MapServer` serves the page and the state over HTTP/1.1 on 127.0.0.1 by default:

- ``GET /`` and ``GET /map``: the page (``shardworld/web/map.html``),
- ``GET /map.js``: its script,
- ``GET /map/state``: the current state as JSON,
- ``GET /map/events``: Server-Sent Events, one ``state`` event per new state.

Every other path is 404, every other method 405. docs/map.md describes the state format.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shardworld.metrics import BadRequest, LocalHttpServer
from shardworld.sharding.cellmap import CellMap

if TYPE_CHECKING:
    from shardworld.coordinator.coordinator import Coordinator, ZoneView

log = logging.getLogger("shardworld.map")

#: Version of the JSON state (its ``"v"`` field).
STATE_VERSION = 1
#: Events kept in memory; the oldest go first.
DEFAULT_MAX_EVENTS = 256
#: Events included in each state (the newest); a page keeps its own longer log.
STATE_EVENTS = 64
#: Density grids larger than this are summed over square blocks of cells until they fit, so a
#: huge world still gives a small state (owners stay exact: they are run-length coded).
MAX_DENSITY_CELLS = 128 * 128 * 4
#: Fields of an event longer than this are cut (an event is a line in the page's log).
MAX_EVENT_TEXT = 160
MAX_EVENT_FIELDS = 16

ZONE_STATUSES = ("up", "spare", "starting", "silent", "failed", "retired")
"""``up``: heartbeats arrive and it owns cells; ``spare``: heartbeats arrive, owns no cells;
``starting``: its process was asked for; ``silent``: no heartbeat for ``stale_after_s``;
``failed``: failed over (its cells went to another zone); ``retired``: stopped for good."""


@dataclass
class _Rate:
    """The last heartbeat counters of a zone, to turn counters into rates."""

    seen_at: float
    tick: int
    handoffs_in: int
    handoffs_out: int
    in_per_s: float = 0.0
    out_per_s: float = 0.0


class MapView:
    """The live map's data. Feed it from one event loop (the coordinator's).

    Args:
        tick_hz: the zones' tick rate (the tick budget is ``1000 / tick_hz`` ms; rates come
            from counter deltas over heartbeat tick deltas).
        max_events: events kept (a bounded ring).
        stale_after_s: a zone not heard from for this long is ``silent``.
        clock: Unix time.
    """

    def __init__(
        self,
        *,
        tick_hz: float = 20.0,
        max_events: int = DEFAULT_MAX_EVENTS,
        stale_after_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(tick_hz) and tick_hz > 0):
            raise ValueError(f"tick_hz must be > 0, got {tick_hz!r}")
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events!r}")
        self.tick_hz = float(tick_hz)
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.world = ""
        self.version = 0
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        self._seq = 0
        self._rates: dict[str, _Rate] = {}
        self._heard: dict[str, bool] = {}  # zone -> alive at the last update
        self._state: dict[str, Any] = {"v": STATE_VERSION, "version": 0, "ready": False}
        self._json = _dumps(self._state)
        self._waiters: set[asyncio.Future[None]] = set()
        self._owners_of: CellMap | None = None
        self._owned: npt.NDArray[np.intp] = np.zeros(0, np.intp)
        self._runs: list[int] = []

    # --- feeding ---------------------------------------------------------------------------

    def add_event(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Keep one event (an audit event of the coordinator, or the view's own).

        Lists (``cells``) become their length; long strings are cut; other values that are
        not JSON scalars are dropped. It shows in the state at the next :meth:`update`.
        """
        self._seq += 1
        ev: dict[str, Any] = {"seq": self._seq}
        for key, value in data.items():
            if len(ev) >= MAX_EVENT_FIELDS:
                break
            if not isinstance(key, str) or key == "seq":
                continue
            if isinstance(value, list | tuple | np.ndarray):
                ev[key] = len(value)
            elif isinstance(value, str):
                ev[key] = value[:MAX_EVENT_TEXT]
            elif isinstance(value, bool | None):
                ev[key] = value
            elif isinstance(value, int | np.integer):
                ev[key] = int(value)
            elif isinstance(value, float | np.floating) and math.isfinite(float(value)):
                ev[key] = float(value)
        ev.setdefault("time", self.clock())
        ev.setdefault("type", "event")
        self.events.append(ev)
        return ev

    def update(self, coord: Coordinator) -> None:
        """Rebuild the state from a coordinator (call once per round)."""
        self.world = coord.world
        self.update_from(
            coord.cellmap,
            coord.zones,
            now=coord.clock(),
            node=coord.node_id,
            leader=coord.leader,
            maps_published=coord.maps_published,
            failovers=coord.failovers,
            failed=coord._failed,
            retired=coord._retired,
            starting=coord._starting,
        )

    def update_from(
        self,
        cellmap: CellMap,
        zones: Mapping[str, ZoneView],
        *,
        now: float,
        node: str = "",
        leader: bool = False,
        maps_published: int = 0,
        failovers: int = 0,
        failed: Iterable[str] = (),
        retired: Iterable[str] = (),
        starting: Iterable[str] = (),
    ) -> None:
        """Rebuild the state from a cell map and the zones' latest heartbeats."""
        cm = cellmap
        n_zones = len(cm.zones)
        if self._owners_of is not cm:
            # Owners change only with the map: code them once per map, not once per round.
            flat = np.asarray(cm.owner).reshape(-1)
            self._owned = np.bincount(flat, minlength=n_zones)
            self._runs = rle(flat)
            self._owners_of = cm
        owned = self._owned
        failed_s, retired_s, starting_s = set(failed), set(retired), set(starting)
        load_ids: list[npt.NDArray[np.int32]] = []
        load_vals: list[npt.NDArray[np.float32]] = []
        zone_rows: list[dict[str, Any]] = []
        for i, name in enumerate(cm.zones):
            z = zones.get(name)
            fresh = z is not None and now - z.seen_at <= self.stale_after_s
            if name in retired_s:
                status = "retired"
            elif name in failed_s:
                status = "failed"
            elif fresh:
                status = "up" if owned[i] else "spare"
            elif name in starting_s:
                status = "starting"
            else:
                status = "silent"
            alive = status in ("up", "spare")
            self._note_liveness(name, alive, status, now)
            row: dict[str, Any] = {
                "name": name,
                "index": i,
                "colour": i,
                "status": status,
                "alive": alive,
                "cells": int(owned[i]),
                "entities": 0,
                "observers": 0,
                "ghosts": 0,
                "p50_ms": 0.0,
                "p99_ms": 0.0,
                "late_ticks": 0,
                "tick": 0,
                "epoch": 0,
                "handoffs_in_per_s": 0.0,
                "handoffs_out_per_s": 0.0,
                "age_s": None,
            }
            if z is not None:
                rate = self._rate(z)
                rep = z.report
                row.update(
                    entities=int(z.entities),
                    observers=_int(rep.get("observers")),
                    ghosts=_int(rep.get("ghosts")),
                    p50_ms=round(_float(rep.get("p50_ms")), 3),
                    p99_ms=round(float(z.p99_ms), 3),
                    late_ticks=_int(rep.get("late_ticks")),
                    tick=int(z.tick),
                    epoch=int(z.epoch),
                    age_s=round(max(0.0, now - z.seen_at), 2),
                )
                if fresh:
                    row["handoffs_in_per_s"] = round(rate.in_per_s, 1)
                    row["handoffs_out_per_s"] = round(rate.out_per_s, 1)
                    ok = (z.cell_ids >= 0) & (z.cell_ids < cm.n_cells) & np.isfinite(z.cell_load)
                    ok &= z.cell_load > 0
                    load_ids.append(z.cell_ids[ok])
                    load_vals.append(z.cell_load[ok])
                else:
                    # A silent zone's last figures are history, not load.
                    row.update(entities=0, observers=0, ghosts=0)
            zone_rows.append(row)
        density = np.bincount(
            np.concatenate(load_ids) if load_ids else np.zeros(0, np.int32),
            weights=np.concatenate(load_vals).astype(np.float64) if load_vals else None,
            minlength=cm.n_cells,
        ).astype(np.float64)
        for gone in set(self._rates) - set(cm.zones):
            del self._rates[gone]
        live = [r for r in zone_rows if r["alive"]]
        budget = 1000.0 / self.tick_hz
        x0, y0, x1, y1 = cm.world
        state: dict[str, Any] = {
            "v": STATE_VERSION,
            "ready": True,
            "version": self.version + 1,
            "world": self.world,
            "time": round(now, 3),
            "node": node,
            "leader": bool(leader),
            "epoch": int(cm.epoch),
            "maps_published": int(maps_published),
            "failovers": int(failovers),
            "bounds": [x0, y0, x1, y1],
            "cell_size": cm.cell_size,
            "rows": cm.rows,
            "cols": cm.cols,
            "tick_hz": self.tick_hz,
            "tick_budget_ms": budget,
            "owner": {"encoding": "rle", "runs": self._runs},
            "density": encode_density(density.reshape(cm.rows, cm.cols)),
            "zones": zone_rows,
            "totals": {
                "zones": n_zones,
                "zones_alive": len(live),
                "entities": sum(r["entities"] for r in live),
                "observers": sum(r["observers"] for r in live),
                "ghosts": sum(r["ghosts"] for r in live),
                "handoffs_per_s": round(sum(r["handoffs_in_per_s"] for r in live), 1),
                "max_p99_ms": max((r["p99_ms"] for r in live), default=0.0),
            },
            "events": list(self.events)[-STATE_EVENTS:],
            "last_event_seq": self._seq,
        }
        self._set_state(state)

    def _rate(self, z: ZoneView) -> _Rate:
        node = z.report.get("node")
        counts = node if isinstance(node, dict) else {}
        hin, hout = _int(counts.get("handoffs_in")), _int(counts.get("handoffs_out"))
        prev = self._rates.get(z.name)
        if prev is None or z.tick < prev.tick or hin < prev.handoffs_in:
            # First heartbeat, or a restarted zone: no rate until the next one.
            cur = _Rate(z.seen_at, z.tick, hin, hout)
        elif z.seen_at == prev.seen_at or z.tick == prev.tick:
            return prev  # the same heartbeat as last round
        else:
            span_s = (z.tick - prev.tick) / self.tick_hz
            cur = _Rate(
                z.seen_at,
                z.tick,
                hin,
                hout,
                (hin - prev.handoffs_in) / span_s,
                max(0, hout - prev.handoffs_out) / span_s,
            )
        self._rates[z.name] = cur
        return cur

    def _note_liveness(self, name: str, alive: bool, status: str, now: float) -> None:
        was = self._heard.get(name)
        self._heard[name] = alive
        if was is None and not alive:
            return  # never heard of: nothing changed
        if alive and not was:
            self.add_event({"type": "zone_up", "zone": name, "time": now})
        elif was and status == "silent":
            # Failed and retired zones have the coordinator's own events.
            self.add_event({"type": "zone_silent", "zone": name, "time": now})

    def _set_state(self, state: dict[str, Any]) -> None:
        self.version = int(state["version"])
        self._state = state
        self._json = _dumps(state)
        waiters, self._waiters = self._waiters, set()
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # --- reading -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The current state (do not modify it)."""
        return self._state

    def state_json(self) -> bytes:
        """The current state as UTF-8 JSON (built once per update)."""
        return self._json

    async def wait_newer(self, version: int, timeout: float) -> bool:
        """Wait until the state is newer than ``version`` (True) or ``timeout`` passes."""
        if self.version > version:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)
        return self.version > version

    def wake(self) -> None:
        """Wake every :meth:`wait_newer` (the server calls it when it stops)."""
        waiters, self._waiters = self._waiters, set()
        for w in waiters:
            if not w.done():
                w.set_result(None)


# --- encodings -------------------------------------------------------------------------------


def rle(values: npt.NDArray[np.integer[Any]]) -> list[int]:
    """Run-length code of a flat array: ``[value, count, value, count, ...]``."""
    v = np.asarray(values).reshape(-1)
    if v.size == 0:
        return []
    starts = np.concatenate(([0], np.flatnonzero(v[1:] != v[:-1]) + 1))
    counts = np.diff(np.concatenate((starts, [v.size])))
    out = np.empty(2 * starts.size, np.int64)
    out[0::2] = v[starts]
    out[1::2] = counts
    return [int(x) for x in out.tolist()]


def unrle(runs: list[int]) -> npt.NDArray[np.int64]:
    """The flat array a :func:`rle` code describes."""
    pairs = np.asarray(runs, np.int64).reshape(-1, 2)
    return np.repeat(pairs[:, 0], pairs[:, 1])


def encode_density(grid: npt.NDArray[np.float64]) -> dict[str, Any]:
    """Load per cell as base64 little-endian uint16 (``value = u16 * scale``), row-major;
    blocks of ``block`` x ``block`` cells are summed when the grid exceeds
    :data:`MAX_DENSITY_CELLS` (``rows`` and ``cols`` are then the block grid's)."""
    rows, cols = grid.shape
    block = 1
    while math.ceil(rows / block) * math.ceil(cols / block) > MAX_DENSITY_CELLS:
        block *= 2
    g = np.where(np.isfinite(grid) & (grid > 0.0), grid, 0.0)
    if block > 1:
        br, bc = math.ceil(rows / block), math.ceil(cols / block)
        padded = np.zeros((br * block, bc * block), np.float64)
        padded[:rows, :cols] = g
        g = padded.reshape(br, block, bc, block).sum(axis=(1, 3))
    top = float(g.max()) if g.size else 0.0
    scale = max(1.0, top / 65535.0)
    q = np.minimum(np.rint(g / scale), 65535).astype("<u2")
    return {
        "encoding": "u16le-base64",
        "block": block,
        "rows": int(g.shape[0]),
        "cols": int(g.shape[1]),
        "scale": scale,
        "max": round(top, 3),
        "total": round(float(g.sum()), 3),
        "data": base64.b64encode(q.tobytes()).decode("ascii"),
    }


def decode_density(d: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    """The (rows, cols) grid an :func:`encode_density` object carries."""
    raw = np.frombuffer(base64.b64decode(d["data"]), dtype="<u2").astype(np.float64)
    return raw.reshape(int(d["rows"]), int(d["cols"])) * float(d["scale"])


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int | float) and math.isfinite(v) else 0


def _float(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else 0.0


# --- the HTTP server -------------------------------------------------------------------------


PAGE_PATHS = ("/", "/map")
STATE_PATH = "/map/state"
EVENTS_PATH = "/map/events"
SCRIPT_PATH = "/map.js"

_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
)


def _asset(name: str) -> bytes:
    return (resources.files("shardworld") / "web" / name).read_bytes()


class MapServer(LocalHttpServer):
    """The map page, its state and its live feed over HTTP/1.1.

    Args:
        view: the data.
        host, port: where to listen (port 0: any free port, see ``port``).
        timeout_s: a client must send its request within this long.
        max_connections: open connections at most (streams included); more are closed.
        max_streams: live feeds (``/map/events``) at most; more get 503.
        keepalive_s: a live feed sends a comment line this often when nothing changes.
        stream_max_s: a live feed ends after this long (the browser reconnects by itself).
        max_buffer: a live feed whose client has this many bytes unread is dropped.
    """

    def __init__(
        self,
        view: MapView,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout_s: float = 5.0,
        max_connections: int = 64,
        max_streams: int = 16,
        keepalive_s: float = 15.0,
        stream_max_s: float = 3600.0,
        max_buffer: int = 1 << 20,
    ) -> None:
        super().__init__(host, port)
        self.view = view
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.keepalive_s = keepalive_s
        self.stream_max_s = stream_max_s
        self.max_buffer = max_buffer
        self.requests = 0
        self.streams = 0
        self._open = 0
        self._closing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._page = _asset("map.html")
        self._script = _asset("map.js")

    path = "/map"

    async def start(self) -> None:
        self._closing = False
        await self._listen()

    async def stop(self) -> None:
        self._closing = True
        self.view.wake()
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        # Python 3.11's wait_closed does not wait for the handlers: end them here.
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=2.0)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            if self._open > self.max_connections or self._closing:
                return
            try:
                status, body, headers = await asyncio.wait_for(
                    self._respond(reader), self.timeout_s
                )
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                return
            if status == "stream":
                if self.streams >= self.max_streams:
                    await _send(writer, "503 Service Unavailable", b"too many live feeds\n")
                    return
                self.streams += 1
                try:
                    await self._stream(writer)
                finally:
                    self.streams -= 1
                return
            await _send(writer, status, body, headers)
        except Exception:
            log.exception("map request failed")
        finally:
            self._open -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, bytes, dict[str, str]]:
        try:
            method, path = await self._read_request(reader)
        except BadRequest as exc:
            return exc.status, exc.body, {}
        known = (*PAGE_PATHS, SCRIPT_PATH, STATE_PATH, EVENTS_PATH)
        if path not in known:
            return "404 Not Found", b"not found\n", {}
        if method != b"GET":
            return "405 Method Not Allowed", b"only GET\n", {"Allow": "GET"}
        self.requests += 1
        if path == STATE_PATH:
            return "200 OK", self.view.state_json(), {"Content-Type": "application/json"}
        if path == EVENTS_PATH:
            return "stream", b"", {}
        if path == SCRIPT_PATH:
            return "200 OK", self._script, {"Content-Type": "text/javascript; charset=utf-8"}
        return (
            "200 OK",
            self._page,
            {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": _PAGE_CSP},
        )

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
            "retry: 2000\n\n"
        )
        writer.write(head.encode("ascii"))
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.stream_max_s
        sent = -1
        while not self._closing and loop.time() < ends and not writer.is_closing():
            if self.view.version != sent:
                sent = self.view.version
                writer.write(b"event: state\ndata: " + self.view.state_json() + b"\n\n")
            else:
                writer.write(b": keepalive\n\n")
            transport = writer.transport
            if transport.get_write_buffer_size() > self.max_buffer:
                log.info("map: dropped a live feed whose reader fell behind")
                return
            try:
                await asyncio.wait_for(writer.drain(), self.timeout_s)
            except (TimeoutError, ConnectionError):
                return
            await self.view.wait_newer(sent, min(self.keepalive_s, max(0.0, ends - loop.time())))


async def _send(
    writer: asyncio.StreamWriter,
    status: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    hdrs = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    lines += [
        f"Content-Length: {len(body)}",
        "Cache-Control: no-cache",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
