"""In-process bus: ``memory://<name>``.

Every :class:`MemoryBus` opened with the same name in one process shares that name's topics
(a module-level registry), so a zone and a gateway running as tasks of one process talk through
it exactly as they would through Kafka. A send is visible to every subscription at once; there is
no copying per subscriber: a subscription is only an offset into the topic's shared log.

Real-time topics keep a bounded log (the newest :data:`REALTIME_MAX_RECORDS` records,
:data:`REALTIME_MAX_BYTES` bytes, and nothing older than :data:`REALTIME_RETENTION_MS`); durable
ones keep everything up to generous bounds. Offsets stay absolute after trimming, as in Kafka.

Use one event loop per registry name: waiters are woken with futures of the loop they wait on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from shardworld.bus.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DURABLE_RETENTION_MS,
    REALTIME_RETENTION_MS,
    Bus,
    BusError,
    Record,
    StartAt,
    Subscription,
    TopicSpec,
    check_start,
    check_topic_name,
)

__all__ = ["MemoryBus", "MemorySubscription", "forget_memory_bus"]

log = logging.getLogger(__name__)

REALTIME_MAX_RECORDS = 100_000
REALTIME_MAX_BYTES = 256 * 1024 * 1024
DURABLE_MAX_RECORDS = 10_000_000
DURABLE_MAX_BYTES = 2 * 1024 * 1024 * 1024

# Compacting the log list costs a copy of the survivors; doing it only once the dead prefix is
# large and at least half the list keeps appends amortised O(1).
_COMPACT_MIN = 4096


class _Topic:
    """One topic's log: ``log[head:]`` are the kept records, offsets dense from ``first``."""

    __slots__ = (
        "durable",
        "first",
        "head",
        "kept_bytes",
        "log",
        "max_bytes",
        "max_records",
        "name",
        "retention_ms",
        "subscribers",
    )

    def __init__(self, name: str, durable: bool) -> None:
        self.name = name
        self.durable = durable
        self.log: list[Record] = []
        self.head = 0
        self.first = 0
        self.kept_bytes = 0
        self.subscribers: set[MemorySubscription] = set()
        if durable:
            self.max_records = DURABLE_MAX_RECORDS
            self.max_bytes = DURABLE_MAX_BYTES
            self.retention_ms = DURABLE_RETENTION_MS
        else:
            self.max_records = REALTIME_MAX_RECORDS
            self.max_bytes = REALTIME_MAX_BYTES
            self.retention_ms = REALTIME_RETENTION_MS

    @property
    def end(self) -> int:
        return self.first + len(self.log) - self.head

    def append(self, key: bytes | None, value: bytes, now_ms: int) -> None:
        self.log.append(Record(self.name, self.end, key, value, now_ms))
        self.kept_bytes += len(value) + (len(key) if key is not None else 0)
        self._trim(now_ms)
        for sub in self.subscribers:
            sub._wake()

    def _trim(self, now_ms: int) -> None:
        log_ = self.log
        oldest_allowed = now_ms - self.retention_ms
        # Never drop the record just appended: a subscriber must be able to see it.
        while len(log_) - self.head > 1:
            rec = log_[self.head]
            if (
                len(log_) - self.head <= self.max_records
                and self.kept_bytes <= self.max_bytes
                and rec.timestamp_ms >= oldest_allowed
            ):
                break
            self.kept_bytes -= len(rec.value) + (len(rec.key) if rec.key is not None else 0)
            self.head += 1
            self.first += 1
        if self.head >= _COMPACT_MIN and 2 * self.head >= len(log_):
            del log_[: self.head]
            self.head = 0

    def read(self, offset: int, limit: int) -> list[Record]:
        start = self.head + (offset - self.first)
        return self.log[start : start + limit]


class _Registry:
    """The topics of one ``memory://<name>``."""

    __slots__ = ("topics",)

    def __init__(self) -> None:
        self.topics: dict[str, _Topic] = {}


_REGISTRIES: dict[str, _Registry] = {}


def forget_memory_bus(name: str) -> None:
    """Drop every topic of ``memory://<name>`` (for tests; open buses keep what they hold)."""
    _REGISTRIES.pop(name, None)


