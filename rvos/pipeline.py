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

from omegaconf import DictConfig, OmegaConf

from rvos import intermediates as im
from rvos.io import atomic_output
from rvos.mevis import MevisSplit
from rvos.visualize import VisualizeOptions, write_run_visualizations
from rvos.workers import RunSummary, run_sharded

logger = logging.getLogger(__name__)

STAGE_JOBS = {
    1: "stage1_referdino.runner:build_video_processor",
    2: "stage2_sam2_refine.runner:build_video_processor",
    3: "stage3_fusion.runner:build_video_processor",
}
STAGE_NAMES = {1: "stage 1 (ReferDINO)", 2: "stage 2 (SAM 2)", 3: "stage 3 (fusion)"}
# Archive name -> the stage whose records it is made of.
ARCHIVES = {"stage1.zip": 1, "stage2.zip": 2, "fused.zip": 3}
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


class PipelineError(RuntimeError):
    """A run that cannot start or did not complete; the message says what to do."""


@dataclass
class RunResult:
    stage_summaries: dict[int, RunSummary] = field(default_factory=dict)
    archives: dict[str, Path] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    # Archive name -> its full evaluation (per expression); for the J&F-per-video plot.
    evaluations: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stage_summaries.values())


def stage_fingerprints(cfg: dict[str, Any]) -> dict[str, str]:
    """Fingerprint of each stage's numerically relevant configuration, chained downstream."""

    def numeric(section: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in section.items() if k not in _NON_NUMERIC_KEYS}

    stage1 = cfg["stage1"]
    if stage1.get("legacy_dir"):
        stage1_part = {"legacy_dir": stage1["legacy_dir"], "obj_threshold": stage1["obj_threshold"]}
    else:
        stage1_part = numeric(stage1)
    fp1 = im.config_fingerprint({"stage1": stage1_part, "revision": STAGE1_REVISION})
    fp2 = im.config_fingerprint({"stage2": numeric(cfg["stage2"]), "stage1": fp1})
    fp3 = im.config_fingerprint({"stage3": cfg["stage3"], "stage2": fp2})
    return {"stage1": fp1, "stage2": fp2, "stage3": fp3}


def worker_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved configuration as plain data (picklable for workers), with fingerprints."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain["run"] = {"fingerprints": stage_fingerprints(plain)}
    return plain


def save_resolved_config(cfg: DictConfig, work_dir: Path) -> Path:
    """Save the resolved configuration to ``work_dir/config.yaml`` (and a timestamped copy)."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
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


def check_inputs(cfg: dict[str, Any], stage: int, video_ids: Sequence[str]) -> None:
    """Fail early, naming what is missing, when a stage's inputs are not there."""
    work_dir = Path(cfg["work_dir"])
    fps = cfg["run"]["fingerprints"]
    if stage == 1 or (stage == 2 and cfg["stage1"].get("legacy_dir")):
        legacy_dir = cfg["stage1"].get("legacy_dir")
        if legacy_dir:
            missing = [v for v in video_ids if not (Path(legacy_dir) / f"{v}.npz").is_file()]
            if missing:
                raise PipelineError(
                    f"stage1.legacy_dir={legacy_dir} has no intermediate for {len(missing)} "
                    f"video(s): {', '.join(missing[:5])}"
                )
        return
    previous = stage - 1
    missing = pending_videos(work_dir, previous, video_ids, fps[f"stage{previous}"], False)
    if missing:
        raise PipelineError(
            f"{STAGE_NAMES[stage]} needs the {STAGE_NAMES[previous]} outputs of {len(missing)} "
            f"video(s) ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}) in "
            f"{work_dir}/stage{previous}/, made with the current configuration: "
            f"run --stages {previous} {stage} (or check your overrides)"
        )


