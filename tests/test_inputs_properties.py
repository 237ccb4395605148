"""Every input is checked as a whole before any model loads (property-based, with hypothesis).

The inputs are generated: every numeric and choice field of the configuration schema (found by
introspection, so a field added later is generated too) with values inside and outside their
ranges, non-finite, extreme and of the wrong type; the config groups (``data=``, ``launcher=``);
every key of a ReferDINO model YAML; and benchmark splits with odd ids, duplicates, frame lists,
frame sizes, text encodings and damaged ground truth. The property, for each: the command line
(run in this process, the stages' model builders replaced by a function that raises
:class:`ModelLoaded`) either gets as far as loading the models, or refuses the input first, in
one line per problem and without a traceback. Where the generator knows the input is good, it
must get that far; where it knows it is not, it must be refused (damaged ground truth: the run
goes on, unscored, with a warning). A ReferDINO model YAML that gets past the checks is then
really loaded and run on two frames. A few cases also go through the real command (subprocess).

The examples are the same on every run (``tests/conftest.py``: the ``ci`` profile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import io
import json
import logging
import math
import shutil
import tempfile
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from in_process import logging_restored
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils
from test_config_ranges import OPTIONS, Option, base_overrides, dependents

from referdino_plus import cli
from referdino_plus.config import CONFIG_DIR, ConfigError, compose_config
from referdino_plus.stages import STAGES
from rvos.options import FRACTION, RANGE, REGISTRY, Choice
from stage1_referdino.build import ReferDINOConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_REFERDINO = FIXTURES / "referdino_tiny"
TINY_SAM2 = FIXTURES / "sam2_tiny"
INT64 = (-(2**63), 2**63 - 1)
# What hypothesis may not like about these tests, and why it is fine: the examples write files
# (slow at times), and the module-wide fixture only replaces the model builders.
SLOW_EXAMPLES = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


class ModelLoaded(BaseException):  # noqa: N818 - an event, not an error
    """Raised where a stage would load its models: the input got past every check."""


def _load_models(*args: Any, **kwargs: Any) -> Any:
    raise ModelLoaded


@pytest.fixture(scope="module", autouse=True)
def models_never_load() -> Iterator[None]:
    """Every stage's worker builder (what loads a stage's models) raises :class:`ModelLoaded`."""
    with pytest.MonkeyPatch.context() as patch:
        for stage in STAGES:
            module, _, name = stage.worker.partition(":")
            patch.setattr(importlib.import_module(module), name, _load_models)
        yield


@pytest.fixture(scope="module")
def composed_once() -> Iterator[None]:
    """The command line's configuration composed once per list of overrides (for the tests
    whose inputs are files at fixed paths, not settings: composing takes a fifth of a second)."""
    from referdino_plus import config

    compose = functools.lru_cache(maxsize=8)(lambda overrides: config.compose_config(overrides))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            config, "load_config", lambda overrides=(): config.to_typed(compose(tuple(overrides)))
        )
        yield


@pytest.fixture(scope="module")
def tiny_split(make_split) -> Iterator[Path]:
    """A MeViS-layout split of one video, two frames of 16 x 16 (quick to check)."""
    with tempfile.TemporaryDirectory() as folder:
        videos = {"v": {"frames": ["00000", "00001"], "expressions": {"0": "the bed"}}}
        yield make_split(Path(folder), videos, size=(16, 16))


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A folder whose paths stay the same from one example to the next (see :func:`fresh`)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def fresh(workspace: Path) -> Path:
    """``workspace`` emptied for the next example."""
    for path in workspace.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return workspace


# ----------------------------------------------------------------------------- the command line


@dataclass
class Outcome:
    """What the command line did with an input.

    Attributes:
        loaded: it got as far as loading the models (every check passed).
        status: its exit status (``None`` when ``loaded``).
        errors: the messages it logged as errors.
        warnings: the messages it logged as warnings.
    """

    loaded: bool
    status: int | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def refused_in_one_line(self) -> str:
        """Assert the input was refused before the models, one line per problem; the text."""
        assert not self.loaded, "the input got as far as loading the models"
        assert self.status in (1, 2), f"exit status {self.status}, errors {self.errors}"
        assert self.errors, "refused without saying why"
        for message in self.errors:
            first, *rest = message.splitlines()
            # One problem per line: a list of problems is "cannot start, N problems:" and lines
            # "  - problem".
            assert not rest or (
                first.endswith("problems:") and all(r[:4] == "  - " for r in rest)
            ), message
        return "\n".join(self.errors)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_in_process(argv: Sequence[str]) -> Outcome:
    """``run_pipeline.py *argv`` in this process (``-q``); the handlers it adds are removed."""
    keep = _Keep()
    with logging_restored() as root:
        root.addHandler(keep)
        try:
            status, loaded = cli.main([*argv, "-q"]), False
        except ModelLoaded:
            status, loaded = None, True
    shown = [r for r in keep.records if r.levelno >= logging.WARNING]
    for record in shown:  # what the console prints: no traceback, ever
        assert record.exc_info is None, f"a traceback is printed: {record.getMessage()}"
        assert "Traceback" not in record.getMessage(), record.getMessage()
    return Outcome(
        loaded,
        status,
        [r.getMessage() for r in shown if r.levelno >= logging.ERROR],
        [r.getMessage() for r in shown if r.levelno == logging.WARNING],
    )


def tiny_models(work: Path) -> list[str]:
    """Overrides selecting the tiny fixture models, and folders under ``work``."""
    return [
        f"stage1.model={TINY_REFERDINO / 'model.yaml'}",
        f"stage1.checkpoint={TINY_REFERDINO / 'referdino_checkpoint.pth'}",
        "stage1.short_side=64",
        f"stage2.model={TINY_SAM2 / 'tiny_sam2.1.yaml'}",
        f"stage2.checkpoint={TINY_SAM2 / 'weights_propagating.pt'}",
        f"work_dir={work / 'work'}",
        f"submission_dir={work / 'submissions'}",
    ]


# ----------------------------------------------------------------------------- configuration values


def render(value: Any) -> str:
    """``value`` as the command line writes it (hydra's override grammar)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(
            value, "nan" if value != value else repr(value)
        )
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{render(v)}" for k, v in value.items()) + "}"
    return str(value)


