"""The bus contract, run against every backend (``bus_url``: memory and a real Kafka broker).

Every test uses fresh topic names, so runs never collide on a broker that is reused.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from shardworld.bus import Bus, BusError, MemoryBus, Record, Subscription, TopicSpec, open_bus
from shardworld.bus import memory as memory_backend
from shardworld.bus.base import DEFAULT_MAX_MESSAGE_BYTES

SEQ = struct.Struct("<I")


def new_topic(label: str = "t") -> str:
    return f"test.{label}.{uuid.uuid4().hex}"


async def collect(sub: Subscription, n: int, timeout: float = 15.0) -> list[Record]:
    """Poll until ``n`` records arrived or ``timeout`` passed; return what arrived."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: list[Record] = []
    while len(out) < n:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await sub.wait(min(remaining, 1.0))
        out.extend(sub.poll())
    return out


async def settle(sub: Subscription, seconds: float = 0.3) -> list[Record]:
    """Whatever arrives within ``seconds`` (to check that nothing unexpected does)."""
    await sub.wait(seconds)
    await asyncio.sleep(0.05)
    return sub.poll()


@pytest.fixture
async def bus(bus_url: str) -> AsyncIterator[Bus]:
    b = open_bus(bus_url, timeout=10.0)
    await b.start()
    yield b
    await b.close()


async def topic_on(bus: Bus, durable: bool = False) -> str:
    name = new_topic()
    await bus.create_topics([TopicSpec(name, durable=durable)])
    return name


# --- sending and reading -------------------------------------------------------------------------


async def test_send_poll_keeps_order_offsets_keys_and_timestamps(bus: Bus) -> None:
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic)
    before_ms = int(time.time() * 1000)
    for i in range(100):
        bus.send(topic, b"value-%d" % i, key=None if i % 2 else b"key-%d" % i)
    await bus.flush()
    got = await collect(sub, 100)
    after_ms = int(time.time() * 1000)
    assert [r.value for r in got] == [b"value-%d" % i for i in range(100)]
    assert [r.key for r in got] == [None if i % 2 else b"key-%d" % i for i in range(100)]
    assert [r.offset for r in got] == list(range(100))
    assert all(r.topic == topic for r in got)
    assert all(before_ms - 1000 <= r.timestamp_ms <= after_ms + 1000 for r in got)
    assert sub.position() == 100
    assert await settle(sub) == []


async def test_counters_count_records_and_bytes(bus: Bus) -> None:
    topic = await topic_on(bus)
    assert (bus.sent_messages, bus.sent_bytes) == (0, 0)
    bus.send(topic, b"abc")
    bus.send(topic, b"de", key=b"k")
    assert (bus.sent_messages, bus.sent_bytes) == (2, 6)


async def test_many_topics_each_get_their_own_records_in_order(bus: Bus) -> None:
    topics = [new_topic(f"m{i}") for i in range(12)]
    await bus.create_topics([TopicSpec(t, durable=i % 3 == 0) for i, t in enumerate(topics)])
    subs = [await bus.subscribe(t) for t in topics]
    for round_ in range(20):
        for i, t in enumerate(topics):
            bus.send(t, b"%d:%d" % (i, round_))
    await bus.flush()
    for i, sub in enumerate(subs):
        got = await collect(sub, 20)
        assert [r.value for r in got] == [b"%d:%d" % (i, k) for k in range(20)]
        assert [r.offset for r in got] == list(range(20))
        assert sub.topic == topics[i]


async def test_poll_max_records_and_position(bus: Bus) -> None:
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic)
    for i in range(10):
        bus.send(topic, SEQ.pack(i))
    await bus.flush()
    got = await collect(sub, 1)
    # Everything may not have arrived yet: poll whatever is there three at a time.
    got += sub.poll(0)
    seen = list(got)
    while len(seen) < 10:
        await sub.wait(1.0)
        batch = sub.poll(3)
        assert len(batch) <= 3
        seen.extend(batch)
        if seen:
            assert sub.position() >= seen[-1].offset + 1
    assert [SEQ.unpack(r.value)[0] for r in seen] == list(range(10))
    assert sub.position() == 10