def run(
    cfg: DictConfig,
    *,
    stages: Sequence[int] = (1, 2, 3),
    devices: Sequence[str] = ("cpu",),
    overwrite: bool = False,
) -> RunResult:
    """Run ``stages`` of the pipeline on ``cfg.data.root``; see the module docstring."""
    plain = worker_config(cfg)
    work_dir = Path(plain["work_dir"])
    try:
        visualize = VisualizeOptions.from_config(plain.get("visualize"))
    except ValueError as err:
        raise PipelineError(str(err)) from None
    split = MevisSplit(plain["data"]["root"])
    video_ids = split.video_ids
    if plain["data"].get("validate_frames", True):
        logger.info("checking the frames of %d videos in %s", len(video_ids), split.root)
        split.validate()
    save_resolved_config(cfg, work_dir)
    result = RunResult()
    fps = plain["run"]["fingerprints"]
    for stage in sorted(stages):
        check_inputs(plain, stage, video_ids)
        todo = pending_videos(work_dir, stage, video_ids, fps[f"stage{stage}"], overwrite)
        skipped = len(video_ids) - len(todo)
        logger.info(
            "%s: %d video(s) to process, %d already finished",
            STAGE_NAMES[stage],
            len(todo),
            skipped,
        )
        if not todo:
            result.stage_summaries[stage] = RunSummary()
            continue
        stage_devices = ["cpu"] if stage == 3 else list(devices)
        summary = run_sharded(
            STAGE_JOBS[stage], plain, todo, stage_devices, desc=STAGE_NAMES[stage]
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
    if result.ok:
        write_archives(plain, split, result)
        if visualize.enabled:
            write_run_visualizations(plain, split, result.evaluations)
    write_report(plain, split, result)
    return result


def write_archives(cfg: dict[str, Any], split: MevisSplit, result: RunResult) -> None:
    """(Re)write every archive whose stage records are all finished and newer than it."""
    from stage3_fusion.archive import write_archive
    from stage3_fusion.records import archive_masks

    work_dir = Path(cfg["work_dir"])
    submission_dir = Path(cfg["submission_dir"])
    fps = cfg["run"]["fingerprints"]
    expected = {
        vid: {exp_id: video.frame_names for exp_id in video.expressions}
        for vid, video in split.videos.items()
    }
    for name, stage in ARCHIVES.items():
        records = [im.stage_path(work_dir, stage, vid) for vid in split.video_ids]
        if pending_videos(work_dir, stage, split.video_ids, fps[f"stage{stage}"], False):
            continue
        path = submission_dir / name
        newest = max(r.stat().st_mtime for r in records)
        if path.is_file() and path.stat().st_mtime >= newest:
            logger.info("%s is up to date", path)
            result.archives[name] = path
            continue
        write_archive(
            path,
            partial(archive_masks, work_dir, stage),
            expected,
            compress_level=cfg["archive"]["png_compress_level"],
            jobs=cfg["archive"]["jobs"],
        )
        result.archives[name] = path
    evaluation = cfg["evaluation"]
    if evaluation["enabled"] and split.has_ground_truth and result.archives:
        from stage3_fusion.evaluate import evaluate_archive

        for name, path in result.archives.items():
            scores = evaluate_archive(
                path, split.root, jobs=evaluation["jobs"], bound_th=evaluation["bound_th"]
            )
            result.scores[name] = {"J": scores.j, "F": scores.f, "J&F": scores.jf}
            result.evaluations[name] = scores


def write_report(cfg: dict[str, Any], split: MevisSplit, result: RunResult) -> Path:
    """``work_dir/report.json``: per-stage outcome, fusion decisions, archives and scores."""
    work_dir = Path(cfg["work_dir"])
    decisions = {}
    for vid in split.video_ids:
        header = im.read_header(im.stage_path(work_dir, 3, vid))
        if header is not None:
            for exp_id, decision in header.get("decisions", {}).items():
                decisions[f"{vid}/{exp_id}"] = decision
    report = {
        "name": cfg["name"],
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
        "fusion": decisions,
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
