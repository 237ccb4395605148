"""The three stages end to end, resumable, sharded over devices.

Each stage processes the split's videos (sorted) whose record in ``work_dir/stage<N>/`` is not
finished with the current configuration, through :func:`rvos.workers.run_sharded`. Then the
archives whose records are complete are (re)written, evaluated when ground truth exists, and a
report is saved to ``work_dir/report.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from referdino_plus.archives import ARCHIVES, archive_is_current, archive_masks
from referdino_plus.config import PipelineConfig, to_plain, to_yaml
from rvos import intermediates as im
from rvos.archive import write_archive
from rvos.evaluation import EvaluationResult, evaluate_archive
from rvos.io import atomic_output
from rvos.mevis import MevisSplit
from rvos.proposals import Stage1Records
from rvos.workers import RunSummary, run_sharded
from stage1_referdino.runner import Stage1Job
from stage2_sam2_refine.runner import Stage2Job
from stage3_fusion.runner import Stage3Job

logger = logging.getLogger(__name__)

STAGES = (1, 2, 3)
STAGE_JOBS = {
    1: "stage1_referdino.runner:build_video_processor",
    2: "stage2_sam2_refine.runner:build_video_processor",
    3: "stage3_fusion.runner:build_video_processor",
}
STAGE_NAMES = {1: "stage 1 (ReferDINO)", 2: "stage 2 (SAM 2)", 3: "stage 3 (fusion)"}
# Keys that change where or how fast things run, not the numbers: left out of fingerprints.
_NON_NUMERIC_KEYS = {
    "export_legacy",
    "feature_cache_device",
    "offload_video_to_cpu",
    "offload_state_to_cpu",
    "retry_offloaded_on_oom",
}
# Bumped when a stage computes other outputs from the same configuration, so that records made by
# earlier code are recomputed instead of mixed in (stage 1, 2: expressions as written, queries in
# the model's order).
STAGE1_REVISION = 2

Fingerprints = dict[int, str]


class PipelineError(RuntimeError):
    """A run that cannot start or did not complete; the message says what to do."""


@dataclass
class RunResult:
    stage_summaries: dict[int, RunSummary] = field(default_factory=dict)
    archives: dict[str, Path] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    # Archive name -> its full evaluation (per expression); for the J&F-per-video plot.
    evaluations: dict[str, EvaluationResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stage_summaries.values())


def stage_fingerprints(cfg: PipelineConfig) -> Fingerprints:
    """Fingerprint of each stage's numerically relevant configuration, chained downstream."""

    def numeric(section: Any) -> dict[str, Any]:
        return {k: v for k, v in to_plain(section).items() if k not in _NON_NUMERIC_KEYS}

    stage1 = cfg.stage1
    if stage1.legacy_dir:
        stage1_part = {"legacy_dir": stage1.legacy_dir, "obj_threshold": stage1.obj_threshold}
    else:
        stage1_part = numeric(stage1)
    fp1 = im.config_fingerprint({"stage1": stage1_part, "revision": STAGE1_REVISION})
    fp2 = im.config_fingerprint({"stage2": numeric(cfg.stage2), "stage1": fp1})
    fp3 = im.config_fingerprint({"stage3": to_plain(cfg.stage3), "stage2": fp2})
    return {1: fp1, 2: fp2, 3: fp3}


def stage1_records(cfg: PipelineConfig, fingerprints: Fingerprints) -> Stage1Records:
    """Where the run's stage-1 records are (and, with ``stage1.legacy_dir``, come from)."""
    legacy_dir = cfg.stage1.legacy_dir
    return Stage1Records(
        work_dir=Path(cfg.work_dir),
        fingerprint=fingerprints[1],
        legacy_dir=Path(legacy_dir) if legacy_dir else None,
        obj_threshold=cfg.stage1.obj_threshold,
    )


