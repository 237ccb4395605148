"""Stage 1 on long clips: ReferDINO on overlapping windows of frames, the queries stitched.

ReferDINO's temporal modules see every frame of the clip they are given, so its memory grows with
the clip. ReferDINO's MeViS inference runs a video in one pass, and so does the pipeline by
default (``stage1.window.frames: null``). With ``stage1.window.frames`` set, a longer clip is cut
into windows that the model runs one at a time, each as a clip of its own, and the windows'
queries are stitched into one set per expression over all frames:

- **Layout** (:func:`clip_windows`, :func:`window_spans`): windows of ``frames`` frames,
  consecutive ones sharing at least ``overlap`` of a window (:func:`shared_frames`), spread evenly
  from the first frame to the last (every window is full length; the shared frames differ by at
  most one between neighbours).
- **Ownership** (:attr:`Window.own_start`, :attr:`Window.own_stop`): every frame takes its scores,
  boxes and masks from one window. Of the frames two neighbours share, the earlier window gives the
  first half (rounded down), the later one the rest: each frame comes from the window where it
  sits further from the edge.
- **Matching** (:func:`match_queries`): a window's queries continue the running set (the queries
  of the first window, in its query order) one to one. Over the frames it shares with the window
  before it, each pair (running query, new query) is scored by the IoU of their masks (the model's
  masks at its output stride, ``logit > 0``; intersections and unions summed over the shared
  frames); a pair whose masks are empty on every shared frame is scored by the mean IoU of its
  boxes instead. The assignment maximises the summed score (Hungarian algorithm).

A clip no longer than one window is a single window owning every frame: the one-pass outputs,
bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from stage1_referdino.options import Stage1Window


@dataclass(frozen=True)
class Window:
    """Frames the model sees as one clip, and those whose outputs it gives.

    Attributes:
        start, stop: the model runs on frames ``[start, stop)``.
        own_start, own_stop: the outputs of frames ``[own_start, own_stop)`` come from this window
            (``start <= own_start < own_stop <= stop``).
    """

    start: int
    stop: int
    own_start: int
    own_stop: int

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


def shared_frames(frames: int, overlap: float) -> int:
    """Frames windows of ``frames`` frames share at least: ``overlap`` of a window, rounded, at
    least one (``overlap <= 0.5`` keeps it below ``frames`` for any ``frames >= 2``)."""
    return max(1, round(frames * overlap))


def clip_windows(num_frames: int, options: Stage1Window) -> list[Window]:
    """The windows ``stage1.window`` lays over a clip of ``num_frames`` frames."""
    if options.frames is None:
        return window_spans(num_frames, None, 1)
    return window_spans(num_frames, options.frames, shared_frames(options.frames, options.overlap))


def window_spans(num_frames: int, frames: int | None, overlap: int) -> list[Window]:
    """The windows of a clip of ``num_frames`` frames (see the module docstring).

    Args:
        frames: frames per window; ``None``, or a clip no longer: one window (one pass).
        overlap: frames consecutive windows share at least (``1 <= overlap < frames``).
    Returns:
        the windows in frame order; their owned ranges tile ``[0, num_frames)``.
    Raises:
        ValueError: no frames, or an overlap out of range.
    """
    if num_frames < 1:
        raise ValueError(f"a clip of {num_frames} frames has no window")
    if frames is None or num_frames <= frames:
        return [Window(0, num_frames, 0, num_frames)]
    if not 1 <= overlap < frames:
        raise ValueError(f"window overlap {overlap}: expected 1 to {frames - 1} (frames - 1)")
    step = frames - overlap
    count = -(-(num_frames - overlap) // step)  # ceil: the fewest windows that share `overlap`
    last_start = num_frames - frames
    starts = [index * last_start // (count - 1) for index in range(count)]
    stops = [start + frames for start in starts]
    # Shared frames [starts[i + 1], stops[i]) split at their middle.
    cuts = [nxt + (stop - nxt) // 2 for nxt, stop in zip(starts[1:], stops[:-1], strict=True)]
    owned = [0, *cuts, num_frames]
    return [
        Window(start, stop, owned[index], owned[index + 1])
        for index, (start, stop) in enumerate(zip(starts, stops, strict=True))
    ]


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of normalised ``(cx, cy, w, h)`` boxes.

    Args:
        boxes_a: ``[..., A, 4]``; boxes_b: ``[..., B, 4]`` (same leading shape).
    Returns:
        ``[..., A, B] float64`` (0 where both boxes have no area).
    """

    def corners(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
        boxes = np.asarray(boxes, dtype=np.float64)
        cx, cy, w, h = np.moveaxis(boxes, -1, 0)
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    ax0, ay0, ax1, ay1 = (c[..., :, None] for c in corners(boxes_a))
    bx0, by0, bx1, by1 = (c[..., None, :] for c in corners(boxes_b))
    inter = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) * np.clip(
        np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None
    )
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def query_similarity(
    running_masks: np.ndarray,
    running_boxes: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
) -> np.ndarray:
    """How well each new query continues each running query over the shared frames.

    Args:
        running_masks: ``[S, Q, h, w] bool`` the running queries' masks on the ``S`` shared frames.
        running_boxes: ``[S, Q, 4]`` their boxes (normalised ``cx, cy, w, h``).
        masks: ``[S, Q', h, w] bool``, boxes: ``[S, Q', 4]``: the new window's on the same frames.
    Returns:
        ``[Q, Q'] float64`` in ``[0, 1]``: the mask IoU over all shared frames (intersections
        and unions summed); where both masks are empty on every shared frame, the mean box IoU.
    """
    shared, count = running_masks.shape[:2]
    inter = np.zeros((count, masks.shape[1]), dtype=np.int64)
    for frame in range(shared):  # one frame at a time: each count is exact in float32
        a = running_masks[frame].reshape(count, -1).astype(np.float32)
        b = masks[frame].reshape(masks.shape[1], -1).astype(np.float32)
        inter += (a @ b.T).astype(np.int64)
    area_a = running_masks.reshape(shared, count, -1).sum(axis=(0, 2), dtype=np.int64)
    area_b = masks.reshape(shared, masks.shape[1], -1).sum(axis=(0, 2), dtype=np.int64)
    union = area_a[:, None] + area_b[None, :] - inter
    mask_iou = np.divide(inter, union, out=np.zeros(inter.shape, dtype=np.float64), where=union > 0)
    boxes_iou = box_iou(running_boxes, boxes).mean(axis=0)
    return np.where(union > 0, mask_iou, boxes_iou)


