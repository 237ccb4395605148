"""The ReferDINO-Plus conditional fusion rule.

Over the frames where both the stage-1 union mask and the SAM 2 union mask are non-empty, count
the frames where SAM 2's bounding box is smaller than ``shrink_ratio`` of the stage-1 box. If that
count is more than ``majority`` of those frames, SAM 2 probably tracked only one of several
referred objects: the expression is treated as multi-object and the output is SAM 2 ∪ stage 1.
Otherwise the output is SAM 2 alone.

The comparisons are done on integers exactly as the original (``area_sam2 * 3 < area_ori * 2``
and ``cnt * 2 > valid`` for the default 2/3 and 1/2), so ties behave identically.

Masks are taken and given as runs (:class:`~rvos.masks.RunLengthMasks`): the box areas and the
union are computed on the runs, so no stack of a whole video is decoded at frame size.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from rvos.masks import MaskStack, RunLengthMasks, as_run_length


@dataclass(frozen=True)
class FusionResult:
    """Outcome of the fusion rule for one expression.

    Attributes:
        masks: ``[T, H, W]`` final masks, run-length encoded.
        multi_object: whether the union with stage 1 was taken.
        frames_sam2_smaller: frames (among ``frames_both_nonempty``) where the SAM 2 box is smaller
            than ``shrink_ratio`` of the stage-1 box.
        frames_both_nonempty: frames where both union masks have a non-empty box.
    """

    masks: RunLengthMasks
    multi_object: bool
    frames_sam2_smaller: int
    frames_both_nonempty: int


def is_multi_object(
    stage1_areas: np.ndarray,
    sam2_areas: np.ndarray,
    *,
    shrink_ratio: Fraction = Fraction(2, 3),
    majority: Fraction = Fraction(1, 2),
) -> tuple[bool, int, int]:
    """Decide the fusion branch from per-frame box areas.

    Args:
        stage1_areas: ``[T] int`` stage-1 union box areas.
        sam2_areas: ``[T] int`` SAM 2 union box areas.
        shrink_ratio: SAM 2 box counts as smaller when ``sam2 < shrink_ratio * stage1``.
        majority: multi-object when ``smaller > majority * both_nonempty``.
    Returns:
        ``(multi_object, frames_sam2_smaller, frames_both_nonempty)``.
    """
    stage1_areas = np.asarray(stage1_areas, dtype=np.int64)
    sam2_areas = np.asarray(sam2_areas, dtype=np.int64)
    shrink, major = Fraction(shrink_ratio), Fraction(majority)
    valid = (stage1_areas > 0) & (sam2_areas > 0)
    smaller = valid & (sam2_areas * shrink.denominator < stage1_areas * shrink.numerator)
    frames_both = int(valid.sum())
    frames_smaller = int(smaller.sum())
    multi = frames_smaller * major.denominator > frames_both * major.numerator
    return bool(multi), frames_smaller, frames_both


def fuse_expression(
    stage1_union: MaskStack,
    sam2_union: MaskStack,
    *,
    shrink_ratio: Fraction = Fraction(2, 3),
    majority: Fraction = Fraction(1, 2),
) -> FusionResult:
    """Apply the conditional fusion to one expression.

    Args:
        stage1_union: ``[T, H, W]`` union of the kept queries' stage-1 masks: runs
            (:class:`~rvos.masks.RunLengthMasks`) or a bool array.
        sam2_union: ``[T, H, W]`` union of the SAM 2 masks of the same queries, likewise.
        shrink_ratio, majority: see :func:`is_multi_object` (defaults: ReferDINO-Plus).
    Returns:
        the fused masks and the decision with its two counts.
    """
    if tuple(stage1_union.shape) != tuple(sam2_union.shape):
        raise ValueError(f"shape mismatch: stage 1 {stage1_union.shape}, SAM 2 {sam2_union.shape}")
    stage1_union, sam2_union = as_run_length(stage1_union), as_run_length(sam2_union)
    multi, smaller, both = is_multi_object(
        stage1_union.bounding_box_areas(),
        sam2_union.bounding_box_areas(),
        shrink_ratio=shrink_ratio,
        majority=majority,
    )
    masks = sam2_union.union_with(stage1_union) if multi else sam2_union
    return FusionResult(
        masks=masks, multi_object=multi, frames_sam2_smaller=smaller, frames_both_nonempty=both
    )
