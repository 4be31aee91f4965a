"""In-process store: ``memory://<name>``.

Every :class:`MemoryStore` opened with the same name in one process shares that name's state
(a module-level registry, one state per world), so a coordinator and its zones running as tasks of
one process see one store, exactly as they would see one Redis. Expiry follows the injectable
``clock`` (default :func:`time.time`).

Each operation yields to the event loop once before it touches the state and then runs to the
end without awaiting, so concurrent callers interleave between operations, as over a network,
while each operation stays atomic, as a Lua script is in Redis.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardworld.store.base import (
    EVENTS_MAX,
    Event,
    FencedError,
    Lease,
    Store,
    StoreError,
    check_bytes,
    check_int,
    check_name,
    check_ttl,
    check_world,
    pack,
    parse_event_id,
    unpack,
)

__all__ = ["MemoryStore", "forget_memory_store"]

log = logging.getLogger(__name__)

_EVENTS_SLACK = 1024


@dataclass(slots=True)
class _World:
    """One world's state under one ``memory://<name>``."""

    map: tuple[int, bytes] | None = None
    leases: dict[str, Lease] = field(default_factory=dict)
    # Last token issued per lease name; never forgotten, so tokens are never reused.
    tokens: dict[str, int] = field(default_factory=dict)
    checkpoints: dict[str, tuple[int, bytes, bytes]] = field(default_factory=dict)
    # (id as (ms, seq), time, packed data), oldest first.
    events: list[tuple[tuple[int, int], float, bytes]] = field(default_factory=list)
    last_event_id: tuple[int, int] = (0, 0)
    reports: dict[str, tuple[float, bytes]] = field(default_factory=dict)
    players: dict[int, bytes] = field(default_factory=dict)


_REGISTRIES: dict[str, dict[str, _World]] = {}


def forget_memory_store(name: str) -> None:
    """Drop every world of ``memory://<name>`` (for tests; open stores keep what they hold)."""
    _REGISTRIES.pop(name, None)


