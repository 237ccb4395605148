"""Stage 2 per video: refine every expression's kept queries with the tracker.

Reads the video's stage-1 record (:meth:`rvos.proposals.Stage1Records.load`: with
``stage1.legacy_dir``, the ReferDINO-Plus ``<video>.npz`` converted into one), opens the video
once (frames decoded and image features computed once for all expressions and both propagation
directions), and writes the stage-2 record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rvos import intermediates as im
from rvos.proposals import Stage1Records
from rvos.splits import Split
from rvos.workers import VideoProcessor
from stage2_sam2_refine.options import Stage2Options
from stage2_sam2_refine.refine import Refiner, RefineResult
from stage2_sam2_refine.tracker import Frame, build_tracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage2Job:
    """What a stage-2 worker needs (plain, picklable).

    Attributes:
        data_root: the split.
        layout: its layout (``data.layout``).
        work_dir: where stage-2 records go (``work_dir/stage2/<video>.npz``).
        fingerprint: the configuration fingerprint the records carry.
        stage1: where the stage-1 records come from.
        options: the ``stage2`` section.
    """

    data_root: Path
    layout: str
    work_dir: Path
    fingerprint: str
    stage1: Stage1Records
    options: Stage2Options


def refinement_record(
    proposals: im.ExpressionProposals, result: RefineResult
) -> im.ExpressionRefinement:
    """Stage-2 record of one expression: the tracker's masks plus the kept queries' stage-1
    union, both kept as runs (nothing is decoded)."""
    kept = np.asarray(result.columns, dtype=np.int64)
    return im.ExpressionRefinement(
        kept_columns=kept,
        prompt_frames=np.asarray(result.prompt_frames, dtype=np.int64),
        sam2_masks=result.masks,
        stage1_union=proposals.masks.select(kept, axis=1).union(),
    )


def stage2_record(
    refiner: Refiner,
    stage1: im.Stage1Video,
    frames: Sequence[Frame],
    *,
    progress: bool = False,
    on_frame: Callable[[str, int, int], None] | None = None,
) -> im.Stage2Video:
    """Stage-2 record of one video: the tracker on every expression's kept queries.

    Args:
        stage1: the video's stage-1 record.
        frames: its frames (JPEG paths or PIL RGB images), in the order of
            ``stage1.frame_names``.
        progress: show a progress bar over the expressions.
        on_frame: called after each propagated frame with ``(exp_id, frames done, frames of
            both passes)`` (:meth:`Refiner.refine_video`).
    """
    output = im.Stage2Video(stage1.video_id, stage1.frame_names, stage1.height, stage1.width)
    results = refiner.refine_video(
        frames, stage1.expressions, video_id=stage1.video_id, on_frame=on_frame
    )
    if progress:
        results = tqdm(
            results, total=len(stage1.expressions), desc="stage 2 (SAM 2)", unit="sentence"
        )
    for exp_id, result in results:
        output.expressions[exp_id] = refinement_record(stage1.expressions[exp_id], result)
    return output


def build_video_processor(job: Stage2Job, device: str) -> VideoProcessor:
    """Worker entry point (see :mod:`rvos.workers`): the tracker loads once, then one call per
    video."""
    refiner = Refiner(build_tracker(job.options, device=device), job.options)
    split = Split(job.data_root, job.layout)

    def process(video_id: str) -> None:
        stage1 = job.stage1.load(split, video_id)
        output = stage2_record(refiner, stage1, split.frame_paths(video_id))
        path = im.stage_path(job.work_dir, 2, video_id)
        im.save_stage2(path, output, fingerprint=job.fingerprint)

    return process
