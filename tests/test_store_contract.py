"""The store contract, run against every backend (``store_url``: memory and a real Redis).

Every test uses a fresh world name, so runs never collide on a Redis that is reused; the Redis
keys a test wrote are deleted after it. Expiry is tested with short real TTLs (0.3 s) because the
Redis store expires by the server's clock, not an injectable one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from shardworld.store import (
    Event,
    FencedError,
    Lease,
    MemoryStore,
    Store,
    StoreError,
    forget_memory_store,
    open_store,
)
from shardworld.store.base import parse_event_id
from shardworld.store.redis import key_prefix

SHORT_TTL = 0.3
# Long enough past SHORT_TTL for a loaded CI machine, short enough to keep the module quick.
PAST_SHORT_TTL = 0.5


def new_world() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


async def delete_world_keys(redis_url: str, world: str) -> list[bytes]:
    """Delete every key that mentions ``world`` in Redis; return their names."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{world}*", count=1000)]
        if keys:
            await client.delete(*keys)
        return keys
    finally:
        await client.aclose()


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[str]:
    name = new_world()
    yield name
    if store_url.startswith("redis"):
        await delete_world_keys(store_url, name)


@pytest.fixture
async def opened(store_url: str, world: str) -> AsyncIterator[Callable[[], Any]]:
    """A factory of started stores on ``store_url`` for ``world``; all are closed afterwards."""
    stores: list[Store] = []

    async def make() -> Store:
        store = open_store(store_url, world, timeout=5.0)
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def store(opened: Callable[[], Any]) -> Store:
    made: Store = await opened()
    return made


# --- the cell map ---------------------------------------------------------------------------------


async def test_map_compare_and_set_sequence(store: Store) -> None:
    assert await store.get_map() is None
    assert not await store.cas_map(0, 1, b"x")  # nothing stored: only None matches
    assert await store.cas_map(None, 1, b"first\x00map")
    assert await store.get_map() == (1, b"first\x00map")
    assert not await store.cas_map(None, 2, b"again")  # a map exists now
    assert await store.cas_map(1, 2, b"second")
    assert not await store.cas_map(1, 3, b"stale")  # stale expected epoch
    assert not await store.cas_map(2, 2, b"same")  # new epoch must be greater
    assert not await store.cas_map(2, 1, b"back")
    assert await store.get_map() == (2, b"second")
    big_epoch = 2**62
    assert await store.cas_map(2, big_epoch, b"")
    assert await store.get_map() == (big_epoch, b"")
    assert await store.cas_map(big_epoch, big_epoch + 1, b"ba")
    assert await store.get_map() == (big_epoch + 1, b"ba")


async def test_map_concurrent_writers_exactly_one_wins(opened: Callable[[], Any]) -> None:
    stores: list[Store] = [await opened() for _ in range(4)]
    expected: int | None = None
    for round_ in range(5):
        new = round_ + 1
        writers = [
            stores[i % len(stores)].cas_map(expected, new, b"writer-%d-%d" % (round_, i))
            for i in range(20)
        ]
        results = await asyncio.gather(*writers)
        assert sum(results) == 1, f"round {round_}: {results}"
        winner = results.index(True)
        for s in stores:
            assert await s.get_map() == (new, b"writer-%d-%d" % (round_, winner))
        expected = new


# --- leases ---------------------------------------------------------------------------------------


async def test_lease_is_exclusive_under_concurrency(opened: Callable[[], Any]) -> None:
    stores: list[Store] = [await opened() for _ in range(4)]
    for round_ in range(3):
        name = f"zone:race{round_}"
        racers = [stores[i % len(stores)].acquire_lease(name, f"node-{i}", 5.0) for i in range(24)]
        granted = [lease for lease in await asyncio.gather(*racers) if lease is not None]
        assert len(granted) == 1
        winner = granted[0]
        assert winner.name == name and winner.token >= 1
        for s in stores:
            assert await s.get_lease(name) == winner


