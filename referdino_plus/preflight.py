"""Everything a run needs, checked before any model loads (a real run's stage 1 takes hours).

:func:`preflight` collects every problem at once — model and checkpoint files of the stages to
run, write access and free space for ``work_dir`` and ``submission_dir``, every frame decoded,
the ground truth covering the split — and raises one :class:`PreflightError` listing them all.
Problems that only cost the evaluation (a gap in ``mask_dict.json``) are warnings: the run goes
on and skips the scores.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from referdino_plus.config import PipelineConfig
from rvos.checkpoints import checkpoint_problem
from rvos.frames import check_frames
from rvos.mevis import DataError
from rvos.splits import Split

logger = logging.getLogger(__name__)

DOWNLOAD_HINT = "run `bash download_ckpts.sh` (see README)"
# A 0/255 PNG mask at compress level 1 takes about one byte per 128 pixels at most (measured on
# 1280x720 masks: 4.1 kB empty, 7.5 kB with a 200 px disc); three archives are written.
PNG_BYTES_PER_PIXEL = 1 / 128
ARCHIVE_COUNT = 3
# Stage records (run-length masks, scores) take about as much again in work_dir.
RECORD_BYTES_PER_ARCHIVE_BYTE = 1.0
FRAME_CHECK_CACHE = "frame_check.json"  # in work_dir


class PreflightError(RuntimeError):
    """A run that cannot start; the message lists every problem found, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = f"cannot start: {self.problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            text = f"cannot start, {len(self.problems)} problems:\n{listed}"
        super().__init__(text)


@dataclass
class Preflight:
    """What the checks found that does not stop the run."""

    evaluate: bool = True  # the split's ground truth covers every expression
    warnings: list[str] = field(default_factory=list)


def model_problems(cfg: PipelineConfig, stages: Sequence[int]) -> list[str]:
    """Missing or unusable model files of the stages to run (no model is built)."""
    problems = []
    if 1 in stages and not cfg.stage1.legacy_dir:
        problems += _stage1_problems(cfg)
    if 2 in stages:
        from stage2_sam2_refine.tracker import model_problems as tracker_problems

        problems += tracker_problems(cfg.stage2, hint=DOWNLOAD_HINT)
    if cfg.stage1.legacy_dir and (1 in stages or 2 in stages):
        folder = Path(cfg.stage1.legacy_dir)
        if not folder.is_dir():
            problems.append(f"stage1.legacy_dir={folder}: no such folder")
    return problems


def _stage1_problems(cfg: PipelineConfig) -> list[str]:
    from stage1_referdino.build import load_model_config, resolve_text_encoder, text_encoder_problem

    problems = []
    options = cfg.stage1
    try:
        values, base_dir = load_model_config(options.model)
    except (FileNotFoundError, ValueError) as err:
        problems.append(f"stage1.model={options.model}: {err}")
    else:
        try:
            source = resolve_text_encoder(
                options.text_encoder or values.get("text_encoder_type", ""), base_dir
            )
            problem = text_encoder_problem(source)
        except FileNotFoundError as err:
            problem = str(err)
        problems += [problem] if problem else []
    problem = checkpoint_problem(options.checkpoint, key="stage1.checkpoint", hint=DOWNLOAD_HINT)
    return problems + ([problem] if problem else [])


def writable_problem(folder: Path, key: str) -> str | None:
    """Whether ``folder`` can be created and written to (a file is created and removed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        return f"{key}={folder}: cannot write there ({reason}); choose another {key}= or fix it"
    return None


def space_problem(folder: Path, key: str, needed: int) -> str | None:
    """Whether ``folder``'s file system has ``needed`` bytes free (a rough estimate)."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        return (
            f"{key}={folder}: {free / 1e9:.1f} GB free, the run needs about "
            f"{needed / 1e9:.1f} GB; free some space or choose another {key}="
        )
    return None


def archive_bytes(split: Split, sizes: dict[str, tuple[int, int]]) -> int:
    """Rough size of the three archives: a PNG per frame and expression of every video."""
    total = 0.0
    for video_id, video in split.videos.items():
        height, width = sizes.get(video_id, (0, 0))
        pngs = video.num_frames * len(video.expressions)
        total += pngs * height * width * PNG_BYTES_PER_PIXEL
    return int(total * ARCHIVE_COUNT)


def ground_truth_gaps(split: Split) -> list[str]:
    """Expressions whose ``anno_id`` masks are missing from ``mask_dict.json`` (or of the wrong
    length); the first few named."""
    try:
        mask_dict = split.mask_dict
    except DataError as err:
        return [str(err)]
    gaps = []
    for video_id, video in split.videos.items():
        for exp_id, expression in video.expressions.items():
            for anno_id in expression.anno_ids:
                rles = mask_dict.get(anno_id)
                if rles is None or len(rles) != video.num_frames:
                    state = (
                        "missing" if rles is None else f"{len(rles)} masks, not {video.num_frames}"
                    )
                    gaps.append(f"{video_id}/{exp_id} (anno_id {anno_id}: {state})")
    return gaps


def preflight(cfg: PipelineConfig, split: Split, stages: Sequence[int]) -> Preflight:
    """Check everything the run needs before any model loads.

    Raises:
        PreflightError: listing every problem (model files, folders, space, frames).
    """
    work_dir, submission_dir = Path(cfg.work_dir), Path(cfg.submission_dir)
    problems = model_problems(cfg, stages)
    work_dir_problem = writable_problem(work_dir, "work_dir")
    submission_dir_problem = writable_problem(submission_dir, "submission_dir")
    problems += [p for p in (work_dir_problem, submission_dir_problem) if p]
    if cfg.data.validate_frames:
        videos = {vid: split.frame_paths(vid) for vid in split.video_ids}
        cache = work_dir / FRAME_CHECK_CACHE if work_dir_problem is None else None
        problems += check_frames(videos, cache=cache)
    if not problems:
        sizes = {vid: split.frame_size(vid) for vid in split.video_ids}
        needed = archive_bytes(split, sizes)
        for folder, key, factor in (
            (submission_dir, "submission_dir", 1.0),
            (work_dir, "work_dir", RECORD_BYTES_PER_ARCHIVE_BYTE),
        ):
            if problem := space_problem(folder, key, int(needed * factor)):
                problems.append(problem)
    if problems:
        raise PreflightError(problems)
    result = Preflight()
    if cfg.evaluation.enabled and split.has_ground_truth and split.layout.mask_file:
        gaps = ground_truth_gaps(split)
        if gaps:
            result.evaluate = False
            named = ", ".join(gaps[:5]) + (f" and {len(gaps) - 5} more" if len(gaps) > 5 else "")
            result.warnings.append(
                f"{split.ground_truth_path} does not cover {len(gaps)} expression(s) ({named}): "
                "the archives are written but not evaluated"
            )
    for warning in result.warnings:
        logger.warning("%s", warning)
    return result
