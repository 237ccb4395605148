"""The stages end to end, resumable: one :func:`run`, whichever launcher runs the stages.

The run is checked and set up once; then each stage (:data:`referdino_plus.stages.STAGES`)
processes the split's videos (sorted) whose record in ``work_dir/stage<N>/`` is not finished with
the current configuration, on the launcher ``launcher`` names (:mod:`referdino_plus.launchers`:
this machine's devices, or a SLURM job array). Then the archives whose records are complete are
(re)written in the benchmark's member layout (``data.archive``), scored with its metric
(``data.metric``) when the split has ground truth, and a report is saved to
``work_dir/report.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from referdino_plus.archives import (
    archive_is_current,
    archive_masks,
    archive_stamp,
    set_aside_stale_archives,
)
from referdino_plus.bad_cases import BadCases, find_bad_cases, report_field
from referdino_plus.config import PipelineConfig, to_plain, to_yaml
from referdino_plus.launchers import Handoff, RunPlan, build_launcher
from referdino_plus.preflight import check_benchmark as check_benchmark  # also here for callers
from referdino_plus.stages import LAST_STAGE, STAGE_NUMBERS, STAGES, Fingerprints, get_stage
from referdino_plus.workdir_lock import hold_work_dir
from rvos import intermediates as im
from rvos.archive import build_archive_writer, write_archive
from rvos.archive_reader import ArchiveError
from rvos.evaluation import BenchmarkResult, evaluate
from rvos.interrupts import signal_name, signals_deferred
from rvos.io import atomic_output
from rvos.proposals import THRESHOLD_OR_TOP1
from rvos.splits import Split
from rvos.workers import RunSummary

logger = logging.getLogger(__name__)

# Keys that change where or how fast things run, not the numbers: left out of fingerprints.
_NON_NUMERIC_KEYS = {
    "export_legacy",
    "feature_cache_device",
    "feature_cache_frames",
    "offload_video_to_cpu",
    "offload_state_to_cpu",
    "retry_offloaded_on_oom",
}
# The stage-2 sections each tracker reads besides the shared keys; the other trackers' sections
# are left out of its fingerprint. sam2 keeps samurai's: its records were fingerprinted with that
# section before trackers had sections of their own, and are not recomputed. ``released`` only
# supplies the defaults of stage2.model and stage2.checkpoint, which count as resolved.
_STAGE2_TRACKER_SECTIONS = {"sam2": {"samurai"}, "samurai": {"samurai"}, "sam3": set()}
_STAGE2_DEFAULTS_TABLE = "released"
# Bumped when a stage computes other outputs from the same configuration, so that records made by
# earlier code are recomputed instead of mixed in (stage 1, 2: expressions as written, queries in
# the model's order).
STAGE1_REVISION = 2


class PipelineError(RuntimeError):
    """A run that cannot start or did not complete; the message says what to do."""


@dataclass
class RunResult:
    stage_summaries: dict[int, RunSummary] = field(default_factory=dict)
    archives: dict[str, Path] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    # Archive name -> its full evaluation (per expression or object); for the J&F-per-video plot.
    evaluations: dict[str, BenchmarkResult] = field(default_factory=dict)
    # Where report.json was written (None: nowhere, the log says why; or handed off).
    report: Path | None = None
    # Why the run failed, one line for its report ("": what the stage summaries say).
    failure: str = ""
    # The run goes on elsewhere (launcher.slurm.wait=false), which writes its outputs and report.
    handoff: Handoff | None = None
    # What the bad-case report found (None: not looked for: bad_cases.enabled=false, no outputs).
    bad_cases: BadCases | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stage_summaries.values())


def _numeric(section: Any) -> dict[str, Any]:
    return {k: v for k, v in to_plain(section).items() if k not in _NON_NUMERIC_KEYS}


def _stage2_part(options: Any) -> dict[str, Any]:
    """The ``stage2`` keys that make its records: the shared ones and the chosen tracker's own
    section (:data:`_STAGE2_TRACKER_SECTIONS`)."""
    part = _numeric(options)
    part.pop(_STAGE2_DEFAULTS_TABLE, None)
    own = _STAGE2_TRACKER_SECTIONS[str(options.tracker)]
    others = set().union(*_STAGE2_TRACKER_SECTIONS.values()) - own
    return {k: v for k, v in part.items() if k not in others}


def stage_fingerprints(cfg: PipelineConfig) -> Fingerprints:
    """Fingerprint of each stage's numerically relevant configuration, chained downstream."""

    stage1 = cfg.stage1
    if stage1.legacy_dir:
        stage1_part = {"legacy_dir": stage1.legacy_dir, "obj_threshold": stage1.obj_threshold}
    else:
        stage1_part = _numeric(stage1)
        if stage1.window.frames is None:
            # One pass, as before windows existed: the records keep their fingerprint.
            stage1_part.pop("window")
    stage1_fields = {"stage1": stage1_part, "revision": STAGE1_REVISION}
    # The answer rule changes the records' answers. Records of the rule every run used before
    # rules were selectable keep their fingerprint, so existing MeViS work is not recomputed.
    if cfg.data.answer != THRESHOLD_OR_TOP1:
        stage1_fields["answer"] = cfg.data.answer
    fp1 = im.config_fingerprint(stage1_fields)
    fp2 = im.config_fingerprint({"stage2": _stage2_part(cfg.stage2), "stage1": fp1})
    fp3 = im.config_fingerprint({"stage3": to_plain(cfg.stage3), "stage2": fp2})
    return {1: fp1, 2: fp2, 3: fp3}