async def test_acquire_by_the_holder_renews_and_keeps_the_token(store: Store) -> None:
    before = time.time()
    first = await store.acquire_lease("coordinator", "node-a", 5.0)
    after = time.time()
    assert first is not None
    assert (first.name, first.holder) == ("coordinator", "node-a")
    assert before + 5.0 - 0.5 <= first.expires_at <= after + 5.0 + 0.5
    again = await store.acquire_lease("coordinator", "node-a", 10.0)
    assert again is not None
    assert again.token == first.token
    assert again.expires_at > first.expires_at
    assert await store.acquire_lease("coordinator", "node-b", 5.0) is None
    assert await store.get_lease("coordinator") == again


async def test_lease_expiry_and_takeover_with_a_higher_token(opened: Callable[[], Any]) -> None:
    a: Store = await opened()
    b: Store = await opened()
    old = await a.acquire_lease("zone:z1", "node-a", SHORT_TTL)
    assert old is not None
    assert await b.acquire_lease("zone:z1", "node-b", 5.0) is None
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await b.get_lease("zone:z1") is None
    assert await b.leases() == []
    new = await b.acquire_lease("zone:z1", "node-b", 5.0)
    assert new is not None
    assert new.token > old.token
    assert new.holder == "node-b"
    # The old holder has lost it for good.
    assert await a.renew_lease(old, 5.0) is None
    assert not await a.release_lease(old)
    assert await a.acquire_lease("zone:z1", "node-a", 5.0) is None
    assert await a.get_lease("zone:z1") == new


async def test_renew_after_expiry_returns_none_even_if_nobody_took_it(store: Store) -> None:
    lease = await store.acquire_lease("zone:z2", "node-a", SHORT_TTL)
    assert lease is not None
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await store.renew_lease(lease, 5.0) is None
    again = await store.acquire_lease("zone:z2", "node-a", 5.0)
    assert again is not None and again.token > lease.token


async def test_renew_extends_the_lease_and_keeps_the_token(store: Store) -> None:
    lease = await store.acquire_lease("zone:z3", "node-a", 0.5)
    assert lease is not None
    await asyncio.sleep(0.1)
    renewed = await store.renew_lease(lease, 1.5)
    assert renewed is not None
    assert (renewed.name, renewed.holder, renewed.token) == (lease.name, lease.holder, lease.token)
    assert renewed.expires_at > lease.expires_at
    await asyncio.sleep(0.5)  # past the first expiry, not the renewed one
    assert await store.get_lease("zone:z3") == renewed
    assert await store.renew_lease(renewed, 5.0) is not None


async def test_renew_and_release_need_the_same_holder_and_token(store: Store) -> None:
    lease = await store.acquire_lease("zone:z4", "node-a", 5.0)
    assert lease is not None
    forged = [
        Lease(lease.name, lease.holder, lease.token + 1, lease.expires_at),
        Lease(lease.name, lease.holder, lease.token - 1, lease.expires_at),
        Lease(lease.name, "node-b", lease.token, lease.expires_at),
        Lease("zone:other", lease.holder, lease.token, lease.expires_at),
    ]
    for bad in forged:
        assert await store.renew_lease(bad, 5.0) is None
        assert not await store.release_lease(bad)
    assert await store.get_lease("zone:z4") == lease


async def test_release_frees_and_tokens_are_never_reused(opened: Callable[[], Any]) -> None:
    a: Store = await opened()
    b: Store = await opened()
    tokens = []
    for i in range(6):
        holder_store, holder = (a, "node-a") if i % 2 else (b, "node-b")
        lease = await holder_store.acquire_lease("coordinator", holder, 5.0)
        assert lease is not None
        tokens.append(lease.token)
        assert await holder_store.release_lease(lease)
        assert await a.get_lease("coordinator") is None
        assert not await holder_store.release_lease(lease)  # already free
        assert await holder_store.renew_lease(lease, 5.0) is None
    assert all(x < y for x, y in itertools.pairwise(tokens))


