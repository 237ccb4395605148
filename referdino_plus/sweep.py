"""Sweeps on a labelled split: many configurations of the stages, each scored on the split's
ground truth, every stage computed once per configuration it depends on.

The command line's overrides are read with hydra's own override grammar: a plain ``key=value``
holds for every point, a sweep (``key=a,b,c``, ``key=choice(a,b)``, ``key=range(0.2,0.4,0.1)``,
``key=[1,2],[2,3]``) lists a key's values, and hydra's basic sweeper expands the sweeps into their
product, the *points* (:func:`expand`). Only the stages' own settings can be swept (``stage1.*``,
``stage2.*``, ``stage3.*``), and only those that change what the stages compute.

Records are shared through their fingerprints (:func:`referdino_plus.pipeline.stage_fingerprints`,
chained: a stage's fingerprint covers its settings and those of the stages before it). Under
``work_dir/sweep/``::

    stage<N>/<fingerprint>/<video>.npz   the records of stage N made with that fingerprint
    stage<N>/<fingerprint>.zip           its archive (shared by the points, as a hard link)
    points/<fingerprint>/                a point's run (named by its last stage's fingerprint):
        stage<N> -> ../../stage<N>/<fingerprint of stage N>   (links)
        config.yaml, report.json, submissions/, result.json (its scores, written last)

A point runs :func:`referdino_plus.pipeline.run` on its own folder, with the stages from the
first one whose records are missing: a sweep over stage-3 settings runs stage 3 only. Records
of the run in ``work_dir`` itself (``work_dir/stage<N>/``) with a point's fingerprint are linked
in first, so a sweep after a run reuses its stages. Points run one after another, each over the
run's devices or SLURM tasks like a run; a point with a ``result.json`` of its fingerprint and
split is done, so an interrupted sweep goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from referdino_plus.config import ConfigError, PipelineConfig, load_config
from referdino_plus.stages import LAST_STAGE, STAGE_NUMBERS, STAGES, Fingerprints
from rvos import intermediates as im
from rvos.io import write_error, write_json
from rvos.splits import DataError, Split

logger = logging.getLogger(__name__)

SWEEP_DIR = "sweep"  # under work_dir
POINTS_DIR = "points"  # under SWEEP_DIR: one folder per point
RESULT_FILE = "result.json"  # in a point's folder: its scores; written last
# The sections whose settings a sweep varies: those the stages compute with.
SWEEPABLE_SECTIONS = tuple(f"stage{number}" for number in STAGE_NUMBERS)


class SweepError(ValueError):
    """A sweep that cannot start or did not complete; the message is one line saying what to do."""


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of a sweep.

    Attributes:
        index: its place in the sweep, from 1.
        values: ``{swept key: value}`` as the command line spells it (``"[1,2]"``), in the
            sweep's key order.
        cfg: the point's configuration (the sweep's fixed overrides, then its values).
        fingerprints: each stage's configuration fingerprint.
    """

    index: int
    values: dict[str, str]
    cfg: PipelineConfig
    fingerprints: Fingerprints

    @property
    def overrides(self) -> list[str]:
        """The point's ``key=value`` overrides."""
        return [f"{key}={value}" for key, value in self.values.items()]

    @property
    def fingerprint(self) -> str:
        """The last stage's fingerprint: it chains all the others, so it names the point."""
        return self.fingerprints[LAST_STAGE.number]

    def describe(self) -> str:
        return f"point {self.index} ({' '.join(self.overrides)})"


@dataclass(frozen=True)
class SweepPlan:
    """A sweep that is checked and ready to run.

    Attributes:
        fixed: the overrides that hold for every point, as given.
        keys: the swept keys, in the command line's order.
        points: the points, in the order hydra's sweeper expands them.
        split: the labelled split every point is scored on.
        root: ``work_dir/sweep``.
        base: the configuration of the fixed overrides alone (its ``work_dir`` holds ``root``).
    """

    fixed: list[str]
    keys: list[str]
    points: list[SweepPoint]
    split: Split
    root: Path
    base: PipelineConfig


