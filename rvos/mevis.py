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
    "object_masks_problem",
    "rle_problem",
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


# Characters per run a compressed RLE string may use: 12 groups of 5 bits hold any count.
_MAX_RUN_CHARS = 12


def _run_lengths(counts: str) -> np.ndarray | None:
    """The run lengths of a compressed COCO RLE string, ``[R] int64``, or ``None`` where the
    string is not one. As pycocotools' ``rleFrString``: each run in groups of 5 bits, low ones
    first, one character each (``'0'`` + the group, bit 0x20: more groups follow; 0x10 of the
    last: negative); from the third run on, relative to the run two before."""
    try:
        codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    more = (codes & 0x20) != 0
    if codes.min() < 0 or codes.max() >= 64 or more[-1]:
        return None
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_RUN_CHARS:
        return None
    shift = 5 * (np.arange(codes.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((codes & 0x1F) << shift, starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def rle_problem(rle: object, height: int | None = None, width: int | None = None) -> str | None:
    """Why ``rle`` is not a ground-truth mask pycocotools can decode (and, given ``height``
    and ``width``, of that size), or ``None``. Null (the object is absent) is fine.

    pycocotools decodes whatever it is given, with no check: runs that fall short of the mask
    leave pixels of uninitialised memory, runs beyond it write past the mask's buffer. So every
    ground-truth RLE is checked first: ``{"size": [H, W], "counts": str}``, non-negative runs
    that cover exactly ``H * W`` pixels.
    """
    if not rle:
        return None
    if not isinstance(rle, dict):
        return f"not an RLE object ({type(rle).__name__})"
    size, counts = rle.get("size"), rle.get("counts")
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        return f"size {size!r} is not [height, width]"
    if height is not None and (size[0], size[1]) != (height, width):
        return f"size {size[1]}x{size[0]}, the frames are {width}x{height}"
    if not isinstance(counts, str):
        return f"counts is a {type(counts).__name__}, not a compressed RLE string"
    runs = _run_lengths(counts)
    if runs is None or (runs < 0).any():
        return "counts is not a compressed RLE string"
    if int(runs.sum()) != size[0] * size[1]:
        return f"counts cover {int(runs.sum())} pixels, not {size[0] * size[1]}"
    return None


def object_masks_problem(
    rles: object, video: Video, height: int | None = None, width: int | None = None
) -> str | None:
    """What is wrong with one object's ground truth (``mask_dict[anno_id]``) for ``video``, or
    ``None``: missing, not one mask (or null) per frame, or a mask :func:`rle_problem` refuses."""
    if rles is None:
        return "missing"
    if not isinstance(rles, list):
        return f"a {type(rles).__name__}, not a list of per-frame masks"
    if len(rles) != video.num_frames:
        return f"{len(rles)} masks, not {video.num_frames}"
    for frame_name, rle in zip(video.frame_names, rles, strict=True):
        if (problem := rle_problem(rle, height, width)) is not None:
            return f"frame {frame_name}: {problem}"
    return None


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
        if (problem := rle_problem(rle)) is not None:
            raise ValueError(f"anno_id {anno_id}, frame {frame_idx}: ground truth {problem}")
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
