"""Vocabulary of the typed option classes (the sections of ``configs/pipeline.yaml``).

Each stage declares its own options as a dataclass without default values: the defaults are
written once, in YAML, and the application composes the sections into one typed schema that
hydra/OmegaConf check on every override (types, choices). Ranges are checked in the dataclasses'
``__post_init__`` with the helpers below, so a bad value fails with one line naming its key.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any


class Choice(str, Enum):
    """A closed set of string values; members are named as their values (OmegaConf matches
    names), compare equal to those strings and print as them."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Autocast(Choice):
    """CUDA mixed precision of a stage (``null`` in YAML: float32)."""

    float16 = "float16"
    bfloat16 = "bfloat16"


class CacheDevice(Choice):
    """Where per-video features wait between expressions."""

    auto = "auto"  # the model's device
    cpu = "cpu"  # host memory (long videos on small GPUs)


class OptionError(ValueError):
    """An option value outside its domain; the message names the key."""


def _where(owner: Any, name: str) -> str:
    section = getattr(owner, "SECTION", type(owner).__name__)
    return f"{section}.{name}" if section else name


def check_range(owner: Any, name: str, low: float | None = None, high: float | None = None) -> None:
    """Raise :class:`OptionError` unless ``low <= owner.<name> <= high`` (``None``: unbounded)."""
    value = getattr(owner, name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(f"{_where(owner, name)}={value!r}: expected a number")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise OptionError(f"{_where(owner, name)}={value!r}: expected a value in {bounds}")


def check_fraction(owner: Any, name: str) -> None:
    """``owner.<name>`` is ``[numerator, denominator]`` of positive integers."""
    value = list(getattr(owner, name))
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise OptionError(
            f"{_where(owner, name)}={value!r}: expected [numerator, denominator], positive ints"
        )


def check_registered(owner: Any, name: str, registry: Mapping[str, Any]) -> None:
    """``owner.<name>`` is ``None`` or a key of ``registry`` (e.g. a registered layout name)."""
    value = getattr(owner, name)
    if value is not None and value not in registry:
        raise OptionError(
            f"{_where(owner, name)}={value!r}: not a registered name "
            f"(available: {', '.join(sorted(registry))})"
        )
