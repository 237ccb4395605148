"""Stage 3 per video: fuse each expression's stage-1 and SAM 2 masks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from rvos import intermediates as im
from rvos.masks import RunLengthMasks
from stage3_fusion.fusion import fuse_expression


def fuse_video(stage2: im.Stage2Video, *, shrink_ratio: Fraction, majority: Fraction):
    """Apply the conditional fusion to every expression of a video -> :class:`Stage3Video`."""
    fused = im.Stage3Video(
        video_id=stage2.video_id,
        frame_names=stage2.frame_names,
        height=stage2.height,
        width=stage2.width,
    )
    for exp_id, refinement in stage2.expressions.items():
        result = fuse_expression(
            refinement.stage1_union.decode(),
            refinement.sam2_union(),
            shrink_ratio=shrink_ratio,
            majority=majority,
        )
        fused.expressions[exp_id] = im.ExpressionFusion(
            masks=RunLengthMasks.encode(result.masks),
            multi_object=result.multi_object,
            frames_sam2_smaller=result.frames_sam2_smaller,
            frames_both_nonempty=result.frames_both_nonempty,
        )
    return fused


def build_video_processor(config: dict[str, Any], device: str):
    """Worker entry point (see :mod:`rvos.workers`): fuse one video's stage-2 record."""
    del device  # fusion is cheap CPU work
    work_dir = Path(config["work_dir"])
    fingerprint = config["run"]["fingerprints"]["stage3"]
    shrink_ratio = Fraction(*config["stage3"]["shrink_ratio"])
    majority = Fraction(*config["stage3"]["majority"])

    def process(video_id: str) -> None:
        stage2 = im.load_stage2(im.stage_path(work_dir, 2, video_id))
        fused = fuse_video(stage2, shrink_ratio=shrink_ratio, majority=majority)
        im.save_stage3(im.stage_path(work_dir, 3, video_id), fused, fingerprint=fingerprint)

    return process
