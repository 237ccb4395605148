"""Stage 3 per video: fuse each expression's stage-1 and SAM 2 masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rvos import intermediates as im
from rvos.workers import VideoProcessor
from stage3_fusion.fusion import fuse_expression
from stage3_fusion.options import FusionOptions


@dataclass(frozen=True)
class Stage3Job:
    """What a stage-3 worker needs (plain, picklable).

    Attributes:
        work_dir: stage-2 records are read from and stage-3 records written to
            ``work_dir/stage{2,3}/<video>.npz``.
        fingerprint: the configuration fingerprint the stage-3 records carry.
        options: the ``stage3`` section.
    """

    work_dir: Path
    fingerprint: str
    options: FusionOptions


def fuse_video(stage2: im.Stage2Video, options: FusionOptions) -> im.Stage3Video:
    """Apply the conditional fusion to every expression of a video, on the records' runs."""
    fused = im.Stage3Video(
        video_id=stage2.video_id,
        frame_names=stage2.frame_names,
        height=stage2.height,
        width=stage2.width,
    )
    for exp_id, refinement in stage2.expressions.items():
        result = fuse_expression(
            refinement.stage1_union,
            refinement.sam2_union(),
            shrink_ratio=options.shrink,
            majority=options.major,
        )
        fused.expressions[exp_id] = im.ExpressionFusion(
            masks=result.masks,
            multi_object=result.multi_object,
            frames_sam2_smaller=result.frames_sam2_smaller,
            frames_both_nonempty=result.frames_both_nonempty,
        )
    return fused


def build_video_processor(job: Stage3Job, device: str) -> VideoProcessor:
    """Worker entry point (see :mod:`rvos.workers`): fuse one video's stage-2 record."""
    del device  # fusion is cheap CPU work

    def process(video_id: str) -> None:
        stage2 = im.load_stage2(im.stage_path(job.work_dir, 2, video_id))
        fused = fuse_video(stage2, job.options)
        im.save_stage3(im.stage_path(job.work_dir, 3, video_id), fused, fingerprint=job.fingerprint)

    return process
