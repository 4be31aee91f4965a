"""Sharding: how one continuous world is split between zones, and how that split changes."""
