"""Kafka bus: ``kafka://host:port[,host:port]``, on aiokafka.

Each topic has one partition (total order). One producer per bus: :meth:`KafkaBus.send` only
appends to a deque; a background pump task hands the records to the producer in order, so a game
tick never waits on the network. Each subscription has its own consumer (no consumer group, no
committed offsets: positions are the caller's business, e.g. stored with a checkpoint), and a
background task that long-polls the broker into a bounded buffer which :meth:`poll` drains.

Settings and why (docs/bus.md has more):

- producer ``linger_ms=0``: a record leaves at once; batching happens by itself while a request
  is in flight. ``acks="all"`` costs nothing on one broker and is right on three.
  No compression: payloads are already packed binary and latency matters more than bytes.
- consumer ``fetch_max_wait_ms=100``, ``fetch_min_bytes=1``: the broker answers a fetch as soon
  as one record is there, so delivery takes a few ms; an idle topic costs ten fetches a second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

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

__all__ = ["KafkaBus", "KafkaSubscription", "parse_kafka_url"]

log = logging.getLogger(__name__)

# Room for the record batch header, record framing and the produce request around one record
# of max_message_bytes, so that a value of exactly max_message_bytes is accepted end to end.
_FRAMING_SLACK = 64 * 1024

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3

# A subscription stops fetching while this many records wait to be polled (the broker keeps
# them; nothing is lost, the reader just falls behind) and resumes below half of it.
DEFAULT_MAX_BUFFERED_RECORDS = 100_000
# send() refuses records while this many bytes wait for the pump (broker down or far too slow).
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024


def parse_kafka_url(url: str) -> list[str]:
    """``kafka://h1:p1,h2:p2`` -> ``["h1:p1", "h2:p2"]``; ValueError if malformed."""
    prefix = "kafka://"
    if not url.startswith(prefix):
        raise ValueError(f"not a kafka:// URL: {url!r}")
    rest = url[len(prefix) :].rstrip("/")
    servers = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad Kafka URL {url!r}: expected kafka://host:port[,host:port]")
        servers.append(f"{host}:{port}")
    return servers


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class KafkaSubscription(Subscription):
    """A reader of one Kafka topic: its own consumer and a background fetch task."""

    def __init__(
        self, bus: KafkaBus, topic: str, consumer: Any, position: int, max_buffered: int
    ) -> None:
        self.topic = topic
        self._bus = bus
        self._consumer = consumer
        self._tp = TopicPartition(topic, 0)
        self._buffer: collections.deque[Record] = collections.deque()
        self._next = position
        self._max_buffered = max_buffered
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._error: BaseException | None = None
        self._closed = False
        self._task = asyncio.create_task(self._fetch_forever(), name=f"bus-fetch-{topic}")

    async def _fetch_forever(self) -> None:
        consumer = self._consumer
        tp = self._tp
        buffer = self._buffer
        try:
            while True:
                if len(buffer) >= self._max_buffered:
                    self._space.clear()
                    await self._space.wait()
                batches = await consumer.getmany(tp, timeout_ms=1000)
                messages = batches.get(tp)
                if not messages:
                    continue
                for m in messages:
                    value = m.value if m.value is not None else b""
                    buffer.append(Record(m.topic, m.offset, m.key, value, m.timestamp))
                self._next = messages[-1].offset + 1
                self._ready.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced to the reader by poll()/wait()
            log.error("bus %s: reading topic %r failed: %s", self._bus.url, self.topic, exc)
            self._error = exc
            self._ready.set()

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"subscription to {self.topic!r} on {self._bus.url} is closed")

    def poll(self, max_records: int | None = None) -> list[Record]:
        self._check_open()
        buffer = self._buffer
        if not buffer:
            if self._error is not None:
                raise BusError(
                    f"reading topic {self.topic!r} on {self._bus.url} failed: "
                    f"{_describe_error(self._error)}"
                ) from self._error
            self._ready.clear()
            return []
        if max_records is None or max_records >= len(buffer):
            records = list(buffer)
            buffer.clear()
        else:
            records = [buffer.popleft() for _ in range(max(max_records, 0))]
        if not buffer:
            self._ready.clear()
        if len(buffer) <= self._max_buffered // 2:
            self._space.set()
        return records

    async def wait(self, timeout: float) -> bool:
        self._check_open()
        if self._buffer or self._error is not None:
            return True
        self._ready.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return bool(self._buffer) or self._error is not None

    def position(self) -> int:
        return self._buffer[0].offset if self._buffer else self._next

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._subscriptions.discard(self)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            await self._consumer.stop()
        except Exception as exc:
            log.warning("bus %s: closing consumer of %r: %s", self._bus.url, self.topic, exc)


