"""MeViS splits (v1 and v2) and their ground truth.

A split folder holds::

    meta_expressions.json   {"videos": {video_id: {"frames": [frame_name, ...],
                              "expressions": {exp_id: {"exp": str, "obj_id": [...], "anno_id": [...]}}}}}
    JPEGImages/<video_id>/<frame_name>.jpg
    mask_dict.json          optional ground truth: {anno_id: [COCO RLE or null per frame]}

MeViS v2 keeps this layout and adds expressions that refer to nothing (an empty ``anno_id`` list:
empty ground truth on every frame) and fields (audio, boxes) that are ignored here.

:class:`MevisSplit` is :class:`rvos.splits.Split` with the ``mevis`` layout; the reading, the id
checks (a video, expression or frame id that is empty or would escape its output folder is
refused with a message naming it) and the frame validation are shared by every layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from rvos.splits import FRAME_SUFFIX, MEVIS_LAYOUT, DataError, Expression, Split, Video

__all__ = [
    "FRAME_SUFFIX",
    "MASK_FILE",
    "META_FILE",
    "DataError",
    "Expression",
    "MevisSplit",
    "Video",
    "gt_frame_mask",
    "gt_frame_size",
    "load_gt_masks",
]

META_FILE = MEVIS_LAYOUT.meta_file
MASK_FILE = MEVIS_LAYOUT.mask_file  # ground truth, released for train and valid_u


class MevisSplit(Split):
    """A MeViS-layout split rooted at ``root``.

    Args:
        root: folder with ``meta_expressions.json`` and ``JPEGImages/``.
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(root, MEVIS_LAYOUT)


def gt_frame_mask(
    mask_dict: dict[str, list], anno_ids: Sequence[str], frame_idx: int, height: int, width: int
) -> np.ndarray:
    """Ground truth of one expression on one frame: the union of its ``anno_ids``' masks.

    ``mask_dict[anno_id][frame_idx]`` is a COCO RLE (``{"size": [H, W], "counts": str}``) or
    ``None`` (object absent: empty). Returns ``[H, W] bool``, column-major as pycocotools
    decodes it.
    """
    mask = None
    for anno_id in anno_ids:
        rle = mask_dict[str(anno_id)][frame_idx]
        if not rle:
            continue
        # Column-major like pycocotools' output: the union needs no transposing copies.
        decoded = mask_utils.decode(rle).astype(bool)
        if decoded.shape != (height, width):
            raise ValueError(
                f"anno_id {anno_id}, frame {frame_idx}: ground truth is {decoded.shape[1]}x"
                f"{decoded.shape[0]}, expected {width}x{height}"
            )
        mask = decoded if mask is None else mask | decoded
    return np.zeros((height, width), dtype=bool) if mask is None else mask


def load_gt_masks(
    mask_dict: dict[str, list], anno_ids: Sequence[str], num_frames: int, height: int, width: int
) -> np.ndarray:
    """Ground truth of one expression, ``[T, H, W] bool`` (see :func:`gt_frame_mask`)."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for frame_idx in range(num_frames):
        masks[frame_idx] = gt_frame_mask(mask_dict, anno_ids, frame_idx, height, width)
    return masks


def gt_frame_size(mask_dict: dict[str, list], anno_ids: Sequence[str]) -> tuple[int, int] | None:
    """``(H, W)`` from the first non-null RLE of ``anno_ids``; None if all frames are null."""
    for anno_id in anno_ids:
        for rle in mask_dict[str(anno_id)]:
            if rle:
                height, width = rle["size"]
                return int(height), int(width)
    return None


# ----------------------------------------------------------------------------- predictions
