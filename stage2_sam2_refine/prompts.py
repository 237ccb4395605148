"""From stage-1 proposals to SAM 2 prompts: which queries to keep, and where to prompt them.

All functions are pure and follow ReferDINO-Plus's ``refine_from_refdino.py`` operation for
operation (float32 throughout), so that decisions at the threshold come out the same.
"""

from __future__ import annotations

import numpy as np
import torch

# Added to the count of frames above the threshold before dividing (ReferDINO-Plus), so that a
# query that never exceeds it gets mean 0 instead of 0/0.
MEAN_SCORE_EPS = 1e-6


def mean_confident_scores(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Each query's mean score over the frames where it exceeds ``threshold`` (0 if none).

    Args:
        scores: ``[T, N] float32`` per-frame query scores (sigmoid of the stage-1 logits).
        threshold: the score a frame must exceed to count.
    Returns:
        ``[N] float32``.
    """
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    if scores_t.ndim != 2:
        raise ValueError(f"scores must be [T, N], got shape {tuple(scores_t.shape)}")
    valid = (scores_t > threshold).float()
    mean = (scores_t * valid).sum(0) / (valid.sum(0) + MEAN_SCORE_EPS)
    return mean.numpy()


def select_queries(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Queries to refine: mean score over confident frames above ``threshold``.

    Args:
        scores: ``[T, N] float32``.
        threshold: e.g. 0.275, ReferDINO-Plus's refine threshold.
    Returns:
        ``[K] int64`` kept query indices, ascending (``K`` may be 0).
    """
    return np.flatnonzero(mean_confident_scores(scores, threshold) > threshold).astype(np.int64)


def prompt_frames(scores: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The frame where each query scores highest (the first one on ties).

    Args:
        scores: ``[T, N] float32``.
        queries: ``[K]`` query indices.
    Returns:
        ``[K] int64`` frame indices.
    """
    kept = torch.as_tensor(np.asarray(scores, dtype=np.float32)[:, np.asarray(queries)])
    return kept.argmax(0).numpy().astype(np.int64)


def boxes_to_pixel_xyxy(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised ``(cx, cy, w, h)`` boxes to pixel ``(x1, y1, x2, y2)`` (``rescale_bboxes``).

    Args:
        boxes: ``[..., 4] float32`` normalised centre/size boxes.
        height, width: frame size in pixels.
    Returns:
        ``[..., 4] float32`` corner boxes in pixels (not clipped).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must end with 4 coordinates, got shape {boxes.shape}")
    cx = boxes[..., 0] * np.float32(width)
    cy = boxes[..., 1] * np.float32(height)
    bw = boxes[..., 2] * np.float32(width)
    bh = boxes[..., 3] * np.float32(height)
    half = np.float32(0.5)
    return np.stack([cx - half * bw, cy - half * bh, cx + half * bw, cy + half * bh], axis=-1)


def sample_points_from_mask(
    mask: np.ndarray, num_points: int, rng: np.random.Generator
) -> np.ndarray:
    """Sample positive click positions uniformly from a mask's foreground pixels.

    Without replacement when the mask has at least ``num_points`` pixels, with replacement
    otherwise (as ReferDINO-Plus's ``sample_points_from_masks``); an empty mask gives no points.

    Args:
        mask: ``[H, W] bool``.
        num_points: how many points to draw.
        rng: the random generator (seeded by the caller for reproducible runs).
    Returns:
        ``[num_points, 2] float32`` pixel ``(x, y)`` coordinates, or ``[0, 2]`` for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    if num_points < 1:
        raise ValueError(f"num_points must be positive, got {num_points}")
    yx = np.argwhere(mask)
    if len(yx) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    picks = rng.choice(len(yx), num_points, replace=len(yx) < num_points)
    return yx[picks, ::-1].astype(np.float32)