class MemorySubscription(Subscription):
    """A reader of one in-process topic: an offset into its log plus a waiter."""

    def __init__(self, bus: MemoryBus, topic: _Topic, offset: int) -> None:
        self.topic = topic.name
        self._bus = bus
        self._log = topic
        self._next = offset
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    def _wake(self) -> None:
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def poll(self, max_records: int | None = None) -> list[Record]:
        if self._closed:
            raise BusError(f"subscription to {self.topic!r} on {self._bus.url} is closed")
        topic = self._log
        offset = max(self._next, topic.first)  # records trimmed meanwhile are skipped
        available = topic.end - offset
        if available <= 0:
            return []
        limit = available if max_records is None else min(max_records, available)
        records = topic.read(offset, limit)
        self._next = offset + len(records)
        return records

    async def wait(self, timeout: float) -> bool:
        if self._closed:
            raise BusError(f"subscription to {self.topic!r} on {self._bus.url} is closed")
        if self._log.end > self._next:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return not self._closed and self._log.end > self._next

    def position(self) -> int:
        return max(self._next, self._log.first)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._log.subscribers.discard(self)
        self._bus._subscriptions.discard(self)
        self._wake()


class MemoryBus(Bus):
    """The in-process bus behind ``memory://<name>``.

    ``clock`` returns wall-clock seconds (default :func:`time.time`); it stamps records and ages
    real-time logs. ``timeout`` is accepted for parity with the Kafka bus and unused.
    """

    def __init__(
        self,
        name: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, not {max_message_bytes}")
        self.name = name
        self.url = f"memory://{name}"
        self.max_message_bytes = max_message_bytes
        self.sent_messages = 0
        self.sent_bytes = 0
        self._clock = clock
        self._registry: _Registry | None = None
        self._created: set[str] = set()
        self._subscriptions: set[MemorySubscription] = set()
        self._closed = False

    def _live_registry(self) -> _Registry:
        if self._closed:
            raise BusError(f"bus {self.url} is closed")
        if self._registry is None:
            raise BusError(f"bus {self.url} is not started: await bus.start() first")
        return self._registry

    def _existing(self, topic: str) -> _Topic:
        found = self._live_registry().topics.get(topic)
        if found is None:
            raise BusError(
                f"topic {topic!r} does not exist on {self.url}: create it with create_topics()"
            )
        return found

    async def start(self) -> None:
        if self._closed:
            raise BusError(f"bus {self.url} is closed and cannot be restarted")
        if self._registry is None:
            self._registry = _REGISTRIES.setdefault(self.name, _Registry())
            log.info("bus %s: in-process, %d topics exist", self.url, len(self._registry.topics))

    async def close(self) -> None:
        if self._closed:
            return
        for sub in list(self._subscriptions):
            await sub.close()
        self._closed = True
        self._registry = None

    async def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        registry = self._live_registry()
        for spec in specs:
            check_topic_name(spec.name)
        for spec in specs:
            if spec.name not in registry.topics:
                registry.topics[spec.name] = _Topic(spec.name, spec.durable)
            self._created.add(spec.name)

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        registry = self._live_registry()
        if topic not in self._created:
            raise BusError(
                f"cannot send to topic {topic!r} on {self.url}: "
                "it was not created through create_topics() on this bus"
            )
        found = registry.topics.get(topic)
        if found is None:  # forgotten by forget_memory_bus() while this bus was open
            raise BusError(f"topic {topic!r} no longer exists on {self.url}")
        if type(value) is not bytes:
            value = bytes(value)
        if key is not None and type(key) is not bytes:
            key = bytes(key)
        size = len(value) + (len(key) if key is not None else 0)
        if size > self.max_message_bytes:
            raise BusError(
                f"record of {size} bytes for topic {topic!r} on {self.url} exceeds "
                f"max_message_bytes={self.max_message_bytes}"
            )
        found.append(key, value, int(self._clock() * 1000))
        self.sent_messages += 1
        self.sent_bytes += size

    async def flush(self) -> None:
        self._live_registry()  # delivery is immediate: nothing is ever pending

    async def subscribe(self, topic: str, start: StartAt = "latest") -> MemorySubscription:
        check_start(start)
        found = self._existing(topic)
        if start == "latest":
            offset = found.end
        elif start == "earliest":
            offset = found.first
        else:
            assert isinstance(start, int)
            offset = min(max(start, found.first), found.end)
        sub = MemorySubscription(self, found, offset)
        found.subscribers.add(sub)
        self._subscriptions.add(sub)
        return sub

    async def end_offset(self, topic: str) -> int:
        return self._existing(topic).end
