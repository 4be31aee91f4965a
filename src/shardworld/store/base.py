"""The store interface: the coordinator's durable state for one world.

A store holds, for one world (every key is namespaced by the world's name, so several worlds can
share one Redis):

- the **cell map**, opaque bytes versioned by an epoch and changed only by compare-and-set;
- **leases** with a TTL and a **fencing token** that grows every time a lease changes hands;
- **checkpoints** of a zone's state, fenced by the token of the zone's lease;
- an **event log** (the audit trail of ownership changes);
- the latest **load report** of each zone, expiring when a zone stops reporting;
- **player records**.

Two backends implement it: ``memory://<name>`` (:mod:`shardworld.store.memory`) and
``redis://host:port/db`` (:mod:`shardworld.store.redis`). Pick one with
:func:`shardworld.store.open_store`; docs/store.md describes the guarantees and the Redis layout.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Any

import msgpack

#: Events kept in a world's log; older ones are trimmed (Redis trims approximately).
EVENTS_MAX = 100_000

#: Default seconds a Redis store waits to connect, and for any one reply.
DEFAULT_TIMEOUT = 5.0

# World names become part of every key (inside a Redis Cluster hash tag), so braces, spaces and
# separators are kept out of them.
_WORLD_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_EVENT_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as granted or renewed; compare ``token`` values, never holders, to fence writes."""

    name: str
    """What is leased, e.g. ``"zone:z3"`` or ``"coordinator"``."""
    holder: str
    """Who holds it (node id, process id)."""
    token: int
    """Fencing token: strictly increases every time the lease changes hands, never reused (not
    even after the lease expired or was released). Renewals keep it."""
    expires_at: float
    """Unix time the lease lapses unless renewed, on the store's clock (the Redis server's for
    Redis). Renew well before it, e.g. every third of the TTL."""


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event log."""

    id: str
    """Assigned by the store, ``"<milliseconds>-<sequence>"`` (a Redis stream id); ordered as the
    pair of integers, not as a string. Pass it as ``after`` to :meth:`Store.events` to page."""
    time: float
    """Unix time the store appended it (the milliseconds part of the id)."""
    data: dict[str, Any]


class StoreError(Exception):
    """A store operation failed (unreachable, closed, not started); the message names the URL."""


class FencedError(StoreError):
    """A write carried a fencing token older than one the store has already seen."""


class Store(abc.ABC):
    """A connection to one world's state in a store.

    Lifecycle: ``await start()``, use, ``await close()`` (also an async context manager). Every
    method is a coroutine and is atomic on its own. Use it from one event loop. Any failure to
    reach the store raises :class:`StoreError`; operations are not retried inside the store
    (a retried write could apply twice), so callers retry where that is safe, e.g. the next
    lease renewal.

    Dictionaries (checkpoint meta, event data, load reports) travel as msgpack: use str keys or
    int keys, and values of None, bool, int, float, str, bytes, list, dict. Tuples come back as
    lists. Anything else raises TypeError.
    """

    url: str
    world: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect. Raises :class:`StoreError` naming the URL if the store does not answer
        within the backend's timeout."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; idempotent. The store cannot be started again."""

    # --- the cell map ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_map(self) -> tuple[int, bytes] | None:
        """The stored ``(epoch, data)``, or None if no map was ever stored."""

    @abc.abstractmethod
    async def cas_map(self, expected_epoch: int | None, new_epoch: int, data: bytes) -> bool:
        """Store ``(new_epoch, data)`` if the stored epoch is ``expected_epoch``.

        ``expected_epoch=None`` means "no map stored yet". Returns False, changing nothing, if the
        stored epoch differs or ``new_epoch <= expected_epoch``; of several concurrent calls with
        the same expected epoch exactly one returns True. After False, re-read with
        :meth:`get_map` and decide again.
        """

    # --- leases ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take lease ``name`` for ``holder`` for ``ttl_s`` seconds.

        Granted with a new, higher token if the lease is free or expired; if ``holder`` already
        holds it (unexpired), this is a renewal that keeps the token. None while another holder's
        lease is unexpired: try again later.
        """

    @abc.abstractmethod
    async def renew_lease(self, lease: Lease, ttl_s: float) -> Lease | None:
        """Extend ``lease`` to ``ttl_s`` seconds from now, keeping its token.

        None if the lease is lost: it expired (even if nobody took it since: whoever watches
        leases may already have acted on its expiry), was released, or is held under another
        token. Stop acting as the holder then; :meth:`acquire_lease` again for a new token.
        """

    @abc.abstractmethod
    async def release_lease(self, lease: Lease) -> bool:
        """Free ``lease`` now. False (and nothing changes) if it was no longer held with that
        token, e.g. expired or already taken over."""

    @abc.abstractmethod
    async def get_lease(self, name: str) -> Lease | None:
        """The current holder of ``name``, or None if it is free or expired."""

    @abc.abstractmethod
    async def leases(self, prefix: str = "") -> list[Lease]:
        """Every unexpired lease whose name starts with ``prefix``, sorted by name."""

    # --- checkpoints ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_checkpoint(
        self, zone: str, token: int, data: bytes, meta: dict[str, Any]
    ) -> None:
        """Replace ``zone``'s checkpoint with ``data`` (may be several MB) and ``meta``.

        ``token`` is the fencing token of the saver's zone lease. Raises :class:`FencedError`,
        changing nothing, if a checkpoint with a higher token was already saved for this zone
        (a newer owner took over); an equal token overwrites. A new owner should save a
        checkpoint right after taking over, which fences out the old owner's late writes.
        """

    @abc.abstractmethod
    async def load_checkpoint(self, zone: str) -> tuple[int, bytes, dict[str, Any]] | None:
        """``(token, data, meta)`` of ``zone``'s last checkpoint, or None if there is none."""

    # --- the event log --------------------------------------------------------------------------

    @abc.abstractmethod
    async def append_event(self, data: dict[str, Any]) -> Event:
        """Append ``data`` to the world's event log; returns it with its id and time.

        The log keeps about the newest :data:`EVENTS_MAX` events.
        """

    @abc.abstractmethod
    async def events(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        """Up to ``limit`` events, oldest first, with ids strictly after ``after`` (None: from
        the oldest kept). To read everything, repeat with ``after`` set to the last id returned
        until fewer than ``limit`` come back."""

    # --- load reports ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_report(self, zone: str, report: dict[str, Any], ttl_s: float) -> None:
        """Set ``zone``'s latest load report; it disappears ``ttl_s`` seconds from now unless
        replaced."""

    @abc.abstractmethod
    async def reports(self) -> dict[str, dict[str, Any]]:
        """The unexpired latest report of every zone, by zone name."""

    # --- player records -------------------------------------------------------------------------

    @abc.abstractmethod
    async def load_player(self, player_id: int) -> bytes | None:
        """The saved record of ``player_id``, or None."""

    @abc.abstractmethod
    async def save_player(self, player_id: int, data: bytes) -> None:
        """Replace the record of ``player_id`` with ``data``."""

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --- helpers shared by the backends ---------------------------------------------------------------


def check_world(world: str) -> str:
    """Return ``world`` if it is a legal world name, else raise ValueError."""
    if not isinstance(world, str) or not _WORLD_NAME.match(world):
        raise ValueError(f"illegal world name {world!r}: use 1-100 characters from [A-Za-z0-9._-]")
    return world


def check_name(kind: str, name: str) -> str:
    """Return ``name`` (a lease or zone name) if it is a non-empty str, else raise ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} must be a non-empty string, not {name!r}")
    return name


def check_int(kind: str, value: int) -> int:
    """Return ``value`` if it is an int (not a bool), else raise TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{kind} must be an int, not {value!r}")
    return value


def check_ttl(ttl_s: float) -> float:
    """Return ``ttl_s`` as a float if it is a positive, finite number, else raise ValueError."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 0 < ttl_s < 1e9:
        raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
    return float(ttl_s)


def check_bytes(kind: str, data: bytes) -> bytes:
    """Return ``data`` as bytes (bytearray and memoryview are copied), else raise TypeError."""
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{kind} must be bytes, not {type(data).__name__}")


def parse_event_id(event_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` -> ``(ms, seq)``; ValueError if malformed."""
    match = _EVENT_ID.match(event_id) if isinstance(event_id, str) else None
    if match is None:
        raise ValueError(f"bad event id {event_id!r}: expected '<milliseconds>-<sequence>'")
    return int(match.group(1)), int(match.group(2))


def pack(kind: str, value: dict[str, Any]) -> bytes:
    """msgpack ``value`` (a dict); TypeError naming ``kind`` if it is not a dict or not packable."""
    if not isinstance(value, dict):
        raise TypeError(f"{kind} must be a dict, not {type(value).__name__}")
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{kind} is not msgpack-able: {exc}") from exc


def unpack(raw: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    value: dict[str, Any] = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    return value
