"""Redis store: ``redis://host:port/db`` (or ``rediss://`` for TLS), on redis-py's asyncio client.

Every key of a world starts with ``sw:{<world>}:``; the braces are a Redis Cluster hash tag, so
a world's keys share one slot and every Lua script may touch several of them. docs/store.md lists
the layout.

Each operation is one Redis command or one Lua script (run with EVALSHA, loaded on a NOSCRIPT
reply), so each is atomic. Expiry (leases, load reports) is decided by the **Redis server's
clock**: every script that sets or checks an expiry reads ``TIME`` inside the script, and the
event log's ids are stamped by the server too. Processes on machines with skewed clocks therefore
agree on who holds a lease; ``Lease.expires_at`` is server time. The ``clock`` option is accepted
for parity with the memory store and ignored. Needs Redis 6.2 or newer (exclusive XRANGE).

Operations are not retried inside the store: a write whose reply was lost could apply twice.
Every failure raises :class:`~shardworld.store.base.StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from shardworld.store.base import (
    DEFAULT_TIMEOUT,
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

__all__ = ["RedisStore", "check_redis_url", "key_prefix"]

log = logging.getLogger(__name__)

_MIN_VERSION = (6, 2)

# Milliseconds on the server's clock; every script that deals with expiry starts with it.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Leases live in three hashes and a sorted set (KEYS[1..4]: holder, token, expiry, counter),
# one field or member per lease name. A lease is live while its expiry (ms) is > now.
# The counter hash is never trimmed: HINCRBY on it issues every token, so none is reused.
_ACQUIRE = (
    _NOW
    + """
local name, holder = ARGV[1], ARGV[2]
local expiry = tonumber(redis.call('ZSCORE', KEYS[3], name))
local token
if expiry and expiry > now then
  if redis.call('HGET', KEYS[1], name) ~= holder then
    return false
  end
  token = redis.call('HGET', KEYS[2], name)
else
  token = tostring(redis.call('HINCRBY', KEYS[4], name, 1))
end
local expires = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], name, holder)
redis.call('HSET', KEYS[2], name, token)
redis.call('ZADD', KEYS[3], expires, name)
return {token, tostring(expires)}
"""
)

_HELD = """
local function held(name, holder, token)
  local expiry = tonumber(redis.call('ZSCORE', KEYS[3], name))
  return expiry and expiry > now
    and redis.call('HGET', KEYS[1], name) == holder
    and redis.call('HGET', KEYS[2], name) == token
end
"""

_RENEW = (
    _NOW
    + _HELD
    + """
if not held(ARGV[1], ARGV[2], ARGV[3]) then
  return false
end
local expires = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[3], expires, ARGV[1])
return tostring(expires)
"""
)

_RELEASE = (
    _NOW
    + _HELD
    + """
if not held(ARGV[1], ARGV[2], ARGV[3]) then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)

_GET = (
    _NOW
    + """
local expiry = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1]))
if not expiry or expiry <= now then
  return false
end
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1]),
        tostring(expiry)}
"""
)