@dataclass(frozen=True)
class PointResult:
    """A scored point: its scores (fractions: ``J``, ``F``, ``J&F``, then the metric's own, e.g.
    MeViS v2's ``N-acc`` and ``T-acc``), its archive, and whether this sweep ran it."""

    point: SweepPoint
    scores: dict[str, float]
    archive: Path
    ran: bool


# ----------------------------------------------------------------------------- the points


def expand(overrides: Sequence[str]) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """Split ``overrides`` into the fixed ones and the sweeps, and expand the sweeps with hydra's
    basic sweeper (their product, the last key varying fastest).

    Returns:
        ``(fixed overrides as given, swept keys, [{key: value} per point])``.
    Raises:
        SweepError: an override hydra cannot read, a sweep of a key that cannot be swept
            (:func:`check_sweepable`) or that cannot be listed (``interval(...)``), or no sweep.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for override in overrides:
        try:
            parsed.extend(parser.parse_overrides([override]))
        except HydraException as err:
            reason = " ".join(str(err).split("See https")[0].split())
            raise SweepError(
                f"{override}: not an override hydra reads ({reason}); quote it for the shell, "
                "e.g. 'stage3.shrink_ratio=[1,2],[2,3]'"
            ) from None
    fixed = [text for text, p in zip(overrides, parsed, strict=True) if not p.is_sweep_override()]
    sweeps = [p for p in parsed if p.is_sweep_override()]
    if not sweeps:
        raise SweepError(
            "nothing to sweep: give a stage setting several values, e.g. "
            "stage2.score_threshold=0.2,0.275,0.35 or stage3.shrink_ratio=[1,2],[2,3]"
        )
    for sweep in sweeps:
        check_sweepable(sweep.input_line, sweep.get_key_element())
        if not sweep.is_discrete_sweep():
            raise SweepError(
                f"{sweep.input_line}: a sweep lists its values (a,b,c, choice(...), range(...)); "
                "an interval has none to list"
            )
    keys = list(dict.fromkeys(s.get_key_element() for s in sweeps))
    [batch] = BasicSweeper.split_arguments(sweeps, None)
    points = [dict(word.split("=", 1) for word in point) for point in batch]
    return fixed, keys, points


def check_sweepable(given: str, key: str) -> None:
    """A sweep varies a stage's own setting (``stage1.*``, ``stage2.*``, ``stage3.*``).

    Raises:
        SweepError: naming the override and the keys that can be swept.
    """
    if key.partition(".")[0] not in SWEEPABLE_SECTIONS or "." not in key:
        raise SweepError(
            f"{given}: {key} cannot be swept: a sweep varies the stages' settings "
            f"({', '.join(f'{s}.*' for s in SWEEPABLE_SECTIONS)}); give it one value"
        )


def build_points(
    fixed: Sequence[str], keys: Sequence[str], values: Sequence[dict[str, str]]
) -> list[SweepPoint]:
    """Each point's configuration (``fixed``, then its values) and fingerprints.

    Raises:
        SweepError: a point's configuration does not compose (an unknown key, a value of the
            wrong type or out of range: hydra's message, naming the point), or two points are
            the same configuration (a swept key that does not change what the stages compute).
    """
    from referdino_plus.pipeline import stage_fingerprints

    points = []
    for index, point_values in enumerate(values, start=1):
        overrides = [f"{k}={v}" for k, v in point_values.items()]
        try:
            cfg = load_config([*fixed, *overrides])
        except ConfigError as err:
            raise SweepError(f"{err} (sweep point {' '.join(overrides)})") from None
        points.append(SweepPoint(index, dict(point_values), cfg, stage_fingerprints(cfg)))
    check_distinct(points, keys)
    return points


def check_distinct(points: Sequence[SweepPoint], keys: Sequence[str]) -> None:
    """Refuse a sweep whose points repeat a configuration.

    Raises:
        SweepError: naming the first swept key whose values made the same configuration.
    """
    seen: dict[str, SweepPoint] = {}
    for point in points:
        twin = seen.setdefault(point.fingerprint, point)
        if twin is point:
            continue
        differ = [k for k in keys if twin.values[k] != point.values[k]]
        if not differ:
            raise SweepError(
                f"{twin.describe()} and point {point.index} are the same: a value is given twice"
            )
        named = ", ".join(f"{k}={twin.values[k]} and {k}={point.values[k]}" for k in differ)
        raise SweepError(
            f"{named} make the same configuration: {', '.join(differ)} changes how or where the "
            "stages run, not what they compute (or is not read with these settings); sweep "
            "settings that change the masks"
        )


def labelled_split(cfg: PipelineConfig) -> Split:
    """The split of ``data.root``, which a sweep scores every point on.

    Raises:
        SweepError: the split cannot be read, its benchmark has no metric (``data.metric``), or
            it has no ground truth, or ground truth that misses expressions.
    """
    from referdino_plus.preflight import check_benchmark, ground_truth_gaps

    try:
        split = Split(cfg.data.root, cfg.data.layout)
        check_benchmark(cfg, split)
    except DataError as err:
        raise SweepError(str(err)) from None
    if not cfg.data.metric:
        raise SweepError(
            "data.metric=null: this benchmark is not scored here, so a sweep cannot compare its "
            "points; sweep on a labelled split (e.g. data=mevis_valid_u)"
        )
    if not split.has_ground_truth:
        raise SweepError(
            f"{split.root} has no ground truth ({split.layout.mask_file or 'masks'}): a sweep "
            "scores each point on it; sweep on a labelled split (e.g. data=mevis_valid_u), then "
            "run the best point on valid or test"
        )
    if split.layout.mask_file:
        gaps = ground_truth_gaps(split)
        if gaps:
            raise SweepError(
                f"{split.ground_truth_path} does not cover {len(gaps)} expression(s) "
                f"({', '.join(gaps[:3])}{' ...' if len(gaps) > 3 else ''}): a sweep scores "
                "every expression"
            )
    return split


def plan_sweep(overrides: Sequence[str]) -> SweepPlan:
    """Read, expand and check a sweep before any work: everything that would stop it is found
    here (:func:`expand`, :func:`build_points`, :func:`labelled_split`).

    Raises:
        SweepError: one line saying what is wrong.
    """
    fixed, keys, values = expand(overrides)
    try:
        base = load_config(fixed)
    except ConfigError as err:
        raise SweepError(str(err)) from None
    points = build_points(fixed, keys, values)
    if base.launcher.name == "slurm" and not base.launcher.slurm.wait:
        raise SweepError(
            "launcher.slurm.wait=false: a sweep scores each point once its tasks have ended; "
            "leave launcher.slurm.wait=true (the sweep itself can run in a job or a terminal "
            "multiplexer)"
        )
    split = labelled_split(base)
    return SweepPlan(fixed, keys, points, split, Path(base.work_dir) / SWEEP_DIR, base)


# ----------------------------------------------------------------------------- shared records


def point_dir(root: Path, point: SweepPoint) -> Path:
    """``root/points/<the point's fingerprint>``: the point's run folder."""
    return root / POINTS_DIR / point.fingerprint


def records_dir(root: Path, stage: int, fingerprint: str) -> Path:
    """``root/stage<stage>/<fingerprint>``: the records of ``stage`` made with ``fingerprint``."""
    return root / f"stage{stage}" / fingerprint


def shared_archive(root: Path, stage: int, fingerprint: str) -> Path:
    """``root/stage<stage>/<fingerprint>.zip``: the archive of those records."""
    return root / f"stage{stage}" / f"{fingerprint}.zip"


def link_file(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` as a hard link (a copy where the file system has none),
    atomically; ``target``'s folder is made.

    Raises:
        WriteError: ``target`` cannot be written.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copy2(source, temporary)
        os.replace(temporary, target)
    except OSError as err:
        raise write_error(target, err) from err


def link_stage_dirs(root: Path, folder: Path, fingerprints: Fingerprints) -> None:
    """Make ``folder/stage<N>`` a link to the shared records of the point's fingerprint of each
    stage (relative, so the sweep folder can move).

    Raises:
        WriteError: a folder or link cannot be made.
    """
    for stage in STAGE_NUMBERS:
        shared = records_dir(root, stage, fingerprints[stage])
        link = folder / f"stage{stage}"
        target = os.path.relpath(shared, folder)
        try:
            shared.mkdir(parents=True, exist_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            if link.is_symlink():
                link.unlink()
            os.symlink(target, link, target_is_directory=True)
        except OSError as err:
            raise write_error(link, err) from err


def adopt_run_records(plan: SweepPlan) -> int:
    """Link the finished records of the run in ``work_dir`` (``work_dir/stage<N>/``) whose
    fingerprint some point shares into the sweep's records, unless they are there already (and
    its frame check's cache, unless the sweep has one).

    Returns:
        how many records were linked in.
    """
    from referdino_plus.preflight import FRAME_CHECK_CACHE

    work_dir = Path(plan.base.work_dir)
    cache = work_dir / FRAME_CHECK_CACHE
    if cache.is_file() and not (plan.root / FRAME_CHECK_CACHE).exists():
        link_file(cache, plan.root / FRAME_CHECK_CACHE)
    adopted = 0
    for stage in STAGES:
        wanted = {point.fingerprints[stage.number] for point in plan.points}
        for video_id in plan.split.video_ids:
            source = stage.record_path(work_dir, video_id)
            header = im.read_header(source) if source.is_file() else None
            fingerprint = (header or {}).get("config_fingerprint")
            if fingerprint not in wanted:
                continue
            target = records_dir(plan.root, stage.number, fingerprint) / source.name
            if not target.exists() and stage.is_finished(work_dir, video_id, fingerprint):
                link_file(source, target)
                adopted += 1
    return adopted


# ----------------------------------------------------------------------------- a point


def point_config(point: SweepPoint, folder: Path) -> PipelineConfig:
    """The point's run configuration: its work in ``folder`` (records through the links of
    :func:`link_stage_dirs`, archives in ``folder/submissions``), the sweep scoring its final
    archive itself, no pictures. None of these changes a fingerprint."""
    cfg = point.cfg
    return dataclasses.replace(
        cfg,
        work_dir=str(folder),
        submission_dir=str(folder / "submissions"),
        evaluation=dataclasses.replace(cfg.evaluation, enabled=False),
        visualize=dataclasses.replace(cfg.visualize, enabled=False),
    )


def stages_to_run(cfg: PipelineConfig, fingerprints: Fingerprints, split: Split) -> list[int]:
    """The stages from the first one whose records are missing (with ``stage1.legacy_dir``,
    stage 1's are read from there) to the last; just the last when all are there (its archive
    is then written, or found up to date)."""
    from referdino_plus.pipeline import pending_by_stage

    pending = pending_by_stage(cfg, fingerprints, STAGE_NUMBERS, split.video_ids, False)
    if cfg.stage1.legacy_dir:
        pending[STAGE_NUMBERS[0]] = []
    first = next((s for s in STAGE_NUMBERS if pending[s]), LAST_STAGE.number)
    return [s for s in STAGE_NUMBERS if s >= first]


def share_outputs(root: Path, folder: Path, fingerprints: Fingerprints, *, publish: bool) -> None:
    """Link what points share between the point's ``folder`` and the sweep's ``root``: the
    archives of the stages before the last (:func:`shared_archive`) and the frame check's
    cache. Into the point before its run (an archive found up to date is not written again,
    a frame checked is not decoded again), back to ``root`` after it (``publish``)."""
    from referdino_plus.preflight import FRAME_CHECK_CACHE

    pairs = [
        (shared_archive(root, s.number, fingerprints[s.number]), folder / "submissions" / s.archive)
        for s in STAGES[:-1]
    ]
    pairs.append((root / FRAME_CHECK_CACHE, folder / FRAME_CHECK_CACHE))
    for shared, own in pairs:
        source, target = (own, shared) if publish else (shared, own)
        if source.is_file() and not (target.exists() and os.path.samefile(source, target)):
            link_file(source, target)


def read_result(plan: SweepPlan, point: SweepPoint) -> PointResult | None:
    """The point's stored result when it was scored with its fingerprint on this split and
    metric; ``None`` otherwise (missing, unreadable, or of another split)."""
    path = point_dir(plan.root, point) / RESULT_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    expected = {
        "fingerprint": point.fingerprint,
        "data_root": str(plan.split.root),
        "metric": plan.base.data.metric,
    }
    if any(saved.get(key) != value for key, value in expected.items()):
        return None
    return PointResult(point, dict(saved["scores"]), Path(saved["archive"]), ran=False)


def write_result(plan: SweepPlan, result: PointResult) -> Path:
    """The point's ``result.json``, atomically: the point is done."""
    point = result.point
    path = point_dir(plan.root, point) / RESULT_FILE
    saved = {
        "fingerprint": point.fingerprint,
        "fingerprints": {str(k): v for k, v in point.fingerprints.items()},
        "values": point.values,
        "overrides": [*plan.fixed, *point.overrides],
        "data_root": str(plan.split.root),
        "metric": plan.base.data.metric,
        "scores": result.scores,
        "archive": str(result.archive),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(path, saved)
    return path


def run_point(plan: SweepPlan, point: SweepPoint, devices: Sequence[str]) -> PointResult:
    """Run the point's missing stages (:func:`stages_to_run`) with
    :func:`referdino_plus.pipeline.run` in its folder, score its final archive with the split's
    metric, and store the result (:func:`write_result`).

    Raises:
        SweepError: the point's run did not complete (its report says why).
        PreflightError, PipelineError, OSError: as :func:`referdino_plus.pipeline.run`.
    """
    from referdino_plus import pipeline
    from rvos.evaluation import evaluate

    folder = point_dir(plan.root, point)
    link_stage_dirs(plan.root, folder, point.fingerprints)
    share_outputs(plan.root, folder, point.fingerprints, publish=False)
    cfg = point_config(point, folder)
    stages = stages_to_run(cfg, point.fingerprints, plan.split)
    logger.info("%s: stages %s in %s", point.describe(), stages, folder)
    run = pipeline.run(cfg, stages=stages, devices=devices)
    if not run.ok or LAST_STAGE.archive not in run.archives:
        where = f"see {run.report}" if run.report else "its report could not be written"
        raise SweepError(
            f"{point.describe()} did not complete ({where}); fix the cause and rerun the same "
            "command: finished points and videos are kept"
        )
    share_outputs(plan.root, folder, point.fingerprints, publish=True)
    archive = run.archives[LAST_STAGE.archive]
    metric = str(plan.base.data.metric)
    scores = evaluate(metric, archive, plan.split, jobs=cfg.evaluation.jobs, progress=False)
    result = PointResult(point, scores.summary(), archive, ran=True)
    write_result(plan, result)
    return result


def run_sweep(plan: SweepPlan, devices: Sequence[str] = (), command: str = "") -> list[PointResult]:
    """Every point of ``plan``, the done ones read back (:func:`read_result`), the others run
    (:func:`run_point`) one after another on ``devices``, with a progress bar over the points.
    The sweep folder is held as a run holds its work_dir
    (:func:`referdino_plus.workdir_lock.hold_work_dir`, ``command``: how the lock names it);
    each point's run holds its own folder.

    Returns:
        each point's result, in the plan's order.
    Raises:
        WorkDirBusy: another sweep holds the folder (naming it).
        SweepError: a point did not complete (the points before it are kept).
    """
    from referdino_plus.workdir_lock import hold_work_dir
    from rvos.progress import progress_bar

    results = []
    try:
        plan.root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(plan.root, err) from err
    with hold_work_dir(plan.root, plan.base.run, command=command):
        adopted = adopt_run_records(plan)
        if adopted:
            logger.info("reusing %d finished record(s) of %s", adopted, plan.base.work_dir)
        bar = progress_bar(total=len(plan.points), desc="sweep", unit="point")
        with bar:
            for point in plan.points:
                result = read_result(plan, point)
                if result is None:
                    result = run_point(plan, point, devices)
                else:
                    logger.info("%s: scored before, kept", point.describe())
                results.append(result)
                best = max(r.scores["J&F"] for r in results)
                bar.set_postfix_str(f"best J&F {100 * best:.2f}")
                bar.update()
    return results
