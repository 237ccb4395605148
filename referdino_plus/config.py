"""The pipeline configuration: one typed schema, every value from ``configs/pipeline.yaml``.

:class:`PipelineConfig` is the schema: the shared sections declared here and each stage's own
options class (``stage1_referdino.options``, ``stage2_sam2_refine.options``,
``stage3_fusion.options``). None of them has a default value: the defaults are written once, in
the YAML files of ``configs/`` (shipped inside this package). Hydra composes the YAML with the
command line's ``key=value`` overrides against the schema, so a wrong type, a value outside a
choice or an unknown key fails at once; the options classes then check their ranges.

- :func:`compose_config`: the composed ``DictConfig`` (to save, print or override further);
- :func:`load_config`: the same as typed objects (what the pipeline and the demo use).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rvos.archive_limits import ArchiveLimits
from rvos.options import Choice, OptionError, bounded, check_declared, jobs, registered
from stage1_referdino.options import Stage1Options
from stage2_sam2_refine.options import Stage2Options
from stage3_fusion.options import FusionOptions

# configs/ at the repository root, where users look; inside the package it is a link to it (and a
# copy in a wheel).
CONFIG_DIR = Path(str(resources.files("referdino_plus") / "configs"))
SCHEMA_NAME = "pipeline_schema"
LAUNCHER_SCHEMA_GROUP = "launcher_schema"


class ConfigError(ValueError):
    """A configuration that does not fit the schema; the message is one line naming the key."""


@dataclass
class DataOptions:
    """The ``data`` section: which benchmark split to run on (``configs/data/<name>.yaml``).

    Attributes:
        root: the split's folder.
        validate_frames: check every listed frame before starting.
        layout: how the split's files are laid out (:data:`rvos.splits.SPLIT_LAYOUTS`).
        answer: the stage-1 answer rule of ``stage1.zip`` (:data:`rvos.proposals.ANSWER_RULES`).
        archive: the archives' member layout (:data:`rvos.archive.ARCHIVE_WRITERS`).
        metric: how archives are scored when the split has ground truth
            (:data:`rvos.evaluation.METRICS`); ``None``: never scored locally.
    """

    SECTION = "data"

    root: str
    validate_frames: bool
    # The registries live with their code (archives, metrics): loaded when a config is checked.
    layout: str = registered("rvos.splits:SPLIT_LAYOUTS")
    answer: str = registered("rvos.proposals:ANSWER_RULES")
    archive: str = registered("rvos.archive:ARCHIVE_WRITERS")
    metric: str | None = registered("rvos.evaluation:METRICS")

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class ArchiveOptions:
    """The ``archive`` section: how the PNG archives are written."""

    SECTION = "archive"

    png_compress_level: int = bounded(0, 9)  # zlib's levels
    jobs: int = jobs()

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class EvaluationOptions:
    """The ``evaluation`` section: scoring the archives when the split has ground truth;
    ``limits``: what an archive may hold (:class:`rvos.archive_limits.ArchiveLimits`)."""

    SECTION = "evaluation"

    enabled: bool
    jobs: int = jobs()
    limits: ArchiveLimits

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class VisualizeOptions:
    """The ``visualize`` section: pictures of a run's masks and of the demo's overlay."""

    SECTION = "visualize"

    enabled: bool
    num_frames: int = bounded(1)
    tile_height: int = bounded(1)
    alpha: float = bounded(0.0, 1.0)
    contour_width: int = bounded(0)
    caption_max_lines: int = bounded(1)

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class EnsembleOptions:
    """The ``ensemble`` section: ``referdino-plus ensemble A.zip B.zip ... out=E.zip``."""

    SECTION = "ensemble"

    weights: list[float] | None = bounded(0.0)  # one per archive; None: equal weights
    out: str | None  # the archive to write

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class BadCaseOptions:
    """The ``bad_cases`` section: the bad-case report of a run and of ``referdino-plus badcases``."""

    SECTION = "bad_cases"

    enabled: bool
    duplicate_iou: float = bounded(0.0, 1.0)
    spatial_words: list[str]
    worst: int = bounded(0)
    shown: int = bounded(0)

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class DemoOptions:
    """The ``demo`` section: the overlay video of ``run_pipeline.py demo`` and the stage-1
    windows of ``demo`` and ``app``."""

    SECTION = "demo"

    fps: float = bounded(1e-3)
    crf: int = bounded(0, 51)  # libx264's scale
    window_frames: int | None = bounded(2)  # stage1.window.frames of demo and app

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class RunOptions:
    """The ``run`` section: one run per ``work_dir`` (:mod:`referdino_plus.workdir_lock`)."""

    SECTION = "run"

    lock: bool
    lock_timeout: float | None = bounded(0)  # seconds; null: as long as it takes
    lock_poll_s: float = bounded(1e-3)

    def __post_init__(self) -> None:
        check_declared(self)


class LauncherKind(Choice):
    """Where a run's stages execute (the ``launcher`` config group; :mod:`referdino_plus.launchers`)."""

    local = "local"  # this machine: one worker per --gids GPU, or the CPU
    slurm = "slurm"  # a SLURM job array submitted through submitit


