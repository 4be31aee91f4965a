from pathlib import Path

import pytest

from shardworld.zone import ConfigError, ZoneConfig, load_world

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid() -> None:
    c = ZoneConfig()
    assert c.ticks_per_snapshot == 1
    assert c.with_(snapshot_hz=10).ticks_per_snapshot == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"world": (0, 0, 0, 10)},
        {"tick_hz": 0},
        {"snapshot_hz": 30},
        {"snapshot_hz": 7},
        {"k_max": 0},
        {"k_max": 70000},
        {"interest_radius": 400, "pos_quantum": 0.01},
        {"input_overflow": "explode"},
        {"zone_tag": 70000},
    ],
)
def test_bad_settings_are_named(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ZoneConfig().with_(**changes)


def test_unknown_keys_refused() -> None:
    with pytest.raises(ConfigError, match="tick_hzz"):
        ZoneConfig.from_mapping({"tick_hzz": 10})


def test_arena_world_loads() -> None:
    world = load_world(ROOT / "zones" / "arena")
    assert world.config.name == "arena"
    assert world.config.obstacles
    assert world.demo["npcs"] > 0
    assert "health" in [f.name for f in world.handler_class.fields]


def test_missing_world_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"world\.toml"):
        load_world(tmp_path)
    (tmp_path / "world.toml").write_text("[zone]\ntick_hz = -1\n")
    with pytest.raises(ConfigError, match="tick_hz"):
        load_world(tmp_path)


def test_numbers_are_normalised_so_kernels_never_see_new_types() -> None:
    c = ZoneConfig.from_mapping({"obstacle_cell": 4, "world": [0, 0, 10, 10], "tick_hz": 20})
    assert isinstance(c.obstacle_cell, float) and isinstance(c.tick_hz, float)
    assert all(isinstance(v, float) for v in c.world)
    with pytest.raises(ConfigError, match="k_max"):
        ZoneConfig(k_max=1.5)  # type: ignore[arg-type]