EXTREME_NUMBERS = [0, -1, 1, 2, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, -(10**30)]
EXTREME_FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-3, 5e-324, 1e-300, 1e308, -1e308]
NON_FINITE = [math.nan, math.inf, -math.inf]
WRONG_TYPES = ["abc", "", "1e", "0x10", [1, 2], [], {"a": 1}, None, True, False]


def numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(EXTREME_NUMBERS + EXTREME_FLOATS + NON_FINITE),
        st.integers(-100, 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
    )


def choices_of(option: Option) -> list[Any]:
    """The allowed names of a choice field (enum, registry, bool), found from the schema."""
    if isinstance(option.kind, type) and issubclass(option.kind, Choice):
        return [member.value for member in option.kind]
    if option.kind is bool:
        return [True, False]
    module, _, attribute = option.field.metadata[REGISTRY].partition(":")
    return sorted(getattr(importlib.import_module(module), attribute))


def is_list(option: Option) -> bool:
    return typing.get_origin(option.kind) is list


NUMERIC = [o for o in OPTIONS if RANGE in o.field.metadata and "[]" not in o.key and not is_list(o)]
# Lists of numbers, each within the declared range (ensemble.weights).
RANGE_LISTS = [o for o in OPTIONS if RANGE in o.field.metadata and is_list(o)]
FRACTIONS = [o for o in OPTIONS if FRACTION in o.field.metadata]
CHOICES = [
    o
    for o in OPTIONS
    if "[]" not in o.key
    and (
        o.kind is bool
        or REGISTRY in o.field.metadata
        or (isinstance(o.kind, type) and issubclass(o.kind, Choice))
    )
]


def values_for(option: Option) -> st.SearchStrategy[Any]:
    """Values inside and outside the field's domain, and of the wrong type."""
    wrong = st.sampled_from(WRONG_TYPES)
    if option in FRACTIONS or option in RANGE_LISTS:
        return st.one_of(st.lists(numbers(), max_size=3), wrong, numbers())
    if option in CHOICES:
        allowed = choices_of(option)
        mangled = [str(a).upper() for a in allowed] + [f"{a}_x" for a in allowed]
        return st.one_of(st.sampled_from(allowed + mangled), st.text(max_size=8), wrong, numbers())
    return st.one_of(numbers(), wrong)


def bounds(option: Option, composed: Any) -> tuple[float | None, float | None]:
    """The declared range of a numeric field (a bound named by another field: its value)."""
    declared = option.field.metadata[RANGE]
    section = option.key.rpartition(".")[0]
    return tuple(
        OmegaConf.select(composed, f"{section}.{b}") if isinstance(b, str) else b
        for b in (declared.low, declared.high)
    )


