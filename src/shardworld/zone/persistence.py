"""Persistent player state: a world's ``persistent`` fields, kept in the store per player.

A handler names the per-player fields that outlive a session::

    class Handler(ZoneHandler):
        fields = (Field("xp", "uint32", scope=Scope.OWNER),)
        persistent = ("xp",)

With a store attached (:meth:`Zone.use_store`), a zone

* **loads** a player's record when the player joins and applies it to the new entity right
  after ``on_join`` returns, then calls ``on_player_loaded``. In a sharded world the zone
  starts the load when the JOIN arrives and joins the player on the first tick after the
  record is in, so the entity has its state before anyone sees it. A single zone (which
  joins at once, between ticks) applies the record as soon as it arrives, before the next
  tick;
* **saves** it when the player leaves (``leave_player``, after ``on_leave``, before the
  entity is removed) and every ``persist_every_s`` seconds of simulation time for every
  player entity it owns, whichever zone the entity has walked into since.

The tick only copies the rows into arrays; encoding and store I/O run in a background task,
in batches, one batch after another (so a newer record of a player is never overtaken by an
older one from the same zone). A record is msgpack of ``{"_v": 1, "_tick": <tick saved>,
field: value, ...}``.

Failures never cost a join: a load that fails or times out joins the player fresh, counts
it and logs once; that entity is then never saved, so the record in the store (which may
be fine) is not overwritten with a fresh one. A failed save is counted; each kind of failure is
logged once per outage (again after the store has answered in between).

Two internal server-only fields travel with every entity (handoffs, checkpoints): the player
id the record belongs to and whether the entity is saved.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import numpy.typing as npt

from shardworld.entities.schema import Field, Schema, Scope
from shardworld.zone.timers import seconds_to_ticks

if TYPE_CHECKING:
    from shardworld.store.base import Store
    from shardworld.zone.zone import Zone

log = logging.getLogger("shardworld.zone.persistence")

RECORD_VERSION = 1
"""The record format this code writes; records of a newer format are never overwritten."""

#: Per entity: NOT_SAVED, PENDING or LOADED.
STATE_FIELD = "_persist"
#: Per entity: the player id its record is saved under.
PLAYER_FIELD = "_player"

NOT_SAVED = 0
"""An NPC, or a player whose record could not be loaded: never saved."""
PENDING = 1
"""A player whose record is on its way: not saved until it has been applied."""
LOADED = 2
"""A player whose record was applied (or who had none): saved on leave and periodically."""

#: Built-in fields that are connection bookkeeping, not game state.
_NOT_PERSISTABLE = frozenset({"owner", "gateway", "observer", "input_seq", "actions"})


def internal_fields(persistent: tuple[str, ...] | list[str]) -> list[Field]:
    """The server-only fields a world with persistent fields carries (none otherwise)."""
    if not persistent:
        return []
    return [
        Field(STATE_FIELD, np.uint8, (), Scope.SERVER, "0 not saved, 1 loading, 2 saved"),
        Field(PLAYER_FIELD, np.uint64, (), Scope.SERVER, "player id of the saved record"),
    ]


def check_persistent(schema: Schema, names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``names`` if each is a field of ``schema`` that may be saved; ValueError otherwise."""
    if isinstance(names, str):
        raise TypeError(f"persistent must be a tuple of field names, not the string {names!r}")
    out = tuple(names)
    for name in out:
        if not isinstance(name, str) or schema.get(name) is None:
            raise ValueError(f"persistent field {name!r} is not a field of this world")
        if name.startswith("_") or name in _NOT_PERSISTABLE:
            raise ValueError(f"persistent field {name!r} is zone bookkeeping and cannot be saved")
    if len(set(out)) != len(out):
        raise ValueError(f"persistent fields {out} name a field twice")
    return out


