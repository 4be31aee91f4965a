"""shardworld: one seamless, sharded world for massively multiplayer games.

The layers, inner to outer: :mod:`shardworld.entities` (storage), :mod:`shardworld.kernels`
(numba), :mod:`shardworld.protocol` (sans-I/O codecs), :mod:`shardworld.zone` (the tick).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
