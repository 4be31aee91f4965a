"""The coordinator's durable state for one world behind one small interface.

``open_store("memory://<name>", world)`` gives the in-process store (tests, the embedded world);
``open_store("redis://host:port/db", world)`` gives the Redis store (several processes and
nodes). The code that uses a store is the same for both; docs/store.md describes the interface,
its guarantees and the Redis key layout.
"""

from __future__ import annotations

from typing import Any

from shardworld.store.base import (
    DEFAULT_TIMEOUT,
    EVENTS_MAX,
    Event,
    FencedError,
    Lease,
    Store,
    StoreError,
)
from shardworld.store.memory import MemoryStore, forget_memory_store

__all__ = [
    "DEFAULT_TIMEOUT",
    "EVENTS_MAX",
    "Event",
    "FencedError",
    "Lease",
    "MemoryStore",
    "Store",
    "StoreError",
    "forget_memory_store",
    "open_store",
]

_SCHEMES = "memory://<name> or redis://host:port/db (rediss:// for TLS)"


def open_store(url: str, world: str, **options: Any) -> Store:
    """Make the store a URL names, for world ``world``; call ``await store.start()`` next.

    ``memory://<name>``: in-process, shared by every store of that name in this process.
    ``redis://host:port/db``: a Redis server (6.2 or newer). Options go to the backend's
    constructor (both take ``timeout`` and ``clock``; the Redis store ignores ``clock`` and
    expires by the server's clock). Any other URL raises ValueError: a world meant to span
    processes must never fall back to a private in-memory store. A malformed world name raises
    ValueError too.
    """
    if not isinstance(url, str):
        raise ValueError(f"store URL must be a string ({_SCHEMES}), not {url!r}")
    if url.startswith("memory://"):
        name = url[len("memory://") :] or "default"
        return MemoryStore(name, world, **options)
    if url.startswith(("redis://", "rediss://")):
        from shardworld.store.redis import RedisStore  # redis is imported only when used

        return RedisStore(url, world, **options)
    raise ValueError(f"unsupported store URL {url!r}: use {_SCHEMES}")
