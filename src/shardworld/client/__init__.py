"""Clients of protocol v1: the asyncio SDK (:mod:`shardworld.client.sdk`) and load bots
(:mod:`shardworld.client.bots`, the ``shardworld bots`` command)."""

from shardworld.client.sdk import (
    BlobDecoder,
    ClientError,
    ClockSync,
    HandshakeError,
    LatencyHistogram,
    Metrics,
    Player,
    PlayerClosed,
    ReceivedSnapshot,
    VisibleTable,
    connect,
    error_name,
)

__all__ = [
    "BlobDecoder",
    "ClientError",
    "ClockSync",
    "HandshakeError",
    "LatencyHistogram",
    "Metrics",
    "Player",
    "PlayerClosed",
    "ReceivedSnapshot",
    "VisibleTable",
    "connect",
    "error_name",
]
