"""Vocabulary of the typed option classes (the sections of ``configs/pipeline.yaml``).

Each stage declares its own options as a dataclass without default values: the defaults are
written once, in YAML, and the application composes the sections into one typed schema that
hydra/OmegaConf check on every override (types, choices). Every numeric field declares its
allowed values on the field itself (:func:`bounded`, :func:`fraction`; names from a registry:
:func:`registered`), and the dataclass's ``__post_init__`` checks them all with
:func:`check_declared`, so a bad value fails with one line naming its key when the
configuration is composed, before anything runs. (``tests/test_stage1_config.py`` walks the
whole schema: a numeric field without a declared range fails it.)
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Keys of a field's metadata.
RANGE = "range"  # a Range
FRACTION = "fraction"  # [numerator, denominator] of positive ints
REGISTRY = "registry"  # "module:attribute" of the mapping whose keys are the allowed names


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


def autocast_to_dtype(autocast: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype of a CUDA mixed precision setting.

    Args:
        autocast: an :class:`Autocast` (or its name, any case), ``None`` or ``"none"``
            (float32: ``None``), or a torch dtype (returned as it is).
    Raises:
        ValueError: any other name.
    """
    import torch  # here: the option classes stay importable without torch

    if autocast is None or isinstance(autocast, torch.dtype):
        return autocast
    name = str(autocast).lower()
    if name == "none":
        return None
    if name not in Autocast.__members__:
        allowed = sorted([*Autocast.__members__, "none"])
        raise ValueError(f"autocast must be one of {allowed}, got {autocast!r}")
    return getattr(torch, name)


class CacheDevice(Choice):
    """Where per-video features wait between expressions."""

    auto = "auto"  # the model's device
    cpu = "cpu"  # host memory (long videos on small GPUs)


class OptionError(ValueError):
    """An option value outside its domain; the message names the key."""


def _where(owner: Any, name: str) -> str:
    section = getattr(owner, "SECTION", type(owner).__name__)
    return f"{section}.{name}" if section else name


# The ints numpy and torch hold (an option's value ends up in them): any int option stays within.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Range:
    """The values a numeric option allows: ``low <= value <= high`` (``None``: unbounded; a
    string: the value of that other field of the same section), or one of ``also``. Every value
    must be finite, and an int within 64 bits (:data:`INT64_MIN`, :data:`INT64_MAX`)."""

    low: float | str | None = None
    high: float | str | None = None
    also: tuple[float, ...] = ()


def bounded(
    low: float | str | None = None, high: float | str | None = None, *, also: tuple = ()
) -> Any:
    """A numeric field (no default) allowing :class:`Range` ``(low, high, also)``; declare
    ``bounded()`` for a number that may take any finite value."""
    return dataclasses.field(metadata={RANGE: Range(low, high, tuple(also))})


def jobs() -> Any:
    """A field counting worker processes (joblib's ``n_jobs``): ``-1`` (all cores) or ``1`` and
    more (``0`` would fail only when the processes start); never more are started than the
    tasks or the cores (:func:`process_count`)."""
    return bounded(1, also=(-1,))


def process_count(jobs: int, tasks: int) -> int:
    """The worker processes to start for ``tasks`` CPU-bound tasks when a :func:`jobs` field
    says ``jobs``: never more than the tasks or the cores (``-1``: the cores), at least one."""
    cores = os.cpu_count() or 1
    wanted = cores if jobs == -1 else jobs
    return max(1, min(wanted, cores, tasks))


def fraction() -> Any:
    """A ``[numerator, denominator]`` field of positive ints (no default)."""
    return dataclasses.field(metadata={FRACTION: True})


def registered(registry: str) -> Any:
    """A name field (no default) allowing ``None`` or a key of the mapping ``registry``
    (``"module:attribute"``, imported when a configuration is checked)."""
    return dataclasses.field(metadata={REGISTRY: registry})


def check_declared(owner: Any) -> None:
    """Check every field of the dataclass ``owner`` that declares its values (:func:`bounded`,
    :func:`fraction`, :func:`registered`).

    Raises:
        OptionError: one line naming the first key whose value is not allowed.
    """
    for f in dataclasses.fields(owner):
        if (declared := f.metadata.get(RANGE)) is not None:
            low, high = (
                getattr(owner, bound) if isinstance(bound, str) else bound
                for bound in (declared.low, declared.high)
            )
            check_range(owner, f.name, low, high, also=declared.also)
        if f.metadata.get(FRACTION):
            check_fraction(owner, f.name)
        if (registry := f.metadata.get(REGISTRY)) is not None:
            module_name, _, attribute = registry.partition(":")
            check_registered(
                owner, f.name, getattr(importlib.import_module(module_name), attribute)
            )


def check_range(
    owner: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    also: tuple[float, ...] = (),
) -> None:
    """Raise :class:`OptionError` unless ``owner.<name>`` is finite (an int: within 64 bits) and
    ``low <= value <= high`` (``None``: unbounded) or one of ``also``; ``None`` passes (a
    nullable option left unset). A list of numbers: each of them."""
    value = getattr(owner, name)
    if value is None:
        return
    values, each = (list(value), "each ") if isinstance(value, list | tuple) else ([value], "")
    for number in values:
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise OptionError(f"{_where(owner, name)}={value!r}: expected {each}a number")
        if number in also:
            continue
        least, most = low, high
        if isinstance(number, int) and not INT64_MIN <= number <= INT64_MAX:
            least = INT64_MIN if low is None else max(low, INT64_MIN)
            most = INT64_MAX if high is None else min(high, INT64_MAX)
        if not math.isfinite(number) or (
            (least is not None and number < least) or (most is not None and number > most)
        ):
            if least is None and most is None:
                expected = "a finite number"
            else:
                bounds = (
                    f"[{'-inf' if least is None else least}, {'inf' if most is None else most}]"
                )
                expected = f"a value in {bounds}" + "".join(f" or {v}" for v in also)
            raise OptionError(f"{_where(owner, name)}={value!r}: expected {each}{expected}")


def check_fraction(owner: Any, name: str) -> None:
    """``owner.<name>`` is ``[numerator, denominator]`` of positive integers (within 64 bits)."""
    value = list(getattr(owner, name))
    if len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT64_MAX for v in value
    ):
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