@dataclass
class LauncherOptions:
    """The ``launcher`` section (``configs/launcher/<name>.yaml``): where the stages run.

    ``launcher=local`` (the default) has no other setting; ``launcher=slurm`` adds its own
    section, ``launcher.slurm`` (:class:`SlurmLauncherOptions`).
    """

    SECTION = "launcher"

    name: LauncherKind


@dataclass
class SlurmOptions:
    """The ``launcher.slurm`` section (``configs/launcher/slurm.yaml``): the job array's
    resources, and how the submitting command waits for it. Also spelled ``launcher.<key>``
    (:data:`KEY_ALIASES`)."""

    SECTION = "launcher.slurm"

    partition: str | None  # null: the cluster's default
    account: str | None
    qos: str | None
    tasks: int = bounded(1)
    # One device per task (the in-process worker): more GPUs means more tasks.
    gpus_per_task: int = bounded(0, 1)
    cpus_per_task: int = bounded(1)
    mem_gb: float | None = bounded(1e-3)  # null: the partition's default
    timeout_min: int = bounded(1)
    max_requeues: int = bounded(0)
    sbatch_args: dict[str, str]
    setup: list[str]
    log_dir: str
    job_name: str
    wait: bool
    poll_s: float = bounded(1e-3)
    result_wait_s: float = bounded(0)

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class SlurmLauncherOptions(LauncherOptions):
    """The ``launcher`` section of ``launcher=slurm``: its name and its own section."""

    slurm: SlurmOptions


# The schema of each launcher's section: configs/launcher/<name>.yaml is composed against it.
LAUNCHER_SCHEMAS: dict[str, type[LauncherOptions]] = {
    LauncherKind.local: LauncherOptions,
    LauncherKind.slurm: SlurmLauncherOptions,
}
# Spellings of keys that moved, kept for the command lines people type: old -> new.
KEY_ALIASES = {
    f"launcher.{field.name}": f"launcher.slurm.{field.name}"
    for field in dataclasses.fields(SlurmOptions)
}


@dataclass
class WeightsOptions:
    """The ``weights`` section: the released weights by group (``bash download_ckpts.sh
    <group>``), each a name -> its hub reference or path; the other sections name them."""

    SECTION = "weights"

    referdino: dict[str, str]
    sam2: dict[str, str]

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class Sam2Choice:
    """One SAM 2 size offered by the app's page (an entry of ``app.sam2_models``)."""

    name: str
    model: str
    checkpoint: str


@dataclass
class AppOptions:
    """The ``app`` section: the browser page of ``run_pipeline.py app`` and its limits."""

    SECTION = "app"

    host: str
    port: int = bounded(1, 65535)
    results_dir: str
    keep_results: int = bounded(1)
    cache_hours: float = bounded(1e-3)
    max_upload_mb: int = bounded(1)
    max_clip_seconds: float = bounded(1e-3)
    max_frames: int = bounded(1)
    default_max_frames: int = bounded(1, "max_frames")
    max_frame_step: int = bounded(1)
    max_sentences: int = bounded(1)
    queue_size: int = bounded(1)
    gallery_frames: int = bounded(1)
    sam2_models: list[Sam2Choice]
    examples: list[str]

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class PipelineConfig:
    """Everything a run reads from ``configs/pipeline.yaml``: see that file for each value."""

    SECTION = ""

    name: str
    work_dir: str
    submission_dir: str
    weights: WeightsOptions
    data: DataOptions
    stage1: Stage1Options
    stage2: Stage2Options
    stage3: FusionOptions
    archive: ArchiveOptions
    evaluation: EvaluationOptions
    visualize: VisualizeOptions
    ensemble: EnsembleOptions
    bad_cases: BadCaseOptions
    demo: DemoOptions
    app: AppOptions
    run: RunOptions
    launcher: LauncherOptions


