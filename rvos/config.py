"""The pipeline configuration: composing ``configs/pipeline.yaml`` and checking its values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

CHOICES = {
    "stage2.prompt": ("mask", "box", "point"),
    "stage2.tracker": ("sam2", "samurai"),
    "stage1.autocast": (None, "float16", "bfloat16"),
    "stage2.autocast": (None, "float16", "bfloat16"),
    "stage1.feature_cache_device": ("auto", "cpu"),
    "stage2.feature_cache_device": ("auto", "cpu"),
}
POSITIVE_INTS = ("stage1.short_side", "stage2.num_points")
OPTIONAL_POSITIVE_INTS = ("stage1.top_k",)
UNIT_INTERVAL = ("stage1.obj_threshold", "stage2.score_threshold")


class ConfigError(ValueError):
    """A configuration value out of its domain."""


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def check_config(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first key whose value is out of its domain."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: expected one of {list(allowed)}")
    for key in POSITIVE_INTS + OPTIONAL_POSITIVE_INTS:
        value = _get(cfg, key)
        if value is None and key in OPTIONAL_POSITIVE_INTS:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key}={value!r}: expected a positive integer")
    for key in UNIT_INTERVAL:
        value = _get(cfg, key)
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}={value!r}: expected a number in [0, 1]")
    for key in ("stage3.shrink_ratio", "stage3.majority"):
        value = list(_get(cfg, key))
        if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
            raise ConfigError(
                f"{key}={value!r}: expected [numerator, denominator] of positive ints"
            )


def compose_config(overrides: Sequence[str] = ()) -> Any:
    """``configs/pipeline.yaml`` composed with hydra ``overrides`` (``key=value``), then checked.

    Works whether or not the ``sam2`` package (which initialises hydra's global state on import)
    was imported before; hydra's global state is restored afterwards. Raises hydra/omegaconf
    errors for unknown keys, :class:`ConfigError` for values out of their domain.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name="pipeline", overrides=list(overrides))
    finally:
        restore_gh_from_backup(backup)
    check_config(cfg)
    return cfg