async def test_poll_is_non_blocking_and_empty_without_records(bus: Bus) -> None:
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic, "earliest")
    t0 = time.perf_counter()
    for _ in range(100):
        assert sub.poll() == []
    assert time.perf_counter() - t0 < 0.05
    assert sub.position() == 0


async def test_wait_times_out_false_and_wakes_true(bus: Bus) -> None:
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic)
    t0 = time.perf_counter()
    assert await sub.wait(0.25) is False
    assert 0.2 <= time.perf_counter() - t0 < 2.0

    async def send_later() -> None:
        await asyncio.sleep(0.1)
        bus.send(topic, b"wake")

    sender = asyncio.create_task(send_later())
    t0 = time.perf_counter()
    assert await sub.wait(10.0) is True
    assert time.perf_counter() - t0 < 2.0
    await sender
    assert [r.value for r in sub.poll()] == [b"wake"]
    # Ready records make wait() return at once.
    bus.send(topic, b"again")
    assert await sub.wait(10.0) is True
    assert await sub.wait(0.0) is True
    assert [r.value for r in sub.poll()] == [b"again"]


async def test_flush_makes_records_visible_to_end_offset(bus: Bus) -> None:
    topic = await topic_on(bus)
    assert await bus.end_offset(topic) == 0
    for i in range(25):
        bus.send(topic, SEQ.pack(i))
    await bus.flush()
    assert await bus.end_offset(topic) == 25
    await bus.flush()  # nothing pending: returns at once
    assert await bus.end_offset(topic) == 25


# --- positioning -------------------------------------------------------------------------------


async def test_subscribe_latest_sees_only_later_records(bus: Bus) -> None:
    topic = await topic_on(bus)
    for i in range(5):
        bus.send(topic, b"old-%d" % i)
    await bus.flush()
    sub = await bus.subscribe(topic, "latest")
    assert sub.position() == 5 == await bus.end_offset(topic)
    assert await settle(sub) == []
    bus.send(topic, b"new")
    got = await collect(sub, 1)
    assert [(r.offset, r.value) for r in got] == [(5, b"new")]


async def test_subscribe_latest_is_the_default(bus: Bus) -> None:
    topic = await topic_on(bus)
    bus.send(topic, b"before")
    await bus.flush()
    sub = await bus.subscribe(topic)
    bus.send(topic, b"after")
    got = await collect(sub, 1)
    assert [r.value for r in got] == [b"after"]
    assert await settle(sub) == []


async def test_subscribe_earliest_and_int_offset_replay(bus: Bus) -> None:
    topic = await topic_on(bus, durable=True)
    for i in range(10):
        bus.send(topic, SEQ.pack(i))
    await bus.flush()

    earliest = await bus.subscribe(topic, "earliest")
    assert earliest.position() == 0
    got = await collect(earliest, 10)
    assert [r.offset for r in got] == list(range(10))

    replay = await bus.subscribe(topic, 4)
    assert replay.position() == 4
    got = await collect(replay, 6)
    assert [r.offset for r in got] == list(range(4, 10))
    assert [SEQ.unpack(r.value)[0] for r in got] == list(range(4, 10))

    at_end = await bus.subscribe(topic, 10)
    past_end = await bus.subscribe(topic, 1000)  # clamps to the end
    assert at_end.position() == past_end.position() == 10
    bus.send(topic, SEQ.pack(10))
    for sub in (earliest, replay, at_end, past_end):
        got = await collect(sub, 1)
        assert [r.offset for r in got] == [10]


async def test_subscribe_rejects_bad_start(bus: Bus) -> None:
    topic = await topic_on(bus)
    for start in (-1, "first", 1.5, True):
        with pytest.raises(ValueError, match="start"):
            await bus.subscribe(topic, start)  # type: ignore[arg-type]


async def test_two_subscribers_both_get_everything(bus: Bus) -> None:
    topic = await topic_on(bus)
    first = await bus.subscribe(topic)
    second = await bus.subscribe(topic)
    for i in range(50):
        bus.send(topic, SEQ.pack(i))
    await bus.flush()
    for sub in (first, second):
        got = await collect(sub, 50)
        assert [SEQ.unpack(r.value)[0] for r in got] == list(range(50))