def stage_job(cfg: PipelineConfig, fingerprints: Fingerprints, stage: int) -> Any:
    """The picklable job of ``stage``'s workers (see :data:`STAGE_JOBS`)."""
    work_dir, data_root = Path(cfg.work_dir), Path(cfg.data.root)
    if stage == 1:
        return Stage1Job(data_root, stage1_records(cfg, fingerprints), cfg.stage1)
    if stage == 2:
        records = stage1_records(cfg, fingerprints)
        return Stage2Job(data_root, work_dir, fingerprints[2], records, cfg.stage2)
    if stage == 3:
        return Stage3Job(work_dir, fingerprints[3], cfg.stage3)
    raise ValueError(f"no stage {stage}")


def stage_devices(stage: int, devices: Sequence[str]) -> list[str]:
    """Where ``stage``'s workers run: the models on ``devices``, the fusion (stage 3) on the CPU."""
    return ["cpu"] if stage == 3 else list(devices)


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
    kind = im.STAGE_KINDS[stage]
    return [
        vid
        for vid in video_ids
        if not im.is_finished(im.stage_path(work_dir, stage, vid), kind, fingerprint)
    ]


def check_inputs(
    cfg: PipelineConfig, fingerprints: Fingerprints, stage: int, video_ids: Sequence[str]
) -> None:
    """Fail early, naming what is missing, when a stage's inputs are not there."""
    work_dir = Path(cfg.work_dir)
    legacy_dir = cfg.stage1.legacy_dir
    if stage == 1 or (stage == 2 and legacy_dir):
        if legacy_dir:
            missing = [v for v in video_ids if not (Path(legacy_dir) / f"{v}.npz").is_file()]
            if missing:
                raise PipelineError(
                    f"stage1.legacy_dir={legacy_dir} has no intermediate for {len(missing)} "
                    f"video(s): {', '.join(missing[:5])}"
                )
        return
    previous = stage - 1
    missing = pending_videos(work_dir, previous, video_ids, fingerprints[previous], False)
    if missing:
        raise PipelineError(
            f"{STAGE_NAMES[stage]} needs the {STAGE_NAMES[previous]} outputs of {len(missing)} "
            f"video(s) ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}) in "
            f"{work_dir}/stage{previous}/, made with the current configuration: "
            f"run --stages {previous} {stage} (or check your overrides)"
        )


def run(
    cfg: PipelineConfig,
    *,
    stages: Sequence[int] = STAGES,
    devices: Sequence[str] = ("cpu",),
    overwrite: bool = False,
) -> RunResult:
    """Run ``stages`` of the pipeline on ``cfg.data.root``; see the module docstring."""
    fingerprints = stage_fingerprints(cfg)
    work_dir = Path(cfg.work_dir)
    split = open_split(cfg)
    video_ids = split.video_ids
    save_resolved_config(cfg, work_dir)
    result = RunResult()
    for stage in sorted(stages):
        check_inputs(cfg, fingerprints, stage, video_ids)
        todo = pending_videos(work_dir, stage, video_ids, fingerprints[stage], overwrite)
        logger.info(
            "%s: %d video(s) to process, %d already finished",
            STAGE_NAMES[stage],
            len(todo),
            len(video_ids) - len(todo),
        )
        if not todo:
            result.stage_summaries[stage] = RunSummary()
            continue
        summary = run_sharded(
            STAGE_JOBS[stage],
            stage_job(cfg, fingerprints, stage),
            todo,
            stage_devices(stage, devices),
            desc=STAGE_NAMES[stage],
        )
        result.stage_summaries[stage] = summary
        if not summary.ok:
            failed = ", ".join(sorted({str(f.video_id) for f in summary.failures}))
            logger.error(
                "%s failed for: %s. Finished videos are kept; rerun the same command to retry "
                "only the missing ones.",
                STAGE_NAMES[stage],
                failed,
            )
            break
    finish(cfg, fingerprints, split, result)
    return result