def stage_job(cfg: PipelineConfig, fingerprints: Fingerprints, stage: int) -> Any:
    """The picklable job of ``stage``'s workers (:meth:`referdino_plus.stages.Stage.job`)."""
    return get_stage(stage).job(cfg, fingerprints)


def save_resolved_config(cfg: PipelineConfig, work_dir: Path) -> Path:
    """Save the resolved configuration to ``work_dir/config.yaml`` (and a timestamped copy)."""
    text = to_yaml(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (work_dir / "config.yaml", work_dir / "runs" / f"{stamp}.yaml"):
        with atomic_output(path) as tmp:
            tmp.write_text(text)
    return work_dir / "config.yaml"


def pending_videos(
    work_dir: Path, stage: int, video_ids: Sequence[str], fingerprint: str, overwrite: bool
) -> list[str]:
    """Videos whose stage record is missing, corrupt or stale (all of them with ``overwrite``)."""
    if overwrite:
        return list(video_ids)
    described = get_stage(stage)
    return [vid for vid in video_ids if not described.is_finished(work_dir, vid, fingerprint)]


def pending_by_stage(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    stages: Sequence[int],
    video_ids: Sequence[str],
    overwrite: bool,
) -> dict[int, list[str]]:
    """Per stage of ``stages``, its :func:`pending_videos` (found once, before the run)."""
    work_dir = Path(cfg.work_dir)
    return {
        stage: pending_videos(work_dir, stage, video_ids, fingerprints[stage], overwrite)
        for stage in stages
    }


def check_inputs(
    cfg: PipelineConfig, fingerprints: Fingerprints, stage: int, video_ids: Sequence[str]
) -> None:
    """Fail early, naming what is missing, when a stage's inputs are not there."""
    work_dir = Path(cfg.work_dir)
    legacy_dir = cfg.stage1.legacy_dir
    described = get_stage(stage)
    # stage1.legacy_dir stands for the stage-1 records of the stages that read them.
    if described.reads is None or (described.reads == 1 and legacy_dir):
        if legacy_dir:
            missing = [v for v in video_ids if not (Path(legacy_dir) / f"{v}.npz").is_file()]
            if missing:
                raise PipelineError(
                    f"stage1.legacy_dir={legacy_dir} has no intermediate for {len(missing)} "
                    f"video(s): {', '.join(missing[:5])}"
                )
        return
    previous = described.reads
    missing = pending_videos(work_dir, previous, video_ids, fingerprints[previous], False)
    if missing:
        raise PipelineError(
            f"{described.name} needs the {get_stage(previous).name} outputs of {len(missing)} "
            f"video(s) ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}) in "
            f"{work_dir}/stage{previous}/, made with the current configuration: "
            f"run --stages {previous} {stage} (or check your overrides)"
        )


def run(
    cfg: PipelineConfig,
    *,
    stages: Sequence[int] = STAGE_NUMBERS,
    devices: Sequence[str] = (),
    overwrite: bool = False,
    command: str = "",
) -> RunResult:
    """Run ``stages`` of the pipeline on ``cfg.data.root`` with the launcher ``cfg.launcher``
    names (:mod:`referdino_plus.launchers`; ``devices``: this machine's, for a local run: none
    given, the CPU); see the module docstring.

    The run holds the lock of ``work_dir`` from its checks to its report (one run per folder:
    :mod:`referdino_plus.workdir_lock`, ``run.lock_timeout``). Everything the run needs is
    checked first (the launcher's settings and tools, :func:`referdino_plus.preflight.preflight`,
    and the cached inputs of the first stage to run); nothing but the lock is moved or written
    before. Then the archives of another configuration are set aside
    (:func:`set_aside_stale_archives`), and the launcher runs the stages. ``work_dir/report.json`` is written however the run ends (:func:`reporting`;
    ``command``: the command line that resumes it), unless the launcher handed the run off
    (``result.handoff``: what finishes it writes the report).

    Raises:
        ValueError: a launcher setting that cannot be used (e.g. a relative path on a cluster).
        PreflightError: listing everything that stops the run before any model loads.
        PipelineError: a stage whose inputs are missing, a failed write (a full disk, a
            read-only folder), which stops the run at once, or a launcher that cannot start.
        WorkDirBusy: another run holds ``work_dir`` (after ``run.lock_timeout``).
        KeyboardInterrupt: stopped (Ctrl-C, or SIGTERM: :class:`rvos.interrupts.Interrupted`);
            the report says ``interrupted``.
    """
    from referdino_plus.preflight import open_split, preflight

    stages = sorted(stages)
    launcher = build_launcher(cfg, devices)
    launcher.check(stages)
    fingerprints = stage_fingerprints(cfg)
    result = RunResult()
    with (
        hold_work_dir(cfg.work_dir, cfg.run, command=command) as lock,
        reporting(cfg, fingerprints, result, command=command) as status,
    ):
        split = status.split = open_split(cfg, stages)
        todo = pending_by_stage(cfg, fingerprints, stages, split.video_ids, overwrite)
        flight = preflight(cfg, split, stages, pending=todo)
        check_first_inputs(cfg, fingerprints, split, stages)
        save_resolved_config(cfg, Path(cfg.work_dir))
        set_aside_stale_archives(Path(cfg.submission_dir), fingerprints)
        plan = RunPlan(cfg, fingerprints, split, stages, todo, overwrite, flight.evaluate, lock)
        launcher.launch(plan, result)
        if result.handoff is None:
            finish(cfg, fingerprints, split, result, status, score=flight.evaluate)
    return result


@dataclass
class RunStatus:
    """How a run ended, for its report (see :func:`reporting`)."""

    status: str = "failed"  # ok, failed, interrupted
    error: str = ""  # why it failed, one line
    split: Split | None = None  # None: the split could not be read
    command: str = ""  # the command line that resumes the run ("": not known)


@contextlib.contextmanager
def reporting(
    cfg: PipelineConfig, fingerprints: Fingerprints, result: RunResult, *, command: str = ""
) -> Iterator[RunStatus]:
    """Write the run's report (:func:`save_report`) however the block ends: ``failed`` unless
    the block sets the yielded status to ``ok``; an exception's message as the error (one
    line); ``interrupted`` by Ctrl-C or SIGTERM (:mod:`rvos.interrupts`), which wait for the
    report to be written. Not when ``result.handoff`` is set: the run goes on elsewhere, which
    writes it."""
    ended = RunStatus(command=command)
    try:
        yield ended
    except KeyboardInterrupt as stop:
        ended.status, ended.error = "interrupted", interruption(stop)
        raise
    except Exception as err:
        ended.error = " ".join(str(err).split())
        raise
    finally:
        if result.handoff is None:
            with signals_deferred():
                result.report = save_report(
                    cfg,
                    fingerprints,
                    ended.split,
                    result,
                    status=ended.status,
                    error=ended.error,
                    command=ended.command,
                )


def finish(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    split: Split,
    result: RunResult,
    status: RunStatus,
    *,
    score: bool,
) -> None:
    """After the stages: when every stage succeeded, the outputs (:func:`write_outputs`,
    scored when ``score``) and status ``ok``; otherwise the failure, for the report."""
    if result.ok:
        write_outputs(cfg, fingerprints, split, result, score=score)
        status.status = "ok"
    else:
        status.error = result.failure


def check_first_inputs(
    cfg: PipelineConfig, fingerprints: Fingerprints, split: Split, stages: Sequence[int]
) -> None:
    """:func:`check_inputs` of every stage whose inputs this run does not make (the first one
    asked for, and any after a gap: ``--stages 1 3``), before anything runs.

    Raises:
        PipelineError: naming the stage and what it misses.
    """
    for stage in sorted(stages):
        if get_stage(stage).reads not in stages:
            check_inputs(cfg, fingerprints, stage, split.video_ids)


def write_outputs(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    split: Split,
    result: RunResult,
    *,
    score: bool = True,
) -> None:
    """After the stages: the archives (scored when ``score``), the bad cases and the pictures."""
    from referdino_plus.visualize import write_run_visualizations

    write_archives(cfg, fingerprints, split, result, score=score)
    if cfg.bad_cases.enabled:
        result.bad_cases = find_bad_cases(cfg, fingerprints, split, result.evaluations)
    if cfg.visualize.enabled:
        write_run_visualizations(cfg, fingerprints, split, result.evaluations, result.bad_cases)


# ----------------------------------------------------------------------------- archives


def write_archives(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    split: Split,
    result: RunResult,
    *,
    score: bool = True,
) -> None:
    """(Re)write every archive whose stage records are all finished and newer than it, in the
    benchmark's member layout; score each with its metric when ``score`` and the split has
    ground truth."""
    work_dir = Path(cfg.work_dir)
    submission_dir = Path(cfg.submission_dir)
    expected = {
        vid: {exp_id: video.frame_names for exp_id in video.expressions}
        for vid, video in split.videos.items()
    }
    writer = build_archive_writer(cfg.data.archive, split.videos)
    for stage in STAGES:
        number, fingerprint = stage.number, fingerprints[stage.number]
        if pending_videos(work_dir, number, split.video_ids, fingerprint, False):
            continue
        path = submission_dir / stage.archive
        records = [stage.record_path(work_dir, vid) for vid in split.video_ids]
        if archive_is_current(path, records, fingerprint):
            logger.info("%s is up to date", path)
        else:
            write_archive(
                path,
                partial(archive_masks, work_dir, number),
                expected,
                compress_level=cfg.archive.png_compress_level,
                jobs=cfg.archive.jobs,
                writer=writer,
                stamp=archive_stamp(number, fingerprint, fingerprints[LAST_STAGE.number]),
            )
        result.archives[stage.archive] = path
    metric = cfg.data.metric
    if score and cfg.evaluation.enabled and metric and split.has_ground_truth and result.archives:
        for name, path in result.archives.items():
            try:
                scores = evaluate(
                    metric, path, split, jobs=cfg.evaluation.jobs, limits=cfg.evaluation.limits
                )
            except ArchiveError as err:  # a split larger than the limits allow (e.g. MeViS train)
                logger.warning("%s is written but not scored: %s", name, err)
                continue
            result.scores[name] = scores.summary()
            result.evaluations[name] = scores


def fusion_decisions(
    work_dir: Path, fingerprint: str, video_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``{"<video>/<exp_id>": decision}`` from the fusion's records made with ``fingerprint``
    (records of another configuration are left out, never mixed in)."""
    decisions = {}
    for vid in video_ids:
        header = im.read_header(LAST_STAGE.record_path(work_dir, vid))
        if header is None or header.get("config_fingerprint") != fingerprint:
            continue
        for exp_id, decision in header.get("decisions", {}).items():
            decisions[f"{vid}/{exp_id}"] = decision
    return decisions


def save_report(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    split: Split | None,
    result: RunResult,
    *,
    status: str,
    error: str,
    command: str = "",
) -> Path | None:
    """:func:`write_report` wherever it can be written: ``work_dir``, else the system's
    temporary folder (a warning names it), else nowhere (an error says so).

    Returns:
        the report, or ``None``.
    """
    try:
        return write_report(
            cfg, fingerprints, split, result, status=status, error=error, command=command
        )
    except OSError as err:
        first = err
    fallback = Path(tempfile.gettempdir()) / f"{cfg.name}-report-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        path = write_report(
            cfg,
            fingerprints,
            split,
            result,
            status=status,
            error=error,
            folder=fallback,
            command=command,
        )
    except OSError as err:
        logger.warning(
            "no report of this run: %s/report.json could not be written (%s), nor %s (%s)",
            cfg.work_dir,
            first,
            fallback / "report.json",
            err,
        )
        return None
    logger.warning(
        "%s/report.json could not be written (%s): the report is %s", cfg.work_dir, first, path
    )
    return path


def write_report(
    cfg: PipelineConfig,
    fingerprints: Fingerprints,
    split: Split | None,
    result: RunResult,
    *,
    status: str = "ok",
    error: str = "",
    folder: Path | None = None,
    command: str = "",
) -> Path:
    """``work_dir/report.json`` (or ``folder/report.json``): how the run ended, per-stage
    outcome, fusion decisions, archives and scores (``split``: ``None`` when it could not be
    read); the videos each stage has finished (:func:`stage_progress`) and, unless it ended
    ``ok``, the ``command`` that resumes it."""
    work_dir = Path(cfg.work_dir)
    report = {
        "name": cfg.name,
        "status": status,
        "error": error,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data_root": str(split.root if split is not None else cfg.data.root),
        "stages": {
            str(stage): {
                "done": len(summary.done),
                "failed": [
                    {
                        "video_id": f.video_id,
                        "device": f.device,
                        "error": f.error,
                        "traceback": f.details,
                    }
                    for f in summary.failures
                ],
            }
            for stage, summary in result.stage_summaries.items()
        },
        "archives": {name: str(path) for name, path in result.archives.items()},
        "scores": result.scores,
        "fusion": (
            fusion_decisions(work_dir, fingerprints[LAST_STAGE.number], split.video_ids)
            if split is not None
            else {}
        ),
        "bad_cases": report_field(result.bad_cases),
        "progress": (
            stage_progress(work_dir, fingerprints, split.video_ids) if split is not None else {}
        ),
        "resume": command if status != "ok" else "",
    }
    path = (folder or work_dir) / "report.json"
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    return path


def interruption(stop: KeyboardInterrupt) -> str:
    """The report's error of a stopped run: ``stopped by SIGTERM`` or ``interrupted by the user
    (SIGINT)``."""
    name = signal_name(stop)
    return "interrupted by the user (SIGINT)" if name == "SIGINT" else f"stopped by {name}"


def stage_progress(
    work_dir: Path, fingerprints: Fingerprints, video_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Per stage, ``{"done": videos whose record is finished with the run's configuration,
    "total": videos}``: what a stopped run keeps, and what resuming it leaves to do."""
    return {
        str(stage.number): {
            "done": len(video_ids)
            - len(
                pending_videos(work_dir, stage.number, video_ids, fingerprints[stage.number], False)
            ),
            "total": len(video_ids),
        }
        for stage in STAGES
    }


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """A small text table of the scores per archive, in percent (as the leaderboards): J, F and
    J&F, then any other score of the benchmark's metric (MeViS v2: N-acc, T-acc, J&F-T;
    Ref-DAVIS17: recall and decay); ``-`` where an archive lacks one."""
    columns = list(dict.fromkeys(["J", "F", "J&F", *(k for s in scores.values() for k in s)]))
    width = max(7, *(len(c) for c in columns))
    lines = [f"{'archive':<12}" + "".join(f" {c:>{width}}" for c in columns)]
    for name, s in scores.items():
        cells = (f"{100 * s[c]:>{width}.2f}" if c in s else f"{'-':>{width}}" for c in columns)
        lines.append(f"{name:<12}" + "".join(f" {cell}" for cell in cells))
    return "\n".join(lines)
