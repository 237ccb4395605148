"""Every option of the schema is checked when the configuration is composed.

The schema (``referdino_plus.config.PipelineConfig`` and the stages' option classes) is walked
by introspection, nested sections included: each numeric field must declare its allowed values
(``rvos.options.bounded`` and friends), and each boundary is tried through
:func:`referdino_plus.config.compose_config`, as a ``key=value`` override from the command line
would be: the smallest and largest allowed values pass, one step beyond fails in one line naming
the key. Choices (enums, registered names, booleans) are tried the same way. A field added later
without a declared range fails :func:`test_every_numeric_field_declares_its_range` (fast); the
boundary tests compose the configuration some 200 times (``slow``).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from referdino_plus.config import (
    LAUNCHER_SCHEMAS,
    ConfigError,
    LauncherOptions,
    PipelineConfig,
    compose_config,
)
from rvos.options import FRACTION, RANGE, REGISTRY, Range

# A value far from zero standing for an unbounded side.
FAR = 10**6


@dataclass(frozen=True)
class Option:
    """One field of the schema: its dotted key, type (``None`` removed) and field."""

    key: str
    kind: Any
    nullable: bool
    field: dataclasses.Field


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def walk(schema: type, prefix: str = "") -> Iterator[Option]:
    """Every field of ``schema`` and of the sections (dataclasses) it nests, list elements
    included (keyed ``<list>[]``)."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind, nullable = _unwrap(hints[f.name])
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            yield from walk(kind, f"{key}.")
            continue
        if typing.get_origin(kind) is list:
            (element,) = typing.get_args(kind)
            if dataclasses.is_dataclass(element):
                yield from walk(element, f"{key}[].")
                continue
        yield Option(key, kind, nullable, f)


# The schema, and the sections of the launchers other than the default one (launcher.slurm).
OPTIONS = list(walk(PipelineConfig)) + [
    option
    for schema in LAUNCHER_SCHEMAS.values()
    for option in walk(schema, f"{LauncherOptions.SECTION}.")
    if option.key.count(".") > 1
]


def is_number(kind: Any) -> bool:
    return kind in (int, float)


def is_number_list(kind: Any) -> bool:
    return typing.get_origin(kind) is list and is_number(typing.get_args(kind)[0])


def base_overrides(key: str) -> list[str]:
    """What makes ``key`` a setting in use: a launcher's own section needs that launcher."""
    section, _, rest = key.partition(".")
    launcher = rest.partition(".")[0]
    return [f"launcher={launcher}"] if section == "launcher" and "." in rest else []


def dependents(key: str, value: Any) -> list[str]:
    """Overrides moving the fields whose range is bounded by ``key`` (``app.default_max_frames``
    by ``app.max_frames``) to ``value``, so that ``key=value`` is tried alone."""
    section, _, name = key.rpartition(".")
    return [
        f"{other.key}={_text(value)}"
        for other in OPTIONS
        if other.key.rpartition(".")[0] == section
        and name
        in (
            getattr(other.field.metadata.get(RANGE), "low", None),
            getattr(other.field.metadata.get(RANGE), "high", None),
        )
    ]


def default(key: str, overrides: list[str]) -> Any:
    return OmegaConf.select(compose_config(overrides), key)


