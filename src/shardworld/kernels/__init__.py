"""Numba kernels: plain arrays in, plain arrays out.

Every kernel is compiled once and cached on disk. Call :func:`warm_up` before serving so a
process loads them all up front and no tick ever waits for the compiler.
"""

from __future__ import annotations

import importlib

KERNEL_MODULES = (
    "shardworld.entities.ids",
    "shardworld.kernels.inputs",
    "shardworld.kernels.motion",
    "shardworld.kernels.grid",
    "shardworld.kernels.interest",
    "shardworld.kernels.visibility",
    "shardworld.kernels.snapshot",
    "shardworld.gateway.frames",
    "shardworld.sharding.cellmap",
)


def warm_up() -> None:
    """Load (compiling only the first time on this machine) every kernel the zone uses."""
    for name in KERNEL_MODULES:
        importlib.import_module(name).warm_up()


__all__ = ["KERNEL_MODULES", "warm_up"]