async def test_leases_by_prefix(store: Store) -> None:
    names = ["zone:b", "zone:a", "coordinator", "zone:*x", "zonex", "zone:c"]
    for name in names:
        ttl = SHORT_TTL if name == "zone:c" else 5.0
        assert await store.acquire_lease(name, f"holder-of-{name}", ttl) is not None
    listed = await store.leases("zone:")
    assert [lease.name for lease in listed] == ["zone:*x", "zone:a", "zone:b", "zone:c"]
    assert all(lease.holder == f"holder-of-{lease.name}" for lease in listed)
    assert [lease.name for lease in await store.leases()] == sorted(names)
    # A prefix is plain text, not a pattern.
    assert [lease.name for lease in await store.leases("zone:*")] == ["zone:*x"]
    assert await store.leases("zone:[ab]") == []
    assert await store.leases("nothing") == []
    await asyncio.sleep(PAST_SHORT_TTL)
    assert [lease.name for lease in await store.leases("zone:")] == ["zone:*x", "zone:a", "zone:b"]
    each = {lease.name: lease for lease in await store.leases()}
    for name, lease in each.items():
        assert await store.get_lease(name) == lease


# --- checkpoints ----------------------------------------------------------------------------------


async def test_checkpoints_are_fenced_by_token(opened: Callable[[], Any]) -> None:
    old_owner: Store = await opened()
    new_owner: Store = await opened()
    assert await old_owner.load_checkpoint("z1") is None
    await old_owner.save_checkpoint("z1", 5, b"one", {"offset": 10})
    assert await new_owner.load_checkpoint("z1") == (5, b"one", {"offset": 10})
    await old_owner.save_checkpoint("z1", 5, b"two", {"offset": 20})  # same token overwrites
    assert await new_owner.load_checkpoint("z1") == (5, b"two", {"offset": 20})
    await new_owner.save_checkpoint("z1", 7, b"three", {"offset": 30})
    with pytest.raises(FencedError, match="z1"):
        await old_owner.save_checkpoint("z1", 5, b"late", {"offset": 25})
    with pytest.raises(StoreError):  # FencedError is a StoreError
        await old_owner.save_checkpoint("z1", 6, b"late", {"offset": 26})
    assert await old_owner.load_checkpoint("z1") == (7, b"three", {"offset": 30})
    await old_owner.save_checkpoint("z2", 1, b"other zone", {})
    assert await new_owner.load_checkpoint("z2") == (1, b"other zone", {})
    assert await new_owner.load_checkpoint("z1") == (7, b"three", {"offset": 30})


async def test_big_checkpoint_round_trip(store: Store) -> None:
    data = os.urandom(8 * 1024 * 1024)
    meta: dict[str, Any] = {
        "offsets": {"sw.w.zone.1.own": 123456789012},
        "cells": [1, 2, 3],
        "tick": 42,
        "rate": 0.5,
        "raw": b"\x00\xff",
        "none": None,
        "per_cell": {7: "int keys inside"},
    }
    await store.save_checkpoint("zone:big", 3, data, meta)
    loaded = await store.load_checkpoint("zone:big")
    assert loaded is not None
    token, got, got_meta = loaded
    assert token == 3
    assert got == data
    assert got_meta == meta


# --- the event log --------------------------------------------------------------------------------


async def test_events_keep_order_and_page_with_after(store: Store) -> None:
    before = time.time()
    appended = [
        await store.append_event({"i": i, "cells": [i, i + 1], "from": "z1", "raw": b"\x01"})
        for i in range(25)
    ]
    after_time = time.time()
    assert all(isinstance(e, Event) for e in appended)
    ids = [parse_event_id(e.id) for e in appended]
    assert ids == sorted(ids) and len(set(ids)) == 25
    assert all(before - 1.0 <= e.time <= after_time + 1.0 for e in appended)
    assert await store.events() == appended
    paged: list[Event] = []
    cursor: str | None = None
    while True:
        page = await store.events(after=cursor, limit=7)
        assert len(page) <= 7
        paged.extend(page)
        if len(page) < 7:
            break
        cursor = page[-1].id
    assert paged == appended
    assert await store.events(after=appended[-1].id) == []
    assert await store.events(after=appended[9].id, limit=3) == appended[10:13]
    assert [e.data["i"] for e in await store.events(limit=2)] == [0, 1]