def open_split(cfg: PipelineConfig) -> MevisSplit:
    """The run's split, its frames checked first when ``data.validate_frames``."""
    split = MevisSplit(cfg.data.root)
    if cfg.data.validate_frames:
        logger.info("checking the frames of %d videos in %s", len(split.video_ids), split.root)
        split.validate()
    return split


def finish(
    cfg: PipelineConfig, fingerprints: Fingerprints, split: MevisSplit, result: RunResult
) -> None:
    """After the stages: when they all succeeded, the archives, their scores and the pictures;
    in any case ``work_dir/report.json``."""
    from referdino_plus.visualize import write_run_visualizations

    if result.ok:
        write_archives(cfg, fingerprints, split, result)
        if cfg.visualize.enabled:
            write_run_visualizations(cfg, fingerprints, split, result.evaluations)
    write_report(cfg, fingerprints, split, result)


# ----------------------------------------------------------------------------- archives


def write_archives(
    cfg: PipelineConfig, fingerprints: Fingerprints, split: MevisSplit, result: RunResult
) -> None:
    """(Re)write every archive whose stage records are all finished and newer than it."""
    work_dir = Path(cfg.work_dir)
    submission_dir = Path(cfg.submission_dir)
    expected = {
        vid: {exp_id: video.frame_names for exp_id in video.expressions}
        for vid, video in split.videos.items()
    }
    for name, stage in ARCHIVES.items():
        if pending_videos(work_dir, stage, split.video_ids, fingerprints[stage], False):
            continue
        path = submission_dir / name
        records = [im.stage_path(work_dir, stage, vid) for vid in split.video_ids]
        if archive_is_current(path, records):
            logger.info("%s is up to date", path)
        else:
            write_archive(
                path,
                partial(archive_masks, work_dir, stage),
                expected,
                compress_level=cfg.archive.png_compress_level,
                jobs=cfg.archive.jobs,
            )
        result.archives[name] = path
    if cfg.evaluation.enabled and split.has_ground_truth and result.archives:
        for name, path in result.archives.items():
            scores = evaluate_archive(path, split.root, jobs=cfg.evaluation.jobs)
            result.scores[name] = {"J": scores.j, "F": scores.f, "J&F": scores.jf}
            result.evaluations[name] = scores


def fusion_decisions(
    work_dir: Path, fingerprint: str, video_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``{"<video>/<exp_id>": decision}`` from the stage-3 records made with ``fingerprint``
    (records of another configuration are left out, never mixed in)."""
    decisions = {}
    for vid in video_ids:
        header = im.read_header(im.stage_path(work_dir, 3, vid))
        if header is None or header.get("config_fingerprint") != fingerprint:
            continue
        for exp_id, decision in header.get("decisions", {}).items():
            decisions[f"{vid}/{exp_id}"] = decision
    return decisions


def write_report(
    cfg: PipelineConfig, fingerprints: Fingerprints, split: MevisSplit, result: RunResult
) -> Path:
    """``work_dir/report.json``: per-stage outcome, fusion decisions, archives and scores."""
    work_dir = Path(cfg.work_dir)
    report = {
        "name": cfg.name,
        "data_root": str(split.root),
        "stages": {
            str(stage): {
                "done": len(summary.done),
                "failed": [
                    {"video_id": f.video_id, "device": f.device, "error": f.message}
                    for f in summary.failures
                ],
            }
            for stage, summary in result.stage_summaries.items()
        },
        "archives": {name: str(path) for name, path in result.archives.items()},
        "scores": result.scores,
        "fusion": fusion_decisions(work_dir, fingerprints[3], split.video_ids),
    }
    path = work_dir / "report.json"
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    return path


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """A small text table of J, F, J&F per archive, in percent (as the MeViS leaderboard)."""
    lines = [f"{'archive':<12} {'J':>7} {'F':>7} {'J&F':>7}"]
    for name, s in scores.items():
        lines.append(f"{name:<12} {100 * s['J']:>7.2f} {100 * s['F']:>7.2f} {100 * s['J&F']:>7.2f}")
    return "\n".join(lines)