class KafkaBus(Bus):
    """The bus behind ``kafka://host:port[,host:port]``.

    Options: ``timeout`` (seconds to connect in :meth:`start`, and to wait for a new topic to
    get its leader), ``max_message_bytes``, ``client_id``, ``request_timeout`` (seconds per broker
    request), ``max_pending_bytes`` (send buffer), ``max_buffered_records`` (per subscription).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        client_id: str = "shardworld",
        request_timeout: float = 30.0,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_buffered_records: int = DEFAULT_MAX_BUFFERED_RECORDS,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, not {max_message_bytes}")
        self.url = url
        self.servers = parse_kafka_url(url)
        self.max_message_bytes = max_message_bytes
        self.sent_messages = 0
        self.sent_bytes = 0
        self._timeout = timeout
        self._client_id = client_id
        self._request_timeout_ms = int(request_timeout * 1000)
        self._max_pending_bytes = max_pending_bytes
        self._max_buffered = max_buffered_records
        self._producer: Any = None
        self._admin: Any = None
        self._offsets: Any = None  # a group-less consumer used only for offset look-ups
        self._started = False
        self._closed = False
        self._created: set[str] = set()
        self._existing: set[str] = set()
        self._subscriptions: set[KafkaSubscription] = set()
        # send() -> deque -> pump -> producer; counters tell flush() how far the pump has got.
        self._queue: collections.deque[tuple[str, bytes, bytes | None, int]] = collections.deque()
        self._queued_bytes = 0
        self._enqueued = 0
        self._handed = 0
        self._pump_wakeup: asyncio.Event | None = None
        self._pump_progress: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._delivery_errors: list[BaseException] = []
        self._in_flight: set[asyncio.Future[Any]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise BusError(f"bus {self.url} is closed and cannot be restarted")
        if self._started:
            return
        servers = ",".join(self.servers)
        admin = AIOKafkaAdminClient(
            bootstrap_servers=servers,
            client_id=f"{self._client_id}-admin",
            request_timeout_ms=self._request_timeout_ms,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=servers,
            client_id=self._client_id,
            acks="all",
            linger_ms=0,
            compression_type=None,
            max_request_size=self.max_message_bytes + _FRAMING_SLACK,
            max_batch_size=1024 * 1024,
            request_timeout_ms=self._request_timeout_ms,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await admin.start()
                await producer.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            await self._stop_quietly(producer.stop)
            await self._stop_quietly(admin.close)
            reason = (
                f"no answer within {self._timeout:g} s"
                if isinstance(exc, TimeoutError)
                else _describe_error(exc)
            )
            raise BusError(f"cannot connect to Kafka at {self.url}: {reason}") from exc
        self._admin = admin
        self._producer = producer
        self._pump_wakeup = asyncio.Event()
        self._pump_progress = asyncio.Event()
        self._pump_task = asyncio.create_task(self._pump(), name=f"bus-pump-{self.url}")
        self._started = True
        log.info("bus %s: connected (producer and admin client to %s)", self.url, servers)

    async def close(self) -> None:
        if self._closed:
            return
        if self._started:
            try:
                await asyncio.wait_for(self.flush(), self._request_timeout_ms / 1000)
            except (BusError, TimeoutError) as exc:
                log.error("bus %s: records lost at close: %s", self.url, exc)
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        if self._producer is not None:
            await self._stop_quietly(self._producer.stop)
        if self._offsets is not None:
            await self._stop_quietly(self._offsets.stop)
        if self._admin is not None:
            await self._stop_quietly(self._admin.close)
        if self._started:
            log.info("bus %s: closed after %d records sent", self.url, self.sent_messages)

    async def _stop_quietly(self, stop: Any) -> None:
        try:
            await stop()
        except Exception as exc:
            log.warning("bus %s: while closing: %s", self.url, _describe_error(exc))

    def _check_started(self) -> None:
        if self._closed:
            raise BusError(f"bus {self.url} is closed")
        if not self._started:
            raise BusError(f"bus {self.url} is not started: await bus.start() first")

    # -- topics -----------------------------------------------------------------------------

    def _topic_configs(self, spec: TopicSpec) -> dict[str, str]:
        configs = {
            "max.message.bytes": str(self.max_message_bytes + _FRAMING_SLACK),
            "retention.ms": str(DURABLE_RETENTION_MS if spec.durable else REALTIME_RETENTION_MS),
        }
        if not spec.durable:
            # Retention deletes whole closed segments only; roll real-time ones every minute
            # or a quiet topic would keep its records until the default 1 GiB segment fills.
            configs["segment.ms"] = str(REALTIME_RETENTION_MS)
        return configs

    async def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        self._check_started()
        for spec in specs:
            check_topic_name(spec.name)
        todo = {spec.name: spec for spec in specs if spec.name not in self._created}
        if not todo:
            return
        new_topics = [
            NewTopic(
                name=spec.name,
                num_partitions=1,
                replication_factor=1,
                topic_configs=self._topic_configs(spec),
            )
            for spec in todo.values()
        ]
        try:
            response = await self._admin.create_topics(new_topics)
        except KafkaError as exc:
            raise BusError(
                f"creating topics {sorted(todo)} on {self.url} failed: {_describe_error(exc)}"
            ) from exc
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = entry[2] if len(entry) > 2 and entry[2] else f"error code {code}"
                raise BusError(f"creating topic {name!r} on {self.url} failed: {message}")
        await self._wait_for_leaders(list(todo))
        self._created.update(todo)
        self._existing.update(todo)
        log.debug("bus %s: topics ready: %s", self.url, sorted(todo))

    async def _describe(self, topics: list[str]) -> dict[str, tuple[int, bool]]:
        """topic -> (error code, partition 0 has a leader)."""
        try:
            described = await self._admin.describe_topics(topics)
        except KafkaError as exc:
            raise BusError(
                f"describing topics {topics} on {self.url} failed: {_describe_error(exc)}"
            ) from exc
        result: dict[str, tuple[int, bool]] = {}
        for entry in described:
            partitions = entry.get("partitions") or []
            led = any(p.get("partition") == 0 and p.get("leader", -1) >= 0 for p in partitions)
            result[entry["topic"]] = (entry["error_code"], led)
        return result

    async def _wait_for_leaders(self, topics: list[str]) -> None:
        """Return once every topic has a partition leader, so the first send or fetch succeeds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        pending = topics
        while True:
            state = await self._describe(pending)
            pending = [t for t in pending if state.get(t, (-1, False)) != (0, True)]
            if not pending:
                return
            if loop.time() > deadline:
                raise BusError(
                    f"topics {pending} on {self.url} got no leader within {self._timeout:g} s"
                )
            await asyncio.sleep(0.02)

    async def _require_topic(self, topic: str) -> None:
        if topic in self._existing:
            return
        code, led = (await self._describe([topic])).get(topic, (_UNKNOWN_TOPIC, False))
        if code == _UNKNOWN_TOPIC:
            raise BusError(
                f"topic {topic!r} does not exist on {self.url}: create it with create_topics()"
            )
        if code != 0 or not led:
            await self._wait_for_leaders([topic])
        self._existing.add(topic)

    # -- sending ----------------------------------------------------------------------------

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._check_started()
        if topic not in self._created:
            raise BusError(
                f"cannot send to topic {topic!r} on {self.url}: "
                "it was not created through create_topics() on this bus"
            )
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
        if self._queued_bytes + size > self._max_pending_bytes:
            raise BusError(
                f"send buffer of {self.url} is full ({self._queued_bytes} bytes not yet handed "
                "to the broker): the broker is down or far too slow"
            )
        self._queue.append((topic, value, key, size))
        self._queued_bytes += size
        self._enqueued += 1
        self.sent_messages += 1
        self.sent_bytes += size
        assert self._pump_wakeup is not None
        self._pump_wakeup.set()

    async def _pump(self) -> None:
        assert self._pump_wakeup is not None and self._pump_progress is not None
        wakeup, progress = self._pump_wakeup, self._pump_progress
        queue = self._queue
        producer = self._producer
        while True:
            await wakeup.wait()
            wakeup.clear()
            while queue:
                topic, value, key, size = queue.popleft()
                try:
                    delivery = await producer.send(topic, value, key=key, partition=0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._delivery_errors.append(exc)
                    log.error("bus %s: send to %r failed: %s", self.url, topic, exc)
                else:
                    self._in_flight.add(delivery)
                    delivery.add_done_callback(self._on_delivered)
                finally:
                    self._queued_bytes -= size
                    self._handed += 1
                progress.set()

    def _on_delivered(self, delivery: asyncio.Future[Any]) -> None:
        self._in_flight.discard(delivery)
        if delivery.cancelled():
            self._delivery_errors.append(BusError("delivery cancelled"))
        elif delivery.exception() is not None:
            exc = delivery.exception()
            assert exc is not None
            self._delivery_errors.append(exc)
            log.error("bus %s: delivery failed: %s", self.url, _describe_error(exc))

    async def flush(self) -> None:
        self._check_started()
        target = self._enqueued
        progress = self._pump_progress
        assert progress is not None
        while self._handed < target:
            progress.clear()
            await progress.wait()
        if self._in_flight:
            # Our done-callback was added before asyncio.wait's, so it has run when this returns.
            await asyncio.wait(list(self._in_flight))
        if self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise BusError(
                f"{len(errors)} record(s) sent to {self.url} were not delivered; first: "
                f"{_describe_error(errors[0])}"
            ) from errors[0]

    # -- reading ----------------------------------------------------------------------------

    def _new_consumer(self, client_suffix: str) -> Any:
        fetch_bytes = self.max_message_bytes + _FRAMING_SLACK
        return AIOKafkaConsumer(
            bootstrap_servers=",".join(self.servers),
            client_id=f"{self._client_id}-{client_suffix}",
            group_id=None,
            enable_auto_commit=False,
            # Only reached when an offset was trimmed by retention between seek and fetch.
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            fetch_min_bytes=1,
            fetch_max_bytes=max(fetch_bytes, 52428800),
            max_partition_fetch_bytes=fetch_bytes,
            request_timeout_ms=self._request_timeout_ms,
        )

    async def _offset_reader(self) -> Any:
        if self._offsets is None:
            consumer = self._new_consumer("offsets")
            try:
                await consumer.start()
            except KafkaError as exc:
                await self._stop_quietly(consumer.stop)
                raise BusError(
                    f"cannot connect to Kafka at {self.url}: {_describe_error(exc)}"
                ) from exc
            self._offsets = consumer
        return self._offsets

    async def _bounds(self, consumer: Any, topic: str) -> tuple[int, int]:
        tp = TopicPartition(topic, 0)
        try:
            first = await consumer.beginning_offsets([tp])
            end = await consumer.end_offsets([tp])
        except KafkaError as exc:
            raise BusError(
                f"reading offsets of {topic!r} on {self.url} failed: {_describe_error(exc)}"
            ) from exc
        return int(first[tp]), int(end[tp])

    async def end_offset(self, topic: str) -> int:
        self._check_started()
        await self._require_topic(topic)
        return (await self._bounds(await self._offset_reader(), topic))[1]

    async def subscribe(self, topic: str, start: StartAt = "latest") -> KafkaSubscription:
        check_start(start)
        self._check_started()
        await self._require_topic(topic)
        consumer = self._new_consumer(f"sub-{topic}")
        try:
            async with asyncio.timeout(self._timeout):
                await consumer.start()
            first, end = await self._bounds(consumer, topic)
            if start == "latest":
                position = end
            elif start == "earliest":
                position = first
            else:
                assert isinstance(start, int)
                position = min(max(start, first), end)
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, position)
        except (TimeoutError, KafkaError) as exc:
            await self._stop_quietly(consumer.stop)
            raise BusError(
                f"subscribing to {topic!r} on {self.url} failed: {_describe_error(exc)}"
            ) from exc
        except BaseException:
            await self._stop_quietly(consumer.stop)
            raise
        sub = KafkaSubscription(self, topic, consumer, position, self._max_buffered)
        self._subscriptions.add(sub)
        log.debug("bus %s: subscribed to %r at offset %d", self.url, topic, position)
        return sub
