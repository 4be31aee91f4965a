"""WebSocket frame headers for snapshots, built by hand (RFC 6455 section 5.2).

The gateway writes each SNAPSHOT straight to the connection's transport as one unmasked,
unfragmented binary frame: ``frame header + msgpack prefix + zone payload``.
:func:`encode_snapshot_frames` (a numba kernel) builds a whole batch's frames in one pass;
:func:`snapshot_frame_header` is the same header for one frame, in Python.
Server-to-client frames are never masked, and the gateway never fragments, so frames it
writes this way interleave safely with those the WebSocket library writes.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from shardworld.kernels._jit import kernel
from shardworld.protocol.messages import MsgType

_OP_BINARY_FIN = 0x82
_T = int(MsgType.SNAPSHOT)

# frame header | 0x94 0x04 0xce tick 0xce ack | bin header, for each size class of payload
_SMALL = struct.Struct(">BBBBBIBIBB")  # 7-bit frame length, bin8
_MID8 = struct.Struct(">BBHBBBIBIBB")  # 16-bit frame length, bin8
_MID16 = struct.Struct(">BBHBBBIBIBH")  # 16-bit frame length, bin16
_BIG16 = struct.Struct(">BBQBBBIBIBH")  # 64-bit frame length, bin16
_BIG32 = struct.Struct(">BBQBBBIBIBI")  # 64-bit frame length, bin32

MAX_FRAME_PAYLOAD = (1 << 63) - 1


def binary_frame_header(length: int) -> bytes:
    """The header of an unmasked, final binary frame carrying ``length`` bytes."""
    if length < 0 or length > MAX_FRAME_PAYLOAD:
        raise ValueError(f"frame length {length} out of range")
    if length < 126:
        return bytes((_OP_BINARY_FIN, length))
    if length < 0x10000:
        return struct.pack(">BBH", _OP_BINARY_FIN, 126, length)
    return struct.pack(">BBQ", _OP_BINARY_FIN, 127, length)


def snapshot_frame_header(tick: int, ack: int, payload_len: int) -> bytes:
    """Frame header and msgpack prefix of a SNAPSHOT whose payload is ``payload_len`` bytes.

    Append the payload to get the complete frame: the result equals
    ``binary_frame_header(n) + snapshot_prefix(tick, ack, payload_len)`` with ``n`` the
    length of the whole message (see :func:`shardworld.protocol.messages.snapshot_prefix`).
    ``tick`` and ``ack`` are sent modulo 2**32.
    """
    t = tick & 0xFFFFFFFF
    a = ack & 0xFFFFFFFF
    if payload_len < 0x100:
        if payload_len < 0:
            raise ValueError("negative payload length")
        m = payload_len + 14
        if m < 126:
            return _SMALL.pack(_OP_BINARY_FIN, m, 0x94, _T, 0xCE, t, 0xCE, a, 0xC4, payload_len)
        return _MID8.pack(_OP_BINARY_FIN, 126, m, 0x94, _T, 0xCE, t, 0xCE, a, 0xC4, payload_len)
    if payload_len < 0x10000:
        m = payload_len + 15
        if m < 0x10000:
            return _MID16.pack(
                _OP_BINARY_FIN, 126, m, 0x94, _T, 0xCE, t, 0xCE, a, 0xC5, payload_len
            )
        return _BIG16.pack(_OP_BINARY_FIN, 127, m, 0x94, _T, 0xCE, t, 0xCE, a, 0xC5, payload_len)
    if payload_len > 0xFFFFFFFF:
        raise ValueError("a snapshot payload is at most 4 GiB (msgpack bin32)")
    return _BIG32.pack(
        _OP_BINARY_FIN, 127, payload_len + 17, 0x94, _T, 0xCE, t, 0xCE, a, 0xC6, payload_len
    )


@kernel
def encode_snapshot_frames(
    tick: int,
    acks: npt.NDArray[np.uint32],
    buf: npt.NDArray[np.uint8],
    off: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Every observer's complete SNAPSHOT frame, back to back in one new buffer.

    Args:
        tick: the batch's zone tick, already reduced modulo 2**32 (a Python int).
        acks: uint32[n], each observer's last applied input sequence number.
        buf: uint8[total], the batch's payloads.
        off: int64[n + 1], payload ``i`` is ``buf[off[i]:off[i + 1]]``.

    Returns:
        ``(frames, starts, body)``: uint8[m], int64[n + 1], int64[n]. Frame ``i`` is
        ``frames[starts[i]:starts[i + 1]]``, equal to
        ``snapshot_frame_header(tick, acks[i], len_i) + payload_i``; its payload starts at
        ``frames[body[i]]``. The caller writes each frame to its observer's connection as
        is (one unmasked, final binary frame).
    """
    n = off.shape[0] - 1
    if n < 0:
        n = 0
    starts = np.zeros(n + 1, np.int64)
    body = np.zeros(n, np.int64)
    for i in range(n):
        ln = off[i + 1] - off[i]
        bh = 2 if ln < 0x100 else (3 if ln < 0x10000 else 5)
        m = ln + 12 + bh
        wh = 2 if m < 126 else (4 if m < 0x10000 else 10)
        body[i] = starts[i] + wh + 12 + bh
        starts[i + 1] = body[i] + ln
    frames = np.empty(starts[n], np.uint8)
    t = np.int64(tick) & 0xFFFFFFFF
    for i in range(n):
        ln = off[i + 1] - off[i]
        bh = 2 if ln < 0x100 else (3 if ln < 0x10000 else 5)
        m = ln + 12 + bh
        p = starts[i]
        frames[p] = 0x82
        if m < 126:
            frames[p + 1] = m
            q = p + 2
        elif m < 0x10000:
            frames[p + 1] = 126
            frames[p + 2] = (m >> 8) & 0xFF
            frames[p + 3] = m & 0xFF
            q = p + 4
        else:
            frames[p + 1] = 127
            for k in range(8):
                frames[p + 2 + k] = (m >> (56 - 8 * k)) & 0xFF
            q = p + 10
        ack = np.int64(acks[i])
        frames[q] = 0x94
        frames[q + 1] = 4  # MsgType.SNAPSHOT
        frames[q + 2] = 0xCE
        frames[q + 7] = 0xCE
        for k in range(4):
            frames[q + 3 + k] = (t >> (24 - 8 * k)) & 0xFF
            frames[q + 8 + k] = (ack >> (24 - 8 * k)) & 0xFF
        q += 12
        if bh == 2:
            frames[q] = 0xC4
            frames[q + 1] = ln
        elif bh == 3:
            frames[q] = 0xC5
            frames[q + 1] = (ln >> 8) & 0xFF
            frames[q + 2] = ln & 0xFF
        else:
            frames[q] = 0xC6
            for k in range(4):
                frames[q + 1 + k] = (ln >> (24 - 8 * k)) & 0xFF
        frames[body[i] : starts[i + 1]] = buf[off[i] : off[i + 1]]
    return frames, starts, body


def warm_up() -> None:
    """Load :func:`encode_snapshot_frames` (compiling it the first time on this machine)."""
    encode_snapshot_frames(
        0, np.zeros(1, np.uint32), np.zeros(21, np.uint8), np.array([0, 21], np.int64)
    )