# Drops expired leases (their holder and token fields too), then lists the live ones.
_LIST = (
    _NOW
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, name in ipairs(expired) do
  redis.call('HDEL', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local live = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local prefix = ARGV[1]
local out = {}
for i = 1, #live, 2 do
  local name = live[i]
  if string.sub(name, 1, #prefix) == prefix then
    out[#out + 1] = name
    out[#out + 1] = redis.call('HGET', KEYS[1], name)
    out[#out + 1] = redis.call('HGET', KEYS[2], name)
    out[#out + 1] = live[i + 1]
  end
end
return out
"""
)

# Epochs are compared as the decimal strings Python wrote, so no Lua number rounding applies;
# new_epoch > expected_epoch is checked before the call.
_CAS_MAP = """
local stored = redis.call('HGET', KEYS[1], 'epoch')
if ARGV[1] == '' then
  if stored then
    return 0
  end
elseif stored ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'data', ARGV[3])
return 1
"""

# Returns false when saved, else the newer token that fences this write out.
_SAVE_CHECKPOINT = """
local stored = redis.call('HGET', KEYS[1], 'token')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return stored
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'data', ARGV[2], 'meta', ARGV[3])
return false
"""

# Reports: KEYS[1] hash zone -> msgpack, KEYS[2] sorted set zone -> expiry (ms, server clock).
_PUT_REPORT = (
    _NOW
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

_REPORTS = (
    _NOW
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, zone in ipairs(expired) do
  redis.call('HDEL', KEYS[1], zone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('HGETALL', KEYS[1])
"""
)

_SCRIPTS = {
    "acquire": _ACQUIRE,
    "renew": _RENEW,
    "release": _RELEASE,
    "get": _GET,
    "list": _LIST,
    "cas_map": _CAS_MAP,
    "save_checkpoint": _SAVE_CHECKPOINT,
    "put_report": _PUT_REPORT,
    "reports": _REPORTS,
}


def key_prefix(world: str) -> str:
    """The prefix of every Redis key of ``world``: ``sw:{<world>}:``."""
    return f"sw:{{{check_world(world)}}}:"


def check_redis_url(url: str) -> None:
    """Raise ValueError unless ``url`` looks like ``redis[s]://[user:password@]host[:port][/db]``."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {_redact(url)!r}: {exc}") from exc
    db = parts.path.lstrip("/")
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or (port is not None and not 0 < port < 65536)
        or (db and not db.isdigit())
    ):
        raise ValueError(
            f"bad Redis URL {_redact(url)!r}: expected redis://host:port/db (or rediss:// for TLS)"
        )


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _blob(value: object) -> bytes:
    # decode_responses=False: every string reply is bytes.
    if not isinstance(value, bytes):
        raise StoreError(f"unexpected reply from Redis: {type(value).__name__}, not bytes")
    return value


def _ms(ttl_s: float) -> int:
    return max(1, math.ceil(ttl_s * 1000))


class RedisStore(Store):
    """The store behind ``redis://host:port/db``, for world ``world``.

    ``timeout`` (seconds, default :data:`~shardworld.store.base.DEFAULT_TIMEOUT`) bounds
    :meth:`start` and every single reply. ``clock`` is accepted and ignored: expiry follows the
    Redis server's clock (see the module docstring).
    """

    def __init__(
        self,
        url: str,
        world: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_redis_url(url)
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.url = url
        self.world = check_world(world)
        self.timeout = float(timeout)
        self._shown = _redact(url)
        prefix = key_prefix(world)
        self._prefix = prefix
        self._map_key = prefix + "map"
        self._lease_keys = [prefix + f"lease:{part}" for part in ("holder", "token", "expiry")]
        self._lease_counter = prefix + "lease:counter"
        self._events_key = prefix + "events"
        self._report_keys = [prefix + "reports", prefix + "reports:expiry"]
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._closed = False

    # --- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise StoreError(
                f"{what} failed on Redis at {self._shown} (world {self.world!r}): {reason}"
            ) from exc

    def _live(self) -> aioredis.Redis:
        if self._closed:
            raise StoreError(f"store {self._shown} is closed")
        if self._client is None:
            raise StoreError(f"store {self._shown} is not started: await store.start() first")
        return self._client

    async def _run(self, what: str, script: str, keys: list[str], args: list[Any]) -> Any:
        self._live()
        with self._failures(what):
            return await self._scripts[script](keys=keys, args=args)

    async def start(self) -> None:
        if self._closed:
            raise StoreError(f"store {self._shown} is closed and cannot be restarted")
        if self._client is not None:
            return
        # No retries: a script whose reply was lost may have run, and running it again is not
        # always harmless (a second event, a CAS that now reports failure).
        client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        try:
            with self._failures("connecting"):
                async with asyncio.timeout(self.timeout):
                    info = await client.info("server")
        except StoreError:
            await self._close_quietly(client)
            raise
        version = str(info.get("redis_version", "0"))
        numbers = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:2])
        if numbers < _MIN_VERSION:
            await self._close_quietly(client)
            raise StoreError(
                f"Redis at {self._shown} is version {version}; shardworld needs "
                f"{_MIN_VERSION[0]}.{_MIN_VERSION[1]} or newer"
            )
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        self._client = client
        log.info("store %s: connected to Redis %s, world %r", self._shown, version, self.world)

    @staticmethod
    async def _close_quietly(client: aioredis.Redis) -> None:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await self._close_quietly(client)

    # --- the cell map ---------------------------------------------------------------------------

    async def get_map(self) -> tuple[int, bytes] | None:
        client = self._live()
        with self._failures("get_map"):
            epoch, data = await client.hmget(self._map_key, ["epoch", "data"])
        if epoch is None:
            return None
        return int(epoch), _blob(data)

    async def cas_map(self, expected_epoch: int | None, new_epoch: int, data: bytes) -> bool:
        if expected_epoch is not None:
            check_int("expected_epoch", expected_epoch)
        check_int("new_epoch", new_epoch)
        data = check_bytes("map data", data)
        if expected_epoch is not None and new_epoch <= expected_epoch:
            return False
        expected = "" if expected_epoch is None else str(expected_epoch)
        done = await self._run(
            "cas_map", "cas_map", [self._map_key], [expected, str(new_epoch), data]
        )
        return bool(done)

    # --- leases ---------------------------------------------------------------------------------

    def _lease(self, name: str, holder: bytes | str, token: bytes | str, expiry: Any) -> Lease:
        return Lease(name, _text(holder), int(token), float(expiry) / 1000.0)

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        check_name("lease name", name)
        check_name("holder", holder)
        ttl_ms = _ms(check_ttl(ttl_s))
        got = await self._run(
            "acquire_lease",
            "acquire",
            [*self._lease_keys, self._lease_counter],
            [name, holder, ttl_ms],
        )
        if got is None:
            return None
        token, expires = got
        return self._lease(name, holder, token, expires)

    async def renew_lease(self, lease: Lease, ttl_s: float) -> Lease | None:
        ttl_ms = _ms(check_ttl(ttl_s))
        expires = await self._run(
            "renew_lease",
            "renew",
            self._lease_keys,
            [lease.name, lease.holder, str(lease.token), ttl_ms],
        )
        if expires is None:
            return None
        return self._lease(lease.name, lease.holder, str(lease.token), expires)

    async def release_lease(self, lease: Lease) -> bool:
        done = await self._run(
            "release_lease",
            "release",
            self._lease_keys,
            [lease.name, lease.holder, str(lease.token)],
        )
        return bool(done)

    async def get_lease(self, name: str) -> Lease | None:
        check_name("lease name", name)
        got = await self._run("get_lease", "get", self._lease_keys, [name])
        if got is None:
            return None
        holder, token, expires = got
        return self._lease(name, holder, token, expires)

    async def leases(self, prefix: str = "") -> list[Lease]:
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, not {prefix!r}")
        flat = await self._run("leases", "list", self._lease_keys, [prefix])
        found = [
            self._lease(_text(flat[i]), flat[i + 1], flat[i + 2], flat[i + 3])
            for i in range(0, len(flat), 4)
        ]
        found.sort(key=lambda lease: lease.name)
        return found

    # --- checkpoints ----------------------------------------------------------------------------

    def _checkpoint_key(self, zone: str) -> str:
        return self._prefix + "checkpoint:" + zone

    async def save_checkpoint(
        self, zone: str, token: int, data: bytes, meta: dict[str, Any]
    ) -> None:
        check_name("zone", zone)
        check_int("token", token)
        data = check_bytes("checkpoint data", data)
        packed_meta = pack("checkpoint meta", meta)
        newer = await self._run(
            "save_checkpoint",
            "save_checkpoint",
            [self._checkpoint_key(zone)],
            [str(token), data, packed_meta],
        )
        if newer is not None:
            raise FencedError(
                f"checkpoint of zone {zone!r} on {self._shown} (world {self.world!r}) refused: "
                f"token {token} is older than the saved checkpoint's token {int(newer)}"
            )

    async def load_checkpoint(self, zone: str) -> tuple[int, bytes, dict[str, Any]] | None:
        check_name("zone", zone)
        client = self._live()
        with self._failures("load_checkpoint"):
            token, data, meta = await client.hmget(
                self._checkpoint_key(zone), ["token", "data", "meta"]
            )
        if token is None:
            return None
        return int(token), _blob(data), unpack(_blob(meta))

    # --- the event log --------------------------------------------------------------------------

    async def append_event(self, data: dict[str, Any]) -> Event:
        packed = pack("event data", data)
        client = self._live()
        with self._failures("append_event"):
            raw_id = await client.xadd(
                self._events_key, {"d": packed}, maxlen=EVENTS_MAX, approximate=True
            )
        event_id = _text(raw_id)
        ms, _ = parse_event_id(event_id)
        return Event(event_id, ms / 1000.0, unpack(packed))

    async def events(self, after: str | None = None, limit: int = 1000) -> list[Event]:
        if after is not None:
            parse_event_id(after)
        check_int("limit", limit)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        client = self._live()
        with self._failures("events"):
            entries = await client.xrange(
                self._events_key, min="-" if after is None else f"({after}", count=limit
            )
        out = []
        for raw_id, fields in entries or ():
            event_id = _text(_blob(raw_id))
            ms, _ = parse_event_id(event_id)
            out.append(Event(event_id, ms / 1000.0, unpack(_blob((fields or {})[b"d"]))))
        return out

    # --- load reports ---------------------------------------------------------------------------

    async def put_report(self, zone: str, report: dict[str, Any], ttl_s: float) -> None:
        check_name("zone", zone)
        ttl_ms = _ms(check_ttl(ttl_s))
        packed = pack("report", report)
        await self._run("put_report", "put_report", self._report_keys, [zone, packed, ttl_ms])

    async def reports(self) -> dict[str, dict[str, Any]]:
        flat = await self._run("reports", "reports", self._report_keys, [])
        return {_text(flat[i]): unpack(flat[i + 1]) for i in range(0, len(flat), 2)}

    # --- player records -------------------------------------------------------------------------

    def _player_key(self, player_id: int) -> str:
        return self._prefix + f"player:{check_int('player_id', player_id)}"

    async def load_player(self, player_id: int) -> bytes | None:
        key = self._player_key(player_id)
        client = self._live()
        with self._failures("load_player"):
            data = await client.get(key)
        return None if data is None else _blob(data)

    async def save_player(self, player_id: int, data: bytes) -> None:
        key = self._player_key(player_id)
        data = check_bytes("player record", data)
        client = self._live()
        with self._failures("save_player"):
            await client.set(key, data)