def passes(key: str, value: Any) -> None:
    overrides = [*base_overrides(key), f"{key}={_text(value)}"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        overrides += dependents(key, value)
    try:
        composed = compose_config(overrides)
    except ConfigError as err:
        pytest.fail(f"{key}={_text(value)} is allowed, yet refused: {err}")
    if value is not None and not isinstance(value, str):
        assert OmegaConf.select(composed, key) == value


def fails(key: str, value: Any) -> None:
    overrides = [*base_overrides(key), f"{key}={_text(value)}"]
    with pytest.raises(ConfigError) as info:
        compose_config(overrides)
    message = str(info.value)
    assert f"{key}=" in message or f"{key}:" in message, message
    assert "\n" not in message, message


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def step(value: float, kind: type, direction: int) -> float:
    """The next value of ``kind`` beyond ``value`` in ``direction`` (+1 up, -1 down)."""
    if kind is int:
        return int(value) + direction
    return float(np.nextafter(float(value), direction * math.inf))


def test_the_walk_sees_every_section():
    keys = {option.key for option in OPTIONS}
    assert {"archive.jobs", "evaluation.jobs", "stage2.samurai.kf_score_weight"} <= keys
    assert {"launcher.slurm.tasks", "app.default_max_frames", "app.sam2_models[].name"} <= keys
    assert len(OPTIONS) > 60


def test_every_numeric_field_declares_its_range():
    undeclared = [
        option.key
        for option in OPTIONS
        if (is_number(option.kind) and RANGE not in option.field.metadata)
        or (
            is_number_list(option.kind)
            and RANGE not in option.field.metadata
            and FRACTION not in option.field.metadata
        )
    ]
    assert not undeclared, (
        f"numeric options without a declared range: {undeclared}; declare it on the field "
        "(rvos.options.bounded, fraction, jobs) so that a bad value is refused when the "
        "configuration is composed"
    )
    in_lists = [o.key for o in OPTIONS if "[]" in o.key and is_number(o.kind)]
    assert not in_lists, f"numeric options inside lists, not tried by this test: {in_lists}"


NUMERIC = [o for o in OPTIONS if is_number(o.kind) and RANGE in o.field.metadata]


@pytest.mark.slow
@pytest.mark.parametrize("option", NUMERIC, ids=lambda o: o.key)
def test_numeric_boundaries(option):
    key, kind = option.key, option.kind
    declared: Range = option.field.metadata[RANGE]
    base = base_overrides(key)
    bounds = []
    for bound in (declared.low, declared.high):
        if isinstance(bound, str):  # another field of the same section: its default value
            bound = default(f"{key.rpartition('.')[0]}.{bound}", base)
        bounds.append(bound)
    low, high = bounds
    allowed = set(declared.also)
    for bound, direction in ((low, -1), (high, +1)):
        if bound is None:
            passes(key, kind(direction * FAR))
            continue
        passes(key, kind(bound))
        beyond = step(bound, kind, direction)
        if beyond not in allowed:
            fails(key, beyond)
    for value in declared.also:
        passes(key, kind(value))
        for direction in (-1, +1):
            beyond = step(value, kind, direction)
            inside = (low is None or beyond >= low) and (high is None or beyond <= high)
            if beyond not in allowed and not inside:
                fails(key, beyond)
    if kind is float:
        fails(key, math.nan)
        fails(key, math.inf)
    if option.nullable:
        passes(key, None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "option",
    [o for o in OPTIONS if is_number_list(o.kind) and RANGE not in o.field.metadata],
    ids=lambda o: o.key,
)
def test_fraction_boundaries(option):
    assert option.field.metadata.get(FRACTION)
    passes(option.key, "[1,1]")
    for bad in ("[0,1]", "[1,0]", "[1]", "[1,2,3]"):
        fails(option.key, bad)


@pytest.mark.slow
@pytest.mark.parametrize(
    "option",
    [o for o in OPTIONS if is_number_list(o.kind) and RANGE in o.field.metadata],
    ids=lambda o: o.key,
)
def test_number_list_boundaries(option):
    """A list whose numbers declare a range: each number is checked, wherever it stands."""
    key, (kind,) = option.key, typing.get_args(option.kind)
    declared: Range = option.field.metadata[RANGE]
    for bound, direction in ((declared.low, -1), (declared.high, +1)):
        if bound is None:
            passes(key, f"[{_text(kind(direction * FAR))}]")
            continue
        passes(key, f"[{_text(kind(bound))},{_text(kind(bound))}]")
        beyond = _text(step(bound, kind, direction))
        fails(key, f"[{_text(kind(bound))},{beyond}]")
        fails(key, f"[{beyond}]")
    if kind is float:
        fails(key, "[1.0,nan]")
    if option.nullable:
        passes(key, None)


def _choices(option: Option) -> list[Any]:
    if isinstance(option.kind, type) and issubclass(option.kind, enum.Enum):
        return [member.value for member in option.kind]
    if option.kind is bool:
        return [True, False]
    registry = option.field.metadata.get(REGISTRY)
    module_name, _, attribute = registry.partition(":")
    return sorted(getattr(importlib.import_module(module_name), attribute))


CHOICES = [
    o
    for o in OPTIONS
    if "[]" not in o.key
    and (
        o.kind is bool
        or REGISTRY in o.field.metadata
        or (isinstance(o.kind, type) and issubclass(o.kind, enum.Enum))
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("option", CHOICES, ids=lambda o: o.key)
def test_choice_boundaries(option):
    key = option.key
    if key == "launcher.name":  # chosen with the launcher group, which brings its settings
        for name in _choices(option):
            compose_config([f"launcher={name}"])
        fails(key, "nowhere")
        return
    for value in _choices(option):
        passes(key, value)
    fails(key, "not_a_choice")
    if option.nullable:
        passes(key, None)


def test_jobs_zero_is_refused_before_anything_runs():
    for key in ("archive.jobs", "evaluation.jobs"):
        with pytest.raises(ConfigError, match=rf"^{key}=0: expected a value in \[1, inf\] or -1$"):
            compose_config([f"{key}=0"])
