"""Where a zone's snapshots go: the gateway later, a collector in tests, nowhere in benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SnapshotBatch:
    """Every observer's payload for one snapshot tick, in one buffer.

    ``payload(i)`` is observer ``i``'s bytes (layout: docs/snapshot-format.md). The arrays are
    owned by the batch: a sink may keep them; the zone never writes to them again.
    """

    zone: str
    tick: int
    observer_ids: npt.NDArray[np.uint64]
    owners: npt.NDArray[np.uint64]
    input_acks: npt.NDArray[np.uint32]
    buf: npt.NDArray[np.uint8]
    off: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.observer_ids.shape[0])

    def payload(self, i: int) -> bytes:
        return self.buf[self.off[i] : self.off[i + 1]].tobytes()

    def select(self, keep: npt.NDArray[np.bool_]) -> SnapshotBatch:
        """The batch for the observers where ``keep`` is True (payloads copied out)."""
        lengths = np.diff(self.off)
        off = np.zeros(int(np.count_nonzero(keep)) + 1, np.int64)
        np.cumsum(lengths[keep], out=off[1:])
        return SnapshotBatch(
            zone=self.zone,
            tick=self.tick,
            observer_ids=self.observer_ids[keep],
            owners=self.owners[keep],
            input_acks=self.input_acks[keep],
            buf=self.buf[np.repeat(keep, lengths)],
            off=off,
        )

    @property
    def nbytes(self) -> int:
        return int(self.off[-1]) if self.off.shape[0] else 0


class SnapshotSink(Protocol):
    """Receives each snapshot batch. Must not block: the tick waits for it."""

    def emit(self, batch: SnapshotBatch) -> None: ...


class NullSink:
    """Drops everything (benchmarks, headless runs)."""

    def emit(self, batch: SnapshotBatch) -> None:
        return None


class CollectingSink:
    """Keeps the last ``limit`` batches (tests)."""

    def __init__(self, limit: int = 1000) -> None:
        self.batches: list[SnapshotBatch] = []
        self.limit = limit

    def emit(self, batch: SnapshotBatch) -> None:
        self.batches.append(batch)
        if len(self.batches) > self.limit:
            del self.batches[0]