ConfigStore.instance().store(name=SCHEMA_NAME, node=PipelineConfig)
for _kind, _schema in LAUNCHER_SCHEMAS.items():
    # configs/launcher/<name>.yaml: ``defaults: [/launcher_schema/<name>@_here_, _self_]``
    ConfigStore.instance().store(group=LAUNCHER_SCHEMA_GROUP, name=str(_kind), node=_schema)


def _one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line naming the key."""
    deepest: BaseException = err
    while deepest.__cause__ is not None:
        deepest = deepest.__cause__
    if isinstance(deepest, OptionError):
        return str(deepest)
    text = str(deepest)
    key = re.search(r"full_key: (\S+)", text)
    first = text.strip().splitlines()[0] if text.strip() else type(deepest).__name__
    not_optional = re.fullmatch(r"field '(\S+)' is not Optional", first)
    if not_optional:
        first = f"{not_optional.group(1)}: needs a value (null is not allowed here)"
    if isinstance(deepest, OmegaConfBaseException) and key and key.group(1) not in first:
        first = f"{key.group(1)}: {first}"
    options = re.search(r"Available options[^:]*:((?:\n\t\S+)+)", text)
    if options:
        first += f" (available: {', '.join(options.group(1).split())})"
    return " ".join(first.split())


def _keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every key of a composed config (a free-form dict setting is one key)."""
    for key in node:
        path = f"{prefix}{key}"
        yield path
        child = node._get_node(key)
        if (
            isinstance(child, DictConfig)
            and not child._is_none()
            and OmegaConf.get_type(child) is not dict
        ):
            yield from _keys(child, f"{path}.")


def _schema_keys(schema: type, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every field of a schema dataclass, nested sections included."""
    for name, hint in typing.get_type_hints(schema).items():
        if typing.get_origin(hint) is typing.ClassVar:
            continue
        path = f"{prefix}{name}"
        yield path
        if dataclasses.is_dataclass(hint):
            yield from _schema_keys(hint, f"{path}.")


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys the schema does not define (e.g. a misspelled ``+stage2.score_treshold``).

    Raises:
        ConfigError: naming the first unknown key and the closest known ones.
    """
    known = set(_schema_keys(PipelineConfig))
    for schema in LAUNCHER_SCHEMAS.values():  # each launcher's section
        known |= set(_schema_keys(schema, f"{LauncherOptions.SECTION}."))
    for key in _keys(cfg):
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key}: not a setting of configs/pipeline.yaml{hint}")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/pipeline.yaml`` composed with hydra ``overrides`` (``key=value``), checked.

    A key that moved may be given by its old spelling (:data:`KEY_ALIASES`); errors name it as
    given. Works whether or not the ``sam2`` package (which initialises hydra's global state on
    import) was imported before; hydra's global state is restored afterwards.

    Raises:
        ConfigError: an unknown key, a wrong type or choice, a value out of its range, or a
            setting of another launcher than the chosen one.
    """
    overrides, aliased = resolve_aliases(overrides)
    check_group_choices(overrides)
    try:
        return _compose(overrides)
    except ConfigError as err:
        error = _other_launchers_setting(overrides) or err
        message = str(error)
        for old, new in aliased.items():
            message = message.replace(new, old)
        raise ConfigError(message) from None


def check_group_choices(overrides: Sequence[str]) -> None:
    """Refuse an override of a config group (``data=``, ``launcher=``: a folder of
    ``configs/``) that names none of its files: null, a path into another folder, a misspelling.

    Raises:
        ConfigError: naming the group, the value and the group's options.
    """
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        folder = CONFIG_DIR / key
        if override.startswith("~") or not key.isidentifier() or not folder.is_dir():
            continue
        names = sorted(path.stem for path in folder.glob("*.yaml"))
        if value.strip("'\"") not in names:
            raise ConfigError(
                f"{key}={value}: Could not find '{key}/{value}' in configs/ "
                f"(available: {', '.join(names)})"
            )


def _override_key(override: str) -> str:
    """The key of a hydra override: ``+launcher.tasks=1`` -> ``launcher.tasks``."""
    return override.lstrip("+~").partition("=")[0]


def resolve_aliases(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``overrides`` with old spellings of keys (:data:`KEY_ALIASES`, nested keys too) replaced,
    and ``{old: new}`` of the keys replaced."""
    resolved, aliased = [], {}
    for override in overrides:
        key = _override_key(override)
        for old, new in KEY_ALIASES.items():
            if key == old or key.startswith(f"{old}."):
                prefix = override[: len(override) - len(override.lstrip("+~"))]
                override = prefix + new + override[len(prefix) + len(old) :]
                aliased[old] = new
                break
        resolved.append(override)
    return resolved, aliased


