"""Messages between processes: ordered, replayable topics behind one small interface.

``open_bus("memory://<name>")`` gives the in-process bus (tests, the embedded world);
``open_bus("kafka://host:port")`` gives the Kafka bus (several processes and nodes). The code
that uses a bus is the same for both; docs/bus.md describes the interface and topic layout.
"""

from __future__ import annotations

from typing import Any

from shardworld.bus.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Bus,
    BusError,
    Record,
    StartAt,
    Subscription,
    TopicSpec,
)
from shardworld.bus.memory import MemoryBus

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Bus",
    "BusError",
    "MemoryBus",
    "Record",
    "StartAt",
    "Subscription",
    "TopicSpec",
    "open_bus",
]

_SCHEMES = "memory://<name> or kafka://host:port[,host:port]"


def open_bus(url: str, **options: Any) -> Bus:
    """Make the bus a URL names; call ``await bus.start()`` next.

    ``memory://<name>``: in-process, shared by every bus of that name in this process.
    ``kafka://host:port[,host:port]``: Kafka brokers. Options go to the backend's constructor
    (both take ``max_message_bytes`` and ``timeout``). Any other URL raises ValueError: a world
    that was meant to span processes must never fall back to a private in-memory bus.
    """
    if not isinstance(url, str):
        raise ValueError(f"bus URL must be a string ({_SCHEMES}), not {url!r}")
    if url.startswith("memory://"):
        name = url[len("memory://") :] or "default"
        return MemoryBus(name, **options)
    if url.startswith("kafka://"):
        from shardworld.bus.kafka import KafkaBus  # aiokafka is imported only when used

        return KafkaBus(url, **options)
    raise ValueError(f"unsupported bus URL {url!r}: use {_SCHEMES}")