async def test_events_reject_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.events(limit=0)
    with pytest.raises(ValueError):
        await store.events(after="not-an-id")
    with pytest.raises(TypeError):
        await store.append_event({"bad": object()})
    with pytest.raises(TypeError):
        await store.save_checkpoint("z", 1, b"", {"bad": {1, 2}})
    with pytest.raises(TypeError):
        await store.put_report("z", {"bad": object()}, 1.0)
    with pytest.raises(ValueError):
        await store.put_report("z", {}, 0)
    with pytest.raises(ValueError):
        await store.acquire_lease("l", "h", -1.0)
    assert await store.events() == []


# --- load reports ---------------------------------------------------------------------------------


async def test_reports_are_the_latest_per_zone_and_expire(store: Store) -> None:
    assert await store.reports() == {}
    await store.put_report("z1", {"tick_p99_ms": 9.5, "entities": 100}, 5.0)
    await store.put_report("z2", {"tick_p99_ms": 3.0, "cells": {17: 4.0}}, SHORT_TTL)
    await store.put_report("z1", {"tick_p99_ms": 12.0, "entities": 120}, 5.0)
    assert await store.reports() == {
        "z1": {"tick_p99_ms": 12.0, "entities": 120},
        "z2": {"tick_p99_ms": 3.0, "cells": {17: 4.0}},
    }
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await store.reports() == {"z1": {"tick_p99_ms": 12.0, "entities": 120}}
    await store.put_report("z2", {"back": True}, 5.0)
    assert await store.reports() == {
        "z1": {"tick_p99_ms": 12.0, "entities": 120},
        "z2": {"back": True},
    }


# --- player records -------------------------------------------------------------------------------


async def test_player_records(opened: Callable[[], Any]) -> None:
    a: Store = await opened()
    b: Store = await opened()
    assert await a.load_player(1) is None
    await a.save_player(1, b"alice")
    await a.save_player(2**40, b"\x00big id")
    await a.save_player(3, b"")
    assert await b.load_player(1) == b"alice"
    await b.save_player(1, b"alice v2")
    assert await a.load_player(1) == b"alice v2"
    assert await a.load_player(2**40) == b"\x00big id"
    assert await a.load_player(3) == b""
    assert await a.load_player(4) is None


# --- worlds, lifecycle, URLs ----------------------------------------------------------------------


async def test_two_worlds_do_not_see_each_other(store_url: str, world: str) -> None:
    other_world = new_world()
    a = open_store(store_url, world)
    b = open_store(store_url, other_world)
    try:
        await a.start()
        await b.start()
        assert await a.cas_map(None, 4, b"map of a")
        lease_a = await a.acquire_lease("coordinator", "node-a", 5.0)
        assert lease_a is not None
        await a.save_checkpoint("z1", 9, b"ckpt", {})
        await a.append_event({"e": 1})
        await a.put_report("z1", {"r": 1}, 5.0)
        await a.save_player(1, b"p")

        assert await b.get_map() is None
        assert await b.get_lease("coordinator") is None
        assert await b.leases() == []
        assert await b.load_checkpoint("z1") is None
        assert await b.events() == []
        assert await b.reports() == {}
        assert await b.load_player(1) is None
        # Same names, separate state: b's writes succeed independently.
        assert await b.cas_map(None, 1, b"map of b")
        lease_b = await b.acquire_lease("coordinator", "node-b", 5.0)
        assert lease_b is not None
        await b.save_checkpoint("z1", 1, b"b ckpt", {})
        assert await a.get_map() == (4, b"map of a")
        assert await a.get_lease("coordinator") == lease_a
        assert await a.load_checkpoint("z1") == (9, b"ckpt", {})
    finally:
        await a.close()
        await b.close()
        if store_url.startswith("redis"):
            await delete_world_keys(store_url, other_world)


