"""One-way latency of a small bus record, from ``send()`` to ``poll()``.

- memory: sender and reader are tasks of this process on one ``memory://`` bus.
- kafka: the reader is another process with its own KafkaBus (as a gateway and a zone would
  be), started with ``--reader``; it reports its figures on stdout as JSON.

Records carry their ``time.monotonic_ns()`` send time (one system-wide clock, so comparable
across processes on one machine) and are paced about 1 ms apart, like ghosts and inputs trickling
out of ticks. The first WARMUP records are not counted (a fresh broker JVM is still compiling
its hot paths). Also measured: a burst of records sent at once, until the last one is polled.

Kafka needs a broker: ``--kafka kafka://127.0.0.1:19092`` or ``SHARDWORLD_KAFKA_URL``
(``make services-up`` starts one); without one the Kafka part is skipped with a note.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import numpy as np

from shardworld.bus import Bus, Subscription, TopicSpec, open_bus

_STAMP = struct.Struct("<qq")  # sequence number, send time (monotonic ns)
PAYLOAD = 64
WARMUP = 500


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop  # what `shardworld run` uses

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _summary(lat_ns: list[int]) -> dict[str, float]:
    a = np.asarray(lat_ns, dtype=np.float64) / 1e6
    return {
        "n": len(lat_ns),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "max_ms": round(float(a.max()), 3),
    }


async def _read(sub: Subscription, n: int, timeout: float) -> tuple[list[int], int]:
    """Poll ``n`` records; return each one's latency and the time the last arrived."""
    lat: list[int] = []
    deadline = time.monotonic() + timeout
    last = 0
    while len(lat) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(lat)} of {n} records arrived within {timeout} s")
        await sub.wait(0.5)
        records = sub.poll()
        now = time.monotonic_ns()
        for r in records:
            lat.append(now - _STAMP.unpack_from(r.value)[1])
        if records:
            last = now
    return lat, last


async def _send_paced(bus: Bus, topic: str, n: int, gap: float) -> None:
    pad = bytes(PAYLOAD - _STAMP.size)
    for i in range(n):
        bus.send(topic, _STAMP.pack(i, time.monotonic_ns()) + pad)
        await asyncio.sleep(gap)
    await bus.flush()


def _burst(bus: Bus, topic: str, n: int) -> int:
    pad = bytes(PAYLOAD - _STAMP.size)
    t0 = time.monotonic_ns()
    for i in range(n):
        bus.send(topic, _STAMP.pack(i, time.monotonic_ns()) + pad)
    return t0


async def bench_memory(n: int, burst: int) -> dict[str, Any]:
    url = f"memory://bench-{uuid.uuid4().hex}"
    bus = open_bus(url)
    await bus.start()
    await bus.create_topics([TopicSpec("bench.paced"), TopicSpec("bench.burst")])
    sub = await bus.subscribe("bench.paced")
    reader = asyncio.create_task(_read(sub, n, 60))
    await _send_paced(bus, "bench.paced", n, 0.001)
    lat, _ = await reader
    sub_b = await bus.subscribe("bench.burst")
    reader_b = asyncio.create_task(_read(sub_b, burst, 60))
    t0 = _burst(bus, "bench.burst", burst)
    _, last = await reader_b
    await bus.close()
    return {
        "paced": _summary(lat),
        "burst": {"n": burst, "seconds": round((last - t0) / 1e9, 4)},
    }


async def reader_main(url: str, topic: str, n: int, burst_topic: str, burst: int) -> None:
    bus = open_bus(url)
    await bus.start()
    sub = await bus.subscribe(topic)
    sub_b = await bus.subscribe(burst_topic)
    print("ready", flush=True)
    lat, _ = await _read(sub, WARMUP + n, 120)
    lat = lat[WARMUP:]
    _, last = await _read(sub_b, burst, 120)
    await bus.close()
    print(json.dumps({"paced": _summary(lat), "burst_last_ns": last}), flush=True)


async def bench_kafka(url: str, n: int, burst: int) -> dict[str, Any]:
    bus = open_bus(url)
    await bus.start()
    tag = uuid.uuid4().hex
    topic, burst_topic = f"bench.{tag}.paced", f"bench.{tag}.burst"
    await bus.create_topics([TopicSpec(topic), TopicSpec(burst_topic)])
    child = subprocess.Popen(
        [sys.executable, __file__, "--reader", url, topic, str(n), burst_topic, str(burst)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    loop = asyncio.get_running_loop()
    try:
        line = await loop.run_in_executor(None, child.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"reader process failed to subscribe: {line!r}")
        await _send_paced(bus, topic, WARMUP + n, 0.001)
        await asyncio.sleep(0.2)
        t0 = _burst(bus, burst_topic, burst)
        await bus.flush()
        flushed = time.monotonic_ns()
        out = await loop.run_in_executor(None, child.stdout.read)
        if child.wait(timeout=60) != 0:
            raise RuntimeError("reader process failed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        await bus.close()
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "paced": result["paced"],
        "burst": {
            "n": burst,
            "seconds_to_flush": round((flushed - t0) / 1e9, 4),
            "seconds_to_last_poll": round((result["burst_last_ns"] - t0) / 1e9, 4),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records (well under 60 s)")
    parser.add_argument("--kafka", default=os.environ.get("SHARDWORLD_KAFKA_URL"))
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--reader", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        url, topic, n, burst_topic, burst = args.reader
        _run(reader_main(url, topic, int(n), burst_topic, int(burst)))
        return
    n = args.records or (1000 if args.quick else 2000)
    burst = 10_000 if args.quick else 50_000
    out: dict[str, Any] = {"bench": "bus", "payload_bytes": PAYLOAD, "gap_ms": 1.0}
    out["memory"] = _run(bench_memory(n, burst))
    print("memory:", json.dumps(out["memory"]), flush=True)
    if args.kafka:
        out["kafka"] = _run(bench_kafka(args.kafka, n, burst))
        print("kafka:", json.dumps(out["kafka"]), flush=True)
    else:
        out["kafka"] = {"skipped": "no broker: pass --kafka URL or set SHARDWORLD_KAFKA_URL"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
