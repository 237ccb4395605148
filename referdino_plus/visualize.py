"""Pictures of a finished run (``visualize.enabled=true`` or ``run_pipeline.py --visualize``).

Into ``work_dir/visualize/``: per expression, a strip of its stage-1, SAM 2 and fused masks on a
few evenly spaced frames, captioned with the expression (at most ``visualize.caption_max_lines``
lines) and its fusion decision; with ground truth, ``jf_per_video.png``, the J&F of each video in
each archive. The expressions the bad-case report flags (:mod:`referdino_plus.bad_cases`) are
drawn first, each with why under its caption.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from referdino_plus.archives import archive_masks
from referdino_plus.config import PipelineConfig, VisualizeOptions
from referdino_plus.stages import LAST_STAGE, STAGES
from rvos import intermediates as im
from rvos.bad_cases import BadCases
from rvos.drawing import (
    PALETTE,
    Color,
    evenly_spaced,
    jf_bar_plot,
    mask_strip,
    save_png,
)
from rvos.progress import progress_bar
from rvos.scores import BenchmarkResult
from rvos.splits import Split

logger = logging.getLogger(__name__)

# Each stage's colour, in the order of STAGES: its strip row and its archive's bars.
STAGE_COLORS: tuple[Color, ...] = (PALETTE[6], PALETTE[1], PALETTE[2])
# Strip rows: one per stage, its archive's masks (archives.archive_masks) with its label, colour.
STRIP_ROWS: tuple[tuple[str, Color], ...] = tuple(
    (stage.label, color) for stage, color in zip(STAGES, STAGE_COLORS, strict=True)
)
# Bar colours of the J&F plot: those of the strip rows showing the same masks.
ARCHIVE_COLORS: dict[str, Color] = {
    stage.archive: color for stage, color in zip(STAGES, STAGE_COLORS, strict=True)
}
VISUALIZE_DIR = "visualize"
JF_PLOT_NAME = "jf_per_video.png"


def per_video_jf(per_expression: Mapping[tuple[str, str], Any]) -> dict[str, float]:
    """``{video_id: mean J&F over its expressions}`` from ``{(video_id, exp_id): score}`` where
    each score has a ``jf`` attribute (:class:`rvos.scores.ExpressionScore`,
    :class:`rvos.scores.ObjectScore`)."""
    sums: dict[str, list[float]] = {}
    for (video_id, _), score in per_expression.items():
        sums.setdefault(video_id, []).append(float(score.jf))
    return {video_id: float(np.mean(values)) for video_id, values in sums.items()}


def _fusion_note(decision: Mapping[str, Any] | None) -> str:
    """The line under a strip's title: the fusion decision that made the fused row."""
    if decision is None:
        return ""
    rule = "SAM 2 ∪ stage 1 (multi-object)" if decision.get("multi_object") else "SAM 2"
    smaller, both = decision.get("frames_sam2_smaller", 0), decision.get("frames_both_nonempty", 0)
    return f"fused = {rule}; SAM 2 box smaller on {smaller}/{both} frames"


def _note(decision: Mapping[str, Any] | None, flags: Sequence[str]) -> str:
    """The line under a strip's title: the fusion decision, then why it is a bad case."""
    bad = f"bad case: {'; '.join(flags)}" if flags else ""
    return " · ".join(part for part in (bad, _fusion_note(decision)) if part)


