"""Applying a tick's batch of player inputs to the entity columns."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shardworld.kernels._jit import kernel

# Outcome codes written per input, so the zone can count each kind once per tick.
APPLIED = 0
UNKNOWN_ENTITY = 1
OUT_OF_ORDER = 2
NOT_A_FINITE_INTENT = 3


@kernel
def apply_inputs(
    rows: npt.NDArray[np.int32],
    seq: npt.NDArray[np.uint32],
    intent: npt.NDArray[np.float32],
    actions: npt.NDArray[np.uint32],
    col_intent: npt.NDArray[np.float32],
    col_seq: npt.NDArray[np.uint32],
    col_actions: npt.NDArray[np.uint32],
    outcome: npt.NDArray[np.uint8],
) -> None:
    """Write inputs into entity columns in arrival order.

    rows int32[B]: target row per input (-1: entity not here); seq uint32[B]: the client's
    sequence number; intent float32[B, 2]: movement intent; actions uint32[B]: action bits.
    col_intent float32[n, 2], col_seq uint32[n], col_actions uint32[n]: the store's columns,
    updated in place. outcome uint8[B] is written with APPLIED, UNKNOWN_ENTITY, OUT_OF_ORDER
    (seq not newer than the last applied one: a replay or reordering) or NOT_A_FINITE_INTENT.

    Intents longer than 1 are scaled down to length 1 here (the client asks for a direction,
    the server decides the speed). Later inputs for the same entity in one batch win.
    """
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            outcome[i] = UNKNOWN_ENTITY
            continue
        if seq[i] <= col_seq[r]:
            outcome[i] = OUT_OF_ORDER
            continue
        ix = np.float64(intent[i, 0])
        iy = np.float64(intent[i, 1])
        if not (np.isfinite(ix) and np.isfinite(iy)):
            outcome[i] = NOT_A_FINITE_INTENT
            continue
        mag2 = ix * ix + iy * iy
        if mag2 > 1.0:
            inv = 1.0 / np.sqrt(mag2)
            ix *= inv
            iy *= inv
        col_intent[r, 0] = np.float32(ix)
        col_intent[r, 1] = np.float32(iy)
        col_seq[r] = seq[i]
        col_actions[r] = actions[i]
        outcome[i] = APPLIED


def warm_up() -> None:
    """Load :func:`apply_inputs` from the disk cache."""
    apply_inputs(
        np.zeros(1, np.int32),
        np.ones(1, np.uint32),
        np.zeros((1, 2), np.float32),
        np.zeros(1, np.uint32),
        np.zeros((1, 2), np.float32),
        np.zeros(1, np.uint32),
        np.zeros(1, np.uint32),
        np.zeros(1, np.uint8),
    )