def match_queries(
    running_masks: np.ndarray,
    running_boxes: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
) -> np.ndarray:
    """The new window's query that continues each running query (arguments as
    :func:`query_similarity`, with ``Q' == Q``).

    Returns:
        ``[Q] int64`` ``order``: new query ``order[j]`` continues running query ``j`` (a
        permutation maximising the summed :func:`query_similarity`).
    Raises:
        ValueError: the windows return different numbers of queries.
    """
    if masks.shape[1] != running_masks.shape[1]:
        raise ValueError(
            f"a window returned {masks.shape[1]} queries, the one before it "
            f"{running_masks.shape[1]}: they cannot be matched one to one"
        )
    similarity = query_similarity(running_masks, running_boxes, masks, boxes)
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return order


@dataclass
class WindowOutputs:
    """One expression's outputs on some frames, query columns in the running order.

    Attributes:
        scores: ``[t, Q] float32``.
        boxes: ``[t, Q, 4] float32`` normalised ``(cx, cy, w, h)``.
        mask_logits: ``[t, Q, h, w]`` tensor (on the model's device) or array.
    """

    scores: np.ndarray
    boxes: np.ndarray
    mask_logits: Any


class QueryStitcher:
    """One expression's queries over the windows of a clip, stitched into the running set.

    Feed the windows in order (:meth:`add`); each call returns the outputs of the frames that
    window owns, its queries reordered to continue the running ones. Between windows, only the
    masks and boxes of the frames the next window shares are kept (``[S, Q, h, w] bool``).

    Args:
        windows: the clip's windows (:func:`window_spans`).
    """

    def __init__(self, windows: Sequence[Window]) -> None:
        self.windows = list(windows)
        self._next = 0
        self._shared_masks: np.ndarray | None = None  # [S, Q, h, w] bool, running order
        self._shared_boxes: np.ndarray | None = None  # [S, Q, 4]

    def add(self, outputs: WindowOutputs) -> WindowOutputs:
        """Stitch the next window's outputs (all of its frames, the model's query order).

        Returns:
            the outputs of the frames the window owns, in the running query order.
        Raises:
            ValueError: outputs for the wrong number of frames, or every window already added.
        """
        if self._next >= len(self.windows):
            raise ValueError(f"all {len(self.windows)} windows are already stitched")
        window = self.windows[self._next]
        if outputs.scores.shape[0] != window.num_frames:
            raise ValueError(
                f"window {self._next} has {window.num_frames} frames, its outputs "
                f"{outputs.scores.shape[0]}"
            )
        if self._next > 0:
            shared = window.start, self.windows[self._next - 1].stop
            masks, boxes = self._frames(outputs, *shared, window)
            order = match_queries(self._shared_masks, self._shared_boxes, masks, boxes)
            outputs = reorder(outputs, order)
        self._next += 1
        if self._next < len(self.windows):
            self._shared_masks, self._shared_boxes = self._frames(
                outputs, self.windows[self._next].start, window.stop, window
            )
        own = slice(window.own_start - window.start, window.own_stop - window.start)
        return WindowOutputs(outputs.scores[own], outputs.boxes[own], outputs.mask_logits[own])

    @staticmethod
    def _frames(
        outputs: WindowOutputs, start: int, stop: int, window: Window
    ) -> tuple[np.ndarray, np.ndarray]:
        """``([S, Q, h, w] bool, [S, Q, 4])`` masks and boxes of clip frames ``[start, stop)``."""
        local = slice(start - window.start, stop - window.start)
        logits = outputs.mask_logits[local]
        binary = logits > 0
        if isinstance(binary, torch.Tensor):
            binary = binary.cpu().numpy()
        return np.asarray(binary), np.asarray(outputs.boxes[local])


def reorder(outputs: WindowOutputs, order: np.ndarray) -> WindowOutputs:
    """``outputs`` with query column ``j`` taken from column ``order[j]``."""
    logits = outputs.mask_logits
    if isinstance(logits, torch.Tensor):
        logits = logits.index_select(1, torch.as_tensor(order, device=logits.device))
    else:
        logits = logits[:, order]
    return WindowOutputs(outputs.scores[:, order], outputs.boxes[:, order], logits)