def write_video_strips(
    work_dir: Path,
    split: Split,
    video_id: str,
    options: VisualizeOptions,
    *,
    exp_ids: Sequence[str] | None = None,
    flags: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> list[Path]:
    """Strips of every expression of one video (``exp_ids``: of those, in that order), from its
    stage 1, 2 and 3 records; ``flags``: why the bad-case report flags an expression, said under its caption.

    Returns:
        the written ``work_dir/visualize/<video_id>/<exp_id>.png``; a strip newer than the video's
        stage-3 record is kept as it is.
    """
    out_dir = work_dir / VISUALIZE_DIR / video_id
    record = LAST_STAGE.record_path(work_dir, video_id)  # the fusion's: its decisions
    header = im.read_header(record) or {}
    decisions = header.get("decisions", {})
    video = split.videos[video_id]
    newest = record.stat().st_mtime
    todo = [
        e
        for e in (video.expressions if exp_ids is None else exp_ids)
        if not (out_dir / f"{e}.png").is_file() or (out_dir / f"{e}.png").stat().st_mtime < newest
    ]
    if not todo:
        return []
    frame_names = list(video.frame_names)
    picked = evenly_spaced(len(frame_names), options.num_frames)
    paths = split.frame_paths(video_id)
    frames = []
    for index in picked:
        with Image.open(paths[index]) as image:
            frames.append(np.asarray(image.convert("RGB")))
    masks = [archive_masks(work_dir, stage.number, video_id)[1] for stage in STAGES]
    written = []
    for exp_id in todo:
        strip = mask_strip(
            frames,
            [row[exp_id].select(picked).decode() for row in masks],
            title=f'{video_id}/{exp_id}: "{video.expressions[exp_id].text}"',
            note=_note(decisions.get(exp_id), (flags or {}).get((video_id, exp_id), ())),
            max_title_lines=options.caption_max_lines,
            frame_names=[frame_names[i] for i in picked],
            row_labels=[label for label, _ in STRIP_ROWS],
            row_colors=[color for _, color in STRIP_ROWS],
            tile_height=options.tile_height,
            alpha=options.alpha,
            contour_width=options.contour_width,
        )
        written.append(save_png(strip, out_dir / f"{exp_id}.png"))
    return written


def write_run_visualizations(
    cfg: PipelineConfig,
    fingerprints: Mapping[int, str],
    split: Split,
    evaluations: Mapping[str, BenchmarkResult] | None = None,
    bad_cases: BadCases | None = None,
) -> list[Path]:
    """After a run: a strip per expression, the flagged ones first, and, with evaluations, the
    J&F-per-video plot.

    Args:
        cfg: the run's configuration.
        fingerprints: the configuration fingerprint of each stage's records.
        split: the split of the run.
        evaluations: ``{archive name: its evaluation}`` of the run (empty: no plot).
        bad_cases: the run's bad-case report: its expressions are drawn first.
    Returns:
        the files written. Videos whose three stage records are not all finished are skipped
        (with a log line).
    """
    options = cfg.visualize
    work_dir = Path(cfg.work_dir)
    ready = [
        vid
        for vid in split.video_ids
        if all(s.is_finished(work_dir, vid, fingerprints[s.number]) for s in STAGES)
    ]
    if len(ready) < len(split.video_ids):
        logger.info(
            "visualize: %d of %d video(s) lack finished stage 1-3 records and are not drawn",
            len(split.video_ids) - len(ready),
            len(split.video_ids),
        )
    flags = bad_cases.reasons() if bad_cases is not None else {}
    flagged: dict[str, list[str]] = {}
    for video_id, exp_id in flags:
        if video_id in ready and exp_id in split.videos[video_id].expressions:
            flagged.setdefault(video_id, []).append(exp_id)
    written: list[Path] = []
    for video_id, exp_ids in progress_bar(
        flagged.items(), desc="visualize bad cases", unit="video", dynamic_ncols=True
    ):
        written += write_video_strips(
            work_dir, split, video_id, options, exp_ids=exp_ids, flags=flags
        )
    # The flagged strips just drawn are newer than their records: skipped here.
    for video_id in progress_bar(ready, desc="visualize", unit="video", dynamic_ncols=True):
        written += write_video_strips(work_dir, split, video_id, options, flags=flags)
    if evaluations:
        scores = {name: per_video_jf(ev.per_expression) for name, ev in evaluations.items()}
        totals = {name: float(ev.jf) for name, ev in evaluations.items()}
        written.append(
            jf_bar_plot(
                scores,
                work_dir / VISUALIZE_DIR / JF_PLOT_NAME,
                colors=ARCHIVE_COLORS,
                totals=totals,
                title=f"J&F per video: {cfg.name}",
            )
        )
    logger.info("visualize: %d file(s) written to %s", len(written), work_dir / VISUALIZE_DIR)
    return written