def allowed(option: Option, value: Any, composed: Any = None) -> bool:
    """Whether the schema allows ``value`` for ``option`` (as the command line gives it)."""
    if value is None:
        return option.nullable
    if option in CHOICES:
        names = choices_of(option)
        value = value.value if isinstance(value, Choice) else value
        return type(value) is type(names[0]) and value in names
    if option in FRACTIONS:
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(type(v) is int and 0 < v <= INT64[1] for v in value)
        )
    if option in RANGE_LISTS:
        return isinstance(value, list) and all(allowed_number(option, v, composed) for v in value)
    return allowed_number(option, value, composed)


def allowed_number(option: Option, value: Any, composed: Any = None) -> bool:
    """Whether the declared range of ``option`` (a number, or each number of a list) allows
    ``value``."""
    declared = option.field.metadata[RANGE]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if option.kind is int and not isinstance(value, int):
        return False
    if not math.isfinite(value) or (isinstance(value, int) and not INT64[0] <= value <= INT64[1]):
        return False
    if value in declared.also:
        return True
    if composed is not None:
        low, high = bounds(option, composed)
    else:  # a bound named by another field moves along (dependents): no bound
        low, high = (None if isinstance(b, str) else b for b in (declared.low, declared.high))
    return (low is None or value >= low) and (high is None or value <= high)


def names_key(message: str, key: str) -> bool:
    return any(f"{key}{mark}" in message for mark in "=:[")


def settings_cases(options: Sequence[Option]) -> st.SearchStrategy[tuple[Option, Any]]:
    """``(option, value)``: one of ``options`` and a value for it (:func:`values_for`)."""
    return st.sampled_from(options).flatmap(lambda o: st.tuples(st.just(o), values_for(o)))


OPTION = {o.key: o for o in OPTIONS}


@settings(max_examples=30)
@given(case=settings_cases(NUMERIC + RANGE_LISTS + FRACTIONS + CHOICES))
@example(case=(OPTION["stage1.short_side"], 10**30))  # beyond the ints torch and numpy hold
@example(case=(OPTION["stage3.shrink_ratio"], [2**64, 3]))
def test_every_schema_value_composes_within_its_domain_or_is_refused_naming_its_key(case):
    """Compose alone (fast): a value the schema allows composes to itself; any other value is
    refused in one line naming the key; nothing the schema does not allow gets through."""
    option, value = case
    overrides = [*base_overrides(option.key), f"{option.key}={render(value)}"]
    if option in NUMERIC and allowed(option, value):
        overrides += dependents(option.key, value)  # a bound of another field moves along
    try:
        composed = compose_config(overrides)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message, message
        assert names_key(message, option.key), message
        assert not allowed(option, value), f"{option.key}={render(value)} is allowed: {message}"
        return
    got = OmegaConf.select(composed, option.key)
    got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
    within = allowed(option, got, composed)
    assert within, f"{option.key}={render(value)} composed to {got!r}"


RUN_SECTIONS = ("stage1.", "stage2.", "stage3.", "data.", "archive.", "evaluation.", "visualize.")


RUN_OPTIONS = [o for o in NUMERIC + FRACTIONS + CHOICES if o.key.startswith(RUN_SECTIONS)]


@settings(max_examples=15, suppress_health_check=SLOW_EXAMPLES)
@given(case=settings_cases(RUN_OPTIONS))
@example(case=(OPTION["stage2.num_points"], 10**20))  # numpy cannot draw that many points
def test_every_run_setting_gets_to_the_models_or_is_refused_before(case, tiny_split):
    """A run on the tiny models and split with one generated setting: a number that gets as
    far as the models is one the schema allows."""
    option, value = case
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        outcome = run_in_process(
            [
                *tiny_models(work),
                f"data.root={tiny_split}",
                f"{option.key}={render(value)}",
                "--cpu",
            ]
        )
    if outcome.loaded and option in NUMERIC and isinstance(value, int | float):
        assert allowed(option, value), f"{option.key}={render(value)} got to the models"
    if not outcome.loaded:
        outcome.refused_in_one_line()


def config_groups() -> dict[str, list[str]]:
    """The config groups of ``configs/pipeline.yaml``'s defaults list and their options."""
    defaults = yaml.safe_load((CONFIG_DIR / "pipeline.yaml").read_text())["defaults"]
    groups = [next(iter(entry)) for entry in defaults if isinstance(entry, dict)]
    return {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in groups}


GROUPS = config_groups()


def group_choices(group: str) -> st.SearchStrategy[Any]:
    names = GROUPS[group]
    others = [f"../{g}/{n}" for g, ns in GROUPS.items() for n in ns if g != group]
    return st.one_of(
        st.sampled_from(names),
        st.sampled_from([n.upper() for n in names] + [f"{n}/x" for n in names] + others),
        st.text(alphabet="ab./_-", max_size=10),
        st.sampled_from(WRONG_TYPES),
    )


