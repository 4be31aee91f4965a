"""Entity storage: component fields, ids and structure-of-arrays stores."""

from shardworld.entities.ids import IdAllocator, IdIndex, make_ids, split_ids
from shardworld.entities.schema import BUILTIN_FIELDS, Field, Schema, Scope
from shardworld.entities.store import EntityStore, StaleIdError

__all__ = [
    "BUILTIN_FIELDS",
    "EntityStore",
    "Field",
    "IdAllocator",
    "IdIndex",
    "Schema",
    "Scope",
    "StaleIdError",
    "make_ids",
    "split_ids",
]
