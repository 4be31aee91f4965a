"""The bus interface: ordered, replayable topics between processes.

A topic is one totally ordered log (a single partition). Producers append with :meth:`Bus.send`,
which never blocks so that it can be called from inside a game tick; consumers read with a
:class:`Subscription`, positioned at the end, the beginning or any offset of the log, and drain
what has arrived with the non-blocking :meth:`Subscription.poll`.

Two backends implement it: ``memory://<name>`` (one process, :mod:`shardworld.bus.memory`) and
``kafka://host:port`` (:mod:`shardworld.bus.kafka`). Pick one with :func:`shardworld.bus.open_bus`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: Default largest record value (plus key) one ``send()`` accepts: 16 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: Retention of real-time topics (ghosts, inputs, snapshots): stale after a minute.
REALTIME_RETENTION_MS = 60_000

#: Retention of durable (ownership) topics: handoffs and the cell map are replayed after failover.
DURABLE_RETENTION_MS = 7 * 24 * 3600 * 1000

# Kafka's rule for topic names; the memory backend enforces it too so that a world that runs on
# memory:// in tests cannot pick names Kafka would refuse in production.
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

StartAt = int | Literal["earliest", "latest"]


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from a topic."""

    topic: str
    offset: int
    """Position in the topic's log, 0-based, strictly increasing."""
    key: bytes | None
    value: bytes
    timestamp_ms: int
    """Wall-clock time the record was produced, milliseconds since the Unix epoch."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: one partition, real-time (default) or durable retention."""

    name: str
    durable: bool = False
    """False: real-time (ghosts, inputs, snapshots; kept about 60 s).
    True: ownership (handoffs, the cell map; kept 7 days)."""


class BusError(Exception):
    """A bus operation failed; the message says what and on which bus URL."""


def check_topic_name(name: str) -> None:
    """Raise :class:`BusError` unless ``name`` is a legal topic name (Kafka's rules)."""
    if not _TOPIC_NAME.match(name) or name in (".", ".."):
        raise BusError(
            f"illegal topic name {name!r}: use 1-249 characters from [A-Za-z0-9._-] "
            "(e.g. 'sw.arena.zone.3.rt')"
        )


def check_start(start: StartAt) -> None:
    """Raise ValueError unless ``start`` is ``"earliest"``, ``"latest"`` or an offset >= 0."""
    if isinstance(start, bool) or not (
        start in ("earliest", "latest") or (isinstance(start, int) and start >= 0)
    ):
        raise ValueError(f"start must be 'earliest', 'latest' or an offset >= 0, not {start!r}")


class Subscription(abc.ABC):
    """A reader of one topic, created by :meth:`Bus.subscribe`.

    Records arrive in the background; :meth:`poll` hands over those that have arrived, in offset
    order, without blocking. Call :meth:`close` (or close the bus) when done.
    """

    topic: str

    @abc.abstractmethod
    def poll(self, max_records: int | None = None) -> list[Record]:
        """Return the records that have arrived (at most ``max_records``), in offset order.

        Never blocks; returns ``[]`` when nothing is ready. Raises :class:`BusError` once the
        subscription is closed or its reader failed.
        """

    @abc.abstractmethod
    async def wait(self, timeout: float) -> bool:
        """Wait until at least one record is ready to :meth:`poll` (True) or ``timeout`` s pass."""

    @abc.abstractmethod
    def position(self) -> int:
        """Offset of the next record :meth:`poll` would return."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop reading; idempotent."""


class Bus(abc.ABC):
    """A connection to a message bus: create topics, send records, subscribe to topics.

    Use it from one event loop (one thread). Lifecycle: ``await start()``, then
    ``create_topics`` for every topic this bus will send to, then ``send``/``subscribe``; finally
    ``await close()``.
    """

    url: str
    max_message_bytes: int
    sent_messages: int
    """Records accepted by :meth:`send` so far."""
    sent_bytes: int
    """Bytes of keys plus values accepted by :meth:`send` so far."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect. Raises :class:`BusError` naming the URL if the broker is unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending sends, close every subscription and stop background tasks; idempotent."""

    @abc.abstractmethod
    async def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create topics with one partition each (total order per topic); idempotent.

        A topic must be created through this method on a bus before that bus may send to it.
        """

    @abc.abstractmethod
    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one record; never blocks, never awaits.

        Records sent from one bus to one topic keep their order. Raises :class:`BusError` when
        the bus is not started or is closed, when ``topic`` was not created through
        :meth:`create_topics` on this bus, or when key plus value exceed
        :attr:`max_message_bytes`. Call :meth:`flush` to know the broker has them.
        """

    @abc.abstractmethod
    async def flush(self) -> None:
        """Return once every record sent so far is acknowledged by the broker.

        Raises :class:`BusError` if any of them could not be delivered.
        """

    @abc.abstractmethod
    async def subscribe(self, topic: str, start: StartAt = "latest") -> Subscription:
        """Open a reader of ``topic``; returns once it is positioned.

        ``"latest"``: every record sent (by anyone) after this returns is delivered.
        ``"earliest"``: from the oldest record still kept. An int: from that offset (replay); an
        offset no longer kept starts at the oldest kept, one past the end starts at the end.
        Raises :class:`BusError` if the topic does not exist.
        """

    @abc.abstractmethod
    async def end_offset(self, topic: str) -> int:
        """The offset the next record appended to ``topic`` will get."""

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
