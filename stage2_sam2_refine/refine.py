"""Stage 2: refine each expression's stage-1 proposals with SAM 2.

Per expression, as ReferDINO-Plus's ``refine_from_refdino.py``:

1. keep the queries whose mean score over the frames where it exceeds ``score_threshold`` also
   exceeds it (:func:`~stage2_sam2_refine.prompts.select_queries`);
2. prompt SAM 2 with each kept query (one object per query, object ids ``0..K-1`` in query
   order) on the frame where it scores highest, with its stage-1 mask (or its box, or points
   sampled from its mask);
3. propagate forward from the earliest prompted frame to the end, then in reverse from that frame
   to the start. The reverse pass rewrites the earliest prompted frame, so every frame's masks
   come from exactly one pass: frames ``0..f0`` from the reverse pass, ``f0+1..T-1`` from the
   forward pass (``f0 = 0``: the reverse pass does nothing and frame 0 comes from the forward pass).

A video's frames are decoded once and each frame's image features are encoded once for all of its
expressions and both directions (:class:`~stage2_sam2_refine.predictor.SharedFeatureVideoPredictor`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from rvos.masks import RunLengthMasks
from rvos.options import Autocast, CacheDevice
from stage2_sam2_refine.build import build_sam2_predictor
from stage2_sam2_refine.options import PromptKind, Stage2Options, Tracker
from stage2_sam2_refine.predictor import Frame, SharedFeatureVideoPredictor, VideoSession
from stage2_sam2_refine.prompts import (
    boxes_to_pixel_xyxy,
    prompt_frames,
    sample_points_from_mask,
    select_queries,
)

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {Autocast.float16: torch.float16, Autocast.bfloat16: torch.bfloat16}

# Progress of one expression's propagation: called after each frame SAM 2 yields with
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
    """SAM 2's masks for one expression.

    Attributes:
        masks: ``[T, K, H, W] bool`` one mask stack per kept query (``K = 0``: none kept).
        columns: ``[K] int64`` the kept queries as columns of the stage-1 proposals (``scores[:, c]``),
            ascending; SAM 2 object ``k`` is column ``columns[k]``.
        prompt_frames: ``[K] int64`` the frame where each object was prompted.
    """

    masks: np.ndarray
    columns: np.ndarray
    prompt_frames: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(self.columns.shape[0])

    def union(self) -> np.ndarray:
        """``[T, H, W] bool`` union over objects (all empty when ``K = 0``)."""
        return self.masks.any(axis=1)

    @classmethod
    def empty(cls, num_frames: int, height: int, width: int) -> RefineResult:
        """The result of an expression without any kept query."""
        return cls(
            masks=np.zeros((num_frames, 0, height, width), dtype=bool),
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
    """Stage-2 refinement with one SAM 2 model (build it once per worker: :func:`build_refiner`).

    Args:
        predictor: a built :class:`SharedFeatureVideoPredictor` (or subclass) in eval mode.
        options: the ``stage2`` options (prompting, precision, memory; the model fields are
            :func:`build_refiner`'s).
    """

    def __init__(self, predictor: SharedFeatureVideoPredictor, options: Stage2Options) -> None:
        self.predictor = predictor
        self.options = options

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def open_video(
        self,
        frames: Sequence[Frame],
        *,
        video_id: str,
        offload: bool = False,
    ) -> VideoSession:
        """Decode a video once for all of its expressions.

        Args:
            frames: the video's frames in order: JPEG paths (e.g. ``MevisSplit.frame_paths``) or
                decoded PIL RGB images (the same tensors for the same pixels).
            video_id: named in logs and errors.
            offload: offload frames, memories and features to the CPU regardless of the config.
        """
        options = self.options
        return self.predictor.open_video(
            frames,
            video_id=video_id,
            offload_video_to_cpu=offload or options.offload_video_to_cpu,
            offload_state_to_cpu=offload or options.offload_state_to_cpu,
            feature_cache_device=CacheDevice.cpu if offload else options.feature_cache_device,
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda" or self.options.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=AUTOCAST_DTYPES[self.options.autocast])

    def refine(
        self,
        session: VideoSession,
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
            on_frame: called after each propagated frame (see :data:`FrameProgress`).
        Returns:
            per kept query, SAM 2's masks on every frame.
        Raises:
            ValueError: shapes that disagree with each other or with the video.
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

        predictor = self.predictor
        out = np.zeros((num_frames, len(queries), height, width), dtype=bool)
        written = np.zeros(num_frames, dtype=bool)
        with torch.inference_mode(), self._autocast():
            state = predictor.init_expression_state(session)
            self._add_prompts(state, queries, frames, boxes, masks, where=where)
            # Both passes start from the prompted frames, known now.
            total = sum(
                len(predictor.propagation_order(state, reverse=reverse))
                for reverse in (False, True)
            )
            done = 0
            for reverse in (False, True):
                for frame_idx, _, mask_logits in predictor.propagate_in_video(
                    state, reverse=reverse
                ):
                    out[frame_idx] = (mask_logits > 0).squeeze(1).cpu().numpy()
                    written[frame_idx] = True
                    done += 1
                    if on_frame is not None:
                        on_frame(done, total)
        if not written.all():
            raise RuntimeError(f"{where}: propagation skipped frames {np.flatnonzero(~written)}")
        return RefineResult(masks=out, columns=queries, prompt_frames=frames)

    def _add_prompts(
        self,
        state: dict[str, Any],
        queries: np.ndarray,
        frames: np.ndarray,
        boxes: np.ndarray,
        masks: np.ndarray | RunLengthMasks,
        *,
        where: str,
    ) -> None:
        """Prompt object ``k`` (query ``queries[k]``) on frame ``frames[k]``."""
        predictor, options = self.predictor, self.options
        height, width = state["video_height"], state["video_width"]
        rng = np.random.default_rng(options.point_seed)
        for obj_id, (query, frame_idx) in enumerate(zip(queries, frames, strict=True)):
            query, frame_idx = int(query), int(frame_idx)
            if options.prompt == PromptKind.box:
                box = boxes_to_pixel_xyxy(np.asarray(boxes[frame_idx, query]), height, width)
                predictor.add_new_points_or_box(state, frame_idx=frame_idx, obj_id=obj_id, box=box)
                continue
            mask = _mask_at(masks, frame_idx, query)
            if options.prompt == PromptKind.point:
                points = sample_points_from_mask(mask, options.num_points, rng)
                if len(points):
                    labels = np.ones(len(points), dtype=np.int32)
                    predictor.add_new_points_or_box(
                        state, frame_idx=frame_idx, obj_id=obj_id, points=points, labels=labels
                    )
                    continue
                logger.warning(
                    "%s: query %d has an empty mask on frame %d; prompting it with that (empty) "
                    "mask instead of points",
                    where,
                    query,
                    frame_idx,
                )
            predictor.add_new_mask(state, frame_idx=frame_idx, obj_id=obj_id, mask=mask)

    def refine_video(
        self,
        frames: Sequence[Frame],
        expressions: Mapping[str, Proposals],
        *,
        video_id: str,
        on_frame: Callable[[str, int, int], None] | None = None,
    ) -> Iterator[tuple[str, RefineResult]]:
        """Refine all expressions of a video, decoding it and encoding its frames once.

        On CUDA out-of-memory (and ``retry_offloaded_on_oom``), logs a warning naming the video,
        reopens it with frames, memories and features on the CPU, and carries on from the
        expression that failed; results already yielded stay valid.

        Args:
            on_frame: called after each propagated frame with ``(exp_id, frames done, frames
                of both passes)`` (see :data:`FrameProgress`; a retried expression starts over).
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
                "tracking state and image features offloaded to the CPU",
                video_id,
                items[done][0] if done < len(items) else "(opening)",
            )
            offload = True


def build_refiner(options: Stage2Options, *, device: str | torch.device = "cpu") -> Refiner:
    """SAM 2 as ``options`` configure it (model, checkpoint, tracker), and its refiner.

    Args:
        options: the ``stage2`` options; ``model`` is ``sam2.1_hiera_{t,s,b+,l}`` or a SAM 2 YAML
            path, ``checkpoint`` its weights (missing: ``FileNotFoundError`` naming
            ``download_ckpts.sh``).
        device: where SAM 2 runs.
    """
    predictor_cls: type[SharedFeatureVideoPredictor] = SharedFeatureVideoPredictor
    overrides = None
    if options.tracker == Tracker.samurai:
        from stage2_sam2_refine.samurai import SamuraiVideoPredictor, samurai_model_overrides

        predictor_cls = SamuraiVideoPredictor
        overrides = samurai_model_overrides(options.samurai)
    predictor = build_sam2_predictor(
        options.model,
        options.checkpoint,
        device=device,
        predictor_cls=predictor_cls,
        overrides=overrides,
    )
    return Refiner(predictor, options)