@settings(max_examples=30)
@given(data=st.data())
def test_config_group_choices_compose_or_are_refused_naming_the_group(data):
    group = data.draw(st.sampled_from(sorted(GROUPS)), label="group")
    value = data.draw(group_choices(group), label="value")
    override = f"{group}={render(value) if not isinstance(value, str) else value}"
    try:
        compose_config([override])
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message, message
        assert names_key(message, group), message
        assert value not in GROUPS[group], message
        return
    assert value in GROUPS[group], f"{override} composed"


def test_a_group_set_to_null_is_one_line_in_every_command(tmp_path):
    """``evaluate`` catches only configuration errors: a group set to null is one of them."""
    missing = tmp_path / "pred.zip"
    for argv in (["evaluate", str(missing), "data=null"], ["data=null", "--cpu"]):
        message = run_in_process(argv).refused_in_one_line()
        assert "data" in message


# ----------------------------------------------------------------------------- the model YAML


def _referdino_fields() -> dict[str, Any]:
    """``{key: type}`` of every key of a ReferDINO model YAML (``SegHead.<key>`` nested; the
    fixture's Swin backbone dict as ``backbone.<key>``)."""
    hints = typing.get_type_hints(ReferDINOConfig)
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(ReferDINOConfig):
        keys[f.name] = hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            nested = typing.get_type_hints(hints[f.name])
            keys.update({f"{f.name}.{n}": t for n, t in nested.items()})
    fixture = yaml.safe_load((TINY_REFERDINO / "model.yaml").read_text())
    keys.update({f"backbone.{name}": type(value) for name, value in fixture["backbone"].items()})
    return keys


REFERDINO_KEYS = _referdino_fields()


def referdino_values(kind: Any) -> st.SearchStrategy[Any]:
    wrong = st.sampled_from([*WRONG_TYPES, "swin_B_384_22k", "gelu", {"embed_dim": 32}])
    if kind is bool:
        return st.one_of(st.booleans(), wrong)
    if kind is str:
        return st.one_of(
            st.sampled_from(["sine", "standard", "relu", "gelu", "text_encoder"]), wrong
        )
    if typing.get_origin(kind) is list or kind is list:
        return st.one_of(st.lists(st.integers(-2, 9), max_size=5), wrong)
    return st.one_of(numbers(), wrong)


@pytest.fixture(scope="module")
def two_frames() -> Any:
    """Two fixture frames as the network's input, ``[2, 3, 32, 56] float32`` (small: quick)."""
    from stage1_referdino import preprocess

    paths = sorted((TINY_REFERDINO / "frames").glob("*.jpg"))[:2]
    return preprocess([Image.open(p).convert("RGB") for p in paths], short_side=32)


def change(values: dict, key: str, value: Any, drop: bool) -> dict:
    """``values`` with the dotted ``key`` set to ``value`` (or removed)."""
    out = json.loads(json.dumps(values))
    node, *rest = key.split(".")
    target = out if not rest else out.setdefault(node, {})
    if rest and not isinstance(target, dict):
        out[node] = target = {}
    name = rest[0] if rest else node
    if drop:
        target.pop(name, None)
    else:
        target[name] = value
    return out


@settings(max_examples=15, suppress_health_check=SLOW_EXAMPLES)
@given(data=st.data())
def test_every_model_yaml_key_is_checked_before_the_model_loads(
    data, two_frames, workspace, composed_once, tiny_split
):
    """A model YAML that gets past the checks loads with the checkpoint and runs."""
    from stage1_referdino import load_referdino

    key = data.draw(st.sampled_from(sorted(REFERDINO_KEYS)), label="key")
    drop = data.draw(st.integers(0, 9), label="drop") == 0  # the key left out
    value = None if drop else data.draw(referdino_values(REFERDINO_KEYS[key]), label="value")
    values = yaml.safe_load((TINY_REFERDINO / "model.yaml").read_text())
    values["text_encoder_type"] = str(TINY_REFERDINO / "text_encoder")
    values = change(values, key, value, drop)
    model = fresh(workspace) / "model.yaml"
    model.write_text(yaml.safe_dump(values))
    overrides = [*tiny_models(workspace), f"stage1.model={model}"]
    outcome = run_in_process([*overrides, f"data.root={tiny_split}", "--stages", "1", "--cpu"])
    if not outcome.loaded:
        outcome.refused_in_one_line()
        return
    # Got past the checks: the model must load with the checkpoint and run.
    referdino = load_referdino(model, TINY_REFERDINO / "referdino_checkpoint.pth")
    out = referdino.infer(two_frames, "the bed")
    logits = out["pred_logits"]
    assert logits.shape[1] >= 1 and bool(logits.isfinite().all()), f"{key}={value!r}"