async def test_two_buses_into_one_topic_interleave_but_keep_each_order(bus_url: str) -> None:
    a, b, reader = (open_bus(bus_url) for _ in range(3))
    for x in (a, b, reader):
        await x.start()
    try:
        topic = new_topic()
        await a.create_topics([TopicSpec(topic)])
        await b.create_topics([TopicSpec(topic)])  # idempotent, and b may now send to it
        sub = await reader.subscribe(topic)
        for i in range(60):
            a.send(topic, b"a%d" % i, key=b"a")
            b.send(topic, b"b%d" % i, key=b"b")
        await asyncio.gather(a.flush(), b.flush())
        got = await collect(sub, 120)
        assert [r.offset for r in got] == list(range(120))
        assert [r.value for r in got if r.key == b"a"] == [b"a%d" % i for i in range(60)]
        assert [r.value for r in got if r.key == b"b"] == [b"b%d" % i for i in range(60)]
        assert await reader.end_offset(topic) == 120
    finally:
        for x in (a, b, reader):
            await x.close()


async def test_create_topics_is_idempotent(bus: Bus) -> None:
    topic = new_topic()
    await bus.create_topics([TopicSpec(topic, durable=True)])
    bus.send(topic, b"kept")
    await bus.flush()
    await bus.create_topics([TopicSpec(topic, durable=True), TopicSpec(topic)])
    assert await bus.end_offset(topic) == 1
    await bus.create_topics([])


# --- sizes and bursts --------------------------------------------------------------------------


async def test_message_at_the_limit_passes_and_over_it_fails(bus: Bus) -> None:
    assert bus.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 16 * 1024 * 1024
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic)
    key = b"big"
    value = bytes(range(256)) * ((bus.max_message_bytes - len(key)) // 256)
    value += b"\x07" * (bus.max_message_bytes - len(key) - len(value))
    assert len(key) + len(value) == bus.max_message_bytes
    bus.send(topic, value, key=key)
    with pytest.raises(BusError, match="max_message_bytes"):
        bus.send(topic, value + b"!", key=key)
    with pytest.raises(BusError, match="max_message_bytes"):
        bus.send(topic, bytes(bus.max_message_bytes + 1))
    bus.send(topic, b"small after big")
    await bus.flush()
    got = await collect(sub, 2, timeout=30.0)
    assert len(got) == 2
    assert got[0].key == key and got[0].value == value
    assert got[1].value == b"small after big"
    assert bus.sent_messages == 2


async def test_smaller_max_message_bytes_option(bus_url: str) -> None:
    small = open_bus(bus_url, max_message_bytes=1000)
    await small.start()
    try:
        topic = await topic_on(small)
        small.send(topic, bytes(1000))
        with pytest.raises(BusError, match="1001 bytes"):
            small.send(topic, bytes(1001))
        await small.flush()
        assert await small.end_offset(topic) == 1
    finally:
        await small.close()


async def test_burst_of_ten_thousand_arrives_complete_and_in_order(bus: Bus) -> None:
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic)
    n = 10_000
    t0 = time.perf_counter()
    for i in range(n):
        bus.send(topic, SEQ.pack(i) + b"." * 20)
    assert time.perf_counter() - t0 < 2.0  # send() only queues
    await bus.flush()
    got = await collect(sub, n, timeout=30.0)
    assert len(got) == n
    assert [SEQ.unpack_from(r.value)[0] for r in got] == list(range(n))
    assert [r.offset for r in got] == list(range(n))
    assert await settle(sub, 0.1) == []


async def test_delivery_takes_milliseconds_not_a_fetch_timeout(bus: Bus) -> None:
    # A zone handoff must cross the bus within a tick or two; a consumer that waits for a
    # fetch timeout (100 ms and more) instead of being answered when data lands would not.
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic)
    for _ in range(5):  # first requests on fresh connections are slower
        bus.send(topic, b"warm")
        await collect(sub, 1)
    latencies = []
    for i in range(30):
        t0 = time.perf_counter()
        bus.send(topic, SEQ.pack(i))
        got = await collect(sub, 1, timeout=5.0)
        latencies.append(time.perf_counter() - t0)
        assert [SEQ.unpack(r.value)[0] for r in got] == [i]
        await asyncio.sleep(0.002)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.05, latencies


# --- errors and lifecycle ----------------------------------------------------------------------


