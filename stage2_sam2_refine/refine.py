"""Stage 2: refine each expression's stage-1 proposals with a video tracker.

Per expression, as ReferDINO-Plus's ``refine_from_refdino.py``:

1. keep the queries whose mean score over the frames where it exceeds ``score_threshold`` also
   exceeds it (:func:`~stage2_sam2_refine.prompts.select_queries`);
2. prompt the tracker with each kept query (one object per query, object ids ``0..K-1`` in query
   order) on the frame where it scores highest, with its stage-1 mask (or its box, or points
   sampled from its mask);
3. track forward from the earliest prompted frame to the end, then in reverse from that frame
   to the start (:func:`~stage2_sam2_refine.tracker.propagation_order`). The reverse pass
   rewrites the earliest prompted frame, so every frame's masks come from exactly one pass:
   frames ``0..f0`` from the reverse pass, ``f0+1..T-1`` from the forward pass (``f0 = 0``: no
   reverse pass).

Each frame's masks are run-length encoded as the tracker hands them over
(:class:`~rvos.masks.RunLengthBuilder`): an expression's result never exists as a
``[T, K, H, W]`` array, whatever the length of the video.

This module is written once against the tracker interface (:mod:`stage2_sam2_refine.tracker`):
the tracker (SAM 2, SAMURAI, ...) is whatever ``stage2.tracker`` names, built with
:func:`~stage2_sam2_refine.tracker.build_tracker`; it opens a video once for all of its
expressions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Protocol

import numpy as np
import torch

from rvos.masks import RunLengthBuilder, RunLengthMasks
from stage2_sam2_refine.options import PromptKind, Stage2Options
from stage2_sam2_refine.prompts import (
    boxes_to_pixel_xyxy,
    prompt_frames,
    sample_points_from_mask,
    select_queries,
)
from stage2_sam2_refine.tracker import (
    Frame,
    ObjectPrompt,
    TrackingSession,
    VideoTracker,
    propagation_order,
)

logger = logging.getLogger(__name__)

# Progress of one expression's tracking: called after each frame the tracker yields with
# ``(frames done, frames of both passes)``; an expression without kept queries calls it never.
FrameProgress = Callable[[int, int], None]


class Proposals(Protocol):
    """One expression's stage-1 output, as stage 2 reads it.

    Attributes:
        scores: ``[T, N] float32`` per-frame query scores.
        boxes: ``[T, N, 4] float32`` normalised ``(cx, cy, w, h)``.
        masks: ``[T, N, H, W]`` binary masks at frame size (``upsample(logits) > 0``): a bool
            array or :class:`rvos.masks.RunLengthMasks`; only kept queries' prompt frames are read.
    """

    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | RunLengthMasks


@dataclass(frozen=True)
class RefineResult:
    """The tracker's masks for one expression.

    Attributes:
        masks: ``[T, K, H, W]`` run-length encoded, one mask stack per kept query (``K = 0``:
            none kept); decode a frame with ``masks.frame(t)`` (``[K, H, W] bool``).
        columns: ``[K] int64`` the kept queries as columns of the stage-1 proposals (``scores[:, c]``),
            ascending; tracked object ``k`` is column ``columns[k]``.
        prompt_frames: ``[K] int64`` the frame where each object was prompted.
    """

    masks: RunLengthMasks
    columns: np.ndarray
    prompt_frames: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(self.columns.shape[0])

    def union(self) -> RunLengthMasks:
        """``[T, H, W]`` run-length encoded union over objects (all empty when ``K = 0``)."""
        return self.masks.union()

    @classmethod
    def empty(cls, num_frames: int, height: int, width: int) -> RefineResult:
        """The result of an expression without any kept query."""
        return cls(
            masks=RunLengthMasks.empty((num_frames, 0, height, width)),
            columns=np.zeros(0, dtype=np.int64),
            prompt_frames=np.zeros(0, dtype=np.int64),
        )


def _mask_at(masks: np.ndarray | RunLengthMasks, frame_idx: int, query: int) -> np.ndarray:
    """``[H, W] bool`` stage-1 mask of ``query`` on ``frame_idx``."""
    if isinstance(masks, RunLengthMasks):
        num_queries = masks.shape[1]
        return masks.decode([frame_idx * num_queries + query])[0]
    return np.asarray(masks[frame_idx, query], dtype=bool)


class Refiner:
    """Stage-2 refinement with one tracker (build the tracker once per worker:
    ``Refiner(build_tracker(options, device=...), options)``).

    Args:
        tracker: a loaded :class:`~stage2_sam2_refine.tracker.VideoTracker`.
        options: the ``stage2`` options; the refiner reads :attr:`OPTION_FIELDS` (which queries,
            how they prompt, what to do on out-of-memory), the tracker the others.
    """

    # the `stage2` options this class reads; every other one configures the tracker
    OPTION_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"score_threshold", "prompt", "num_points", "point_seed", "retry_offloaded_on_oom"}
    )

    def __init__(self, tracker: VideoTracker, options: Stage2Options) -> None:
        self.tracker = tracker
        self.options = options

    @property
    def device(self) -> torch.device:
        return self.tracker.device

    def open_video(
        self, frames: Sequence[Frame], *, video_id: str, offload: bool = False
    ) -> TrackingSession:
        """Open a video once for all of its expressions.

        Args:
            frames: the video's frames in order: image paths (e.g. ``Split.frame_paths``) or
                decoded PIL RGB images (the same masks for the same pixels).
            video_id: named in logs and errors.
            offload: keep frames, features and memories in host memory, whatever the options say.
        """
        return self.tracker.open_video(frames, video_id=video_id, offload=offload)

    def refine(
        self,
        session: TrackingSession,
        *,
        scores: np.ndarray,
        boxes: np.ndarray,
        masks: np.ndarray | RunLengthMasks,
        exp_id: str = "",
        on_frame: FrameProgress | None = None,
    ) -> RefineResult:
        """Refine one expression of an opened video.

        Args:
            session: from :meth:`open_video`.
            scores: ``[T, N] float32`` stage-1 query scores.
            boxes: ``[T, N, 4] float32`` normalised ``(cx, cy, w, h)`` (read for box prompts).
            masks: ``[T, N, H, W]`` binary stage-1 masks at frame size (see :class:`Proposals`).
            exp_id: named in logs and errors.
            on_frame: called after each tracked frame (see :data:`FrameProgress`).
        Returns:
            per kept query, the tracker's masks on every frame, encoded frame by frame as they
            are tracked.
        Raises:
            ValueError: shapes that disagree with each other or with the video.
            RuntimeError: a tracker that skipped frames.
        """
        where = f"video {session.video_id!r}, expression {exp_id!r}"
        scores = np.asarray(scores, dtype=np.float32)
        height, width = session.size
        if scores.ndim != 2 or scores.shape[0] != session.num_frames:
            raise ValueError(
                f"{where}: scores have shape {scores.shape}, expected "
                f"[{session.num_frames}, N] for the video's {session.num_frames} frames"
            )
        num_frames, num_queries = scores.shape
        if tuple(np.shape(boxes)) != (num_frames, num_queries, 4):
            raise ValueError(f"{where}: boxes have shape {np.shape(boxes)}, scores {scores.shape}")
        if tuple(masks.shape) != (num_frames, num_queries, height, width):
            raise ValueError(
                f"{where}: masks have shape {tuple(masks.shape)}, expected "
                f"{(num_frames, num_queries, height, width)} (frame size {width}x{height})"
            )
        queries = select_queries(scores, self.options.score_threshold)
        if queries.size == 0:
            logger.debug("%s: no query above %s", where, self.options.score_threshold)
            return RefineResult.empty(num_frames, height, width)
        frames = prompt_frames(scores, queries)
        logger.debug("%s: queries %s prompted on frames %s", where, queries, frames)

        prompts = self._prompts(queries, frames, boxes, masks, size=(height, width), where=where)
        total = len(propagation_order(num_frames, frames))
        tracked_masks = RunLengthBuilder(num_frames, (len(queries), height, width))
        for done, tracked in enumerate(session.track(prompts), start=1):
            # the reverse pass's f0 comes last and replaces the forward one
            tracked_masks.put(tracked.frame_idx, tracked.masks)
            if on_frame is not None:
                on_frame(done, total)
        skipped = tracked_masks.missing()
        if skipped.size:
            raise RuntimeError(f"{where}: tracking skipped frames {skipped}")
        return RefineResult(masks=tracked_masks.build(), columns=queries, prompt_frames=frames)

    def _prompts(
        self,
        queries: np.ndarray,
        frames: np.ndarray,
        boxes: np.ndarray,
        masks: np.ndarray | RunLengthMasks,
        *,
        size: tuple[int, int],
        where: str,
    ) -> list[ObjectPrompt]:
        """Object ``k`` (query ``queries[k]``) prompted on frame ``frames[k]``, as
        ``options.prompt`` says; a point prompt on an empty mask falls back to that mask."""
        options = self.options
        height, width = size
        rng = np.random.default_rng(options.point_seed)  # every expression starts from the seed
        prompts = []
        for obj_id, (query, frame_idx) in enumerate(zip(queries, frames, strict=True)):
            query, frame_idx = int(query), int(frame_idx)
            if options.prompt == PromptKind.box:
                box = boxes_to_pixel_xyxy(np.asarray(boxes[frame_idx, query]), height, width)
                prompts.append(ObjectPrompt(obj_id, frame_idx, box=box))
                continue
            mask = _mask_at(masks, frame_idx, query)
            if options.prompt == PromptKind.point:
                points = sample_points_from_mask(mask, options.num_points, rng)
                if len(points):
                    labels = np.ones(len(points), dtype=np.int32)
                    prompts.append(ObjectPrompt(obj_id, frame_idx, points=points, labels=labels))
                    continue
                logger.warning(
                    "%s: query %d has an empty mask on frame %d; prompting it with that (empty) "
                    "mask instead of points",
                    where,
                    query,
                    frame_idx,
                )
            prompts.append(ObjectPrompt(obj_id, frame_idx, mask=mask))
        return prompts

    def refine_video(
        self,
        frames: Sequence[Frame],
        expressions: Mapping[str, Proposals],
        *,
        video_id: str,
        on_frame: Callable[[str, int, int], None] | None = None,
    ) -> Iterator[tuple[str, RefineResult]]:
        """Refine all expressions of a video, opening it once.

        On CUDA out-of-memory (and ``retry_offloaded_on_oom``), logs a warning naming the video,
        reopens it with frames, features and memories in host memory, and carries on from the
        expression that failed; results already yielded stay valid.

        Args:
            on_frame: called after each tracked frame with ``(exp_id, frames done, frames of
                both passes)`` (see :data:`FrameProgress`; a retried expression starts over).
        Yields:
            ``(exp_id, result)`` in the order of ``expressions``.
        """
        items = list(expressions.items())
        done = 0
        offload = False
        while True:
            try:
                session = self.open_video(frames, video_id=video_id, offload=offload)
                while done < len(items):
                    exp_id, proposals = items[done]
                    result = self.refine(
                        session,
                        scores=proposals.scores,
                        boxes=proposals.boxes,
                        masks=proposals.masks,
                        exp_id=exp_id,
                        on_frame=None if on_frame is None else partial(on_frame, exp_id),
                    )
                    yield exp_id, result
                    done += 1
                return
            except torch.cuda.OutOfMemoryError:
                if offload or not self.options.retry_offloaded_on_oom:
                    raise
            # Outside the handler, so that the failed attempt's tensors can be freed.
            session = None
            torch.cuda.empty_cache()
            logger.warning(
                "video %s: CUDA out of memory at expression %s; retrying the video with frames, "
                "image features and tracking memories offloaded to the CPU",
                video_id,
                items[done][0] if done < len(items) else "(opening)",
            )
            offload = True