# ----------------------------------------------------------------------------- splits


GOOD_IDS = st.text(alphabet="abcXYZ0189_-é漢", min_size=1, max_size=10)
BAD_IDS = [
    "",
    ".",
    "..",
    "a/b",
    "a\\b",
    "../x",
    " a",
    "a ",
    "a\nb",
    "a\tb",
    "a\0b",
    "\ud800",
    "x" * 300,
    "é" * 130,  # 260 bytes
]
SIZES = [(8, 8), (12, 16), (16, 12)]
UNSET = object()  # a field of the metadata left as generated


@dataclass
class FrameSpec:
    name: Any  # as listed in the metadata (maybe not a string)
    on_disk: str  # "ok", "missing", "corrupt", "bomb", "other_size"


@dataclass
class VideoSpec:
    video_id: str
    frames: list[FrameSpec]
    expressions: list[tuple[str, Any]]  # (exp_id, entry) in order, ids maybe repeated
    size: tuple[int, int]
    frames_field: Any = UNSET  # replaces the frame list when set (not a list, ...)
    expressions_field: Any = UNSET  # replaces the expressions object when set


@dataclass
class SplitSpec:
    layout: str  # a data= benchmark
    videos: list[VideoSpec]
    encoding: str  # "utf-8", "utf-8-sig", "latin-1", "nan", "truncated"
    ground_truth: dict[str, Any] | None  # mask_dict.json's object (mevis only)
    ground_truth_text: str | None = None  # replaces mask_dict.json's text when set
    defects: list[str] = field(default_factory=list)  # why the metadata must be refused
    gt_defects: list[str] = field(default_factory=list)  # why the ground truth is unusable


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


@st.composite
def expression_entries(draw, spec_defects: list[str], where: str) -> Any:
    text = draw(st.sampled_from(["the dog", "a cat on the left", "é漢 moving", "x"]))
    entry: dict[str, Any] = {
        "exp": text,
        "obj_id": [0],
        "anno_id": [draw(st.sampled_from(["1", "2", 3]))],
    }
    flaw = draw(
        st.sampled_from(
            [None] * 6 + ["empty text", "text list", "anno not list", "anno entry", "entry list"]
        )
    )
    if flaw == "empty text":
        entry["exp"] = draw(st.sampled_from(["", "   ", None]))
    elif flaw == "text list":
        entry["exp"] = [text]
    elif flaw == "anno not list":
        entry["anno_id"] = "1"
    elif flaw == "anno entry":
        entry["anno_id"] = [draw(st.sampled_from([[1], None, {"a": 1}, 1.5, True]))]
    elif flaw == "entry list":
        entry = [entry]
    if flaw:
        spec_defects.append(f"{where}: {flaw}")
    return entry