def _other_launchers_setting(overrides: Sequence[str]) -> ConfigError | None:
    """The error of an override of a launcher's own section (``launcher.slurm.tasks=16``) when
    another launcher is chosen, or ``None``."""
    sections = {f"{LauncherOptions.SECTION}.{kind}." for kind in LAUNCHER_SCHEMAS}
    own = [o for o in overrides if any(_override_key(o).startswith(s) for s in sections)]
    if not own:
        return None
    try:
        chosen = str(_compose([o for o in overrides if o not in own]).launcher.name)
    except ConfigError:
        return None
    key = _override_key(own[0])
    if key.startswith(f"{LauncherOptions.SECTION}.{chosen}."):
        return None
    launcher = key.split(".")[1]
    return ConfigError(
        f"{own[0].lstrip('+~')}: a setting of launcher={launcher}; add launcher={launcher} to "
        f"use it (now: launcher={chosen})"
    )


def _compose(overrides: Sequence[str]) -> DictConfig:
    """:func:`compose_config` without the old spellings."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name="pipeline", overrides=list(overrides))
        check_known_keys(cfg)
        OmegaConf.to_object(cfg)  # the ranges (__post_init__) of every section
    except (HydraException, OmegaConfBaseException, OptionError) as err:
        raise ConfigError(_one_line(err)) from None
    finally:
        restore_gh_from_backup(backup)
    return cfg


def load_config(overrides: Sequence[str] = ()) -> PipelineConfig:
    """:func:`compose_config` as typed objects (choices are :class:`rvos.options.Choice` members)."""
    return to_typed(compose_config(overrides))


def to_typed(cfg: DictConfig) -> PipelineConfig:
    """A composed configuration as a :class:`PipelineConfig`."""
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, PipelineConfig)
    return typed


def to_plain(section: Any) -> Any:
    """A typed section (or ``DictConfig``) as plain JSON-ready data (choices as strings)."""
    node = section if isinstance(section, DictConfig) else OmegaConf.structured(section)
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def from_yaml(text: str) -> PipelineConfig:
    """A configuration saved by :func:`to_yaml`, checked against the schema again.

    Raises:
        ConfigError: the text does not fit the schema (e.g. saved by another version).
    """
    try:
        saved = OmegaConf.create(text)
        # The launcher's section by its own schema (launcher=slurm has one more section).
        launcher = LAUNCHER_SCHEMAS[OmegaConf.select(saved, "launcher.name", default="local")]
        schema = OmegaConf.structured(PipelineConfig)
        node = OmegaConf.merge(schema, {"launcher": OmegaConf.structured(launcher)}, saved)
        return to_typed(node)
    except (OmegaConfBaseException, OptionError) as err:
        raise ConfigError(_one_line(err)) from None


def to_yaml(cfg: DictConfig | PipelineConfig) -> str:
    """The configuration as YAML, every value resolved."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_yaml(node, resolve=True)