async def test_lifecycle_errors(store_url: str, world: str) -> None:
    store = open_store(store_url, world)
    assert (store.url, store.world) == (store_url, world)
    with pytest.raises(StoreError, match="not started"):
        await store.get_map()
    async with store:
        assert await store.get_map() is None
        await store.start()  # starting twice is harmless
    with pytest.raises(StoreError, match="closed"):
        await store.get_map()
    with pytest.raises(StoreError, match="closed"):
        await store.acquire_lease("l", "h", 1.0)
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.start()


async def test_unreachable_redis_fails_start_quickly() -> None:
    store = open_store("redis://127.0.0.1:1/0", new_world(), timeout=2.0)
    began = time.monotonic()
    with pytest.raises(StoreError, match=r"redis://127\.0\.0\.1:1/0"):
        await store.start()
    assert time.monotonic() - began < 3.0
    await store.close()


async def test_unreachable_redis_message_hides_the_password() -> None:
    store = open_store("redis://:s3cret@127.0.0.1:1/0", new_world(), timeout=2.0)
    with pytest.raises(StoreError) as caught:
        await store.start()
    assert "s3cret" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "kafka://127.0.0.1:9092",
        "http://127.0.0.1:6379",
        "memory:/x",
        "redis:/127.0.0.1:6379/0",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:70000/0",
        "redis://:6379/0",
        "redis://127.0.0.1:6379/db0",
    ],
)
def test_bad_urls_raise_value_error(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_store(url, "w")
    if not url.startswith("redis"):
        assert "memory://" in str(caught.value) and "redis://" in str(caught.value)


@pytest.mark.parametrize("bad", ["", "a b", "w{x}", "w:x", "x" * 101, "wörld"])
def test_bad_world_names_raise_value_error(store_url: str, bad: str) -> None:
    with pytest.raises(ValueError, match="world"):
        open_store(store_url, bad)


# --- backend specifics ----------------------------------------------------------------------------


async def test_memory_stores_of_one_name_share_state_and_follow_the_clock() -> None:
    name = f"test-{uuid.uuid4().hex}"
    now = [1000.0]

    def clock() -> float:
        return now[0]

    a = open_store(f"memory://{name}", "w", clock=clock)
    b = MemoryStore(name, "w", clock=clock)
    try:
        await a.start()
        await b.start()
        lease = await a.acquire_lease("zone:z1", "node-a", 10.0)
        assert lease == Lease("zone:z1", "node-a", 1, 1010.0)
        assert await b.get_lease("zone:z1") == lease
        await b.put_report("z1", {"x": 1}, 5.0)
        event = await b.append_event({"e": 1})
        assert event.time == 1000.0 and event.id == "1000000-0"
        assert (await a.append_event({"e": 2})).id == "1000000-1"  # same millisecond
        now[0] = 999.0  # a clock stepping back still gives increasing ids
        assert (await a.append_event({"e": 3})).id == "1000000-2"
        now[0] = 1009.999
        assert await b.get_lease("zone:z1") == lease
        assert await a.reports() == {}
        now[0] = 1010.0
        assert await b.get_lease("zone:z1") is None
        taken = await b.acquire_lease("zone:z1", "node-b", 10.0)
        assert taken == Lease("zone:z1", "node-b", 2, 1020.0)
    finally:
        await a.close()
        await b.close()
        forget_memory_store(name)


async def test_redis_keys_are_namespaced_by_world(redis_url: str) -> None:
    world = new_world()
    store = open_store(redis_url, world)
    try:
        await store.start()
        assert await store.cas_map(None, 1, b"m")
        lease = await store.acquire_lease("zone:z1", "n", 5.0)
        assert lease is not None
        await store.save_checkpoint("z1", lease.token, b"c", {})
        await store.append_event({"e": 1})
        await store.put_report("z1", {}, 5.0)
        await store.save_player(1, b"p")
    finally:
        await store.close()
        keys = await delete_world_keys(redis_url, world)
    prefix = key_prefix(world).encode()
    assert prefix == b"sw:{" + world.encode() + b"}:"
    assert len(keys) >= 8
    assert all(key.startswith(prefix) for key in keys), keys
