"""The MeViS J&F metric: region similarity J and boundary F-measure F.

Same definitions and edge cases as the benchmark's official evaluation (which follows DAVIS):

- J is the IoU of the binary masks; a frame where both are empty scores 1.
- F is the F-measure of boundary precision and recall. Boundaries are one pixel wide and offset
  half a pixel towards the origin (a pixel is on the boundary when it differs from its right, lower
  or lower-right neighbour; the image border itself is never a boundary). A boundary pixel matches
  when the other mask's boundary, dilated (OpenCV) by a disk of radius
  ``ceil(bound_th * image diagonal)`` pixels, covers it (``bound_th >= 1`` is a radius in pixels).
  Both boundaries empty scores 1; exactly one empty scores 0. A mask covering the whole frame has
  no boundary, so a full-frame prediction against an empty ground truth scores F = 1 (J = 0).
- An expression scores the mean over its frames; a split scores the mean over expressions.

Masks are ``bool`` or any numeric dtype; nonzero is foreground.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

# Boundary tolerance of the MeViS/DAVIS benchmarks: a fraction of the image diagonal.
DEFAULT_BOUND_TH = 0.008


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J (IoU) of one frame.

    Args:
        pred: ``[H, W]`` predicted mask, nonzero = foreground.
        gt: ``[H, W]`` ground-truth mask, nonzero = foreground.
    Returns:
        ``|pred & gt| / |pred | gt|``, or 1.0 when both masks are empty.
    """
    _check_same_shape(pred, gt)
    return _iou(pred.astype(bool, copy=False), gt.astype(bool, copy=False))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a mask, offset half a pixel towards the origin.

    A pixel is on the boundary when its value differs from its right, lower or lower-right
    neighbour (pixels outside the image count as background). On the last row only the right
    neighbour is compared, on the last column only the lower one, and the bottom-right pixel is
    never on the boundary, so the image border does not bound a mask that touches it. (The DAVIS
    helper this follows can also resample the map to another size; the metric never asks for
    that, so boundaries are always at mask resolution.)

    Args:
        mask: ``[H, W]`` mask, nonzero = foreground.
    Returns:
        ``[H, W] bool`` boundary pixels.
    """
    seg = mask.astype(bool)
    right = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below = np.zeros_like(seg)
    below[:-1, :] = seg[1:, :]
    below_right = np.zeros_like(seg)
    below_right[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ below) | (seg ^ below_right)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ below[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_radius(bound_th: float, height: int, width: int) -> float:
    """Dilation radius in pixels: ``bound_th`` if ``>= 1``, else ``ceil(bound_th * diagonal)``.

    The diagonal is the correctly rounded ``sqrt(H**2 + W**2)``, as numpy's norm of the shape.
    """
    if bound_th >= 1:
        return bound_th
    return float(math.ceil(bound_th * math.sqrt(height * height + width * width)))


@lru_cache(maxsize=32)
def disk_footprint(radius: float) -> np.ndarray:
    """Disk structuring element: offsets ``(dy, dx)`` with ``dy**2 + dx**2 <= radius**2``.

    Offsets run over ``arange(-radius, radius + 1)``, so an integer radius gives a
    ``[2r+1, 2r+1]`` kernel (radius 1 is a plus sign); a fractional radius gives the same even-sized
    grid the reference implementation uses.

    Returns:
        ``[K, K] uint8`` kernel of 0/1 (read-only; it is cached).
    """
    offsets = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(offsets, offsets)
    kernel = (dx**2 + dy**2 <= radius**2).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def boundary_f_measure(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> float:
    """Boundary F-measure F of one frame.

    Args:
        pred: ``[H, W]`` predicted mask, nonzero = foreground.
        gt: ``[H, W]`` ground-truth mask, nonzero = foreground.
        bound_th: tolerance; ``< 1`` is a fraction of the image diagonal, ``>= 1`` pixels.
    Returns:
        ``2 P R / (P + R)`` of boundary precision P and recall R; 1.0 when neither mask has a
        boundary, 0.0 when exactly one has.
    """
    return frame_scores(pred, gt, bound_th)[1]


def frame_scores(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> tuple[float, float]:
    """``(J, F)`` of one frame; ``pred`` and ``gt`` are ``[H, W]`` masks, nonzero = foreground.

    Both scores are computed inside the smallest window holding every boundary pixel of either
    mask, which gives the same values as the whole frame (J only counts foreground; boundaries and
    their matches lie inside the window) at a cost proportional to the objects' size.
    """
    _check_same_shape(pred, gt)
    if pred.ndim != 2:
        raise ValueError(f"expected [H, W] masks, got shape {pred.shape}")
    radius = boundary_radius(bound_th, *pred.shape)
    window = _foreground_window(pred, gt)
    if window is None:
        return 1.0, 1.0
    pred, gt = pred[window].astype(bool), gt[window].astype(bool)
    return _iou(pred, gt), _boundary_f(pred, gt, radius)


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred & gt)) / union


def _boundary_f(pred: np.ndarray, gt: np.ndarray, radius: float) -> float:
    pred_boundary = boundary_map(pred)
    gt_boundary = boundary_map(gt)
    num_pred = int(np.count_nonzero(pred_boundary))
    num_gt = int(np.count_nonzero(gt_boundary))
    if num_pred == 0 or num_gt == 0:
        return 1.0 if num_pred == num_gt else 0.0

    kernel = disk_footprint(radius)
    pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
    precision = int(np.count_nonzero(pred_boundary & gt_dilated)) / num_pred
    recall = int(np.count_nonzero(gt_boundary & pred_dilated)) / num_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _foreground_window(pred: np.ndarray, gt: np.ndarray) -> tuple[slice, slice] | None:
    """Rows/columns that can hold a boundary pixel of either mask; None if both are empty.

    Boundary pixels lie within one pixel above/left of the foreground's bounding box; one more
    row/column below/right keeps the neighbours :func:`boundary_map` compares with (or the image
    edge, where the window ends too). Each mask is scanned in its own memory order (ground truth
    decoded from RLE is column-major), which avoids full-frame copies.
    """
    boxes = [box for box in (_bounding_box(pred), _bounding_box(gt)) if box is not None]
    if not boxes:
        return None
    top, bottom, left, right = (
        min(b[0] for b in boxes),
        max(b[1] for b in boxes),
        min(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
    height, width = pred.shape
    return (
        slice(max(top - 1, 0), min(bottom + 2, height)),
        slice(max(left - 1, 0), min(right + 2, width)),
    )


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive ``(top, bottom, left, right)`` of the nonzero pixels of ``mask``, or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1])
    cols = np.flatnonzero(mask[top : bottom + 1].any(axis=0))
    return top, bottom, int(cols[0]), int(cols[-1])


def evaluate_expression(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> tuple[float, float]:
    """``(J, F)`` of one expression: each the mean of the per-frame scores.

    Args:
        pred: ``[T, H, W]`` predicted masks, nonzero = foreground.
        gt: ``[T, H, W]`` ground-truth masks, nonzero = foreground.
        bound_th: boundary tolerance, see :func:`boundary_f_measure`.
    """
    _check_same_shape(pred, gt)
    if pred.ndim != 3 or pred.shape[0] == 0:
        raise ValueError(f"expected [T, H, W] masks with T >= 1, got shape {pred.shape}")
    scores = [frame_scores(p, g, bound_th) for p, g in zip(pred, gt, strict=True)]
    return mean_scores(scores)


def mean_scores(scores: list[tuple[float, float]]) -> tuple[float, float]:
    """Means ``(J, F)`` of a non-empty list of ``(J, F)`` pairs (numpy pairwise summation)."""
    if not scores:
        raise ValueError("no scores to average")
    j = np.array([score[0] for score in scores], dtype=np.float64)
    f = np.array([score[1] for score in scores], dtype=np.float64)
    return float(j.mean()), float(f.mean())


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
