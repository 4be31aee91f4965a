import numpy as np
import pytest

from shardworld.entities import BUILTIN_FIELDS, Field, Schema, Scope


def test_default_schema_has_builtins_in_order() -> None:
    s = Schema.default()
    assert s.names()[:4] == ["pos", "vel", "kind", "owner"]
    assert len(s) == len(BUILTIN_FIELDS)
    assert s["pos"].dtype == np.float32 and s["pos"].shape == (2,)


def test_studio_fields_extend_like_builtins() -> None:
    s = Schema.default().extend(
        Field("health", "uint16", scope=Scope.PUBLIC),
        Field("inventory", np.uint32, 8, scope=Scope.OWNER),
    )
    assert s["inventory"].shape == (8,)
    assert s["inventory"].nbytes == 32
    assert s.row_nbytes == 8 + sum(f.nbytes for f in s)
    assert s.row_dtype().itemsize == s.row_nbytes
    assert [f.name for f in s.select([Scope.OWNER])] == ["inventory"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "Bad", "dtype": "f4"},
        {"name": "1x", "dtype": "f4"},
        {"name": "class", "dtype": "f4"},
        {"name": "id", "dtype": "u8"},
        {"name": "ok", "dtype": "U8"},
        {"name": "ok", "dtype": object},
        {"name": "ok", "dtype": "f4", "shape": (0,)},
        {"name": "ok", "dtype": "f16"},
        {"name": "ok", "dtype": "c8"},
    ],
)
def test_bad_fields_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        Field(**kwargs)  # type: ignore[arg-type]


def test_duplicates_and_builtin_redefinition_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Schema.default().extend(Field("hp", "u1"), Field("hp", "u2"))
    with pytest.raises(ValueError, match="built-in"):
        Schema((Field("pos", np.float64, (2,)),))


def test_fingerprint_tracks_layout() -> None:
    a = Schema.default().extend(Field("hp", "u1"))
    b = Schema.default().extend(Field("hp", "u2"))
    assert a.fingerprint() == Schema.default().extend(Field("hp", "u1")).fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_scope_ghosting() -> None:
    assert not Scope.SERVER.ghosted
    assert Scope.PUBLIC.ghosted and Scope.OWNER.ghosted and Scope.GHOST.ghosted