async def test_send_to_unknown_topic_fails(bus: Bus) -> None:
    with pytest.raises(BusError, match="create_topics"):
        bus.send(new_topic("missing"), b"x")


async def test_send_needs_create_topics_on_this_bus(bus_url: str, bus: Bus) -> None:
    topic = await topic_on(bus)
    other = open_bus(bus_url)
    await other.start()
    try:
        with pytest.raises(BusError, match="not created"):
            other.send(topic, b"x")
        # Reading a topic another bus created needs no create_topics.
        sub = await other.subscribe(topic)
        bus.send(topic, b"y")
        assert [r.value for r in await collect(sub, 1)] == [b"y"]
    finally:
        await other.close()


async def test_subscribe_and_end_offset_of_missing_topic_fail(bus: Bus) -> None:
    with pytest.raises(BusError, match="does not exist"):
        await bus.subscribe(new_topic("missing"))
    with pytest.raises(BusError, match="does not exist"):
        await bus.end_offset(new_topic("missing"))


async def test_illegal_topic_names_fail(bus: Bus) -> None:
    for name in ("", "has space", "slash/y", "x" * 250, ".."):
        with pytest.raises(BusError, match="illegal topic name"):
            await bus.create_topics([TopicSpec(name)])


async def test_lifecycle_send_before_start_and_after_close_fail(bus_url: str) -> None:
    b = open_bus(bus_url)
    with pytest.raises(BusError, match="not started"):
        b.send("t", b"x")
    with pytest.raises(BusError, match="not started"):
        await b.create_topics([TopicSpec(new_topic())])
    await b.start()
    await b.start()  # a second start is harmless
    topic = await topic_on(b)
    sub = await b.subscribe(topic)
    b.send(topic, b"last words")
    await b.close()  # flushes first
    await b.close()  # idempotent
    with pytest.raises(BusError, match="closed"):
        b.send(topic, b"x")
    with pytest.raises(BusError, match="closed"):
        await b.flush()
    with pytest.raises(BusError, match="closed"):
        await b.subscribe(topic)
    with pytest.raises(BusError, match="closed"):
        sub.poll()  # closing the bus closed its subscriptions
    with pytest.raises(BusError, match="closed"):
        await b.start()

    reader = open_bus(bus_url)
    await reader.start()
    try:
        got = await collect(await reader.subscribe(topic, "earliest"), 1)
        assert [r.value for r in got] == [b"last words"]
    finally:
        await reader.close()


async def test_subscription_close_is_idempotent_and_final(bus: Bus) -> None:
    topic = await topic_on(bus)
    sub = await bus.subscribe(topic)
    await sub.close()
    await sub.close()
    with pytest.raises(BusError, match="closed"):
        sub.poll()
    with pytest.raises(BusError, match="closed"):
        await sub.wait(0.01)
    bus.send(topic, b"still fine")  # the bus lives on
    await bus.flush()


async def test_close_before_start_is_fine(bus_url: str) -> None:
    b = open_bus(bus_url)
    await b.close()
    await b.close()
    with pytest.raises(BusError, match="closed"):
        b.send("t", b"x")


async def test_async_context_manager(bus_url: str) -> None:
    async with open_bus(bus_url) as b:
        topic = await topic_on(b)
        b.send(topic, b"x")
    with pytest.raises(BusError, match="closed"):
        b.send(topic, b"x")


# --- opening -----------------------------------------------------------------------------------


async def test_unreachable_kafka_fails_fast_with_the_url() -> None:
    bus = open_bus("kafka://127.0.0.1:1", timeout=2.0)
    t0 = time.perf_counter()
    with pytest.raises(BusError, match=r"kafka://127\.0\.0\.1:1"):
        await bus.start()
    assert time.perf_counter() - t0 < 4.0
    await bus.close()
    with pytest.raises(BusError):
        bus.send("t", b"x")


async def test_silent_broker_times_out_with_the_url() -> None:
    import socket

    # Accepts connections (the kernel's backlog) but never answers a request.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"kafka://127.0.0.1:{silent.getsockname()[1]}"
        bus = open_bus(url, timeout=1.0)
        t0 = time.perf_counter()
        with pytest.raises(BusError, match=rf"{url}.*within 1 s"):
            await bus.start()
        assert time.perf_counter() - t0 < 3.0
        await bus.close()


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "nats://x", "", "kafka:/127.0.0.1:9092", "memory:x"]
)
def test_open_bus_rejects_other_schemes(url: str) -> None:
    with pytest.raises(ValueError, match=r"memory://.*kafka://"):
        open_bus(url)