def encode_record(values: dict[str, Any]) -> bytes:
    """A record as stored: msgpack of a dict."""
    data: bytes = msgpack.packb(values, use_bin_type=True)
    return data


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_record`; ValueError if ``data`` is not a record."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a player record: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("not a player record: expected a map of field names")
    return value


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What loading a player's record gave: the record, none (a new player), or a failure."""

    player_id: int
    record: dict[str, Any] | None
    failed: bool = False


@dataclass
class PersistenceStats:
    """Counters of a zone's player records."""

    loads: int = 0
    records_found: int = 0
    load_failures: int = 0
    records_unreadable: int = 0
    records_applied: int = 0
    fields_refused: int = 0
    left_before_loaded: int = 0
    saves: int = 0
    save_failures: int = 0
    save_rounds: int = 0
    save_rounds_skipped: int = 0
    queued: int = 0

    def report(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Batch:
    tick: int
    players: npt.NDArray[np.uint64]
    columns: dict[str, npt.NDArray[Any]]
    periodic: bool
    leaving: dict[int, dict[str, Any]] = field(default_factory=dict)


class PlayerPersistence:
    """A zone's link to the player records in a store (see the module docstring).

    Args:
        zone: the zone; its handler's ``persistent`` names the fields.
        store: a started store (memory or Redis).
        load_timeout_s: a load that takes longer counts as failed (the player joins fresh).
        save_timeout_s: a single save that takes longer counts as failed.
        batch_size: records encoded per step of the background writer.
        concurrency: loads in flight at once, and saves in flight at once (a Redis store's
            connection pool is shared with leases and checkpoints: keep it well below 100).
    """

    def __init__(
        self,
        zone: Zone,
        store: Store,
        *,
        load_timeout_s: float = 2.0,
        save_timeout_s: float = 5.0,
        batch_size: int = 256,
        concurrency: int = 16,
    ) -> None:
        self.zone = zone
        self.store = store
        self.fields = check_persistent(zone.schema, zone.handler.persistent)
        if not self.fields:
            raise ValueError("the world's handler has no persistent fields")
        every = zone.config.persist_every_s
        self.every_ticks = max(1, seconds_to_ticks(every, zone.config.tick_hz)) if every else 0
        self.load_timeout_s = load_timeout_s
        self.save_timeout_s = save_timeout_s
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.stats = PersistenceStats()
        self._queue: collections.deque[_Batch] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._loads: set[asyncio.Future[LoadResult]] = set()
        # Loads wait here, so a crowd joining at once queues rather than exhausting the
        # store's connections; saves have their own bound (see _write), so a long save
        # round never holds up joins.
        self._load_slots = asyncio.Semaphore(self.concurrency)
        # Records of players who left, until written: a quick re-join reads these, not an
        # older record the store may still hold.
        self._leaving: dict[int, dict[str, Any]] = {}
        self._last_tick: int | None = None
        self._periodic_queued = False
        self._halted = False
        self._logged: set[str] = set()

    # --- loading ---------------------------------------------------------------------------

    def load(self, player_id: int) -> asyncio.Future[LoadResult]:
        """Start loading ``player_id``'s record; the future never fails (see LoadResult)."""
        player_id = int(player_id)
        self.stats.loads += 1
        loop = asyncio.get_running_loop()
        recent = self._leaving.get(player_id)
        if recent is not None:
            fut: asyncio.Future[LoadResult] = loop.create_future()
            fut.set_result(LoadResult(player_id, dict(recent)))
            self.stats.records_found += 1
            return fut
        task = loop.create_task(self._load(player_id), name=f"load-player-{player_id}")
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        return task

    async def _load(self, player_id: int) -> LoadResult:
        try:
            async with self._load_slots, asyncio.timeout(self.load_timeout_s):
                data = await self.store.load_player(player_id)
        except Exception as exc:  # StoreError, a timeout, or a broken store: never the join
            return self._load_failed(player_id, exc)
        self._logged.discard("load")  # the next outage is logged again
        if data is None:
            return LoadResult(player_id, None)
        try:
            record = decode_record(data)
        except ValueError as exc:
            self.stats.records_unreadable += 1
            self._log_once(
                "unreadable",
                "zone %s: player %d: unreadable record (%s); starts fresh",
                player_id,
                exc,
            )
            return LoadResult(player_id, None)
        version = record.get("_v", 0)
        if not isinstance(version, int) or version > RECORD_VERSION:
            self._log_once(
                "version",
                "zone %s: player %d: record format %r is newer than %d; "
                "joins fresh and is not saved",
                player_id,
                version,
                RECORD_VERSION,
            )
            self.stats.load_failures += 1
            return LoadResult(player_id, None, failed=True)
        self.stats.records_found += 1
        return LoadResult(player_id, record)

    def _load_failed(self, player_id: int, exc: BaseException) -> LoadResult:
        self.stats.load_failures += 1
        what = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        self._log_once(
            "load",
            "zone %s: cannot load player records (%s, first seen for player %d); players join "
            "fresh and are not saved until loads work again",
            what,
            player_id,
        )
        return LoadResult(player_id, None, failed=True)

    def joined(self, entity_id: int, player_id: int, loaded: LoadResult | None) -> None:
        """``on_join`` has spawned ``entity_id`` for ``player_id``: apply its record now
        (``loaded``), or mark it pending and apply the record when it arrives."""
        ents = self.zone.entities
        row = int(ents.rows_of([entity_id])[0])
        if row < 0:
            return
        ents[PLAYER_FIELD][row] = int(player_id)
        if loaded is not None:
            self._apply(entity_id, loaded)
            return
        ents[STATE_FIELD][row] = PENDING
        try:
            fut = self.load(player_id)
        except RuntimeError as exc:  # no running event loop: nothing can load
            self._apply(entity_id, self._load_failed(int(player_id), exc))
            return
        fut.add_done_callback(lambda f: self._arrived(entity_id, f))

    def _arrived(self, entity_id: int, fut: asyncio.Future[LoadResult]) -> None:
        ents = self.zone.entities
        row = int(ents.rows_of([entity_id])[0])
        if row < 0 or ents[STATE_FIELD][row] != PENDING:
            self.stats.left_before_loaded += 1
            return
        if fut.cancelled():
            ents[STATE_FIELD][row] = NOT_SAVED
            return
        self._apply(entity_id, fut.result())

    def _apply(self, entity_id: int, res: LoadResult) -> None:
        zone = self.zone
        ents = zone.entities
        row = int(ents.rows_of([entity_id])[0])
        if row < 0:
            self.stats.left_before_loaded += 1
            return
        if res.failed:
            ents[STATE_FIELD][row] = NOT_SAVED
            return
        record = res.record
        if record is not None:
            for name in self.fields:
                if name not in record:
                    continue  # a field made persistent after this record was saved
                col = ents[name]
                try:
                    col[row] = np.asarray(record[name], dtype=col.dtype).reshape(col.shape[1:])
                except (ValueError, TypeError, OverflowError) as exc:
                    self.stats.fields_refused += 1
                    self._log_once(
                        f"field:{name}",
                        "zone %s: saved %r of player %d does not fit the field (%s); kept "
                        "on_join's value",
                        name,
                        res.player_id,
                        exc,
                    )
        ents[STATE_FIELD][row] = LOADED
        if record is None:
            return
        self.stats.records_applied += 1
        try:
            zone.handler.on_player_loaded(zone, entity_id, record)
        except Exception:
            log.exception(
                "zone %s: on_player_loaded failed for player %d", zone.config.name, res.player_id
            )

    # --- saving ----------------------------------------------------------------------------

    def leaving(self, entity_id: int) -> None:
        """The player of ``entity_id`` leaves: queue its record (before the row goes)."""
        if self._halted:
            return
        ents = self.zone.entities
        row = int(ents.rows_of([entity_id])[0])
        if row < 0 or ents[STATE_FIELD][row] != LOADED:
            return
        batch = self._collect(np.array([row], np.int64), periodic=False)
        pid = int(batch.players[0])
        record = self._record(batch.tick, {n: batch.columns[n][0].tolist() for n in self.fields})
        batch.leaving[pid] = record
        self._leaving[pid] = record
        self._enqueue(batch)

    def tick(self, tick: int) -> None:
        """Called every tick: every ``persist_every_s``, queue every saved player's record.

        Only copies columns; if the previous round is still being written (a slow store),
        this round is skipped and counted rather than piling up.
        """
        if not self.every_ticks or self._halted:
            return
        prev = self._last_tick if self._last_tick is not None else tick - 1
        self._last_tick = tick
        if tick // self.every_ticks == prev // self.every_ticks:
            return
        if self._periodic_queued:
            self.stats.save_rounds_skipped += 1
            self._log_once(
                "behind", "zone %s: the store is slower than persist_every_s; skipping save rounds"
            )
            return
        ents = self.zone.entities
        if not len(ents):
            return
        rows = np.flatnonzero(ents[STATE_FIELD] == LOADED)
        if rows.size:
            self._periodic_queued = True
            self.stats.save_rounds += 1
            self._enqueue(self._collect(rows, periodic=True))

    def save_all(self) -> int:
        """Queue the record of every saved player this zone owns now; returns how many."""
        if self._halted:
            return 0
        ents = self.zone.entities
        if not len(ents):
            return 0
        rows = np.flatnonzero(ents[STATE_FIELD] == LOADED)
        if rows.size:
            self._enqueue(self._collect(rows, periodic=False))
        return int(rows.size)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is written (or failed); False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def halt(self) -> None:
        """Save nothing more (a zone that lost its lease: another owns its players now)."""
        self._halted = True
        self._queue.clear()
        self._periodic_queued = False

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop loading."""
        await self.flush(timeout)
        for fut in list(self._loads):
            fut.cancel()

    @property
    def pending_loads(self) -> int:
        return len(self._loads)

    def _collect(self, rows: npt.NDArray[np.int64], periodic: bool) -> _Batch:
        ents = self.zone.entities
        return _Batch(
            tick=self.zone.tick,
            players=ents[PLAYER_FIELD][rows].copy(),
            columns={name: ents[name][rows].copy() for name in self.fields},
            periodic=periodic,
        )

    @staticmethod
    def _record(tick: int, values: dict[str, Any]) -> dict[str, Any]:
        return {"_v": RECORD_VERSION, "_tick": tick, **values}

    def _enqueue(self, batch: _Batch) -> None:
        self._queue.append(batch)
        self.stats.queued += len(batch.players)
        if self._worker is None or self._worker.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError as exc:
                self._queue.pop()
                self.stats.queued -= len(batch.players)
                self.stats.save_failures += len(batch.players)
                self._log_once("noloop", "zone %s: cannot save player records: %s", exc)
                return
            self._idle.clear()
            self._worker = loop.create_task(self._write_all(), name="save-players")

    async def _write_all(self) -> None:
        try:
            while self._queue and not self._halted:
                batch = self._queue[0]
                try:
                    await self._write(batch)
                finally:
                    if self._queue and self._queue[0] is batch:
                        self._queue.popleft()
                    if batch.periodic:
                        self._periodic_queued = False
                    for pid, record in batch.leaving.items():
                        if self._leaving.get(pid) is record:
                            del self._leaving[pid]
        finally:
            self.stats.queued = sum(len(b.players) for b in self._queue)
            self._idle.set()

    async def _write(self, batch: _Batch) -> None:
        n = len(batch.players)
        for start in range(0, n, self.batch_size):
            if self._halted:
                return
            stop = min(n, start + self.batch_size)
            pids = batch.players[start:stop].tolist()
            cols = {name: batch.columns[name][start:stop].tolist() for name in self.fields}
            data = [
                encode_record(
                    self._record(batch.tick, {name: cols[name][i] for name in self.fields})
                )
                for i in range(len(pids))
            ]
            for c in range(0, len(pids), self.concurrency):
                part = range(c, min(len(pids), c + self.concurrency))
                results = await asyncio.gather(
                    *(self._save_one(pids[i], data[i]) for i in part), return_exceptions=True
                )
                for res in results:
                    if isinstance(res, BaseException):
                        self.stats.save_failures += 1
                        what = f"{type(res).__name__}: {res}" if str(res) else type(res).__name__
                        self._log_once("save", "zone %s: player records not saved (%s)", what)
                    else:
                        self.stats.saves += 1
                        self._logged.discard("save")
            self.stats.queued -= stop - start

    async def _save_one(self, player_id: int, data: bytes) -> None:
        async with asyncio.timeout(self.save_timeout_s):
            await self.store.save_player(player_id, data)

    def _log_once(self, key: str, fmt: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(fmt, self.zone.config.name, *args)
