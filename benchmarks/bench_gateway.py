"""Snapshot delivery by the gateway against a plain `await websocket.send()` per player.

One process serves, another process holds the players: P real WebSocket connections (raw
asyncio sockets that do the handshake, say HELLO and then only count bytes, so the client
side costs as little as possible). The server side pushes snapshot batches of 200-byte
payloads to every player:

- ours: the real Gateway (frames built for the whole batch in one kernel, written straight
  to each connection's transport);
- baseline: a minimal websockets server that does ``await ws.send(message)`` per player.

Both run in this process, one after the other, on the same machine and the same clients
code; each is measured in CPU seconds of this process per frame delivered. It also measures
the memory an idle joined connection costs the gateway.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import resource
import struct
import subprocess
import sys
import time
from typing import Any

import numpy as np

from shardworld.gateway import Gateway, GatewayConfig, WorldInfo
from shardworld.protocol.messages import Hello, encode, encode_snapshot
from shardworld.zone.sink import SnapshotBatch

PAYLOAD = 200
PERIOD = 1.0 / 20.0


def _raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- the players (a separate process) -------------------------------------------------------


class _Counter(asyncio.Protocol):
    def __init__(self, hello: bytes, totals: list[int]) -> None:
        self.hello = hello
        self.totals = totals
        self.buf = b""
        self.upgraded = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.totals[0] += len(data)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        self.upgraded = True
        self.totals[1] += 1
        self.totals[0] += len(self.buf) - end - 4
        assert self.transport is not None
        self.transport.write(_masked_frame(self.hello))


def _masked_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes((0x82, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x82, 0xFE, n)
    arr = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    return head + mask + arr.tobytes()


async def _players(host: str, port: int, count: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    totals = [0, 0]
    hello = encode(Hello(1, "", "", "bench"))
    for i in range(count):
        await loop.create_connection(lambda: _Counter(hello, totals), host, port)
        if i % 200 == 199:
            await asyncio.sleep(0.01)
    print(json.dumps({"ready": totals[1]}), flush=True)
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(0.5)
    print(json.dumps({"bytes": totals[0], "upgraded": totals[1]}), flush=True)


def players_main(host: str, port: int, count: int, seconds: float) -> None:
    _raise_fd_limit()
    import uvloop

    uvloop.run(_players(host, port, count, seconds))


# --- the synthetic world behind the gateway ------------------------------------------------


class SyntheticWorld:
    """A WorldPort with no simulation: joins hand out ids; batches are pushed by the bench."""

    def __init__(self) -> None:
        self.next_id = 1
        self.snap: list[Any] = []

    def info(self) -> WorldInfo:
        return WorldInfo("bench", (0.0, 0.0, 1.0, 1.0), 20.0, 20.0, 0.01, (), (), 0, 0, 128)

    async def join(self, player_id: int, entity_id: int | None = None) -> tuple[int, bool]:
        eid = self.next_id
        self.next_id += 1
        return eid, False

    def leave(self, entity_id: int) -> None:
        return None

    def alive(self, entity_id: int) -> bool:
        return True

    def submit_input(self, entity_id: int, seq: int, ix: float, iy: float, actions: int) -> bool:
        return True

    def send_message(self, entity_id: int, kind: str, body: Any) -> None:
        return None

    def request_resync(self, entity_id: int) -> None:
        return None

    def subscribe(self, snapshots: Any, messages: Any) -> None:
        self.snap.append(snapshots)

    def server_time(self) -> float:
        return time.monotonic()


def make_batch(tick: int, ids: np.ndarray) -> SnapshotBatch:
    m = len(ids)
    buf = np.full(m * PAYLOAD, 7, np.uint8)
    # Flags byte: the first snapshot a player gets is a full (RESET) one, then deltas.
    buf[::PAYLOAD] = 1 if tick == 1 else 0
    return SnapshotBatch(
        zone="bench",
        tick=tick,
        observer_ids=ids.astype(np.uint64),
        owners=ids.astype(np.uint64),
        input_acks=np.zeros(m, np.uint32),
        buf=buf,
        off=np.arange(m + 1, dtype=np.int64) * PAYLOAD,
    )


def _start_players(port: int, count: int, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--players-only", str(port), str(count), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("player process failed to start")
    return proc


def _finish_players(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=120)
    return dict(json.loads(out.strip().splitlines()[-1]))


async def _pump(deliver: Any, ids: np.ndarray, rounds: int) -> tuple[float, float]:
    """Push ``rounds`` batches through ``deliver``; returns (cpu seconds, wall seconds)."""
    loop = asyncio.get_running_loop()
    batches = [make_batch(r + 1, ids) for r in range(rounds)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start = loop.time()
    for r, batch in enumerate(batches):
        res = deliver(batch)
        if asyncio.iscoroutine(res):
            await res
        # Batches come at 20 Hz, as from a zone; the loop flushes in between (our CPU too).
        await asyncio.sleep(max(0.0, start + (r + 1) * PERIOD - loop.time()))
    await asyncio.sleep(0.05)
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def run_ours(players: int, rounds: int) -> dict[str, Any]:
    world = SyntheticWorld()
    gw = Gateway(world, GatewayConfig(port=0, dev=True, send_buffer_limit=1 << 20))
    await gw.start()
    port = int(gw.url.rsplit(":", 1)[1])
    proc = await asyncio.to_thread(_start_players, port, players, rounds * PERIOD + 8.0)
    for _ in range(200):
        if gw.stats().get("joined", 0) >= players:
            break
        await asyncio.sleep(0.05)
    ids = np.arange(1, world.next_id, dtype=np.uint64)
    listener = world.snap[0]
    cpu, wall = await _pump(listener, ids, rounds)
    st = gw.stats()
    sent = int(st.get("snapshots_sent", 0))
    await asyncio.sleep(0.2)
    got = await asyncio.to_thread(_finish_players, proc)
    await gw.stop()
    return {
        "players": len(ids),
        "frames": sent,
        "dropped": int(st.get("snapshots_dropped", 0)) + int(st.get("snapshots_skipped", 0)),
        "cpu_s": cpu,
        "wall_s": wall,
        "client_bytes": got.get("bytes", 0),
    }


async def run_baseline(players: int, rounds: int) -> dict[str, Any]:
    from websockets.asyncio.server import ServerConnection, serve

    conns: list[ServerConnection] = []
    ready = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the HELLO
        conns.append(ws)
        if len(conns) >= players:
            ready.set()
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, compression=None, max_queue=4)
    port = next(iter(server.sockets)).getsockname()[1]
    proc = await asyncio.to_thread(_start_players, port, players, rounds * PERIOD + 8.0)
    await asyncio.wait_for(ready.wait(), 30)
    sent = 0

    async def deliver(batch: SnapshotBatch) -> None:
        nonlocal sent
        for i, ws in enumerate(conns):
            await ws.send(encode_snapshot(batch.tick, 0, batch.payload(i)))
            sent += 1

    cpu, wall = await _pump(deliver, np.arange(1, players + 1), rounds)
    got = await asyncio.to_thread(_finish_players, proc)
    server.close()
    await server.wait_closed()
    return {
        "players": players,
        "frames": sent,
        "cpu_s": cpu,
        "wall_s": wall,
        "client_bytes": got.get("bytes", 0),
    }


async def idle_memory(count: int) -> dict[str, Any]:
    world = SyntheticWorld()
    gw = Gateway(world, GatewayConfig(port=0, dev=True))
    await gw.start()
    port = int(gw.url.rsplit(":", 1)[1])
    gc.collect()
    await asyncio.sleep(0.2)
    before = _rss_bytes()
    proc = await asyncio.to_thread(_start_players, port, count, 4.0)
    for _ in range(400):
        if gw.stats().get("joined", 0) >= count:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    gc.collect()
    after = _rss_bytes()
    joined = int(gw.stats().get("joined", 0))
    await asyncio.to_thread(_finish_players, proc)
    await gw.stop()
    # Growth of the whole process (Python objects, buffers, the library's state) per
    # joined connection; kernel socket buffers are not in RSS.
    return {
        "idle_connections": joined,
        "bytes_per_idle_conn": round((after - before) / max(1, joined)),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    players = args.players
    rounds = args.rounds
    # Memory first, in a process that has not yet freed (and so could reuse) anything.
    mem = await idle_memory(args.idle)
    print(f"memory:   {mem}", file=sys.stderr, flush=True)
    ours = await run_ours(players, rounds)
    print(f"ours:     {ours}", file=sys.stderr, flush=True)
    base = await run_baseline(players, rounds)
    print(f"baseline: {base}", file=sys.stderr, flush=True)
    fps = ours["frames"] / ours["cpu_s"] if ours["cpu_s"] else 0.0
    bfps = base["frames"] / base["cpu_s"] if base["cpu_s"] else 0.0
    return {
        "benchmark": "gateway",
        "quick": args.quick,
        "players": players,
        "rounds": rounds,
        "payload_bytes": PAYLOAD,
        "frames_per_cpu_s": round(fps),
        "baseline_frames_per_cpu_s": round(bfps),
        "speedup": round(fps / bfps, 2) if bfps else None,
        "players_per_core_20hz": round(fps / 20),
        "frames_dropped": ours["dropped"],
        **mem,
        "notes": "CPU seconds of the serving process only (players run in another process); "
        "ours = Gateway.on_batch + event loop flushing; baseline = await ws.send per player.",
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--players-only":
        players_main("127.0.0.1", int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer players and rounds (< 60 s)")
    ap.add_argument("--players", type=int, default=None, help="connected players (default 2000)")
    ap.add_argument("--rounds", type=int, default=None, help="snapshot batches (default 100)")
    ap.add_argument("--idle", type=int, default=None, help="idle connections for the memory test")
    args = ap.parse_args()
    args.players = args.players or (1000 if args.quick else 2000)
    args.rounds = args.rounds or (40 if args.quick else 100)
    args.idle = args.idle or (1000 if args.quick else 3000)
    _raise_fd_limit()
    from shardworld.kernels import warm_up

    warm_up()
    import uvloop

    result = uvloop.run(main_async(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