@pytest.mark.parametrize("url", ["kafka://", "kafka://host", "kafka://host:port", "kafka://h:0"])
def test_open_bus_rejects_malformed_kafka_urls(url: str) -> None:
    with pytest.raises(ValueError, match="kafka://host:port"):
        open_bus(url)


def test_open_bus_picks_the_backend() -> None:
    bus = open_bus("memory://x")
    assert isinstance(bus, MemoryBus) and bus.url == "memory://x"
    from shardworld.bus.kafka import KafkaBus

    kafka = open_bus("kafka://127.0.0.1:9092,127.0.0.2:9093")
    assert isinstance(kafka, KafkaBus)
    assert kafka.servers == ["127.0.0.1:9092", "127.0.0.2:9093"]


# --- backend specifics -------------------------------------------------------------------------


async def test_memory_buses_of_one_name_share_topics_and_others_do_not() -> None:
    name = f"test-{uuid.uuid4().hex}"
    zone, gateway, stranger = (open_bus(u) for u in (f"memory://{name}",) * 2 + ("memory://z",))
    for b in (zone, gateway, stranger):
        await b.start()
    try:
        topic = await topic_on(zone)
        sub = await gateway.subscribe(topic)
        zone.send(topic, b"hello")
        assert [r.value for r in sub.poll()] == [b"hello"]  # immediate, no await needed
        with pytest.raises(BusError, match="does not exist"):
            await stranger.subscribe(topic)
    finally:
        for b in (zone, gateway, stranger):
            await b.close()
        memory_backend.forget_memory_bus(name)


async def test_memory_real_time_log_is_bounded_and_offsets_stay_absolute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_backend, "REALTIME_MAX_RECORDS", 10)
    monkeypatch.setattr(memory_backend, "_COMPACT_MIN", 4)
    now = [1000.0]
    bus = MemoryBus(f"test-{uuid.uuid4().hex}", clock=lambda: now[0])
    await bus.start()
    rt, durable = new_topic("rt"), new_topic("own")
    await bus.create_topics([TopicSpec(rt), TopicSpec(durable, durable=True)])
    lagging = await bus.subscribe(rt, "earliest")
    for i in range(25):
        bus.send(rt, SEQ.pack(i))
        bus.send(durable, SEQ.pack(i))
    assert await bus.end_offset(rt) == 25
    assert lagging.position() == 15  # records 0..14 were dropped before it read them
    assert [r.offset for r in lagging.poll()] == list(range(15, 25))
    replay = await bus.subscribe(rt, 3)  # trimmed offset: starts at the oldest kept
    assert replay.position() == 15
    assert [r.offset for r in (await bus.subscribe(durable, 3)).poll()] == list(range(3, 25))

    now[0] += 61.0  # a minute later everything real-time has expired but the newest record
    bus.send(rt, SEQ.pack(25))
    assert [r.offset for r in replay.poll()] == [25]
    assert [r.offset for r in (await bus.subscribe(rt, "earliest")).poll()] == [25]
    assert [r.timestamp_ms for r in (await bus.subscribe(durable, 0)).poll(1)] == [1_000_000]
    await bus.close()


async def test_kafka_topics_get_the_retention_of_their_kind(kafka_url: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
    from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
        ConfigResource,
        ConfigResourceType,
    )

    bus = open_bus(kafka_url)
    await bus.start()
    rt, durable = new_topic("rt"), new_topic("own")
    await bus.create_topics([TopicSpec(rt), TopicSpec(durable, durable=True)])
    await bus.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in (rt, durable)]
        )
        configs: dict[str, dict[str, str]] = {}
        for response in responses:
            for _code, _msg, _type, name, entries in response.resources:
                configs[name] = {e[0]: e[1] for e in entries}
    finally:
        await admin.close()
    assert configs[rt]["retention.ms"] == "60000"
    assert configs[durable]["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert int(configs[rt]["max.message.bytes"]) > DEFAULT_MAX_MESSAGE_BYTES