@st.composite
def video_specs(draw, defects: list[str], taken: list[str]) -> VideoSpec:
    if taken and draw(st.integers(0, 9)) == 0:
        video_id = draw(st.sampled_from(taken))
        defects.append(f"duplicate video id {video_id!r}")
    elif draw(st.integers(0, 7)) == 0:
        video_id = draw(st.sampled_from(BAD_IDS))
        defects.append(f"video id {video_id!r}")
    else:
        video_id = draw(GOOD_IDS.filter(lambda v: v not in taken))
    taken.append(video_id)
    names = draw(
        st.lists(
            st.sampled_from(["00000", "00001", "00002", "00005", "f"]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    names = draw(st.permutations(names))  # unsorted lists are fine: metadata order
    frames = [FrameSpec(n, "ok") for n in names]
    flaw = draw(
        st.sampled_from(
            [None] * 8
            + [
                "empty",
                "duplicate",
                "not a string",
                "bad name",
                "missing",
                "corrupt",
                "bomb",
                "other_size",
                "not a list",
            ]
        )
    )
    spec = VideoSpec(video_id, frames, [], draw(st.sampled_from(SIZES)))
    if flaw == "empty":
        spec.frames = []
    elif flaw == "duplicate":
        spec.frames.append(FrameSpec(names[0], "ok"))
    elif flaw == "not a string":
        spec.frames.append(
            FrameSpec(draw(st.sampled_from([7, None, [1], {"a": 1}, 1.5, math.nan])), "ok")
        )
    elif flaw == "bad name":
        spec.frames.append(FrameSpec(draw(st.sampled_from(BAD_IDS[1:])), "ok"))
    elif flaw in ("missing", "corrupt", "bomb", "other_size"):
        spec.frames[-1].on_disk = flaw
    elif flaw == "not a list":
        spec.frames_field = draw(st.sampled_from(["00000", {"0": "00000"}, None]))
    if flaw:
        defects.append(f"video {video_id!r} frames: {flaw}")
    exp_ids: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        if exp_ids and draw(st.integers(0, 9)) == 0:
            exp_id = draw(st.sampled_from(exp_ids))
            defects.append(f"video {video_id!r}: duplicate expression id {exp_id!r}")
        elif draw(st.integers(0, 9)) == 0:
            exp_id = draw(st.sampled_from(BAD_IDS))
            defects.append(f"video {video_id!r}: expression id {exp_id!r}")
        else:
            exp_id = draw(
                st.sampled_from(["0", "1", "2", "17", "é"]).filter(lambda e: e not in exp_ids)
            )
        exp_ids.append(exp_id)
        entry = draw(expression_entries(defects, f"video {video_id!r}, expression {exp_id!r}"))
        spec.expressions.append((exp_id, entry))
    if draw(st.integers(0, 15)) == 0:
        spec.expressions_field = draw(st.sampled_from([{}, [], None]))
        defects.append(f"video {video_id!r}: no expressions")
    return spec


@st.composite
def ground_truths(draw, split: SplitSpec) -> None:
    """``split.ground_truth``: every referred object's masks, maybe damaged (``gt_defects``)."""
    masks: dict[str, Any] = {}
    sizes = {}
    for video in split.videos:
        for _, entry in video.expressions:
            for anno_id in entry["anno_id"]:
                sizes[str(anno_id)] = (video.size, len(video.frames))
    for anno_id, (size, count) in sizes.items():
        frames = []
        for index in range(count):
            mask = np.zeros(size, dtype=bool)
            mask[: index + 1, : size[1] // 2] = True
            frames.append(rle(mask) if index % 3 != 2 else None)
        masks[anno_id] = frames
    flaw = draw(
        st.sampled_from(
            [None] * 4
            + [
                "missing",
                "short",
                "not a list",
                "other size",
                "counts sum",
                "counts bytes",
                "counts list",
                "counts empty",
                "size nan",
                "not an rle",
                "not json",
                "bom",
                "top list",
                "duplicate",
            ]
        )
    )
    split.ground_truth = masks
    if flaw is None:
        return
    split.gt_defects.append(flaw)
    anno_id = draw(st.sampled_from(sorted(masks)))
    first = masks[anno_id][0]
    if flaw == "missing":
        del masks[anno_id]
    elif flaw == "short":
        masks[anno_id] = masks[anno_id][:-1]
    elif flaw == "not a list":
        masks[anno_id] = "abc"
    elif flaw == "other size":
        first["size"] = [first["size"][0] + 1, first["size"][1]]
    elif flaw == "counts sum":
        first["counts"] = rle(np.zeros((2, 2), dtype=bool))["counts"]
    elif flaw == "counts bytes":
        first["counts"] = draw(st.sampled_from(["zzzzzz", "!!!!", "\x7f\x7f"]))
    elif flaw == "counts list":
        first["counts"] = [0, first["size"][0] * first["size"][1]]
    elif flaw == "counts empty":
        first["counts"] = ""
    elif flaw == "size nan":
        split.ground_truth_text = json.dumps(masks).replace(
            f'"size": {json.dumps(first["size"])}', '"size": [NaN, 1]', 1
        )
    elif flaw == "not an rle":
        masks[anno_id][0] = draw(st.sampled_from([5, "abc", [1, 2], {"size": [1, 1]}]))
    elif flaw == "not json":
        split.ground_truth_text = json.dumps(masks)[:-3]
    elif flaw == "bom":  # a BOM is fine: not a defect
        split.gt_defects.pop()
        split.ground_truth_text = "\ufeff" + json.dumps(masks)
    elif flaw == "top list":
        split.ground_truth_text = json.dumps([masks])
    elif flaw == "duplicate":
        text = json.dumps(masks)
        split.ground_truth_text = text[:-1] + f", {json.dumps(anno_id)}: []" + "}"


@st.composite
def splits(draw) -> SplitSpec:
    defects: list[str] = []
    taken: list[str] = []
    layout = draw(st.sampled_from(["mevis_valid_u", "ref_youtube_vos_valid"]))
    videos = [draw(video_specs(defects, taken)) for _ in range(draw(st.integers(1, 3)))]
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "latin-1", "nan", "truncated"]))
    if encoding in ("latin-1", "nan", "truncated"):
        defects.append(f"meta_expressions.json: {encoding}")
    split = SplitSpec(layout, videos, encoding, None, defects=defects)
    if layout == "mevis_valid_u" and not defects and draw(st.booleans()):
        draw(ground_truths(split))
    return split


def jpeg(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def bomb_jpeg() -> bytes:
    """A small JPEG whose header claims 60000 x 60000 pixels."""
    data = bytearray(jpeg((8, 8), 0))
    start = data.index(b"\xff\xc0")
    data[start + 5 : start + 9] = (60000).to_bytes(2, "big") * 2
    return bytes(data)


def json_object(pairs: Sequence[tuple[str, str]]) -> str:
    """A JSON object of already-encoded values; keys may repeat."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


def meta_text(split: SplitSpec) -> str:
    videos = []
    for video in split.videos:
        frames = (
            [f.name for f in video.frames] if video.frames_field is UNSET else video.frames_field
        )
        expressions = json_object([(e, json.dumps(entry)) for e, entry in video.expressions])
        if video.expressions_field is not UNSET:
            expressions = json.dumps(video.expressions_field)
        body = json_object([("frames", json.dumps(frames)), ("expressions", expressions)])
        videos.append((video.video_id, body))
    return json_object([("videos", json_object(videos))])


def write_split_files(root: Path, split: SplitSpec) -> None:
    """The split's files in its layout (frames of a video id that cannot be a folder: none)."""
    if split.layout == "mevis_valid_u":
        meta, frames_dir = root / "meta_expressions.json", root / "JPEGImages"
    else:
        meta = root / "meta_expressions" / "valid" / "meta_expressions.json"
        frames_dir = root / "valid" / "JPEGImages"
        test_meta = root / "meta_expressions" / "test" / "meta_expressions.json"
        test_meta.parent.mkdir(parents=True)
        test_meta.write_text(
            json.dumps({"videos": {"test_only": {"frames": [], "expressions": {}}}})
        )
    meta.parent.mkdir(parents=True, exist_ok=True)
    text = meta_text(split)
    if split.encoding == "latin-1":
        data = (
            text.replace("\\u00e9", "é").encode("utf-8").replace("é".encode(), b"\xe9") + b" \xe9"
        )
    elif split.encoding == "nan":
        data = text.replace('"frames": [', '"frames": [NaN, ', 1).encode()
    elif split.encoding == "truncated":
        data = text[: len(text) // 2].encode()
    else:
        data = text.encode(split.encoding, errors="surrogatepass")
    meta.write_bytes(data)
    for index, video in enumerate(split.videos):
        folder = frames_dir / video.video_id
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError):  # an id no folder can have
            continue
        for frame in video.frames:
            if not isinstance(frame.name, str) or frame.on_disk == "missing":
                continue
            content = {
                "corrupt": b"not a jpeg",
                "bomb": bomb_jpeg(),
                "other_size": jpeg((video.size[0] + 4, video.size[1]), index),
            }.get(frame.on_disk) or jpeg(video.size, index)
            with contextlib.suppress(OSError, ValueError):  # a name no file can have
                (folder / f"{frame.name}.jpg").write_bytes(content)
    if split.ground_truth is not None:
        text = split.ground_truth_text or json.dumps(split.ground_truth)
        (root / "mask_dict.json").write_bytes(text.encode("utf-8"))


def one_video(
    frames: list[FrameSpec], *, video_id: str = "v", encoding: str = "utf-8"
) -> SplitSpec:
    """A MeViS split of one video with one expression; no defect noted (add them)."""
    expressions = [("0", {"exp": "the dog", "anno_id": [1]})]
    return SplitSpec(
        "mevis_valid_u", [VideoSpec(video_id, frames, expressions, (8, 8))], encoding, None
    )


def with_defect(split: SplitSpec, defect: str, ground_truth: bool = False) -> SplitSpec:
    (split.gt_defects if ground_truth else split.defects).append(defect)
    return split


def twice_listed() -> SplitSpec:
    split = one_video([FrameSpec("00000", "ok")])
    split.videos.append(dataclasses.replace(split.videos[0], frames=[FrameSpec("00001", "ok")]))
    return with_defect(split, "video 'v' twice (JSON keeps only the last)")


def damaged_ground_truth(counts: str) -> SplitSpec:
    split = one_video([FrameSpec("00000", "ok")])
    split.ground_truth = {"1": [{"size": [8, 8], "counts": counts}]}
    return with_defect(split, f"counts {counts!r}", ground_truth=True)


# Cases found by the generator (kept as explicit examples: they run first, every time).
FOUND_SPLITS = [
    with_defect(one_video([FrameSpec("00000", "ok"), FrameSpec({"a": 1}, "ok")]), "a dict frame"),
    with_defect(one_video([FrameSpec("00000", "ok"), FrameSpec(None, "ok")]), "a null frame"),
    with_defect(one_video([FrameSpec("00000", "bomb")]), "a frame of 3.6 gigapixels"),
    with_defect(one_video([FrameSpec("0" * 260, "ok")]), "a frame name of 260 bytes"),
    with_defect(one_video([FrameSpec("00000", "ok")], video_id="a\nb"), "a line break in an id"),
    one_video([FrameSpec("00000", "ok")], encoding="utf-8-sig"),  # a byte-order mark is fine
    damaged_ground_truth("4"),  # 4 of 64 pixels: the rest uninitialised memory
    damaged_ground_truth("zzzzzz"),
    twice_listed(),
]


@settings(max_examples=30, suppress_health_check=SLOW_EXAMPLES)
@given(split=splits())
@example(split=FOUND_SPLITS[0])
@example(split=FOUND_SPLITS[1])
@example(split=FOUND_SPLITS[2])
@example(split=FOUND_SPLITS[3])
@example(split=FOUND_SPLITS[4])
@example(split=FOUND_SPLITS[5])
@example(split=FOUND_SPLITS[6])
@example(split=FOUND_SPLITS[7])
@example(split=FOUND_SPLITS[8])
def test_every_split_gets_to_the_models_or_is_refused_before(split, workspace, composed_once):
    """Metadata with a defect is refused before the models, one line per problem; metadata
    without one gets to the models; damaged ground truth is named in a warning and the run
    goes on unscored."""
    root = fresh(workspace) / "split"
    write_split_files(root, split)
    outcome = run_in_process(
        [f"data={split.layout}", *tiny_models(workspace), f"data.root={root}", "--cpu"]
    )
    if split.defects:
        outcome.refused_in_one_line()
        return
    assert outcome.loaded, f"good metadata refused: {outcome.errors}"
    unscored = [w for w in outcome.warnings if "mask_dict.json" in w and "not evaluated" in w]
    if split.ground_truth is not None:
        assert bool(unscored) == bool(split.gt_defects), (split.gt_defects, outcome.warnings)
        for warning in unscored:
            assert "\n" not in warning, warning


RLE_CHARACTERS = "".join(chr(c) for c in range(48, 48 + 64)) + " !~é"


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # numpy 2's copy keyword
@settings(max_examples=100)
@given(
    mask=st.integers(1, 12).flatmap(
        lambda h: st.integers(1, 12).flatmap(
            lambda w: st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(
                lambda bits: np.array(bits, dtype=bool).reshape(h, w)
            )
        )
    ),
    counts=st.text(alphabet=RLE_CHARACTERS, max_size=12),
)
def test_ground_truth_masks_pycocotools_decodes_unsafely_are_refused(mask, counts):
    """Every mask pycocotools encodes is accepted; any other counts string is accepted only when
    pycocotools decodes it into 0/1 pixels (it does not check: short runs leave uninitialised
    memory, long ones write past the mask)."""
    from rvos.mevis import rle_problem

    encoded = rle(mask)
    assert rle_problem(encoded, *mask.shape) is None
    assert (mask_utils.decode({**encoded, "counts": encoded["counts"].encode()}) == mask).all()
    damaged = {"size": list(mask.shape), "counts": counts}
    if rle_problem(damaged, *mask.shape) is None:
        decoded = mask_utils.decode({**damaged, "counts": counts.encode()})
        assert decoded.shape == mask.shape and set(np.unique(decoded)) <= {0, 1}


# ----------------------------------------------------------------------------- the real command


@pytest.mark.slow
def test_refused_inputs_print_one_line_and_no_traceback_from_the_real_command(tmp_path, run_cli):
    """A few of the generated inputs through ``run_pipeline.py`` itself."""
    bad_yaml = yaml.safe_load((TINY_REFERDINO / "model.yaml").read_text())
    bad_yaml["num_queries"] = "abc"
    bad_yaml["text_encoder_type"] = str(TINY_REFERDINO / "text_encoder")
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump(bad_yaml))
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_split_files(good, one_video([FrameSpec("00000", "ok")]))
    write_split_files(bad, FOUND_SPLITS[0])  # a frame listed as {"a": 1}
    commands = [
        [*tiny_models(tmp_path), f"stage1.model={model}", f"data.root={good}", "--cpu"],
        [*tiny_models(tmp_path), f"data.root={bad}", "--cpu"],
        ["evaluate", str(tmp_path / "pred.zip"), "data=null"],
    ]
    for argv in commands:
        proc = run_cli(*argv, check=False)
        assert proc.returncode in (1, 2), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1, proc.stderr[-3000:]