class MemoryStore(Store):
    """The in-process store behind ``memory://<name>``, for world ``world``.

    ``clock`` returns Unix seconds (default :func:`time.time`): it sets lease and report expiry
    and event times. ``timeout`` is accepted for parity with the Redis store and unused.
    """

    def __init__(
        self,
        name: str,
        world: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float | None = None,
    ) -> None:
        self.name = name
        self.url = f"memory://{name}"
        self.world = check_world(world)
        self._clock = clock
        self._state: _World | None = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url} is closed and cannot be restarted")
        if self._state is None:
            worlds = _REGISTRIES.setdefault(self.name, {})
            self._state = worlds.setdefault(self.world, _World())
            log.info("store %s: in-process, world %r", self.url, self.world)

    async def close(self) -> None:
        self._closed = True
        self._state = None

    async def _world(self) -> _World:
        # The one await of every operation: see the module docstring.
        await asyncio.sleep(0)
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        if self._state is None:
            raise StoreError(f"store {self.url} is not started: await store.start() first")
        return self._state

    # --- the cell map ---------------------------------------------------------------------------

    async def get_map(self) -> tuple[int, bytes] | None:
        return (await self._world()).map

    async def cas_map(self, expected_epoch: int | None, new_epoch: int, data: bytes) -> bool:
        if expected_epoch is not None:
            check_int("expected_epoch", expected_epoch)
        check_int("new_epoch", new_epoch)
        data = check_bytes("map data", data)
        state = await self._world()
        stored = None if state.map is None else state.map[0]
        if stored != expected_epoch:
            return False
        if expected_epoch is not None and new_epoch <= expected_epoch:
            return False
        state.map = (new_epoch, data)
        return True

    # --- leases ---------------------------------------------------------------------------------

    def _live_lease(self, state: _World, name: str, now: float) -> Lease | None:
        lease = state.leases.get(name)
        if lease is None:
            return None
        if now >= lease.expires_at:
            del state.leases[name]
            return None
        return lease

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        check_name("lease name", name)
        check_name("holder", holder)
        ttl_s = check_ttl(ttl_s)
        state = await self._world()
        now = self._clock()
        current = self._live_lease(state, name, now)
        if current is not None:
            if current.holder != holder:
                return None
            token = current.token
        else:
            token = state.tokens.get(name, 0) + 1
            state.tokens[name] = token
        lease = Lease(name, holder, token, now + ttl_s)
        state.leases[name] = lease
        return lease

    async def renew_lease(self, lease: Lease, ttl_s: float) -> Lease | None:
        ttl_s = check_ttl(ttl_s)
        state = await self._world()
        now = self._clock()
        current = self._live_lease(state, lease.name, now)
        if current is None or current.token != lease.token or current.holder != lease.holder:
            return None
        renewed = Lease(lease.name, lease.holder, lease.token, now + ttl_s)
        state.leases[lease.name] = renewed
        return renewed

    async def release_lease(self, lease: Lease) -> bool:
        state = await self._world()
        current = self._live_lease(state, lease.name, self._clock())
        if current is None or current.token != lease.token or current.holder != lease.holder:
            return False
        del state.leases[lease.name]
        return True

    async def get_lease(self, name: str) -> Lease | None:
        check_name("lease name", name)
        state = await self._world()
        return self._live_lease(state, name, self._clock())

    async def leases(self, prefix: str = "") -> list[Lease]:
        state = await self._world()
        now = self._clock()
        found = []
        for name in sorted(state.leases):
            lease = self._live_lease(state, name, now)
            if lease is not None and name.startswith(prefix):
                found.append(lease)
        return found

    # --- checkpoints ----------------------------------------------------------------------------

    async def save_checkpoint(
        self, zone: str, token: int, data: bytes, meta: dict[str, Any]
    ) -> None:
        check_name("zone", zone)
        check_int("token", token)
        data = check_bytes("checkpoint data", data)
        packed_meta = pack("checkpoint meta", meta)
        state = await self._world()
        saved = state.checkpoints.get(zone)
        if saved is not None and saved[0] > token:
            raise FencedError(
                f"checkpoint of zone {zone!r} on {self.url} (world {self.world!r}) refused: "
                f"token {token} is older than the saved checkpoint's token {saved[0]}"
            )
        state.checkpoints[zone] = (token, data, packed_meta)

    async def load_checkpoint(self, zone: str) -> tuple[int, bytes, dict[str, Any]] | None:
        check_name("zone", zone)
        saved = (await self._world()).checkpoints.get(zone)
        if saved is None:
            return None
        return saved[0], saved[1], unpack(saved[2])

    # --- the event log --------------------------------------------------------------------------

    async def append_event(self, data: dict[str, Any]) -> Event:
        packed = pack("event data", data)
        state = await self._world()
        now = self._clock()
        ms = int(now * 1000)
        last_ms, last_seq = state.last_event_id
        # Ids must keep increasing even if the clock stands still or steps back, as in Redis.
        event_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        state.last_event_id = event_id
        state.events.append((event_id, event_id[0] / 1000.0, packed))
        if len(state.events) > EVENTS_MAX + _EVENTS_SLACK:
            # Trimmed in batches, like Redis' MAXLEN ~, so appends stay amortised O(1).
            del state.events[: len(state.events) - EVENTS_MAX]
        return Event(f"{event_id[0]}-{event_id[1]}", event_id[0] / 1000.0, unpack(packed))

    async def events(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        start = (-1, -1) if after is None else parse_event_id(after)
        check_int("limit", limit)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        kept = (await self._world()).events
        first = bisect.bisect_right(kept, start, key=lambda event: event[0])
        return [
            Event(f"{event_id[0]}-{event_id[1]}", when, unpack(packed))
            for event_id, when, packed in kept[first : first + limit]
        ]

    # --- load reports ---------------------------------------------------------------------------

    async def put_report(self, zone: str, report: dict[str, Any], ttl_s: float) -> None:
        check_name("zone", zone)
        ttl_s = check_ttl(ttl_s)
        packed = pack("report", report)
        state = await self._world()
        state.reports[zone] = (self._clock() + ttl_s, packed)

    async def reports(self) -> dict[str, dict[str, Any]]:
        state = await self._world()
        now = self._clock()
        expired = [zone for zone, (expires, _) in state.reports.items() if now >= expires]
        for zone in expired:
            del state.reports[zone]
        return {zone: unpack(packed) for zone, (_, packed) in state.reports.items()}

    # --- player records -------------------------------------------------------------------------

    async def load_player(self, player_id: int) -> bytes | None:
        check_int("player_id", player_id)
        return (await self._world()).players.get(player_id)

    async def save_player(self, player_id: int, data: bytes) -> None:
        check_int("player_id", player_id)
        data = check_bytes("player record", data)
        (await self._world()).players[player_id] = data
